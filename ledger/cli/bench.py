"""`sluice bench`: benchmarks that print figures and write JSON (never timed tests)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Benchmarks: print figures and write them as JSON.", no_args_is_help=True)
