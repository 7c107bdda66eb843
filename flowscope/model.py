"""Flows as the rest of flowscope sees them: keys, statistics, new-flow events.

Pure data and pure functions, no I/O: the probe decodes kernel structs into these, the
collector, store and console consume them.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from socket import AF_INET, AF_INET6, inet_ntop
from typing import Any, TypeVar, dataclass_transform

import numpy as np

from flowscope import abi

PROTO_NAMES: dict[int, str] = {
    1: "icmp",
    2: "igmp",
    6: "tcp",
    17: "udp",
    33: "dccp",
    41: "ipv6",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "icmp6",
    132: "sctp",
    136: "udplite",
}
PROTO_NUMBERS: dict[str, int] = {name: num for num, name in PROTO_NAMES.items()}

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def per_flow(cls: type[_T]) -> type[_T]:
    """A dataclass made once per flow, record or new-flow event: frozen to mypy (no code assigns
    to one), a plain slotted dataclass at run time. A frozen dataclass sets each field through
    object.__setattr__, six times slower to make (1.33 us against 0.20 us for a FlowRecord),
    and a tick in which many flows end, or a burst of new flows, pays that per flow."""
    return dataclass(slots=True)(cls)


@dataclass_transform(frozen_default=True, order_default=True)
def per_flow_key(cls: type[_T]) -> type[_T]:
    """per_flow for FlowKey, which is also ordered and hashed (a dict key everywhere)."""
    return dataclass(slots=True, order=True, unsafe_hash=True)(cls)


TCP_FLAG_LETTERS = "FSRPAUEC"  # bit 0 (FIN) to bit 7 (CWR), as tcpdump and nfdump print them


def proto_name(proto: int) -> str:
    """The usual lower-case name of an IP protocol, or its number."""
    return PROTO_NAMES.get(proto, str(proto))


def tcp_flags_text(flags: int) -> str:
    """TCP flags as letters in a fixed order (CEUAPRSF), '.' for each flag not set."""
    return "".join(TCP_FLAG_LETTERS[bit] if flags & (1 << bit) else "." for bit in range(7, -1, -1))


@per_flow_key
class FlowKey:
    """The 5-tuple plus where the packets were seen. Ports are host-order integers; for ICMP
    and ICMPv6 the source port is 0 and the destination port is type * 256 + code."""

    family: int
    src: str
    dst: str
    sport: int
    dport: int
    proto: int
    vlan: int = 0
    ifindex: int = 0
    direction: int = abi.DIR_INGRESS

    @property
    def icmp_type_code(self) -> tuple[int, int] | None:
        """(type, code) for ICMP and ICMPv6 flows, else None."""
        if self.proto in (1, 58):
            return self.dport >> 8, self.dport & 0xFF
        return None

    def reversed(self) -> FlowKey:
        """The key of the other direction of the same conversation."""
        return FlowKey(
            self.family,
            self.dst,
            self.src,
            self.dport,
            self.sport,
            self.proto,
            self.vlan,
            self.ifindex,
            self.direction,
        )


@dataclass(frozen=True, slots=True)
class FlowStats:
    """Per-flow counters summed over CPUs. Times are kernel CLOCK_MONOTONIC nanoseconds."""

    packets: int
    bytes: int
    ip_bytes: int
    first_seen: int
    last_seen: int
    tcp_flags: int


@per_flow
class FlowEvent:
    """A ring buffer record: a flow was inserted, or could not be (map_full)."""

    key: FlowKey
    timestamp: int
    length: int
    map_full: bool


_LOW_PREFIX = bytes(10)


def address_text(family: int, raw: bytes) -> str:
    """The printable form of a 4- or 16-byte address in network order, as ipaddress prints it.

    inet_ntop, seven times faster than ipaddress for IPv6 (every IPv6 key a tick decodes goes
    through here), prints the same text (RFC 5952: the first longest run of two or more zero
    groups compressed, lower case) but for addresses whose first 80 bits are zero, where it
    writes an embedded IPv4 address (``::ffff:1.2.3.4``): those go to ipaddress."""
    if family == abi.AF_INET:
        return inet_ntop(AF_INET, bytes(raw[:4]))
    address = bytes(raw[:16])
    if address[:10] == _LOW_PREFIX:
        return str(ipaddress.IPv6Address(address))
    return inet_ntop(AF_INET6, address)


def key_from_struct(family: int, k: abi.FlowKey4 | abi.FlowKey6 | abi.FlowEvent) -> FlowKey:
    """Decode a kernel key (or the key part of an event) into a FlowKey."""
    return FlowKey(
        family=family,
        src=address_text(family, bytes(k.saddr)),
        dst=address_text(family, bytes(k.daddr)),
        sport=int.from_bytes(bytes(k.sport), "big"),
        dport=int.from_bytes(bytes(k.dport), "big"),
        proto=k.proto,
        vlan=k.vlan,
        ifindex=k.ifindex,
        direction=k.direction,
    )


def opaque_rows(rows: np.ndarray) -> np.ndarray:
    """Each row of a structured array as one opaque byte string (a numpy void, pad bytes
    included): rows then sort, search and compare as single values."""
    return np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize)))


def take_rows(rows: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``rows[index]`` for a structured array (``index``: positions or a boolean mask), the
    rows moved as whole machine words: numpy gathers a structured array field by field, six
    times slower for a million flow keys."""
    if index.dtype == np.bool_:
        index = np.flatnonzero(index)
    rows = np.ascontiguousarray(rows)
    size = rows.dtype.itemsize
    if size % 8 == 0:
        words = rows.view(np.uint64).reshape(len(rows), size // 8)
        return np.take(words, index, axis=0).view(rows.dtype).reshape(-1)
    return np.take(opaque_rows(rows), index).view(rows.dtype)


def in_network(addr: np.ndarray, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> np.ndarray:
    """Which rows of address bytes (n x 4 or 16, network order; an IPv4 address in the first
    four of 16) are in ``net`` (the caller checks the family): the live filter's ``net`` and
    a block rule's share both ask it."""
    packed = np.frombuffer(net.network_address.packed, np.uint8)
    full, rest = divmod(net.prefixlen, 8)
    inside = (addr[:, :full] == packed[:full]).all(axis=1)
    if rest:
        mask = np.uint8((0xFF << (8 - rest)) & 0xFF)
        inside &= (addr[:, full] & mask) == packed[full]
    return np.asarray(inside, bool)


def key_from_row(family: int, k: np.void) -> FlowKey:
    """Decode one row of a KEY4_DTYPE or KEY6_DTYPE array (a kernel key) into a FlowKey."""
    return FlowKey(
        family=family,
        src=address_text(family, k["saddr"].tobytes()),
        dst=address_text(family, k["daddr"].tobytes()),
        sport=int(k["sport"]),
        dport=int(k["dport"]),
        proto=int(k["proto"]),
        vlan=int(k["vlan"]),
        ifindex=int(k["ifindex"]),
        direction=int(k["direction"]),
    )


def keys_from_rows(family: int, keys: np.ndarray) -> list[FlowKey]:
    """Decode many rows of a KEY4_DTYPE or KEY6_DTYPE array at once, each as key_from_row
    would (about ten times faster): the collector makes a record of every flow that ends, and
    a flood that stops ends hundreds of thousands in one tick."""
    if not len(keys):
        return []
    return _keys(np.full(len(keys), family, np.int64), keys)


def _keys(family: np.ndarray, rows: np.ndarray) -> list[FlowKey]:
    """The FlowKey of each row of an array with the key's fields (a kernel key, a ring buffer
    event), ``family`` given per row: column lists, no ctypes struct or numpy row each."""
    columns = zip(
        family.tolist(),
        address_texts(family, rows["saddr"]),
        address_texts(family, rows["daddr"]),
        rows["sport"].tolist(),
        rows["dport"].tolist(),
        rows["proto"].tolist(),
        rows["vlan"].tolist(),
        rows["ifindex"].tolist(),
        rows["direction"].tolist(),
        strict=True,
    )
    return [FlowKey(*c) for c in columns]


def event_from_bytes(data: bytes) -> FlowEvent:
    """Decode one ring buffer record."""
    ev = abi.FlowEvent.from_buffer_copy(data[: ctypes.sizeof(abi.FlowEvent)])
    return FlowEvent(
        key=key_from_struct(ev.family, ev),
        timestamp=ev.timestamp,
        length=ev.length,
        map_full=bool(ev.flags & abi.EVENT_MAP_FULL),
    )


EVENT_SIZE = ctypes.sizeof(abi.FlowEvent)


def events_from_records(records: Sequence[bytes]) -> list[FlowEvent]:
    """Decode many ring buffer records given as bytes, each as event_from_bytes would."""
    if not records:
        return []
    raw = b"".join(r[:EVENT_SIZE].ljust(EVENT_SIZE, b"\0") for r in records)
    return events_from_array(np.frombuffer(raw, dtype=abi.EVENT_DTYPE))


OCTETS = [str(i) for i in range(256)]


def address_texts(family: np.ndarray, raw: np.ndarray) -> list[str]:
    """The printable form of many addresses at once (``raw``: rows of 16 bytes, as the
    program writes them, IPv4 in the first 4), as address_text gives each. Each distinct
    address is printed once (a tick's or a burst's flows mostly share their local address, and
    the rows then share one str); IPv4 goes through a table of the 256 octets, about twice as
    fast as inet_ntop on each."""
    v4 = family == abi.AF_INET
    if v4.all():
        return _ipv4_texts(raw[:, :4])
    out = np.empty(len(family), object)
    if v4.any():
        out[v4] = _ipv4_texts(raw[v4, :4])
    v6 = ~v4
    rows = np.ascontiguousarray(raw[v6, :16]).view("V16").reshape(-1)
    uniq, inv = np.unique(rows, return_inverse=True)
    texts = [address_text(abi.AF_INET6, row.tobytes()) for row in uniq]
    out[v6] = np.array(texts, object)[inv.reshape(-1)]
    return list(out.tolist())


def _ipv4_texts(rows: np.ndarray) -> list[str]:
    """The dotted quads of rows of 4 address bytes, each distinct one printed once."""
    words = np.ascontiguousarray(rows).view(">u4").reshape(-1)
    uniq, inv = np.unique(words, return_inverse=True)
    octets = OCTETS.__getitem__
    texts = [
        ".".join(map(octets, row))
        for row in uniq.astype(">u4").view(np.uint8).reshape(-1, 4).tolist()
    ]
    return list(np.array(texts, object)[inv.reshape(-1)].tolist())


def events_from_array(ev: np.ndarray) -> list[FlowEvent]:
    """Decode an array of struct flow_event (abi.EVENT_DTYPE), as the ring buffer gives them.

    Column lists instead of a ctypes struct per record: about five times faster, which is what
    lets user space keep up with a burst of new flows."""
    if not len(ev):
        return []
    full = abi.EVENT_MAP_FULL
    columns = zip(
        _keys(ev["family"], ev),
        ev["timestamp"].tolist(),
        ev["length"].tolist(),
        ev["flags"].tolist(),
        strict=True,
    )
    return [FlowEvent(key, ts, length, bool(flags & full)) for key, ts, length, flags in columns]


U64_MAX = np.iinfo(np.uint64).max


def sum_percpu(
    values: np.ndarray,
    packets: np.ndarray,
    nbytes: np.ndarray,
    ip_bytes: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    flags: np.ndarray,
) -> None:
    """Sum per-CPU flow values (shape: flows x CPUs, abi.VALUE_DTYPE) into the given columns
    (one row per flow). A CPU that never saw the flow has zero packets and does not count for
    first seen; a flow no CPU saw has first seen 0."""
    ncpus = values.shape[1]
    if ncpus == 0:
        for column in (packets, nbytes, ip_bytes, first, last, flags):
            column[:] = 0
        return
    # A loop over CPUs (a handful) on whole columns: faster than reductions along axis 1 of a
    # structured array, which is what a million-flow drain spends its time on.
    cpu = values[:, 0]
    packets[:] = cpu["packets"]
    nbytes[:] = cpu["bytes"]
    ip_bytes[:] = cpu["ip_bytes"]
    np.copyto(first, cpu["first_seen"])
    np.copyto(first, U64_MAX, where=cpu["packets"] == 0)
    last[:] = cpu["last_seen"]
    flags[:] = cpu["tcp_flags"]
    for c in range(1, ncpus):
        cpu = values[:, c]
        packets += cpu["packets"]
        nbytes += cpu["bytes"]
        ip_bytes += cpu["ip_bytes"]
        np.minimum(first, np.where(cpu["packets"] > 0, cpu["first_seen"], U64_MAX), out=first)
        np.maximum(last, cpu["last_seen"], out=last)
        flags |= cpu["tcp_flags"]
    first[first == U64_MAX] = 0


@dataclass(frozen=True, slots=True)
class FlowBatch:
    """Many flows of one family as columns: the decoded form of a map read.

    ``keys`` is a structured array with the kernel key layout (abi.KEY4_DTYPE or KEY6_DTYPE);
    the other arrays hold one summed value per key. Kept as arrays so a drain of a million
    flows needs no Python object per flow; ``records()`` makes objects when they are wanted."""

    family: int
    keys: np.ndarray
    packets: np.ndarray
    bytes: np.ndarray
    ip_bytes: np.ndarray
    first_seen: np.ndarray
    last_seen: np.ndarray
    tcp_flags: np.ndarray

    @classmethod
    def from_percpu(cls, family: int, keys: np.ndarray, values: np.ndarray) -> FlowBatch:
        """Sum per-CPU values (shape: flows x CPUs, abi.VALUE_DTYPE): see sum_percpu."""
        out = cls.empty(family, len(keys), keys.dtype)
        out.fill(slice(None), keys, values)
        return out

    @classmethod
    def empty(cls, family: int, n: int, key_dtype: np.dtype) -> FlowBatch:
        """n rows to fill (``fill``): the keys zeroed, since their pad bytes are compared
        (opaque_rows) and never written, the rest not initialised."""
        packets, nbytes, ip_bytes, first, last = (np.empty(n, np.uint64) for _ in range(5))
        flags = np.empty(n, np.uint8)
        return cls(family, np.zeros(n, key_dtype), packets, nbytes, ip_bytes, first, last, flags)

    def fill(self, rows: slice, keys: np.ndarray, values: np.ndarray) -> None:
        """Rows ``rows`` from a map read: its keys, and its per-CPU values summed."""
        self.keys[rows] = keys
        sum_percpu(
            values,
            self.packets[rows],
            self.bytes[rows],
            self.ip_bytes[rows],
            self.first_seen[rows],
            self.last_seen[rows],
            self.tcp_flags[rows],
        )

    @property
    def columns(self) -> tuple[np.ndarray, ...]:
        """keys, packets, bytes, ip_bytes, first_seen, last_seen, tcp_flags."""
        return (
            self.keys,
            self.packets,
            self.bytes,
            self.ip_bytes,
            self.first_seen,
            self.last_seen,
            self.tcp_flags,
        )

    @classmethod
    def from_columns(cls, family: int, columns: Sequence[np.ndarray]) -> FlowBatch:
        """The batch of ``columns`` in the order of FlowBatch.columns."""
        keys, packets, nbytes, ip_bytes, first, last, flags = columns
        return cls(family, keys, packets, nbytes, ip_bytes, first, last, flags)

    def __len__(self) -> int:
        return len(self.keys)

    def key(self, i: int) -> FlowKey:
        """The FlowKey of row i."""
        return key_from_row(self.family, self.keys[i])

    def stats(self, i: int) -> FlowStats:
        """The FlowStats of row i."""
        return FlowStats(
            packets=int(self.packets[i]),
            bytes=int(self.bytes[i]),
            ip_bytes=int(self.ip_bytes[i]),
            first_seen=int(self.first_seen[i]),
            last_seen=int(self.last_seen[i]),
            tcp_flags=int(self.tcp_flags[i]),
        )

    def records(self) -> Iterator[tuple[FlowKey, FlowStats]]:
        """Each flow as (FlowKey, FlowStats)."""
        for i in range(len(self)):
            yield self.key(i), self.stats(i)


_CONTAINER_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"docker[-/]([0-9a-f]{12})[0-9a-f]*(?:\.scope)?$"), "docker:"),
    (re.compile(r"cri-containerd-([0-9a-f]{12})[0-9a-f]*\.scope$"), "containerd:"),
    (re.compile(r"crio-([0-9a-f]{12})[0-9a-f]*\.scope$"), "crio:"),
    (re.compile(r"libpod-([0-9a-f]{12})[0-9a-f]*\.scope$"), "podman:"),
    (re.compile(r"kubepods.*/([0-9a-f]{12})[0-9a-f]{52}$"), "k8s:"),
)


