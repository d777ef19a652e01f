"""The packages stay clean under ruff (lint and format) and mypy, as ``make lint`` checks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_lint_clean(command: list[str]) -> None:
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Tables of data may be long: the registrations of the built-in layer handlers and shape ops.
LONG_TABLES = {("net2net/_ops.py", "_register"), ("net2net/_handlers.py", "_register_builtins")}
MAX_FUNCTION_LINES = 60


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` to the function's end, its docstring left out."""
    assert node.end_lineno is not None
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if ast.get_docstring(node, clean=False) is not None and first.end_lineno is not None:
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_function_is_longer_than_60_lines() -> None:
    """Long functions are split into named steps; a benchmark's ``main`` (which prints its
    tables) and the tables of data above are the exceptions."""
    too_long = []
    for package in ("net2net", "growth_policy", "workers", "service", "deploy", "bench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), filename=relative)):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                exempt = (relative, node.name) in LONG_TABLES or (
                    package == "bench" and node.name == "main"
                )
                if not exempt and _body_lines(node) > MAX_FUNCTION_LINES:
                    too_long.append(f"{relative}:{node.lineno} {node.name} ({_body_lines(node)})")
    assert not too_long, "functions over 60 lines:\n" + "\n".join(too_long)
