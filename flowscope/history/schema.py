"""The history database's layout: its columns, times as text, and the migrations that made it.

Released migrations are frozen SQL text (tests/unit/frozen_schema.json keeps them honest): a
new sqlite-utils cannot change what an old database was built with. Times are ISO 8601 UTC
text with milliseconds and a ``Z``, always the same width, so text order is time order and
sqlite3 users can read and compare them as they are."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from flowscope.history import window
from flowscope.history.files import StoreError

if TYPE_CHECKING:  # imported where a migration runs (Store.migrate): 0.1-0.2 s at every start
    import sqlite_utils

# Kernel counter deltas, one column each in `samples` (the names of abi.Counter in lower case).
# The first seven are migration 1's columns, frozen; `bytes` came with migration 5.
COUNTER_COLUMNS_V1: tuple[str, ...] = (
    "packets",
    "flows_created",
    "non_ip",
    "malformed",
    "truncated",
    "map_full",
    "ringbuf_full",
)
COUNTER_COLUMNS: tuple[str, ...] = (*COUNTER_COLUMNS_V1, "bytes", "flood_other", "events_limited")
"""Every counter; flood_other and events_limited came with migration 12."""

OWNER_COLUMNS: tuple[str, ...] = ("pid", "comm", "uid", "cgroup", "container")
"""The process of a flow's local socket (migration 8); NULL when none is known."""
OWNER_VERSION = 8
"""The schema version that has OWNER_COLUMNS in flows."""
PENDING_OWNER_VERSION = 9
"""The schema version whose pending table has the processes of the pending flows."""
HEALTH_COLUMNS: tuple[str, ...] = ("retrans", "rtt_us", "rtt_min_us", "drops", "drop_reason")
"""A flow's TCP health and kernel drops during the record (migration 10): retransmitted
segments, smoothed and minimum RTT (microseconds), packets the kernel dropped and their main
reason; NULL when not followed (not a local TCP connection; drops not followed)."""
PENDING_HEALTH_VERSION = 11
"""The schema version whose pending table says which blobs have TCP health and drops."""
HEALTH_VERSION = 10
"""The schema version that has HEALTH_COLUMNS in flows, and retrans and drops in
flows_hourly."""
RESETS_VERSION = 14
"""The schema version that has ``resets`` in flows: a record's TCP resets (sent in a sent flow,
received in a received one), NULL where not followed; kept per record, like the RTTs."""
KINDS_COLUMNS: tuple[str, ...] = ("retrans_fast", "retrans_rto", "retrans_probe")
"""Of a record's retrans, the segments resent as each kind (model.RETRANS_KINDS: fast
retransmit, after a timeout, tail loss probe), NULL where the kernel did not tell them apart
(a connection older than flowscope, a record recovered after a crash); migration 15."""
KINDS_VERSION = 15
"""The schema version that has KINDS_COLUMNS in flows."""
NULLABLE_COUNTS: tuple[str, ...] = ("retrans", "drops")
"""The shared counts that are NULL where not followed (a NULL share, not 0: window.share_sql
``nullable``), also in flows_hourly (HEALTH_VERSION)."""
SHARED_COLUMNS: tuple[str, ...] = ("packets", "bytes", "ip_bytes", *NULLABLE_COUNTS)
"""The counts of a record that are spread over its time (window.share_sql); RTTs are not
counts, and are kept per record only."""
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
    *OWNER_COLUMNS,
    *HEALTH_COLUMNS,
    "resets",
    *KINDS_COLUMNS,
)
FLOW_COLUMNS_V1: tuple[str, ...] = tuple(
    c for c in FLOW_COLUMNS if c not in (*OWNER_COLUMNS, *HEALTH_COLUMNS, "resets", *KINDS_COLUMNS)
)
"""The columns of migration 1's flows table (the later ones came with migrations 8, 10, 14
and 15)."""
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
    *COUNTER_COLUMNS_V1,
    "records_dropped",
    "evicted",
    "bytes",
    "drops",
    "flood_other",
    "events_limited",
)
FLOOD_COLUMNS: tuple[str, ...] = (
    "time",
    "family",
    "prefix",
    "proto",
    "dport",
    "direction",
    "tcp_flags",
    "packets",
    "bytes",
    "in_flows",
)
"""The floods table (migration 12): a tick's largest sources by prefix and target, written
for ticks in which the flow map was full (model.FloodRow; the tick's totals are its sample)."""
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


def migration_1(db: sqlite_utils.Database) -> None:
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
    roll_up(db.conn)


KEYS_SQL = ", ".join(FLOW_KEY_COLUMNS)
_HOUR_MS = window.HOUR_MS


