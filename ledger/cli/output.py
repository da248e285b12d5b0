"""Shared output helpers for the CLI: JSON to stdout, human text through rich, clear errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from rich.console import JustifyMethod
    from rich.table import Table

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


@dataclass(frozen=True)
class Column:
    """A column of a `fitted_table`: cells either stay on one line, or `wrap` onto more (at least `min_width`).

    `drop` ranks what to leave out when the table does not fit the terminal: 0 never, higher first.
    """

    header: str
    justify: JustifyMethod = "left"
    wrap: bool = False
    min_width: int = 16
    drop: int = 0


def fitted_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], *, title: str | None = None,
                 width: int | None = None) -> tuple[Table, list[str]]:
    """A table that fits `width` (default: the console's): wrapping columns wrap, and the droppable ones
    go, highest `drop` first, until the rest fits. Returns the table and the headers left out (say so:
    `--json`/`--csv` still carry every column)."""
    from rich.table import Table

    limit = width or console.width
    keep = list(range(len(columns)))

    def natural(i: int) -> int:
        return max([len(columns[i].header), *(len(str(row[i])) for row in rows)])

    def needed(indexes: list[int]) -> int:
        total = 2 * (len(indexes) - 1)  # one space of padding either side between columns
        for i in indexes:
            total += min(natural(i), columns[i].min_width) if columns[i].wrap else natural(i)
        return total

    left_out: list[str] = []
    for i in sorted((i for i, c in enumerate(columns) if c.drop), key=lambda i: -columns[i].drop):
        if needed(keep) <= limit:
            break
        keep.remove(i)
        left_out.append(columns[i].header)
    # Wrapping columns get their minimum, then what is left goes to the widest of them first.
    widths = {i: min(natural(i), columns[i].min_width) for i in keep if columns[i].wrap}
    spare = limit - needed(keep)
    for i in sorted(widths, key=natural, reverse=True):
        grant = max(min(spare, natural(i) - widths[i]), 0)
        widths[i] += grant
        spare -= grant
    table = Table(title=title, box=None, pad_edge=False, show_edge=False, header_style="bold")
    for i in keep:
        c = columns[i]
        table.add_column(c.header, justify=c.justify, no_wrap=not c.wrap, overflow="fold", width=widths.get(i))
    for row in rows:
        table.add_row(*(str(row[i]) for i in keep))
    return table, left_out


def print_fitted(columns: Sequence[Column], rows: Sequence[Sequence[str]], *, title: str | None = None) -> None:
    """Print a `fitted_table`, and a note naming the columns left out."""
    table, left_out = fitted_table(columns, rows, title=title)
    console.print(table)
    if left_out:
        console.print(f"[dim]left out at {console.width} columns: {', '.join(left_out)} (--json or --csv has "
                      "every field; a wider terminal shows them)[/]", highlight=False)
