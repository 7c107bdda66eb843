"""The history store on real temporary SQLite files: schema, permissions, WAL, migrations,
one transaction per tick, retention, the background writer (backlog, drops, a full disk),
kill -9 safety, and the read-only `sql` path."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlite_utils
from hypothesis import given
from hypothesis import strategies as st

from flowscope import abi
from flowscope.bench import synthetic_history
from flowscope.collect.detect import Alert
from flowscope.errors import FlowscopeError, UsageError
from flowscope.history import files, queries, sandbox, schema, store
from flowscope.history.writer import CLOSE_STALL, Writer
from flowscope.model import (
    FlowBatch,
    FlowKey,
    FlowRecord,
    NewFlow,
    Owner,
    PendingFlows,
    PendingHealth,
    Sample,
    pending_records,
)
from flowscope.when import parse_duration

T0 = 1_795_000_000.0  # 2026-11-18T...Z, a fixed clock


def rec(
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    sport: int = 40000,
    dport: int = 443,
    proto: int = 6,
    packets: int = 10,
    nbytes: int = 1000,
    first: float = T0,
    last: float = T0 + 1,
    iface: str = "eth0",
) -> FlowRecord:
    key = FlowKey(abi.AF_INET, src, dst, sport, dport, proto)
    return FlowRecord(key, iface, packets, nbytes, nbytes - 40, first, last, 0x12, "idle")


def sample(t: float = T0, packets: int = 5) -> Sample:
    counters = {c: 0 for c in schema.COUNTER_COLUMNS} | {"packets": packets}
    return Sample(t, 1.0, 8000.0, 5.0, 3, 1, counters)


def event(t: float = T0) -> NewFlow:
    return NewFlow(t, FlowKey(abi.AF_INET, "10.0.0.1", "10.0.0.2", 1, 2, 17), "eth0", 60, False)


def count(path: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as c:
        return int(c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "flows.db"


# --- paths, permissions, schema ---------------------------------------------------------------


def test_default_path_follows_xdg_state_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from flowscope import pipeline

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert pipeline.default_db_path() == tmp_path / "xdg" / "flowscope" / "flows.db"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pipeline.default_db_path() == tmp_path / "home/.local/state/flowscope/flows.db"


def test_an_up_to_date_database_opens_without_sqlite_utils(tmp_path: Path) -> None:
    """Only a migration needs sqlite-utils; its import (0.1-0.2 s) is not paid by every start
    of `live` or `record` on a database already at the current schema, nor with --no-db."""
    path = tmp_path / "flows.db"
    store.Store(path).close()  # created and migrated here
    code = (
        "import sys, pathlib\n"
        "import flowscope.pipeline, flowscope.ui.app\n"
        "from flowscope.history import store\n"
        f"store.Store(pathlib.Path({str(path)!r})).close()\n"
        "print('sqlite_utils' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_new_database_is_private_wal_and_versioned(db: Path) -> None:
    os.umask(0o022)
    with store.Store(db) as s:
        s.write_tick([rec()], sample(), [event()])
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(Path(f"{db}-wal").stat().st_mode) == 0o600
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert schema.schema_version(c) == schema.SCHEMA_VERSION


def test_schema_has_the_documented_tables_columns_and_indexes(db: Path) -> None:
    store.Store(db).close()
    d = sqlite_utils.Database(db)
    flows = d["flows"]
    assert [c.name for c in flows.columns] == ["id", *schema.FLOW_COLUMNS]
    assert flows.pks == ["id"]
    direction = next(c for c in flows.columns if c.name == "direction")
    assert direction.notnull and direction.default_value == "'ingress'"
    assert [c.name for c in d["samples"].columns] == list(schema.SAMPLE_COLUMNS)
    assert tuple(c.name.lower() for c in abi.Counter) == schema.COUNTER_COLUMNS
    assert [c.name for c in d["events"].columns] == list(schema.EVENT_COLUMNS)
    assert [c.name for c in d["floods"].columns] == list(schema.FLOOD_COLUMNS)
    indexed = {(t, tuple(i.columns)) for t in d.table_names() for i in d[t].indexes}
    assert ("flows", ("last_seen",)) in indexed
    assert ("samples", ("time",)) in indexed
    assert ("events", ("time",)) in indexed
    assert ("floods", ("time",)) in indexed
    assert [c.name for c in d["alerts"].columns] == [
        "session", "id", "kind", "source", "target", "start", "last", "flows", "sources", "filter"
    ]  # fmt: skip
    assert d["alerts"].pks == ["session", "id"]
    assert ("alerts", ("last",)) in indexed
    assert ("flows_hourly", ("hour", *schema.FLOW_KEY_COLUMNS)) in indexed
    for column in ("bytes", "packets", "records"):  # each hour's largest flows, for top N
        assert ("flows_hourly", ("hour", column)) in indexed


def test_released_schema_is_frozen(db: Path) -> None:
    """A new file's schema, as SQLite keeps it (sqlite_master, in creation order), is the one
    recorded in frozen_schema.json when each migration was released: nothing a library
    upgrade or an edit could change (issue #15). A new migration appends to the file."""
    store.Store(db).close()
    with contextlib.closing(sqlite3.connect(db)) as c:
        got = [
            list(r) for r in c.execute("SELECT type, name, sql FROM sqlite_master ORDER BY rowid")
        ]
    frozen = json.loads((Path(__file__).parent / "frozen_schema.json").read_text())
    assert got == frozen


FOLLOWED = st.fixed_dictionaries(
    {
        "owner": st.none() | st.sampled_from([Owner(812, "nginx", 33, "/system.slice/a"), None]),
        "retrans": st.integers(-1, 4),
        "rtt_us": st.integers(-1, 900),
        "drops": st.integers(-1, 3),
        "resets": st.integers(-1, 2),
        "kinds": st.sampled_from([(-1, -1, -1), (0, 0, 0), (2, 1, 0)]),
    }
)


def test_every_column_of_a_tick_is_stored_as_its_record_says(tmp_path: Path) -> None:
    """Whatever mix of followed and not followed records a tick holds (the writer leaves out
    the groups of columns no record of the tick has a value in), each row holds its record's
    values, NULL exactly where the record says 'not followed' (-1, no owner, no drops)."""
    with store.Store(tmp_path / "flows.db") as s:

        @given(st.lists(FOLLOWED, min_size=1, max_size=6))
        def check(ticks: list[dict[str, Any]]) -> None:
            records = [
                dataclasses.replace(
                    rec(sport=1000 + i),
                    owner=t["owner"],
                    retrans=t["retrans"],
                    rtt_us=t["rtt_us"],
                    rtt_min_us=t["rtt_us"] // 2,
                    drops=t["drops"],
                    drop_reason="NO_SOCKET",
                    resets=t["resets"],
                    retrans_kinds=t["kinds"],
                )
                for i, t in enumerate(ticks)
            ]
            first = s.conn.execute("SELECT coalesce(max(id), 0) FROM flows").fetchone()[0]
            s.write_tick(records, None, [])
            got = s.conn.execute(
                "SELECT sport, pid, comm, uid, cgroup, retrans, rtt_us, rtt_min_us, drops, "
                "drop_reason, resets, retrans_fast, retrans_rto, retrans_probe, packets, src "
                "FROM flows WHERE id > ? ORDER BY id",
                (first,),
            ).fetchall()

            def known(v: int) -> int | None:
                return v if v >= 0 else None

            want = [
                (
                    r.key.sport,
                    *((r.owner.pid, r.owner.comm, r.owner.uid, r.owner.cgroup) if r.owner
                      else (None,) * 4),
                    known(r.retrans),
                    known(r.rtt_us),
                    known(r.rtt_min_us),
                    known(r.drops),
                    "NO_SOCKET" if r.drops > 0 else None,
                    known(r.resets),
                    *(known(k) for k in r.retrans_kinds),
                    10,
                    "10.0.0.1",
                )
                for r in records
            ]  # fmt: skip
            assert got == want

        check()


def test_times_are_fixed_width_iso_utc_text(db: Path) -> None:
    with store.Store(db) as s:
        s.write_tick([rec(first=T0 + 0.0004, last=T0 + 59.9996)], sample(T0), [event(T0)])
    with contextlib.closing(sqlite3.connect(db)) as c:
        first, last = c.execute("SELECT first_seen, last_seen FROM flows").fetchone()
        assert first == "2026-11-18T11:06:40.000Z" and last == "2026-11-18T11:07:40.000Z"
        # SQLite's own date functions read them as they are
        assert c.execute("SELECT strftime('%s', last_seen) FROM flows").fetchone()[0] == str(
            int(T0 + 60)
        )


@given(st.floats(min_value=0, max_value=4e9), st.floats(min_value=0, max_value=4e9))
def test_iso_time_is_fixed_width_and_sorts_as_time(a: float, b: float) -> None:
    ta, tb = schema.iso_time(a), schema.iso_time(b)
    assert len(ta) == len(tb) == 24 and ta.endswith("Z")
    if round(a * 1000) < round(b * 1000):
        assert ta < tb
    assert abs(schema.parse_iso(ta) - a) <= 0.0005 + 1e-6


# --- migrations -------------------------------------------------------------------------------


def test_an_old_version_file_is_upgraded_and_backfilled(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db, isolation_level=None)
    schema.MIGRATIONS[0](sqlite_utils.Database(conn))
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO flows (iface, direction, vlan, family, src, dst, sport, dport, proto, "
        "first_seen, last_seen, packets, bytes, ip_bytes, tcp_flags, end_reason) VALUES "
        "('eth0', 'ingress', 0, 4, 'a', 'b', 1, 2, 6, '2026-11-18T08:00:00.000Z', "
        "'2026-11-18T08:10:00.000Z', 3, 300, 280, 0, 'idle')"
    )
    conn.close()
    with store.Store(db) as s:
        assert schema.schema_version(s.conn) == schema.SCHEMA_VERSION
        row = s.conn.execute("SELECT hour, packets, bytes, records FROM flows_hourly").fetchone()
        assert row == ("2026-11-18T08:00:00.000Z", 3, 300, 1)


def test_a_version_2_file_gains_samples_evicted_and_stores_it(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db, isolation_level=None)
    for migration in schema.MIGRATIONS[:2]:
        migration(sqlite_utils.Database(conn))
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO samples (time, packets) VALUES ('2026-11-18T08:00:00.000Z', 9)")
    conn.close()
    with store.Store(db) as s:
        assert schema.schema_version(s.conn) == schema.SCHEMA_VERSION
        # the row written before the column existed reads 0
        assert s.conn.execute("SELECT packets, evicted FROM samples").fetchall() == [(9, 0)]
        tick = sample(T0 + 1)
        s.write_tick([], dataclasses.replace(tick, counters=tick.counters | {"evicted": 5}), [])
        rows = s.conn.execute("SELECT time, evicted FROM samples ORDER BY time").fetchall()
        assert rows[-1] == (schema.iso_time(T0 + 1), 5)


def test_a_newer_version_file_is_refused_clearly(db: Path) -> None:
    store.Store(db).close()
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    with pytest.raises(files.StoreError, match="newer than this flowscope knows"):
        store.Store(db)
    with pytest.raises(files.StoreError, match="newer"):  # read commands refuse it too
        queries.history(files.connect_readonly(db), queries.HistoryQuery())


def test_a_file_that_is_not_a_database_is_a_store_error(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(files.StoreError, match="not a flowscope database"):
        store.Store(db)


# --- one transaction per tick -------------------------------------------------------------------


def test_write_tick_writes_records_sample_and_events(db: Path) -> None:
    with store.Store(db) as s:
        s.write_tick([rec(), rec(sport=2)], sample(packets=77), [event()], records_dropped=4)
        srow = s.conn.execute("SELECT packets, records_dropped, interval FROM samples").fetchone()
        assert srow == (77, 4, 1.0)
        assert count(db, "flows") == 2 and count(db, "events") == 1


def test_write_tick_is_one_transaction(db: Path) -> None:
    with store.Store(db) as s:
        s.write_tick([rec()], sample(), [event()])
        # The events insert comes last in a tick: make it fail, and nothing of the tick stays.
        s.conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
        with pytest.raises(files.StoreError, match="boom"):
            s.write_tick([rec(), rec(), rec()], sample(), [event()])
        assert count(db, "flows") == 1 and count(db, "samples") == 1
        assert not s.conn.in_transaction


def test_rollup_keeps_hourly_sums_exact(db: Path) -> None:
    with store.Store(db) as s:
        s.write_tick([rec(nbytes=100), rec(nbytes=200, last=T0 + 3)], None, [])
        assert s.rollup() == 2
        s.write_tick([rec(nbytes=300, last=T0 + 5)], None, [])
        assert s.rollup() == 1 and s.rollup() == 0
        rows = s.conn.execute("SELECT bytes, records, last_seen FROM flows_hourly").fetchall()
        assert rows == [(600, 3, schema.iso_time(T0 + 5))]


# --- retention --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("2h", 7200), ("7d", 604800), ("1w", 604800), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("1GB", 10**9), ("500MB", 5 * 10**8), ("64kB", 64000), ("1GiB", 2**30), ("2 MiB", 2**21)],
)
def test_parse_size(text: str, size: int) -> None:
    assert files.parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "7", "7y", "-1d", "0s", "d", "1e3s"])