@functools.lru_cache(maxsize=4096)
def container_of(cgroup: str) -> str:
    """The container or systemd unit a cgroup v2 path stands for, or "" when it is neither:
    ``docker:0123456789ab``, ``containerd:...``, ``crio:...``, ``podman:...``, ``k8s:...``
    (twelve hex digits of the container id, as ``docker ps`` shows them), else the innermost
    ``*.service`` (``nginx.service``). Cached: a host has a few cgroups, and the history
    writer asks for every record that has a process (a few regular expressions each)."""
    for pattern, prefix in _CONTAINER_PATTERNS:
        m = pattern.search(cgroup)
        if m:
            return prefix + m.group(1)
    for part in reversed(cgroup.split("/")):
        if part.endswith(".service"):
            return part
    return ""


NO_TCP = -1
"""The TCP health fields of a flow that is not a local TCP connection flowscope follows."""
RETRANS_KINDS: tuple[str, ...] = ("fast", "rto", "probe")
"""The kinds of a TCP retransmission, by the congestion state the socket resent in: fast
retransmit (Recovery: duplicate ACKs, SACK, RACK), after a retransmission timeout (Loss), tail
loss probe (Open, Disorder, CWR). The order of FlowRecord.retrans_kinds."""
NO_KINDS: tuple[int, int, int] = (NO_TCP, NO_TCP, NO_TCP)
"""The retransmission kinds of a flow whose connection the socket hooks do not follow with
them (older than flowscope, not TCP, a kernel without the BTF to tell them apart)."""
NO_DROPS = -1
"""The drops of a flow when kernel drops are not followed (no BTF, or not asked for)."""
NO_RESETS = -1
"""The TCP resets of a flow when resets are not followed (no BTF, or not asked for)."""


