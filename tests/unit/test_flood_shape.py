"""collect.flood against a brute-force model: random flows and flood-table entries of both
families, summed per source prefix and target in plain Python."""

from __future__ import annotations

import ipaddress
from collections import Counter
from unittest.mock import patch

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flowscope import abi
from flowscope.collect import flood
from flowscope.collect.flood import FloodParts, FlowGroups, filter_text, target_text
from flowscope.model import FloodRow
from flowscope.query.filter import parse

V4 = ["198.18.0.1", "198.18.0.200", "198.18.1.7", "198.19.77.3"]
V6 = ["2001:db8::1", "2001:db8::2:1", "2001:db8:0:1::5"]

flow = st.tuples(
    st.sampled_from(V4 + V6),
    st.sampled_from([6, 17, 1]),
    st.sampled_from([0, 53, 443]),
    st.integers(0, 1),
    st.integers(0, 1000),
    st.integers(0, 255),
)


def _prefix(addr: str) -> str:
    ip = ipaddress.ip_address(addr)
    plen = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))


def _tie_order(group: tuple[str, int, int, int]) -> tuple[int, int]:
    """The order of rows with as many packets: the prefix's number, then protocol, port,
    direction and family."""
    net = ipaddress.ip_network(group[0])
    prefix = int(net.network_address) >> (8 if net.version == 4 else 64)
    family = abi.AF_INET if net.version == 4 else abi.AF_INET6
    return prefix, (group[1] << 32) | (group[2] << 16) | (group[3] << 8) | family


@settings(max_examples=200, deadline=None)
@given(
    flows=st.lists(flow, max_size=30),
    table=st.lists(flow, max_size=10),
    top=st.integers(1, 6),
    rank_limit=st.sampled_from([flood._RANK_LIMIT, 1]),
)
def test_rows_are_the_exact_sums_per_prefix_and_target_most_first(
    flows: list[tuple[str, int, int, int, int, int]],
    table: list[tuple[str, int, int, int, int, int]],
    top: int,
    rank_limit: int,
) -> None:
    """``rank_limit`` 1 takes the way of more prefixes than a word has room for."""
    parts = FloodParts()
    want: Counter[tuple[str, int, int, int]] = Counter()
    in_flows: Counter[tuple[str, int, int, int]] = Counter()
    for family in (abi.AF_INET, abi.AF_INET6):
        mine = [f for f in flows if (":" in f[0]) == (family == abi.AF_INET6)]
        keys = np.zeros(len(mine), abi.KEY_DTYPES[family])
        for i, (src, proto, dport, direction, packets, _) in enumerate(mine):
            keys[i]["saddr"] = np.frombuffer(ipaddress.ip_address(src).packed, np.uint8)
            keys[i]["proto"], keys[i]["dport"], keys[i]["direction"] = proto, dport, direction
            want[_prefix(src), proto, dport, direction] += packets
            in_flows[_prefix(src), proto, dport, direction] += packets
        packets = np.array([f[4] for f in mine], np.uint64)
        flags = np.array([f[5] for f in mine], np.uint8)
        groups = FlowGroups(family)
        ids = groups.assign(keys)
        parts.add_flows(family, keys, packets, packets * np.uint64(100), flags, groups, ids)
    keys = np.zeros(len(table), abi.FLOOD_KEY_DTYPE)
    values = np.zeros(len(table), abi.FLOOD_VALUE_DTYPE)
    for i, (src, proto, dport, direction, packets, flags) in enumerate(table):
        packed = ipaddress.ip_address(src).packed
        n = 3 if len(packed) == 4 else 8
        keys[i]["prefix"][:n] = np.frombuffer(packed[:n], np.uint8)
        keys[i]["family"] = abi.AF_INET if len(packed) == 4 else abi.AF_INET6
        keys[i]["proto"], keys[i]["dport"], keys[i]["direction"] = proto, dport, direction
        keys[i]["tcp_flags"] = flags
        values[i] = (packets, packets * 100)
        want[_prefix(src), proto, dport, direction] += packets
    parts.add_table(keys, values)
    with patch.object(flood, "_RANK_LIMIT", rank_limit):
        shape = parts.shape(unplaced=7, interval=1.0, top=top)
    groups = {k: v for k, v in want.items() if v}
    ranked = sorted(groups, key=lambda k: (-groups[k], *_tie_order(k)))
    assert [(r.prefix, r.proto, r.dport, r.direction) for r in shape.rows] == ranked[:top]
    got = {(r.prefix, r.proto, r.dport, r.direction): r for r in shape.rows}
    assert len(shape.rows) == min(top, len(groups))
    for k, r in got.items():
        assert (r.packets, r.bytes, r.in_flows) == (groups[k], 100 * groups[k], in_flows[k])
    counts = [r.packets for r in shape.rows]
    assert counts == sorted(counts, reverse=True)
    left_out = sorted((v for k, v in groups.items() if k not in got), reverse=True)
    assert not left_out or left_out[0] <= counts[-1]
    assert shape.rest_packets == sum(left_out)
    assert shape.packets == sum(groups.values()) + 7