def test_bad_durations_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError, match="--retain") as e:
        parse_duration(bad)
    assert e.value.exit_code == 2


@pytest.mark.parametrize("bad", ["", "1XB", "GB", "-5MB", "0GB", "1 G B"])
def test_bad_sizes_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError, match="--max-db-size"):
        files.parse_size(bad)


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["KiB", "MiB", "kB", "MB"]))
def test_parse_size_property(n: int, unit: str) -> None:
    factor = {"KiB": 1024, "MiB": 1024**2, "kB": 1000, "MB": 1000**2}[unit]
    assert files.parse_size(f"{n}{unit}") == n * factor


def alert(n: int, start: float, last: float, count: int = 20) -> Alert:
    return Alert(n, "port scan", "10.0.0.9", "10.0.0.1", start, last, count, "src 10.0.0.9")


def test_prune_by_age_deletes_the_oldest_of_every_table(db: Path) -> None:
    with store.Store(db) as s:
        for day in range(5):
            t = T0 + day * 86400
            s.write_tick(
                [rec(first=t, last=t + 1)], sample(t), [event(t)], alerts=[alert(day, t, t + 1)]
            )
        s.rollup()
        deleted = s.prune(retain_seconds=2.5 * 86400, max_bytes=None, now=T0 + 4 * 86400 + 2)
        assert deleted == 2
        for table in ("flows", "samples", "events", "flows_hourly", "alerts"):
            assert count(db, table) == 3, table
        oldest = s.conn.execute("SELECT min(last_seen) FROM flows").fetchone()[0]
        assert oldest == schema.iso_time(T0 + 2 * 86400 + 1)


