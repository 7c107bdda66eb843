"""From a FlowFrame to the rows the table shows: filter, group, sort, keep the top N.

Everything up to the top N happens on numpy arrays (a mask for the filter, ``np.unique`` for the
groups, ``np.bincount`` for their sums, ``argpartition`` for the top N), so a tick over 100,000
flows makes Python objects only for the N rows on screen. No textual import here.

About 450 lines: each grouping is a key, a membership test and a row in three small places
(_group, _members, _row) that must agree; kept in one module so a new grouping is one edit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from flowscope import abi
from flowscope.model import NO_DROPS, NO_KINDS, NO_RESETS, NO_TCP, Owner
from flowscope.query import nodes
from flowscope.query.frame import (
    FlowFrame,
    addr_bytes,
    addr_text,
    filter_mask,
    iface_name,
    owner_values,
)
from flowscope.vocab import GROUPINGS, owner_text

GROUPS = GROUPINGS
"""Group-by choices, in the order the toggle key cycles through them, with their labels
(vocab.GROUPINGS: history has the same)."""

COLUMNS: dict[str, tuple[str, ...]] = {
    "flow": (
        "src",
        "sport",
        "dst",
        "dport",
        "proto",
        "bps",
        "pps",
        "bytes",
        "packets",
        "age",
        "vlan",
        "flags",
        "retrans",
        "rtt",
        "drops",
        "process",
    ),
    "src": ("src", "flows", "bps", "pps", "bytes", "packets", "age"),
    "dst": ("dst", "flows", "bps", "pps", "bytes", "packets", "age"),
    "pair": ("src", "dst", "flows", "bps", "pps", "bytes", "out", "in", "packets", "age"),
    "dport": ("proto", "dport", "flows", "bps", "pps", "bytes", "packets", "age"),
    "proto": ("proto", "flows", "bps", "pps", "bytes", "packets", "age"),
    "sport": ("proto", "sport", "flows", "bps", "pps", "bytes", "packets", "age"),
    "iface": ("iface", "flows", "bps", "pps", "bytes", "packets", "drops", "age"),
    "vlan": ("vlan", "flows", "bps", "pps", "bytes", "packets", "age"),
    "process": ("process", "flows", "bps", "pps", "bytes", "packets", "age", "user"),
    "user": ("user", "flows", "bps", "pps", "bytes", "packets", "age"),
    "container": ("container", "flows", "bps", "pps", "bytes", "packets", "age"),
    "drop_reason": ("reason", "drops", "flows", "bps", "pps", "bytes", "packets", "age"),
}
"""The table's columns for each grouping (also the sort keys it offers, in this order)."""

DESCENDING = frozenset(
    {"bps", "pps", "bytes", "packets", "flows", "out", "in", "age", "retrans", "rtt", "drops"}
)
"""Sort keys whose natural order is largest first (the rest: smallest first)."""

DEFAULT_TOP = 200


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """What the user chose: grouping, sort, filter, how many rows."""

    group: str = "flow"
    sort: str = "bps"
    reverse: bool = False
    filter: nodes.Filter | None = None
    top: int = DEFAULT_TOP


@dataclass(frozen=True, slots=True)
class Row:
    """One table row (a flow or a group). Fields a grouping does not have are None; for
    'pair', src and dst are the two hosts (src the lower address), and the flows of both
    directions are merged: ``out`` is the bytes the watched interfaces sent (egress flows),
    ``in_`` the bytes they received (ingress flows)."""

    ident: tuple[object, ...]
    family: int
    src: str | None
    dst: str | None
    sport: int | None
    dport: int | None
    proto: int | None
    vlan: int | None
    ifindex: int | None
    direction: int | None
    bps: float
    pps: float
    bytes: int
    packets: int
    age: float
    tcp_flags: int
    flows: int
    out: int | None = None
    in_: int | None = None
    first_seen_ns: int = 0
    last_seen_ns: int = 0
    iface: str | None = None
    """The interface's name, or its index as text (None where the row has no one interface)."""
    owner: Owner | None = None
    """The process of a flow's local socket; for a process, user or container group, the
    process of one of its flows (None: not local, or not known: the ``-`` group)."""
    retrans: int = NO_TCP
    """A flow's TCP connection's retransmitted segments so far (on its sent flow; NO_TCP
    when it is not a followed local TCP connection, and for groups)."""
    rtt_us: int = NO_TCP
    """A flow's TCP connection's smoothed RTT, microseconds (NO_TCP: none)."""
    drops: int = NO_DROPS
    """A flow's packets the kernel dropped since flowscope started, a group's the sum of its
    flows' (NO_DROPS when none of them is followed)."""
    drop_reason: str | None = None
    """The main reason of a flow's drops (None: none)."""
    resets: int = NO_RESETS
    """A TCP flow's resets since flowscope started: sent in it (a sent flow) or received
    (NO_RESETS when not followed, and for groups)."""
    retrans_kinds: tuple[int, int, int] = NO_KINDS
    """A flow's connection's retransmissions so far by kind (RETRANS_KINDS; NO_KINDS when
    not told, and for groups)."""

    @property
    def key(self) -> str:
        """The table's row key: stable across ticks for the same flow or group."""
        return "|".join(str(p) for p in self.ident)


