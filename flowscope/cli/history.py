"""`history`, `alerts` and `sql`: headless reads of the history database, as an aligned
table, JSON lines or CSV (never Textual)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from flowscope.cli.main import MAX_ROWS, Seconds, main
from flowscope.cli.options import history_db_option
from flowscope.vocab import GROUPINGS

# --- history and sql: headless reads of the history database ----------------------------------

_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="An aligned table, one JSON object per line, or CSV with a header.",
)


def _history_cells(
    row: dict[str, Any], group_by: str, iface: bool, days: bool = False, health: bool = False
) -> dict[str, str]:
    """The table cells of one history row: host:port pairs, the protocol after its
    direction's mark, first and last seen in the range (UTC; with the day when ``days``), human
    units; the interface only when the rows span several; with ``health``, retransmitted
    segments and kernel drops ("-" where not followed)."""
    from flowscope.history.browse import key_cells
    from flowscope.vocab import human, human_bytes, human_rate, time_of_day

    cells = key_cells(row, group_by)
    if group_by == "flow":  # the protocol first, as ss and nfdump have it
        cells = {"proto": cells.pop("proto"), **cells}
        if iface:
            cells["iface"] = f"{row['iface']}" + (f".{row['vlan']}" if row["vlan"] else "")
    cells["first"] = time_of_day(row["first_seen"], days)
    cells["last"] = time_of_day(row["last_seen"], days)
    # the history screen's names: the IPv4 rows of a flow table then fit in 80 columns
    cells["pkts"] = human(row["packets"])
    cells["bytes"] = human_bytes(row["bytes"])
    cells["rate"] = human_rate(row["bps"])
    cells["recs"] = str(row["records"])
    if health:
        for name, col in (("retr", "retrans"), ("drops", "drops")):
            cells[name] = "-" if row.get(col) is None else human(row[col])
    return cells


_since_option = click.option(
    "--since",
    default=None,
    metavar="WHEN",
    help="Start: 10m, 2h, 7d ago; 13:30, yesterday 03:00, 2026-11-22 03:10 (local time, TZ) or "
    "ISO 8601 with a zone.",
)
_until_option = click.option(
    "--until", default=None, metavar="WHEN", help="End: as --since (default: now)."
)
_utc_option = click.option(
    "--utc", is_flag=True, help="Read times without a zone as UTC, not local time."
)


def _range(
    since: str | None, until: str | None, utc: bool, now: float
) -> tuple[float | None, float | None]:
    """--since and --until as Unix seconds (None where not given)."""
    from flowscope.when import parse_when

    t_since = parse_when(since, "--since", now, utc=utc) if since is not None else None
    t_until = parse_when(until, "--until", now, utc=utc) if until is not None else None
    return t_since, t_until


@main.command()
@history_db_option
@_since_option
@_until_option
@_utc_option
@click.option(
    "--top",
    type=click.IntRange(0, MAX_ROWS),
    default=20,
    show_default=True,
    help="Rows (0: all).",
)
@click.option(
    "--by",
    type=click.Choice(["bytes", "packets", "flows", "bps", "retrans", "drops"]),
    default="bytes",
    show_default=True,
    help="What to rank by (flows: flow records; bps: the rate while active; retrans: TCP "
    "segments sent again; drops: packets the kernel dropped).",
)
@click.option(
    "--group-by",
    type=click.Choice([*GROUPINGS, "drop_reason"]),
    default="flow",
    show_default=True,
    help="Sum per flow, host, host pair (both directions), port (received and sent apart: "
    "↓tcp 443 is a service of ours, ↑tcp 50412 a peer's port), protocol, interface, VLAN, "
    "the process, user or container of the flow's local socket, or the kernel's main reason "
    "for a flow's drops (these read flows, never the hourly rollup).",
)
@click.option("--filter", "filter_text", default=None, metavar="EXPR", help="'dport 443 and tcp'")
@_format_option
@click.option(
    "--exact",
    is_flag=True,
    help="Read every record even for ranges of 3 h or more (else whole hours come from hourly "
    "sums: the same totals, faster).",
)
def history(
    db: Path | None,
    since: str | None,
    until: str | None,
    utc: bool,
    top: int,
    by: str,
    group_by: str,
    filter_text: str | None,
    fmt: str,
    exact: bool,
) -> None:
    """Top flows (or hosts, ports...) of a time range, from the history database.

    Each record's packets and bytes are spread evenly over its first..last seen, and only
    the share inside [since, until) counts (a 60 s record in a 10 s window counts a sixth);
    first and last seen are clipped to the range, and bps is the rate over the time a row was
    active in the range (its first to last packet there, at least 1 s), not over the whole
    range. Times typed without a zone are local (TZ; --utc: UTC); times printed are UTC, with
    their Z."""
    from flowscope.cli import output
    from flowscope.history import files, queries, schema
    from flowscope.model import proto_name
    from flowscope.pipeline import db_path

    now = time.time()
    t_since, t_until = _range(since, until, utc, now)
    where: str | None = None
    params: list[object] = []
    conn = files.connect_readonly(db_path(db))
    try:
        if filter_text:
            from flowscope.kernel.btf import known_drop_reasons
            from flowscope.query.filter import parse
            from flowscope.query.nodes import register_sql_functions

            flt = parse(filter_text, known_drop_reasons)
            if not flt.matches_all:
                where, params = flt.to_sql()
            register_sql_functions(conn)
        query = queries.HistoryQuery(
            since=t_since,
            until=t_until,
            top=top or None,
            by=by,
            group_by=group_by,
            where=where,
            params=params,
            exact=exact,
        )
        result = queries.history(conn, query, now=now)
    finally:
        conn.close()
    rows = result.rows
    for row in rows:
        row.pop("family", None)
    if fmt in ("json", "csv"):  # names for machines too; the table formats them itself
        rows = [{**r, "proto": proto_name(r["proto"])} if "proto" in r else r for r in rows]
    if fmt == "json":
        output.write_json_lines(rows)
        return
    if fmt == "csv":
        columns = list(rows[0]) if rows else ["packets", "bytes", "records"]
        output.write_csv(columns, [[r[c] for c in columns] for r in rows])
        return
    title = (
        f"{schema.iso_time(result.since)} to {schema.iso_time(result.until)}; "
        "times UTC; rate: while active in the range"
    )
    if not rows:
        click.echo(f"no flows from {title}")
        return
    several = len({(r.get("iface"), r.get("vlan"), r.get("direction")) for r in rows}) > 1
    days = result.until - result.since > 86400
    # retransmissions and drops where a row has them (or they are what is asked for)
    health = (
        by in ("retrans", "drops")
        or group_by == "drop_reason"
        or any(r.get("retrans") is not None or r.get("drops") is not None for r in rows)
    )
    cells = [_history_cells(r, group_by, several, days, health) for r in rows]
    columns = list(cells[0])
    output.write_table(
        columns,
        [[c[k] for k in columns] for c in cells],
        right=("pkts", "bytes", "rate", "recs", "retr", "drops", "sport", "dport", "vlan"),
        title=title,
        droppable=("recs", "first", "last"),
    )


@main.command()
@history_db_option
@_since_option
@_until_option
@_utc_option
@_format_option
def alerts(db: Path | None, since: str | None, until: str | None, utc: bool, fmt: str) -> None:
    """Scans and SYN floods detected while recording, from the history database.

    Every recording (record, live, replay --db, demo) watches its new connections: one source
    reaching many ports or hosts within seconds is a scan, many sources opening connections
    to one port is a SYN flood. Each alert is one row, kept up to date while it goes on:
    source, target, its first and last new flow, the new flows counted and their rate, and
    the filter that shows its flows (`flowscope history --filter ...`). Lists the alerts
    going on at some time in [--since, --until] (default: all). Times printed are UTC, with
    their Z."""
    from flowscope import vocab
    from flowscope.cli import output
    from flowscope.collect.detect import COLUMNS, rate
    from flowscope.history import files, queries, schema
    from flowscope.pipeline import db_path

    now = time.time()
    t_since, t_until = _range(since, until, utc, now)
    conn = files.connect_readonly(db_path(db))
    try:
        rows = queries.alerts(conn, t_since, now if t_until is None else t_until)
    finally:
        conn.close()
    for row in rows:
        start, last = schema.parse_iso(row["start"]), schema.parse_iso(row["last"])
        row["rate"] = round(rate(row["flows"], start, last), 1)
    if fmt == "json":
        output.write_json_lines(rows)
    elif fmt == "csv":
        columns = [*queries.ALERT_COLUMNS, "rate"]
        output.write_csv(columns, [[r[c] for c in columns] for r in rows])
    elif not rows:
        since_text = f" since {schema.iso_time(t_since)}" if t_since is not None else ""
        until_text = f" until {schema.iso_time(t_until)}" if t_until is not None else ""
        click.echo(f"no alerts{since_text}{until_text}")
    else:
        days = len({r["start"][:10] for r in rows} | {r["last"][:10] for r in rows}) > 1
        output.write_table(
            [*COLUMNS, "filter"],  # as the console's alerts screen has them
            [
                [
                    r["kind"],
                    r["source"],
                    r["target"],
                    vocab.time_of_day(r["start"], days),
                    vocab.time_of_day(r["last"], days),
                    str(r["flows"]),
                    vocab.human(r["rate"]),
                    r["filter"],
                ]
                for r in rows
            ],
            right=("flows", "per s"),
            title="alerts; times UTC; per s: new flows per second while it went on",
            droppable=("filter", "last"),
        )


@main.command()
@history_db_option
@_format_option
@click.option(
    "--timeout",
    type=Seconds(0, 86400.0),
    default=10.0,
    show_default=True,
    help="Stop the statement after this many seconds (Ctrl-C stops it too).",
)
@click.option(
    "--max-rows",
    type=click.IntRange(1, MAX_ROWS),
    default=100_000,
    show_default=True,
    help="Refuse a result longer than this (use LIMIT).",
)
@click.option(
    "--max-memory",
    type=click.IntRange(16, 1 << 20),
    default=256,
    show_default=True,
    metavar="MIB",
    help="Stop a statement, or refuse a result, that needs more memory than this.",
)
@click.argument("query")
def sql(
    db: Path | None, fmt: str, timeout: float, max_rows: int, max_memory: int, query: str
) -> None:
    """Run one read-only SQL statement on the history database.

    Tables: flows, samples, events, flows_hourly (see README). Writes, ATTACH and pragmas
    that change anything are refused; a statement runs at most --timeout seconds, uses at
    most --max-memory MiB and returns at most --max-rows rows."""
    from flowscope.cli import output
    from flowscope.history.sandbox import read_sql
    from flowscope.pipeline import db_path

    columns, rows = read_sql(
        db_path(db), query, timeout=timeout, max_rows=max_rows, max_memory=max_memory
    )
    if fmt == "json":
        output.write_json_lines([dict(zip(columns, r, strict=True)) for r in rows])
    elif fmt == "csv":
        output.write_csv(columns, rows)
    elif columns:
        output.write_table(columns, rows)
