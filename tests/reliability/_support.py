"""What the reliability tests share: batches whose samples carry their own id, concurrent pushers
that remember what was acknowledged, a reader of what the manifest really holds, and an event log
that waits with bounded timeouts and says what it was waiting for."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from service.api.models import EventPublic
from service.client import LifelongClient, encode_batch
from service.state.store import RedisStore
from workers.shards import ShardStore

TINY_SPEC: dict[str, Any] = {
    "name": "reliability",
    "task": {"kind": "classification", "input_shape": [8], "num_classes": 4},
    "model": {"family": "mlp", "hidden": [8]},
    "val_fraction": 0.2,
}


def id_batch(
    start: int, n: int, *, features: int = 8, classes: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples whose feature 0 is their global id ``start + i`` (exact in float32 < 2**24)."""
    rng = np.random.default_rng(start)
    x = rng.standard_normal((n, features)).astype(np.float32)
    x[:, 0] = np.arange(start, start + n, dtype=np.float32)
    return x, rng.integers(0, classes, n)


def stored_ids(store: RedisStore, shards: ShardStore, job_id: str) -> list[int]:
    """The sample ids of every shard the manifest lists, read back (and verified) from disk."""
    ids: list[int] = []
    for info in store.load_manifest(job_id).shards:
        features, _ = shards.read(info, verify=True)
        ids += [int(v) for v in features.reshape(len(features), -1)[:, 0]]
    return ids


@dataclass
class Push:
    """One batch as a pusher sent it: its ids, its body and key, and what came back."""

    start: int
    n: int
    body: bytes
    key: str
    status: int | None = None  # None: no answer (connection refused, reset or timed out)
    seconds: float = 0.0


@dataclass
class Pushers:
    """``count`` threads pushing distinct batches of ``size`` samples to one job until stopped.

    Every push carries an explicit Idempotency-Key and a body that is kept, so that a push that
    got no answer can be retried exactly. Ids are allotted per pusher: pusher ``p`` sends ids
    ``p * stride + k * size ...``.
    """

    url: str
    job_id: str
    count: int = 8
    size: int = 20
    api_key: str | None = None
    features: int = 8
    classes: int = 4
    stride: int = 1_000_000
    timeout: float = 10.0
    pause_on_error: float = 0.1
    pushes: list[Push] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Pushers:
        for p in range(self.count):
            thread = threading.Thread(target=self._run, args=(p,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)

    def _run(self, index: int) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        with httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout) as http:
            k = 0
            while not self._stop.is_set():
                start = index * self.stride + k * self.size
                k += 1
                x, y = id_batch(start, self.size, features=self.features, classes=self.classes)
                body, content_type = encode_batch(x, y)
                push = Push(start, self.size, body, str(uuid.uuid4()))
                began = time.perf_counter()
                try:
                    response = http.post(
                        f"/v1/jobs/{self.job_id}/data",
                        content=body,
                        headers={"Content-Type": content_type, "Idempotency-Key": push.key},
                    )
                    push.status = response.status_code
                except httpx.TransportError:
                    push.status = None
                push.seconds = time.perf_counter() - began
                with self._lock:
                    self.pushes.append(push)
                if push.status is None or push.status >= 300:
                    self._stop.wait(self.pause_on_error)

    # --- what happened ----------------------------------------------------------------------
    @property
    def acknowledged(self) -> list[Push]:
        return [p for p in self.pushes if p.status is not None and 200 <= p.status < 300]

    @property
    def unanswered(self) -> list[Push]:
        """Pushes without a 2xx: no answer at all, or a 5xx that asks for a retry."""
        return [p for p in self.pushes if p.status is None or p.status >= 500]

    def refused(self) -> list[Push]:
        return [p for p in self.pushes if p.status is not None and 300 <= p.status < 500]

    def retry(self, push: Push, *, attempts: int = 20) -> int:
        """Send ``push`` again with its key and body until it gets an answer; its status."""
        headers = {"Content-Type": "application/x-safetensors", "Idempotency-Key": push.key}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for _ in range(attempts):
            try:
                response = httpx.post(
                    f"{self.url}/v1/jobs/{self.job_id}/data",
                    content=push.body,
                    headers=headers,
                    timeout=self.timeout,
                )
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            if response.status_code < 500:
                return response.status_code
            time.sleep(0.5)
        raise AssertionError(f"push {push.start}+{push.n} got no answer in {attempts} retries")


def ids_of(pushes: list[Push]) -> list[int]:
    return [i for p in pushes for i in range(p.start, p.start + p.n)]


def wait_until(
    check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.5
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as exc:  # a restarting server: keep polling
            last_error = exc
        else:
            if value:
                return value
        time.sleep(interval)
    suffix = f" (last error: {last_error})" if last_error else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{suffix}")


class EventLog:
    """Every event of one job, read incrementally (``follow=false``), kept in order."""

    def __init__(self, client: LifelongClient, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.events: list[EventPublic] = []
        self._last: str | None = None

    def poll(self) -> list[EventPublic]:
        new = list(self.client.events(self.job_id, last_event_id=self._last, follow=False))
        if new:
            self._last = new[-1].id
            self.events += new
        return new

    def mark(self) -> int:
        """A position in the log: events after it are what happened since."""
        self.poll()
        return len(self.events)

    def since(self, mark: int, type: str | None = None) -> list[EventPublic]:
        return [e for e in self.events[mark:] if type is None or e.type == type]

    def wait(
        self, predicate: Callable[[EventPublic], bool], *, after: int, timeout: float, what: str
    ) -> EventPublic:
        """The first event after position ``after`` that satisfies ``predicate``."""

        def found() -> Any:
            self.poll()
            return next((e for e in self.events[after:] if predicate(e)), None)

        return wait_until(found, timeout=timeout, what=what)

    def observations(self, mark: int = 0) -> Iterator[dict[str, Any]]:
        return (e.data for e in self.events[mark:] if e.type == "observation")