@dataclass(frozen=True, slots=True)
class View:
    """The rows to show, and the totals they came from."""

    rows: list[Row]
    matched: int
    """Flows that passed the filter."""
    groups: int
    """Rows before the top N was taken."""


@dataclass(slots=True)
class _Groups:
    """Aggregates over groups of frame rows; ``rep`` is a frame row index in each group."""

    rep: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    bps: np.ndarray
    pps: np.ndarray
    bytes: np.ndarray
    packets: np.ndarray
    flows: np.ndarray
    first_seen: np.ndarray
    last_seen: np.ndarray
    tcp_flags: np.ndarray
    drops: np.ndarray
    """Packets the kernel dropped of the group's flows (NO_DROPS where none was followed)."""
    out: np.ndarray | None = None
    in_: np.ndarray | None = None


def compute(frame: FlowFrame, spec: ViewSpec, iface_names: Mapping[int, str] | None = None) -> View:
    """The rows of ``frame`` for ``spec``."""
    if spec.filter is not None and not spec.filter.matches_all:
        frame = frame.take(filter_mask(spec.filter, frame, iface_names))
    g = _group(frame, spec.group)
    order = _top(frame, g, spec)
    return View(
        rows=[_row(frame, g, int(i), spec.group, iface_names) for i in order],
        matched=len(frame),
        groups=len(g.rep),
    )


def find(
    frame: FlowFrame, group: str, ident: tuple[object, ...], iface_names: Mapping[int, str] | None
) -> Row | None:
    """The row with this identity in ``frame`` (even outside the top N), or None."""
    mask = _members(frame, group, ident)
    if mask is None or not mask.any():
        return None
    sub = frame.take(mask)
    g = _group(sub, group)
    return _row(sub, g, 0, group, iface_names) if len(g.rep) else None


def reverse_ident(
    ident: tuple[object, ...], *, same_hook: bool = False
) -> tuple[object, ...] | None:
    """The identity of a flow's other direction (None for groups): on the same interface, the
    replies to what it received are what it sent, so the direction flips too; ``same_hook``
    keeps it (a mirror port, or a probe watching ingress only, sees both ways as ingress)."""
    if not ident or ident[0] != "flow":
        return None
    _, fam, src, dst, sport, dport, proto, vlan, ifindex, direction = ident
    if not same_hook:
        direction = abi.DIR_INGRESS if direction == abi.DIR_EGRESS else abi.DIR_EGRESS
    return ("flow", fam, dst, src, dport, sport, proto, vlan, ifindex, direction)


def find_reverse(
    frame: FlowFrame, ident: tuple[object, ...], iface_names: Mapping[int, str] | None
) -> Row | None:
    """The row of a flow's other direction: the flipped direction first, else the same."""
    for same in (False, True):
        rev = reverse_ident(ident, same_hook=same)
        row = find(frame, "flow", rev, iface_names) if rev is not None else None
        if row is not None:
            return row
    return None


# --- grouping -----------------------------------------------------------------------------------


def _as_bytes(*cols: np.ndarray) -> np.ndarray:
    """Each row's columns side by side as one opaque byte string (a numpy void), so that
    np.unique and argsort treat a multi-column key as one value."""
    n = len(cols[0])
    # the width from the dtype, not -1: numpy cannot infer it for zero rows (an empty view)
    parts = [
        np.ascontiguousarray(c)
        .view(np.uint8)
        .reshape(n, c.dtype.itemsize * int(np.prod(c.shape[1:])))
        for c in cols
    ]
    mat = np.ascontiguousarray(np.hstack(parts)) if parts else np.zeros((n, 0), np.uint8)
    return mat.view(np.dtype((np.void, mat.shape[1]))).ravel()


