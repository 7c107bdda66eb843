"""SQLite history: the store the writer writes each tick into, in one transaction; retention.

The database is one file (default ``$XDG_STATE_HOME/flowscope/flows.db``) that ``sqlite3`` and
Datasette open as they are. Three tables hold what the collector produces: ``flows`` (one row per
flow record), ``samples`` (one row per tick) and ``events`` (new-flow events); ``alerts`` holds
the scans and floods the writer detected in those events; ``flows_hourly``
keeps per-hour totals of every flow, maintained in the same transaction as ``flows``, so that a
top-N over a day of history reads thousands of rows instead of millions.

Times are ISO 8601 UTC text with milliseconds and a ``Z``, always the same width
(``2026-11-22T03:12:00.123Z``): text comparison is time order, so range queries use plain
indexes; a human reads them in ``sqlite3`` and Datasette without conversion; and SQLite's date
functions take them directly (``julianday(last_seen)``, ``strftime('%s', first_seen)``).

This module never imports textual: ``history`` and ``sql`` are headless commands.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flowscope import abi
from flowscope.collect.block import BlockNote
from flowscope.collect.detect import Alert
from flowscope.history.files import StoreError, create_private_file, translate_errors
from flowscope.history.schema import (
    COUNTER_COLUMNS_V1,
    EVENT_COLUMNS,
    FLOOD_COLUMNS,
    FLOW_COLUMNS,
    FLOW_COLUMNS_V1,
    HEALTH_COLUMNS,
    HOUR,
    KINDS_COLUMNS,
    MIGRATIONS,
    OWNER_COLUMNS,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    check_version,
    hour_text,
    iso_time,
    parse_iso,
    roll_up,
)
from flowscope.model import (
    FlowKey,
    FlowRecord,
    NewFlow,
    Owner,
    PendingBlob,
    PendingFlows,
    Sample,
    pending_records,
)

# --- the store -----------------------------------------------------------------------------

INSERT_FLOW = (
    f"INSERT INTO flows ({', '.join(FLOW_COLUMNS)}) VALUES ({', '.join('?' * len(FLOW_COLUMNS))})"
)
_INSERT_SAMPLE = (
    f"INSERT INTO samples ({', '.join(SAMPLE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(SAMPLE_COLUMNS))})"
)
_INSERT_FLOOD = (
    f"INSERT INTO floods ({', '.join(FLOOD_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(FLOOD_COLUMNS))})"
)
_INSERT_BLOCK = (
    "INSERT INTO blocks (time, session, action, rule, ttl, matched, confirmed) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
FLOOD_ROWS = 20
"""Rows of a tick's flood shape written to history (of collect.flood.TOP_ROWS)."""
_INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
)

_UPSERT_ALERT = (
    "INSERT INTO alerts (session, id, kind, source, target, start, last, flows, sources, "
    "filter) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session, id) DO UPDATE SET "
    "source = excluded.source, last = excluded.last, flows = excluded.flows, "
    "sources = excluded.sources"
)


def _direction(key: FlowKey) -> str:
    return abi.DIRECTION_NAMES.get(key.direction, str(key.direction))


def flow_row(r: FlowRecord) -> tuple[Any, ...]:
    """A record as the values of FLOW_COLUMNS (NULL for what was not followed: the owner of a
    flow without one, health values of -1, a drop reason without drops). One expression, no
    helper calls: it runs for every record a tick finishes."""
    k = r.key
    o = r.owner
    drops = r.drops
    fast, rto, probe = r.retrans_kinds
    return (
        r.iface,
        _direction(k),
        k.vlan,
        k.family,
        k.src,
        k.dst,
        k.sport,
        k.dport,
        k.proto,
        iso_time(r.first_seen),
        iso_time(r.last_seen),
        r.packets,
        r.bytes,
        r.ip_bytes,
        r.tcp_flags,
        r.end_reason,
        *(
            (None, None, None, None, None)
            if o is None
            else (o.pid, o.comm, o.uid, o.cgroup, o.container)
        ),
        None if r.retrans < 0 else r.retrans,
        None if r.rtt_us < 0 else r.rtt_us,
        None if r.rtt_min_us < 0 else r.rtt_min_us,
        None if drops < 0 else drops,
        (r.drop_reason or None) if drops > 0 else None,
        None if r.resets < 0 else r.resets,
        None if fast < 0 else fast,
        None if rto < 0 else rto,
        None if probe < 0 else probe,
    )


