"""Shared output helpers for the CLI: JSON to stdout, human text through rich, clear errors."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Print `data` as JSON on stdout (integers stay exact; no floats are introduced)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def fail(message: str, hint: str | None = None, code: int = 1, *, log_tail: str = "") -> NoReturn:
    """Print an error (and what to do about it) on stderr and exit with `code`.

    Messages quote paths, URLs and library errors: brackets in them are text, not markup.
    `log_tail`, the lines of a log that explain the failure, comes first.
    """
    if log_tail:
        err_console.print(log_tail, style="dim", markup=False, highlight=False, soft_wrap=True)
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", soft_wrap=True)
    raise typer.Exit(code)
