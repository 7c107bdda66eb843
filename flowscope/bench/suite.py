"""``flowscope bench``: what the XDP program (and its TC egress twin) costs per packet, next to a
program that does nothing.

Every number comes from BPF_PROG_TEST_RUN, the kernel running the program on a crafted frame and
reporting its mean duration per run. That mean is noisy (about ±15% from one call to the next)
and includes the test harness itself (about 25 ns here), so each measurement is taken next to
bpf/bare.c, a bare ``return XDP_PASS`` program run the same way: the two are interleaved for a
number of rounds and the minimum of each is kept, the least disturbed run of each. One load of
a program (its maps, its JIT image) can also cost a few ns more or less than the next load of
the same code, for the whole time it is loaded: so the per-packet benchmarks load each program
(and the bare one) several times and report the median over the loads. The ratio of the two
is what the issue's targets are about; absolute nanoseconds depend on the machine.

The frames are built here with struct, not scapy, so the command works without the dev extras.
Each benchmark checks afterwards that its frame really landed in the flow it meant to exercise,
so a parser change cannot turn a benchmark into a measurement of the drop-out path.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import ipaddress
import math
import statistics
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flowscope import abi
from flowscope.errors import BenchError, UsageError

if TYPE_CHECKING:
    from flowscope.kernel.libbpf import TestRunResult
    from flowscope.kernel.program import BareProgram, FlowProgram

BARE_NAME = "bare_xdp_pass"
BARE_TC_NAME = "bare_tc_unspec"
BIG_FLOW_ENTRIES = 131072
"""Map size for the benchmarks with 100,000 flows: room to spare, as a sized deployment has."""
INSERT_RINGBUF_PAGES = 2048
"""8 MiB: every one of 100,000 new-flow events (64 bytes + 8 of ring header) fits, so the insert
benchmark measures a successful announcement each time, not the cheaper "ring full" path."""
LOOPBACK_IFINDEX = 1
"""BPF_PROG_TEST_RUN without a context runs XDP as if received on the loopback device."""

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_HOPOPTS = 0
IPPROTO_DSTOPTS = 60
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
TCP_ACK = 0x10
MIN_FRAME = 60  # Ethernet minimum without the FCS: shorter frames are padded, as a NIC does


@dataclass(frozen=True, slots=True)
class Settings:
    """How hard to measure. The defaults are what the README's numbers come from."""

    repeat: int = 1_000_000
    """Runs per BPF_PROG_TEST_RUN call for the per-packet benchmarks."""
    rounds: int = 15
    """Interleaved rounds of program and baseline; the minimum of each is kept. The host this
    VM runs on slows every program by up to a third for seconds at a time; 15 rounds (about 8
    seconds per benchmark) reach past such a stretch."""
    loads: int = 5
    """Separate loads of each program (and of the bare one) for the per-packet benchmarks; the
    median over the loads of their minimums is reported. Measured here: 8 loads of the same
    program ranged over 51-58 ns, a wider spread than the rounds of one load."""
    flows: int = 100_000
    """Flows pre-filled (xdp_hot_ipv4_tcp_100k) and inserted (xdp_insert_100k)."""
    drain_flows: tuple[int, ...] = (100_000, 1_000_000)
    """Flows in the map for the collector_tick benchmarks."""
    insert_records: int = 200_000
    """Flow records written by store_insert, in ticks of 10,000."""
    history_records: int = 10_000_000
    """Flow records over 24 hours in the database history_top20 queries."""
    ringbuf_flows: int = 100_000
    """New flows announced on the ring buffer before ringbuf_events drains them."""
    console_flows: int = 100_000
    """Live flows behind the console benchmarks."""
    detect_flows: int = 200_000
    """New flows of the spoofed SYN flood detect_flood feeds the detector."""


DEFAULT = Settings()
QUICK = Settings(
    repeat=100_000,
    rounds=3,
    loads=1,
    flows=10_000,
    drain_flows=(10_000,),
    insert_records=20_000,
    history_records=100_000,
    ringbuf_flows=10_000,
    console_flows=10_000,
    detect_flows=20_000,
)
"""A smoke test of the whole command in a few seconds; its numbers are rougher."""


