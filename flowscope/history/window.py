"""How much of a record falls inside a time range: the one rule every history query follows.

A flow record says "P packets and B bytes between first_seen and last_seen"; it does not say
when inside that interval they came. As flow collectors that chart NetFlow do, history spreads
them evenly over the interval, and a range counts the share that falls inside it. So a 60 s
record seen through a 10 s window counts a sixth of its packets, and a graph bucket holds the
part of each record that overlaps it, not the whole record at its end.

The share is computed from a cumulative count, ``C(t) = floor(X * (t - first) / (last -
first))`` clamped to [0, X], as ``C(until) - C(since)`` over the half-open range [since,
until). The floors telescope: the shares of ranges that tile a record add up to X exactly, so
integer totals stay exact for any range that covers the whole record, and hours, buckets and
the edges of a range never gain or lose a packet between them. A record with first == last
(one packet, or one tick) counts in full in the range that holds that instant.

Times are whole milliseconds, as stored (``schema.iso_time``). This module is pure: SQL text
for the store and numpy for the graph, no I/O.
"""

from __future__ import annotations

import numpy as np

HOUR_MS = 3_600_000


def ms_sql(column: str) -> str:
    """SQL for the whole milliseconds of a stored time column (ISO 8601 text). julianday()
    is a double of days; at today's dates it is exact to about 40 microseconds, so rounding
    gives the stored millisecond (tests compare it with the text), at half the cost of
    strftime('%s') plus the milliseconds cut from the text."""
    return f"CAST(round((julianday({column}) - 2440587.5) * 86400000.0) AS INTEGER)"


NO_FLATTEN = " LIMIT -1 OFFSET 0"
"""Appended to a subquery that computes ``ms_sql`` columns: SQLite would otherwise fold it into
the outer query and compute each time again wherever the shares use it (five times slower)."""


def share_sql(
    value: str,
    first: str,
    last: str,
    since_ms: int | str | None,
    until_ms: int | str,
    *,
    nullable: bool = False,
) -> str:
    """SQL for the integer share of ``value`` (a column) whose record spans the milliseconds
    ``first``..``last`` (SQL expressions) that falls in [since_ms, until_ms); None: from the
    beginning. Integer bounds are ours (never user text), so they are written into the SQL;
    a string bound is an SQL expression. ``nullable``: a NULL value (not known) has a NULL
    share, not 0, wherever the record lies."""
    lo = "-9223372036854775807" if since_ms is None else str(since_ms)
    hi = str(until_ms)

    def cum(t: str) -> str:
        return f"(({value}) * (min(max({t}, {first}), {last}) - {first})) / ({last} - {first})"

    known = f"WHEN ({value}) IS NULL THEN NULL " if nullable else ""
    return (
        f"(CASE {known}WHEN {last} > {first} THEN {cum(hi)} - {cum(lo)} "
        f"WHEN {first} >= {lo} AND {first} < {hi} THEN ({value}) ELSE 0 END)"
    )


def cumulative(
    values: np.ndarray, first: np.ndarray, last: np.ndarray, t: np.ndarray
) -> np.ndarray:
    """C(t) of each record (arrays of equal length; int64 milliseconds)."""
    span = last - first
    point = span == 0
    clamped = np.minimum(np.maximum(t, first), last) - first
    with np.errstate(divide="ignore", invalid="ignore"):
        part = (values * clamped) // np.where(point, 1, span)
    return np.where(point, np.where(t > first, values, 0), part)


def spread(
    values: np.ndarray, first: np.ndarray, last: np.ndarray, since_ms: int, step_ms: int, n: int
) -> np.ndarray:
    """Per bucket of ``step_ms`` from ``since_ms`` (``n`` of them), the sum of each record's
    share: a record is cut at every bucket edge it crosses. Work is the number of
    (record, bucket) pairs that overlap, not records times buckets."""
    out = np.zeros(n, np.int64)
    if not len(values):
        return out
    values = values.astype(np.int64)
    first = first.astype(np.int64)
    last = last.astype(np.int64)
    end_ms = since_ms + step_ms * n
    # the buckets each record touches, clamped to the graph
    b0 = np.clip((np.maximum(first, since_ms) - since_ms) // step_ms, 0, n - 1)
    b1 = np.clip((np.minimum(last, end_ms - 1) - since_ms) // step_ms, 0, n - 1)
    b1 = np.maximum(b0, b1)
    counts = (b1 - b0 + 1).astype(np.int64)
    rec = np.repeat(np.arange(len(values)), counts)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    bucket = b0[rec] + offsets
    lo = since_ms + bucket * step_ms
    v, f, la = values[rec], first[rec], last[rec]
    share = cumulative(v, f, la, lo + step_ms) - cumulative(v, f, la, lo)
    np.add.at(out, bucket, share)
    return out
