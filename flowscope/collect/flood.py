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

import functools
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
    """Packets of a tick summed by group, a row per (prefix, target), in (hi, lo) order."""

    hi: np.ndarray
    """The source prefix as one word (_prefix_word)."""
    lo: np.ndarray
    """Protocol, port, direction and family as one word (_target_word)."""
    packets: np.ndarray
    bytes: np.ndarray
    in_flows: np.ndarray
    """Of the packets, those counted in flows (the rest: the kernel's flood table)."""
    flags: np.ndarray


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
        groups: FlowGroups,
        ids: np.ndarray,
    ) -> None:
        """One family's flows (kernel key layout) with their packets and bytes of this tick,
        and each flow's group in ``groups`` (``ids``, from FlowGroups.assign); flows without
        packets in it are left out (the arrays are kept as they are, for FloodShape.flows).
        The flows are summed per group here, so the part is a row per group that had
        packets."""
        self._flows.append(TickFlows(family, keys, packets))
        sel = np.flatnonzero(packets)
        if not len(sel):
            return
        if len(sel) < len(keys):  # else every flow had packets (a busy server): no gather
            ids, packets, nbytes, tcp_flags = ids[sel], packets[sel], nbytes[sel], tcp_flags[sel]
        self._parts.append(
            _summed(groups.hi, groups.lo, ids, packets, nbytes, tcp_flags, flows=True)
        )

    def add_table(self, keys: np.ndarray, values: np.ndarray) -> None:
        """The kernel's flood table as read (abi.FLOOD_KEY_DTYPE, abi.FLOOD_VALUE_DTYPE)."""
        for family in (abi.AF_INET, abi.AF_INET6):
            mine = (keys["family"] == family) & (values["packets"] > 0)
            if not mine.any():
                continue
            k, v = keys[mine], values[mine]
            hi, lo, inv = _groups(
                _prefix_word(family, k["prefix"]),
                _target_word(family, k["proto"], k["dport"], k["direction"]),
            )
            self._parts.append(
                _summed(hi, lo, inv, v["packets"], v["bytes"], k["tcp_flags"], flows=False)
            )

    def shape(self, unplaced: int, interval: float, top: int = TOP_ROWS) -> FloodShape:
        """The rows with the most packets (ties in prefix and target order, for a stable
        order), the sum of the rest, and the unplaced packets (the bound of every row)."""
        flows = tuple(self._flows)
        if not self._parts:
            return FloodShape(unplaced=unplaced, interval=interval, flows=flows)
        # the largest part first: the others are looked up in it and merged in order
        parts = sorted(self._parts, key=lambda p: len(p.hi), reverse=True)
        group_hi, group_lo, g_packets, g_bytes, g_flows, g_flags = functools.reduce(_merge, parts)
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


class FlowGroups:
    """One family's (prefix, target) groups of the flows the collector follows, in (prefix,
    target) order, so that a flow's group is worked out when it is first read rather than every
    tick: the collector keeps each flow's id beside its other state, and a tick in which every
    one of a million flows has packets sums them by id (np.bincount) instead of sorting a
    million words again (_groups, about 85 ms here). New flows' groups are merged into the
    table; groups no flow has any longer are dropped once they are most of it (prune)."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.hi = np.zeros(0, U64)
        """Each group's source prefix (_prefix_word)."""
        self.lo = np.zeros(0, U64)
        """Each group's target (_target_word)."""

    def assign(
        self, keys: np.ndarray, carried: np.ndarray | None = None, found: np.ndarray | None = None
    ) -> np.ndarray:
        """Each flow's group id (its row in ``hi`` and ``lo``): ``carried[i]`` for the flows
        ``found`` says were followed already (ids this table gave), worked out for the others
        (all of them without ``found``). Ids given before stay valid only through the returned
        ones: adding groups renumbers them.

        Only the new flows are grouped (sorted); their groups are then looked up in the table
        and the missing ones inserted in order, so a tick with a few new flows costs little
        however many groups the table holds."""
        new = np.arange(len(keys)) if found is None else np.flatnonzero(~found)
        if not len(new):
            return carried if carried is not None else np.zeros(len(keys), np.intp)
        k = keys if len(new) == len(keys) else take_rows(keys, new)
        u_hi, u_lo, inv = _groups(
            _prefix_word(self.family, k["saddr"]),
            _target_word(self.family, k["proto"], k["dport"], k["direction"]),
        )
        known = len(self.hi)
        if not known:
            self.hi, self.lo = u_hi, u_lo
            ids = np.zeros(len(keys), np.intp)
            ids[new] = inv
            return ids
        at, present = _find(self.hi, self.lo, u_hi, u_lo)
        missing = np.flatnonzero(~present)
        ids = carried.copy() if carried is not None else np.zeros(len(keys), np.intp)
        if len(missing):
            before = at[missing]  # where each goes: in front of the table's row there
            self.hi = np.insert(self.hi, before, u_hi[missing])
            self.lo = np.insert(self.lo, before, u_lo[missing])
            # every old row moves down by the groups inserted in front of it
            moved = np.cumsum(np.bincount(before, minlength=known + 1)[:known])
            if carried is not None:
                ids += moved[carried]
            kept = np.flatnonzero(present)
            at[kept] += moved[at[kept]]
            at[missing] = before + np.arange(len(missing))
        ids[new] = at[inv]
        return ids

    def prune(self, ids: np.ndarray) -> np.ndarray:
        """Drop the groups none of ``ids`` (every flow still followed) is in, once they are
        more than half the table: the same ids renumbered."""
        if len(self.hi) <= 2 * len(ids) + PRUNE_SLACK:
            return ids
        used, renumbered = np.unique(ids, return_inverse=True)
        self.hi, self.lo = self.hi[used], self.lo[used]
        return renumbered.reshape(-1).astype(np.intp)