# The instant a record counts at in ``records``: its last millisecond that has a share (the
# last one before last_seen; last_seen itself for a record of one instant).
LAST_MS_SQL = "(CASE WHEN {l} > {f} THEN {l} - 1 ELSE {l} END)"


def _rollup_sql(span_hours: int, health: bool = True) -> str:
    """Add flows rows ``id`` in (?, ?] to flows_hourly, each record's packets and bytes shared
    out over the hours it overlaps (window.share_sql), so that whole hours of sums are exact
    for any range; a record counts in ``records`` of the hour of its LAST_MS_SQL, the last
    hour in which it has a share (it is not paired with the hour its last_seen only touches).
    ``span_hours``: the most hour boundaries one of these records crosses; ``health``: the
    tables have retrans and drops (HEALTH_VERSION), shared out as packets are (NULL, not 0,
    where no record of the hour followed them)."""
    f, la = "x.f_ms", "x.l_ms"
    h0, h1 = "x.h_ms", f"(x.h_ms + {_HOUR_MS})"
    counts = SHARED_COLUMNS if health else SHARED_COLUMNS[:3]
    shares = ", ".join(
        f"sum({window.share_sql(f'x.{c}', f, la, h0, h1, nullable=c in NULLABLE_COUNTS)})"
        for c in counts
    )
    sums = f"{', '.join(counts)}, first_seen, last_seen, records"
    add = "".join(
        f"{c} = CASE WHEN {c} IS NULL THEN excluded.{c} ELSE {c} + coalesce(excluded.{c}, 0) END, "
        for c in (NULLABLE_COUNTS if health else ())
    )
    offsets = " UNION ALL ".join(f"SELECT {n} AS n" for n in range(span_hours + 1))
    hour_text = f"strftime('%Y-%m-%dT%H:00:00.000Z', {h0} / 1000, 'unixepoch')"
    end_text = f"strftime('%Y-%m-%dT%H:00:00.000Z', {h1} / 1000, 'unixepoch')"
    keys = ", ".join(f"x.{c}" for c in FLOW_KEY_COLUMNS)
    return (
        f"WITH r AS MATERIALIZED (SELECT {KEYS_SQL}, {', '.join(counts)}, first_seen, "
        f"last_seen, "
        f"{window.ms_sql('first_seen')} AS f_ms, {window.ms_sql('last_seen')} AS l_ms "
        f"FROM flows WHERE id > ? AND id <= ?), k AS ({offsets}) "
        f"INSERT INTO flows_hourly (hour, {KEYS_SQL}, {sums}) "
        # max(min(first), hour) is min(max(first, hour)), with one strftime per group
        f"SELECT {hour_text}, {keys}, {shares}, max(min(x.first_seen), {hour_text}), "
        f"min(max(x.last_seen), {end_text}), "
        f"sum({LAST_MS_SQL.format(f='x.f_ms', l='x.l_ms')} / {_HOUR_MS} * {_HOUR_MS} = x.h_ms) "
        f"FROM (SELECT r.*, (r.f_ms / {_HOUR_MS} + k.n) * {_HOUR_MS} AS h_ms FROM r JOIN k "
        f"ON k.n <= {LAST_MS_SQL.format(f='r.f_ms', l='r.l_ms')} / {_HOUR_MS} "
        f"- r.f_ms / {_HOUR_MS}) x WHERE 1 "
        f"GROUP BY x.h_ms, {keys} "
        f"ON CONFLICT (hour, {KEYS_SQL}) DO UPDATE SET "
        "packets = packets + excluded.packets, bytes = bytes + excluded.bytes, "
        f"ip_bytes = ip_bytes + excluded.ip_bytes, {add}"
        "first_seen = min(first_seen, excluded.first_seen), "
        "last_seen = max(last_seen, excluded.last_seen), records = records + excluded.records"
    )


def roll_up(conn: sqlite3.Connection) -> int:
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
    health = _has_column(conn, "flows_hourly", "retrans")
    conn.execute(_rollup_sql(max(int(spans[0] or 0), 0), health), (done, top))
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
    roll_up(db.conn)


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


def _migration_8(db: sqlite_utils.Database) -> None:
    """flows: the process that owns the flow's local socket (collect.owners), NULL when the
    flow is not local or its process is not known: pid, command, uid, cgroup v2 path and the
    container or systemd unit that path names (model.container_of, "" when none)."""
    for column, kind in (
        ("pid", "INTEGER"),
        ("comm", "TEXT"),
        ("uid", "INTEGER"),
        ("cgroup", "TEXT"),
        ("container", "TEXT"),
    ):
        db.execute(f"ALTER TABLE flows ADD COLUMN {column} {kind}")


