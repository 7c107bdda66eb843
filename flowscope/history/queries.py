"""Questions to history that `flowscope history`, `flowscope alerts` and the history screen
ask: top-N by bytes, packets or flows over a time range, grouped, filtered; alerts in a range.

Ranges of three hours or more read the hourly rollup (flows_hourly) for their whole hours and
the flows table only for the partial hours at the ends, so a month of history answers in the
time a few hours would take; records straddling a window's edge count with their share.

About 440 lines: the window arithmetic and the top-N candidates are one algorithm, kept whole."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from flowscope.errors import UsageError
from flowscope.history import window
from flowscope.history.files import translate_errors
from flowscope.history.schema import (
    FLOW_COLUMNS,
    FLOW_KEY_COLUMNS,
    HEALTH_VERSION,
    HOUR,
    KEYS_SQL,
    LAST_MS_SQL,
    NULLABLE_COUNTS,
    OWNER_COLUMNS,
    OWNER_VERSION,
    PENDING_HEALTH_VERSION,
    PENDING_OWNER_VERSION,
    SHARED_COLUMNS,
    check_version,
    hour_text,
    iso_time,
    parse_iso,
    schema_version,
)
from flowscope.history.store import flow_row, pending_rows_records

# --- history queries -----------------------------------------------------------------------

GROUPINGS: dict[str, tuple[tuple[str, str], ...]] = {
    # output column -> SQL expression over flows / flows_hourly rows
    "flow": (
        ("src", "src"),
        ("dst", "dst"),
        ("sport", "sport"),
        ("dport", "dport"),
        ("proto", "proto"),
        ("direction", "direction"),
        ("iface", "iface"),
        ("vlan", "vlan"),
        ("family", "family"),
    ),
    "src": (("src", "src"),),
    "dst": (("dst", "dst"),),
    "pair": (("host_a", "min(src, dst)"), ("host_b", "max(src, dst)")),
    # Ports per direction: received to our port 443 is a service of ours, sent to a peer's
    # 50412 is its client port; summed together they would mean nothing.
    "sport": (("sport", "sport"), ("proto", "proto"), ("direction", "direction")),
    "dport": (("dport", "dport"), ("proto", "proto"), ("direction", "direction")),
    "proto": (("proto", "proto"),),
    "iface": (("iface", "iface"),),
    "vlan": (("vlan", "vlan"),),
    "process": (("pid", "pid"), ("comm", "comm")),
    "user": (("uid", "uid"),),
    "container": (("container", "container"),),
    "drop_reason": (("drop_reason", "drop_reason"),),
}
OWNER_GROUPINGS = frozenset({"process", "user", "container", "drop_reason"})
"""Groupings by what only flow records keep (the flow's process, its drops' main reason):
flows_hourly does not, so they read flows."""
ORDERINGS = {
    "bytes": "bytes",
    "packets": "packets",
    "flows": "records",
    "bps": "bytes",
    "retrans": "retrans",
    "drops": "drops",
}

# A filter that names one of these columns is about single records: the hourly sums cannot
# answer it, so such a query reads the flows table.
_PER_RECORD_COLUMNS = re.compile(
    r"\b(packets|bytes|ip_bytes|tcp_flags|first_seen|last_seen|end_reason|id|"
    r"pid|comm|uid|cgroup|container|retrans|rtt_us|rtt_min_us|drops|drop_reason|resets)\b"
)
# Ranges at least this long read their whole hours from flows_hourly (the edges from flows).
ROLLUP_MIN_RANGE = 3 * HOUR


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """What `flowscope history` asks. Times are Unix seconds; None is open-ended."""

    since: float | None = None
    until: float | None = None
    top: int | None = 20
    by: str = "bytes"
    group_by: str = "flow"
    where: str | None = None
    params: Sequence[Any] = ()
    exact: bool = False


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """Rows (dicts, output column -> value) and the range they cover, as used."""

    rows: list[dict[str, Any]]
    since: float
    until: float
    duration: float


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


OWNER_SQL = ", ".join(OWNER_COLUMNS)
_NO_OWNER = ", ".join(f"NULL AS {c}" for c in OWNER_COLUMNS)
HEALTH_SQL = ", ".join(NULLABLE_COUNTS)
_NO_HEALTH = ", ".join(f"NULL AS {c}" for c in NULLABLE_COUNTS)
_NO_REASON = "NULL AS drop_reason"
_COUNTS = "packets, bytes, ip_bytes, first_seen, last_seen"
_SOURCE_COLUMNS = (
    f"{KEYS_SQL}, {{owners}}, {{reason}}, packets, bytes, ip_bytes, {{health}}, first_seen, "
    "last_seen"
)
"""The columns a source row is read with; ``owners`` is OWNER_SQL, or _NO_OWNER for tables
without them (flows_hourly, and flows of files older than OWNER_VERSION); ``reason`` is
drop_reason or _NO_REASON, ``health`` HEALTH_SQL or _NO_HEALTH (before HEALTH_VERSION)."""


@dataclass(frozen=True, slots=True)
class _Window:
    """A range as history reads it: the half-open [since_ms, until_ms) (None: from the
    beginning), and when whole hours of it come from flows_hourly, those hours [hour_lo,
    hour_hi) and what the rollup has covered (flows ids up to ``done``; records at most
    ``max_span`` ms long)."""

    since_ms: int | None
    until_ms: int
    hour_lo: int | None = None
    hour_hi: int | None = None
    done: int = 0
    max_span: int = 0
    live: bool = False
    """Whether live flows were staged (stage_pending) and count too."""
    owners: str = OWNER_SQL
    """How flows rows give their OWNER_COLUMNS: the columns, or NULLs on older files."""
    health: bool = True
    """Whether flows (and flows_hourly) have retrans, drops and drop_reason (HEALTH_VERSION)."""

    def columns(self, table: str = "flows") -> str:
        """_SOURCE_COLUMNS as rows of ``table`` give them in this file."""
        if table == "flows_hourly":
            owners, reason = _NO_OWNER, _NO_REASON
        else:
            owners = self.owners if table == "flows" else OWNER_SQL
            reason = "drop_reason" if self.health or table != "flows" else _NO_REASON
        health = HEALTH_SQL if self.health or table == PENDING_TABLE else _NO_HEALTH
        return _SOURCE_COLUMNS.format(owners=owners, reason=reason, health=health)

    @property
    def hourly(self) -> bool:
        return self.hour_hi is not None


def _ms_text(ms: int) -> str:
    return iso_time(ms / 1000)


def _window(conn: sqlite3.Connection, since: float | None, until: float, rollup: bool) -> _Window:
    """The window of [since, until): with ``rollup``, the whole hours inside it."""
    s_ms = None if since is None else round(since * 1000)
    u_ms = round(until * 1000)
    if not rollup:
        return _Window(s_ms, u_ms)
    h = window.HOUR_MS
    lo = None if s_ms is None else -(-s_ms // h) * h
    hi = u_ms // h * h
    if lo is not None and lo >= hi:
        return _Window(s_ms, u_ms)
    done, max_span = conn.execute("SELECT flows_id, max_span_ms FROM rollup_state").fetchone()
    return _Window(s_ms, u_ms, lo, hi, int(done), int(max_span))


def _share_select(
    lo: int | None,
    hi: int,
    cond: str,
    where: str,
    records: str,
    table: str,
    columns: str,
) -> str:
    """Flows rows (of ``table``: flows, or the staged live flows) that meet ``cond``, each with
    the share of its counts in [lo, hi) and its times clipped to that range; rows that get
    nothing are left out. ``columns``: how the table gives _SOURCE_COLUMNS (_Window.columns)."""
    f, la = window.ms_sql("first_seen"), window.ms_sql("last_seen")
    shares = ", ".join(
        f"{window.share_sql(c, 'f_ms', 'l_ms', lo, hi, nullable=c in NULLABLE_COUNTS)} AS {c}"
        for c in SHARED_COLUMNS
    )
    lo_text = "first_seen" if lo is None else f"max(first_seen, '{_ms_text(lo)}')"
    return (
        f"SELECT * FROM (SELECT {KEYS_SQL}, {OWNER_SQL}, drop_reason, {shares}, "
        f"{lo_text} AS first_seen, "
        f"min(last_seen, '{_ms_text(hi)}') AS last_seen, {records} AS records "
        f"FROM (SELECT {columns}, {f} AS f_ms, "
        f"{la} AS l_ms FROM {table} "
        f"WHERE {cond}{where}{window.NO_FLATTEN})) WHERE packets > 0 OR bytes > 0"
    )


def _flow_parts(w: _Window, where: str, fparams: list[Any]) -> list[tuple[str, list[Any]]]:
    """The SELECTs over flows (with their parameters) that, with the hourly rows of
    _hourly_cond, hold every record's share of the window exactly once."""
    u_text = _ms_text(w.until_ms)
    overlap = f"first_seen < '{u_text}'"
    if w.since_ms is not None:
        overlap = f"last_seen >= '{_ms_text(w.since_ms)}' AND {overlap}"
    live = []
    if w.live:  # what the writers hold now: never rolled up, all of its share counts
        columns = w.columns(PENDING_TABLE)
        sql = _share_select(w.since_ms, w.until_ms, overlap, where, "1", PENDING_TABLE, columns)
        live.append((sql, fparams))
    if not w.hourly:
        whole = _share_select(w.since_ms, w.until_ms, overlap, where, "1", "flows", w.columns())
        return [(whole, fparams), *live]
    assert w.hour_hi is not None
    # records not rolled up yet: all of their share
    recent = f"id > {w.done} AND {overlap}"
    parts = [
        (_share_select(w.since_ms, w.until_ms, recent, where, "1", "flows", w.columns()), fparams)
    ]
    span = w.max_span + 1
    if w.hour_lo is not None and w.since_ms is not None and w.since_ms < w.hour_lo:
        # rolled up, before the first whole hour: they count in records only if they also
        # end there (else the hourly rows count them; the same below, after the last)
        lo_text = _ms_text(w.hour_lo)
        cond = (
            f"id <= {w.done} AND last_seen >= '{_ms_text(w.since_ms)}' "
            f"AND last_seen < '{_ms_text(w.hour_lo + span)}' AND first_seen < '{lo_text}'"
        )
        records = f"({LAST_MS_SQL.format(f='f_ms', l='l_ms')} < {w.hour_lo})"
        sql = _share_select(w.since_ms, w.hour_lo, cond, where, records, "flows", w.columns())
        parts.append((sql, fparams))
    if w.hour_hi < w.until_ms:
        cond = (
            f"id <= {w.done} AND last_seen >= '{_ms_text(w.hour_hi)}' "
            f"AND last_seen < '{_ms_text(w.until_ms + span)}' AND first_seen < '{u_text}'"
        )
        records = f"({LAST_MS_SQL.format(f='f_ms', l='l_ms')} >= {w.hour_hi})"
        sql = _share_select(w.hour_hi, w.until_ms, cond, where, records, "flows", w.columns())
        parts.append((sql, fparams))
    return [*parts, *live]


