"""Rows as an aligned table, JSON lines or CSV, for the headless commands (history, alerts,
sql). Imports rich (installed with textual) but never textual itself."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from typing import IO, Any

from flowscope.vocab import printable

FORMATS = ("table", "json", "csv")
WIDE = 100_000
"""The table width when stdout is not a terminal: never wrapped, so grep and awk see one line
per row and whole addresses."""


def write_json_lines(rows: Sequence[dict[str, Any]], out: IO[str] | None = None) -> None:
    """One JSON object per line."""
    out = out or sys.stdout
    for row in rows:
        out.write(json.dumps(row, default=_json_value) + "\n")


def _json_value(value: Any) -> Any:
    """What JSON has no type for: bytes (a BLOB from `sql`) as hex text."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    raise TypeError(f"{type(value).__name__} is not JSON")


def write_csv(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], out: IO[str] | None = None
) -> None:
    """A header line, then one line per row. To a terminal, control characters in values are
    escaped (printable); to a file or a pipe they are written as they are."""
    out = out or sys.stdout
    w = csv.writer(out, lineterminator="\n")
    if _isatty(out):
        w.writerow([printable(c) for c in columns])
        w.writerows([[printable(v) if isinstance(v, str) else v for v in r] for r in rows])
        return
    w.writerow(columns)
    w.writerows(rows)


def _isatty(out: IO[str]) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def write_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    right: Sequence[str] = (),
    title: str | None = None,
    droppable: Sequence[str] = (),
    out: IO[str] | None = None,
) -> None:
    """An aligned text table (rich, no rules: plain columns like ps or ss), under its title
    line. On a terminal, as wide as it is: the ``droppable`` columns are left out, in that
    order, while the table is wider, then long values fold. To a file or a pipe, never
    wrapped. Control characters in values are always escaped (printable): a table is for
    reading."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = out or sys.stdout
    tty = _isatty(out)
    console = Console(file=out, highlight=False, soft_wrap=False, width=None if tty else WIDE)
    texts = [["" if v is None else printable(str(v)) for v in row] for row in rows]
    keep = list(range(len(columns)))
    if tty:

        def width() -> int:
            return sum(max([len(columns[i]), *(len(t[i]) for t in texts)]) + 1 for i in keep)

        for name in droppable:
            if width() <= console.width:
                break
            if name in columns:
                keep.remove(list(columns).index(name))
    table = Table(box=None, pad_edge=False, padding=(0, 1))
    for i in keep:
        c = columns[i]
        table.add_column(
            printable(c),
            justify="right" if c in right else "left",
            overflow="fold",
            no_wrap=not tty,
        )
    for t in texts:
        # Text, not markup: "[2001:db8::1]:443" must print as it is, not as a style tag
        table.add_row(*(Text(t[i]) for i in keep))
    if title:
        console.print(Text(printable(title)), soft_wrap=True)
    console.print(table)