def _pair_order(fr: FlowFrame) -> np.ndarray:
    """True where src is the lower address of the pair (compared byte by byte)."""
    diff = fr.src != fr.dst
    first = diff.argmax(axis=1)
    rows = np.arange(len(fr))
    return np.asarray(fr.src[rows, first] < fr.dst[rows, first], bool)


def _group(fr: FlowFrame, group: str) -> _Groups:
    n = len(fr)
    if group == "flow":
        return _Groups(
            rep=np.arange(n),
            src=fr.src,
            dst=fr.dst,
            bps=fr.bps,
            pps=fr.pps,
            bytes=fr.bytes.astype(np.float64),
            packets=fr.packets.astype(np.float64),
            flows=np.ones(n, np.int64),
            first_seen=fr.first_seen,
            last_seen=fr.last_seen,
            tcp_flags=fr.tcp_flags,
            drops=fr.drops,
        )
    src, dst = fr.src, fr.dst
    out_mask = None
    if group == "src":
        key = _as_bytes(fr.family, fr.src)
    elif group == "dst":
        key = _as_bytes(fr.family, fr.dst)
    elif group == "pair":
        out_mask = _pair_order(fr)
        src = np.where(out_mask[:, None], fr.src, fr.dst)
        dst = np.where(out_mask[:, None], fr.dst, fr.src)
        key = _as_bytes(fr.family, src, dst)
    elif group == "dport":
        # by direction too: a sent flow's destination port is its peer's (a client's
        # ephemeral port when this host serves), so received and sent stay apart
        key = _as_bytes(fr.proto, fr.dport, fr.direction)
    elif group == "sport":  # by direction too, as dport
        key = _as_bytes(fr.proto, fr.sport, fr.direction)
    elif group == "proto":
        key = _as_bytes(fr.proto)
    elif group == "iface":
        key = _as_bytes(fr.ifindex)
    elif group == "vlan":
        key = _as_bytes(fr.vlan)
    elif group in OWNER_KEYS:
        key = _owner_key(fr, group)
    elif group == "drop_reason":
        key = _reason_key(fr)
    else:
        raise ValueError(f"unknown grouping {group!r}")
    if n == 0:
        rep = inv = np.zeros(0, np.intp)
    else:
        _, rep, inv = np.unique(key, return_index=True, return_inverse=True)
    m = len(rep)

    def total(w: np.ndarray) -> np.ndarray:
        return np.bincount(inv, weights=w.astype(np.float64), minlength=m)

    first = np.full(m, np.iinfo(np.uint64).max, np.uint64)
    np.minimum.at(first, inv, fr.first_seen)
    last = np.zeros(m, np.uint64)
    np.maximum.at(last, inv, fr.last_seen)
    flags = np.zeros(m, np.uint8)
    np.bitwise_or.at(flags, inv, fr.tcp_flags)
    # drops: the followed flows' sum; NO_DROPS where no flow of the group was followed
    followed = fr.drops >= 0
    drops = np.bincount(inv, weights=np.where(followed, fr.drops, 0), minlength=m)
    any_followed = np.bincount(inv, weights=followed, minlength=m) > 0
    g = _Groups(
        rep=rep,
        src=src[rep],
        dst=dst[rep],
        bps=total(fr.bps),
        pps=total(fr.pps),
        bytes=total(fr.bytes),
        packets=total(fr.packets),
        flows=np.bincount(inv, minlength=m),
        first_seen=first,
        last_seen=last,
        tcp_flags=flags,
        drops=np.where(any_followed, drops, NO_DROPS).astype(np.int64),
    )
    if out_mask is not None:
        b = fr.bytes.astype(np.float64)
        sent = fr.direction == abi.DIR_EGRESS
        g.out = np.bincount(inv, weights=np.where(sent, b, 0.0), minlength=m)
        g.in_ = np.bincount(inv, weights=np.where(sent, 0.0, b), minlength=m)
    return g


OWNER_KEYS: dict[str, tuple[str, object]] = {
    "process": ("pid", -1),
    "user": ("uid", -1),
    "container": ("container", ""),
}
"""The owner attribute each owner grouping sums by, and its value for flows without one:
those make one group (``-``); a container grouping also puts processes outside any
container there."""


