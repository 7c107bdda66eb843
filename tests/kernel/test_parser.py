"""The XDP parser, run on crafted frames through BPF_PROG_TEST_RUN.

Each rule of bpf/flowscope.c's parser is one case: the exact flow key it decodes, the packet,
byte and IP byte counts and TCP flags of that flow, and the change of every kernel counter.
Frames are cut at every byte to pin where a short frame lands, a property test feeds random and
mutated frames to check that every packet is counted exactly once, and a tiny map shows what
happens when the flow table is full. Under BPF_PROG_TEST_RUN without a context the ingress
interface is lo, ifindex 1.
"""

from __future__ import annotations

import errno
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.layers.sctp import SCTP
from scapy.packet import Packet, Raw

from flowscope import abi
from flowscope.errors import BpfError
from flowscope.kernel.program import FlowProgram
from flowscope.model import FlowEvent, FlowKey

XDP_PASS = 2
LO = 1  # ingress ifindex BPF_PROG_TEST_RUN reports when no xdp_md context is given
A4, B4 = "10.0.0.1", "10.0.0.2"
A6, B6 = "2001:db8::1", "2001:db8::2"
TCP_, UDP_, ICMP_, ICMP6_ = 6, 17, 1, 58

Flows = dict[FlowKey, tuple[int, int, int, int]]  # key -> (packets, bytes, ip_bytes, tcp_flags)