@dataclass(frozen=True, slots=True)
class Result:
    """One measurement next to its baseline, both in ``unit``."""

    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    informative: bool = False
    """Not one of the issue's targets: a design choice's cost, shown so the README can cite it."""

    @property
    def ratio(self) -> float:
        """value / baseline; how many bare programs' worth of time the measured one costs."""
        return self.value / self.baseline if self.baseline > 0 else math.inf

    def as_dict(self) -> dict[str, object]:
        """The JSON object of ``flowscope bench --json``, one per line."""
        return {
            "name": self.name,
            "value": round(float(self.value), 1),
            "unit": self.unit,
            "baseline_name": self.baseline_name,
            "baseline": round(float(self.baseline), 1),
            "ratio": round(self.ratio, 3),
        }


# -- frames ------------------------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(ethertype: int, payload: bytes, vlans: Sequence[int] = ()) -> bytes:
    """An Ethernet frame between two fixed locally administered MACs, with 802.1Q tags
    (outermost first), padded to the 60-byte minimum."""
    frame = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")
    for vid in vlans:
        frame += struct.pack("!HH", ETH_P_8021Q, vid & 0x0FFF)
    frame += struct.pack("!H", ethertype) + payload
    return frame.ljust(MIN_FRAME, b"\0")


def ipv4(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    """An IPv4 header without options, checksum filled in, followed by ``l4``."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, s, d)
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + l4


def ipv6(src: str, dst: str, nexthdr: int, payload: bytes) -> bytes:
    """An IPv6 header followed by ``payload`` (extension headers included)."""
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nexthdr, 64, s, d) + payload


def ipv6_options(nexthdr: int) -> bytes:
    """A hop-by-hop or destination options header of 8 bytes: one PadN option fills it."""
    return struct.pack("!BBBB4x", nexthdr, 0, 1, 4)


def _pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def tcp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A TCP segment with ACK set, its checksum over the pseudo-header of src and dst."""
    header = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, TCP_ACK, 8192, 0, 0)
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    segment = header + payload
    csum = _checksum(_pseudo_header(s, d, IPPROTO_TCP, len(segment)) + segment)
    return segment[:16] + struct.pack("!H", csum) + segment[18:]


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A UDP datagram, its checksum over the pseudo-header of src and dst."""
    datagram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    csum = _checksum(_pseudo_header(s, d, IPPROTO_UDP, len(datagram)) + datagram) or 0xFFFF
    return datagram[:6] + struct.pack("!H", csum) + datagram[8:]


def ipv4_tcp_frame(src: str, dst: str, sport: int, dport: int) -> bytes:
    """Ethernet / IPv4 / TCP ACK, no payload."""
    return ethernet(ETH_P_IP, ipv4(src, dst, IPPROTO_TCP, tcp(src, dst, sport, dport)))


HOT4 = ("192.0.2.1", "198.51.100.1", 40000, 443)
V6 = ("2001:db8::1", "2001:db8::2", 40001, 443)
VLAN4 = ("192.0.2.2", "198.51.100.2", 5353, 53)
VLAN_ID = 100


def hot_ipv4_tcp_frame() -> bytes:
    """The one hot IPv4 TCP flow of the per-packet benchmarks."""
    return ipv4_tcp_frame(*HOT4)


def ipv6_tcp_ext_frame() -> bytes:
    """IPv6 TCP behind a hop-by-hop and a destination-options header: the parser's walk."""
    src, dst, sport, dport = V6
    payload = (
        ipv6_options(IPPROTO_DSTOPTS) + ipv6_options(IPPROTO_TCP) + tcp(src, dst, sport, dport)
    )
    return ethernet(ETH_P_IPV6, ipv6(src, dst, IPPROTO_HOPOPTS, payload))


def vlan_ipv4_udp_frame() -> bytes:
    """An 802.1Q-tagged IPv4 UDP frame with a small payload."""
    src, dst, sport, dport = VLAN4
    datagram = udp(src, dst, sport, dport, b"\0" * 32)
    return ethernet(ETH_P_IP, ipv4(src, dst, IPPROTO_UDP, datagram), vlans=(VLAN_ID,))


def insert_frames(n: int) -> list[bytes]:
    """n IPv4 TCP frames of n distinct flows (sources 10.0.0.0 + i), none of them HOT4."""
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    return [
        ipv4_tcp_frame(str(ipaddress.IPv4Address(base + i)), "198.51.100.1", 1024 + i % 60000, 443)
        for i in range(n)
    ]