def _owner_key(fr: FlowFrame, group: str) -> np.ndarray:
    attr, missing = OWNER_KEYS[group]
    return owner_values(fr, attr, missing)


def _reason_key(fr: FlowFrame) -> np.ndarray:
    """Each flow's main drop reason, "" for flows without drops (one group, ``-``)."""
    if not len(fr):
        return np.zeros(0, str)
    get = np.frompyfunc(lambda r: r if isinstance(r, str) else "", 1, 1)
    return np.asarray(get(fr.drop_reason), str)


def _members(fr: FlowFrame, group: str, ident: tuple[object, ...]) -> np.ndarray | None:
    """Which frame rows belong to the row with this identity."""
    if not ident or ident[0] != group:
        return None
    try:
        if group == "flow":
            _, _fam, src, dst, sport, dport, proto, vlan, ifindex, direction = ident
            m = _host(fr.src, fr, str(src)) & _host(fr.dst, fr, str(dst))
            return np.asarray(
                m
                & (fr.sport == sport)
                & (fr.dport == dport)
                & (fr.proto == proto)
                & (fr.vlan == vlan)
                & (fr.ifindex == ifindex)
                & (fr.direction == direction),
                bool,
            )
        if group in ("src", "dst"):
            return _host(fr.src if group == "src" else fr.dst, fr, str(ident[2]))
        if group == "pair":
            a, b = str(ident[2]), str(ident[3])
            one_way = _host(fr.src, fr, a) & _host(fr.dst, fr, b)
            return np.asarray(one_way | (_host(fr.src, fr, b) & _host(fr.dst, fr, a)), bool)
        if group == "dport":
            return np.asarray(
                (fr.proto == ident[1]) & (fr.dport == ident[2]) & (fr.direction == ident[3]), bool
            )
        if group == "sport":
            return np.asarray(
                (fr.proto == ident[1]) & (fr.sport == ident[2]) & (fr.direction == ident[3]), bool
            )
        if group == "proto":
            return np.asarray(fr.proto == ident[1], bool)
        if group == "iface":
            return np.asarray(fr.ifindex == ident[1], bool)
        if group == "vlan":
            return np.asarray(fr.vlan == ident[1], bool)
        if group in OWNER_KEYS:
            return np.asarray(_owner_key(fr, group) == ident[1], bool)
        if group == "drop_reason":
            return np.asarray(_reason_key(fr) == ident[1], bool)
    except ValueError:
        return None
    return None


def _host(col: np.ndarray, fr: FlowFrame, text: str) -> np.ndarray:
    fam, raw = addr_bytes(text)
    return np.asarray((fr.family == fam) & (col == raw).all(axis=1), bool)


# --- sorting ------------------------------------------------------------------------------------


def _sort_values(fr: FlowFrame, g: _Groups, key: str) -> np.ndarray:
    rep = g.rep
    if key in ("src", "dst"):
        col = g.src if key == "src" else g.dst
        return _as_bytes(fr.family[rep], col)
    simple = {
        "bps": g.bps,
        "pps": g.pps,
        "bytes": g.bytes,
        "packets": g.packets,
        "flows": g.flows,
        "flags": g.tcp_flags,
    }
    if key in simple:
        return np.asarray(simple[key], np.float64)
    if key == "age":
        return (fr.now_ns - g.first_seen.astype(np.float64)).astype(np.float64)
    if key in ("out", "in"):
        arr = g.out if key == "out" else g.in_
        return np.zeros(len(rep)) if arr is None else arr
    if key in ("sport", "dport", "proto", "vlan", "iface"):
        column: np.ndarray = getattr(fr, "ifindex" if key == "iface" else key)
        return np.asarray(column[rep], np.float64)
    if key in ("process", "user", "container"):
        return np.asarray([owner_text(fr.owner[r], key) for r in rep.tolist()], str)
    if key == "drops":  # groups of flows not followed (-1) sort last
        return np.asarray(g.drops, np.float64)
    if key == "reason":
        return np.asarray(_reason_key(fr)[rep])
    if key in ("retrans", "rtt"):  # flows not followed (-1) sort last
        column = fr.retrans if key == "retrans" else fr.rtt_us
        return np.asarray(column[rep], np.float64)
    raise ValueError(f"unknown sort key {key!r}")