def _hourly_cond(w: _Window) -> str:
    assert w.hour_hi is not None
    lo = "" if w.hour_lo is None else f"hour >= '{_ms_text(w.hour_lo)}' AND "
    return f"{lo}hour < '{_ms_text(w.hour_hi)}' AND (packets > 0 OR bytes > 0)"


def _source(w: _Window, where: str, fparams: list[Any]) -> tuple[str, list[Any]]:
    """One UNION ALL of every row that counts in the window: a record's share, or an hour's
    sums of shares."""
    parts = _flow_parts(w, where, fparams)
    if w.hourly:
        parts.insert(
            0,
            (
                f"SELECT {w.columns('flows_hourly')}, records FROM flows_hourly "
                f"WHERE {_hourly_cond(w)}{where}",
                fparams,
            ),
        )
    return " UNION ALL ".join(sql for sql, _ in parts), [p for _, ps in parts for p in ps]


PENDING_TABLE = "temp.flowscope_pending"
"""Where a reader puts the live flows of the pending table, shaped like flows."""


def stage_pending(conn: sqlite3.Connection) -> int:
    """Copy what the writers hold in ``pending`` (the part of each live flow no record holds
    yet, as of their last tick) into PENDING_TABLE, shaped like ``flows``, with end reason
    ``live``: history then counts what is running now, not only what was written. Call it
    inside the read transaction of the query, so both tables are the same moment. Returns how
    many rows it staged (0, and no table, on files without ``pending``)."""
    if not _has_table(conn, "pending"):
        return 0
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS flowscope_pending ({', '.join(FLOW_COLUMNS)})")
    conn.execute(f"DELETE FROM {PENDING_TABLE}")
    version = schema_version(conn)
    owners = "owners" if version >= PENDING_OWNER_VERSION else "NULL"
    health = "health" if version >= PENDING_HEALTH_VERSION else "NULL"
    rows = conn.execute(f"SELECT family, ifaces, flows, {owners}, {health} FROM pending").fetchall()
    records = pending_rows_records(rows, "live")
    conn.executemany(
        f"INSERT INTO {PENDING_TABLE} VALUES ({', '.join('?' * len(FLOW_COLUMNS))})",
        [flow_row(r) for r in records],
    )
    return len(records)


