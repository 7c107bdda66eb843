"""`flowscope record` end to end on a veth pair: known traffic in, exact history out.

The recording runs as a real process (the command an operator types); the traffic is crafted
frames written from inside the namespace, so every packet and byte is known."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from flowscope.history.store import Store
from flowscope.kernel.attach import interface_info
from tests.netns import PYTHON, VethNamespace, veth_namespace

FLOWSCOPE = [PYTHON, "-m", "flowscope"]


@pytest.fixture
def net() -> Iterator[VethNamespace]:
    with veth_namespace() as n:
        yield n


def wait_attached(ifname: str, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if interface_info(ifname).xdp_prog_id:
            return
        if proc.poll() is not None:
            raise AssertionError(f"flowscope exited early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("flowscope did not attach in time")


def wait_detached(ifname: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not interface_info(ifname).xdp_prog_id:
            return
        time.sleep(0.05)
    raise AssertionError(f"{ifname} still has an XDP program")


def start_record(net: VethNamespace, db: Path, *args: str) -> subprocess.Popen[str]:
    """`flowscope record` on the host end of the pair, once the program is attached (killed if
    it never attaches)."""
    proc = subprocess.Popen(
        [*FLOWSCOPE, "record", "-i", net.host_if, "--db", str(db), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_attached(net.host_if, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def udp4(net: VethNamespace, sport: int, dport: int, payload: int) -> bytes:
    return bytes(
        Ether(src=net.peer_mac, dst=net.host_mac)
        / IP(src=net.peer_ip4, dst=net.host_ip4)
        / UDP(sport=sport, dport=dport)
        / (b"x" * payload)
    )


def udp6(net: VethNamespace, sport: int, dport: int, payload: int) -> bytes:
    return bytes(
        Ether(src=net.peer_mac, dst=net.host_mac)
        / IPv6(src=net.peer_ip6, dst=net.host_ip6)
        / UDP(sport=sport, dport=dport)
        / (b"y" * payload)
    )


def history_json(db: Path, *args: str) -> list[dict[str, object]]:
    out = subprocess.run(
        [*FLOWSCOPE, "history", "--db", str(db), "--since", "1h", "--format", "json", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_record_then_history_gives_exact_counts_and_expiry(
    net: VethNamespace, tmp_path: Path
) -> None:
    """An idle flow is expired and written once; a long flow is written every active timeout
    and at shutdown, and its records sum to exactly what was sent."""
    db = tmp_path / "flows.db"
    proc = start_record(
        net, db, "--interval", "0.5", "--idle-timeout", "2", "--active-timeout", "3"
    )
    try:
        # the short flow: 5 frames of 100-byte payload, then silence (expires after 2 s)
        net.send_frames([udp4(net, 4000, 53, 100)] * 5)
        # the long flow: one 200-byte frame every 0.25 s for about 6 s, over IPv6
        long_sent = 0
        for _ in range(24):
            long_sent += net.send_frames([udp6(net, 5000, 5432, 200)])
            time.sleep(0.25)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: live flows are written as 'shutdown'
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err
    wait_detached(net.host_if)

    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT src, sport, dport, packets, bytes, ip_bytes, end_reason FROM flows "
        "WHERE sport IN (4000, 5000) ORDER BY sport, first_seen"
    ).fetchall()
    short = [r for r in rows if r[1] == 4000]
    long = [r for r in rows if r[1] == 5000]
    short_frame = len(udp4(net, 4000, 53, 100))
    long_frame = len(udp6(net, 5000, 5432, 200))
    assert short == [(net.peer_ip4, 4000, 53, 5, 5 * short_frame, 5 * (short_frame - 14), "idle")]
    assert [r[6] for r in long][-1] == "shutdown"
    assert {r[6] for r in long[:-1]} == {"active"} and len(long) >= 2
    assert sum(r[3] for r in long) == long_sent == 24
    assert sum(r[4] for r in long) == 24 * long_frame
    assert sum(r[5] for r in long) == 24 * (long_frame - 14)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    # history sums the records of one flow
    flows = {(r["sport"], r["dport"]): r for r in history_json(db, "--group-by", "flow")}
    assert flows[(4000, 53)]["packets"] == 5
    assert flows[(4000, 53)]["bytes"] == 5 * short_frame
    assert flows[(5000, 5432)]["packets"] == 24
    assert flows[(5000, 5432)]["bytes"] == 24 * long_frame
    assert flows[(5000, 5432)]["src"] == net.peer_ip6
    # and the filter language narrows it
    only = history_json(db, "--group-by", "flow", "--filter", "dport 5432 and udp")
    assert [(r["sport"], r["packets"]) for r in only] == [(5000, 24)]


def test_kill_9_keeps_the_database_whole_and_detaches(net: VethNamespace, tmp_path: Path) -> None:
    """SIGKILL loses at most the last tick: the file passes integrity_check, the samples of
    the ticks before are there, and the kernel removed the program with the process. The
    next writer turns the flow still live at the kill into a crash record, with every packet
    and the process whose socket received them (this one's)."""
    db = tmp_path / "flows.db"
    proc = start_record(net, db, "--interval", "0.2")
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        listener.bind((net.host_ip4, 80))
        net.send_frames([udp4(net, 4100, 80, 64)] * 20)
        time.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
    wait_detached(net.host_if)
    with Store(db) as recovering:
        assert recovering.recover() >= 1  # the host may have sent something too (IPv6 ND)
    with sqlite3.connect(db) as conn:
        crashed = conn.execute(
            "SELECT packets, end_reason, pid FROM flows WHERE sport = 4100"
        ).fetchall()
    assert crashed == [(20, "crash", os.getpid())]
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    samples = conn.execute("SELECT count(*), sum(packets) FROM samples").fetchone()
    assert samples[0] >= 3
    assert samples[1] >= 20  # the 20 frames were counted in ticks that were written
    events = conn.execute("SELECT count(*) FROM events WHERE sport = 4100").fetchone()
    assert events == (1,)


def test_sigterm_writes_live_flows_as_shutdown(net: VethNamespace, tmp_path: Path) -> None:
    db = tmp_path / "flows.db"
    proc = start_record(net, db, "--interval", "0.5")
    try:
        net.send_frames([udp4(net, 4200, 80, 64)] * 7)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err
    wait_detached(net.host_if)
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT packets, end_reason FROM flows WHERE sport = 4200").fetchall()
    assert rows == [(7, "shutdown")]


def test_history_shows_a_flow_while_it_is_being_recorded(
    net: VethNamespace, tmp_path: Path
) -> None:
    """A flow that has not ended (no record written yet) is already in `history` one tick
    later, with exactly what was sent, and counted once after it is written."""
    db = tmp_path / "flows.db"
    proc = start_record(net, db, "--interval", "0.5")
    try:
        net.send_frames([udp4(net, 4300, 80, 64)] * 20)
        time.sleep(1.5)
        live = [r for r in history_json(db) if r["sport"] == 4300]
        with sqlite3.connect(db) as conn:
            written = conn.execute("SELECT count(*) FROM flows WHERE sport = 4300").fetchone()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert written == (0,)  # nothing written yet: the 15 s idle timeout has not passed
    assert [r["packets"] for r in live] == [20]
    after = [r for r in history_json(db) if r["sport"] == 4300]
    assert [r["packets"] for r in after] == [20]


def test_an_interface_down_up_or_deleted_is_said_and_the_others_go_on(tmp_path: Path) -> None:
    """Issue #14: `record` on an interface that went down, or whose veth was deleted while
    recording, said nothing. Now each change is one line; the flows so far are kept and the
    other interface is still recorded."""
    import sqlite3

    db = tmp_path / "flows.db"
    with veth_namespace() as a, veth_namespace() as b:
        proc = subprocess.Popen(
            [*FLOWSCOPE, "record", "-i", a.host_if, "-i", b.host_if, "--db", str(db),
             "--direction", "ingress", "--interval", "0.2", "--idle-timeout", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_attached(a.host_if, proc)
            wait_attached(b.host_if, proc)
            a.send_frames([udp4(a, 4000, 53, 100)] * 3)
            b.send_frames([udp4(b, 5000, 53, 100)] * 4)
            time.sleep(0.6)
            subprocess.run(["ip", "link", "set", b.host_if, "down"], check=True)
            time.sleep(0.6)
            subprocess.run(["ip", "link", "set", b.host_if, "up"], check=True)
            time.sleep(0.6)
            subprocess.run(["ip", "link", "del", b.host_if], check=True)
            time.sleep(0.6)
            a.send_frames([udp4(a, 4001, 53, 100)] * 5)  # after b is gone: a is still recorded
            time.sleep(0.6)
            assert proc.poll() is None, proc.communicate()
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode in (0, 130) and "Traceback" not in err, err
        lines = [line for line in err.splitlines() if b.host_if in line]
        said = [line.removeprefix(f"flowscope: {b.host_if} ").split(":")[0] for line in lines]
        assert said == ["went down", "is up again", "disappeared"], err
    conn = sqlite3.connect(db)
    got = dict(conn.execute("SELECT sport, packets FROM flows WHERE dport = 53").fetchall())
    conn.close()
    assert got == {4000: 3, 5000: 4, 4001: 5}


def test_packets_before_the_collector_are_in_the_first_samples_totals(net: VethNamespace) -> None:
    """Packets that arrive between attaching and the collector's start (the recorder attaches
    its socket, drop and reset hooks in between) are in the flows, so they must be in the
    first sample's totals too: the kernel's counters count from the program's load, as its
    maps do. (The collector once took its baseline at its start: a recording's samples then
    held fewer packets than its flows, and test_kill_9 above saw 1 of 20.)"""
    from flowscope.collect.collector import Collector
    from flowscope.kernel.session import Probe

    with Probe([net.host_if]) as probe:
        assert net.send_frames([udp4(net, 4200, 80, 64)] * 20) == 20
        time.sleep(0.2)
        collector = Collector(probe.program)
        tick = collector.tick()
    flow = [r for lf in tick.live for r in range(len(lf.batch)) if lf.batch.key(r).sport == 4200]
    assert len(flow) == 1
    s = tick.sample
    assert s.counters["packets"] == tick.flow_packets + s.counters["unattributed"]
    assert s.counters["packets"] >= 20