def other_flow_keys(n: int) -> np.ndarray:
    """n distinct IPv4 flow keys in the kernel layout (sources 172.16.0.0 + i), none of them
    HOT4, for filling the map from user space."""
    keys = np.zeros(n, dtype=abi.KEY4_DTYPE)
    keys["ifindex"] = LOOPBACK_IFINDEX
    saddr = np.arange(n, dtype=np.uint64) + int(ipaddress.IPv4Address("172.16.0.0"))
    keys["saddr"] = saddr.astype(">u4").view(np.uint8).reshape(n, 4)
    keys["daddr"] = np.frombuffer(ipaddress.IPv4Address("198.51.100.1").packed, np.uint8)
    keys["sport"] = 1024 + np.arange(n) % 60000
    keys["dport"] = 443
    keys["proto"] = IPPROTO_TCP
    return keys


# -- measuring ---------------------------------------------------------------------------------


def interleaved_min(runs: Sequence[Callable[[], int]], rounds: int) -> list[int]:
    """Call each run once per round, alternating the order between rounds so no run always
    follows the same neighbour, and keep the minimum duration of each."""
    best = [math.inf] * len(runs)
    order = list(range(len(runs)))
    for r in range(rounds):
        for i in order if r % 2 == 0 else reversed(order):
            best[i] = min(best[i], runs[i]())
    return [int(b) for b in best]


def _duration(run: Callable[..., TestRunResult], frame: bytes, repeat: int) -> int:
    return run(frame, repeat=repeat).duration_ns


def _timed(
    runs: Sequence[Callable[..., TestRunResult]], frame: bytes, repeat: int
) -> list[Callable[[], int]]:
    """One measurement per load: a test_run method called with ``repeat`` runs of the frame,
    giving the kernel's mean duration per run in ns."""
    return [functools.partial(_duration, run, frame, repeat) for run in runs]


def _side_by_side(
    s: Settings,
    runs: Sequence[Callable[..., TestRunResult]],
    baselines: Sequence[Callable[..., TestRunResult]],
    frame: bytes,
) -> tuple[float, float]:
    """Every load of a program (``runs``: their test_run methods) next to every load of its
    baseline, on one frame: one untimed run of each first (a flow program's first packet
    inserts the flow: from then on it is hot), then median_of_loads of each side."""
    for run in (*runs, *baselines):
        run(frame)
    value, base = median_of_loads(
        [_timed(runs, frame, s.repeat), _timed(baselines, frame, s.repeat)], s.rounds
    )
    return value, base


def median_of_loads(groups: Sequence[Sequence[Callable[[], int]]], rounds: int) -> list[float]:
    """Each group holds one run per load of one program. Every run of every group is
    interleaved (interleaved_min); each group's result is the median of its loads' minimums."""
    flat = [run for group in groups for run in group]
    best = interleaved_min(flat, rounds)
    out: list[float] = []
    start = 0
    for group in groups:
        out.append(float(statistics.median(best[start : start + len(group)])))
        start += len(group)
    return out