@dataclass(frozen=True, slots=True)
class Owner:
    """The process that owns a flow's local socket: the one that created the socket, as the
    kernel saw it then (bpf/owners.c), or as /proc shows it for a socket older than flowscope.
    ``cgroup`` is the cgroup v2 path (``/system.slice/nginx.service``), "" when unknown."""

    pid: int
    comm: str
    uid: int
    cgroup: str = ""

    @property
    def label(self) -> str:
        """``comm[pid]``, as the console's process column shows it."""
        return f"{self.comm}[{self.pid}]"

    @property
    def container(self) -> str:
        """The container or systemd unit (container_of), "" when none."""
        return container_of(self.cgroup)


@dataclass(frozen=True, slots=True)
class SocketEvent:
    """A local socket and its owner: a struct sock_event (abi.SockEvent) decoded, or a socket
    found by the start-up scan. Addresses are text, IPv4-mapped IPv6 ones as IPv4; ``kind``
    is abi.SOCK_CONNECT (remote known), SOCK_LISTEN or SOCK_BIND (remote "" and 0);
    ``owner`` is None when the kernel did not see the socket created (it predates the
    hooks)."""

    kind: int
    family: int
    proto: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    netns: int
    owner: Owner | None
    cgroup_id: int = 0


def _socket_address(family: int, raw: bytes) -> tuple[int, str]:
    """(family, text) of an address, an IPv4-mapped IPv6 one as IPv4; formatted by inet_ntop,
    as collect.owners formats the flows it matches with them."""
    if family == abi.AF_INET6 and raw[:12] == b"\0" * 10 + b"\xff\xff":
        return abi.AF_INET, inet_ntop(AF_INET, raw[12:16])
    if family == abi.AF_INET:
        return family, inet_ntop(AF_INET, raw[:4])
    return family, inet_ntop(AF_INET6, raw[:16])


