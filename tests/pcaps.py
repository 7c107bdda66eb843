"""Capture files for tests, written by hand where scapy will not write them (big-endian, damaged,
cut by a snap length, link types scapy does not pick itself)."""

from __future__ import annotations

import struct
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

T0 = 1_763_780_000
"""2025-11-22T02:53:20Z: the capture time tests start at."""
ETHER = bytes.fromhex("020000000002020000000001")


def udp_frame(i: int = 0, payload: int = 10) -> Ether:
    """Ethernet / IPv4 / UDP from port 1000 + i, with ``payload`` bytes."""
    return (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / UDP(sport=1000 + i, dport=53)
        / Raw(b"x" * payload)
    )


def pcap_header(
    linktype: int = 1, snaplen: int = 65535, order: str = "<", nano: bool = False
) -> bytes:
    """A pcap file header (microsecond or nanosecond magic, either byte order)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    return struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(
    data: bytes, sec: int = T0, frac: int = 0, wire: int | None = None, order: str = "<"
) -> bytes:
    """A pcap record of the captured ``data``; ``wire`` is the original length if longer."""
    return struct.pack(order + "IIII", sec, frac, len(data), wire or len(data)) + data


def ng_block(btype: int, body: bytes) -> bytes:
    """A pcapng block: type, total length, body padded to 4 bytes, total length again."""
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def ng_shb() -> bytes:
    """A little-endian pcapng section header block."""
    return ng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def ng_idb(
    linktype: int = 1,
    snaplen: int = 0,
    name: str | None = None,
    tsresol: int | None = None,
    tsoffset: int | None = None,
) -> bytes:
    """A pcapng interface description block with if_name, if_tsresol and if_tsoffset (seconds)
    when given."""
    opts = b""
    if name is not None:
        raw = name.encode()
        opts += struct.pack("<HH", 2, len(raw)) + raw + b"\0" * (-len(raw) % 4)
    if tsresol is not None:
        opts += struct.pack("<HH", 9, 1) + bytes([tsresol]) + b"\0" * 3
    if tsoffset is not None:
        opts += struct.pack("<HHq", 14, 8, tsoffset)
    if opts:
        opts += struct.pack("<HH", 0, 0)
    return ng_block(1, struct.pack("<HHI", linktype, 0, snaplen) + opts)


def ng_epb(iface: int, ts_units: int, data: bytes, wire: int | None = None) -> bytes:
    """A pcapng enhanced packet block; the time in the interface's units."""
    hi, lo = ts_units >> 32, ts_units & 0xFFFFFFFF
    return ng_block(6, struct.pack("<IIIII", iface, hi, lo, len(data), wire or len(data)) + data)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    """The bytes as a file in tmp_path."""
    path = tmp_path / name
    path.write_bytes(data)
    return path