class _Lab:
    """The programs of one bench run, each compiled on first use (BCC takes seconds) and
    shared by the benchmarks that measure it in the same state."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._bares: dict[str, list[BareProgram]] = {}
        self._programs: dict[str, list[FlowProgram]] = {}

    def bares(self, kind: str = "xdp") -> list[BareProgram]:
        """settings.loads loads of a reference program: the XDP_PASS baseline (xdp), the
        TC_ACT_UNSPEC one of the egress program (tc), or the lookup and update alone
        (hash_floor)."""
        bares = self._bares.get(kind)
        if bares is None:
            from flowscope.kernel.program import BareProgram

            bares = self._bares[kind] = [BareProgram(kind) for _ in range(self.settings.loads)]
        return bares

    def bare(self) -> BareProgram:
        """One XDP_PASS baseline, for the benchmarks that are not per packet."""
        return self.bares()[0]

    def programs(self, role: str) -> list[FlowProgram]:
        """settings.loads loads of the flow program for one role: default (as flowscope runs
        by default), precise (FS_PRECISE_CLOCK), filled (a large map holding settings.flows other
        flows)."""
        progs = self._programs.get(role)
        if progs is None:
            progs = self._programs[role] = [self._load(role) for _ in range(self.settings.loads)]
        return progs

    def program(self, role: str) -> FlowProgram:
        """One load of the flow program for one role: the roles of programs(), or insert (a
        large map and a ring buffer big enough for every new-flow event)."""
        progs = self._programs.get(role)
        if progs is None:
            progs = self._programs[role] = [self._load(role)]
        return progs[0]

    def _load(self, role: str) -> FlowProgram:
        from flowscope.kernel.program import FlowProgram

        if role == "default":
            return FlowProgram()
        if role == "precise":
            return FlowProgram(cflags=("-DFS_PRECISE_CLOCK",))
        if role == "filled":
            prog = FlowProgram(flow_entries=BIG_FLOW_ENTRIES)
            prog.put_flows(abi.AF_INET, other_flow_keys(self.settings.flows))
            return prog
        if role == "insert":
            return FlowProgram(flow_entries=BIG_FLOW_ENTRIES, ringbuf_pages=INSERT_RINGBUF_PAGES)
        raise ValueError(role)

    def close(self) -> None:
        """Free every program compiled."""
        for progs in self._programs.values():
            for prog in progs:
                prog.close()
        for bares in self._bares.values():
            for bare in bares:
                bare.close()


_CLEAN = (
    abi.Counter.NON_IP,
    abi.Counter.MALFORMED,
    abi.Counter.TRUNCATED,
    abi.Counter.MAP_FULL,
    abi.Counter.RINGBUF_FULL,
)


def _check_counted(
    name: str,
    prog: FlowProgram,
    flow: tuple[str, str, int, int],
    proto: int,
    vlan: int = 0,
    direction: int = abi.DIR_INGRESS,
) -> None:
    """Fail unless every frame was counted in a flow, and the benchmark's flow (source,
    destination, ports) is there with packets."""
    counters = prog.read_counters()
    dirty = {c.name.lower(): counters[c] for c in _CLEAN if counters[c]}
    if dirty:
        raise BenchError(
            f"{name}: the bench frames did not all land in flows ({dirty})",
            "the parser or the bench's frame builder changed; 'make test' should say which",
        )
    src = ipaddress.ip_address(flow[0]).packed
    family = abi.AF_INET if len(src) == 4 else abi.AF_INET6
    batch = prog.read_flows(family)
    keys = batch.keys
    hit = (
        (keys["saddr"] == np.frombuffer(src, np.uint8)).all(axis=1)
        & (keys["sport"] == flow[2])
        & (keys["dport"] == flow[3])
        & (keys["proto"] == proto)
        & (keys["vlan"] == vlan)
        & (keys["direction"] == direction)
    )
    if not (hit & (batch.packets > 0)).any():
        raise BenchError(
            f"{name}: the bench frame was not counted as the flow it is meant to exercise",
            "the parser or the bench's frame builder changed; 'make test' should say which",
        )


def _per_packet(
    lab: _Lab,
    name: str,
    progs: Sequence[FlowProgram],
    frame: bytes,
    flow: tuple[str, str, int, int],
    proto: int,
    vlan: int = 0,
) -> Result:
    """One frame through every load of the program and of the baseline, interleaved; the
    median over loads of each one's minimum."""
    bares = [b.test_run for b in lab.bares()]
    value, base = _side_by_side(lab.settings, [p.test_run for p in progs], bares, frame)
    for prog in progs:
        _check_counted(name, prog, flow, proto, vlan)
    return Result(name, value, "ns/packet", BARE_NAME, base)


def hot_ipv4_tcp(lab: _Lab) -> Iterator[Result]:
    """The common case: one more packet of a known IPv4 TCP flow."""
    progs = lab.programs("default")
    yield _per_packet(lab, "xdp_hot_ipv4_tcp", progs, hot_ipv4_tcp_frame(), HOT4, IPPROTO_TCP)


def tc_hot_ipv4_tcp(lab: _Lab) -> Iterator[Result]:
    """The egress program (TC, the same parser and maps) on the hot IPv4 flow, next to a bare
    TC program: BPF_PROG_TEST_RUN builds an skb per run, so both cost more than XDP's runs."""
    name = "tc_hot_ipv4_tcp"
    progs, bares = lab.programs("default"), lab.bares("tc")
    value, base = _side_by_side(
        lab.settings,
        [p.test_run_egress for p in progs],
        [b.test_run for b in bares],
        hot_ipv4_tcp_frame(),
    )
    for prog in progs:
        _check_counted(name, prog, HOT4, IPPROTO_TCP, direction=abi.DIR_EGRESS)
    yield Result(name, value, "ns/packet", BARE_TC_NAME, base)


