"""SQLite history: the schema, its migrations, one transaction per tick, retention, queries.

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
import dataclasses
import errno
import functools
import itertools
import json
import os
import random
import re
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from flowscope import abi
from flowscope.collect.detect import Alert
from flowscope.errors import FlowscopeError, UsageError
from flowscope.history import window
from flowscope.model import FlowKey, FlowRecord, NewFlow, PendingFlows, Sample, pending_records
from flowscope.when import parse_when

# Kernel counter deltas, one column each in `samples` (the names of abi.Counter in lower case).
# The first seven are migration 1's columns, frozen; `bytes` came with migration 5.
_COUNTER_COLUMNS_V1: tuple[str, ...] = (
    "packets",
    "flows_created",
    "non_ip",
    "malformed",
    "truncated",
    "map_full",
    "ringbuf_full",
)
COUNTER_COLUMNS: tuple[str, ...] = (*_COUNTER_COLUMNS_V1, "bytes")

FLOW_COLUMNS: tuple[str, ...] = (
    "iface",
    "direction",
    "vlan",
    "family",
    "src",
    "dst",
    "sport",
    "dport",
    "proto",
    "first_seen",
    "last_seen",
    "packets",
    "bytes",
    "ip_bytes",
    "tcp_flags",
    "end_reason",
)
# What makes two records the same flow (also the key of flows_hourly, after `hour`).
FLOW_KEY_COLUMNS: tuple[str, ...] = (
    "src",
    "dst",
    "sport",
    "dport",
    "proto",
    "iface",
    "direction",
    "vlan",
    "family",
)
SAMPLE_COLUMNS: tuple[str, ...] = (
    "time",
    "interval",
    "bps",
    "pps",
    "active_flows",
    "new_flows",
    *_COUNTER_COLUMNS_V1,
    "records_dropped",
    "evicted",
    "bytes",
)
EVENT_COLUMNS: tuple[str, ...] = (
    "time",
    "iface",
    "direction",
    "vlan",
    "family",
    "src",
    "dst",
    "sport",
    "dport",
    "proto",
    "length",
    "map_full",
)

HOUR = 3600


class StoreError(FlowscopeError):
    """The history database cannot be opened, read or written (disk full, locked, corrupt)."""


# --- time as text --------------------------------------------------------------------------


@functools.lru_cache(maxsize=8192)
def _second_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


_MILLIS = tuple(f".{i:03d}Z" for i in range(1000))


def iso_time(t: float) -> str:
    """Unix seconds as the stored form: ISO 8601 UTC, milliseconds, ``Z``, fixed width.

    It runs twice per record on the insert path, so the second part is cached (a tick's
    records share a handful of seconds) and the milliseconds come from a table."""
    ms = round(t * 1000)
    second = ms // 1000
    return _second_text(second) + _MILLIS[ms - second * 1000]


def hour_text(t: float) -> str:
    """The stored form of the start of the UTC hour that contains ``t`` (flows_hourly.hour)."""
    second = int(t // 1)
    return f"{_second_text(second - second % HOUR)}.000Z"


def parse_iso(text: str) -> float:
    """Unix seconds from ISO 8601 text; a time without a zone is UTC (as stored)."""
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


# --- user input: durations, sizes, times ---------------------------------------------------

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str, option: str = "--max-db-size") -> int:
    """Bytes from ``500MB``, ``1GB``, ``512MiB`` (kB/MB/GB are powers of 1000, KiB/MiB/GiB
    of 1024); anything else is a UsageError."""
    m = _SIZE_RE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS or float(m.group(1)) <= 0:
        raise UsageError(
            f"{option}: {text!r} is not a size",
            "a positive number and a unit: kB, MB, GB, KiB, MiB or GiB, as in 1GB",
        )
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


# --- paths and connections -----------------------------------------------------------------


def state_dir() -> Path:
    """``$XDG_STATE_HOME/flowscope``, else ``~/.local/state/flowscope``: history and logs."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "flowscope"


