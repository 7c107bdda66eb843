"""IPFIX (RFC 7011) as bytes: the information elements flowscope exports, its templates, one
flow record encoded, and messages cut to the path MTU with their sequence numbers. No sockets
here: the exporter (ipfix.py) sends what this encodes, and tests decode it with nfdump."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address

from flowscope import abi
from flowscope.errors import UsageError
from flowscope.model import FlowRecord
from flowscope.vocab import user_name

VERSION = 10
DEFAULT_MTU = 1400
MIN_MTU = 576
IP_UDP_OVERHEAD = 48  # IPv6 (40) + UDP (8): the worst case, so one limit fits both families
HEADER = struct.Struct("!HHIII")  # version, length, export time, sequence, domain id
SET_HEADER = struct.Struct("!HH")  # set id, length
TEMPLATE_SET_ID = 2
TEMPLATE_V4 = 256
TEMPLATE_V6 = 257
TEMPLATE_V4_EGRESS = 258
TEMPLATE_V6_EGRESS = 259
_U32 = 1 << 32
VARIABLE = 65535  # a template field length that means "variable length" (RFC 7011 section 7)

# IANA IPFIX information elements: (name, id, length in the templates)
IE = tuple[str, int, int]
INGRESS_INTERFACE: IE = ("ingressInterface", 10, 4)
EGRESS_INTERFACE: IE = ("egressInterface", 14, 4)
_COMMON_HEAD: tuple[IE, ...] = (
    ("sourceTransportPort", 7, 2),
    ("destinationTransportPort", 11, 2),
    ("protocolIdentifier", 4, 1),
    ("tcpControlBits", 6, 2),
    ("octetDeltaCount", 1, 8),
    ("layer2OctetDeltaCount", 352, 8),
    ("packetDeltaCount", 2, 8),
    ("flowStartMilliseconds", 152, 8),
    ("flowEndMilliseconds", 153, 8),
    ("vlanId", 58, 2),
    INGRESS_INTERFACE,  # egressInterface in the egress templates
    ("flowDirection", 61, 1),
    ("flowEndReason", 136, 1),
)
_OWNER: tuple[IE, ...] = (
    ("applicationName", 96, VARIABLE),  # the process's command name (comm), "" when none
    ("userName", 371, VARIABLE),  # its user's name on this host, "" when no process
)
"""The owning process in the only IANA elements that can carry it; IANA has none for a pid
or a container, and flowscope has no enterprise number to define its own."""
FIELDS_V4: tuple[IE, ...] = (
    ("sourceIPv4Address", 8, 4),
    ("destinationIPv4Address", 12, 4),
    *_COMMON_HEAD,
    ("icmpTypeCodeIPv4", 32, 2),
    ("droppedPacketDeltaCount", 133, 8),  # what the kernel dropped of it (0: none, or unknown)
    *_OWNER,
)
FIELDS_V6: tuple[IE, ...] = (
    ("sourceIPv6Address", 27, 16),
    ("destinationIPv6Address", 28, 16),
    *_COMMON_HEAD,
    ("icmpTypeCodeIPv6", 139, 2),
    ("droppedPacketDeltaCount", 133, 8),
    *_OWNER,
)
FIELDS_V4_EGRESS = tuple(EGRESS_INTERFACE if f == INGRESS_INTERFACE else f for f in FIELDS_V4)
FIELDS_V6_EGRESS = tuple(EGRESS_INTERFACE if f == INGRESS_INTERFACE else f for f in FIELDS_V6)
TEMPLATES: dict[int, tuple[IE, ...]] = {
    TEMPLATE_V4: FIELDS_V4,
    TEMPLATE_V6: FIELDS_V6,
    TEMPLATE_V4_EGRESS: FIELDS_V4_EGRESS,
    TEMPLATE_V6_EGRESS: FIELDS_V6_EGRESS,
}
"""Template id -> fields; an egress template differs only in the interface's element, so one
record layout serves both directions."""
_TAIL = "HHBHQQQQQHIBBHQ"
RECORD_V4 = struct.Struct("!4s4s" + _TAIL)
RECORD_V6 = struct.Struct("!16s16s" + _TAIL)
assert RECORD_V4.size == sum(f[2] for f in FIELDS_V4 if f[2] != VARIABLE)
assert RECORD_V6.size == sum(f[2] for f in FIELDS_V6 if f[2] != VARIABLE)

# flowEndReason (RFC 5102 section 5.11.3)
END_REASON_CODES = {
    "idle": 1,  # idle timeout
    "active": 2,  # active timeout
    "fin": 3,  # end of flow detected
    "rst": 3,
    "shutdown": 4,  # forced end
    "evicted": 5,  # lack of resources
}


def _template_record(template_id: int, fields: Sequence[IE]) -> bytes:
    out = struct.pack("!HH", template_id, len(fields))
    return out + b"".join(struct.pack("!HH", ie, length) for _, ie, length in fields)


def template_set() -> bytes:
    """The template set all templates travel in (by id)."""
    body = b"".join(_template_record(tid, fields) for tid, fields in sorted(TEMPLATES.items()))
    return SET_HEADER.pack(TEMPLATE_SET_ID, SET_HEADER.size + len(body)) + body


TEMPLATE_SET = template_set()


def millis(t: float) -> int:
    """Unix seconds as IPFIX dateTimeMilliseconds, rounded as history stores them."""
    return round(t * 1000)


def variable(text: str) -> bytes:
    """A string field of variable length: UTF-8 after a one-byte length, or after 255 and a
    two-byte length from 255 bytes on (RFC 7011 section 7)."""
    data = text.encode("utf-8", "replace")[: VARIABLE - 1]
    if len(data) < 255:
        return bytes((len(data),)) + data
    return b"\xff" + struct.pack("!H", len(data)) + data


def encode_record(r: FlowRecord) -> tuple[int, bytes]:
    """(template id, data record bytes) of one flow record."""
    k = r.key
    icmp = k.dport if k.proto in (1, 58) else 0
    tail = (
        k.sport,
        k.dport,
        k.proto,
        r.tcp_flags,
        r.ip_bytes,
        r.bytes,
        r.packets,
        millis(r.first_seen),
        millis(r.last_seen),
        k.vlan,
        k.ifindex,
        k.direction,
        END_REASON_CODES.get(r.end_reason, 0),
        icmp,
        max(r.drops, 0),
    )
    src, dst = ip_address(k.src).packed, ip_address(k.dst).packed
    egress = k.direction == abi.DIR_EGRESS
    owner = r.owner
    names = (
        variable(owner.comm) + variable(user_name(owner.uid)) if owner is not None else b"\x00\x00"
    )
    if k.family == abi.AF_INET:
        tid = TEMPLATE_V4_EGRESS if egress else TEMPLATE_V4
        return tid, RECORD_V4.pack(src, dst, *tail) + names
    tid = TEMPLATE_V6_EGRESS if egress else TEMPLATE_V6
    return tid, RECORD_V6.pack(src, dst, *tail) + names


@dataclass(frozen=True, slots=True)
class Message:
    """One IPFIX message: its bytes, how many data records it holds, its sequence number."""

    data: bytes
    records: int
    sequence: int


class Encoder:
    """Packs flow records into IPFIX messages for one observation domain and one transport
    session; ``sequence`` is the number of data records packed so far (modulo 2^32). Pure: no
    clock, no socket."""

    def __init__(self, domain_id: int = 0, mtu: int = DEFAULT_MTU) -> None:
        if not 0 <= domain_id < _U32:
            raise UsageError(f"IPFIX observation domain id {domain_id} is not a 32-bit number")
        if mtu < MIN_MTU:
            raise UsageError(f"IPFIX path MTU {mtu} is below {MIN_MTU} bytes")
        self.domain_id = domain_id
        self.max_size = mtu - IP_UDP_OVERHEAD
        self.sequence = 0

    def message(
        self, records: Sequence[FlowRecord], start: int, export_time: int, templates: bool
    ) -> Message:
        """The next message: the template set when asked, then as many records from
        ``records[start:]`` as fit, in data sets by family (consecutive records of one family
        share a set). Advances ``sequence`` by the records it holds."""
        parts: list[bytes] = []
        size = HEADER.size
        if templates:
            parts.append(TEMPLATE_SET)
            size += len(TEMPLATE_SET)
        set_id = 0
        set_body: list[bytes] = []
        i = start
        while i < len(records):
            tid, rec = encode_record(records[i])
            extra = len(rec) + (SET_HEADER.size if tid != set_id else 0)
            if size + extra > self.max_size:
                break
            if tid != set_id:
                if set_body:
                    parts.append(_data_set(set_id, set_body))
                set_id, set_body = tid, []
            set_body.append(rec)
            size += extra
            i += 1
        if set_body:
            parts.append(_data_set(set_id, set_body))
        count = i - start
        header = HEADER.pack(VERSION, size, export_time % _U32, self.sequence, self.domain_id)
        msg = Message(header + b"".join(parts), count, self.sequence)
        self.sequence = (self.sequence + count) % _U32
        return msg

    def pack(
        self, records: Sequence[FlowRecord], export_time: int, templates: bool = False
    ) -> list[Message]:
        """All of ``records`` as messages (the templates in the first one when asked)."""
        out: list[Message] = []
        start = 0
        while start < len(records) or (templates and not out):
            msg = self.message(records, start, export_time, templates and not out)
            out.append(msg)
            start += msg.records
        return out


def _data_set(template_id: int, body: list[bytes]) -> bytes:
    data = b"".join(body)
    return SET_HEADER.pack(template_id, SET_HEADER.size + len(data)) + data
