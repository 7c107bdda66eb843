"""TCP resets per flow (issue #17) against what was sent and what the kernel counts.

Each case makes a known number of resets between the root namespace and a test namespace:
a connection to a closed port (the server's kernel answers the SYN with a reset, the client's
acts on it), and established connections aborted with SO_LINGER 0 by either end (a reset from a
socket, not in answer to a packet). The truth is the packets themselves (the reset is the one
packet with RST in its flow) and the kernel's own count of resets it sent (Tcp OutRsts in
/proc/net/snmp, for the root namespace, which is flowscope's).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from flowscope import abi
from flowscope.collect.collector import Collector, CollectorSettings
from flowscope.collect.owners import watch_processes
from flowscope.kernel.session import Probe
from flowscope.model import FlowRecord
from tests.netns import PYTHON, VethNamespace, veth_namespace

RST = 0x04
LINGER0 = struct.pack("ii", 1, 0)

# in the namespace: connect to argv[1]:argv[2]; "refused" if it is closed, else abort at once
# (SO_LINGER 0: a reset) after reading one byte
ABORTING_CLIENT = """
import socket, struct, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
except ConnectionRefusedError:
    print("refused")
    sys.exit()
c.recv(1)
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()
print("aborted")
"""

# in the namespace: accept one connection on argv[1]:argv[2], wait for its first byte, then
# read until the client's reset ends it
PATIENT_SERVER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("ready", flush=True)
c, _ = s.accept()
try:
    while c.recv(1 << 16):
        pass
except ConnectionResetError:
    print("reset")
"""


@pytest.fixture
def net() -> Iterator[VethNamespace]:
    with veth_namespace() as n:
        yield n


def popen(net: VethNamespace, code: str, *args: str) -> subprocess.Popen[str]:
    """Python code running in the namespace, its stdout a pipe."""
    return subprocess.Popen(
        net.command(PYTHON, "-c", code, *args), stdout=subprocess.PIPE, text=True
    )


def out_rsts() -> int:
    """The root namespace's Tcp OutRsts: resets its kernel sent."""
    with open("/proc/net/snmp") as f:
        lines = [ln.split() for ln in f if ln.startswith("Tcp:")]
    return int(lines[1][lines[0].index("OutRsts")])


def free_port(family: socket.AddressFamily) -> socket.socket:
    """A socket bound to a port nothing listens on (bound, so nothing else takes it)."""
    s = socket.socket(family)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    return s


def flows(records: list[FlowRecord], port: int, direction: int, *, at: str) -> list[FlowRecord]:
    """The records of the flows with ``port`` on the ``at`` end ('src' or 'dst')."""
    return [
        r
        for r in records
        if r.key.direction == direction and (r.key.sport if at == "src" else r.key.dport) == port
    ]


def resets_and_rst_packets(rs: list[FlowRecord]) -> tuple[int, int]:
    """The resets flowscope gave these records, and how many of them carried an RST (each
    flow here is one packet or ends with its reset)."""
    return sum(r.resets for r in rs), sum(1 for r in rs if r.tcp_flags & RST)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_resets_are_counted_in_the_flow_they_travelled_in(net: VethNamespace, v6: bool) -> None:
    family = socket.AF_INET6 if v6 else socket.AF_INET
    peer, host = (net.peer_ip6, net.host_ip6) if v6 else (net.peer_ip4, net.host_ip4)
    closed = free_port(family)
    closed_port = closed.getsockname()[1]
    # an IPv6 socket either way: for IPv4, on the IPv4-mapped address (a dual-stack socket,
    # whose reset the kernel reports with mapped addresses: the flow is still IPv4)
    listener = socket.socket(socket.AF_INET6)
    listener.bind((host if v6 else f"::ffff:{host}", 0))
    listener.listen()
    host_port = listener.getsockname()[1]
    with closed, listener, Probe([net.host_if], owners=True) as probe:
        table, watch = watch_processes(probe.program)
        try:
            assert watch.resets is not None, watch.drops_problem
            collector = Collector(
                probe.program,
                CollectorSettings(idle_timeout=600),
                owners=table,
                resets=watch.resets,
            )
            rsts_before = out_rsts()
            # 1. the host connects to a closed port of the namespace: one reset received
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((peer, 9), timeout=5)
            # 2. the namespace connects to a closed port of the host: one reset sent
            out = net.python(ABORTING_CLIENT, host, str(closed_port))
            assert out.strip() == "refused"
            # 3. the host aborts a connection it opened: one reset sent, from its socket
            server = popen(net, PATIENT_SERVER, peer, "7402")
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            conn = socket.create_connection((peer, 7402), timeout=5)
            conn.sendall(b"x")
            abort_port = conn.getsockname()[1]
            time.sleep(0.1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            conn.close()
            assert server.communicate(timeout=10)[0].split()[-1] == "reset"
            # 4. the namespace aborts a connection it opened to the host: one reset received
            client = popen(net, ABORTING_CLIENT, host, str(host_port))
            accepted, _ = listener.accept()
            accepted.sendall(b"y")
            assert client.communicate(timeout=10)[0].strip() == "aborted"
            with pytest.raises(ConnectionResetError):
                while accepted.recv(1 << 16):
                    time.sleep(0.01)
            accepted.close()
            time.sleep(0.2)
            ticks = [collector.tick()]
            rsts_after = out_rsts()
            ticks.append(collector.tick())
            records = [r for t in ticks for r in t.records] + collector.shutdown()
        finally:
            watch.close()
    records = [r for r in records if r.key.proto == 6]
    assert all(r.resets >= 0 for r in records)
    # 1: the client's received flow from port 9 is the one reset; its SYN flow has none
    assert resets_and_rst_packets(flows(records, 9, abi.DIR_INGRESS, at="src")) == (1, 1)
    assert resets_and_rst_packets(flows(records, 9, abi.DIR_EGRESS, at="dst")) == (0, 0)
    # 2: the server's sent flow from the closed port is the one reset; the SYN's flow none
    assert resets_and_rst_packets(flows(records, closed_port, abi.DIR_EGRESS, at="src")) == (1, 1)
    assert resets_and_rst_packets(flows(records, closed_port, abi.DIR_INGRESS, at="dst")) == (0, 0)
    # 3: the host's sent flow of the aborted connection ends with its one reset
    assert resets_and_rst_packets(flows(records, abort_port, abi.DIR_EGRESS, at="src")) == (1, 1)
    assert resets_and_rst_packets(flows(records, abort_port, abi.DIR_INGRESS, at="dst")) == (0, 0)
    # 4: the host's received flow of the connection the namespace aborted ends with it
    assert resets_and_rst_packets(flows(records, host_port, abi.DIR_INGRESS, at="dst")) == (1, 1)
    assert resets_and_rst_packets(flows(records, host_port, abi.DIR_EGRESS, at="src")) == (0, 0)
    # the host's totals: two received (1, 4) and two sent (2, 3), as its kernel counted them
    sent = sum(t.sample.counters["resets_sent"] for t in ticks)
    received = sum(t.sample.counters["resets_received"] for t in ticks)
    assert (sent, received) == (2, 2)
    assert rsts_after - rsts_before == 2