def socket_event_from_bytes(data: bytes) -> SocketEvent:
    """Decode one record of the sock_events ring buffer. The owner's cgroup is left as its id
    (``cgroup_id``): the path is looked up in user space (kernel.owners.CgroupPaths)."""
    ev = abi.SockEvent.from_buffer_copy(data[: ctypes.sizeof(abi.SockEvent)])
    family, laddr = _socket_address(ev.family, bytes(ev.laddr))
    raddr = ""
    if ev.kind == abi.SOCK_CONNECT:
        _, raddr = _socket_address(ev.family, bytes(ev.raddr))
    o = ev.owner
    owner = None
    if o.pid:
        owner = Owner(int(o.pid), o.comm.decode(errors="replace"), int(o.uid))
    return SocketEvent(
        kind=int(ev.kind),
        family=family,
        proto=int(ev.proto),
        laddr=laddr,
        lport=int(ev.lport),
        raddr=raddr,
        rport=int(ev.rport),
        netns=int(ev.netns),
        owner=owner,
        cgroup_id=int(o.cgroup_id),
    )


END_REASONS = ("idle", "active", "fin", "rst", "evicted", "shutdown", "crash")
"""Why a record was written. ``crash``: the part of a live flow that the last tick before the
process died had counted and no record held yet, written at the next start (PendingFlows)."""


