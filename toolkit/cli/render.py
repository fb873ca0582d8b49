"""Terminal output: rich tables for people, ``--json`` for scripts. Colours carry meaning."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import click
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

STATUS_STYLE = {
    "QUEUED": "blue",
    "RUNNING": "cyan",
    "COMPLETED": "green",
    "FAILED": "bold red",
    "CANCELLED": "yellow",
}


def console() -> Console:
    """stdout for tables; no auto-highlighting, so colours only ever carry meaning."""
    return Console(highlight=False, soft_wrap=False)


def err_console() -> Console:
    """stderr, for errors and progress that must not mix with ``--json`` output."""
    return Console(stderr=True, highlight=False)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


def emit_json(data: Any) -> None:
    """One JSON document on stdout; datetimes as ISO 8601, decimals as numbers."""
    click.echo(json.dumps(data, default=_default, indent=2, sort_keys=False))


def status(value: str) -> str:
    """A run status in its colour: green completed, red failed, yellow cancelled."""
    return f"[{STATUS_STYLE.get(value, 'white')}]{value}[/]"


def percentage(value: Decimal | float) -> str:
    """A rollout percentage: dim at 0 (all legacy), green at 100, yellow in between."""
    pct = float(value)
    style = "dim" if pct == 0 else "green" if pct == 100 else "yellow"
    return f"[{style}]{pct:g}%[/]"


def when(value: datetime | None) -> str:
    """A timestamp to the second (UTC), or a dim dash when there is none."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "[dim]-[/]"


def seconds(value: float | None) -> str:
    """A duration in ms below a second, else in seconds; a dim dash when unknown."""
    if value is None:
        return "[dim]-[/]"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A plain table whose cells fold instead of widening past the terminal."""
    t = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        t.add_column(column, overflow="fold")
    for row in rows:
        t.add_row(*(str(c) if c is not None else "[dim]-[/]" for c in row))
    return t


@dataclass(frozen=True)
class Col:
    """A column of a :func:`fit` table.

    ``fold``: free text (errors, reasons) that may fold onto more lines, down to ``width``
    cells; any other column (ids, numbers, statuses, backends, times) is never broken.
    ``drop``: 0 is always shown; when the table is too wide, columns go highest first.
    """

    header: str
    fold: bool = False
    width: int = 12
    drop: int = 0
    justify: str = "left"


def _cells(value: Any) -> str:
    return "[dim]-[/]" if value is None else str(value)


def _plain(markup: str) -> int:
    """The widest line of a cell, in terminal cells, markup removed."""
    return max((cell_len(line) for line in Text.from_markup(markup).plain.split("\n")), default=0)


def fit(
    title: str | None,
    columns: Sequence[Col],
    rows: Iterable[Sequence[Any]],
    *,
    width: int | None = None,
) -> Table:
    """A table that fits ``width`` (the console's by default) without breaking a value.

    Unbreakable columns keep their widest cell; free text folds down to its column's
    ``width``; if that is still too wide, the droppable columns go, least useful first.
    """
    width = width or console().width
    body = [[_cells(c) for c in row] for row in rows]
    widest, needs = [], []
    for n, col in enumerate(columns):
        widest.append(max([_plain(col.header), *(_plain(r[n]) for r in body)]))
        needs.append(min(widest[n], col.width) if col.fold else widest[n])
    shown = list(range(len(columns)))

    def total() -> int:  # one space of padding each side, a border between and around
        return sum(needs[n] for n in shown) + 3 * len(shown) + 1

    for n in sorted(range(len(columns)), key=lambda i: -columns[i].drop):
        if total() <= width or columns[n].drop == 0:
            break
        shown.remove(n)
    # Free text takes the room left, a cell at a time, up to its widest line. Every width is
    # fixed here: rich's own squeezing, when its columns are too wide, shrinks every column
    # alike, ids and numbers too.
    growing = [n for n in shown if columns[n].fold and needs[n] < widest[n]]
    while growing and total() < width:
        for n in list(growing):
            if total() >= width:
                break
            needs[n] += 1
            if needs[n] >= widest[n]:
                growing.remove(n)
    t = Table(title=title, title_justify="left", header_style="bold")
    for n in shown:
        col = columns[n]
        t.add_column(
            col.header,
            overflow="fold",
            no_wrap=not col.fold,
            width=needs[n],
            justify=col.justify,  # type: ignore[arg-type]
        )
    for row in body:
        t.add_row(*(row[n] for n in shown))
    return t


def print_error(message: str) -> None:
    """The one error line: coloured on a terminal, plain ``error: ...`` for scripts and logs."""
    stream = err_console()
    if stream.is_terminal:
        stream.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    else:
        sys.stderr.write(f"error: {message}\n")