def eth(**kw: Any) -> Ether:
    """An Ethernet header with fixed addresses (scapy would otherwise look up routes)."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", **kw)


def k4(sport: int, dport: int, proto: int, vlan: int = 0, src: str = A4, dst: str = B4) -> FlowKey:
    """The IPv4 key the program should decode."""
    return FlowKey(abi.AF_INET, src, dst, sport, dport, proto, vlan, LO)


def k6(sport: int, dport: int, proto: int, vlan: int = 0) -> FlowKey:
    """The IPv6 key the program should decode."""
    return FlowKey(abi.AF_INET6, A6, B6, sport, dport, proto, vlan, LO)


def v4(pkt: Packet, **kw: Any) -> bytes:
    """Ethernet + IPv4 A4 -> B4 + pkt."""
    return bytes(eth() / IP(src=A4, dst=B4, **kw) / pkt)


def v6(*layers: Packet, **kw: Any) -> bytes:
    """Ethernet + IPv6 A6 -> B6 + layers, stacked in order."""
    pkt: Packet = eth() / IPv6(src=A6, dst=B6, **kw)
    for layer in layers:
        pkt = pkt / layer
    return bytes(pkt)


def patch(frame: bytes, offset: int, value: int) -> bytes:
    """The frame with one byte replaced."""
    return frame[:offset] + bytes([value]) + frame[offset + 1 :]


def observe(program: FlowProgram) -> tuple[Flows, dict[str, int]]:
    """Every flow of both maps and every counter, by lower-case name. Fails if a key's four
    bytes of padding are not zero: the same flow would then be split over several keys."""
    flows: Flows = {}
    for batch in program.read_all_flows():
        raw = batch.keys.view(np.uint8).reshape(len(batch.keys), batch.keys.dtype.itemsize)
        assert not raw[:, -4:].any(), "a flow key's padding is not zero"
        for key, s in batch.records():
            flows[key] = (s.packets, s.bytes, s.ip_bytes, s.tcp_flags)
    counters = {c.name.lower(): v for c, v in program.read_counters().items()}
    return flows, counters


def counters(
    packets: int,
    nbytes: int,
    *,
    flows_created: int = 0,
    non_ip: int = 0,
    malformed: int = 0,
    truncated: int = 0,
    map_full: int = 0,
) -> dict[str, int]:
    """A full counter dict; the ring buffer never fills in these tests. ``nbytes``: the frame
    bytes of every packet (the kernel's total, whatever became of the packet)."""
    return {
        "packets": packets,
        "bytes": nbytes,
        "flows_created": flows_created,
        "non_ip": non_ip,
        "malformed": malformed,
        "truncated": truncated,
        "map_full": map_full,
        "ringbuf_full": 0,
        "flood_other": 0,
        "events_limited": 0,
    }


@pytest.fixture(scope="module")
def program(program_factory: Callable[..., FlowProgram]) -> FlowProgram:
    """One compiled program for the module (a compile costs seconds); tests clear it."""
    return program_factory(flow_entries=1024)


@pytest.fixture
def fresh(program: FlowProgram) -> Iterator[FlowProgram]:
    """The module's program with no flows and zero counters."""
    program.clear()
    yield program


# -- one case per rule -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """Frames that all land in one flow (key, ip_bytes per frame, OR of TCP flags), or in a
    counter (key None, ``outcome`` "non_ip" or "malformed")."""

    id: str
    frames: tuple[bytes, ...]
    key: FlowKey | None
    ip_bytes: int = 0
    tcp_flags: int = 0
    outcome: str = "flow"


def flow(name: str, frame: bytes, key: FlowKey, ip_bytes: int, tcp_flags: int = 0) -> Case:
    """One frame that makes one flow."""
    return Case(name, (frame,), key, ip_bytes, tcp_flags)


def dropped(name: str, frame: bytes, outcome: str) -> Case:
    """One frame that makes no flow and bumps the ``outcome`` counter."""
    return Case(name, (frame,), None, outcome=outcome)


UDP_PAYLOAD = b"0123456789"
TCP_PA = 0x18

# IPv4 with a record-route option of two addresses: ihl 8, a 32-byte header.
IPV4_OPTIONS = v4(TCP(sport=1234, dport=80, flags="PA"), options=[IPOption_RR(routers=[A4, B4])])
# Bytes that would read as ports 4369 -> 8738 if a parser took them for a transport header.
FAKE_PORTS = struct.pack("!HHHH", 0x1111, 0x2222, 16, 0) + bytes(8)
# An authentication header with a 12-byte length (len field 1) in front of a TCP header.
AH_HEADER = Raw(bytes([TCP_, 1, 0, 0]) + bytes(8))
# scapy has no UDP-Lite or DCCP layer: UDP-Lite's header is UDP's, DCCP's starts with the ports
UDPLITE = v4(Raw(struct.pack("!HHHH", 7000, 7001, 8, 0) + UDP_PAYLOAD), proto=136)
DCCP = v4(Raw(struct.pack("!HH", 5004, 5005) + bytes(12)), proto=33)


def hbh16() -> IPv6ExtHdrHopByHop:
    """A 16-byte hop-by-hop header (length field 1), so the walk must use the length."""
    return IPv6ExtHdrHopByHop(options=[PadN(optdata=bytes(10))])


def ext_chain(n: int, last: Packet) -> bytes:
    """IPv6 with n 8-byte destination-options headers, then ``last``."""
    return v6(*[IPv6ExtHdrDestOpt() for _ in range(n)], last)


CASES: list[Case] = [
    # Ethernet and VLAN tags
    flow("ethernet-ipv4-udp", v4(UDP(sport=1111, dport=53) / UDP_PAYLOAD), k4(1111, 53, UDP_), 38),
    flow(
        "vlan-one-tag",
        bytes(eth() / Dot1Q(prio=5, vlan=100) / IP(src=A4, dst=B4) / UDP(sport=1111, dport=53)),
        k4(1111, 53, UDP_, vlan=100),
        28,
    ),
    flow(
        "qinq-outermost-tag",
        bytes(
            eth()
            / Dot1AD(vlan=200)
            / Dot1Q(vlan=100)
            / IP(src=A4, dst=B4)
            / UDP(sport=1111, dport=53)
        ),
        k4(1111, 53, UDP_, vlan=200),
        28,
    ),
    dropped(
        "three-tags-non-ip",
        bytes(
            eth()
            / Dot1AD(vlan=300)
            / Dot1Q(vlan=200)
            / Dot1Q(vlan=100)
            / IP(src=A4, dst=B4)
            / UDP(sport=1111, dport=53)
        ),
        "non_ip",
    ),
    flow(
        "vlan-ipv6",
        bytes(eth() / Dot1Q(vlan=4094) / IPv6(src=A6, dst=B6) / UDP(sport=1111, dport=53)),
        k6(1111, 53, UDP_, vlan=4094),
        48,
    ),
    # IPv4 options
    flow("ipv4-options", IPV4_OPTIONS, k4(1234, 80, TCP_), 52, TCP_PA),
    # IPv6 extension headers
    flow("ipv6-tcp", v6(TCP(sport=1234, dport=443, flags="PA")), k6(1234, 443, TCP_), 60, TCP_PA),
    flow(
        "ipv6-hop-by-hop",
        v6(hbh16(), TCP(sport=1234, dport=443, flags="PA")),
        k6(1234, 443, TCP_),
        76,
        TCP_PA,
    ),
    flow(
        "ipv6-routing",
        v6(IPv6ExtHdrRouting(addresses=["2001:db8::9"]), UDP(sport=1111, dport=53)),
        k6(1111, 53, UDP_),
        72,
    ),
    flow(
        "ipv6-fragment-first",
        v6(IPv6ExtHdrFragment(m=1, offset=0, id=7), UDP(sport=1111, dport=53) / UDP_PAYLOAD),
        k6(1111, 53, UDP_),
        66,
    ),
    flow(
        "ipv6-dstopts", v6(IPv6ExtHdrDestOpt(), UDP(sport=1111, dport=53)), k6(1111, 53, UDP_), 56
    ),
    flow(
        "ipv6-chain",
        v6(
            hbh16(),
            IPv6ExtHdrDestOpt(),
            IPv6ExtHdrRouting(addresses=["2001:db8::9"]),
            IPv6ExtHdrFragment(m=1, offset=0, id=7),
            IPv6ExtHdrDestOpt(),
            TCP(sport=1234, dport=443, flags="S"),
        ),
        k6(1234, 443, TCP_),
        40 + 16 + 8 + 24 + 8 + 8 + 20,
        0x02,
    ),
    flow(
        "ipv6-eight-ext-headers", ext_chain(8, UDP(sport=1111, dport=53)), k6(1111, 53, UDP_), 112
    ),
    flow(
        # the walk stops after eight: the protocol is the ninth header's type, no ports
        "ipv6-nine-ext-headers",
        v6(
            *[IPv6ExtHdrDestOpt() for _ in range(8)],
            IPv6ExtHdrRouting(addresses=[]),
            UDP(sport=1111, dport=53),
        ),
        k6(0, 0, 43),
        40 + 9 * 8 + 8,
    ),
    flow(
        "ipv6-ah",
        v6(AH_HEADER, TCP(sport=1234, dport=443), nh=51),
        k6(0, 0, 51),
        72,
    ),
    flow("ipv4-ah", v4(AH_HEADER / TCP(sport=1234, dport=80), proto=51), k4(0, 0, 51), 52),
    flow("ipv6-esp", v6(Raw(FAKE_PORTS), nh=50), k6(0, 0, 50), 56),
    flow("ipv4-esp", v4(Raw(FAKE_PORTS), proto=50), k4(0, 0, 50), 36),
    # fragments
    flow(
        "ipv4-first-fragment",
        v4(UDP(sport=5000, dport=6000) / UDP_PAYLOAD, flags="MF", frag=0, id=9),
        k4(5000, 6000, UDP_),
        38,
    ),
    flow(
        "ipv4-middle-fragment",
        v4(Raw(FAKE_PORTS), proto=UDP_, flags="MF", frag=3, id=9),
        k4(0, 0, UDP_),
        36,
    ),
    # a later fragment has no transport header to cut short: two bytes are not truncated
    flow("ipv4-later-fragment-short", v4(Raw(b"ab"), proto=TCP_, frag=5, id=9), k4(0, 0, TCP_), 22),
    flow("ipv4-last-fragment", v4(Raw(FAKE_PORTS), proto=UDP_, frag=5, id=9), k4(0, 0, UDP_), 36),
    flow(
        "ipv6-later-fragment",
        v6(IPv6ExtHdrFragment(nh=UDP_, m=0, offset=3, id=7), Raw(FAKE_PORTS)),
        k6(0, 0, UDP_),
        64,
    ),
    # ICMP: the destination port is type * 256 + code
    flow("icmp-echo-request", v4(ICMP(type=8, code=0)), k4(0, 8 * 256, ICMP_), 28),
    flow("icmp-port-unreachable", v4(ICMP(type=3, code=3)), k4(0, 771, ICMP_), 28),
    flow("icmpv6-echo-request", v6(ICMPv6EchoRequest()), k6(0, 32768, ICMP6_), 48),
    flow("icmpv6-port-unreachable", v6(ICMPv6DestUnreach(code=4)), k6(0, 260, ICMP6_), 48),
    # transports with ports
    flow("sctp", v4(SCTP(sport=2905, dport=2906)), k4(2905, 2906, 132), 32),
    flow("sctp-ipv6", v6(SCTP(sport=2905, dport=2906)), k6(2905, 2906, 132), 52),
    flow("udplite", UDPLITE, k4(7000, 7001, 136), 38),
    flow("dccp", DCCP, k4(5004, 5005, 33), 36),
    flow("udp-ipv6", v6(UDP(sport=1111, dport=53) / UDP_PAYLOAD), k6(1111, 53, UDP_), 58),
    Case(
        "tcp-flags-or",
        tuple(v4(TCP(sport=1234, dport=80, flags=f)) for f in ("S", "A", "FA")),
        k4(1234, 80, TCP_),
        40,
        0x13,
    ),
    # protocols without ports: a tunnel counts as its outer flow
    flow(
        "gre",
        v4(Raw(b"\x00\x00\x08\x00") / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(), proto=47),
        k4(0, 0, 47),
        52,
    ),
    flow(
        "ipip",
        v4(IP(src="192.0.2.1", dst="192.0.2.2") / TCP(sport=1234, dport=80)),
        k4(0, 0, 4),
        60,
    ),
    # not IP
    dropped("arp", bytes(eth() / ARP(psrc=A4, pdst=B4)), "non_ip"),
    dropped("lldp", bytes(eth(type=0x88CC) / Raw(bytes(32))), "non_ip"),
    dropped(
        "mpls-with-ip-behind",
        bytes(eth(type=0x8847) / Raw(struct.pack("!I", 100 << 12 | 1 << 8 | 64)))
        + bytes(IP(src=A4, dst=B4) / TCP(sport=1234, dport=80)),
        "non_ip",
    ),
    dropped(
        "pppoe-session",
        bytes(eth() / PPPoE(sessionid=1) / PPP(proto=0x0021) / IP(src=A4, dst=B4) / TCP()),
        "non_ip",
    ),
    dropped("vlan-arp", bytes(eth() / Dot1Q(vlan=100) / ARP(psrc=A4, pdst=B4)), "non_ip"),
    # an unusable IP header
    dropped("ipv4-version-5", patch(v4(TCP()), 14, 0x55), "malformed"),
    dropped("ipv4-version-6", bytes(eth(type=0x0800) / IPv6(src=A6, dst=B6) / TCP()), "malformed"),
    dropped("ipv4-ihl-4", patch(v4(TCP()), 14, 0x44), "malformed"),
    # ihl 8 asks for 32 header bytes; the frame has 31 after Ethernet
    dropped("ipv4-ihl-past-end", patch(v4(Raw(bytes(11)), proto=TCP_), 14, 0x48), "malformed"),
    dropped(
        "ipv6-version-4",
        bytes(eth(type=0x86DD) / IP(src=A4, dst=B4) / TCP() / bytes(20)),
        "malformed",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule(fresh: FlowProgram, case: Case) -> None:
    """Each rule: the exact flow (or counter) its frames land in."""
    for frame in case.frames:
        assert fresh.test_run(frame).retval == XDP_PASS
    flows, got = observe(fresh)
    n = len(case.frames)
    size = sum(len(f) for f in case.frames)
    if case.key is None:
        assert flows == {}
        assert got == counters(n, size, **{case.outcome: n})
    else:
        assert flows == {case.key: (n, size, n * case.ip_bytes, case.tcp_flags)}
        assert got == counters(n, size, flows_created=1)


def test_rule_frames_are_what_they_claim() -> None:
    """Guards the cases themselves: the option and QinQ frames carry what the rules need."""
    assert IPV4_OPTIONS[14] == 0x48  # IPv4, ihl 8
    qinq = next(c for c in CASES if c.id == "qinq-outermost-tag").frames[0]
    assert qinq[12:14] == b"\x88\xa8" and qinq[16:18] == b"\x81\x00"
    assert ext_chain(8, UDP())[20] == 60


# -- frames cut at every byte ------------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """Where a frame cut to n bytes lands: None for malformed, else (key, truncated)."""

    start: int
    key: FlowKey | None
    truncated: bool


@dataclass(frozen=True)
class CutFrame:
    """A full frame and the stages a cut passes through, by the first length of each."""

    id: str
    frame: bytes
    ip_bytes: int
    tcp_flags: int
    stages: tuple[Cut, ...]

    def at(self, n: int) -> Cut:
        return [s for s in self.stages if s.start <= n][-1]


TCP4 = v4(TCP(sport=1234, dport=80, flags="PA"))
CUT_FRAMES = [
    CutFrame(
        "ipv4-tcp",
        TCP4,
        40,
        TCP_PA,
        (Cut(14, None, False), Cut(34, k4(0, 0, TCP_), True), Cut(54, k4(1234, 80, TCP_), False)),
    ),
    CutFrame(
        "ipv6-udp",
        v6(UDP(sport=1111, dport=53) / b"abcd"),
        52,
        0,
        (Cut(14, None, False), Cut(54, k6(0, 0, UDP_), True), Cut(62, k6(1111, 53, UDP_), False)),
    ),
    CutFrame(
        # 14..17 cut the tag, 18..37 the IPv4 header
        "vlan-ipv4-tcp",
        bytes(eth() / Dot1Q(vlan=7) / IP(src=A4, dst=B4) / TCP(sport=1234, dport=80, flags="PA")),
        40,
        TCP_PA,
        (
            Cut(14, None, False),
            Cut(38, k4(0, 0, TCP_, vlan=7), True),
            Cut(58, k4(1234, 80, TCP_, vlan=7), False),
        ),
    ),
    CutFrame(
        # a cut inside the extension header's first 8 bytes stops the walk there (proto 0);
        # past them the walk has moved on to TCP, whose header is then short
        "ipv6-hop-by-hop-tcp",
        v6(hbh16(), TCP(sport=1234, dport=443, flags="PA")),
        76,
        TCP_PA,
        (
            Cut(14, None, False),
            Cut(54, k6(0, 0, 0), True),
            Cut(62, k6(0, 0, TCP_), True),
            Cut(90, k6(1234, 443, TCP_), False),
        ),
    ),
    # the fixed header each transport needs: ICMP and ICMPv6 4 bytes, UDP-Lite 8, SCTP and DCCP 12
    CutFrame(
        "icmp",
        v4(ICMP(type=8, code=0)),
        28,
        0,
        (Cut(14, None, False), Cut(34, k4(0, 0, ICMP_), True), Cut(38, k4(0, 2048, ICMP_), False)),
    ),
    CutFrame(
        "icmpv6",
        v6(ICMPv6EchoRequest()),
        48,
        0,
        (
            Cut(14, None, False),
            Cut(54, k6(0, 0, ICMP6_), True),
            Cut(58, k6(0, 32768, ICMP6_), False),
        ),
    ),
    CutFrame(
        "udplite",
        UDPLITE,
        38,
        0,
        (Cut(14, None, False), Cut(34, k4(0, 0, 136), True), Cut(42, k4(7000, 7001, 136), False)),
    ),
    CutFrame(
        "sctp",
        v4(SCTP(sport=2905, dport=2906)),
        32,
        0,
        (Cut(14, None, False), Cut(34, k4(0, 0, 132), True), Cut(46, k4(2905, 2906, 132), False)),
    ),
    CutFrame(
        "dccp",
        DCCP,
        36,
        0,
        (Cut(14, None, False), Cut(34, k4(0, 0, 33), True), Cut(46, k4(5004, 5005, 33), False)),
    ),
    CutFrame(
        "ipv4-options-tcp",
        IPV4_OPTIONS,
        52,
        TCP_PA,
        (Cut(14, None, False), Cut(46, k4(0, 0, TCP_), True), Cut(66, k4(1234, 80, TCP_), False)),
    ),
]


@pytest.mark.parametrize("cf", CUT_FRAMES, ids=[c.id for c in CUT_FRAMES])
def test_cut_at_every_byte(program: FlowProgram, cf: CutFrame) -> None:
    """A short Ethernet, VLAN or IP header is malformed; a short transport header still counts
    in its flow with ports 0 (and no TCP flags) and as truncated; bytes is the cut length."""
    assert cf.stages[-1].start <= len(cf.frame)
    for n in range(14, len(cf.frame) + 1):
        program.clear()
        assert program.test_run(cf.frame[:n]).retval == XDP_PASS
        flows, got = observe(program)
        stage = cf.at(n)
        if stage.key is None:
            assert (n, flows, got) == (n, {}, counters(1, n, malformed=1))
        else:
            flags = 0 if stage.truncated else cf.tcp_flags
            assert (n, flows) == (n, {stage.key: (1, n, cf.ip_bytes, flags)})
            assert (n, got) == (
                n,
                counters(1, n, flows_created=1, truncated=int(stage.truncated)),
            )


def test_frame_shorter_than_ethernet_is_refused(fresh: FlowProgram) -> None:
    """The kernel refuses a 13-byte frame (EINVAL) before the program runs: nothing counts."""
    with pytest.raises(BpfError) as err:
        fresh.test_run(TCP4[:13])
    assert err.value.errno == errno.EINVAL
    assert observe(fresh) == ({}, counters(0, 0))


# -- every packet is counted exactly once ------------------------------------------------------

SEEDS = [f for c in CASES for f in c.frames] + [cf.frame for cf in CUT_FRAMES]


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with a few bytes flipped, inserted, or cut off (never below 14 bytes)."""
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "insert", "truncate")))
        if op == "flip":
            i = draw(st.integers(0, len(frame) - 1))
            frame[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            i = draw(st.integers(0, len(frame)))
            frame[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del frame[draw(st.integers(14, len(frame))) :]
    return bytes(frame)


FRAMES = st.one_of(st.binary(min_size=14, max_size=200), mutated_frames())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(FRAMES, min_size=1, max_size=8))
def test_every_packet_counted_once(program: FlowProgram, batch: list[bytes]) -> None:
    """Whatever arrives: XDP_PASS, and packets == flow packets + non_ip + malformed + map_full,
    with each flow created once."""
    program.clear()
    for frame in batch:
        assert program.test_run(frame).retval == XDP_PASS
    flows, got = observe(program)
    in_flows = sum(p for p, _, _, _ in flows.values())
    assert got["packets"] == len(batch)
    assert got["packets"] == in_flows + got["non_ip"] + got["malformed"] + got["map_full"]
    assert got["flows_created"] == len(flows)
    assert got["truncated"] <= in_flows
    assert got["map_full"] == 0


# -- a full flow map ---------------------------------------------------------------------------


def test_map_full(program_factory: Callable[..., FlowProgram]) -> None:
    """With room for 4 flows, 10 flows make 4 entries and 6 map_full packets; the ring buffer
    announces each of the 4 once however many packets it gets, and each of the 6 with
    map_full. The IPv6 map is separate and still takes a flow."""
    small = program_factory(flow_entries=4)
    events: list[FlowEvent] = []
    small.open_events(events.append)
    frames = [v4(UDP(sport=1000 + i, dport=53)) for i in range(10)]
    keys = [k4(1000 + i, 53, UDP_) for i in range(10)]
    for frame in frames:
        small.test_run(frame)
    for _ in range(2):
        for frame in frames[:4]:
            small.test_run(frame)
    small.test_run(v6(UDP(sport=1111, dport=53)))
    small.poll_events(0)

    flows, got = observe(small)
    assert flows == {k: (3, 3 * 42, 3 * 28, 0) for k in keys[:4]} | {
        k6(1111, 53, UDP_): (1, 62, 48, 0)
    }
    assert got == counters(19, 18 * 42 + 62, flows_created=5, map_full=6)
    assert [(e.key, e.length, e.map_full) for e in events] == (
        [(k, 42, False) for k in keys[:4]]
        + [(k, 42, True) for k in keys[4:]]
        + [(k6(1111, 53, UDP_), 62, False)]
    )

    # more packets of known flows announce nothing; each packet of an unfit flow is announced
    events.clear()
    small.test_run(frames[0])
    small.test_run(frames[9])
    small.poll_events(0)
    assert [(e.key, e.map_full) for e in events] == [(keys[9], True)]
    assert observe(small)[1]["map_full"] == 7


def from4(src: str, pkt: Packet) -> bytes:
    """Ethernet + IPv4 src -> B4 + pkt."""
    return bytes(eth() / IP(src=src, dst=B4) / pkt)


def _floods(prog: FlowProgram) -> dict[tuple[bytes, int, int, int, int, int, int], tuple[int, int]]:
    """The flood table, emptied: (prefix, ifindex, dport, proto, flags, family, direction) ->
    (packets, bytes)."""
    keys, values = prog.take_floods()
    return {
        (bytes(k["prefix"]), int(k["ifindex"]), int(k["dport"]), int(k["proto"]),
         int(k["tcp_flags"]), int(k["family"]), int(k["direction"])): (int(v["packets"]),
                                                                      int(v["bytes"]))
        for k, v in zip(keys, values, strict=True)
    }  # fmt: skip


def test_the_flood_table_counts_what_the_full_map_could_not_take(
    program_factory: Callable[..., FlowProgram],
) -> None:
    """With room for 2 flows, SYNs from 20 sources of 10.0.0.0/24 and 5 of 10.0.1.0/24 to port
    80, UDP to 53 and an IPv6 SYN: the two flows that got in are not in the flood table, every
    other packet is, once, under its /24 (IPv6 /64), port, protocol and flags; the read empties
    it; packets of a third target once the table is full count as flood_other."""
    prog = program_factory(flow_entries=2)
    syn = TCP(sport=1234, dport=80, flags="S")
    sent = [from4(f"10.0.0.{i + 1}", syn) for i in range(20)]
    sent += [from4(f"10.0.1.{i + 1}", syn) for i in range(5)]
    sent += [from4("10.0.0.200", UDP(sport=1000 + i, dport=53)) for i in range(3)]
    for frame in sent:
        prog.test_run(frame)
    prog.test_run(v6(TCP(sport=1, dport=443, flags="S")))  # the IPv6 map has room
    for i in range(4):
        prog.test_run(bytes(eth() / IPv6(src=f"2001:db8:0:7::{i + 1}", dst=B6)
                            / TCP(sport=1, dport=443, flags="S")))  # fmt: skip
    counters = observe(prog)[1]
    net0, net1 = bytes([10, 0, 0]) + bytes(5), bytes([10, 0, 1]) + bytes(5)
    net6 = bytes.fromhex("20010db800000007")
    size = len(sent[0])
    assert _floods(prog) == {
        (net0, LO, 80, 6, 0x02, 4, 0): (18, 18 * size),  # the first two took the map
        (net1, LO, 80, 6, 0x02, 4, 0): (5, 5 * size),
        (net0, LO, 53, 17, 0, 4, 0): (3, 3 * len(sent[-1])),
        (net6, LO, 443, 6, 0x02, 6, 0): (3, 3 * 74),  # one of the four took the last slot
    }
    assert counters["map_full"] == 18 + 5 + 3 + 3
    assert counters["flood_other"] == 0
    assert _floods(prog) == {}  # read and emptied


def test_a_full_flood_table_counts_the_rest_as_flood_other(
    program_factory: Callable[..., FlowProgram],
) -> None:
    """Past the flood table's entries the packets of new prefixes are flood_other, and every
    packet of a full map is in exactly one of the two."""
    prog = program_factory(flow_entries=1)
    n = abi.DEFAULT_FLOOD_ENTRIES + 200
    frames = [from4(f"10.{i // 256}.{i % 256}.1", UDP(sport=1, dport=9)) for i in range(1, n + 1)]
    for frame in frames:
        prog.test_run(frame)
    counters = observe(prog)[1]
    table = _floods(prog)
    assert counters["map_full"] == n - 1
    assert sum(p for p, _ in table.values()) + counters["flood_other"] == n - 1
    assert len(table) <= abi.DEFAULT_FLOOD_ENTRIES
    assert counters["flood_other"] >= 200 - 1


def test_announcements_have_a_budget_and_what_it_holds_back_is_counted(
    program_factory: Callable[..., FlowProgram],
) -> None:
    """With a budget of 3 records per CPU and second, 40 new flows sent back to back: each is
    either announced or counted as events_limited, at most 3 per window spanned are announced,
    and every flow is in the map all the same."""
    prog = program_factory(flow_entries=64, event_budget=3)
    events: list[FlowEvent] = []
    prog.open_events(events.append)
    started = time.monotonic_ns()
    for i in range(40):
        prog.test_run(v4(UDP(sport=2000 + i, dport=53)))
    windows = (time.monotonic_ns() - started) // abi.EVENT_WINDOW_NS + 2
    prog.poll_events(0)
    flows, counters = observe(prog)
    assert len(flows) == counters["flows_created"] == 40
    assert len(events) + counters["events_limited"] == 40
    assert 3 <= len(events) <= 3 * windows
    assert counters["ringbuf_full"] == 0
