"""The shape of a tick's traffic by source prefix and target: what a flood looks like even
when it filled the flow map.

Each tick the collector hands over every flow's packets of that tick (its delta) and the
kernel's flood table (bpf/flowscope.c: packets the full flow map could not take, counted by
source prefix, destination port, protocol, flags, interface and direction, emptied by the
read). Both are summed here per (IPv4 /24 or IPv6 /64, protocol, destination port, direction)
with numpy: a packet is in exactly one of the two, so a row's count is every packet that
prefix sent to that target in the tick, whether or not the flow map had room for them, up to
the packets that found the flood table full as well (FloodShape.unplaced, the stated bound).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from flowscope import abi
from flowscope.model import FloodRow, FloodShape, Sample, TickFlows, proto_name, take_rows
from flowscope.vocab import compact

TOP_ROWS = 50
"""Rows a FloodShape keeps (history writes fewer: history.store.FLOOD_ROWS)."""

PORT_PROTOCOLS = frozenset({6, 17, 33, 132, 136})
"""Protocols whose key has ports (TCP, UDP, DCCP, SCTP, UDP-Lite): their port 0 is shown."""

U64 = np.uint64
_GROUP = np.dtype([("hi", U64), ("lo", U64)])


class _Part(NamedTuple):
    hi: np.ndarray
    """The source prefix as one word (_prefix_word)."""
    lo: np.ndarray
    """Protocol, port, direction and family as one word (_target_word)."""
    packets: np.ndarray
    bytes: np.ndarray
    flags: np.ndarray
    flows: bool
    """Whether these are flows' deltas (else the kernel's flood table)."""


class FloodParts:
    """A tick's packets by (prefix, target), added to as the collector reads: each part is one
    family's flows or the flood table."""

    def __init__(self) -> None:
        self._parts: list[_Part] = []
        self._flows: list[TickFlows] = []

    def add_flows(
        self,
        family: int,
        keys: np.ndarray,
        packets: np.ndarray,
        nbytes: np.ndarray,
        tcp_flags: np.ndarray,
    ) -> None:
        """One family's flows (kernel key layout) with their packets and bytes of this tick;
        flows without packets in it are left out (the arrays are kept as they are, for
        FloodShape.flows)."""
        self._flows.append(TickFlows(family, keys, packets))
        sel = np.flatnonzero(packets)
        if not len(sel):
            return
        if len(sel) == len(keys):  # every flow had packets (a busy server): no gather
            k, p, b, f = keys, packets, nbytes, tcp_flags
        else:
            k, p, b, f = take_rows(keys, sel), packets[sel], nbytes[sel], tcp_flags[sel]
        self._parts.append(
            _Part(
                _prefix_word(family, k["saddr"]),
                _target_word(family, k["proto"], k["dport"], k["direction"]),
                p.astype(U64, copy=False),
                b.astype(U64, copy=False),
                f.astype(np.uint8, copy=False),
                flows=True,
            )
        )

    def add_table(self, keys: np.ndarray, values: np.ndarray) -> None:
        """The kernel's flood table as read (abi.FLOOD_KEY_DTYPE, abi.FLOOD_VALUE_DTYPE)."""
        for family in (abi.AF_INET, abi.AF_INET6):
            mine = (keys["family"] == family) & (values["packets"] > 0)
            if not mine.any():
                continue
            k, v = keys[mine], values[mine]
            self._parts.append(
                _Part(
                    _prefix_word(family, k["prefix"]),
                    _target_word(family, k["proto"], k["dport"], k["direction"]),
                    v["packets"].astype(U64),
                    v["bytes"].astype(U64),
                    k["tcp_flags"].astype(np.uint8),
                    flows=False,
                )
            )

    def shape(self, unplaced: int, interval: float, top: int = TOP_ROWS) -> FloodShape:
        """The rows with the most packets (ties in prefix and target order, for a stable
        order), the sum of the rest, and the unplaced packets (the bound of every row)."""
        flows = tuple(self._flows)
        if not self._parts:
            return FloodShape(unplaced=unplaced, interval=interval, flows=flows)
        parts = self._parts
        packets = np.concatenate([p.packets for p in parts])
        nbytes = np.concatenate([p.bytes for p in parts])
        flags = np.concatenate([p.flags for p in parts])
        in_flows = np.concatenate([p.packets * U64(p.flows) for p in parts])
        group_hi, group_lo, inv = _groups(
            np.concatenate([p.hi for p in parts]), np.concatenate([p.lo for p in parts])
        )
        n = len(group_hi)
        g_packets = np.bincount(inv, packets, n).astype(U64)
        g_bytes = np.bincount(inv, nbytes, n).astype(U64)
        g_flows = np.bincount(inv, in_flows, n).astype(U64)
        g_flags = np.zeros(n, np.uint8)
        np.bitwise_or.at(g_flags, inv, flags)
        # most packets first; the groups are in (prefix, target) order, so a stable sort keeps
        # ties in that order
        order = np.argsort(-g_packets.astype(np.float64), kind="stable")
        chosen, rest = order[:top], order[top:]
        rows = tuple(
            _row(
                int(group_hi[i]),
                int(group_lo[i]),
                int(g_flags[i]),
                int(g_packets[i]),
                int(g_bytes[i]),
                int(g_flows[i]),
            )
            for i in chosen.tolist()
        )
        return FloodShape(
            rows=rows,
            rest_packets=int(g_packets[rest].sum()),
            rest_bytes=int(g_bytes[rest].sum()),
            unplaced=unplaced,
            interval=interval,
            flows=flows,
        )


