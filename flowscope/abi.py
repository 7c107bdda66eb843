"""Byte layout of the structs shared with bpf/flowscope.h.

This module mirrors the C header byte for byte; tests/unit/test_abi.py pins sizes and offsets
and decodes a hand-annotated byte string, so a change on one side without the other fails.
It imports neither bcc nor numpy's C side of the kernel: only ctypes (and numpy dtypes built
from these structs, for decoding whole batches without a Python object per flow).
"""

from __future__ import annotations

import ctypes
import enum
from typing import Any

import numpy as np

AF_INET = 4
AF_INET6 = 6
DIR_INGRESS = 0
DIR_EGRESS = 1
DIRECTIONS = 2
"""FS_DIRECTIONS: the first index of cpu_state.counters."""
DIRECTION_NAMES: dict[int, str] = {DIR_INGRESS: "ingress", DIR_EGRESS: "egress"}
EVENT_MAP_FULL = 1

DEFAULT_FLOW_ENTRIES = 65536
DEFAULT_RINGBUF_PAGES = 256
DEFAULT_FLOOD_ENTRIES = 1024
EVENT_WINDOW_NS = 1_000_000_000
"""EVENT_WINDOW_NS: the window of the per-CPU announcement budget (EVENT_BUDGET records)."""


class Counter(enum.IntEnum):
    """Indexes of cpu_state.counters[direction] (enum fs_counter)."""

    PACKETS = 0
    FLOWS_CREATED = 1
    NON_IP = 2
    MALFORMED = 3
    TRUNCATED = 4
    MAP_FULL = 5
    RINGBUF_FULL = 6
    BYTES = 7
    FLOOD_OTHER = 8
    EVENTS_LIMITED = 9


COUNTER_COUNT = len(Counter)


class CpuState(ctypes.Structure):
    """struct cpu_state: the counters of each direction, the clock cache, the announcement
    budget's window and the full-map marks of one CPU, 216 bytes."""

    _fields_ = [
        ("counters", (ctypes.c_uint64 * COUNTER_COUNT) * DIRECTIONS),
        ("clock_jiffies", ctypes.c_uint64),
        ("clock_ns", ctypes.c_uint64),
        ("event_window", ctypes.c_uint64),
        ("event_count", ctypes.c_uint64),
        ("full_jiffies", ctypes.c_uint64 * 3),
    ]


class FloodKey(ctypes.Structure):
    """struct flood_key: what the flood table counts packets of the full flow map by (source
    prefix, interface, destination port, protocol, TCP flags, family, direction), 24 bytes.
    The prefix (IPv4 /24 in 3 bytes, IPv6 /64 in 8) and the port in network order."""

    _fields_ = [
        ("prefix", ctypes.c_uint8 * 8),
        ("ifindex", ctypes.c_uint32),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("tcp_flags", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 6),
    ]