def test_prune_by_size_keeps_the_newest_and_shrinks_the_file(db: Path) -> None:
    with store.Store(db) as s:
        for i in range(40):
            t = T0 + i * 60
            s.write_tick(
                [rec(sport=j, first=t, last=t + 1) for j in range(500)], sample(t), [event(t)]
            )
        s.rollup()
        s._reclaim()
        before = db.stat().st_size
        assert before > 1_000_000
        s.prune(retain_seconds=None, max_bytes=400_000)
        assert s.size_bytes() <= 400_000
        assert db.stat().st_size <= 400_000 < before
        newest = s.conn.execute("SELECT max(last_seen) FROM flows").fetchone()[0]
        assert newest == schema.iso_time(T0 + 39 * 60 + 1)
        assert count(db, "flows") > 0
        # rows written after pruning are still rolled up (the rollup mark follows max(id))
        s.prune(retain_seconds=None, max_bytes=1)
        s.write_tick([rec(nbytes=5, last=T0 + 99999)], None, [])
        assert s.rollup() == 1


# --- alerts ---------------------------------------------------------------------------------


def scan_events(start: float, ports: range, src: str = "10.0.0.9") -> list[NewFlow]:
    """A SYN scan: one new flow per port from ``src`` to 10.0.0.1, 10 ms apart, each
    answered by the scanned host (its RST: a reply, not a second scanner)."""
    out = []
    for i, port in enumerate(ports):
        key = FlowKey(abi.AF_INET, src, "10.0.0.1", 50000, port, 6)
        t = start + i * 0.01
        out.append(NewFlow(t, key, "eth0", 60, False))
        out.append(NewFlow(t + 0.001, FlowKey(abi.AF_INET, "10.0.0.1", src, port, 50000, 6),
                           "eth0", 54, False))  # fmt: skip
    return out