@per_flow
class FlowRecord:
    """One finished (or active-timeout) flow record, as history keeps it.

    Times are wall-clock Unix seconds (float, UTC); the store writes them as ISO 8601 text."""

    key: FlowKey
    iface: str
    packets: int
    bytes: int
    ip_bytes: int
    first_seen: float
    last_seen: float
    tcp_flags: int
    end_reason: str
    owner: Owner | None = None
    """The process of the flow's local socket; None when it is not local or not known."""
    retrans: int = NO_TCP
    """TCP segments the flow's connection sent again during the record (its sent flow; 0 on
    the received one); NO_TCP when the flow is not a local TCP connection flowscope follows."""
    retrans_kinds: tuple[int, int, int] = NO_KINDS
    """Of ``retrans``, the segments resent as each of RETRANS_KINDS (fast, rto, probe); they
    add up to it but for SYN retransmissions, which come before a connection is followed."""
    rtt_us: int = NO_TCP
    """The connection's smoothed round-trip time at the record's end, microseconds."""
    rtt_min_us: int = NO_TCP
    """The smallest round-trip time the connection has seen, microseconds."""
    drops: int = NO_DROPS
    """Packets of the flow the kernel dropped during the record (skb:kfree_skb, any reason);
    NO_DROPS when drops are not followed."""
    drop_reason: str = ""
    """The kernel's reason for most of those drops (enum skb_drop_reason, without its
    SKB_DROP_REASON_ prefix); empty without drops."""
    resets: int = NO_RESETS
    """TCP resets that travelled in the flow during the record: the kernel sent them (a sent
    flow) or received and acted on them (a received flow); NO_RESETS when not followed."""


@dataclass(frozen=True, slots=True)
class FloodRow:
    """One source prefix's packets to one target in one tick: IPv4 /24 or IPv6 /64, protocol,
    destination port and direction, over every interface. ``packets`` counts both what flows
    took (their per-tick deltas) and what the full flow map could not take (the kernel's flood
    table); ``in_flows`` is the first part."""

    family: int
    prefix: str
    """'198.18.7.0/24' or '2001:db8:1:2::/64'."""
    proto: int
    dport: int
    direction: int
    tcp_flags: int
    """The OR of the flags of its flows and of its flood-table packets."""
    packets: int
    bytes: int
    in_flows: int


@dataclass(frozen=True, slots=True)
class TickFlows:
    """One family's flows of a tick (kernel key layout) and the packets each had in it."""

    family: int
    keys: np.ndarray
    packets: np.ndarray