def hash_floor(lab: _Lab) -> Iterator[Result]:
    """bpf/floor.c on the hot frame: the per-CPU hash lookup and update alone, what any flow
    tracker on such a map pays per packet. Next to the bare program, for the README: the gap
    between this and xdp_hot_ipv4_tcp is the parser, counters, clock and key."""
    floors = [f.test_run for f in lab.bares("hash_floor")]
    bares = [b.test_run for b in lab.bares()]
    value, base = _side_by_side(lab.settings, floors, bares, hot_ipv4_tcp_frame())
    yield Result("xdp_hash_floor", value, "ns/packet", BARE_NAME, base, informative=True)


def hot_ipv4_tcp_100k(lab: _Lab) -> Iterator[Result]:
    """The hot flow again, while the map holds settings.flows other flows: a busy server."""
    name = "xdp_hot_ipv4_tcp_100k"
    progs = lab.programs("filled")
    result = _per_packet(lab, name, progs, hot_ipv4_tcp_frame(), HOT4, IPPROTO_TCP)
    for prog in progs:
        held = len(prog.read_flows(abi.AF_INET))
        if held < lab.settings.flows + 1:
            raise BenchError(f"{name}: the map held {held} flows, not {lab.settings.flows + 1}")
    yield result


def ipv6_tcp_ext(lab: _Lab) -> Iterator[Result]:
    """IPv6 behind two extension headers: the parser walks the chain to find TCP and its ports."""
    progs = lab.programs("default")
    frame = ipv6_tcp_ext_frame()
    yield _per_packet(lab, "xdp_ipv6_tcp_ext", progs, frame, V6, IPPROTO_TCP)


def vlan_ipv4_udp(lab: _Lab) -> Iterator[Result]:
    """A VLAN-tagged frame: the tag loop, and the VLAN id in the key."""
    progs = lab.programs("default")
    frame = vlan_ipv4_udp_frame()
    yield _per_packet(lab, "xdp_vlan_ipv4_udp", progs, frame, VLAN4, IPPROTO_UDP, VLAN_ID)


def insert_100k(lab: _Lab) -> Iterator[Result]:
    """settings.flows new flows, each its own single run, so every run is an insert plus its
    ring buffer event. The kernel's single-run durations are summed and divided by the number of
    flows; the baseline runs the same frames, one run each, interleaved frame by frame."""
    name = "xdp_insert_100k"
    n = lab.settings.flows
    frames = insert_frames(n)
    prog, bare = lab.program("insert"), lab.bare()
    total = base = 0
    for frame in frames:
        total += prog.test_run(frame).duration_ns
        base += bare.test_run(frame).duration_ns
    counters = prog.read_counters()
    created = counters[abi.Counter.FLOWS_CREATED]
    if created != n or any(counters[c] for c in _CLEAN):
        raise BenchError(
            f"{name}: {created} of {n} frames inserted a flow and announced it",
            "the parser or the bench's frame builder changed; 'make test' should say which",
        )
    yield Result(name, total / n, "ns/flow", BARE_NAME, base / n)


def precise_clock(lab: _Lab) -> Iterator[Result]:
    """The hot flow built with FS_PRECISE_CLOCK (bpf_ktime_get_ns() on every packet) next to the
    default build (the per-jiffy clock cache): what the cache saves, for the README."""
    default, precise = lab.programs("default"), lab.programs("precise")
    value, cached = _side_by_side(
        lab.settings,
        [p.test_run for p in precise],
        [p.test_run for p in default],
        hot_ipv4_tcp_frame(),
    )
    for prog in precise:
        _check_counted("xdp_hot_ipv4_tcp_precise_clock", prog, HOT4, IPPROTO_TCP)
    yield Result(
        "xdp_hot_ipv4_tcp_precise_clock",
        value,
        "ns/packet",
        "xdp_hot_ipv4_tcp",
        cached,
        informative=True,
    )


