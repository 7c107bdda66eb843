"""The user-space benchmarks: every stage past the kernel (collector tick, SQLite, history
queries, the ring buffer consumer, detection, the console, replay), each beside the floor
it is measured against."""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections.abc import Iterator, Sized
from pathlib import Path

from flowscope import abi
from flowscope.bench.harness import BIG_FLOW_ENTRIES, QUICK, Lab, Result, count_label
from flowscope.bench.workload import insert_frames, other_flow_keys, replay_capture
from flowscope.errors import BenchError


def collector_tick(lab: Lab) -> Iterator[Result]:
    """One collector tick (batched read of both maps, per-CPU sums, matching with the previous
    tick, rates, expiry decisions) with N flows in the map, next to the batched read alone. The
    map is sized so N stays under the high-water mark and nothing expires: the steady state of
    a busy server. Minimum of 3 ticks, in ms. The batched read is kernel.drain's, a thread per
    CPU; a row beside it gives the same read by one thread (how the read went before). An
    informative line gives what the tick's crash safety costs the writer thread (turning its
    pending flows into the blob it writes), beside the tick. Two more rows, beside the read:
    the tick when every flow has packets in it (each flow's count raised before each tick), the
    steady state of a busy server, where the flood shape sums every flow's packets of the tick;
    and the longest tick while every flow ends (idle), with a record each, as when a flood stops
    or many connections close at once (a shutdown makes the same records): a tick takes at most
    CollectorSettings.max_records of them a family, so a million end over several ticks (an
    informative line says how many)."""
    import time

    from flowscope.collect.collector import Collector, CollectorSettings
    from flowscope.kernel.drain import MapDrain
    from flowscope.kernel.program import FlowProgram

    for n in lab.settings.drain_flows:
        prog = FlowProgram(flow_entries=int(n / 0.85) + 1)
        try:
            keys = other_flow_keys(n)
            prog.put_flows(abi.AF_INET, keys)
            collector = Collector(prog, CollectorSettings(idle_timeout=1e9, active_timeout=1e9))
            one = MapDrain(
                prog.map_fd(abi.AF_INET), abi.AF_INET, abi.KEY4_DTYPE, prog.flow_entries,
                prog.ncpus, workers=1,
            )  # fmt: skip
            reads, ticks, snapshots, singles = [], [], [], []
            for _ in range(3):
                t = time.perf_counter()
                held = sum(len(b) for b in prog.read_all_flows())
                reads.append(time.perf_counter() - t)
                t = time.perf_counter()
                single = len(one.read())
                singles.append(time.perf_counter() - t)
                t = time.perf_counter()
                tick = collector.tick()
                ticks.append(time.perf_counter() - t)
                t = time.perf_counter()
                for p in tick.pending:
                    p.to_bytes()
                snapshots.append(time.perf_counter() - t)
                if held != n or single != n or tick.sample.active_flows != n:
                    raise BenchError(
                        f"collector_tick: read {held} flows ({single} by one thread), ticked "
                        f"{tick.sample.active_flows}, expected {n}"
                    )
            active = []
            for packets in range(2, 5):
                prog.put_flows(abi.AF_INET, keys, packets=packets)
                t = time.perf_counter()
                tick = collector.tick()
                active.append(time.perf_counter() - t)
                if tick.sample.flood.packets != n:  # one packet a flow this tick
                    raise BenchError(
                        f"collector_tick: {tick.sample.flood.packets} packets in a tick, "
                        f"expected {n}"
                    )
            collector.settings = CollectorSettings(idle_timeout=0.0, active_timeout=1e9)
            per_tick = collector.settings.max_records
            needed = -(-n // per_tick)  # ticks, at the most records each
            ended, ticks_ending, ending, left = 0, 0, 0.0, n
            while left and ticks_ending < 2 * n // per_tick + 2:
                t = time.perf_counter()
                tick = collector.tick()
                ending = max(ending, time.perf_counter() - t)
                ended += len(tick.records)
                ticks_ending += 1
                left = tick.sample.active_flows
            if ended != n or left:
                raise BenchError(
                    f"collector_tick: {ended} records of {n} ending flows in {ticks_ending} "
                    f"ticks, {left} left"
                )
        finally:
            prog.close()
        label = count_label(n)
        yield Result(
            f"map_read_{label}", min(reads) * 1e3, "ms", f"map_read_one_thread_{label}",
            min(singles) * 1e3,
        )  # fmt: skip
        yield Result(
            f"collector_tick_{label}", min(ticks) * 1e3, "ms/tick", f"map_read_{label}",
            min(reads) * 1e3,
        )  # fmt: skip
        yield Result(
            f"collector_tick_active_{label}", min(active) * 1e3, "ms/tick", f"map_read_{label}",
            min(reads) * 1e3,
        )  # fmt: skip
        yield Result(
            f"collector_tick_ending_{label}", ending * 1e3, "ms/tick", f"map_read_{label}",
            min(reads) * 1e3,
        )  # fmt: skip
        yield Result(
            f"ticks_ending_{label}", ticks_ending, "ticks", f"ticks_needed_{label}", needed,
            informative=True,
        )  # fmt: skip
        yield Result(
            f"pending_blob_{label}", min(snapshots) * 1e3, "ms/tick", f"collector_tick_{label}",
            min(ticks) * 1e3, informative=True,
        )  # fmt: skip


STORE_TICK = 10_000
"""Records per write_tick in store_insert: a busy second of a busy server."""


def store_insert(lab: Lab) -> Iterator[Result]:
    """Flow records per second through Store.write_tick (one transaction per tick of 10,000,
    the flows schema with its index), next to a plain executemany of the same rows (every
    column of flows, NULL where not followed) into a table without indexes in one file of the
    same settings. Twice: records with only their counts (a replay, flows with no local socket), and
    records with a process, TCP health, drops and resets (a local connection in `record`)."""
    import sqlite3
    import tempfile
    import time

    from flowscope.bench import synthetic_history
    from flowscope.history import schema, store

    n = lab.settings.insert_records
    for followed, suffix in ((False, ""), (True, "_followed")):
        records = synthetic_history.synthetic_records(n, flows=50_000, followed=followed)
        with tempfile.TemporaryDirectory() as tmp:
            with store.Store(Path(tmp) / "flows.db") as db:
                t = time.perf_counter()
                for i in range(0, n, STORE_TICK):
                    db.write_tick(records[i : i + STORE_TICK], None, [])
                value = n / (time.perf_counter() - t)
                written = db.conn.execute("SELECT count(*) FROM flows").fetchone()[0]
            if written != n:
                raise BenchError(f"store_insert: {written} of {n} records written")
            rows = [store.flow_row(r) for r in records]  # the same values, made the same way
            conn = sqlite3.connect(Path(tmp) / "plain.db", isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"CREATE TABLE flows ({', '.join(schema.FLOW_COLUMNS)})")
            insert = f"INSERT INTO flows VALUES ({', '.join('?' * len(schema.FLOW_COLUMNS))})"
            t = time.perf_counter()
            for i in range(0, n, STORE_TICK):
                conn.execute("BEGIN")
                conn.executemany(insert, rows[i : i + STORE_TICK])
                conn.execute("COMMIT")
            baseline = n / (time.perf_counter() - t)
            conn.close()
        yield Result(
            f"store_insert{suffix}", value, "records/s", f"sqlite_executemany{suffix}", baseline
        )


def history_db(records: int) -> Path:
    """A database of ``records`` flow records over 24 hours (make_bench_db). The 10 M one
    takes a minute or two to build, so it is kept in $XDG_CACHE_HOME/flowscope and used again
    while its schema version is current; smaller ones are rebuilt each time in the temporary
    directory."""
    import os
    import sqlite3
    import tempfile

    from flowscope.bench import synthetic_history
    from flowscope.history import schema

    if records < 1_000_000:
        path = Path(tempfile.mkdtemp(prefix="flowscope-bench-")) / "history.db"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "flowscope" / f"bench-{count_label(records)}.db"
        if path.exists():
            try:
                with contextlib.closing(sqlite3.connect(path)) as conn:
                    current = schema.schema_version(conn) == schema.SCHEMA_VERSION and (
                        conn.execute("SELECT count(*) FROM flows").fetchone()[0] == records
                    )
            except sqlite3.Error:
                current = False
            if current:
                return path
            for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                stale.unlink(missing_ok=True)
    synthetic_history.make_bench_db(path, records=records)
    return path


def history_top20(lab: Lab) -> Iterator[Result]:
    """`flowscope history --top 20 --since 24h` over settings.history_records records, in ms
    (best of 3), next to the same query with --exact (every record summed, no hourly sums).
    "Now" is the database's newest record, so a cached file measures the same thing on any
    day. Both must give the same flows."""
    import shutil
    import time

    from flowscope.history import files, queries, schema

    n = lab.settings.history_records
    path = history_db(n)
    try:
        conn = files.connect_readonly(path)
        try:
            now = schema.parse_iso(conn.execute("SELECT max(last_seen) FROM flows").fetchone()[0])
            # on the hour, so the hourly sums and the records cover the same range
            since = now - 86_400 - now % 3600
            times: dict[bool, float] = {}
            keys: dict[bool, list[tuple[object, ...]]] = {}
            for exact in (False, True):
                q = queries.HistoryQuery(since=since, top=20, exact=exact)
                best = math.inf
                for _ in range(1 if exact else 3):
                    t = time.perf_counter()
                    rows = queries.history(conn, q, now=now).rows
                    best = min(best, time.perf_counter() - t)
                times[exact] = best * 1e3
                keys[exact] = [(r["src"], r["dst"], r["sport"], r["bytes"]) for r in rows]
        finally:
            conn.close()
    finally:
        if n < 1_000_000:
            shutil.rmtree(path.parent, ignore_errors=True)
    if keys[False] != keys[True] or len(keys[False]) != 20:
        raise BenchError("history_top20: the hourly sums and the records disagree")
    label = count_label(n)
    yield Result(f"history_top20_{label}", times[False], "ms", f"history_exact_{label}",
                 times[True])  # fmt: skip


RINGBUF_PAGES = 4096
"""16 MiB: room for 100,000 events (72 bytes each with the ring's header) twice over."""


def ringbuf_events(lab: Lab) -> Iterator[Result]:
    """New-flow events consumed per second by user space, after settings.ringbuf_flows new
    flows were announced; none may be lost. Three ways, each on its own program:

    - ``ringbuf_read``: FlowProgram.poll_events reading the ring's memory map into one array
      (kernel.ringbuf), nothing decoded, beside ``ringbuf_bcc_callback``, bcc's consumer
      calling Python once per record that only copies it out (how flowscope read it before);
    - ``ringbuf_events``: the same read, decoded into FlowEvents through a callback, as the
      collector takes them, beside ``ringbuf_read``."""
    import time

    from flowscope.kernel import program
    from flowscope.model import FlowEvent

    n = lab.settings.ringbuf_flows
    frames = insert_frames(n)

    def drain(how: str) -> float:
        got = [0]

        def count_only(records: Sized) -> list[FlowEvent]:
            got[0] += len(records)
            return []

        def on_record(_ctx: object, data: int, size: int) -> int:
            copied.append(ctypes.string_at(data, size))
            return 0

        copied: list[bytes] = []
        events: list[FlowEvent] = []
        prog = program.FlowProgram(
            flow_entries=BIG_FLOW_ENTRIES, ringbuf_pages=RINGBUF_PAGES, event_budget=0
        )
        try:
            for frame in frames:
                prog.test_run(frame)
            if how == "bcc":
                prog.module["events"].open_ring_buffer(on_record)
                t = time.perf_counter()
                prog.module.ring_buffer_consume()
                seconds = time.perf_counter() - t
                got[0] = len(copied)
            else:
                if how == "read":
                    prog.open_events(events.append, decode=count_only)
                else:
                    prog.open_events(events.append)
                t = time.perf_counter()
                prog.poll_events(0)
                seconds = time.perf_counter() - t
                if how == "decode":
                    got[0] = len(events)
            counters = prog.read_counters()
        finally:
            prog.close()
        created = counters[abi.Counter.FLOWS_CREATED]
        lost = counters[abi.Counter.RINGBUF_FULL]
        if got[0] != created or created != n or lost:
            raise BenchError(
                f"ringbuf ({how}): {got[0]} events for {created} new flows of {n}, {lost} lost"
            )
        return n / seconds

    read, bcc, decoded = drain("read"), drain("bcc"), drain("decode")
    yield Result("ringbuf_read", read, "events/s", "ringbuf_bcc_callback", bcc)
    yield Result("ringbuf_events", decoded, "events/s", "ringbuf_read", read)


def detect_flood(lab: Lab) -> Iterator[Result]:
    """Scan and SYN-flood detection (detect.Watch: replies told apart, then the detector's
    window), as the console and the history writer run it on every new-flow event, through a
    spoofed SYN flood of settings.detect_flows new flows to one port (a new source each), in
    events per second; it must raise exactly one flood alert. The baseline puts each event's
    key in a dict: the least any per-event work in Python costs."""
    import random
    import time

    from flowscope.collect import detect
    from flowscope.model import FlowKey, NewFlow

    rng = random.Random(7)
    n = lab.settings.detect_flows
    events = [
        NewFlow(
            1_000.0 + i * 1e-5,
            FlowKey(abi.AF_INET, f"10.{rng.randrange(256)}.{rng.randrange(256)}.{i % 256}",
                    "198.18.0.1", 1024 + i % 60000, 80, 6),
            "eth0",
            60,
            False,
        )
        for i in range(n)
    ]  # fmt: skip
    t = time.perf_counter()
    seen: dict[tuple[str, str, int], None] = {}
    for ev in events:
        seen[(ev.key.src, ev.key.dst, ev.key.dport)] = None
    floor = n / (time.perf_counter() - t)
    watch = detect.Watch()
    t = time.perf_counter()
    alerts = watch.feed(events)
    rate = n / (time.perf_counter() - t)
    if [a.kind for a in alerts] != ["SYN flood"]:
        raise BenchError(f"detect_flood: {[a.kind for a in alerts]} for one SYN flood")
    yield Result("detect_flood", rate, "events/s", "dict_insert_floor", floor)


def console(lab: Lab) -> Iterator[Result]:
    """The console (issue 4), headless at 160x48 on synthetic ticks: process CPU time per tick
    with N live flows next to the same with 1,000 (how the cost grows with flows; the budget
    is 150 ms, 15 % of a core at one tick a second), and the time from a sort-key press to the
    repainted table next to the time a tick takes to draw (target 100 ms)."""
    from flowscope.bench.console import measure  # only flowscope/ui/ imports textual

    ticks = 3 if lab.settings is QUICK else 10
    big = measure(lab.settings.console_flows, ticks, 3)
    small = measure(1_000, ticks, 1)
    label = count_label(lab.settings.console_flows)
    yield Result(
        f"console_tick_{label}", big.cpu_ms_per_tick, "ms cpu/tick", "console_tick_1k",
        small.cpu_ms_per_tick,
    )  # fmt: skip
    yield Result(
        f"console_key_{label}", big.key_ms, "ms", f"console_draw_{label}", big.wall_ms_per_tick
    )


def replay_frames(lab: Lab) -> Iterator[Result]:
    """`flowscope replay` on a capture of 1,000,000 frames (quick: 100,000): frames per second
    of the replay loop (reading the file, one BPF_PROG_TEST_RUN per frame through the replay
    build, the collector ticking on capture time), with a process per CPU (collect.split; a
    quick capture is too small for that by default, so the same then), next to bare
    BPF_PROG_TEST_RUN calls from one process on one prepared frame, the floor of one syscall
    per frame; and the same replay with one process. Target 600,000 frames/s."""
    import tempfile
    import time
    from pathlib import Path

    from flowscope.collect.recorder import NullSink
    from flowscope.collect.replay import ReplaySettings, replay
    from flowscope.kernel.testrun import ReplayRunner

    n = 100_000 if lab.settings is QUICK else 1_000_000
    rates = []
    with tempfile.TemporaryDirectory(prefix="flowscope-bench-") as tmp:
        path = Path(tmp) / "replay.pcap"
        path.write_bytes(replay_capture(n))
        for workers in (None, 1):  # one process per CPU (the default here), then one
            summary = replay(ReplaySettings(path, workers=workers), NullSink())
            counted = summary.counters.get("packets", 0)
            dirty = {
                c: v
                for c, v in summary.counters.items()
                if c in ("non_ip", "malformed", "map_full")
            }
            if counted != n or any(dirty.values()) or summary.damage is not None:
                raise BenchError(
                    f"replay_frames: {counted} of {n} frames counted ({dirty}, {summary.damage})",
                    "the capture reader, the replay build or the bench's frames changed",
                )
            rates.append(n / summary.loop_seconds)
    runner = ReplayRunner(lab.bare())
    frame = replay_capture(1)[24 + 16 :]
    buf = ctypes.create_string_buffer(abi.REPLAY_META_SIZE + len(frame))
    ctypes.memmove(ctypes.addressof(buf) + abi.REPLAY_META_SIZE, frame, len(frame))
    addr = ctypes.addressof(buf) + abi.REPLAY_META_SIZE
    pack, call, fd, opts, opts_size = runner.per_frame()
    control = runner.control
    m = abi.REPLAY_META_SIZE + len(frame)
    start = time.perf_counter()
    for _ in range(n):
        pack(control, 4, m, opts_size, addr - abi.REPLAY_META_SIZE, m)
        call(fd, opts)
    floor = n / (time.perf_counter() - start)
    yield Result("replay_frames", rates[0], "frames/s", "bare_test_run_calls", floor)
    yield Result(
        "replay_frames_one_process", rates[1], "frames/s", "replay_frames", rates[0],
        informative=True,
    )  # fmt: skip