@dataclass(frozen=True, slots=True)
class FloodShape:
    """Who sent what in one tick, by source prefix and target (collect.flood): the rows with the
    most packets, and what the rest add up to."""

    rows: tuple[FloodRow, ...] = ()
    """The top rows by packets (at most flood.TOP_ROWS), most first."""
    rest_packets: int = 0
    """Packets of the rows left out."""
    rest_bytes: int = 0
    unplaced: int = 0
    """Packets the full flow map could not take that found the flood table full too
    (CNT_FLOOD_OTHER): no row has them. Each row's count is exact up to this many."""
    interval: float = 1.0
    flows: tuple[TickFlows, ...] = ()
    """The tick's flows with their packets of the tick, per family (the collector's own
    arrays, not copies): what one host of a row's prefix sent, which the rows cannot say, is
    counted from them when asked (collect.block.share)."""

    @property
    def packets(self) -> int:
        """Every packet of the tick: the rows, the rest and the unplaced."""
        return sum(r.packets for r in self.rows) + self.rest_packets + self.unplaced


@dataclass(frozen=True, slots=True)
class Sample:
    """Totals of one collector tick. ``counters`` are the deltas of the kernel counters since the
    previous tick, keyed by abi.Counter names in lower case (packets, non_ip, ...)."""

    time: float
    interval: float
    bps: float
    pps: float
    active_flows: int
    new_flows: int
    counters: dict[str, int]
    flood: FloodShape = field(default_factory=FloodShape)
    """The tick's packets by source prefix and target, the flows' and those the full flow map
    could not take alike (collect.flood)."""
    map_fill: float = 0.0
    """Flows in the fuller of the two flow maps over its entries (early eviction at 0.9)."""
    map_bytes: int = 0
    """Locked kernel memory of the two flow maps, as the kernel reports it (0: not known, as
    in the demo's scenario)."""


@per_flow
class NewFlow:
    """A new-flow event from the ring buffer, timestamped on the wall clock."""

    time: float
    key: FlowKey
    iface: str
    length: int
    map_full: bool


# The columns of a stored PendingFlows, after the keys, in this order.
_PENDING_COLUMNS: tuple[tuple[str, str], ...] = (
    ("packets", "<u8"),
    ("bytes", "<u8"),
    ("ip_bytes", "<u8"),
    ("first_seen", "<f8"),
    ("last_seen", "<f8"),
    ("tcp_flags", "u1"),
)


_PENDING_OWNER = "<i4"
"""The column after those when the flows' processes are known: an index into the blob's list
of owners, -1 for a flow without one."""


_PENDING_HEALTH: tuple[tuple[str, str], ...] = (
    ("retrans", "<i8"),
    ("rtt_us", "<i8"),
    ("rtt_min_us", "<i8"),
    ("drops", "<i8"),
    ("drop_reason", "<i4"),
)
"""The columns after those when the writer followed TCP health and drops: what a record
written now would hold (FlowRecord's fields; the reason an index into the blob's list of
reason names, -1 for none)."""
_PENDING_RESETS = "<i8"
"""The column after those in blobs of writers that followed TCP resets too (PendingBlob.resets;
blobs written before resets were followed do not have it)."""


def _pending_row_size(
    family: int, owners: bool = False, health: bool = False, resets: bool = False
) -> int:
    size = abi.KEY_DTYPES[family].itemsize + sum(np.dtype(t).itemsize for _, t in _PENDING_COLUMNS)
    size += np.dtype(_PENDING_OWNER).itemsize if owners else 0
    size += np.dtype(_PENDING_RESETS).itemsize if resets else 0
    return size + (sum(np.dtype(t).itemsize for _, t in _PENDING_HEALTH) if health else 0)


@dataclass(frozen=True, slots=True)
class PendingHealth:
    """Per flow of a PendingFlows batch (aligned with it): the TCP health and drops a record
    written now would hold (no record holds them yet), as FlowRecord has them."""

    retrans: np.ndarray
    rtt_us: np.ndarray
    rtt_min_us: np.ndarray
    drops: np.ndarray
    drop_reason: np.ndarray
    """An object array: the main reason's name, or None."""
    resets: np.ndarray | None = None
    """Resets no record holds yet (None: not followed, and the blob has no such column)."""

    def owed(self) -> np.ndarray:
        """Which flows have retransmissions, drops or resets no record holds: a flow with no
        packets since its record still owes those a record (collect.Collector._owing)."""
        out = (self.retrans > 0) | (self.drops > 0)
        return out | (self.resets > 0) if self.resets is not None else out


@dataclass(frozen=True, slots=True)
class PendingBlob:
    """A PendingFlows as stored: the blob, and the lists its index columns point into (None
    where the blob has no such column)."""

    data: bytes
    owners: list[Owner] | None = None
    reasons: list[str] | None = None
    resets: bool = False
    """Whether the blob has the resets column after the health columns (_PENDING_RESETS)."""


