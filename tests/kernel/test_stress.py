"""`flowscope record` when things go wrong, end to end on a veth pair: a flood that fills the
flow map, kill -9 at random moments, a full disk and a damaged database.

The truth is what the test sent: a paced sender inside the namespace notes the monotonic time
of every frame, so the frames sent before a kill are known to the millisecond."""

from __future__ import annotations

import itertools
import random
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowscope.history import store
from tests.kernel.test_record import start_record, udp4, wait_detached
from tests.netns import PacedSender, VethNamespace, veth_namespace


@pytest.fixture
def net() -> Iterator[VethNamespace]:
    with veth_namespace() as n:
        yield n


def flow_rows(db: Path, sport: int) -> list[tuple[int, int, str, str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT packets, bytes, first_seen, last_seen, end_reason FROM flows "
            "WHERE sport = ? ORDER BY id",
            (sport,),
        ).fetchall()


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[float, str]:
    """Send ``sig``; the seconds until the process ended, and its stderr."""
    t = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return time.monotonic() - t, err


def test_a_flow_during_a_flood_that_fills_the_map_is_counted_once(
    net: VethNamespace, tmp_path: Path
) -> None:
    """A steady flow, then 20,000 new flows at once into a map of 4,096: the map fills, the
    collector evicts early, and the steady flow's records still sum to exactly what was sent,
    none of them starting again where the flow began. Ingress only: the host's ICMP
    unreachables for the flood are new flows too, and the map has no room for them either."""
    db = tmp_path / "flows.db"
    proc = start_record(
        net, db, "--flow-entries", "4096", "--active-timeout", "3", "--idle-timeout", "5",
        "--interval", "1", "--direction", "ingress",
    )  # fmt: skip
    # eight steady flows, 25 frames a second each
    frames = [udp4(net, 7000 + i, 7001, 100) for i in range(8)]
    sender = PacedSender(net, frames, 200)
    try:
        time.sleep(3)
        flood = [udp4(net, 10000 + i % 50000, 9 + i // 50000, 10) for i in range(20_000)]
        assert net.send_frames(flood) == 20_000
        time.sleep(6)
        sent = len(sender.stop())
        _, err = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        if sender.proc.poll() is None:
            sender.proc.kill()
    assert proc.returncode in (0, 130), err
    wait_detached(net.host_if)
    for i, frame in enumerate(frames):
        rows = flow_rows(db, 7000 + i)
        want = len(range(i, sent, len(frames)))
        assert (i, sum(r[0] for r in rows)) == (i, want)
        assert sum(r[1] for r in rows) == want * len(frame)
        for before, after in itertools.pairwise(rows):
            assert after[2] >= before[3], (before, after)  # no record restarts the flow
    with sqlite3.connect(db) as conn:
        map_full, evicted, packets = conn.execute(
            "SELECT sum(map_full), sum(evicted), sum(packets) FROM samples"
        ).fetchone()
        flood_packets = conn.execute(
            "SELECT coalesce(sum(packets), 0) FROM flows WHERE dport IN (9, 10)"
        ).fetchone()[0]
    assert evicted > 0  # the high-water mark was passed
    # every frame of the flood is in a flow record or in the map-full counter, once
    assert flood_packets + map_full == 20_000
    assert packets >= sent + 20_000


def test_kill_9_at_random_moments_loses_at_most_a_tick(net: VethNamespace, tmp_path: Path) -> None:
    """Ten rounds of record, a steady flow (its own port each round) and kill -9 after 1-4 s;
    the next start turns what the last written tick held into 'crash' records, so history
    has every frame sent up to one tick (plus the writer's latency) before the kill."""
    db = tmp_path / "flows.db"
    rng = random.Random(12)
    interval, pps = 0.5, 200
    rounds = []
    for n in range(10):
        proc = start_record(net, db, "--interval", str(interval))
        sender = PacedSender(net, [udp4(net, 8000 + n, 8080, 50)], pps)
        try:
            time.sleep(rng.uniform(1.0, 4.0))
            killed_at = time.monotonic_ns()
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
            times = sender.stop()
        wait_detached(net.host_if)
        rounds.append(sum(1 for t in times if t < killed_at))
    # the restart after the last round
    proc = start_record(net, db, "--interval", str(interval))
    _, err = stop(proc)
    assert "of a run that ended without shutting down were written with end reason 'crash'" in err
    lost = []
    for n, sent in enumerate(rounds):
        rows = flow_rows(db, 8000 + n)
        got = sum(r[0] for r in rows)
        assert {r[4] for r in rows} <= {"crash", "active"}, rows
        assert got <= sent, (n, got, sent)
        lost.append(sent - got)
    # one tick of frames, and as much again for the writer's commit and the tick's own jitter
    assert max(lost) <= 2 * interval * pps, (rounds, lost)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM pending").fetchone() == (0,)


def interrupt_within_5_s(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C a recording that cannot write: it must end within 5 s, non-zero, with one line
    about history on stderr and no traceback; that line."""
    try:
        took, err = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < 5, err
    assert proc.returncode not in (0, None)
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("flowscope: error: history: "), err
    return lines[0]


def test_full_disk_ctrl_c_ends_in_seconds_with_one_line(net: VethNamespace, tmp_path: Path) -> None:
    """The database on a small tmpfs that fills up while recording: Ctrl-C ends within 5 s,
    non-zero, saying how many records could not be written and why; what was committed stays."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        db = mnt / "flows.db"
        proc = start_record(net, db, "--interval", "0.5")
        try:
            net.send_frames([udp4(net, 20000 + i, 53, 10) for i in range(500)])
            time.sleep(1.5)
            # unbuffered: the write that fills the disk fails here, not later in close()
            with open(mnt / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 65536)
            net.send_frames([udp4(net, 30000 + i, 53, 10) for i in range(3000)])
            time.sleep(1.5)
        finally:
            line = interrupt_within_5_s(proc)
        assert "records could not be written" in line and "full" in line
        wait_detached(net.host_if)
        (mnt / "filler").unlink()
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("SELECT count(*) FROM samples").fetchone()[0] >= 2
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_damaged_database_ctrl_c_ends_in_seconds_with_one_line(
    net: VethNamespace, tmp_path: Path
) -> None:
    """The flows table's root page is garbage (the rest of the file is fine): recording runs,
    but the records cannot be written; Ctrl-C ends within 5 s, non-zero, one line."""
    db = tmp_path / "flows.db"
    store.Store(db).close()
    with sqlite3.connect(db) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'flows'").fetchone()
    with open(db, "r+b") as f:
        f.seek((root[0] - 1) * page_size)
        f.write(b"\xa5" * page_size)
    proc = start_record(net, db, "--interval", "0.5")
    try:
        net.send_frames([udp4(net, 21000 + i, 53, 10) for i in range(50)])
        time.sleep(1.5)
    finally:
        line = interrupt_within_5_s(proc)
    # the 50 flows, and the kernel's own (MLD) ones: every record of the shutdown
    assert re.search(r"history: (5\d) records could not be written \(cannot write", line), line
    assert line.endswith(
        "database disk image is malformed (the file is not a flowscope database or is damaged))"
    ), line
    wait_detached(net.host_if)