# per group: the text is fixed-width, so the latest text is the latest time (one julianday
# per group, not two per row)
_ACTIVE_MS = f"({window.ms_sql('max(last_seen)')} - {window.ms_sql('min(first_seen)')})"
MIN_ACTIVE_SECONDS = 1.0
"""A group active for less than this (one packet, one tick) has its rate over this long."""


def _aggregate(
    conn: sqlite3.Connection, source: str, params: list[Any], q: HistoryQuery
) -> list[dict[str, Any]]:
    """Sum the source rows by q.group_by, ordered by q.by (ties by the group's columns)."""
    group = GROUPINGS[q.group_by]
    select_group = ", ".join(f"{expr} AS {name}" for name, expr in group)
    group_cols = ", ".join(name for name, _ in group)
    order = ORDERINGS[q.by]
    if q.by == "bps":
        order = f"sum(bytes) * 1.0 / max({_ACTIVE_MS}, {MIN_ACTIVE_SECONDS * 1000})"
    sql = (
        f"SELECT {select_group}, sum(packets) AS packets, sum(bytes) AS bytes, "
        f"sum(ip_bytes) AS ip_bytes, sum(records) AS records, "
        f"sum(retrans) AS retrans, sum(drops) AS drops, "
        f"min(first_seen) AS first_seen, max(last_seen) AS last_seen, "
        f"{_ACTIVE_MS} AS active_ms "
        f"FROM ({source}) GROUP BY {group_cols} "
        f"ORDER BY {order} DESC, {group_cols}"
    )
    params = list(params)
    if q.top is not None:
        sql += " LIMIT ?"
        params.append(q.top)
    cur = conn.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur]