def test_the_writer_keeps_a_scan_as_one_alert_up_to_date_even_across_failed_writes(
    db: Path,
) -> None:
    """A 90-port scan over three ticks: one row naming the scanner, whose count ends at 90
    new connections (the replies not counted); the second tick's write failed and was
    retried, and still wrote its update (the detector sees each tick once)."""
    s = store.Store(db)
    s.conn.execute("PRAGMA busy_timeout = 20")
    w = Writer(s, retry_interval=0.05)
    w.submit([], sample(T0), scan_events(T0, range(1, 31)))
    deadline = time.monotonic() + 5
    while w.backlog and time.monotonic() < deadline:
        time.sleep(0.01)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        w.submit([], sample(T0 + 1), scan_events(T0 + 1, range(31, 61)))
        while w.status is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.status is not None and "locked" in w.status
        time.sleep(0.3)  # a few retries
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    while w.backlog and time.monotonic() < deadline:
        time.sleep(0.01)
    with contextlib.closing(files.connect_readonly(db)) as c:
        (row,) = queries.alerts(c, None, T0 + 10)
    assert row["flows"] == 60  # the retried tick wrote what it changed
    w.submit([], sample(T0 + 2), scan_events(T0 + 2, range(61, 91)))
    assert w.close(timeout=10)
    with contextlib.closing(files.connect_readonly(db)) as c:
        rows = queries.alerts(c, None, T0 + 10)
    assert rows == [
        {
            "start": schema.iso_time(T0),
            "last": schema.iso_time(T0 + 2 + 29 * 0.01),
            "kind": "port scan",
            "source": "10.0.0.9",
            "target": "10.0.0.1",
            "flows": 90,
            "sources": 0,
            "filter": "src 10.0.0.9",
        }
    ]