@contextlib.contextmanager
def translate_errors(action: str, path: Path | str) -> Iterator[None]:
    """Turn sqlite3 errors into StoreError at the store boundary, with a hint that helps."""
    try:
        yield
    except sqlite3.Error as e:
        text = str(e)
        hint = None
        if "full" in text:
            hint = "free disk space or lower --max-db-size / --retain"
        elif "locked" in text or "busy" in text:
            hint = "another process is writing to it"
        elif "not a database" in text or "malformed" in text:
            hint = "the file is not a flowscope database or is damaged"
        raise StoreError(f"{action} {path}: {text}", hint) from e


def remove_if_unused(path: Path) -> bool:
    """Delete a database this run created when it holds nothing: no flow, sample, event or
    pending row (a run that failed to attach must not leave an empty file behind). True when
    it was removed."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = ("flows", "samples", "events", "pending")
            present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            used = any(
                conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()
                for t in tables
                if t in present
            )
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    if used:
        return False
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    return True


def _create_private_file(path: Path) -> None:
    """Create the database file 0600 (and its directory 0700) before SQLite opens it, so
    history is never readable by other users, not even for an instant. SQLite gives the -wal
    and -shm files the same permissions as the database.

    The path must be the file itself: a symbolic link is refused (a dangling one would create
    its target wherever it points, a live one write history into someone else's file), and
    an existing file must be ours; one that others could read is made private (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise StoreError(
                f"{path} belongs to uid {st.st_uid}, not to this user",
                "history is written only into a file of one's own: pass another --db",
            )
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
            for extra in (Path(f"{path}-wal"), Path(f"{path}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    extra.chmod(0o600)
    finally:
        os.close(fd)


def connect_readonly(path: Path | str) -> sqlite3.Connection:
    """A read-only connection (URI mode=ro) to an existing database; a missing file is a
    UsageError, never a new empty database."""
    p = Path(path)
    try:
        is_file = stat.S_ISREG(p.stat().st_mode)
    except FileNotFoundError:
        is_file = False
    except OSError as e:
        raise StoreError(f"cannot open {p}: {e.strerror}", "check its permissions") from e
    if not is_file:
        raise UsageError(f"no history database at {p}", "record first, or pass --db PATH")
    uri = p.resolve().as_uri()
    try:
        return _try_connect(f"{uri}?mode=ro")
    except sqlite3.OperationalError as e:
        # A WAL database needs its -shm file to be read; when no writer has it open, a
        # reader that may not write there (another user, a read-only file system) cannot
        # make one. With nobody writing, the file cannot change: read it as immutable.
        wal = Path(f"{p}-wal")
        if "readonly" not in str(e) and "unable to open" not in str(e):
            with translate_errors("cannot open", p):
                raise
        if wal.exists() and wal.stat().st_size > 0:
            with translate_errors("cannot open", p):
                raise
    with translate_errors("cannot open", p):
        return _try_connect(f"{uri}?mode=ro&immutable=1")


def _try_connect(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


# --- schema and migrations -----------------------------------------------------------------


# The DDL of the released migrations, frozen as the text SQLite keeps (it was first built by
# sqlite-utils' table.create(), whose output a new sqlite-utils may change): never edit.
_MIGRATION_1_SQL = (
    (
        'CREATE TABLE "flows" (\n'
        '   "id" INTEGER PRIMARY KEY,\n'
        '   "iface" TEXT,\n'
        "   \"direction\" TEXT NOT NULL DEFAULT 'ingress',\n"
        '   "vlan" INTEGER,\n'
        '   "family" INTEGER,\n'
        '   "src" TEXT,\n'
        '   "dst" TEXT,\n'
        '   "sport" INTEGER,\n'
        '   "dport" INTEGER,\n'
        '   "proto" INTEGER,\n'
        '   "first_seen" TEXT,\n'
        '   "last_seen" TEXT,\n'
        '   "packets" INTEGER,\n'
        '   "bytes" INTEGER,\n'
        '   "ip_bytes" INTEGER,\n'
        '   "tcp_flags" INTEGER,\n'
        '   "end_reason" TEXT\n'
        ")"
    ),
    (
        'CREATE TABLE "samples" (\n'
        '   "time" TEXT,\n'
        '   "interval" REAL,\n'
        '   "bps" REAL,\n'
        '   "pps" REAL,\n'
        '   "active_flows" INTEGER,\n'
        '   "new_flows" INTEGER,\n'
        '   "packets" INTEGER,\n'
        '   "flows_created" INTEGER,\n'
        '   "non_ip" INTEGER,\n'
        '   "malformed" INTEGER,\n'
        '   "truncated" INTEGER,\n'
        '   "map_full" INTEGER,\n'
        '   "ringbuf_full" INTEGER,\n'
        '   "records_dropped" INTEGER\n'
        ")"
    ),
    (
        'CREATE TABLE "events" (\n'
        '   "time" TEXT,\n'
        '   "iface" TEXT,\n'
        '   "direction" TEXT,\n'
        '   "vlan" INTEGER,\n'
        '   "family" INTEGER,\n'
        '   "src" TEXT,\n'
        '   "dst" TEXT,\n'
        '   "sport" INTEGER,\n'
        '   "dport" INTEGER,\n'
        '   "proto" INTEGER,\n'
        '   "length" INTEGER,\n'
        '   "map_full" INTEGER\n'
        ")"
    ),
    ('CREATE INDEX "idx_flows_last_seen"\n    ON "flows" ("last_seen")'),
    ('CREATE INDEX "idx_samples_time"\n    ON "samples" ("time")'),
    ('CREATE INDEX "idx_events_time"\n    ON "events" ("time")'),
)

_MIGRATION_2_SQL = (
    (
        'CREATE TABLE "flows_hourly" (\n'
        '   "hour" TEXT,\n'
        '   "src" TEXT,\n'
        '   "dst" TEXT,\n'
        '   "sport" INTEGER,\n'
        '   "dport" INTEGER,\n'
        '   "proto" INTEGER,\n'
        '   "iface" TEXT,\n'
        '   "direction" TEXT,\n'
        '   "vlan" INTEGER,\n'
        '   "family" INTEGER,\n'
        '   "packets" INTEGER,\n'
        '   "bytes" INTEGER,\n'
        '   "ip_bytes" INTEGER,\n'
        '   "first_seen" TEXT,\n'
        '   "last_seen" TEXT,\n'
        '   "records" INTEGER\n'
        ")"
    ),
    (
        "CREATE UNIQUE INDEX "
        '"idx_flows_hourly_hour_src_dst_sport_dport_proto_iface_direction_vlan_family"\n'
        '    ON "flows_hourly" ("hour", "src", "dst", "sport", "dport", "proto", "iface", '
        '"direction", "vlan", "family")'
    ),
    ('CREATE TABLE "rollup_state" (\n   "flows_id" INTEGER\n)'),
)

_MIGRATION_4_SQL = (
    ('CREATE INDEX "idx_flows_hourly_hour_bytes"\n    ON "flows_hourly" ("hour", "bytes")'),
    ('CREATE INDEX "idx_flows_hourly_hour_packets"\n    ON "flows_hourly" ("hour", "packets")'),
    ('CREATE INDEX "idx_flows_hourly_hour_records"\n    ON "flows_hourly" ("hour", "records")'),
)


def _migration_1(db: sqlite_utils.Database) -> None:
    """The three tables the collector writes, with indexes for time ranges.

    One index on flows: last_seen serves "since" ranges and pruning by age. Every index
    costs insert speed (a second one on first_seen took inserts from about 270,000 to
    180,000 records per second here), and long ranges are read from flows_hourly anyway."""
    for statement in _MIGRATION_1_SQL:
        db.execute(statement)


_ROLLUP_SUMS = "packets, bytes, ip_bytes, first_seen, last_seen, records"


def _migration_2(db: sqlite_utils.Database) -> None:
    """flows_hourly: per flow and UTC hour (of last_seen), the sums of its records.

    A record whose last_seen falls in an hour lies wholly inside any range that contains that
    hour, so whole hours of a range are answered from here exactly. It is filled by
    Store.rollup() (the writer runs it every minute, off the insert path) up to the flows id
    kept in rollup_state; history reads newer records from flows itself. Backfilled here."""
    # The unique index is the upsert's conflict target and serves hour-range scans.
    for statement in _MIGRATION_2_SQL:
        db.execute(statement)
    db.execute("INSERT INTO rollup_state (flows_id) VALUES (0)")
    _rollup(db.conn)


_KEYS = ", ".join(FLOW_KEY_COLUMNS)
_HOUR_MS = window.HOUR_MS


# The instant a record counts at in ``records``: its last millisecond that has a share (the
# last one before last_seen; last_seen itself for a record of one instant).
_LAST_MS = "(CASE WHEN {l} > {f} THEN {l} - 1 ELSE {l} END)"


def _rollup_sql(span_hours: int) -> str:
    """Add flows rows ``id`` in (?, ?] to flows_hourly, each record's packets and bytes shared
    out over the hours it overlaps (window.share_sql), so that whole hours of sums are exact
    for any range; a record counts in ``records`` of the hour of its _LAST_MS, the last
    hour in which it has a share (it is not paired with the hour its last_seen only touches).
    ``span_hours``: the most hour boundaries one of these records crosses."""
    f, la = "x.f_ms", "x.l_ms"
    h0, h1 = "x.h_ms", f"(x.h_ms + {_HOUR_MS})"
    shares = ", ".join(
        f"sum({window.share_sql(f'x.{c}', f, la, h0, h1)})"
        for c in ("packets", "bytes", "ip_bytes")
    )
    offsets = " UNION ALL ".join(f"SELECT {n} AS n" for n in range(span_hours + 1))
    hour_text = f"strftime('%Y-%m-%dT%H:00:00.000Z', {h0} / 1000, 'unixepoch')"
    end_text = f"strftime('%Y-%m-%dT%H:00:00.000Z', {h1} / 1000, 'unixepoch')"
    keys = ", ".join(f"x.{c}" for c in FLOW_KEY_COLUMNS)
    return (
        f"WITH r AS MATERIALIZED (SELECT {_KEYS}, packets, bytes, ip_bytes, first_seen, "
        f"last_seen, "
        f"{window.ms_sql('first_seen')} AS f_ms, {window.ms_sql('last_seen')} AS l_ms "
        f"FROM flows WHERE id > ? AND id <= ?), k AS ({offsets}) "
        f"INSERT INTO flows_hourly (hour, {_KEYS}, {_ROLLUP_SUMS}) "
        # max(min(first), hour) is min(max(first, hour)), with one strftime per group
        f"SELECT {hour_text}, {keys}, {shares}, max(min(x.first_seen), {hour_text}), "
        f"min(max(x.last_seen), {end_text}), "
        f"sum({_LAST_MS.format(f='x.f_ms', l='x.l_ms')} / {_HOUR_MS} * {_HOUR_MS} = x.h_ms) "
        f"FROM (SELECT r.*, (r.f_ms / {_HOUR_MS} + k.n) * {_HOUR_MS} AS h_ms FROM r JOIN k "
        f"ON k.n <= {_LAST_MS.format(f='r.f_ms', l='r.l_ms')} / {_HOUR_MS} "
        f"- r.f_ms / {_HOUR_MS}) x WHERE 1 "
        f"GROUP BY x.h_ms, {keys} "
        f"ON CONFLICT (hour, {_KEYS}) DO UPDATE SET "
        "packets = packets + excluded.packets, bytes = bytes + excluded.bytes, "
        "ip_bytes = ip_bytes + excluded.ip_bytes, "
        "first_seen = min(first_seen, excluded.first_seen), "
        "last_seen = max(last_seen, excluded.last_seen), records = records + excluded.records"
    )


def _rollup(conn: sqlite3.Connection) -> int:
    """Add the flows rows written since the last rollup to flows_hourly (inside the caller's
    transaction); returns how many rows it added."""
    done = conn.execute("SELECT flows_id FROM rollup_state").fetchone()[0]
    top = conn.execute("SELECT max(id) FROM flows").fetchone()[0] or 0
    if top <= done:
        return 0
    f, la = window.ms_sql("first_seen"), window.ms_sql("last_seen")
    spans = conn.execute(
        f"SELECT max({la} / {_HOUR_MS} - {f} / {_HOUR_MS}), max({la} - {f}) FROM flows "
        "WHERE id > ? AND id <= ?",
        (done, top),
    ).fetchone()
    conn.execute(_rollup_sql(max(int(spans[0] or 0), 0)), (done, top))
    if _has_column(conn, "rollup_state", "max_span_ms"):
        conn.execute(
            "UPDATE rollup_state SET flows_id = ?, max_span_ms = max(max_span_ms, ?)",
            (top, int(spans[1] or 0)),
        )
    else:
        conn.execute("UPDATE rollup_state SET flows_id = ?", (top,))
    return int(top - done)


def _has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(r[1] == column for r in conn.execute(f"PRAGMA table_info({table})"))


def _migration_3(db: sqlite_utils.Database) -> None:
    """samples.evicted: flows the collector expired early in the tick because a kernel map
    passed its high-water mark (0 in rows written before the column existed)."""
    db.execute('ALTER TABLE "samples" ADD COLUMN "evicted" INTEGER NOT NULL DEFAULT 0')


def _migration_4(db: sqlite_utils.Database) -> None:
    """flows_hourly indexes on (hour, bytes), (hour, packets) and (hour, records): the
    largest flows of each hour, read from the top, for the threshold algorithm of history's
    top N (_top_flows)."""
    for statement in _MIGRATION_4_SQL:
        db.execute(statement)


def _migration_5(db: sqlite_utils.Database) -> None:
    """samples.bytes: the kernel's byte counter delta of the tick (every frame, also those no
    flow took), and ``pending``: per running writer (``session``) and family, the part of
    each live flow that no record holds yet, as of the last tick written (the blob of
    model.PendingFlows.to_bytes, replaced in every tick's transaction). The next writer to
    open the file turns the rows of a session whose process is gone into records with end reason
    ``crash``. Plain SQL, so the DDL stays what it was when released."""
    db.execute("ALTER TABLE samples ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "CREATE TABLE pending (session TEXT NOT NULL, family INTEGER NOT NULL, "
        "time TEXT NOT NULL, ifaces TEXT NOT NULL, flows BLOB NOT NULL, "
        "PRIMARY KEY (session, family))"
    )


def _migration_6(db: sqlite_utils.Database) -> None:
    """flows_hourly shares each record out over the hours it overlaps (it held each record
    whole in the hour of its last_seen, so an hour could hold more than happened in it);
    rebuilt from flows. rollup_state.max_span_ms: the longest record rolled up, which bounds
    the search for records that straddle the edges of a range."""
    db.execute("ALTER TABLE rollup_state ADD COLUMN max_span_ms INTEGER NOT NULL DEFAULT 0")
    db.execute("DELETE FROM flows_hourly")
    db.execute("UPDATE rollup_state SET flows_id = 0")
    _rollup(db.conn)


def _migration_7(db: sqlite_utils.Database) -> None:
    """alerts: the scans and SYN floods the writer's detector raised (detect.Watch), one row
    per alert of a recording (``session``, ``id``), updated while it goes on: its kind,
    source, target, first and last new flow, the new flows counted, a flood's distinct
    sources, and the filter that shows its flows."""
    db.execute(
        "CREATE TABLE alerts (session TEXT NOT NULL, id INTEGER NOT NULL, kind TEXT NOT NULL, "
        "source TEXT NOT NULL, target TEXT NOT NULL, start TEXT NOT NULL, last TEXT NOT NULL, "
        "flows INTEGER NOT NULL, sources INTEGER NOT NULL, filter TEXT NOT NULL, "
        "PRIMARY KEY (session, id))"
    )
    db.execute("CREATE INDEX alerts_last ON alerts (last)")


# Each entry upgrades the schema from version i to i + 1; user_version holds how many ran.
# Never edit an entry once released: add a new one.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema version of an open database (PRAGMA user_version)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_version(conn: sqlite3.Connection, path: Path | str) -> int:
    """The file's schema version; a StoreError if it is newer than this code knows."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, newer than this flowscope knows "
            f"({SCHEMA_VERSION})",
            "upgrade flowscope to read it",
        )
    return version


# --- the store -----------------------------------------------------------------------------

_INSERT_FLOW = (
    f"INSERT INTO flows ({', '.join(FLOW_COLUMNS)}) VALUES ({', '.join('?' * len(FLOW_COLUMNS))})"
)
_INSERT_SAMPLE = (
    f"INSERT INTO samples ({', '.join(SAMPLE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(SAMPLE_COLUMNS))})"
)
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


def _flow_row(r: FlowRecord) -> tuple[Any, ...]:
    """A record as the values of FLOW_COLUMNS."""
    return (
        r.iface,
        _direction(r.key),
        r.key.vlan,
        r.key.family,
        r.key.src,
        r.key.dst,
        r.key.sport,
        r.key.dport,
        r.key.proto,
        iso_time(r.first_seen),
        iso_time(r.last_seen),
        r.packets,
        r.bytes,
        r.ip_bytes,
        r.tcp_flags,
        r.end_reason,
    )


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


def _pending_rows_records(rows: Sequence[tuple[int, str, bytes]], reason: str) -> list[FlowRecord]:
    """The records that pending rows (family, interface names as JSON, blob) stand for."""
    records: list[FlowRecord] = []
    for family, ifaces, data in rows:
        names = {int(k): v for k, v in json.loads(ifaces).items()}
        records.extend(pending_records(family, data, names, reason))
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
                _create_private_file(self.path)
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
        """Run the migrations this file has not had, each in its own transaction; the version."""
        db = sqlite_utils.Database(self.conn)
        version = check_version(self.conn, self.path)
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
            return _rollup(self.conn)

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
    ) -> None:
        """Write one collector tick in ONE transaction: all of it, or (on error) nothing.
        ``alerts`` are the alerts the tick raised or updated (inserted, or updated in place).

        ``records_dropped`` is how many records the writer had to drop since the last sample
        it wrote; it goes into this tick's sample. ``pending`` (unless None) replaces this
        writer's pending rows: with the records of the same tick, history then holds every
        packet the kernel had counted at that tick, whatever happens next."""
        pending_rows = [
            (self.session, p.batch.family, json.dumps(p.iface_names), p.to_bytes())
            for p in pending or ()
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
                        *(sample.counters.get(c, 0) for c in _COUNTER_COLUMNS_V1),
                        records_dropped,
                        sample.counters.get("evicted", 0),
                        sample.counters.get("bytes", 0),
                    ),
                )
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
            if pending is not None:
                self._replace_pending(pending_rows, sample)

    def _insert_records(self, records: Sequence[FlowRecord]) -> None:
        if records:
            self.conn.executemany(_INSERT_FLOW, [_flow_row(r) for r in records])

    def _replace_pending(
        self, rows: list[tuple[str, int, str, bytes]], sample: Sample | None
    ) -> None:
        self.conn.execute("DELETE FROM pending WHERE session = ?", (self.session,))
        at = iso_time(sample.time if sample is not None else time.time())
        self.conn.executemany(
            "INSERT INTO pending (session, family, time, ifaces, flows) VALUES (?, ?, ?, ?, ?)",
            [(s, f, at, names, data) for s, f, names, data in rows if data],
        )

    def recover(self) -> int:
        """Turn the pending rows of writers that died (kill -9, a crash, a power cut) into
        records with end reason ``crash``, in one transaction; how many records that made."""
        with translate_errors("cannot recover pending flows in", self.path):
            rows = self.conn.execute(
                "SELECT session, family, ifaces, flows FROM pending"
            ).fetchall()
            dead = [r for r in rows if not session_alive(r[0])]
            if not dead:
                return 0
            records = _pending_rows_records([r[1:] for r in dead], "crash")
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
}
ORDERINGS = {"bytes": "bytes", "packets": "packets", "flows": "records", "bps": "bytes"}

# A filter that names one of these columns is about single records: the hourly sums cannot
# answer it, so such a query reads the flows table.
_PER_RECORD_COLUMNS = re.compile(
    r"\b(packets|bytes|ip_bytes|tcp_flags|first_seen|last_seen|end_reason|id)\b"
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


_SOURCE_COLUMNS = f"{_KEYS}, packets, bytes, ip_bytes, first_seen, last_seen"


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
    lo: int | None, hi: int, cond: str, where: str, records: str = "1", table: str = "flows"
) -> str:
    """Flows rows (of ``table``: flows, or the staged live flows) that meet ``cond``, each with
    the share of its counts in [lo, hi) and its times clipped to that range; rows that get
    nothing are left out."""
    f, la = window.ms_sql("first_seen"), window.ms_sql("last_seen")
    shares = ", ".join(
        f"{window.share_sql(c, 'f_ms', 'l_ms', lo, hi)} AS {c}"
        for c in ("packets", "bytes", "ip_bytes")
    )
    lo_text = "first_seen" if lo is None else f"max(first_seen, '{_ms_text(lo)}')"
    return (
        f"SELECT * FROM (SELECT {_KEYS}, {shares}, {lo_text} AS first_seen, "
        f"min(last_seen, '{_ms_text(hi)}') AS last_seen, {records} AS records "
        f"FROM (SELECT {_SOURCE_COLUMNS}, {f} AS f_ms, {la} AS l_ms FROM {table} "
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
        live.append(
            (_share_select(w.since_ms, w.until_ms, overlap, where, table=PENDING_TABLE), fparams)
        )
    if not w.hourly:
        return [(_share_select(w.since_ms, w.until_ms, overlap, where), fparams), *live]
    assert w.hour_hi is not None
    # records not rolled up yet: all of their share
    recent = f"id > {w.done} AND {overlap}"
    parts = [(_share_select(w.since_ms, w.until_ms, recent, where), fparams)]
    span = w.max_span + 1
    if w.hour_lo is not None and w.since_ms is not None and w.since_ms < w.hour_lo:
        # rolled up, before the first whole hour: they count in records only if they also
        # end there (else the hourly rows count them; the same below, after the last)
        lo_text = _ms_text(w.hour_lo)
        cond = (
            f"id <= {w.done} AND last_seen >= '{_ms_text(w.since_ms)}' "
            f"AND last_seen < '{_ms_text(w.hour_lo + span)}' AND first_seen < '{lo_text}'"
        )
        records = f"({_LAST_MS.format(f='f_ms', l='l_ms')} < {w.hour_lo})"
        parts.append((_share_select(w.since_ms, w.hour_lo, cond, where, records), fparams))
    if w.hour_hi < w.until_ms:
        cond = (
            f"id <= {w.done} AND last_seen >= '{_ms_text(w.hour_hi)}' "
            f"AND last_seen < '{_ms_text(w.until_ms + span)}' AND first_seen < '{u_text}'"
        )
        records = f"({_LAST_MS.format(f='f_ms', l='l_ms')} >= {w.hour_hi})"
        parts.append((_share_select(w.hour_hi, w.until_ms, cond, where, records), fparams))
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
                f"SELECT {_SOURCE_COLUMNS}, records FROM flows_hourly "
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
    rows = conn.execute("SELECT family, ifaces, flows FROM pending").fetchall()
    records = _pending_rows_records(rows, "live")
    conn.executemany(
        f"INSERT INTO {PENDING_TABLE} VALUES ({', '.join('?' * len(FLOW_COLUMNS))})",
        [_flow_row(r) for r in records],
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
        columns = _SOURCE_COLUMNS.split(", ")
        source = (
            f"SELECT {', '.join(f'h.{c}' for c in columns)}, h.records "
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
            and not (q.where and _PER_RECORD_COLUMNS.search(q.where))
            and (since is None or until - since >= ROLLUP_MIN_RANGE)
            and _has_table(conn, "flows_hourly")
            and version >= 6
        )
        with _read_transaction(conn):
            live = stage_pending(conn) > 0
            w = dataclasses.replace(_window(conn, since, until, use_rollup), live=live)
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


# --- benchmark hooks (flowscope bench) -----------------------------------------------------


def synthetic_records(
    n: int, flows: int = 10_000, now: float | None = None, span: float = 60.0, seed: int = 1
) -> list[FlowRecord]:
    """``n`` FlowRecords over ``flows`` distinct IPv4 flows, in time order over the ``span``
    seconds before ``now`` (as a collector writes them): test and benchmark input."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    out = []
    for i in range(n):
        f = rng.randrange(flows)
        last = now - span + span * i / n
        key = FlowKey(
            family=abi.AF_INET,
            src=f"10.{(f >> 16) & 255}.{(f >> 8) & 255}.{f & 255}",
            dst="192.0.2.1",
            sport=1024 + f % 60000,
            dport=443,
            proto=6,
        )
        pk = rng.randint(1, 1000)
        out.append(FlowRecord(key, "eth0", pk, pk * 800, pk * 780, last - 30, last, 0x18, "active"))
    return out


def insert_rate(
    records_n: int = 200_000,
    batch: int = 10_000,
    path: Path | str | None = None,
    flows: int = 50_000,
) -> dict[str, float]:
    """Insert ``records_n`` generated records with write_tick, ``batch`` records per tick (one
    transaction each), into a fresh database (a temporary one unless ``path``). Returns
    ``{"records": n, "seconds": s, "records_per_second": r}``; record generation is not timed."""
    records = synthetic_records(records_n, flows=flows)
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(path) if path is not None else Path(tmp) / "bench.db"
        with Store(db_path) as store:
            t0 = time.perf_counter()
            for i in range(0, records_n, batch):
                store.write_tick(records[i : i + batch], None, [])
            seconds = time.perf_counter() - t0
    return {"records": records_n, "seconds": seconds, "records_per_second": records_n / seconds}


def make_bench_db(
    path: Path | str,
    records: int = 10_000_000,
    flows: int = 20_000,
    span: float = 86_400.0,
    now: float | None = None,
    seed: int = 1,
) -> float:
    """Fill a new database with ``records`` flow records of ``flows`` distinct flows (a skewed
    mix: a few flows carry most bytes, as on real servers), last seen over the ``span``
    seconds before ``now``, evenly in time; flows_hourly is built by the same migration code
    that backfills old files. Plain executemany, indexes after: about a minute for 10 M.
    Returns the seconds it took."""
    t0 = time.perf_counter()
    now = time.time() if now is None else now
    p = Path(path)
    if p.exists():
        raise StoreError(f"{p} exists; make_bench_db fills only a new file")
    _create_private_file(p)
    conn = sqlite3.connect(p, isolation_level=None)
    db = sqlite_utils.Database(conn)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    rng = random.Random(seed)
    keys = [
        (
            "eth0",
            "ingress",
            0,
            4,
            f"10.{(f >> 16) & 255}.{(f >> 8) & 255}.{f & 255}",
            "192.0.2.1",
            1024 + f % 60000,
            (443, 80, 53, 22)[f % 4],
            17 if f % 4 == 2 else 6,
        )
        for f in range(flows)
    ]
    # Pareto-like weights: flow i gets weight 1/(i+1).
    cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(flows)))
    conn.execute("BEGIN")
    _migration_1(db)
    conn.execute("DROP INDEX idx_flows_last_seen")  # built once, after the rows
    chunk = 200_000
    step = span / records
    for start in range(0, records, chunk):
        n = min(chunk, records - start)
        picks = rng.choices(range(flows), cum_weights=cum, k=n)
        rows = []
        for j, f in enumerate(picks):
            last = now - span + (start + j) * step
            pk = 1 + (f * 7919 + j) % 500
            rows.append(
                (
                    *keys[f],
                    iso_time(last - 30),
                    iso_time(last),
                    pk,
                    pk * 900,
                    pk * 880,
                    0x18,
                    "active",
                )
            )
        conn.executemany(_INSERT_FLOW, rows)
    conn.execute("CREATE INDEX idx_flows_last_seen ON flows (last_seen)")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("COMMIT")
    conn.close()
    Store(p).close()  # migration 2 builds flows_hourly
    return time.perf_counter() - t0


def history_query_time(
    path: Path | str, top: int = 20, since: str = "24h", group_by: str = "flow", repeat: int = 3
) -> dict[str, float]:
    """Time the `flowscope history --top N --since 24h` query on an existing database: the
    best of ``repeat`` runs, in milliseconds, and the rows it gave."""
    conn = connect_readonly(path)
    try:
        q = HistoryQuery(since=parse_when(since, "--since"), top=top, group_by=group_by)
        best = float("inf")
        rows = 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            rows = len(history(conn, q).rows)
            best = min(best, time.perf_counter() - t0)
    finally:
        conn.close()
    return {"ms": best * 1000, "rows": rows}