# The threshold algorithm reads at most this many rows per hour before it gives up and sums
# everything (flows of nearly equal size cannot be told apart from the top of each hour).
_TOP_PER_HOUR_LIMIT = 1024
_CANDIDATES = "temp.flowscope_top_candidates"
_HOURS = "temp.flowscope_top_hours"


def _hours_between(first: str, last: str) -> list[str]:
    """Every hour text from ``first`` to ``last`` inclusive."""
    t, end = parse_iso(first), parse_iso(last)
    out = []
    while t <= end:
        out.append(hour_text(t))
        t += HOUR
    return out


def _top_flows(
    conn: sqlite3.Connection,
    q: HistoryQuery,
    w: _Window,
    where: str,
    fparams: list[Any],
) -> list[dict[str, Any]] | None:
    """The top q.top flows by bytes, packets or records without summing every flow of the
    range: the threshold algorithm (Fagin et al.) over flows_hourly's (hour, bytes), (hour,
    packets) and (hour, records) indexes. None when it cannot decide cheaply; the caller
    then sums everything.

    Candidates are the M largest flows of each whole hour and of each part read from flows
    (records not rolled up yet, the partial hours at the edges, live flows). A flow that is
    not a candidate has at most the M+1-th value of each of these, so its total is at most the
    sum of those; once the q.top-th candidate's exact total is greater than that bound, no
    other flow can reach the top (not even on a tie, which the key columns would break), and
    the candidates' exact sums (the slow path's aggregate over their rows only) are the
    answer. Otherwise M grows. Only key columns are filtered on here (else no rollup), so a
    candidate's rows all pass the filter."""
    col = ORDERINGS[q.by]
    assert w.hour_hi is not None
    lo_cond = "" if w.hour_lo is None else f"hour >= '{_ms_text(w.hour_lo)}' AND "
    lo, hi = conn.execute(
        f"SELECT min(hour), max(hour) FROM flows_hourly "
        f"WHERE {lo_cond}hour < '{_ms_text(w.hour_hi)}'"
    ).fetchone()
    if lo is None or q.top is None:
        return None
    hours = _hours_between(lo, hi)
    if len(hours) > 24 * 31:
        return None
    keys = ", ".join(FLOW_KEY_COLUMNS)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {_CANDIDATES} ({keys}, UNIQUE ({keys}))")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {_HOURS} (hour TEXT PRIMARY KEY)")
    insert = f"INSERT OR IGNORE INTO {_CANDIDATES} ({keys}) "
    flow_parts = _flow_parts(w, where, fparams)
    try:
        conn.executemany(f"INSERT INTO {_HOURS} VALUES (?)", [(h,) for h in hours])
        # IS, not =: GROUP BY takes NULLs as equal, so the join must too.
        same = " AND ".join(f"{{t}}.{c} IS c.{c}" for c in FLOW_KEY_COLUMNS)
        hourly = ", ".join(
            c if " AS " in c else f"h.{c}" for c in w.columns("flows_hourly").split(", ")
        )
        source = (
            f"SELECT {hourly}, h.records "
            f"FROM {_HOURS} x CROSS JOIN {_CANDIDATES} c "
            f"CROSS JOIN flows_hourly h ON h.hour = x.hour AND {same.format(t='h')}"
        )
        # the candidates' records: a row value IN the candidates' unique index, one lookup
        # per record and before any share is computed (flow records never have NULL keys,
        # which IN would not match)
        of_candidates = f"{where} AND ({keys}) IN (SELECT {keys} FROM {_CANDIDATES})"
        candidate_parts = _flow_parts(w, of_candidates, fparams)
        for sql, _ in candidate_parts:
            source += f" UNION ALL {sql}"
        source_params = [p for _, ps in candidate_parts for p in ps]
        per_hour = (
            f"SELECT {keys}, {col} FROM flows_hourly WHERE hour = ?{where} "
            f"ORDER BY {col} DESC LIMIT ?"
        )
        # the parts read from flows (the edges of the range, records not rolled up yet, live
        # flows) count as hours of their own: their M largest flows are candidates too, and
        # their M+1-th adds to the bound (else every flow of an edge hour is a candidate)
        per_part = [
            (f"SELECT {keys}, sum({col}) AS v FROM ({sql}) GROUP BY {keys} "
             "ORDER BY v DESC LIMIT ?", params)
            for sql, params in flow_parts
        ]  # fmt: skip
        add = f"{insert} VALUES ({', '.join('?' * len(FLOW_KEY_COLUMNS))})"
        m = max(2 * q.top, 32)
        while m <= _TOP_PER_HOUR_LIMIT:
            bound, exhausted = 0, True
            tops = [conn.execute(per_hour, [h, *fparams, m + 1]).fetchall() for h in hours]
            tops += [conn.execute(sql, [*params, m + 1]).fetchall() for sql, params in per_part]
            for rows in tops:
                conn.executemany(add, [r[:-1] for r in rows[:m]])
                if len(rows) > m:
                    bound += rows[m][-1]
                    exhausted = False
            top = _aggregate(conn, source, source_params, q)
            if exhausted or (len(top) == q.top and top[-1][col] > bound):
                return top
            m *= 4
        return None
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute(f"DELETE FROM {_CANDIDATES}")
            conn.execute(f"DELETE FROM {_HOURS}")


