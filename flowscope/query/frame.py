"""All live flows of one tick as columns, and the filter language evaluated over them.

The console redraws every tick over up to a million flows, so nothing here makes a Python
object per flow: a tick's two LiveFlows batches (IPv4 and IPv6) become one FlowFrame of numpy
columns (addresses as 16-byte rows, IPv4 in the first four bytes), and a parsed filter is
compiled to a boolean mask over those columns. ``filter_mask`` decides exactly as
``Filter.matches`` does (a test holds both to the same answers). No textual import here.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowscope import abi
from flowscope.collect.collector import LiveFlows
from flowscope.model import NO_DROPS, NO_RESETS, NO_TCP, RETRANS_KINDS, address_text, in_network
from flowscope.query import nodes

ADDR = 16  # bytes per address column row (IPv4 uses the first 4)


@dataclass(frozen=True, slots=True)
class FlowFrame:
    """One tick's live flows, both families, one array per field (all the same length).

    ``first_seen`` and ``last_seen`` are kernel CLOCK_MONOTONIC nanoseconds, like ``now_ns``,
    the monotonic time of the tick, so ages need no clock of the console's own."""

    family: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    proto: np.ndarray
    vlan: np.ndarray
    ifindex: np.ndarray
    direction: np.ndarray
    packets: np.ndarray
    bytes: np.ndarray
    first_seen: np.ndarray
    last_seen: np.ndarray
    tcp_flags: np.ndarray
    bps: np.ndarray
    pps: np.ndarray
    owner: np.ndarray
    """Each flow's model.Owner, or None (an object array): the process of its local socket."""
    retrans: np.ndarray
    """Each flow's TCP connection's retransmitted segments so far (its sent flow; 0 on the
    received one), model.NO_TCP where the flow is not a followed local TCP connection."""
    rtt_us: np.ndarray
    """Each flow's TCP connection's smoothed RTT in microseconds (model.NO_TCP: none)."""
    drops: np.ndarray
    """Each flow's packets the kernel dropped since flowscope started (model.NO_DROPS where
    drops are not followed)."""
    drop_reason: np.ndarray
    """Each flow's drops' main reason, or None (an object array)."""
    resets: np.ndarray
    """Each TCP flow's resets since flowscope started, sent in it (a sent flow) or received
    (model.NO_RESETS where resets are not followed)."""
    retrans_kinds: np.ndarray
    """Each flow's connection's retransmissions so far by kind (n x 3, model.RETRANS_KINDS;
    model.NO_TCP where not told)."""
    now_ns: int = 0

    def __len__(self) -> int:
        return len(self.family)

    @classmethod
    def empty(cls) -> FlowFrame:
        """No flows."""
        return cls.from_live([], 0)

    @classmethod
    def from_live(cls, live: Sequence[LiveFlows], now_ns: int) -> FlowFrame:
        """Concatenate the families' batches of a Tick."""
        parts: dict[str, list[np.ndarray]] = {f: [] for f in _FIELDS}
        for lf in live:
            b = lf.batch
            n = len(b)
            k = b.keys
            width = 4 if b.family == abi.AF_INET else 16
            for side in ("src", "dst"):
                raw = np.zeros((n, ADDR), np.uint8)
                if n:
                    name = "saddr" if side == "src" else "daddr"
                    raw[:, :width] = np.ascontiguousarray(k[name]).view(np.uint8).reshape(n, width)
                parts[side].append(raw)
            parts["family"].append(np.full(n, b.family, np.uint8))
            for name in ("sport", "dport", "proto", "vlan", "ifindex", "direction"):
                parts[name].append(k[name].astype(_DTYPES[name]))
            for name in ("packets", "bytes", "first_seen", "last_seen", "tcp_flags"):
                parts[name].append(getattr(b, name).astype(_DTYPES[name]))
            parts["bps"].append(np.asarray(lf.bps, np.float64))
            parts["pps"].append(np.asarray(lf.pps, np.float64))
            for name in ("owner", "drop_reason"):
                got = getattr(lf, name)
                parts[name].append(
                    np.full(n, None, object) if got is None else np.asarray(got, object)
                )
            for name, none in (
                ("retrans", NO_TCP),
                ("rtt_us", NO_TCP),
                ("drops", NO_DROPS),
                ("resets", NO_RESETS),
            ):
                got = getattr(lf, name)
                parts[name].append(
                    np.full(n, none, np.int64) if got is None else np.asarray(got, np.int64)
                )
            kinds = lf.retrans_kinds
            parts["retrans_kinds"].append(
                np.full((n, KINDS), NO_TCP, np.int64) if kinds is None else kinds.astype(np.int64)
            )
        cols = {f: np.concatenate(parts[f]) if parts[f] else _empty(f) for f in _FIELDS}
        return cls(**cols, now_ns=now_ns)

    def take(self, idx: np.ndarray) -> FlowFrame:
        """The rows picked by an index array or boolean mask."""
        return FlowFrame(**{f: getattr(self, f)[idx] for f in _FIELDS}, now_ns=self.now_ns)

    def src_text(self, i: int) -> str:
        """Source address of row i as text."""
        return addr_text(int(self.family[i]), self.src[i].tobytes())

    def dst_text(self, i: int) -> str:
        """Destination address of row i as text."""
        return addr_text(int(self.family[i]), self.dst[i].tobytes())