def _top(fr: FlowFrame, g: _Groups, spec: ViewSpec) -> np.ndarray:
    """Group indices of the top N in display order (ties in a fixed order: by index)."""
    m = len(g.rep)
    values = _sort_values(fr, g, spec.sort)
    descending = (spec.sort in DESCENDING) != spec.reverse
    n = min(spec.top, m)
    if values.dtype.kind in "VU":
        order = np.argsort(values, kind="stable")
        return order[::-1][:n] if descending else order[:n]
    v = -values if descending else values
    if n < m:
        cand = np.sort(np.argpartition(v, n - 1)[:n]) if n else np.zeros(0, np.intp)
    else:
        cand = np.arange(m)
    return cand[np.argsort(v[cand], kind="stable")]


def _row(
    fr: FlowFrame, g: _Groups, i: int, group: str, iface_names: Mapping[int, str] | None
) -> Row:
    r = int(g.rep[i])
    fam = int(fr.family[r])
    first = int(g.first_seen[i])
    src: str | None = addr_text(fam, g.src[i].tobytes())
    dst: str | None = addr_text(fam, g.dst[i].tobytes())
    sport = dport = proto = vlan = ifindex = direction = None
    out = in_ = None
    if group == "flow":
        sport, dport = int(fr.sport[r]), int(fr.dport[r])
        proto, vlan = int(fr.proto[r]), int(fr.vlan[r])
        ifindex, direction = int(fr.ifindex[r]), int(fr.direction[r])
        ident: tuple[object, ...] = (
            "flow", fam, src, dst, sport, dport, proto, vlan, ifindex, direction
        )  # fmt: skip
    elif group == "src":
        ident, dst = ("src", fam, src), None
    elif group == "dst":
        ident, src = ("dst", fam, dst), None
    elif group == "pair":
        assert g.out is not None and g.in_ is not None
        ident = ("pair", fam, src, dst)
        out, in_ = int(g.out[i]), int(g.in_[i])
    elif group == "iface":
        src = dst = None
        ifindex = int(fr.ifindex[r])
        ident = ("iface", ifindex)
    elif group == "vlan":
        src = dst = None
        vlan = int(fr.vlan[r])
        ident = ("vlan", vlan)
    elif group in OWNER_KEYS:
        src = dst = None
        ident = (group, _owner_key(fr.take(np.array([r])), group)[0].item())
    elif group == "drop_reason":
        src = dst = None
        ident = (group, _reason_key(fr.take(np.array([r])))[0].item())
    else:
        src = dst = None
        proto = int(fr.proto[r])
        if group in ("dport", "sport"):
            port, direction = int(getattr(fr, group)[r]), int(fr.direction[r])
            if group == "dport":
                dport = port
            else:
                sport = port
            ident = (group, proto, port, direction)
        else:
            ident = ("proto", proto)
    return Row(
        ident=ident,
        family=fam,
        src=src,
        dst=dst,
        sport=sport,
        dport=dport,
        proto=proto,
        vlan=vlan,
        ifindex=ifindex,
        direction=direction,
        bps=float(g.bps[i]),
        pps=float(g.pps[i]),
        bytes=int(g.bytes[i]),
        packets=int(g.packets[i]),
        age=max((fr.now_ns - first) / 1e9, 0.0) if first else 0.0,
        tcp_flags=int(g.tcp_flags[i]),
        flows=int(g.flows[i]),
        out=out,
        in_=in_,
        first_seen_ns=first,
        last_seen_ns=int(g.last_seen[i]),
        iface=None if ifindex is None else iface_name(iface_names or {}, ifindex),
        owner=fr.owner[r],
        retrans=int(fr.retrans[r]) if group == "flow" else NO_TCP,
        rtt_us=int(fr.rtt_us[r]) if group == "flow" else NO_TCP,
        drops=int(g.drops[i]),
        drop_reason=fr.drop_reason[r] if group in ("flow", "drop_reason") else None,
        resets=int(fr.resets[r]) if group == "flow" else NO_RESETS,
        retrans_kinds=_kinds(fr.retrans_kinds[r]) if group == "flow" else NO_KINDS,
    )


def _kinds(row: np.ndarray) -> tuple[int, int, int]:
    """A frame row's retransmissions by kind as a tuple."""
    fast, rto, probe = (int(v) for v in row)
    return (fast, rto, probe)
