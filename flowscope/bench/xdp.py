"""The per-packet benchmarks: what the XDP program and its TC egress twin cost per packet on
each path (hot flow, 100,000 flows, IPv6 extension headers, VLAN, a new flow), next to a bare
program run the same way."""

from __future__ import annotations

from collections.abc import Iterator

from flowscope import abi
from flowscope.bench.harness import (
    BARE_NAME,
    BARE_TC_NAME,
    CLEAN_COUNTERS,
    Lab,
    Result,
    check_counted,
    per_packet,
    side_by_side,
)
from flowscope.bench.workload import (
    HOT4,
    V6,
    VLAN4,
    VLAN_ID,
    hot_ipv4_tcp_frame,
    insert_frames,
    ipv6_tcp_ext_frame,
    vlan_ipv4_udp_frame,
)
from flowscope.errors import BenchError
from flowscope.packets import IPPROTO_TCP, IPPROTO_UDP


def hot_ipv4_tcp(lab: Lab) -> Iterator[Result]:
    """The common case: one more packet of a known IPv4 TCP flow."""
    progs = lab.programs("default")
    yield per_packet(lab, "xdp_hot_ipv4_tcp", progs, hot_ipv4_tcp_frame(), HOT4, IPPROTO_TCP)


def tc_hot_ipv4_tcp(lab: Lab) -> Iterator[Result]:
    """The egress program (TC, the same parser and maps) on the hot IPv4 flow, next to a bare
    TC program: BPF_PROG_TEST_RUN builds an skb per run, so both cost more than XDP's runs."""
    name = "tc_hot_ipv4_tcp"
    progs, bares = lab.programs("default"), lab.bares("tc")
    value, base = side_by_side(
        lab.settings,
        [p.test_run_egress for p in progs],
        [b.test_run for b in bares],
        hot_ipv4_tcp_frame(),
    )
    for prog in progs:
        check_counted(name, prog, HOT4, IPPROTO_TCP, direction=abi.DIR_EGRESS)
    yield Result(name, value, "ns/packet", BARE_TC_NAME, base)


def hash_floor(lab: Lab) -> Iterator[Result]:
    """bpf/floor.c on the hot frame: the per-CPU hash lookup and update alone, what any flow
    tracker on such a map pays per packet. Next to the bare program, for the README: the gap
    between this and xdp_hot_ipv4_tcp is the parser, counters, clock and key."""
    floors = [f.test_run for f in lab.bares("hash_floor")]
    bares = [b.test_run for b in lab.bares()]
    value, base = side_by_side(lab.settings, floors, bares, hot_ipv4_tcp_frame())
    yield Result("xdp_hash_floor", value, "ns/packet", BARE_NAME, base, informative=True)


def hot_ipv4_tcp_100k(lab: Lab) -> Iterator[Result]:
    """The hot flow again, while the map holds settings.flows other flows: a busy server."""
    name = "xdp_hot_ipv4_tcp_100k"
    progs = lab.programs("filled")
    result = per_packet(lab, name, progs, hot_ipv4_tcp_frame(), HOT4, IPPROTO_TCP)
    for prog in progs:
        held = len(prog.read_flows(abi.AF_INET))
        if held < lab.settings.flows + 1:
            raise BenchError(f"{name}: the map held {held} flows, not {lab.settings.flows + 1}")
    yield result


def map_full(lab: Lab) -> Iterator[Result]:
    """A flood's packet once the flow map is full: the flow lookup misses, no insert is tried
    (the map was found full in this jiffy), and the packet is counted in the flood table by its
    source prefix and target (and, past the announcement budget, not announced). Next to the
    hot flow of the default build: issue #18 allows 1.5 times its cost."""
    name = "xdp_map_full"
    full, default = lab.programs("full"), lab.programs("default")
    value, base = side_by_side(
        lab.settings,
        [p.test_run for p in full],
        [p.test_run for p in default],
        hot_ipv4_tcp_frame(),
    )
    for prog in full:
        counters = prog.read_counters()
        _, values = prog.take_floods()
        if counters[abi.Counter.MAP_FULL] == 0 or int(values["packets"].sum()) != int(
            counters[abi.Counter.MAP_FULL]
        ):
            raise BenchError(
                f"{name}: {counters[abi.Counter.MAP_FULL]} map-full packets, "
                f"{int(values['packets'].sum())} in the flood table"
            )
    yield Result(name, value, "ns/packet", "xdp_hot_ipv4_tcp", base)


