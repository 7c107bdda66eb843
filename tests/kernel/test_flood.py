"""A flood of new flows into a small flow map, end to end on a veth pair (issue #18): the
pipeline `record` runs (probe, collector, writer) in this process, so every tick is seen as it
was made.

The truth is what the test sent: 200,000 UDP frames, each a new flow (sources spread over the
namespace's /24, every source and port pair once), into a map of 4,096 flows, while eight
steady flows run beside them."""

from __future__ import annotations

import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowscope.collect.collector import CollectorSettings, Tick
from flowscope.collect.recorder import RecordSettings
from flowscope.packets import checksum
from flowscope.pipeline import HistorySettings, Pipeline, PipelineSettings
from tests.kernel.test_record import udp4, wait_detached
from tests.netns import PacedSender, VethNamespace, veth_namespace, xdp_prog_id

FLOOD = 200_000
FLOOD_PORT = 9
HOSTS = 240  # flood sources: .10 to .249 of the namespace's /24


@pytest.fixture
def net() -> Iterator[VethNamespace]:
    with veth_namespace() as n:
        yield n


def flood_frames(net: VethNamespace, n: int) -> list[bytes]:
    """n UDP frames to the host's port 9, frame i from host 10 + i % HOSTS of the namespace's
    /24 and port 1024 + i // HOSTS: n new flows. Built with struct (scapy takes a minute for
    200,000); the IPv4 header checksum is right, the UDP checksum 0 (none, allowed in IPv4)."""
    eth = bytes.fromhex(net.host_mac.replace(":", "")) + bytes.fromhex(
        net.peer_mac.replace(":", "")
    )
    eth += b"\x08\x00"
    net_bytes = bytes(int(b) for b in net.peer_ip4.split(".")[:3])
    dst = bytes(int(b) for b in net.host_ip4.split("."))
    payload = b"f" * 18
    out = []
    for i in range(n):
        src = net_bytes + bytes([10 + i % HOSTS])
        udp = struct.pack("!HHHH", 1024 + i // HOSTS, FLOOD_PORT, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0, src,
                         dst)  # fmt: skip
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        out.append(eth + ip + udp)
    return out


def test_a_flood_into_a_small_map_keeps_its_shape_and_the_steady_flows_stay_exact(
    net: VethNamespace, tmp_path: Path
) -> None:
    """200,000 new flows into a map of 4,096 while eight steady flows run: every tick's flood
    shape has the flood's prefix and port on top, and over the ticks it counts exactly the
    frames sent (the flows' share and the flood table's, nothing unplaced); the steady flows'
    records sum to exactly what was sent; no tick takes more than twice the interval; the
    writer is never more than one tick behind; the ring buffer never fills (the budget held
    announcements back instead, and counted them); history's floods table has the flood, and
    its alerts one flood alert naming it."""
    db = tmp_path / "flows.db"
    settings = PipelineSettings(
        source=RecordSettings(
            interfaces=(net.host_if,),
            direction="ingress",  # the host's ICMP unreachables for the flood are new flows too
            flow_entries=4096,
            collector=CollectorSettings(interval=1.0, active_timeout=3.0, idle_timeout=5.0),
            processes=False,
        ),
        history=HistorySettings(db=db),
    )
    ticks: list[Tick] = []
    backlog: list[int] = []
    stop = threading.Event()
    failed: list[BaseException] = []
    prefix = ".".join(net.peer_ip4.split(".")[:3]) + ".0/24"
    flood = flood_frames(net, FLOOD)
    frames = [udp4(net, 7000 + i, 7001, 100) for i in range(8)]
    with Pipeline(settings) as pipe:

        def on_tick(t: Tick) -> None:
            ticks.append(t)
            backlog.append(pipe.backlog())

        def run() -> None:
            try:
                pipe.run(stop=stop, on_tick=on_tick)
            except BaseException as e:  # reported by the test below
                failed.append(e)

        thread = threading.Thread(target=run)
        thread.start()
        sender: PacedSender | None = None
        try:
            deadline = time.monotonic() + 60
            while not xdp_prog_id(net.host_if):
                assert not failed and time.monotonic() < deadline, failed
                time.sleep(0.05)
            sender = PacedSender(net, frames, 200)
            time.sleep(2.5)
            assert net.send_frames(flood) == FLOOD
            time.sleep(3.5)
            sent = len(sender.stop())
        finally:
            if sender is not None and sender.proc.poll() is None:
                sender.proc.kill()
            stop.set()
            thread.join(timeout=60)
    assert not failed, failed
    wait_detached(net.host_if)

    # the shape: the flood's prefix and port, exactly what was sent, over the ticks
    def flood_packets(t: Tick) -> int:
        return sum(
            r.packets for r in t.sample.flood.rows
            if (r.prefix, r.proto, r.dport) == (prefix, 17, FLOOD_PORT)
        )  # fmt: skip

    full = [t for t in ticks if t.sample.counters["map_full"]]
    assert full, "the map never filled"
    for t in full:
        top = t.sample.flood.rows[0]
        assert (top.prefix, top.proto, top.dport, top.direction) == (prefix, 17, FLOOD_PORT, 0)
    assert sum(flood_packets(t) for t in ticks) == FLOOD
    assert sum(t.sample.flood.unplaced for t in ticks) == 0
    assert sum(t.sample.counters["map_full"] for t in ticks) > FLOOD // 2
    # the ring buffer was never the bottleneck: the budget held records back, and said so
    assert sum(t.sample.counters["ringbuf_full"] for t in ticks) == 0
    assert sum(t.sample.counters["events_limited"] for t in ticks) > 0

    # on time: ticks within twice the interval, the writer at most one tick behind
    for t in ticks[:-1]:  # the last is the partial tick at the stop
        assert t.duration < 2.0, t.duration
        assert t.sample.interval < 2.0, t.sample.interval
    sizes = [len(t.records) + len(t.events) for t in ticks]
    for i in range(1, len(ticks) - 1):
        assert backlog[i] <= sizes[i] + sizes[i - 1], (i, backlog, sizes)

    # the steady flows: every frame in their records, once
    with sqlite3.connect(db) as conn:
        for i, frame in enumerate(frames):
            packets, nbytes = conn.execute(
                "SELECT sum(packets), sum(bytes) FROM flows WHERE sport = ? AND dport = 7001",
                (7000 + i,),
            ).fetchone()
            want = len(range(i, sent, len(frames)))
            assert (i, packets, nbytes) == (i, want, want * len(frame))
        written = conn.execute(
            "SELECT sum(packets) FROM floods WHERE prefix = ? AND dport = ? AND proto = 17",
            (prefix, FLOOD_PORT),
        ).fetchone()[0]
        alerts = conn.execute("SELECT kind, source, target, flows FROM alerts").fetchall()
    assert written == sum(flood_packets(t) for t in full)
    # one flood alert, naming the flood's prefix and target, counting what it tried
    (flood_alert,) = [a for a in alerts if a[0] == "flood"]
    assert flood_alert[1:3] == (prefix, f"udp/{FLOOD_PORT}")
    assert flood_alert[3] >= FLOOD