def _factorize(owners: np.ndarray) -> tuple[np.ndarray, list[Owner]]:
    """(index of each row's owner in the list, -1 for None; the distinct owners). The owners
    of a tick are a few processes shared by many flows, one object per socket: they are told
    apart by identity first (vectorised), then by value."""
    ids = np.frompyfunc(id, 1, 1)(owners).astype(np.int64) if len(owners) else np.zeros(0, np.int64)
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    table: list[Owner] = []
    slot: dict[Owner, int] = {}
    remap = np.empty(len(uniq), np.int32)
    for u, i in enumerate(first.tolist()):
        o = owners[i]
        if o is None:
            remap[u] = -1
        else:
            remap[u] = slot.setdefault(o, len(table))
            if remap[u] == len(table):
                table.append(o)
    return remap[inverse].astype(np.int32), table


@dataclass(frozen=True, slots=True)
class PendingFlows:
    """One family's live flows after a tick, as what a record written now would hold: the part
    of each flow that no record holds yet. History keeps the latest of these beside each
    tick's records, in the same transaction, so a process killed at any moment loses at most
    what the kernel counted after the last tick it wrote.

    It holds the tick's own arrays (never changed afterwards) and picks the rows lazily, so the
    collector pays nothing for it; the writer thread turns it into bytes (``to_bytes``)."""

    batch: FlowBatch
    rows: np.ndarray | slice
    """The rows of ``batch`` still live after the tick (a boolean mask, or every row)."""
    exp_packets: np.ndarray
    exp_bytes: np.ndarray
    exp_ip_bytes: np.ndarray
    start: np.ndarray
    """Kernel time at which each flow's current record began."""
    wall_offset: float
    """Unix seconds minus kernel seconds (kernel times are CLOCK_MONOTONIC)."""
    iface_names: dict[int, str]
    """Interface names by index, for the records a crash turns these into."""
    owner: np.ndarray | None = None
    """Each flow's process (an object array aligned with ``batch``), None when not watched."""
    health: PendingHealth | None = None
    """Each flow's TCP health and drops not yet written, None when not followed."""

    def to_bytes(self) -> bytes:
        """The blob of ``encode`` (what a run without processes stores)."""
        return self.encode().data

    def encode(self) -> PendingBlob:
        """The flows with something pending, stored column after column: the kernel keys as
        they are, then packets, bytes and IP bytes not yet in a record (u64), the record's
        start and the last packet as Unix seconds (f64), and the TCP flags (u8); when the
        processes are known, each flow's index into the owners returned beside (i32, -1 for
        none); when TCP health and drops are followed, _PENDING_HEALTH (the reason an index
        into the reasons returned beside). Columns, not a structured array: numpy copies whole
        rows of plain types far faster than fields."""
        b = self.batch
        h = self.health
        has = b.packets > self.exp_packets
        if h is not None:  # no packets since its record, but what a last record would hold
            has |= h.owed()
        if not isinstance(self.rows, slice):
            has &= self.rows
        found = np.flatnonzero(has)
        # the usual case, every live flow has something pending: no gathers at all
        idx: np.ndarray | slice = slice(None) if len(found) == len(has) else found
        raw_keys = opaque_rows(b.keys)
        columns: list[np.ndarray] = [
            raw_keys[idx],
            b.packets[idx] - self.exp_packets[idx],
            b.bytes[idx] - self.exp_bytes[idx],
            b.ip_bytes[idx] - self.exp_ip_bytes[idx],
            self.start[idx] / 1e9 + self.wall_offset,
            b.last_seen[idx] / 1e9 + self.wall_offset,
            b.tcp_flags[idx],
        ]
        owners: list[Owner] | None = None
        if self.owner is not None:
            index, owners = _factorize(self.owner[idx])
            columns.append(index)
        reasons: list[str] | None = None
        if h is not None:
            columns += [
                np.asarray(h.retrans[idx], np.int64),
                np.asarray(h.rtt_us[idx], np.int64),
                np.asarray(h.rtt_min_us[idx], np.int64),
                np.asarray(h.drops[idx], np.int64),
            ]
            # a Python step only for the flows with drops: the writer encodes every live flow
            names = h.drop_reason[idx]
            have = np.flatnonzero(np.asarray(names != None, bool))  # noqa: E711
            reasons = sorted(set(names[have].tolist()))
            slot = {r: i for i, r in enumerate(reasons)}
            index = np.full(len(names), -1, np.int32)
            index[have] = [slot[r] for r in names[have].tolist()]
            columns.append(index)
            if h.resets is not None:
                columns.append(np.asarray(h.resets[idx], np.int64))
        data = b"".join(np.ascontiguousarray(c).tobytes() for c in columns)
        return PendingBlob(data, owners, reasons, h is not None and h.resets is not None)


