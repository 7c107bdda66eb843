"""Rows as a text table, JSON lines or CSV, for the headless commands (history, sql).

Imports rich (installed with textual) but never textual itself.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from typing import IO, Any

FORMATS = ("table", "json", "csv")


def human(value: float, unit: str = "", base: float = 1000.0) -> str:
    """``1234567`` -> ``1.2 M`` + unit: three significant figures at most, SI prefixes."""
    for prefix in ("", "k", "M", "G", "T", "P"):
        if abs(value) < base or prefix == "P":
            if prefix == "":
                text = f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
            else:
                text = f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
            return f"{text} {prefix}{unit}".rstrip()
        value /= base
    raise AssertionError("unreachable")


def human_bytes(n: float) -> str:
    """Bytes in SI units: ``1.2 MB``."""
    return human(n, "B")


def human_rate(bps: float) -> str:
    """Bits per second: ``3.4 Mb/s``."""
    return human(bps, "b/s")


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
    """A header line, then one line per row."""
    w = csv.writer(out or sys.stdout, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)


def write_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    right: Sequence[str] = (),
    title: str | None = None,
    out: IO[str] | None = None,
) -> None:
    """An aligned text table (rich, no rules: plain columns like ps or ss), 80 columns wide
    unless a terminal is wider."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(
        box=None,
        title=Text(title) if title else None,
        title_justify="left",
        pad_edge=False,
        padding=(0, 1),
    )
    for c in columns:
        table.add_column(c, justify="right" if c in right else "left", overflow="fold")
    for row in rows:
        # Text, not markup: "[2001:db8::1]:443" must print as it is, not as a style tag
        table.add_row(*(Text("" if v is None else str(v)) for v in row))
    console = Console(file=out or sys.stdout, highlight=False, soft_wrap=False)
    console.print(table)