def _count_label(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k"


def collector_tick(lab: _Lab) -> Iterator[Result]:
    """One collector tick (batched read of both maps, per-CPU sums, matching with the previous
    tick, rates, expiry decisions) with N flows in the map, next to the batched read alone. The
    map is sized so N stays under the high-water mark and nothing expires: the steady state of
    a busy server. Minimum of 3 ticks, in ms. An informative line gives what the tick's crash
    safety costs the writer thread (turning its pending flows into the blob it writes), beside
    the tick."""
    import time

    from flowscope.collect.collector import Collector, CollectorSettings
    from flowscope.kernel.program import FlowProgram

    for n in lab.settings.drain_flows:
        prog = FlowProgram(flow_entries=int(n / 0.85) + 1)
        try:
            prog.put_flows(abi.AF_INET, other_flow_keys(n))
            collector = Collector(prog, CollectorSettings(idle_timeout=1e9, active_timeout=1e9))
            reads, ticks, snapshots = [], [], []
            for _ in range(3):
                t = time.perf_counter()
                held = sum(len(b) for b in prog.read_all_flows())
                reads.append(time.perf_counter() - t)
                t = time.perf_counter()
                tick = collector.tick()
                ticks.append(time.perf_counter() - t)
                t = time.perf_counter()
                for p in tick.pending:
                    p.to_bytes()
                snapshots.append(time.perf_counter() - t)
                if held != n or tick.sample.active_flows != n:
                    raise BenchError(
                        f"collector_tick: read {held} flows, ticked "
                        f"{tick.sample.active_flows}, expected {n}"
                    )
        finally:
            prog.close()
        label = _count_label(n)
        yield Result(
            f"collector_tick_{label}", min(ticks) * 1e3, "ms/tick", f"map_read_{label}",
            min(reads) * 1e3,
        )  # fmt: skip
        yield Result(
            f"pending_blob_{label}", min(snapshots) * 1e3, "ms/tick", f"collector_tick_{label}",
            min(ticks) * 1e3, informative=True,
        )  # fmt: skip


STORE_TICK = 10_000
"""Records per write_tick in store_insert: a busy second of a busy server."""


def store_insert(lab: _Lab) -> Iterator[Result]:
    """Flow records per second through Store.write_tick (one transaction per tick of 10,000,
    the flows schema with its index), next to a plain executemany of the same rows into a
    table without indexes in one file of the same settings: the cost of flowscope's schema."""
    import sqlite3
    import tempfile
    import time

    from flowscope.bench import synthetic_history
    from flowscope.history import schema, store

    n = lab.settings.insert_records
    records = synthetic_history.synthetic_records(n, flows=50_000)
    with tempfile.TemporaryDirectory() as tmp:
        with store.Store(Path(tmp) / "flows.db") as db:
            t = time.perf_counter()
            for i in range(0, n, STORE_TICK):
                db.write_tick(records[i : i + STORE_TICK], None, [])
            value = n / (time.perf_counter() - t)
            written = db.conn.execute("SELECT count(*) FROM flows").fetchone()[0]
        if written != n:
            raise BenchError(f"store_insert: {written} of {n} records written")
        rows = [
            (r.iface, "ingress", r.key.vlan, r.key.family, r.key.src, r.key.dst, r.key.sport,
             r.key.dport, r.key.proto, schema.iso_time(r.first_seen), schema.iso_time(r.last_seen),
             r.packets, r.bytes, r.ip_bytes, r.tcp_flags, r.end_reason)
            for r in records
        ]  # fmt: skip
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
    yield Result("store_insert", value, "records/s", "sqlite_executemany", baseline)


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
        path = Path(base) / "flowscope" / f"bench-{_count_label(records)}.db"
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


def history_top20(lab: _Lab) -> Iterator[Result]:
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
    label = _count_label(n)
    yield Result(f"history_top20_{label}", times[False], "ms", f"history_exact_{label}",
                 times[True])  # fmt: skip


RINGBUF_PAGES = 4096
"""16 MiB: room for 100,000 events (72 bytes each with the ring's header) twice over."""


def ringbuf_events(lab: _Lab) -> Iterator[Result]:
    """New-flow events consumed per second by user space (FlowProgram.poll_events, decoded,
    through a callback), after settings.ringbuf_flows new flows were announced; none may be
    lost. The baseline is the same drain with the decoder swapped for one that only counts:
    the ring buffer and the copy out of it, what decoding is measured against."""
    import time
    from unittest import mock

    from flowscope.kernel import program

    n = lab.settings.ringbuf_flows
    frames = insert_frames(n)
    rates = []
    copied = [0]

    def count_only(records: Sequence[bytes]) -> list[object]:
        copied[0] += len(records)
        return []

    for decode in (True, False):
        prog = program.FlowProgram(flow_entries=BIG_FLOW_ENTRIES, ringbuf_pages=RINGBUF_PAGES)
        try:
            for frame in frames:
                prog.test_run(frame)
            events: list[object] = []
            prog.open_events(events.append)
            with contextlib.ExitStack() as stack:
                if not decode:
                    stack.enter_context(
                        mock.patch.object(program, "events_from_records", count_only)
                    )
                t = time.perf_counter()
                prog.poll_events(0)
                seconds = time.perf_counter() - t
            counters = prog.read_counters()
        finally:
            prog.close()
        got = len(events) if decode else copied[0]
        created = counters[abi.Counter.FLOWS_CREATED]
        lost = counters[abi.Counter.RINGBUF_FULL]
        if got != created or created != n or lost:
            raise BenchError(
                f"ringbuf_events: {got} events for {created} new flows of {n}, {lost} lost"
            )
        rates.append(n / seconds)
    yield Result("ringbuf_events", rates[0], "events/s", "ringbuf_copy_only", rates[1])


def detect_flood(lab: _Lab) -> Iterator[Result]:
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


def console(lab: _Lab) -> Iterator[Result]:
    """The console (issue 4), headless at 160x48 on synthetic ticks: process CPU time per tick
    with N live flows next to the same with 1,000 (how the cost grows with flows; the budget
    is 150 ms, 15 % of a core at one tick a second), and the time from a sort-key press to the
    repainted table next to the time a tick takes to draw (target 100 ms)."""
    from flowscope.bench.console import measure  # only flowscope/ui/ imports textual

    ticks = 3 if lab.settings is QUICK else 10
    big = measure(lab.settings.console_flows, ticks, 3)
    small = measure(1_000, ticks, 1)
    label = _count_label(lab.settings.console_flows)
    yield Result(
        f"console_tick_{label}", big.cpu_ms_per_tick, "ms cpu/tick", "console_tick_1k",
        small.cpu_ms_per_tick,
    )  # fmt: skip
    yield Result(
        f"console_key_{label}", big.key_ms, "ms", f"console_draw_{label}", big.wall_ms_per_tick
    )


REPLAY_FLOWS = 1_000


def replay_capture(n: int) -> bytes:
    """A pcap of ``n`` Ethernet IPv4 TCP frames of REPLAY_FLOWS flows in turn, one microsecond
    apart (a second of capture per million frames: the collector ticks as it would live)."""
    frames = [
        ipv4_tcp_frame("192.0.2.1", f"198.51.{100 + i // 250}.{i % 250 + 1}", 40000 + i, 443)
        for i in range(REPLAY_FLOWS)
    ]
    t0 = 1_700_000_000_000_000  # microseconds
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(n):
        frame = frames[i % REPLAY_FLOWS]
        t = t0 + i
        out.append(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(frame), len(frame)))
        out.append(frame)
    return b"".join(out)