PRUNE_SLACK = 1024
"""Groups of gone flows a table keeps in any case (FlowGroups.prune)."""
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


def _summed(
    hi: np.ndarray,
    lo: np.ndarray,
    ids: np.ndarray,
    packets: np.ndarray,
    nbytes: np.ndarray,
    flags: np.ndarray,
    *,
    flows: bool,
) -> _Part:
    """Rows summed into the groups (hi, lo) that ``ids`` names, a part of the groups that got
    packets, in their order; ``flows``: the rows are flows' (else the kernel's flood table)."""
    n = len(hi)
    g_packets = np.bincount(ids, packets.astype(U64, copy=False), n)
    used = np.flatnonzero(g_packets)
    g_flags = np.zeros(n, np.uint8)
    np.bitwise_or.at(g_flags, ids, flags.astype(np.uint8, copy=False))
    summed = g_packets[used].astype(U64)
    return _Part(
        hi[used],
        lo[used],
        summed,
        np.bincount(ids, nbytes.astype(U64, copy=False), n)[used].astype(U64),
        summed if flows else np.zeros(len(used), U64),
        g_flags[used],
    )


def _merge(a: _Part, b: _Part) -> _Part:
    """Two parts as one, still in (hi, lo) order: the groups of ``b`` that ``a`` has are
    added to its rows, the others inserted where they go (no sort: each part is in order)."""
    if not len(a.hi):
        return b
    at, present = _find(a.hi, a.lo, b.hi, b.lo)
    same, other = at[present], np.flatnonzero(~present)
    merged = _Part(*(column.copy() for column in a))
    merged.packets[same] += b.packets[present]
    merged.bytes[same] += b.bytes[present]
    merged.in_flows[same] += b.in_flows[present]
    merged.flags[same] |= b.flags[present]
    return _Part(
        *(np.insert(m, at[other], column[other]) for m, column in zip(merged, b, strict=True))
    )


def _find(
    hi: np.ndarray, lo: np.ndarray, q_hi: np.ndarray, q_lo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each (q_hi, q_lo) pair: where it is, or goes, in the pairs (hi, lo) (sorted in that
    order, not empty), and whether it is there."""
    at = _search(hi, lo, q_hi, q_lo)
    inside = np.minimum(at, len(hi) - 1)
    return at, (at < len(hi)) & (hi[inside] == q_hi) & (lo[inside] == q_lo)


def _search(hi: np.ndarray, lo: np.ndarray, q_hi: np.ndarray, q_lo: np.ndarray) -> np.ndarray:
    """Where each (q_hi, q_lo) pair goes in the pairs (hi, lo), sorted in that order (as
    np.searchsorted, left): as one word a pair when every prefix is an IPv4 /24, else field by
    field."""
    if int(max(hi.max(initial=0), q_hi.max(initial=0))) < _RANK_LIMIT:
        shift = U64(TARGET_BITS)
        return np.asarray(np.searchsorted((hi << shift) | lo, (q_hi << shift) | q_lo), np.intp)
    table = np.empty(len(hi), _GROUP)
    table["hi"], table["lo"] = hi, lo
    query = np.empty(len(q_hi), _GROUP)
    query["hi"], query["lo"] = q_hi, q_lo
    return np.asarray(np.searchsorted(table, query), np.intp)


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
