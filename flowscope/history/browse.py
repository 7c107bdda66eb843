"""What the history screen asks SQLite and how it words the answer: ranges, buckets, cells.

Kept apart from the widgets (and free of textual) so the range parser, the graph's bucket
query and the table's cell text can be tested and reused without an app running.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowscope.errors import UsageError
from flowscope.history import files, queries, schema, window
from flowscope.vocab import (
    GROUPINGS,
    clip_column,
    endpoint,
    human,
    human_bytes,
    human_rate,
    port_text,
    proto_text,
    user_name,
)
from flowscope.when import parse_when, share_zone

# The preset ranges, by key: (label, seconds).
SPANS: dict[str, tuple[str, float]] = {
    "5m": ("5m", 300.0),
    "1h": ("1h", 3600.0),
    "24h": ("24h", 86400.0),
}
# What `g` cycles through: the live console's groupings.
GROUP_CYCLE: tuple[str, ...] = tuple(GROUPINGS)
# Bucket widths the graph may use, in seconds: round numbers, so bucket edges read well.
BUCKET_STEPS: tuple[float, ...] = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip
TOP_ROWS = 200  # rows the table holds; the graph still counts every record of the range


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A closed range of Unix seconds and how the title names it (``1h``, ``zoom``...)."""

    since: float
    until: float
    label: str

    @property
    def duration(self) -> float:
        return self.until - self.since


def bucket_step(duration: float, max_buckets: int) -> float:
    """The smallest round bucket width that cuts ``duration`` into at most ``max_buckets``."""
    need = duration / max(max_buckets, 1)
    for step in BUCKET_STEPS:
        if step >= need:
            return float(step)
    return float(int(need) + 1)