_BASE = len(FLOW_COLUMNS_V1)
_GROUPS: tuple[tuple[int, int], ...] = tuple(
    (FLOW_COLUMNS.index(group[0]), FLOW_COLUMNS.index(group[-1]) + 1)
    for group in (OWNER_COLUMNS, HEALTH_COLUMNS, ("resets",), KINDS_COLUMNS)
)
"""The (start, stop) in FLOW_COLUMNS of each group of columns that is NULL where it was not
followed (owners, TCP health and drops, resets, retransmission kinds), after the base."""
assert FLOW_COLUMNS[:_BASE] == FLOW_COLUMNS_V1 and _GROUPS[0][0] == _BASE
assert _GROUPS[-1][1] == len(FLOW_COLUMNS)


def flow_insert(records: Sequence[FlowRecord]) -> tuple[str, list[tuple[Any, ...]]]:
    """The INSERT into flows and its rows for these records, leaving out each group of columns
    that no record has a value in (SQLite fills them with NULL all the same).

    Python's sqlite3 adapts every None it binds (a registry lookup and two attribute lookups),
    which costs more than binding the rest of a row: a tick of records with nothing but the
    counts (a replay; flows without a local socket: forwarded or scanning traffic) is inserted
    about twice as fast without them."""
    rows = [flow_row(r) for r in records]
    present = [
        (start, stop)
        for start, stop in _GROUPS
        if any(v is not None for row in rows for v in row[start:stop])
    ]
    if len(present) == len(_GROUPS):
        return INSERT_FLOW, rows
    columns = [*range(_BASE), *(i for start, stop in present for i in range(start, stop))]
    sql = (
        f"INSERT INTO flows ({', '.join(FLOW_COLUMNS[i] for i in columns)}) "
        f"VALUES ({', '.join('?' * len(columns))})"
    )
    if not present:
        return sql, [row[:_BASE] for row in rows]
    return sql, [tuple(row[i] for i in columns) for row in rows]


def flood_rows(sample: Sample) -> list[tuple[Any, ...]]:
    """The largest FLOOD_ROWS rows of a tick's flood shape, as rows of ``floods``."""
    at = iso_time(sample.time)
    return [
        (at, r.family, r.prefix, r.proto, r.dport, abi.DIRECTION_NAMES[r.direction],
         r.tcp_flags, r.packets, r.bytes, r.in_flows)
        for r in sample.flood.rows[:FLOOD_ROWS]
    ]  # fmt: skip