def pending_records(
    family: int,
    data: bytes,
    iface_names: dict[int, str],
    reason: str = "crash",
    owners: Sequence[Owner] | None = None,
    reasons: Sequence[str] | None = None,
    resets: bool = False,
) -> list[FlowRecord]:
    """The records a stored PendingFlows blob stands for (``reason`` as their end reason);
    ``owners`` is the list stored beside a blob that has the owner column (None: it has not),
    ``reasons`` the drop reasons beside a blob that has the health columns, ``resets`` whether
    it has the resets column after them."""
    kd = abi.KEY_DTYPES[family]
    health = reasons is not None
    resets = resets and health
    n, rest = divmod(len(data), _pending_row_size(family, owners is not None, health, resets))
    if rest:
        raise ValueError(f"a pending blob of {len(data)} bytes is not whole rows")
    keys = np.frombuffer(data, kd, count=n)
    offset = n * kd.itemsize
    cols: dict[str, np.ndarray] = {}
    for name, t in _PENDING_COLUMNS:
        cols[name] = np.frombuffer(data, t, count=n, offset=offset)
        offset += n * np.dtype(t).itemsize
    index = (
        np.frombuffer(data, _PENDING_OWNER, count=n, offset=offset).tolist()
        if owners is not None
        else [-1] * n
    )
    if owners is not None:
        offset += n * np.dtype(_PENDING_OWNER).itemsize
    if owners is not None and n and not -1 <= min(index) <= max(index) < len(owners):
        raise ValueError("a pending blob names an owner its list does not have")
    hcols: dict[str, list[int]] = {}
    if reasons is not None:
        for name, t in _PENDING_HEALTH:
            hcols[name] = np.frombuffer(data, t, count=n, offset=offset).tolist()
            offset += n * np.dtype(t).itemsize
        slots = hcols["drop_reason"]
        if n and not -1 <= min(slots) <= max(slots) < len(reasons):
            raise ValueError("a pending blob names a drop reason its list does not have")
        if resets:
            hcols["resets"] = np.frombuffer(data, _PENDING_RESETS, count=n, offset=offset).tolist()
    out = []
    for i in range(n):
        key = key_from_row(family, keys[i])
        out.append(
            FlowRecord(
                key=key,
                iface=iface_names.get(key.ifindex, str(key.ifindex)),
                packets=int(cols["packets"][i]),
                bytes=int(cols["bytes"][i]),
                ip_bytes=int(cols["ip_bytes"][i]),
                first_seen=float(cols["first_seen"][i]),
                last_seen=float(cols["last_seen"][i]),
                tcp_flags=int(cols["tcp_flags"][i]),
                end_reason=reason,
                owner=owners[index[i]] if owners is not None and index[i] >= 0 else None,
                **(_health_fields(hcols, i, reasons) if reasons is not None else {}),
            )
        )
    return out


def _health_fields(cols: dict[str, list[int]], i: int, reasons: Sequence[str]) -> dict[str, Any]:
    slot = cols["drop_reason"][i]
    return {
        "retrans": cols["retrans"][i],
        "rtt_us": cols["rtt_us"][i],
        "rtt_min_us": cols["rtt_min_us"][i],
        "drops": cols["drops"][i],
        "drop_reason": reasons[slot] if slot >= 0 else "",
        "resets": cols["resets"][i] if "resets" in cols else NO_RESETS,
    }


@dataclass(frozen=True, slots=True)
class BlockRule:
    """What to drop: a source prefix, a target (protocol and destination port), or both
    (collect.block makes them from what an operator types and keeps them in force)."""

    network: str | None
    """The source prefix in CIDR notation (a host: /32, /128); None: from anywhere."""
    proto: int | None = None
    dport: int | None = None
    """With proto: the target (destination port; ICMP type * 256 + code); None: any."""

    @property
    def text(self) -> str:
        """The rule as typed: '198.19.77.0/24', 'udp/9', '198.19.77.5/32 udp/9'."""
        parts = [self.network] if self.network else []
        if self.proto is not None:
            parts.append(f"{PROTO_NAMES.get(self.proto, str(self.proto))}/{self.dport}")
        return " ".join(parts)

    @property
    def net(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        return ipaddress.ip_network(self.network) if self.network else None

    def matches(self, family: int, src: str, proto: int, dport: int) -> bool:
        """Whether a received packet with these fields is dropped by the rule."""
        net = self.net
        if net is not None:
            if (net.version == 4) != (family == abi.AF_INET):
                return False
            if ipaddress.ip_address(src) not in net:
                return False
        return self.proto is None or (proto == self.proto and dport == self.dport)

    def covers_prefix(self, prefix: str) -> bool:
        """Whether the rule's source covers every address of ``prefix`` (a /24 or /64)."""
        net = self.net
        if net is None:
            return True
        other = ipaddress.ip_network(prefix)
        return other.version == net.version and other.subnet_of(net)  # type: ignore[arg-type]

    def filter(self) -> str:
        """The live filter that selects the flows the rule drops."""
        terms = [f"src net {self.network}"] if self.network else []
        if self.proto is not None:
            name = PROTO_NAMES.get(self.proto, "")
            terms.append(name if name in ("tcp", "udp", "icmp", "icmp6") else f"proto {self.proto}")
            terms.append(f"dport {self.dport}")
        return " and ".join([*terms, "ingress"])