def _migration_9(db: sqlite_utils.Database) -> None:
    """pending.owners: the processes of the pending flows (a JSON list of [pid, comm, uid,
    cgroup]), NULL when the writer did not know them; when set, the blob has one more column,
    each flow's index in that list (model.PendingFlows.encode). Live and crash-recovered
    flows then keep their process, as the records written before them do."""
    db.execute("ALTER TABLE pending ADD COLUMN owners TEXT")


def _migration_10(db: sqlite_utils.Database) -> None:
    """flows: HEALTH_COLUMNS, a flow's TCP retransmissions and RTT and its kernel drops
    (NULL in rows written before, and where not followed); flows_hourly: retrans and drops,
    shared out over the hours as packets are; samples.drops: packets the kernel dropped in the
    recorder's network namespace during the tick (0 where not followed)."""
    for column, kind in (
        ("retrans", "INTEGER"),
        ("rtt_us", "INTEGER"),
        ("rtt_min_us", "INTEGER"),
        ("drops", "INTEGER"),
        ("drop_reason", "TEXT"),
    ):
        db.execute(f"ALTER TABLE flows ADD COLUMN {column} {kind}")
    db.execute("ALTER TABLE flows_hourly ADD COLUMN retrans INTEGER")
    db.execute("ALTER TABLE flows_hourly ADD COLUMN drops INTEGER")
    db.execute("ALTER TABLE samples ADD COLUMN drops INTEGER NOT NULL DEFAULT 0")


def _migration_11(db: sqlite_utils.Database) -> None:
    """pending.health: the drop reasons of a pending blob (a JSON list), NULL when the writer
    did not follow TCP health and drops; when set, the blob has model._PENDING_HEALTH's
    columns, so live and crash-recovered flows keep their retransmissions, RTT and drops."""
    db.execute("ALTER TABLE pending ADD COLUMN health TEXT")


def _migration_12(db: sqlite_utils.Database) -> None:
    """samples.flood_other and samples.events_limited: the tick's packets that neither the flow
    map nor the flood table could take, and the new flows the kernel counted but did not
    announce (its per-CPU budget); ``floods``: for each tick in which the flow map was full,
    its largest sources by prefix (IPv4 /24, IPv6 /64) and target (protocol, destination port,
    direction), with the packets the flows took and those they could not, so the shape of a
    flood that filled the map is kept without a record per flow of it."""
    db.execute("ALTER TABLE samples ADD COLUMN flood_other INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE samples ADD COLUMN events_limited INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "CREATE TABLE floods (time TEXT NOT NULL, family INTEGER NOT NULL, "
        "prefix TEXT NOT NULL, proto INTEGER NOT NULL, dport INTEGER NOT NULL, "
        "direction TEXT NOT NULL, tcp_flags INTEGER NOT NULL, packets INTEGER NOT NULL, "
        "bytes INTEGER NOT NULL, in_flows INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX floods_time ON floods (time)")


def _migration_13(db: sqlite_utils.Database) -> None:
    """blocks: every change of the block rules of a recording started with --allow-block
    (``session``): a rule put in force (``action`` 'block', with its ``ttl`` in seconds and
    what the operator confirmed a second time, if anything), taken out ('unblock') or ended by
    its time to live ('expire'), with the packets it had dropped (``matched``)."""
    db.execute(
        "CREATE TABLE blocks (time TEXT NOT NULL, session TEXT NOT NULL, action TEXT NOT NULL, "
        "rule TEXT NOT NULL, ttl REAL, matched INTEGER NOT NULL, confirmed TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX blocks_time ON blocks (time)")


def _migration_14(db: sqlite_utils.Database) -> None:
    """flows.resets: the TCP resets that travelled in a record's flow (RESETS_VERSION)."""
    db.execute("ALTER TABLE flows ADD COLUMN resets INTEGER")


def _migration_15(db: sqlite_utils.Database) -> None:
    """flows.KINDS_COLUMNS: a record's retransmissions by kind (KINDS_VERSION)."""
    for column in KINDS_COLUMNS:
        db.execute(f"ALTER TABLE flows ADD COLUMN {column} INTEGER")


# Each entry upgrades the schema from version i to i + 1; user_version holds how many ran.
# Never edit an entry once released: add a new one.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
    _migration_8,
    _migration_9,
    _migration_10,
    _migration_11,
    _migration_12,
    _migration_13,
    _migration_14,
    _migration_15,
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