def block_path(lab: Lab) -> Iterator[Result]:
    """The hot flow through the build with the drop path (--allow-block), first without rules
    (the rule counts say there is nothing to look up), then with 1,000 source-prefix rules,
    then with 1,000 target rules more, none of which matches it nor shares its /16 or port (a
    bit test each, no trie search), then 1,000 more in its /16 (its bit set: the flow was
    searched for once under these rules and remembers that it passed), next to the default
    build: issue #18 asks for at most 5 ns more."""
    from flowscope.collect.block import Blocks, parse_rule
    from flowscope.kernel.block import BlockMaps

    blocking, default = lab.programs("block"), lab.programs("default")
    frame = hot_ipv4_tcp_frame()
    value, base = side_by_side(
        lab.settings, [p.test_run for p in blocking], [p.test_run for p in default], frame
    )
    for prog in blocking:
        check_counted("xdp_block_no_rules", prog, HOT4, IPPROTO_TCP)
    yield Result("xdp_block_no_rules", value, "ns/packet", "xdp_hot_ipv4_tcp", base)
    rules = {
        # 1,000 source prefixes: the source trie alone is searched
        "xdp_block_1000_rules": [f"172.{16 + i // 250}.{i % 250}.0/24" for i in range(1000)],
        # and 1,000 targets more: both tries are
        "xdp_block_2000_rules": [f"udp/{10000 + i}" for i in range(1000)],
        # and 1,000 /28s more in the hot source's own /16 (none of them its): its bit is set,
        # so its first packet under these rules searches the source trie, and the rest do not
        "xdp_block_3000_rules_its_16": [
            f"192.0.{10 + i // 16}.{(i % 16) * 16}/28" for i in range(1000)
        ],
    }
    sets = [Blocks(BlockMaps(prog)) for prog in blocking]
    try:
        for name, texts in rules.items():
            for blocks in sets:
                for text in texts:
                    blocks.add(parse_rule(text), now=0.0, confirmed=True)
            value, base = side_by_side(
                lab.settings, [p.test_run for p in blocking], [p.test_run for p in default], frame
            )
            for prog in blocking:
                check_counted(name, prog, HOT4, IPPROTO_TCP)
            yield Result(name, value, "ns/packet", "xdp_hot_ipv4_tcp", base)
    finally:
        for blocks in sets:
            blocks.close()


def ipv6_tcp_ext(lab: Lab) -> Iterator[Result]:
    """IPv6 behind two extension headers: the parser walks the chain to find TCP and its ports."""
    progs = lab.programs("default")
    frame = ipv6_tcp_ext_frame()
    yield per_packet(lab, "xdp_ipv6_tcp_ext", progs, frame, V6, IPPROTO_TCP)


def vlan_ipv4_udp(lab: Lab) -> Iterator[Result]:
    """A VLAN-tagged frame: the tag loop, and the VLAN id in the key."""
    progs = lab.programs("default")
    frame = vlan_ipv4_udp_frame()
    yield per_packet(lab, "xdp_vlan_ipv4_udp", progs, frame, VLAN4, IPPROTO_UDP, VLAN_ID)


def insert_100k(lab: Lab) -> Iterator[Result]:
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
    if created != n or any(counters[c] for c in CLEAN_COUNTERS):
        raise BenchError(
            f"{name}: {created} of {n} frames inserted a flow and announced it",
            "the parser or the bench's frame builder changed; 'make test' should say which",
        )
    yield Result(name, total / n, "ns/flow", BARE_NAME, base / n)


def precise_clock(lab: Lab) -> Iterator[Result]:
    """The hot flow built with FS_PRECISE_CLOCK (bpf_ktime_get_ns() on every packet) next to the
    default build (the per-jiffy clock cache): what the cache saves, for the README."""
    default, precise = lab.programs("default"), lab.programs("precise")
    value, cached = side_by_side(
        lab.settings,
        [p.test_run for p in precise],
        [p.test_run for p in default],
        hot_ipv4_tcp_frame(),
    )
    for prog in precise:
        check_counted("xdp_hot_ipv4_tcp_precise_clock", prog, HOT4, IPPROTO_TCP)
    yield Result(
        "xdp_hot_ipv4_tcp_precise_clock",
        value,
        "ns/packet",
        "xdp_hot_ipv4_tcp",
        cached,
        informative=True,
    )


def processes_hot(lab: Lab) -> Iterator[Result]:
    """The hot flow through the build record and live run by default, with the socket hooks
    compiled in (FS_OWNERS: the TC program names the socket of each new flow it sends), next
    to the build without them, XDP and TC: the hot path must not change."""
    default, owned = lab.programs("default"), lab.programs("processes")
    for name, run, base_name in (
        ("xdp_hot_ipv4_tcp_processes", "test_run", "xdp_hot_ipv4_tcp"),
        ("tc_hot_ipv4_tcp_processes", "test_run_egress", "tc_hot_ipv4_tcp"),
    ):
        value, base = side_by_side(
            lab.settings,
            [getattr(p, run) for p in owned],
            [getattr(p, run) for p in default],
            hot_ipv4_tcp_frame(),
        )
        direction = abi.DIR_EGRESS if run == "test_run_egress" else abi.DIR_INGRESS
        for prog in owned:
            check_counted(name, prog, HOT4, IPPROTO_TCP, direction=direction)
        yield Result(name, value, "ns/packet", base_name, base)