@contextlib.contextmanager
def _read_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction (unless the caller has one): every query sees the same data."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("COMMIT")


def history(conn: sqlite3.Connection, q: HistoryQuery, now: float | None = None) -> HistoryResult:
    """Sum what the flow records hold of [since, until) by the chosen grouping, top N first.

    Window semantics (window.py): each record's packets and bytes are spread evenly over its
    [first_seen, last_seen], and only the share inside the range counts; a group's first and
    last seen are clipped to the range, and its ``bps`` is its bytes over the time it was
    active inside the range (from its first to its last packet there, at least
    MIN_ACTIVE_SECONDS), not over the whole range. A long range (3 h or more, unless
    ``exact``) reads its whole hours from flows_hourly, whose rows hold the same shares, and
    the edges from flows: the same totals either way. There the top flows come from the
    threshold algorithm (_top_flows), which gives the same rows as summing every flow.
    What running recordings hold and have not written yet (their ``pending`` rows, as of
    their last tick) counts too: "the last 5 minutes" includes the flows running now.
    ``q.where``/``q.params`` is a filter's to_sql() (positional parameters)."""
    if q.group_by not in GROUPINGS:
        raise UsageError(f"--group-by: unknown grouping {q.group_by!r}")
    if q.by not in ORDERINGS:
        raise UsageError(f"--by: unknown ordering {q.by!r}")
    now = time.time() if now is None else now
    until = now if q.until is None else q.until
    since = q.since
    if since is not None and since > until:
        raise UsageError(f"--since {iso_time(since)} is later than --until {iso_time(until)}")
    where = f" AND ({q.where})" if q.where else ""
    fparams = list(q.params)
    with translate_errors("cannot read history from", "the database"):
        version = check_version(conn, "the database")
        use_rollup = (
            not q.exact
            and q.group_by not in OWNER_GROUPINGS
            and not (q.where and _PER_RECORD_COLUMNS.search(q.where))
            and (since is None or until - since >= ROLLUP_MIN_RANGE)
            and _has_table(conn, "flows_hourly")
            and version >= 6
        )
        with _read_transaction(conn):
            live = stage_pending(conn) > 0
            owners = OWNER_SQL if version >= OWNER_VERSION else _NO_OWNER
            w = dataclasses.replace(
                _window(conn, since, until, use_rollup),
                live=live,
                owners=owners,
                health=version >= HEALTH_VERSION,
            )
            rows: list[dict[str, Any]] | None = None
            if w.hourly and (
                q.group_by == "flow"
                and ORDERINGS[q.by] in ("bytes", "packets", "records")
                and q.top
            ):
                rows = _top_flows(conn, q, w, where, fparams)
            if rows is None:
                source, params = _source(w, where, fparams)
                rows = _aggregate(conn, source, params, q)
            start = since
            if start is None:
                first = conn.execute("SELECT min(first_seen) FROM flows").fetchone()[0]
                start = min(parse_iso(first), until) if first else until
    duration = max(until - start, 1e-3)
    for row in rows:
        active = max((row.pop("active_ms") or 0) / 1000, MIN_ACTIVE_SECONDS)
        row["bps"] = row["bytes"] * 8 / active
    return HistoryResult(rows=rows, since=start, until=until, duration=duration)


ALERT_COLUMNS = ("start", "last", "kind", "source", "target", "flows", "sources", "filter")


def alerts(conn: sqlite3.Connection, since: float | None, until: float) -> list[dict[str, Any]]:
    """The alerts that were going on at some time in [since, until], oldest first; a
    database from before alerts were kept has none."""
    if since is not None and since > until:
        raise UsageError(f"--since {iso_time(since)} is later than --until {iso_time(until)}")
    with translate_errors("cannot read alerts from", "the database"):
        check_version(conn, "the database")
        if not _has_table(conn, "alerts"):
            return []
        cur = conn.execute(
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE last >= ? AND start <= ? "
            "ORDER BY start, session, id",
            (iso_time(since) if since is not None else "", iso_time(until)),
        )
        return [dict(zip(ALERT_COLUMNS, row, strict=True)) for row in cur]
