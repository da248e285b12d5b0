"""Shared output helpers for the CLI: JSON to stdout, human text through rich, clear errors."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Print `data` as JSON on stdout (integers stay exact; no floats are introduced)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    """Print an error (and what to do about it) on stderr and exit with `code`."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {hint}", soft_wrap=True)
    raise typer.Exit(code)
