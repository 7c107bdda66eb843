"""The real XDP program on a real veth interface: what it counts, and that it never stays behind.

Traffic is sent from a namespace the test creates (tests/netns.py) to the host end of the pair,
where flowscope attaches; it is written either as raw Ethernet frames (exact counts: the frames
are what XDP sees, byte for byte) or through ordinary sockets (exact where the kernel's behaviour
is fixed, such as UDP datagrams). The CLI tests run ``flowscope dump`` as a user would, and check
the interface with ``ip`` rather than with flowscope's own code.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

from flowscope import abi
from flowscope.kernel.session import Probe
from flowscope.model import FlowEvent, FlowKey, FlowStats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from netns import VethNamespace, veth_namespace, xdp_prog_id

FLOWSCOPE = str(Path(sys.executable).parent / "flowscope")
MODES = ("generic", "native")
# Kernel times come from a per-CPU clock cache refreshed once per jiffy (flowscope.c, now_ns):
# they may run up to one tick (10 ms at HZ=100) behind the real clock.
CLOCK_SLACK_NS = 20_000_000
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass(frozen=True, slots=True)
class Expected:
    """What one flow must show after the test's traffic."""

    packets: int
    bytes: int
    ip_bytes: int
    tcp_flags: int
    first_length: int  # frame length of the first packet, as the new-flow event reports it


def expect(frames: Sequence[Packet]) -> Expected:
    """The counters a list of frames of one flow adds up to."""
    flags = 0
    ip_bytes = 0
    for f in frames:
        if TCP in f:
            flags |= int(f[TCP].flags)
        ip_bytes += len(f[IP]) if IP in f else len(f[IPv6])
    return Expected(
        packets=len(frames),
        bytes=sum(len(f) for f in frames),
        ip_bytes=ip_bytes,
        tcp_flags=flags,
        first_length=len(frames[0]),
    )


def key(
    net: VethNamespace, proto: int, sport: int, dport: int, *, v6: bool = False, vlan: int = 0
) -> FlowKey:
    """The key of a flow from the namespace to the host end, as seen on the host end."""
    return FlowKey(
        family=abi.AF_INET6 if v6 else abi.AF_INET,
        src=net.peer_ip6 if v6 else net.peer_ip4,
        dst=net.host_ip6 if v6 else net.host_ip4,
        sport=sport,
        dport=dport,
        proto=proto,
        vlan=vlan,
        ifindex=net.host_ifindex,
        direction=abi.DIR_INGRESS,
    )


def all_flows(probe: Probe) -> dict[FlowKey, FlowStats]:
    """Every flow in both kernel maps."""
    return {k: s for batch in probe.program.read_all_flows() for k, s in batch.records()}


def from_namespace(net: VethNamespace, flows: dict[FlowKey, FlowStats]) -> dict[FlowKey, FlowStats]:
    """The flows whose source is the namespace's address: the test's own traffic. (The kernel may
    still send an MLD report from :: to ff02::16 after its addresses were added.)"""
    return {k: s for k, s in flows.items() if k.src in (net.peer_ip4, net.peer_ip6)}


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``cond`` every 20 ms until it holds; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def net() -> Iterator[VethNamespace]:
    """A fresh namespace and veth pair, removed after the test."""
    with veth_namespace() as n:
        yield n


@pytest.fixture(params=MODES)
def probe(request: pytest.FixtureRequest, net: VethNamespace) -> Iterator[Probe]:
    """flowscope attached to the host end, in generic and in native mode."""
    with Probe([net.host_if], mode=request.param) as p:
        assert p.attachments[0].mode == request.param
        assert xdp_prog_id(net.host_if) != 0
        yield p
    assert xdp_prog_id(net.host_if) == 0, "closing the probe left its program on the interface"


def l2(net: VethNamespace) -> Ether:
    """The Ethernet header of a frame from the namespace's end to the host's end."""
    return Ether(src=net.peer_mac, dst=net.host_mac)