def replay_frames(lab: _Lab) -> Iterator[Result]:
    """`flowscope replay` on a capture of 1,000,000 frames (quick: 100,000): frames per second
    of the replay loop (reading the file, one BPF_PROG_TEST_RUN per frame through the replay
    build, the collector ticking on capture time), next to bare BPF_PROG_TEST_RUN calls from
    Python on one prepared frame, the floor of one syscall per frame. Target 300,000 frames/s."""
    import tempfile
    import time
    from pathlib import Path

    from flowscope.collect.recorder import NullSink
    from flowscope.collect.replay import ReplaySettings, replay
    from flowscope.kernel.testrun import ReplayRunner

    n = 100_000 if lab.settings is QUICK else 1_000_000
    with tempfile.TemporaryDirectory(prefix="flowscope-bench-") as tmp:
        path = Path(tmp) / "replay.pcap"
        path.write_bytes(replay_capture(n))
        summary = replay(ReplaySettings(path), NullSink())
    counted = summary.counters.get("packets", 0)
    dirty = {c: v for c, v in summary.counters.items() if c in ("non_ip", "malformed", "map_full")}
    if counted != n or any(dirty.values()) or summary.damage is not None:
        raise BenchError(
            f"replay_frames: {counted} of {n} frames counted ({dirty}, {summary.damage})",
            "the capture reader, the replay build or the bench's frames changed",
        )
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
    yield Result(
        "replay_frames", n / summary.loop_seconds, "frames/s", "bare_test_run_calls", floor
    )