_DTYPES: dict[str, type] = {
    "family": np.uint8,
    "src": np.uint8,
    "dst": np.uint8,
    "sport": np.int32,
    "dport": np.int32,
    "proto": np.int32,
    "vlan": np.int32,
    "ifindex": np.int64,
    "direction": np.uint8,
    "packets": np.uint64,
    "bytes": np.uint64,
    "first_seen": np.uint64,
    "last_seen": np.uint64,
    "tcp_flags": np.uint8,
    "bps": np.float64,
    "pps": np.float64,
    "owner": object,
    "retrans": np.int64,
    "rtt_us": np.int64,
    "drops": np.int64,
    "drop_reason": object,
    "resets": np.int64,
    "retrans_kinds": np.int64,
}
_FIELDS = tuple(_DTYPES)
KINDS = len(RETRANS_KINDS)


def _empty(field: str) -> np.ndarray:
    """A column of no flows (addresses and kinds are rows of several values)."""
    width = {"src": ADDR, "dst": ADDR, "retrans_kinds": KINDS}.get(field)
    return np.zeros(0 if width is None else (0, width), _DTYPES[field])


def owner_values(fr: FlowFrame, attr: str, missing: object) -> np.ndarray:
    """One attribute of each flow's owner (``pid``, ``comm``, ``uid``, ``container``), or
    ``missing`` for flows without one: a Python call per flow, so only when a grouping or a
    filter asks for it."""
    get = np.frompyfunc(lambda o: missing if o is None else getattr(o, attr), 1, 1)
    out = get(fr.owner) if len(fr) else np.zeros(0, object)
    if isinstance(missing, int):
        return np.asarray(out, np.int64)
    return np.asarray(out, str)


@functools.lru_cache(maxsize=65536)
def addr_text(family: int, raw: bytes) -> str:
    """Printable address; cached because the same hosts come back every tick."""
    return address_text(family, raw)


def addr_bytes(text: str) -> tuple[int, np.ndarray]:
    """(family, 16-byte row) of an address, the layout of FlowFrame.src and .dst."""
    a = ipaddress.ip_address(text)
    row = np.zeros(ADDR, np.uint8)
    row[: len(a.packed)] = np.frombuffer(a.packed, np.uint8)
    return (abi.AF_INET if a.version == 4 else abi.AF_INET6), row


# --- the filter language over a frame ---------------------------------------------------------

Mask = np.ndarray
IfaceNames = Mapping[int, str]


def iface_name(names: IfaceNames, ifindex: int) -> str:
    """An interface's name, or its index as text when none is known: what the filter's
    ``iface`` matches and what the tables show, so the text on screen can be typed back."""
    return names.get(ifindex, str(ifindex))


def filter_mask(
    f: nodes.Filter | nodes.Expr, frame: FlowFrame, iface_names: IfaceNames | None = None
) -> Mask:
    """Which rows of ``frame`` pass the filter (a boolean array)."""
    expr = f.expr if isinstance(f, nodes.Filter) else f
    return _mask(expr, frame, iface_names or {})


def _mask(e: nodes.Expr, fr: FlowFrame, names: IfaceNames) -> Mask:
    masker = MASKERS.get(type(e))
    if masker is None:  # a test holds MASKERS to every node class: this is a bug, say so
        raise TypeError(f"the live filter has no array form of {type(e).__name__}")
    return masker(e, fr, names)


def _all(e: nodes.All, fr: FlowFrame, names: IfaceNames) -> Mask:
    return np.ones(len(fr), bool)


def _not(e: nodes.Not, fr: FlowFrame, names: IfaceNames) -> Mask:
    return ~_mask(e.operand, fr, names)


def _and(e: nodes.And, fr: FlowFrame, names: IfaceNames) -> Mask:
    out = np.ones(len(fr), bool)
    for p in e.parts:
        out &= _mask(p, fr, names)
    return out


def _or(e: nodes.Or, fr: FlowFrame, names: IfaceNames) -> Mask:
    out = np.zeros(len(fr), bool)
    for p in e.parts:
        out |= _mask(p, fr, names)
    return out


def _host(e: nodes.Host, fr: FlowFrame, names: IfaceNames) -> Mask:
    fam, row = addr_bytes(e.address)
    return _sides(e.side, fr, lambda col: (fr.family == fam) & (col == row).all(axis=1))


def _net(e: nodes.Net, fr: FlowFrame, names: IfaceNames) -> Mask:
    fam = abi.AF_INET if e.network.version == 4 else abi.AF_INET6
    return _sides(e.side, fr, lambda col: (fr.family == fam) & in_network(col, e.network))