def tcp_sequence(ip: Packet, l2hdr: Ether, sport: int, dport: int, payload: bytes) -> list[Packet]:
    """A client's side of a short TCP conversation: SYN, ACK, data, FIN. Sent to a closed port,
    the host answers with RSTs, which the namespace's stack ignores: nothing else is sent."""
    seq, ack = 1000, 5000
    return [
        l2hdr / ip / TCP(sport=sport, dport=dport, flags="S", seq=seq),
        l2hdr / ip / TCP(sport=sport, dport=dport, flags="A", seq=seq + 1, ack=ack + 1),
        l2hdr
        / ip
        / TCP(sport=sport, dport=dport, flags="PA", seq=seq + 1, ack=ack + 1)
        / Raw(payload),
        l2hdr
        / ip
        / TCP(sport=sport, dport=dport, flags="FA", seq=seq + 1 + len(payload), ack=ack + 1),
    ]


UDP_SENDER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
src, dst, sport = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind((src, sport))
for spec in sys.argv[4:]:
    dport, count, size = map(int, spec.split(":"))
    for i in range(count):
        s.sendto(bytes([i]) * size, (dst, dport))
"""


def flows_and_counters(probe: Probe) -> tuple[dict[FlowKey, FlowStats], dict[abi.Counter, int]]:
    """The flows and the kernel's counters as of one moment: read again until no packet came
    between the two reads (the kernel sends its own IPv6 packets on a new link now and then,
    a background flow that CI once saw created after the flows were read: 15 created, 13
    read)."""
    for _ in range(50):
        before = probe.program.read_counters()
        flows = all_flows(probe)
        if probe.program.read_counters() == before:
            return flows, before
        time.sleep(0.01)
    raise AssertionError("packets kept coming while the flows were read")


def test_counts_every_packet_and_byte_exactly(net: VethNamespace, probe: Probe) -> None:
    """UDP over IPv4 and IPv6 sockets, raw TCP over IPv4 and IPv6, ICMP and ICMPv6 echo: each
    flow has exactly the packets, frame bytes, IP bytes and TCP flags that were sent, keyed by
    the host end's ifindex with no VLAN; each new flow is announced on the ring buffer exactly
    once, with its first frame's length; times are CLOCK_MONOTONIC and in order."""
    events: list[FlowEvent] = []
    probe.program.open_events(events.append)
    t0 = time.monotonic_ns()

    # UDP through sockets: 5 x 100 bytes to 5001, 3 x 200 bytes to 5002 (IPv4), 4 x 50 (IPv6).
    net.python(UDP_SENDER, net.peer_ip4, net.host_ip4, "40001", "5001:5:100", "5002:3:200")
    net.python(UDP_SENDER, net.peer_ip6, net.host_ip6, "40003", "5003:4:50")
    ip4 = IP(src=net.peer_ip4, dst=net.host_ip4)
    ip6 = IPv6(src=net.peer_ip6, dst=net.host_ip6)
    tcp4 = tcp_sequence(ip4, l2(net), 40004, 5004, b"x" * 300)
    tcp6 = tcp_sequence(ip6, l2(net), 40005, 5005, b"y" * 700)
    icmp4 = [l2(net) / ip4 / ICMP(type=8, id=7, seq=i) / Raw(b"p" * 56) for i in range(4)]
    icmp6 = [l2(net) / ip6 / ICMPv6EchoRequest(id=7, seq=i) / Raw(b"q" * 24) for i in range(2)]
    frames = [*tcp4, *tcp6, *icmp4, *icmp6]
    assert net.send_frames([bytes(f) for f in frames]) == len(frames)

    probe.program.poll_events()
    flows, counters = flows_and_counters(probe)
    probe.program.poll_events()
    t1 = time.monotonic_ns()

    def udp(n: int, size: int, ip_hdr: int) -> Expected:
        return Expected(
            n, n * (14 + ip_hdr + 8 + size), n * (ip_hdr + 8 + size), 0, 14 + ip_hdr + 8 + size
        )

    expected = {
        key(net, 17, 40001, 5001): udp(5, 100, 20),
        key(net, 17, 40001, 5002): udp(3, 200, 20),
        key(net, 17, 40003, 5003, v6=True): udp(4, 50, 40),
        key(net, 6, 40004, 5004): expect(tcp4),
        key(net, 6, 40005, 5005, v6=True): expect(tcp6),
        key(net, 1, 0, 8 * 256): expect(icmp4),
        key(net, 58, 0, 128 * 256, v6=True): expect(icmp6),
    }
    # the numbers a user would read, spelled out (frame = 14 + IP bytes, no padding on veth)
    assert expected[key(net, 17, 40001, 5001)] == Expected(5, 710, 640, 0, 142)
    assert expected[key(net, 6, 40004, 5004)] == Expected(4, 516, 460, FIN | SYN | PSH | ACK, 54)
    assert expected[key(net, 6, 40005, 5005, v6=True)] == Expected(
        4, 996, 940, FIN | SYN | PSH | ACK, 74
    )
    assert expected[key(net, 1, 0, 8 * 256)] == Expected(4, 392, 336, 0, 98)
    assert expected[key(net, 58, 0, 128 * 256, v6=True)] == Expected(2, 172, 144, 0, 86)

    ours = from_namespace(net, flows)
    got = {
        k: Expected(s.packets, s.bytes, s.ip_bytes, s.tcp_flags, e.length)
        for k, s in ours.items()
        for e in events
        if e.key == k
    }
    assert got == expected

    # Every flow in the maps (background ones included) was announced exactly once, and no
    # event names a flow that is not there.
    announced = [e.key for e in events]
    assert sorted(announced) == sorted(flows)
    assert not any(e.map_full for e in events)
    assert counters[abi.Counter.FLOWS_CREATED] == len(flows)
    assert counters[abi.Counter.PACKETS] == (
        sum(s.packets for s in flows.values())
        + counters[abi.Counter.NON_IP]
        + counters[abi.Counter.MALFORMED]
    )
    assert counters[abi.Counter.TRUNCATED] == 0

    for k, s in ours.items():
        ev = next(e for e in events if e.key == k)
        assert t0 - CLOCK_SLACK_NS <= s.first_seen <= s.last_seen <= t1, (k, s, t0, t1)
        assert s.first_seen <= ev.timestamp <= s.last_seen, (k, s, ev)