@given(
    spans=st.lists(st.tuples(st.integers(0, 100), st.integers(0, 20)), max_size=8),
    since=st.none() | st.integers(0, 130),
    length=st.integers(0, 130),
)
def test_alerts_lists_exactly_those_going_on_in_the_range(
    spans: list[tuple[int, int]], since: int | None, length: int
) -> None:
    """Against a model: an alert [start, last] is listed when it overlaps [since, until]."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flows.db"
        with store.Store(path) as s:
            s.write_tick(
                [],
                None,
                [],
                alerts=[alert(i, T0 + a, T0 + a + d) for i, (a, d) in enumerate(spans)],
            )
        until = (since or 0) + length
        with contextlib.closing(files.connect_readonly(path)) as c:
            got = queries.alerts(c, None if since is None else T0 + since, T0 + until)
    expected = [  # oldest first, then in the order raised
        (a, a + d)
        for a, _, d in sorted((a, i, d) for i, (a, d) in enumerate(spans))
        if a <= until and (since is None or a + d >= since)
    ]
    assert [(schema.parse_iso(r["start"]) - T0, schema.parse_iso(r["last"]) - T0) for r in got] == [
        (float(a), float(b)) for a, b in expected
    ]


# --- the background writer --------------------------------------------------------------------


def test_writer_writes_every_tick_and_flushes_on_close(db: Path) -> None:
    w = Writer(db)
    for i in range(50):
        w.submit([rec(sport=i), rec(sport=i + 1000)], sample(T0 + i), [event()])
    assert w.close(timeout=10)
    assert w.backlog == 0 and w.dropped == 0 and w.status is None and w.written == 100
    assert count(db, "flows") == 100 and count(db, "samples") == 50
    assert count(db, "flows_hourly") == 100  # rolled up on close


def test_writer_backlog_is_bounded_and_drops_are_counted(db: Path) -> None:
    """Another connection holds the write lock: the writer cannot write, the collector's
    submit() still returns at once, records wait up to max_backlog, the rest are dropped and
    counted, and the count lands in the next sample written."""
    s = store.Store(db)
    s.conn.execute("PRAGMA busy_timeout = 20")
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    w = Writer(s, max_backlog=25, retry_interval=0.05)
    try:
        t = time.perf_counter()
        for i in range(10):
            w.submit([rec(sport=i * 10 + j) for j in range(10)], sample(T0 + i), [])
        assert time.perf_counter() - t < 0.5  # never waited for the disk
        deadline = time.monotonic() + 5
        while w.status is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.status is not None and "locked" in w.status
        assert w.backlog == 25
        assert w.dropped == 75
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert w.close(timeout=10)
    assert w.status is None
    assert count(db, "flows") == 25
    with contextlib.closing(sqlite3.connect(db)) as c:
        dropped = [r[0] for r in c.execute("SELECT records_dropped FROM samples ORDER BY time")]
    assert sum(dropped) == 75 and dropped[0] == 75  # reported once, in the first sample written


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (needs root to mount; skipped otherwise), unmounted afterwards."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_writer_survives_a_full_disk_and_catches_up(tiny_fs: Path) -> None:
    """A real full file system (a 2 MB tmpfs, not a simulation): SQLite fails with 'database
    or disk is full'; the writer keeps the backlog, shows the error in its status, keeps
    retrying, and once the file system is enlarged (remount with a bigger size) writes it
    all. Nothing raises into the caller."""
    db = tiny_fs / "flows.db"
    w = Writer(db, retry_interval=0.05)
    for i in range(60):
        w.submit([rec(sport=j, first=T0 + i, last=T0 + i + 1) for j in range(200)], sample(), [])
    deadline = time.monotonic() + 20
    while (w.status is None or "full" not in w.status) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert w.status is not None and "full" in w.status, w.status
    assert w.backlog > 0 and w.dropped == 0
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_fs)], check=True)
    assert w.close(timeout=30)
    assert w.status is None and w.backlog == 0
    assert count(db, "flows") == 60 * 200
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_kill_9_mid_write_leaves_a_sound_file(tmp_path: Path) -> None:
    """A child writes ticks of 100 records in a loop and is SIGKILLed mid-way: the file passes
    integrity_check and holds whole ticks only (WAL + one transaction per tick)."""
    db = tmp_path / "flows.db"
    store.Store(db).close()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            s = store.Store(db)
            i = 0
            while True:
                s.write_tick([rec(sport=j, last=T0 + i) for j in range(100)], sample(), [])
                i += 1
        finally:
            os._exit(1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.05)
        with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(db)) as c:
            if c.execute("SELECT count(*) FROM flows").fetchone()[0] >= 2000:
                break
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = c.execute("SELECT count(*) FROM flows").fetchone()[0]
        assert n >= 2000 and n % 100 == 0


# --- flowscope sql ----------------------------------------------------------------------------


@pytest.fixture
def filled(db: Path) -> Path:
    with store.Store(db) as s:
        s.write_tick([rec(), rec(sport=2)], sample(), [event()])
    return db


@pytest.mark.parametrize(
    ("query", "word"),
    [
        ("DELETE FROM flows", "DELETE"),
        ("DROP TABLE flows", "DROP"),
        ("INSERT INTO flows (src) VALUES ('x')", "INSERT"),
        ("UPDATE flows SET bytes = 0", "UPDATE"),
        ("ATTACH DATABASE '/tmp/other.db' AS other", "ATTACH"),
        ("PRAGMA writable_schema = 1", "PRAGMA writable_schema=1"),
        ("PRAGMA user_version = 9", "PRAGMA user_version=9"),
        ("CREATE TABLE t (x)", "CREATE"),
        ("VACUUM", "VACUUM"),
        ("WITH x AS (SELECT 1) DELETE FROM flows", "DELETE"),
    ],
)
def test_sql_refuses_writes(filled: Path, query: str, word: str) -> None:
    with pytest.raises(UsageError) as e:
        sandbox.read_sql(filled, query)
    assert str(e.value) == f"sql: only reading is allowed ({word} refused)"
    assert count(filled, "flows") == 2
    assert sandbox.read_sql(filled, "PRAGMA user_version")[1] == [(schema.SCHEMA_VERSION,)]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT count(*) FROM flows",
        "PRAGMA table_info(flows)",
        "SELECT name FROM pragma_table_info('flows')",
        "PRAGMA user_version",
        "PRAGMA integrity_check",
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3) "
        "SELECT x FROM n",
    ],
)
def test_sql_allows_reading(filled: Path, query: str) -> None:
    columns, rows = sandbox.read_sql(filled, query)
    assert columns and rows


def test_sql_syntax_error_is_one_line(filled: Path) -> None:
    with pytest.raises(UsageError, match=r'^sql: near "SELEKT": syntax error$'):
        sandbox.read_sql(filled, "SELEKT 1")


def test_benchmark_hook_reports_a_rate(tmp_path: Path) -> None:
    result = synthetic_history.insert_rate(2000, batch=500)
    assert result["records"] == 2000 and result["records_per_second"] > 0


# --- crash safety and bounded shutdown ----------------------------------------------------------


def pending_of(
    packets: list[int],
    exported: list[int],
    t0: float = T0,
    owners: list[Owner | None] | None = None,
    health: bool = False,
    resets: bool = True,
) -> PendingFlows:
    """IPv4 flows 198.18.0.(i+1) -> 198.19.0.1 that counted ``packets`` of which ``exported``
    are in records already (1000 bytes a packet); kernel times are seconds since 0; their
    processes when ``owners`` is given; with ``health``, flow i has i + 3 retransmissions and
    2 * i drops not yet written (NO_SOCKET), an RTT of 1500 us, and the last flow is not a
    followed connection; with ``resets`` too, i resets not yet written (without: a blob as
    writers wrote them before resets were followed)."""
    n = len(packets)
    keys = np.zeros(n, abi.KEY4_DTYPE)
    for i in range(n):
        keys[i]["saddr"] = [198, 18, 0, i + 1]
        keys[i]["daddr"] = [198, 19, 0, 1]
        keys[i]["sport"], keys[i]["dport"], keys[i]["proto"], keys[i]["ifindex"] = (
            5000 + i,
            53,
            17,
            3,
        )
    p = np.array(packets, np.uint64)
    e = np.array(exported, np.uint64)
    batch = FlowBatch(
        abi.AF_INET, keys, p, p * 1000, p * 980,
        np.full(n, 10 * 10**9, np.uint64), np.full(n, 20 * 10**9, np.uint64),
        np.zeros(n, np.uint8),
    )  # fmt: skip
    start = np.full(n, 12 * 10**9, np.uint64)
    owner = None
    if owners is not None:
        owner = np.empty(n, object)
        owner[:] = owners
    pending_health = None
    if health:
        tcp = np.arange(n) < n - 1
        reasons = np.array(["NO_SOCKET" if i else None for i in range(n)], object)
        pending_health = PendingHealth(
            np.where(tcp, np.arange(n) + 3, -1), np.where(tcp, 1500, -1),
            np.where(tcp, 900, -1), 2 * np.arange(n), reasons,
            np.arange(n, dtype=np.int64) if resets else None,
        )  # fmt: skip
    return PendingFlows(
        batch, slice(None), e, e * 1000, e * 980, start, t0 - 10, {3: "veth3"}, owner,
        pending_health,
    )  # fmt: skip


_KILLED_WRITER = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from tests.unit.test_store import OWNERS, pending_of, rec
from flowscope.history.writer import Writer
w = Writer({db!r})
w.submit(
    [rec(sport=1)], None, [], [pending_of([5, 7, 9], [0, 7, 4], owners=OWNERS[1:], health=True)]
)
while w.written < 1:
    time.sleep(0.01)
time.sleep(0.2)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writer_leaves_its_pending_flows_and_the_next_one_writes_them(db: Path) -> None:
    """kill -9 after a tick was written: the next writer turns the tick's pending part of each
    live flow into a 'crash' record (what was exported already is not written twice), with
    the flow's process, and its retransmissions and drops no record held yet."""
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER.format(root=root, db=str(db))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert count(db, "flows") == 1
    w = Writer(db)
    # the flow with 7 of 7 exported has no packets pending, but retransmissions, drops and
    # resets no record held: a crash record of no packets holds them (Collector._owing)
    assert w.recovered == 3
    assert w.close(timeout=10)
    with contextlib.closing(sqlite3.connect(db)) as c:
        rows = c.execute(
            "SELECT src, sport, packets, bytes, first_seen, last_seen, iface, pid, comm, "
            "container FROM flows WHERE end_reason = 'crash' ORDER BY sport"
        ).fetchall()
        assert c.execute("SELECT count(*) FROM pending").fetchone()[0] == 0
        health = c.execute(
            "SELECT retrans, rtt_us, rtt_min_us, drops, drop_reason, resets FROM flows "
            "WHERE end_reason = 'crash' ORDER BY sport"
        ).fetchall()
    assert health == [
        (3, 1500, 900, 0, None, 0),
        (4, 1500, 900, 2, "NO_SOCKET", 1),
        (None, None, None, 4, "NO_SOCKET", 2),
    ]
    first, last = schema.iso_time(T0 + 2), schema.iso_time(T0 + 10)
    assert rows == [
        ("198.18.0.1", 5000, 5, 5000, first, last, "veth3", 812, "nginx", "nginx.service"),
        ("198.18.0.2", 5001, 0, 0, first, last, "veth3", 640, "sshd", "ssh.service"),
        ("198.18.0.3", 5002, 5, 5000, first, last, "veth3", 2210, "api", "docker:abababababab"),
    ]
    assert Writer(db).recovered == 0  # once only