BENCHMARKS: dict[str, Callable[[_Lab], Iterator[Result]]] = {
    "xdp_hot_ipv4_tcp": hot_ipv4_tcp,
    "xdp_hot_ipv4_tcp_100k": hot_ipv4_tcp_100k,
    "tc_hot_ipv4_tcp": tc_hot_ipv4_tcp,
    "xdp_ipv6_tcp_ext": ipv6_tcp_ext,
    "xdp_vlan_ipv4_udp": vlan_ipv4_udp,
    "xdp_insert_100k": insert_100k,
    "xdp_hot_ipv4_tcp_precise_clock": precise_clock,
    "xdp_hash_floor": hash_floor,
    "collector_tick": collector_tick,
    "store_insert": store_insert,
    "history_top20_10m": history_top20,
    "ringbuf_events": ringbuf_events,
    "detect_flood": detect_flood,
    "console": console,
    "replay_frames": replay_frames,
}
NAMES = tuple(BENCHMARKS)


def select(only: Sequence[str]) -> list[str]:
    """The benchmarks to run, in the usual order; names may also come comma-separated."""
    wanted = [n.strip() for item in only for n in item.split(",")]
    if only and not any(wanted):
        raise UsageError("--only: no benchmark named", f"choose from {', '.join(NAMES)}")
    wanted = [n for n in wanted if n]
    unknown = [n for n in wanted if n not in BENCHMARKS]
    if unknown:
        raise UsageError(
            f"no benchmark named {', '.join(map(repr, unknown))}", f"choose from {', '.join(NAMES)}"
        )
    return [n for n in NAMES if not wanted or n in wanted]


def run(names: Sequence[str], settings: Settings = DEFAULT) -> Iterator[Result]:
    """Run the named benchmarks, yielding each result as soon as it is measured."""
    lab = _Lab(settings)
    try:
        for name in names:
            yield from BENCHMARKS[name](lab)
    finally:
        lab.close()


# -- output ------------------------------------------------------------------------------------

_WIDTH = max(len(n) for n in (*NAMES, BARE_NAME, BARE_TC_NAME))


def table_header() -> str:
    """The first line of the readable table."""
    return (
        f"{'benchmark':<{_WIDTH}}  {'value':>9}  {'unit':<9}  {'baseline':<{_WIDTH}}  "
        f"{'value':>9}  {'ratio':>6}"
    )


def table_row(r: Result) -> str:
    """One aligned line of the readable table; the widths do not depend on the other rows,
    so rows can be printed as they are measured."""
    return (
        f"{r.name:<{_WIDTH}}  {r.value:>9.1f}  {r.unit:<9}  {r.baseline_name:<{_WIDTH}}  "
        f"{r.baseline:>9.1f}  {r.ratio:>6.2f}"
    )


def info_line(r: Result) -> str:
    """The sentence under an informative row: what the design choice it measures saves."""
    if r.unit == "ns/packet":
        return (
            f"  (informative, not a target) {r.name}: {r.value - r.baseline:+.1f} ns per packet "
            f"over {r.baseline_name}, x{r.ratio:.2f}"
        )
    return (
        f"  (informative, not a target) {r.name}: {r.value:.1f} {r.unit} beside "
        f"{r.baseline_name}'s {r.baseline:.1f}, x{r.ratio:.2f}"
    )


def table_note(settings: Settings) -> str:
    """What the numbers are, printed under the table."""
    return (
        f"value and baseline: the minimum over {settings.rounds} interleaved rounds of the "
        f"kernel's mean duration per run (BPF_PROG_TEST_RUN, {settings.repeat:,} runs), "
        f"median over {settings.loads} load{'s' if settings.loads != 1 else ''} of each program;\n"
        f"xdp_insert_100k: {settings.flows:,} single runs of new flows, summed / {settings.flows:,}"
        f"; ratio = value / baseline"
    )