TARGET_BITS = 40
"""The bits of a target word (_target_word): protocol, port, direction and family."""
_RANK_LIMIT = 1 << (64 - TARGET_BITS)


def _groups(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (hi, lo) pairs of the rows in (hi, lo) order, as two columns, and each
    row's pair (its index in them).

    A prefix and its 40-bit target make one word a row: an IPv4 /24 as it is, else each
    prefix's rank among the tick's prefixes, which keeps their order. np.unique then sorts
    plain words, where over a structured array of the two words it compared them field by
    field, ten times slower (2.4 s for a tick of a million flows, each with packets; 0.2 s by
    rank, 0.1 s for IPv4 alone). More prefixes than the rank's 24 bits can count (never a
    tick's: the maps hold fewer flows) take the slow way."""
    mask = U64((1 << TARGET_BITS) - 1)
    if int(hi.max(initial=0)) < _RANK_LIMIT:  # IPv4 /24s only: the prefix itself has room
        words, inv = np.unique((hi << U64(TARGET_BITS)) | lo, return_inverse=True)
        return words >> U64(TARGET_BITS), words & mask, inv.reshape(-1)
    prefixes, rank = np.unique(hi, return_inverse=True)
    if len(prefixes) >= _RANK_LIMIT:
        group = np.empty(len(hi), _GROUP)
        group["hi"], group["lo"] = hi, lo
        uniq, inv = np.unique(group, return_inverse=True)
        return uniq["hi"], uniq["lo"], inv.reshape(-1)
    words, inv = np.unique(
        (rank.reshape(-1).astype(U64) << U64(TARGET_BITS)) | lo, return_inverse=True
    )
    return prefixes[words >> U64(TARGET_BITS)], words & mask, inv.reshape(-1)


def _prefix_word(family: int, addr: np.ndarray) -> np.ndarray:
    """The source prefix of each row of address bytes (n x 4, 8 or 16, network order) as one
    word: an IPv4 /24 as its 24-bit number, an IPv6 /64 as its 64 bits. The leading bytes are
    read as one big-endian word a row, not shifted in byte by byte."""
    rows = np.ascontiguousarray(addr[:, : 4 if family == abi.AF_INET else 8])
    if family == abi.AF_INET:
        return rows.view(">u4").reshape(-1).astype(U64) >> U64(8)
    return rows.view(">u8").reshape(-1).astype(U64)


def _target_word(
    family: int, proto: np.ndarray, dport: np.ndarray, direction: np.ndarray
) -> np.ndarray:
    """Protocol, destination port (host order), direction and family packed in one word, in
    its low TARGET_BITS bits."""
    word = (
        (proto.astype(U64) << U64(32))
        | (dport.astype(U64) << U64(16))
        | (direction.astype(U64) << U64(8))
        | U64(family)
    )
    return np.asarray(word, U64)


def _row(hi: int, lo: int, flags: int, packets: int, nbytes: int, in_flows: int) -> FloodRow:
    family = lo & 0xFF
    if family == abi.AF_INET:
        prefix = f"{ipaddress.IPv4Address(hi << 8)}/24"
    else:
        prefix = f"{ipaddress.IPv6Address(hi << 64)}/64"
    return FloodRow(
        family=family,
        prefix=prefix,
        proto=(lo >> 32) & 0xFF,
        dport=(lo >> 16) & 0xFFFF,
        direction=(lo >> 8) & 0xFF,
        tcp_flags=int(flags),
        packets=int(packets),
        bytes=int(nbytes),
        in_flows=int(in_flows),
    )


def target_text(row: FloodRow) -> str:
    """A row's target as an operator reads it: 'udp/9', 'tcp/443', 'icmp/2048' (type * 256 +
    code), 'gre' (no ports)."""
    name = proto_name(row.proto)
    return f"{name}/{row.dport}" if row.dport or row.proto in PORT_PROTOCOLS else name


def filter_text(row: FloodRow) -> str:
    """The live filter that selects a row's flows (those the map could take)."""
    name = proto_name(row.proto)
    proto = name if name in ("tcp", "udp", "icmp", "icmp6") else f"proto {row.proto}"
    direction = "ingress" if row.direction == abi.DIR_INGRESS else "egress"
    return f"src net {row.prefix} and dport {row.dport} and {proto} and {direction}"


MAP_FULL = "flow map full"
NEW_FLOWS_PER_S = 10_000
"""New flows a second (created, or found no room) from which a tick counts as a flood."""
SYN_SHARE = 0.5
"""Share of the received TCP packets with SYN and no ACK from which a tick counts as a flood,
when there are at least SYN_MIN_PPS of them a second."""
SYN_MIN_PPS = 1_000
TCP_SYN, TCP_ACK = 0x02, 0x10


@dataclass(frozen=True, slots=True)
class FloodSignal:
    """Why a tick looks like a flood, and whom it comes from."""

    reasons: tuple[str, ...]
    """'flow map full', 'new flows 12k/s', 'SYN without ACK 93%'."""
    top: FloodRow
    """The source prefix and target most of it comes from."""
    attempts: int
    """New flows the tick tried to make: created, or found no room (map-full packets)."""


def overflow_top(shape: FloodShape) -> FloodRow:
    """The row with the most packets the flow map could not take: who fills a full map (the
    row with the most packets may be a large transfer the map holds). Needs rows."""
    return max(shape.rows, key=lambda r: r.packets - r.in_flows)


def flood_signal(sample: Sample) -> FloodSignal | None:
    """Map pressure, the new-flow rate and the share of SYNs without ACK among received TCP
    packets, from one tick's sample and flood shape (None: no flood). The top source is the
    row with the most packets the map could not take when it is full, else the row with the
    most packets."""
    shape = sample.flood
    if not shape.rows or sample.interval <= 0:
        return None
    counters = sample.counters
    map_full = counters.get("map_full", 0)
    attempts = sample.new_flows + map_full
    reasons: list[str] = []
    if map_full:
        reasons.append(MAP_FULL)
    per_s = attempts / sample.interval
    if per_s >= NEW_FLOWS_PER_S:
        reasons.append(f"new flows {compact(per_s)}/s")
    tcp_in = [r for r in shape.rows if r.proto == 6 and r.direction == abi.DIR_INGRESS]
    tcp_packets = sum(r.packets for r in tcp_in)
    syn_only = sum(r.packets for r in tcp_in if r.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
    if tcp_packets / sample.interval >= SYN_MIN_PPS and syn_only / tcp_packets >= SYN_SHARE:
        reasons.append(f"SYN without ACK {100 * syn_only / tcp_packets:.0f}%")
    if not reasons:
        return None
    top = overflow_top(shape) if map_full else shape.rows[0]
    return FloodSignal(tuple(reasons), top, attempts)