@pytest.mark.parametrize("resets", [True, False], ids=["with-resets", "before-resets"])
def test_pending_health_reads_back_with_and_without_resets(resets: bool) -> None:
    """pending.health is a JSON list of drop reasons for blobs written before resets were
    followed, and {"reasons": [...], "resets": true} for blobs with the resets column: both
    read back to the records they stand for (an old blob's records have no resets)."""
    p = pending_of([5, 7, 9], [0, 0, 4], health=True, resets=resets)
    blob = p.encode()
    text = store.health_json(blob)
    assert text is not None and (text.startswith("{") == resets)
    reasons, has_resets = store.health_from_json(text)
    assert (reasons, has_resets) == (blob.reasons, resets)
    records = pending_records(abi.AF_INET, blob.data, {}, "crash", None, reasons, has_resets)
    assert [r.resets for r in records] == ([0, 1, 2] if resets else [-1, -1, -1])
    assert [r.drops for r in records] == [0, 2, 4]


def test_a_live_writers_pending_flows_are_left_alone(db: Path) -> None:
    """Two recordings into one file: the second must not take the first one's live flows for
    a crash's (they would be written twice)."""
    first = Writer(db)
    first.submit([], None, [], [pending_of([5], [0])])
    deadline = time.monotonic() + 5
    while not first.writes and time.monotonic() < deadline:
        time.sleep(0.01)
    second = Writer(db)
    assert second.recovered == 0
    second.close(timeout=10)
    first.submit([rec()], None, [], [])  # shut down: nothing is pending any more
    assert first.close(timeout=10)
    assert count(db, "pending") == 0 and Writer(db).recovered == 0