def _process_identity(pid: int) -> str | None:
    """``boot id:pid:start time`` of a running process, None if there is none: a pid alone
    is reused, and a reboot starts the numbering again."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count from its end
    start = stat[stat.rindex(")") + 2 :].split()[19]
    return f"{boot}:{pid}:{start}"


def new_session() -> str:
    """A writer's name in the pending table: this process's identity and a random part (one
    process may open several writers, as tests do)."""
    return f"{_process_identity(os.getpid())}:{os.urandom(4).hex()}"


def owners_json(owners: Sequence[Owner] | None) -> str | None:
    """pending.owners: the processes of a pending blob, in its order (None: none known)."""
    if owners is None:
        return None
    return json.dumps([[o.pid, o.comm, o.uid, o.cgroup] for o in owners])


def health_json(blob: PendingBlob) -> str | None:
    """pending.health: the drop reasons of a blob with the health columns (a JSON list), or,
    when it has the resets column too, {"reasons": [...], "resets": true} (None: neither)."""
    if blob.reasons is None:
        return None
    return json.dumps({"reasons": blob.reasons, "resets": True} if blob.resets else blob.reasons)


def health_from_json(text: str | None) -> tuple[list[str] | None, bool]:
    """The drop reasons and whether the blob has resets, from pending.health (health_json)."""
    if text is None:
        return None, False
    value = json.loads(text)
    if isinstance(value, dict):
        return [str(r) for r in value["reasons"]], bool(value.get("resets"))
    return [str(r) for r in value], False


def pending_rows_records(
    rows: Sequence[tuple[int, str, bytes, str | None, str | None]], reason: str
) -> list[FlowRecord]:
    """The records that pending rows (family, interface names as JSON, blob, owners as JSON
    or None, drop reasons as JSON or None) stand for."""
    records: list[FlowRecord] = []
    for family, ifaces, data, owners_text, health_text in rows:
        names = {int(k): v for k, v in json.loads(ifaces).items()}
        owners = (
            [Owner(int(p), str(c), int(u), str(g)) for p, c, u, g in json.loads(owners_text)]
            if owners_text is not None
            else None
        )
        reasons, resets = health_from_json(health_text)
        records.extend(pending_records(family, data, names, reason, owners, reasons, resets))
    return records


def session_alive(session: str) -> bool:
    """Whether the process that wrote a session's pending rows still runs."""
    ident, _, _ = session.rpartition(":")
    pid = ident.split(":")[1] if ident.count(":") >= 2 else ""
    return pid.isdigit() and _process_identity(int(pid)) == ident