def test_flow_spread_over_cpus_sums_and_keeps_first_seen(net: VethNamespace, probe: Probe) -> None:
    """One flow whose frames are handled on two CPUs (on veth, XDP runs on the sending CPU):
    the per-CPU values add up, and first_seen is a real time, not the zero of the slot the
    second CPU started from."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs")
    frame = l2(net) / IP(src=net.peer_ip4, dst=net.host_ip4) / UDP(sport=40010, dport=5010)
    frame = frame / Raw(b"z" * 64)
    t0 = time.monotonic_ns()
    net.send_frames([bytes(frame)] * 3, cpu=0)
    net.send_frames([bytes(frame)] * 2, cpu=1)
    t1 = time.monotonic_ns()
    s = all_flows(probe)[key(net, 17, 40010, 5010)]
    assert (s.packets, s.bytes, s.ip_bytes) == (5, 5 * 106, 5 * 92)
    assert t0 - CLOCK_SLACK_NS <= s.first_seen <= s.last_seen <= t1


def test_vlan_tag_reaches_xdp(net: VethNamespace, probe: Probe) -> None:
    """A frame tagged 802.1Q VLAN 42 is counted in a flow of VLAN 42, four bytes longer than the
    same packet untagged, which has a flow of its own with VLAN 0."""
    ip = IP(src=net.peer_ip4, dst=net.host_ip4) / UDP(sport=40020, dport=5020) / Raw(b"v" * 20)
    tagged = l2(net) / Dot1Q(vlan=42) / ip
    untagged = l2(net) / ip
    net.send_frames([bytes(tagged)] * 3 + [bytes(untagged)] * 2)
    ours = from_namespace(net, all_flows(probe))
    got = {k: (s.packets, s.bytes, s.ip_bytes) for k, s in ours.items()}
    assert got == {
        key(net, 17, 40020, 5020, vlan=42): (3, 3 * 66, 3 * 48),
        key(net, 17, 40020, 5020): (2, 2 * 62, 2 * 48),
    }


def test_real_tcp_connection(net: VethNamespace, probe: Probe) -> None:
    """A TCP connection through real sockets, from the namespace to a listener on the host end:
    the client's flow has SYN, ACK, PSH and FIN (no RST) and, with TCP timestamps off, IP bytes
    of exactly 40 per packet, the SYN's 12 bytes of options, and the payload."""
    net.run("sysctl", "-q", "-w", "net.ipv4.tcp_timestamps=0")
    payload_size = 1000
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind((net.host_ip4, 0))
    server.listen(1)
    server.settimeout(20)
    port = server.getsockname()[1]
    received = bytearray()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(65536):
                received.extend(chunk)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        net.python(
            "import socket, sys\n"
            "s = socket.create_connection((sys.argv[1], int(sys.argv[2])),"
            " source_address=(sys.argv[3], 40030))\n"
            "s.sendall(b'c' * int(sys.argv[4]))\n"
            "s.shutdown(socket.SHUT_WR)\n"
            "assert s.recv(1) == b''\n"
            "s.close()\n",
            net.host_ip4,
            str(port),
            net.peer_ip4,
            str(payload_size),
        )
        thread.join(20)
    finally:
        server.close()
    assert len(received) == payload_size
    s = all_flows(probe)[key(net, 6, 40030, port)]
    assert s.tcp_flags == FIN | SYN | PSH | ACK
    assert 4 <= s.packets <= 6  # SYN, ACK, data, FIN; then maybe the ACK of the server's FIN
    assert s.bytes == s.ip_bytes + 14 * s.packets
    assert s.ip_bytes == 40 * s.packets + 12 + payload_size