def test_close_gives_up_on_a_database_that_cannot_be_written(db: Path) -> None:
    """The write lock is held for ever (as a full disk or a damaged file fail every write):
    close() returns within a few seconds, counts what it could not write and says why."""
    s = store.Store(db)
    s.conn.execute("PRAGMA busy_timeout = 20")
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        w = Writer(s, retry_interval=0.05)
        for i in range(4):
            w.submit([rec(sport=i * 10 + j) for j in range(10)], sample(T0 + i), [])
        t = time.monotonic()
        assert not w.close()
        assert time.monotonic() - t < CLOSE_STALL + 2
        assert w.lost == 40
        line = w.report()
        assert line is not None and "40 records could not be written" in line and "locked" in line
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_an_error_in_the_writer_thread_stops_the_recording(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the database's error (here a retention too far back for a date): the thread ends,
    check() raises it for the collection loop, close() ends at once and counts the rest."""

    def prune(*args: object) -> int:
        raise ValueError("year -99999 is out of range")

    w = Writer(db, retain_seconds=1.0, prune_interval=0.0)
    monkeypatch.setattr(w.store, "prune", prune)
    w.submit([rec()], sample(), [])
    deadline = time.monotonic() + 5
    while w.failed is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(FlowscopeError, match="history writer stopped: ValueError"):
        w.check()
    w.submit([rec(sport=2)], sample(), [])
    t = time.monotonic()
    w.close()
    assert time.monotonic() - t < 2
    assert w.lost == 1


def test_history_counts_the_live_flows_of_a_running_recording(db: Path) -> None:
    """What a running writer holds but has not written (its pending flows, as of its last
    tick) is in history at once, once, and stays exactly once when it is written later."""
    w = Writer(db)
    try:
        w.submit([rec(sport=1, packets=3, nbytes=300)], None, [], [pending_of([5, 7], [0, 7])])
        deadline = time.monotonic() + 5
        while w.backlog and time.monotonic() < deadline:
            time.sleep(0.01)
        conn = files.connect_readonly(db)
        try:
            q = queries.HistoryQuery(top=None, group_by="src")
            rows = {r["src"]: r["packets"] for r in queries.history(conn, q, now=T0 + 60).rows}
        finally:
            conn.close()
        # 198.18.0.1 has 5 pending; 198.18.0.2 has nothing pending (7 of 7 written elsewhere)
        assert rows == {"10.0.0.1": 3, "198.18.0.1": 5}
        w.submit([], None, [], [])  # shut down: written, nothing pending
    finally:
        w.close(timeout=10)


# --- the database path: symlinks, foreign files, permissions, readers ------------------------


def test_a_symlink_is_refused_and_its_target_is_never_created(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "victim"
    link = tmp_path / "flows.db"
    link.symlink_to(target)  # dangling
    with pytest.raises(files.StoreError, match="is a symbolic link"):
        store.Store(link)
    assert not target.exists()
    target.parent.mkdir()
    target.write_bytes(b"")
    with pytest.raises(files.StoreError, match="is a symbolic link"):
        store.Store(link)
    assert target.read_bytes() == b""


def test_another_applications_sqlite_file_is_refused_not_migrated(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as c:
        c.execute("CREATE TABLE accounts (name TEXT)")
        c.commit()
    before = path.read_bytes()
    with pytest.raises(files.StoreError, match="another application"):
        store.Store(path)
    assert path.read_bytes() == before
    with contextlib.closing(sqlite3.connect(path)) as c:
        assert c.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_an_existing_file_others_can_read_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"
    path.write_bytes(b"")
    path.chmod(0o644)
    store.Store(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_reader_needs_only_read_access(tmp_path: Path) -> None:
    """Another user, the database 0644 in a directory they may not write: history and sql
    read it (no -shm file can be made there, so the file is opened as immutable)."""
    shared = Path(tempfile.mkdtemp(prefix="fs-reader-"))
    try:
        shared.chmod(0o755)
        path = shared / "flows.db"
        with store.Store(path) as s:
            s.write_tick([rec()], None, [])
        path.chmod(0o644)
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        flowscope = [sys.executable, "-m", "flowscope"]
        for args, want in (
            (["sql", "SELECT count(*) AS n FROM flows"], "n\n1"),
            (["history", "--since", "3650d"], "10.0.0.1:40000"),
        ):
            proc = subprocess.run(
                [*as_nobody, *flowscope, args[0], "--db", str(path), *args[1:]],
                capture_output=True, text=True, timeout=60,
                cwd="/", env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            assert want in proc.stdout.replace(" ", ""), proc.stdout
    finally:
        shutil.rmtree(shared)


def test_what_history_holds_after_any_committed_tick_is_never_more_than_was_counted(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ticks queue up behind a slow disk, then the disk fails for good (as if the process died
    there): the records committed plus the pending flows left in the file must be exactly what
    the kernel had counted at the last committed tick, never a flow twice.

    Flow 198.18.0.1: 5 packets pending at tick 0 (written), 6 at tick 1, then it ends at tick 2
    with a record of 8; tick 3 never commits."""
    s = store.Store(db)
    w = Writer(s, retry_interval=0.05)
    w.submit([], None, [], [pending_of([5], [0])])
    deadline = time.monotonic() + 5
    while not w.writes and time.monotonic() < deadline:  # committed (backlog counts rows)
        time.sleep(0.01)
    assert w.writes == 1
    committed = 0
    real = s.write_tick

    def write_tick(*args: object, **kwargs: object) -> None:
        nonlocal committed
        if committed == 2:
            raise files.StoreError("disk gone")
        real(*args, **kwargs)  # type: ignore[arg-type]  # fails while the lock is held
        committed += 1

    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the three ticks queue up behind it
    s.conn.execute("PRAGMA busy_timeout = 20")
    ended = dataclasses.replace(rec(src="198.18.0.1", sport=5000, packets=8, nbytes=8000))
    monkeypatch.setattr(s, "write_tick", write_tick)
    w.submit([], None, [], [pending_of([6], [0])])
    w.submit([ended], None, [], [])
    w.submit([], None, [], [])
    blocker.execute("ROLLBACK")
    blocker.close()
    assert not w.close()
    with contextlib.closing(sqlite3.connect(db)) as c:
        recorded = c.execute("SELECT coalesce(sum(packets), 0) FROM flows").fetchone()[0]
        left = [
            r.packets
            for family, data in c.execute("SELECT family, flows FROM pending")
            for r in pending_records(family, data, {})
        ]
    assert recorded + sum(left) == 8


OWNERS = [
    None,
    Owner(812, "nginx", 33, "/system.slice/nginx.service"),
    Owner(640, "sshd", 0, "/system.slice/ssh.service"),
    Owner(2210, "api", 33, "/system.slice/docker-" + "ab" * 32 + ".scope"),
]


@given(
    picks=st.lists(
        st.tuples(st.integers(0, len(OWNERS) - 1), st.integers(1, 10_000), st.integers(0, 7200)),
        min_size=1,
        max_size=40,
    ),
    group=st.sampled_from(["process", "user", "container"]),
    hours=st.sampled_from([2.5, 5]),
)
def test_history_by_process_user_and_container_is_the_plain_sum(
    picks: list[tuple[int, int, int]], group: str, hours: float
) -> None:
    """Each record keeps its process; grouped by process, user or container, history gives
    the plain sum per owner (records without one: one NULL group), over short ranges and over
    the long ones that otherwise read the hourly rollup (which has no process)."""
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "h.db"
        records = []
        for i, (which, nbytes, offset) in enumerate(picks):
            r = rec(sport=1000 + i, nbytes=nbytes, first=T0 + offset, last=T0 + offset)
            records.append(dataclasses.replace(r, owner=OWNERS[which]))
        with store.Store(db) as s:
            s.write_tick(records, sample(T0 + 7200), [])
            s.rollup()
        key = {"process": "pid", "user": "uid", "container": "container"}[group]
        expected: dict[object, int] = {}
        for r in records:
            o = r.owner
            value = None if o is None else (o.container if key == "container" else getattr(o, key))
            expected[value] = expected.get(value, 0) + r.bytes
        q = queries.HistoryQuery(
            since=T0 + 7201 - hours * 3600, until=T0 + 7201, top=None, group_by=group
        )
        with contextlib.closing(files.connect_readonly(db)) as conn:
            rows = queries.history(conn, q, now=T0 + 7201).rows
        assert {r[key]: r["bytes"] for r in rows} == expected


@given(
    picks=st.lists(st.tuples(st.integers(0, len(OWNERS) - 1), st.booleans()), max_size=30),
)
def test_pending_flows_keep_their_processes(picks: list[tuple[int, bool]]) -> None:
    """A pending blob and its list of owners give each flow back its own process, through the
    JSON the pending table stores; owners shared by many flows (one object per socket) or
    equal but distinct objects are stored once."""
    owners = [
        dataclasses.replace(OWNERS[i]) if copy and OWNERS[i] is not None else OWNERS[i]
        for i, copy in picks
    ]
    p = pending_of([5] * len(owners), [0] * len(owners), owners=owners)
    blob = p.encode()
    table = blob.owners
    assert table is not None and len(table) == len({o for o in owners if o is not None})
    got = store.pending_rows_records(
        [(abi.AF_INET, "{}", blob.data, store.owners_json(table), None)], "x"
    )
    assert [r.owner for r in got] == owners
    # a blob of a writer without processes has no owner column
    plain = dataclasses.replace(p, owner=None)
    assert [r.owner for r in pending_records(abi.AF_INET, plain.to_bytes(), {})] == [None] * len(
        owners
    )


def test_history_counts_the_live_flows_of_a_process_under_it(db: Path) -> None:
    """What a running writer holds pending (the live part of each flow) is counted under the
    flow's process by `history --group-by process`, not under no process."""
    w = Writer(db)
    w.submit([], sample(T0 + 10), [], [pending_of([5, 3], [0, 0], owners=OWNERS[1:3])])
    deadline = time.monotonic() + 5
    while not w.writes and time.monotonic() < deadline:
        time.sleep(0.01)
    q = queries.HistoryQuery(since=T0 - 60, until=T0 + 60, group_by="process")
    with contextlib.closing(files.connect_readonly(db)) as conn:
        rows = queries.history(conn, q, now=T0 + 60).rows
    w.submit([], None, [], [])
    assert w.close(timeout=10)
    assert {r["pid"]: r["bytes"] for r in rows} == {812: 5000, 640: 3000}


def test_a_file_from_before_processes_still_answers(db: Path) -> None:
    """A schema 7 file (no process columns), read without migrating: every query works, and
    by process all of it is the group without one."""
    db.parent.mkdir()
    conn = sqlite3.connect(db)
    sdb = sqlite_utils.Database(conn)
    for migration in schema.MIGRATIONS[:7]:
        migration(sdb)
    conn.execute("PRAGMA user_version = 7")
    columns = schema.FLOW_COLUMNS_V1
    key = FlowKey(abi.AF_INET, "10.0.0.1", "10.0.0.2", 4000, 443, 6)
    conn.execute(
        f"INSERT INTO flows ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        ("eth0", "ingress", 0, 4, key.src, key.dst, 4000, 443, 6, schema.iso_time(T0),
         schema.iso_time(T0 + 1), 3, 300, 260, 0x12, "idle"),
    )  # fmt: skip
    conn.commit()
    conn.close()
    with contextlib.closing(files.connect_readonly(db)) as ro:
        for group in ("flow", "process", "container"):
            q = queries.HistoryQuery(since=T0 - 60, until=T0 + 60, group_by=group)
            rows = queries.history(ro, q, now=T0 + 60).rows
            assert [r["bytes"] for r in rows] == [300]
        q = queries.HistoryQuery(since=T0 - 60, until=T0 + 60, group_by="process")
        assert queries.history(ro, q, now=T0 + 60).rows[0]["pid"] is None


def test_retransmission_kinds_are_kept_per_record(db: Path) -> None:
    """flows.retrans_fast, retrans_rto and retrans_probe hold a record's kinds, NULL where
    they were not told (migration 15)."""
    told = dataclasses.replace(rec(sport=1), retrans=7, retrans_kinds=(4, 2, 1))
    untold = dataclasses.replace(rec(sport=2), retrans=3)
    with store.Store(db) as s:
        s.write_tick([told, untold], sample(T0), [])
    with contextlib.closing(sqlite3.connect(db)) as c:
        rows = c.execute(
            "SELECT retrans, retrans_fast, retrans_rto, retrans_probe FROM flows ORDER BY sport"
        ).fetchall()
    assert rows == [(7, 4, 2, 1), (3, None, None, None)]