class Store:
    """A flowscope history database open for writing (creating and upgrading it as needed).

    Not thread-safe: one thread at a time (the Writer's, once it runs)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.session = new_session()
        self.created = not os.path.lexists(self.path)
        """This store made the file (a run that fails before collecting removes it again)."""
        with translate_errors("cannot create", self.path):
            try:
                create_private_file(self.path)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise StoreError(
                        f"{self.path} is a symbolic link", "pass the file it points to with --db"
                    ) from e
                raise StoreError(f"cannot create {self.path}: {e.strerror}") from e
            # isolation_level=None: transactions are the explicit BEGIN/COMMIT below.
            self.conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=5.0, check_same_thread=False
            )
        try:
            with translate_errors("cannot open", self.path):
                self._setup()
        except BaseException:
            self.conn.close()
            raise

    def _setup(self) -> None:
        version = check_version(self.conn, self.path)
        tables = self.conn.execute("SELECT 1 FROM sqlite_master").fetchone()
        if version == 0 and tables:
            # every flowscope migration sets user_version in its own transaction: tables at
            # version 0 are another application's, which must not gain ours
            raise StoreError(
                f"{self.path} is an SQLite database of another application",
                "pass a new file (or flowscope's own) with --db",
            )
        if version == 0 and not tables:
            # Only on a fresh file: lets prune() give pages back to the file system.
            self.conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        self.conn.execute("PRAGMA journal_mode = WAL")
        # With WAL, NORMAL loses at most the last transactions on power loss, never integrity.
        self.conn.execute("PRAGMA synchronous = NORMAL")
        # Checkpoint (and fsync) every ~40 MB of WAL instead of every 4 MB: fewer stalls.
        self.conn.execute("PRAGMA wal_autocheckpoint = 10000")
        self.migrate()

    def migrate(self) -> int:
        """Run the migrations this file has not had, each in its own transaction; the version.

        sqlite-utils is imported only when there is one to run: its import (plugin discovery
        included) took 0.1-0.2 s of every start of `live` before the console was drawn."""
        version = check_version(self.conn, self.path)
        if version == SCHEMA_VERSION:
            return SCHEMA_VERSION
        import sqlite_utils

        db = sqlite_utils.Database(self.conn)
        for i in range(version, SCHEMA_VERSION):
            with self.transaction():
                MIGRATIONS[i](db)
                self.conn.execute(f"PRAGMA user_version = {i + 1}")
        return SCHEMA_VERSION

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error (so a failed tick leaves nothing)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def rollup(self) -> int:
        """Bring flows_hourly up to date with flows, in one transaction; the rows it added.

        Kept off write_tick on purpose: an upsert per record would halve the insert rate,
        while one GROUP BY a minute costs the writer thread a few milliseconds."""
        with translate_errors("cannot write to", self.path), self.transaction():
            return roll_up(self.conn)

    def close(self) -> None:
        """Close the connection (a checkpoint folds the WAL back into the file)."""
        with translate_errors("cannot close", self.path):
            self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_tick(
        self,
        records: Sequence[FlowRecord],
        sample: Sample | None,
        events: Sequence[NewFlow],
        records_dropped: int = 0,
        pending: Sequence[PendingFlows] | None = None,
        alerts: Sequence[Alert] = (),
        blocks: Sequence[BlockNote] = (),
    ) -> None:
        """Write one collector tick in ONE transaction: all of it, or (on error) nothing.
        ``blocks`` are changes of the block rules since the last tick written.
        ``alerts`` are the alerts the tick raised or updated (inserted, or updated in place).

        ``records_dropped`` is how many records the writer had to drop since the last sample
        it wrote; it goes into this tick's sample. ``pending`` (unless None) replaces this
        writer's pending rows: with the records of the same tick, history then holds every
        packet the kernel had counted at that tick, whatever happens next."""
        pending_rows = [
            (
                self.session,
                p.batch.family,
                json.dumps(p.iface_names),
                blob.data,
                owners_json(blob.owners),
                health_json(blob),
            )
            for p in pending or ()
            for blob in (p.encode(),)
        ]
        event_rows = [
            (
                iso_time(e.time),
                e.iface,
                _direction(e.key),
                e.key.vlan,
                e.key.family,
                e.key.src,
                e.key.dst,
                e.key.sport,
                e.key.dport,
                e.key.proto,
                e.length,
                int(e.map_full),
            )
            for e in events
        ]
        with translate_errors("cannot write to", self.path), self.transaction():
            self._insert_records(records)
            if sample is not None:
                self.conn.execute(
                    _INSERT_SAMPLE,
                    (
                        iso_time(sample.time),
                        sample.interval,
                        sample.bps,
                        sample.pps,
                        sample.active_flows,
                        sample.new_flows,
                        *(sample.counters.get(c, 0) for c in COUNTER_COLUMNS_V1),
                        records_dropped,
                        sample.counters.get("evicted", 0),
                        sample.counters.get("bytes", 0),
                        sample.counters.get("drops", 0),
                        sample.counters.get("flood_other", 0),
                        sample.counters.get("events_limited", 0),
                    ),
                )
                if sample.counters.get("map_full", 0):
                    self.conn.executemany(_INSERT_FLOOD, flood_rows(sample))
            if event_rows:
                self.conn.executemany(_INSERT_EVENT, event_rows)
            if alerts:
                self.conn.executemany(
                    _UPSERT_ALERT,
                    [
                        (
                            self.session,
                            a.id,
                            a.kind,
                            a.source,
                            a.target,
                            iso_time(a.start),
                            iso_time(a.last),
                            a.count,
                            a.sources,
                            a.filter,
                        )
                        for a in alerts
                    ],
                )
            if blocks:
                self.conn.executemany(
                    _INSERT_BLOCK,
                    [
                        (iso_time(b.time), self.session, b.action, b.rule, b.ttl, b.matched,
                         b.confirmed)
                        for b in blocks
                    ],
                )  # fmt: skip
            if pending is not None:
                self._replace_pending(pending_rows, sample)

    def _insert_records(self, records: Sequence[FlowRecord]) -> None:
        if records:
            self.conn.executemany(*flow_insert(records))

    def _replace_pending(
        self,
        rows: list[tuple[str, int, str, bytes, str | None, str | None]],
        sample: Sample | None,
    ) -> None:
        self.conn.execute("DELETE FROM pending WHERE session = ?", (self.session,))
        at = iso_time(sample.time if sample is not None else time.time())
        self.conn.executemany(
            "INSERT INTO pending (session, family, time, ifaces, flows, owners, health) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(s, f, at, names, data, o, h) for s, f, names, data, o, h in rows if data],
        )

    def recover(self) -> int:
        """Turn the pending rows of writers that died (kill -9, a crash, a power cut) into
        records with end reason ``crash``, in one transaction; how many records that made."""
        with translate_errors("cannot recover pending flows in", self.path):
            rows = self.conn.execute(
                "SELECT session, family, ifaces, flows, owners, health FROM pending"
            ).fetchall()
            dead = [r for r in rows if not session_alive(r[0])]
            if not dead:
                return 0
            records = pending_rows_records([r[1:] for r in dead], "crash")
            with self.transaction():
                self._insert_records(records)
                self.conn.executemany(
                    "DELETE FROM pending WHERE session = ?", {(r[0],) for r in dead}
                )
            return len(records)

    # --- retention -------------------------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes the data takes: the file's pages that are in use, plus the WAL."""
        with translate_errors("cannot read", self.path):
            page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
            pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
            free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        wal = Path(f"{self.path}-wal")
        wal_size = wal.stat().st_size if wal.exists() else 0
        return int((pages - free) * page_size) + wal_size

    def _delete_before(self, cutoff: str) -> int:
        """Delete every row older than ``cutoff`` (stored time text) from every table."""
        cur = self.conn.execute("DELETE FROM flows WHERE last_seen < ?", (cutoff,))
        deleted = cur.rowcount
        # An hour leaves flows_hourly once all of it is older than the cutoff.
        self.conn.execute(
            "DELETE FROM flows_hourly WHERE hour < ?", (hour_text(parse_iso(cutoff) - HOUR + 1),)
        )
        self.conn.execute("DELETE FROM samples WHERE time < ?", (cutoff,))
        self.conn.execute("DELETE FROM events WHERE time < ?", (cutoff,))
        self.conn.execute("DELETE FROM alerts WHERE last < ?", (cutoff,))
        self.conn.execute("DELETE FROM floods WHERE time < ?", (cutoff,))
        self.conn.execute("DELETE FROM blocks WHERE time < ?", (cutoff,))
        # Without AUTOINCREMENT, ids past a deleted maximum are used again: keep the rollup
        # mark at or below max(id) so new rows are never taken as rolled up already.
        self.conn.execute(
            "UPDATE rollup_state SET flows_id = min(flows_id, "
            "(SELECT coalesce(max(id), 0) FROM flows))"
        )
        return deleted

    def prune(
        self,
        retain_seconds: float | None,
        max_bytes: int | None,
        now: float | None = None,
    ) -> int:
        """Delete the oldest data of all three tables: everything older than
        ``retain_seconds``, then (oldest first, in steps of 5 % of the time span) until the
        data fits in ``max_bytes``. Freed pages go back to the file system. Returns the number
        of flow records deleted."""
        now = time.time() if now is None else now
        deleted = 0
        with translate_errors("cannot prune", self.path):
            if retain_seconds is not None:
                with self.transaction():
                    deleted += self._delete_before(iso_time(now - retain_seconds))
            if max_bytes is not None:
                for _ in range(100):
                    self._reclaim()
                    if self.size_bytes() <= max_bytes:
                        break
                    lo, hi = self.conn.execute(
                        "SELECT min(t), max(t) FROM (SELECT min(last_seen) AS t FROM flows "
                        "UNION ALL SELECT max(last_seen) FROM flows "
                        "UNION ALL SELECT min(time) FROM samples "
                        "UNION ALL SELECT max(time) FROM samples)"
                    ).fetchone()
                    if lo is None:
                        break
                    t_lo, t_hi = parse_iso(lo), parse_iso(hi)
                    cutoff = t_lo + max((t_hi - t_lo) * 0.05, 0.001)
                    with self.transaction():
                        deleted += self._delete_before(iso_time(cutoff))
            self._reclaim()
        return deleted

    def _reclaim(self) -> None:
        # Fold the WAL into the file, then hand free pages back (auto_vacuum=INCREMENTAL).
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # executescript steps it to the end; execute() would free one page per call.
        self.conn.executescript("PRAGMA incremental_vacuum;")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