class FloodValue(ctypes.Structure):
    """struct flood_value: one CPU's packets and bytes of a flood key, 16 bytes."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class FlowKey4(ctypes.Structure):
    """struct flow_key4: 24 bytes, the last 4 zero padding; addresses and ports in network
    order."""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("saddr", ctypes.c_uint8 * 4),
        ("daddr", ctypes.c_uint8 * 4),
        ("sport", ctypes.c_uint8 * 2),
        ("dport", ctypes.c_uint8 * 2),
        ("vlan", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 4),
    ]


class FlowKey6(ctypes.Structure):
    """struct flow_key6: 48 bytes (the last 4 zero padding)."""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint8 * 2),
        ("dport", ctypes.c_uint8 * 2),
        ("vlan", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 4),
    ]


class FlowValue(ctypes.Structure):
    """struct flow_value: 48 bytes, one per CPU."""

    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("ip_bytes", ctypes.c_uint64),
        ("first_seen", ctypes.c_uint64),
        ("last_seen", ctypes.c_uint64),
        ("tcp_flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("block_gen", ctypes.c_uint32),
    ]


class FlowEvent(ctypes.Structure):
    """struct flow_event: 64 bytes, one ring buffer record."""

    _fields_ = [
        ("timestamp", ctypes.c_uint64),
        ("ifindex", ctypes.c_uint32),
        ("length", ctypes.c_uint32),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint8 * 2),
        ("dport", ctypes.c_uint8 * 2),
        ("vlan", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 6),
    ]


class ReplayMeta(ctypes.Structure):
    """struct replay_meta: 16 bytes of XDP metadata in front of each replayed frame (replay
    build only): the capture's time, the original length and the capture's interface."""

    _fields_ = [
        ("timestamp", ctypes.c_uint64),
        ("wire_len", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
    ]


SOCK_CONNECT = 1
"""FS_SOCK_CONNECT: a TCP connection a local process opened (4-tuple known)."""
SOCK_LISTEN = 2
"""FS_SOCK_LISTEN: a TCP port a local process listens on."""
SOCK_BIND = 3
"""FS_SOCK_BIND: a port a local process bound (bind(), or the first sendto() of UDP)."""


class SockOwner(ctypes.Structure):
    """struct sock_owner: who created a socket, 32 bytes."""

    _fields_ = [
        ("cgroup_id", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
    ]


class SockEvent(ctypes.Structure):
    """struct sock_event: one record of the sock_events ring buffer (bpf/owners.c), 96 bytes.
    Addresses in network order, ports in host order."""

    _fields_ = [
        ("timestamp", ctypes.c_uint64),
        ("netns", ctypes.c_uint64),
        ("cookie", ctypes.c_uint64),
        ("owner", SockOwner),
        ("laddr", ctypes.c_uint8 * 16),
        ("raddr", ctypes.c_uint8 * 16),
        ("lport", ctypes.c_uint16),
        ("rport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("kind", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class TcpHealth(ctypes.Structure):
    """struct tcp_health: a local TCP connection's retransmissions and RTT as its socket sees
    them (the value of the map tcp_health, keyed by socket cookie), 72 bytes. Addresses in
    network order, ports in host order."""

    _fields_ = [
        ("netns", ctypes.c_uint64),
        ("laddr", ctypes.c_uint8 * 16),
        ("raddr", ctypes.c_uint8 * 16),
        ("lport", ctypes.c_uint16),
        ("rport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("retrans", ctypes.c_uint32),
        ("srtt_us", ctypes.c_uint32),
        ("rtt_min_us", ctypes.c_uint32),
        ("retrans_fast", ctypes.c_uint32),
        ("retrans_rto", ctypes.c_uint32),
        ("retrans_probe", ctypes.c_uint32),
    ]


class DropKey(ctypes.Structure):
    """struct drop_key: a packet the kernel dropped, by its addresses and ports as it travelled
    (the flow it was counted in), device and drop reason (the key of the per-CPU LRU map
    drops), 48 bytes. Addresses and ports in network order."""

    _fields_ = [
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("ifindex", ctypes.c_uint32),
        ("reason", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class ResetKey(ctypes.Structure):
    """struct reset_key: a flow a TCP reset travelled in (the key of the per-CPU LRU map
    tcp_resets, counted by bpf/resets.c): sent (egress) or received (ingress), its addresses
    and ports as the flow programs key that flow, in network order. 40 bytes."""

    _fields_ = [
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class BlockSrc4(ctypes.Structure):
    """struct block_src4: an IPv4 source-prefix rule's LPM key, 8 bytes."""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("saddr", ctypes.c_uint8 * 4)]


class BlockSrc6(ctypes.Structure):
    """struct block_src6: an IPv6 source-prefix rule's LPM key, 20 bytes."""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("saddr", ctypes.c_uint8 * 16)]


class BlockTarget4(ctypes.Structure):
    """struct block_target4: an IPv4 target rule's LPM key (protocol, port in network order,
    then the source address), 12 bytes."""

    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("proto", ctypes.c_uint8),
        ("dport", ctypes.c_uint8 * 2),
        ("saddr", ctypes.c_uint8 * 4),
        ("pad", ctypes.c_uint8),
    ]


class BlockTarget6(ctypes.Structure):
    """struct block_target6: an IPv6 target rule's LPM key, 24 bytes."""

    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("proto", ctypes.c_uint8),
        ("dport", ctypes.c_uint8 * 2),
        ("saddr", ctypes.c_uint8 * 16),
        ("pad", ctypes.c_uint8),
    ]


class BlockValue(ctypes.Structure):
    """struct block_value: the packets a rule dropped, 8 bytes."""

    _fields_ = [("matched", ctypes.c_uint64)]


BLOCK_BITMAP_WORDS = 1024
"""BLOCK_BITMAP_WORDS: u64 words of each of block_rules' bitmaps (65,536 bits)."""


