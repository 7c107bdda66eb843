"""Block rules in the XDP program (-DFS_BLOCK) through BPF_PROG_TEST_RUN, against the rule's
own model (collect.block.Rule.matches): random rules and packets of both families, each
packet's verdict and each rule's count of what it dropped; the egress program never drops; the
build without --allow-block has no drop path."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from flowscope import abi
from flowscope.collect.block import Blocks, Rule, parse_rule
from flowscope.errors import UsageError
from flowscope.kernel.block import BLOCK_CFLAGS, BlockMaps
from flowscope.kernel.program import FlowProgram

XDP_DROP, XDP_PASS = 1, 2
SOURCES = ["10.0.0.1", "10.0.0.77", "10.0.1.5", "2001:db8::1", "2001:db8:0:1::9"]
RULES = [
    "10.0.0.0/24", "10.0.0.77", "10.0.0.0/16", "udp/53", "tcp/443", "10.0.0.1 udp/53",
    "10.0.0.0/24 tcp/443", "2001:db8::/64", "2001:db8::/32 udp/53", "2001:db8:0:1::9",
]  # fmt: skip


def frame(src: str, proto: int, dport: int) -> bytes:
    l4 = TCP(sport=1000, dport=dport) if proto == 6 else UDP(sport=1000, dport=dport)
    ip = IPv6(src=src, dst="2001:db8::ffff") if ":" in src else IP(src=src, dst="10.9.9.9")
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / l4)


@pytest.fixture(scope="module")
def blocking(program_factory: Callable[..., FlowProgram]) -> FlowProgram:
    return program_factory(cflags=BLOCK_CFLAGS)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rules=st.lists(st.sampled_from(RULES), unique=True, max_size=4),
    packets=st.lists(
        st.tuples(st.sampled_from(SOURCES), st.sampled_from([6, 17]), st.sampled_from([53, 443])),
        max_size=12,
    ),
)
def test_verdicts_and_counts_follow_the_rules(
    blocking: FlowProgram,
    rules: list[str],
    packets: list[tuple[str, int, int]],
) -> None:
    maps = BlockMaps(blocking)
    blocks = Blocks(maps)
    parsed = [parse_rule(r) for r in rules]
    for rule in parsed:
        assert blocks.add(rule, now=0.0, confirmed=True) == []
    try:
        want: dict[Rule, int] = dict.fromkeys(parsed, 0)
        for src, proto, dport in packets:
            family = abi.AF_INET6 if ":" in src else abi.AF_INET
            hits = [r for r in parsed if r.matches(family, src, proto, dport)]
            verdict = blocking.test_run(frame(src, proto, dport)).retval
            assert verdict == (XDP_DROP if hits else XDP_PASS), (src, proto, dport, rules)
            if hits:
                # the kernel counts it under one rule: its source trie first, then its target's,
                # the longest prefix in each
                counted = [r for r in parsed if maps.matched(r) > want[r]]
                assert len(counted) == 1 and counted[0] in hits, (counted, hits)
                want[counted[0]] += 1
        for e in blocks.listing():
            assert e.matched == want[e.rule]
    finally:
        blocks.close()
    assert maps.counts.src4 == maps.counts.src6 == maps.counts.target4 == maps.counts.target6 == 0
    # without rules nothing is dropped
    assert {blocking.test_run(frame(s, 17, 53)).retval for s in SOURCES} == {XDP_PASS}


def test_the_egress_program_never_drops(blocking: FlowProgram) -> None:
    blocks = Blocks(BlockMaps(blocking))
    blocks.add(parse_rule("10.0.0.0/8"), now=0.0, confirmed=True)
    try:
        assert blocking.test_run(frame("10.0.0.1", 17, 53)).retval == XDP_DROP
        assert blocking.test_run_egress(frame("10.0.0.1", 17, 53)).retval == 0xFFFFFFFF  # UNSPEC
    finally:
        blocks.close()


def test_without_allow_block_there_is_no_drop_path(
    program_factory: Callable[..., FlowProgram],
) -> None:
    plain = program_factory()
    with pytest.raises(UsageError, match="--allow-block"):
        BlockMaps(plain)