# -- the command line -------------------------------------------------------------------------


def start_dump(ifname: str, *extra: str) -> subprocess.Popen[str]:
    """``flowscope dump -i IFNAME --duration 60`` in the background, output captured."""
    return subprocess.Popen(
        [FLOWSCOPE, "dump", "-i", ifname, "--duration", "60", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_counting(proc: subprocess.Popen[str], ifname: str) -> str:
    """Wait until dump has attached and says so; return that line of stderr."""
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the first line dump prints, once it is counting
    assert line.startswith(f"counting on {ifname} ("), line + proc.stderr.read()
    assert xdp_prog_id(ifname) != 0
    return line


def test_sigkill_leaves_no_program(net: VethNamespace) -> None:
    """flowscope killed by SIGKILL cannot clean up, yet its program leaves the interface: the
    bpf_link dies with the process."""
    proc = start_dump(net.host_if)
    try:
        wait_until(lambda: xdp_prog_id(net.host_if) != 0, 60, "flowscope to attach")
        proc.kill()
        assert proc.wait(10) == -signal.SIGKILL
        wait_until(lambda: xdp_prog_id(net.host_if) == 0, 5, "the program to leave")
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_prints_flows_and_detaches(net: VethNamespace, sig: signal.Signals) -> None:
    """SIGTERM and Ctrl-C end ``flowscope dump`` early: it prints what it counted, exits 0 and
    leaves no program on the interface."""
    proc = start_dump(net.host_if)
    try:
        wait_counting(proc, net.host_if)
        frame = l2(net) / IP(src=net.peer_ip4, dst=net.host_ip4) / UDP(sport=40040, dport=5040)
        net.send_frames([bytes(frame / Raw(b"s" * 58))] * 3)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    flow = f"↓udp {net.peer_ip4}:40040 -> {net.host_ip4}:5040 vlan 0  3 pkts 300 bytes"
    assert flow in [line.strip() for line in out.splitlines()], out
    assert out.splitlines()[-1].startswith("counters: packets ")
    # Besides the UDP flow and the host's ICMP unreachable replies, the kernel may send a
    # packet of its own (an IPv6 multicast report) while dump runs: the counter must equal
    # the flows dump printed, whatever they were.
    printed = [line for line in out.splitlines()[:-1] if " vlan " in line]
    assert len(printed) >= 2, out
    assert f" flows_created {len(printed)} " in out.splitlines()[-1], out
    assert xdp_prog_id(net.host_if) == 0


FOREIGN_LOADER = """
import sys
from bcc import BPF
b = BPF(text="int foreign_xdp(struct xdp_md *ctx) { return XDP_PASS; }")
fn = b.load_func("foreign_xdp", BPF.XDP)
BPF.attach_xdp(sys.argv[1], fn, 2)  # netlink, generic mode: outlives this process
"""


@pytest.fixture
def foreign(net: VethNamespace) -> Iterator[int]:
    """Another tool's XDP program on the host end, attached through netlink; its id."""
    subprocess.run([sys.executable, "-c", FOREIGN_LOADER, net.host_if], check=True, timeout=60)
    try:
        prog_id = xdp_prog_id(net.host_if)
        assert prog_id != 0
        yield prog_id
    finally:
        subprocess.run(["ip", "link", "set", "dev", net.host_if, "xdpgeneric", "off"], check=False)


@pytest.mark.parametrize("command", ["dump", "record", "live"])
def test_foreign_program_is_left_alone(
    net: VethNamespace, foreign: int, command: str, tmp_path: Path
) -> None:
    """Without --force, flowscope refuses an interface that runs another XDP program: one line
    naming the program and what --force would do, no traceback, the other program still
    there; `record` and `live` say so at once, before a database or a console exists."""
    db = tmp_path / "flows.db"
    extra = ["--duration", "1"] if command == "dump" else ["--db", str(db)]
    t = time.monotonic()
    proc = subprocess.run(
        [FLOWSCOPE, command, "-i", net.host_if, *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("flowscope: error: ")
    assert f"already runs the XDP program 'foreign_xdp' (id {foreign})" in lines[0]
    assert "--force would remove the XDP program 'foreign_xdp' and whatever it does" in lines[0]
    assert xdp_prog_id(net.host_if) == foreign
    if command != "dump":
        assert time.monotonic() - t < 10  # no compile, no console
        assert not db.exists()


def test_force_replaces_foreign_program(net: VethNamespace, foreign: int) -> None:
    """With --force, flowscope removes the other program, counts, and leaves the interface
    without any program when it is done."""
    proc = subprocess.run(
        [FLOWSCOPE, "dump", "-i", net.host_if, "--duration", "0", "--force"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert xdp_prog_id(net.host_if) == 0


def test_unknown_interface_is_one_line_exit_2() -> None:
    """A wrong interface name: exit code 2 and one line on stderr, before any compiling."""
    proc = subprocess.run(
        [FLOWSCOPE, "dump", "-i", "nosuchif0", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "flowscope: error: no interface named 'nosuchif0' "
        "('ip link' lists this machine's interfaces)"
    ]
    assert proc.stdout == ""


def test_unprivileged_user_is_told_which_capabilities(net: VethNamespace) -> None:
    """Run as nobody without capabilities: a non-zero exit and one line naming CAP_BPF,
    CAP_NET_ADMIN and CAP_PERFMON, no traceback, and nothing attached."""
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            FLOWSCOPE,
            "dump",
            "-i",
            net.host_if,
            "--duration",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"},
    )
    assert proc.returncode == 77, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for cap in ("CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"):
        assert cap in lines[0]
    assert xdp_prog_id(net.host_if) == 0


def test_a_second_flowscope_is_told_the_program_is_flowscopes(
    net: VethNamespace, tmp_path: Path
) -> None:
    """Issue #13: the program already there is named as flowscope's (another record, live or
    demo), by the refusal and by doctor, which does not warn about it as a foreign one."""
    from tests.kernel.test_record import start_record, wait_attached

    first = start_record(net, tmp_path / "a.db")
    try:
        wait_attached(net.host_if, first)
        prog = xdp_prog_id(net.host_if)
        second = subprocess.run(
            [FLOWSCOPE, "record", "-i", net.host_if, "--db", str(tmp_path / "b.db")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        (line,) = second.stderr.strip().splitlines()
        assert f"already runs flowscope's XDP program (id {prog}: another flowscope" in line
        doctor = subprocess.run(
            [FLOWSCOPE, "doctor", "-i", net.host_if], capture_output=True, text=True, timeout=120
        )
        (row,) = [r for r in doctor.stdout.splitlines() if f"{net.host_if}: XDP program" in r]
        assert "flowscope's XDP program" in row and row.lstrip().startswith("ok"), row
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