class BlockRules(ctypes.Structure):
    """struct block_rules: how many rules each trie holds, and which /16s of sources and which
    ports a rule can match at all (kernel.block.BlockMaps sets them), 24,592 bytes."""

    _fields_ = [
        ("src4", ctypes.c_uint32),
        ("src6", ctypes.c_uint32),
        ("target4", ctypes.c_uint32),
        ("target6", ctypes.c_uint32),
        ("src4_bits", ctypes.c_uint64 * BLOCK_BITMAP_WORDS),
        ("src6_bits", ctypes.c_uint64 * BLOCK_BITMAP_WORDS),
        ("target_bits", ctypes.c_uint64 * BLOCK_BITMAP_WORDS),
    ]


BLOCK_ENTRIES = 4096
"""BLOCK_ENTRIES: rules of each kind and family."""
BLOCK_TARGET_BITS = 24
"""BLOCK_TARGET_BITS: protocol and port, before the address in a target key."""


class DropBudget(ctypes.Structure):
    """struct drop_budget: one CPU's per-flow attribution budget of the drop hook, 24 bytes."""

    _fields_ = [
        ("jiffies", ctypes.c_uint64),
        ("count", ctypes.c_uint64),
        ("unattributed", ctypes.c_uint64),
    ]


class DropXdpCode(ctypes.Structure):
    """struct drop_xdp_code: where generic XDP frees what an XDP program dropped, 32 bytes."""

    _fields_ = [
        ("start", ctypes.c_uint64 * 2),
        ("end", ctypes.c_uint64 * 2),
    ]


DROP_BUDGET = 256
"""DROP_BUDGET: drops per CPU and jiffy the hook attributes to their flow."""
DROP_REASON_SLOTS = 256
"""Reasons the per-CPU array drop_totals counts alone; larger values count in the last."""
DEFAULT_DROP_ENTRIES = 16384
RESET_ENTRIES = 16384
"""RESET_ENTRIES: flows with resets the kernel remembers (LRU)."""


class SockCounter(enum.IntEnum):
    """Indexes of the per-CPU array sock_counters (enum fs_sock_counter)."""

    EVENTS = 0
    RINGBUF_FULL = 1
    NO_OWNER = 2


REPLAY_META_SIZE = ctypes.sizeof(ReplayMeta)
REPLAY_META_FORMAT = "<QII"
"""struct.pack format of ReplayMeta (little endian, as the kernels flowscope runs on)."""


def _dtype(
    struct: type[ctypes.Structure],
    big_endian_fields: tuple[str, ...] = (),
    *,
    keep_pad: bool = False,
    hidden: tuple[str, ...] = (),
) -> np.dtype:
    """A numpy dtype with the struct's offsets; ports become big-endian u16 fields.

    A key keeps its padding as a field (keep_pad): numpy copies only the fields of a structured
    array, so the bytes of a hole would come out as garbage in a copy or a selection, and a key
    sent back to the kernel (take_flows) would then match no flow. ``hidden`` fields are the
    kernel's alone, left out like padding."""
    names: list[str] = []
    formats: list[np.dtype[Any]] = []
    offsets: list[int] = []
    for name, ctype in struct._fields_:  # type: ignore[misc]
        if (name == "pad" and not keep_pad) or name in hidden:
            continue
        field = getattr(struct, name)
        names.append(name)
        offsets.append(field.offset)
        if name in big_endian_fields:
            formats.append(np.dtype(">u2"))
        else:
            formats.append(np.dtype(ctype))
    return np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": ctypes.sizeof(struct)}
    )


PORTS = ("sport", "dport")
KEY4_DTYPE = _dtype(FlowKey4, PORTS, keep_pad=True)
KEY6_DTYPE = _dtype(FlowKey6, PORTS, keep_pad=True)
KEY_DTYPES = {AF_INET: KEY4_DTYPE, AF_INET6: KEY6_DTYPE}
"""The kernel key layout of each family's flow map."""
VALUE_DTYPE = _dtype(FlowValue, hidden=("block_gen",))
HEALTH_DTYPE = _dtype(TcpHealth)
DROP_KEY_DTYPE = _dtype(DropKey, PORTS, keep_pad=True)
RESET_KEY_DTYPE = _dtype(ResetKey, PORTS, keep_pad=True)
FLOOD_KEY_DTYPE = _dtype(FloodKey, ("dport",), keep_pad=True)
FLOOD_VALUE_DTYPE = _dtype(FloodValue)
EVENT_DTYPE = _dtype(FlowEvent, PORTS)