def bucket_bytes(
    conn: sqlite3.Connection,
    rng: TimeRange,
    step: float,
    where: str | None = None,
    params: Sequence[Any] = (),
) -> list[int]:
    """Bytes per bucket of ``step`` seconds from ``rng.since``, each record or tick spread
    evenly over its interval (window.py): a bucket holds what happened in it, so no bucket
    can show more than the real peak.

    Unfiltered, from ``samples``: the kernel's own per-tick byte counts, which include what no
    flow record holds (a full map, non-IP frames). With a filter, from the flow records and
    the live flows not written yet, as the table beside it; also when the range has no
    samples (a database filled by other means)."""
    n = max(1, -(-round(rng.duration * 1000) // round(step * 1000)))
    since_ms = round(rng.since * 1000)
    step_ms = round(step * 1000)
    since_text, until_text = schema.iso_time(rng.since), schema.iso_time(rng.until)
    with files.translate_errors("cannot read history from", "the database"):
        rows: list[tuple[int, int, int]] = []
        if where is None:
            rows = _sample_rows(conn, since_text, schema.iso_time(rng.until + _MAX_TICK))
        if not rows:
            f, la = window.ms_sql("first_seen"), window.ms_sql("last_seen")
            tables = ["flows"]
            if queries.stage_pending(conn):  # the live flows count too, as in the table
                tables.append(queries.PENDING_TABLE)
            for table in tables:
                rows += conn.execute(
                    f"SELECT {f}, {la}, bytes FROM {table} "
                    f"WHERE last_seen >= ? AND first_seen < ?{f' AND ({where})' if where else ''}",
                    [since_text, until_text, *params],
                ).fetchall()
    if not rows:
        return [0] * n
    arr = np.array(rows, dtype=np.int64)
    out = window.spread(arr[:, 2], arr[:, 0], arr[:, 1], since_ms, step_ms, n)
    return [int(v) for v in out]


_MAX_TICK = 60.0
"""Seconds a sample may reach back before its time (a tick's interval, generously)."""


def _sample_rows(conn: sqlite3.Connection, since: str, until: str) -> list[tuple[int, int, int]]:
    """(start ms, end ms, bytes) of each tick in the range. Samples written before the
    kernel counted bytes (schema 4 and older) give their rate times their interval."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(samples)")}
    nbytes = (
        "CASE WHEN bytes > 0 THEN bytes ELSE CAST(round(bps * interval / 8) AS INTEGER) END"
        if "bytes" in cols
        else "CAST(round(bps * interval / 8) AS INTEGER)"
    )
    t = window.ms_sql("time")
    return conn.execute(
        f"SELECT {t} - CAST(round(interval * 1000) AS INTEGER), {t}, {nbytes} FROM samples "
        "WHERE time >= ? AND time < ?",
        (since, until),
    ).fetchall()


def parse_range(text: str, now: float) -> TimeRange:
    """A typed range: ``SINCE``, ``SINCE UNTIL``, ``SINCE..UNTIL`` or ``SINCE to UNTIL``, each
    part as ``--since``/``--until`` take it (``10m``, ``now``, ``13:30``, ``yesterday 03:00``,
    ISO 8601; local time unless a zone is given). An UNTIL that is a time of day alone is on
    SINCE's day (``2026-11-22T03:00..03:30Z``). A UsageError carries ``error_column``: where
    the bad part starts, for the caret under it."""
    raw = text.strip()
    for sep in ("..", " to ", " "):
        if sep == " " and _one_time(raw, now):
            first, second = raw, ""  # "yesterday 03:00", "2026-11-22 03:10": one time
            break
        if sep in raw:
            first, _, second = raw.partition(sep)
            break
    else:
        first, second = raw, ""
    if not first.strip():
        raise _column_error(UsageError("type a range: 10m, 2h 1h, or ISO..ISO"), 1)
    start_col = len(text) - len(text.lstrip()) + 1
    until_col = text.find(second.strip(), start_col - 1 + len(first)) + 1
    first, second = share_zone(first.strip(), second.strip())
    try:
        since = parse_when(first, "since", now)
    except UsageError as e:
        raise _column_error(e, start_col) from None
    until = now
    if second:
        try:
            until = parse_when(second, "until", now, day_of=since)
        except UsageError as e:
            raise _column_error(e, until_col) from None
    if since >= until:
        raise _column_error(
            UsageError(
                f"since {schema.iso_time(since)} is not before until {schema.iso_time(until)}"
            ),
            start_col,
        )
    return TimeRange(since, until, raw)


def _one_time(text: str, now: float) -> bool:
    try:
        parse_when(text, "since", now)
    except UsageError:
        return False
    return True


def _column_error(e: UsageError, column: int) -> UsageError:
    e.error_column = column  # type: ignore[attr-defined]
    return e


NUMERIC_COLUMNS = ("bytes", "rate", "pkts", "recs", "dport", "sport", "vlan")


def key_cells(row: dict[str, Any], group_by: str) -> dict[str, str]:
    """Which flow or group a history row is, as every history table writes it (the screen's
    and `flowscope history`'s): endpoints and the protocol after its direction for flows,
    the grouping's columns otherwise."""
    cells: dict[str, str] = {}
    if group_by == "flow":
        cells["source"] = endpoint(row["src"], row["sport"], row["proto"])
        cells["destination"] = endpoint(row["dst"], row["dport"], row["proto"])
        cells["proto"] = proto_text(row["proto"], row["direction"])
    else:
        for col in ("host_a", "host_b", "src", "dst", "iface", "vlan"):
            if col in row:
                cells[col] = str(row[col])
        for col in ("sport", "dport"):
            if col in row:
                cells[col] = port_text(row[col], row.get("proto"))
        if "proto" in row:  # a port grouping's ports are per direction: say which
            cells["proto"] = proto_text(row["proto"], row.get("direction"))
        if group_by == "process":  # flows without a known process: one row, "-"
            known = row.get("pid") is not None
            cells["process"] = f"{row['comm']}[{row['pid']}]" if known else "-"
        elif group_by == "user":
            cells["user"] = "-" if row.get("uid") is None else user_name(int(row["uid"]))
        elif group_by == "container":
            cells["container"] = row.get("container") or "-"
        elif group_by == "drop_reason":  # flows without drops, or not followed: "-"
            cells["drop reason"] = row.get("drop_reason") or "-"
    return cells


def row_cells(row: dict[str, Any], group_by: str) -> dict[str, str]:
    """The cells of one history row, as the table shows them: who first, then how much."""
    cells = key_cells(row, group_by)
    cells["bytes"] = human_bytes(row["bytes"])
    cells["rate"] = human_rate(row["bps"])
    cells["pkts"] = human(row["packets"])
    cells["recs"] = str(row["records"])
    return cells


# What the table gives up, in this order, when its columns do not fit the screen: the history
# table has no horizontal scrolling (left and right move the graph's cursor), so a column past
# the edge could never be read.
DROPPABLE_COLUMNS = ("recs",)
MIN_TEXT_COLUMN = 15
"""Text columns (addresses, interfaces) are cut in the middle to fit, but not below this
many cells (as in the live table)."""


def fit_columns(
    columns: Sequence[str], cells: Sequence[dict[str, str]], width: int, padding: int = 1
) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and cells of a table that fits ``width`` cells, each column as wide as its
    widest cell or header plus ``padding`` on both sides. Drops DROPPABLE_COLUMNS first, then
    cuts the middle out of the text columns (every non-numeric one but proto), sharing what is
    left between them, down to MIN_TEXT_COLUMN."""
    cols = list(columns)

    def need(c: str) -> int:
        return max([len(c), *(len(row[c]) for row in cells)]) + 2 * padding

    for drop in DROPPABLE_COLUMNS:
        if sum(need(c) for c in cols) <= width:
            break
        if drop in cols:
            cols.remove(drop)
    text = sorted((c for c in cols if c not in NUMERIC_COLUMNS and c != "proto"), key=need)
    spare = width - sum(need(c) for c in cols if c not in text)
    limits: dict[str, int] = {}
    for i, c in enumerate(text):  # the narrowest first: what one does not need, the next gets
        given = min(need(c), spare // (len(text) - i))
        limits[c] = max(MIN_TEXT_COLUMN, given - 2 * padding)
        spare -= given
    fitted = [{c: row[c] for c in cols} for row in cells]
    for c, limit in limits.items():  # cut in the middle, but different hosts never read the same
        for row, clipped in zip(fitted, clip_column([r[c] for r in cells], limit), strict=True):
            row[c] = clipped
    return cols, fitted


def row_key(row: dict[str, Any], group_by: str) -> str:
    """A stable key for a row: its grouping values."""
    return "|".join(str(row[name]) for name, _ in queries.GROUPINGS[group_by])


def clock(t: float) -> str:
    """``03:12:05`` (UTC, as stored)."""
    return time.strftime("%H:%M:%S", time.gmtime(t))


def day_clock(t: float) -> str:
    """``2026-11-22 03:12:05`` (UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def duration_text(seconds: float) -> str:
    """``5m``, ``1h``, ``90s``, ``1h30m``: how long a range is, briefly."""
    s = round(seconds)
    if s % 86400 == 0 and s:
        return f"{s // 86400}d"
    if s % 3600 == 0 and s:
        return f"{s // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s % 60 == 0 and s:
        return f"{s // 60}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{seconds:g}s"


# Column names for an empty result (so the table shows its header even with no rows).
EMPTY_ROWS: dict[str, dict[str, Any]] = {
    g: {
        **{
            name: (0 if name in ("sport", "dport", "proto", "vlan", "family") else "")
            for name, _ in cols
        },
        "bytes": 0,
        "bps": 0.0,
        "packets": 0,
        "records": 0,
    }
    for g, cols in queries.GROUPINGS.items()
}
