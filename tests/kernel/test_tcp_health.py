"""TCP health per flow (issue #17) against the kernel's own view of the socket, `ss -ti`.

A bulk TCP transfer from the root namespace into the test namespace through a rate-limited
(tbf) host end: the queue builds up (the RTT grows far above the link's) and overflows (the
kernel retransmits). flowscope's retransmissions for the connection's sent flow must equal the
socket's own total exactly, and its RTT must be what `ss` shows at the same moment (within
10 %): once the sender pauses and everything is acknowledged, no new sample moves the socket's
RTT, so the two readings are of the same moment however long `ss` takes."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from flowscope import abi
from flowscope.collect.collector import Collector, CollectorSettings, Tick
from flowscope.collect.owners import watch_processes
from flowscope.kernel.session import Probe
from tests.netns import PYTHON, VethNamespace, veth_namespace

PORT = 7401

SINK = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', {PORT}))
s.listen()
print('ready', flush=True)
c, _ = s.accept()
while c.recv(1 << 16):
    pass
"""


@pytest.fixture
def net() -> Iterator[VethNamespace]:
    with veth_namespace() as n:
        yield n


def ss_info(peer: str, lport: int) -> dict[str, float]:
    """retrans (total), rtt (ms), unacked and Send-Q (bytes not yet acknowledged, sent or
    not) of the socket, as `ss -ti` prints them (it leaves out what is zero)."""
    out = subprocess.run(
        ["ss", "-tin", "dst", peer, "sport", f"= :{lport}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    info: dict[str, float] = {"retrans": 0.0, "unacked": 0.0}
    if m := re.search(r"^ESTAB\s+\d+\s+(\d+)", out, re.MULTILINE):
        info["sendq"] = float(m.group(1))
    if m := re.search(r"\bretrans:\d+/(\d+)", out):
        info["retrans"] = float(m.group(1))
    if m := re.search(r"\brtt:([\d.]+)/", out):
        info["rtt"] = float(m.group(1))
    if m := re.search(r"\bunacked:(\d+)", out):
        info["unacked"] = float(m.group(1))
    return info


def live_health(tick: Tick, lport: int) -> dict[int, tuple[int, float]]:
    """Per direction, (retransmissions, RTT ms) of the live flows of the connection from
    local port ``lport``, as the tick shows them."""
    live: dict[int, tuple[int, float]] = {}
    for lf in tick.live:
        assert lf.retrans is not None and lf.rtt_us is not None
        for j in range(len(lf.batch)):
            k = lf.batch.key(j)
            if lport in (k.sport, k.dport):
                live[k.direction] = (int(lf.retrans[j]), int(lf.rtt_us[j]) / 1000)
    return live


class BulkSender:
    """Sends on a connected socket as fast as it can, from a thread, until stopped."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)
        self._thread.start()

    def _send(self) -> None:
        data = b"x" * 65536
        while not self._stop.is_set():
            self.conn.sendall(data)

    def stop(self, peer: str) -> dict[str, float]:
        """Stop sending, wait until every byte is acknowledged (the socket's retransmission
        count and RTT are then final), and return `ss -ti`'s view of the socket."""
        self._stop.set()
        self._thread.join(timeout=10)
        lport = self.conn.getsockname()[1]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = ss_info(peer, lport)
            if not now["unacked"] and now.get("sendq") == 0:
                break
            time.sleep(0.1)
        return ss_info(peer, lport)


def test_retransmits_and_rtt_are_the_sockets_own(net: VethNamespace) -> None:
    subprocess.run(
        ["tc", "qdisc", "add", "dev", net.host_if, "root", "tbf", "rate", "20mbit",
         "burst", "32kbit", "latency", "50ms"],
        check=True,
    )  # fmt: skip
    sink = subprocess.Popen([*net.command(PYTHON, "-c", SINK)], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        with Probe([net.host_if], owners=True) as probe:
            _table, watch = watch_processes(probe.program)
            try:
                assert watch.problem is None and watch.health is not None, watch.problem
                collector = Collector(
                    probe.program,
                    CollectorSettings(idle_timeout=600, active_timeout=1.0),
                    owners=_table,
                    health=watch.health,
                )
                conn = socket.create_connection((net.peer_ip4, PORT))
                lport = conn.getsockname()[1]
                sender = BulkSender(conn)
                records = []
                for _ in range(4):
                    time.sleep(0.7)
                    records += collector.tick().records
                final = sender.stop(net.peer_ip4)
                tick = collector.tick()
                live = live_health(tick, lport)
                records += tick.records + collector.shutdown()
                conn.close()
            finally:
                watch.close()
    finally:
        sink.kill()
        sink.wait()
    assert final["retrans"] > 0, "the queue never overflowed: no retransmission to compare"
    # the live view: the connection's total, on its sent flow; none on the received flow
    assert {d: r for d, (r, _) in live.items()} == {
        abi.DIR_EGRESS: final["retrans"],
        abi.DIR_INGRESS: 0,
    }, (live, final)
    # the records (one a second, active timeout 1 s) add up to the socket's total
    mine = [r for r in records if lport in (r.key.sport, r.key.dport)]
    sent = [r for r in mine if r.key.direction == abi.DIR_EGRESS]
    assert len(sent) >= 3
    assert sum(r.retrans for r in sent) == final["retrans"]
    assert all(r.retrans == 0 for r in mine if r.key.direction == abi.DIR_INGRESS)
    # RTT as ss shows it within 10 % (the kernel tells BPF once per round trip, while the
    # socket's own figure moves with every ACK between), the same on both of the
    # connection's flows, and inflated by the queue far above the bare link's 0.1 ms
    for _, rtt in live.values():
        assert abs(rtt - final["rtt"]) <= 0.1 * final["rtt"], (live, final)
    assert final["rtt"] > 1.0, final