def test_target_and_filter_text_read_as_an_operator_types_them() -> None:
    row = FloodRow(4, "198.19.77.0/24", 17, 9, 0, 0, 10, 600, 0)
    assert target_text(row) == "udp/9"
    assert filter_text(row) == "src net 198.19.77.0/24 and dport 9 and udp and ingress"
    gre = FloodRow(6, "2001:db8:77::/64", 47, 0, 1, 0, 1, 60, 1)
    assert target_text(gre) == "gre"
    assert filter_text(gre) == "src net 2001:db8:77::/64 and dport 0 and proto 47 and egress"
    for r in (row, gre):
        assert parse(filter_text(r)) is not None


@settings(max_examples=200, deadline=None)
@given(
    family=st.sampled_from([abi.AF_INET, abi.AF_INET6]),
    ticks=st.lists(st.sets(st.integers(0, 11)), min_size=1, max_size=8),
    slack=st.sampled_from([0, flood.PRUNE_SLACK]),
)
def test_each_flow_keeps_its_group_from_tick_to_tick(
    family: int, ticks: list[set[int]], slack: int
) -> None:
    """FlowGroups as the collector uses it: each tick's flows, those of the tick before carrying
    their ids, the ids pruned to the flows that stay. Model: every flow's id names its own
    source prefix and target, whatever came and went before (``slack`` 0 prunes whenever it
    may)."""
    addrs = V4 if family == abi.AF_INET else V6
    pool = np.zeros(12, abi.KEY_DTYPES[family])
    for i in range(12):
        pool[i]["saddr"] = np.frombuffer(
            ipaddress.ip_address(addrs[i % len(addrs)]).packed, np.uint8
        )
        pool[i]["proto"], pool[i]["dport"], pool[i]["direction"] = 6, (0, 53, 443)[i // 4], i % 2
    want = {
        i: (
            int(flood._prefix_word(family, pool[i : i + 1]["saddr"])[0]),
            int(flood._target_word(family, pool[i : i + 1]["proto"], pool[i : i + 1]["dport"],
                                   pool[i : i + 1]["direction"])[0]),
        )
        for i in range(12)
    }  # fmt: skip
    groups = FlowGroups(family)
    before: dict[int, int] = {}  # flow -> id, as the collector keeps them
    with patch.object(flood, "PRUNE_SLACK", slack):
        for flows in ticks:
            order = sorted(flows)
            found = np.array([i in before for i in order], bool)
            carried = np.array([before.get(i, 0) for i in order], np.intp)
            ids = groups.assign(pool[order], carried if found.any() else None, found)
            for i, g in zip(order, ids.tolist(), strict=True):
                assert (int(groups.hi[g]), int(groups.lo[g])) == want[i]
            ids = groups.prune(ids)
            before = dict(zip(order, ids.tolist(), strict=True))
            for i, g in before.items():
                assert (int(groups.hi[g]), int(groups.lo[g])) == want[i]