def _port(e: nodes.Port, fr: FlowFrame, names: IfaceNames) -> Mask:
    if e.side == "src":
        return _equal(fr.sport, e.port)
    if e.side == "dst":
        return _equal(fr.dport, e.port)
    return np.asarray(_equal(fr.sport, e.port) | _equal(fr.dport, e.port), bool)


def _equals(e: nodes.Equals, fr: FlowFrame, names: IfaceNames) -> Mask:
    if e.column == "proto":
        return _equal(fr.proto, e.value)
    if e.column == "vlan":
        return _equal(fr.vlan, e.value)
    if e.column == "direction":
        want = abi.DIR_INGRESS if e.value == "ingress" else abi.DIR_EGRESS
        return _equal(fr.direction, want)
    # iface: an index without a known name is matched by its number, as the collector names it
    idx = [i for i in np.unique(fr.ifindex) if iface_name(names, int(i)) == e.value]
    return np.asarray(np.isin(fr.ifindex, idx), bool)


def _compare(e: nodes.Compare, fr: FlowFrame, names: IfaceNames) -> Mask:
    col = fr.bytes if e.column == "bytes" else fr.packets
    return np.asarray(_ORDERINGS[e.op](col, np.uint64(e.value)), bool)


def _flags(e: nodes.Flags, fr: FlowFrame, names: IfaceNames) -> Mask:
    return _equal(fr.tcp_flags & e.mask, e.mask)


def _owned(e: nodes.Owned, fr: FlowFrame, names: IfaceNames) -> Mask:
    # a flow without an owner matches nothing, as Owned.matches decides
    column, value = e.column, e.value
    test = np.frompyfunc(lambda o: o is not None and getattr(o, column) == value, 1, 1)
    return np.asarray(test(fr.owner), bool) if len(fr) else np.zeros(0, bool)


def _health(e: nodes.Health, fr: FlowFrame, names: IfaceNames) -> Mask:
    col: np.ndarray = getattr(fr, e.column)
    # not followed (-1) matches nothing, as Health.matches decides
    return np.asarray((col >= 0) & _ORDERINGS[e.op](col, e.value), bool)


def _drop_reason(e: nodes.DropReason, fr: FlowFrame, names: IfaceNames) -> Mask:
    want = nodes.fold_case(e.name)
    test = np.frompyfunc(lambda r: isinstance(r, str) and nodes.fold_case(r) == want, 1, 1)
    return np.asarray(test(fr.drop_reason), bool) if len(fr) else np.zeros(0, bool)


MASKERS: dict[type[nodes.Expr], Callable[[Any, FlowFrame, IfaceNames], Mask]] = {
    nodes.All: _all,
    nodes.Not: _not,
    nodes.And: _and,
    nodes.Or: _or,
    nodes.Host: _host,
    nodes.Net: _net,
    nodes.Port: _port,
    nodes.Equals: _equals,
    nodes.Compare: _compare,
    nodes.Flags: _flags,
    nodes.Owned: _owned,
    nodes.Health: _health,
    nodes.DropReason: _drop_reason,
}
"""The numpy back end of each node class of the filter: every one, or the filter fails loudly
(no silent row-by-row fallback)."""


_ORDERINGS: dict[str, np.ufunc] = {
    ">": np.greater,
    ">=": np.greater_equal,
    "<": np.less,
    "<=": np.less_equal,
    "=": np.equal,
    "!=": np.not_equal,
}
"""nodes.COMPARISONS over a column (the keys are the same)."""


def _equal(col: np.ndarray, value: object) -> Mask:
    """Where a column equals a value, as a boolean array."""
    return np.asarray(col == value, bool)


def _sides(side: str, fr: FlowFrame, test: Callable[[np.ndarray], Mask]) -> Mask:
    if side == "src":
        return test(fr.src)
    if side == "dst":
        return test(fr.dst)
    return np.asarray(test(fr.src) | test(fr.dst), bool)


class RowView:
    """One frame row seen as nodes.FlowRow, so that tests hold the array back end to the row
    back end over the same frame."""

    def __init__(self, fr: FlowFrame, i: int, names: IfaceNames) -> None:
        self.src = fr.src_text(i)
        self.dst = fr.dst_text(i)
        self.sport = int(fr.sport[i])
        self.dport = int(fr.dport[i])
        self.proto = int(fr.proto[i])
        self.vlan = int(fr.vlan[i])
        self.iface = iface_name(names, int(fr.ifindex[i]))
        self.packets = int(fr.packets[i])
        self.bytes = int(fr.bytes[i])
        self.tcp_flags = int(fr.tcp_flags[i])
        self.direction = "ingress" if fr.direction[i] == abi.DIR_INGRESS else "egress"
        self.owner = fr.owner[i]
        self.retrans = int(fr.retrans[i])
        self.rtt_us = int(fr.rtt_us[i])
        self.drops = int(fr.drops[i])
        self.drop_reason = fr.drop_reason[i]
        self.resets = int(fr.resets[i])
