"""Ethernet, 802.1Q, IPv4, IPv6, TCP and UDP built with struct, checksums filled in: the frames
of `flowscope bench` and the demo's raw VLAN frames. No scapy: the commands work without the
dev extras, and the demo's generator starts in a namespace with nothing but the stdlib."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_HOPOPTS = 0
IPPROTO_DSTOPTS = 60
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
TCP_SYN = 0x02
TCP_ACK = 0x10
MIN_FRAME = 60  # Ethernet minimum without the FCS: shorter frames are padded, as a NIC does


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(
    ethertype: int,
    payload: bytes,
    vlans: Sequence[int] = (),
    *,
    dst: bytes = bytes.fromhex("020000000002"),
    src: bytes = bytes.fromhex("020000000001"),
) -> bytes:
    """An Ethernet frame (by default between two fixed locally administered MACs), with
    802.1Q tags (outermost first), padded to the 60-byte minimum."""
    frame = dst + src
    for vid in vlans:
        frame += struct.pack("!HH", ETH_P_8021Q, vid & 0x0FFF)
    frame += struct.pack("!H", ethertype) + payload
    return frame.ljust(MIN_FRAME, b"\0")


def ipv4(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    """An IPv4 header without options, checksum filled in, followed by ``l4``."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, s, d)
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + l4


def ipv6(src: str, dst: str, nexthdr: int, payload: bytes) -> bytes:
    """An IPv6 header followed by ``payload`` (extension headers included)."""
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nexthdr, 64, s, d) + payload


def ipv6_options(nexthdr: int) -> bytes:
    """A hop-by-hop or destination options header of 8 bytes: one PadN option fills it."""
    return struct.pack("!BBBB4x", nexthdr, 0, 1, 4)


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def tcp(
    src: str, dst: str, sport: int, dport: int, payload: bytes = b"", *, flags: int = TCP_ACK
) -> bytes:
    """A TCP segment with these flags (ACK), its checksum over the pseudo-header of src and
    dst."""
    header = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 8192, 0, 0)
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    segment = header + payload
    csum = checksum(pseudo_header(s, d, IPPROTO_TCP, len(segment)) + segment)
    return segment[:16] + struct.pack("!H", csum) + segment[18:]


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A UDP datagram, its checksum over the pseudo-header of src and dst."""
    datagram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    csum = checksum(pseudo_header(s, d, IPPROTO_UDP, len(datagram)) + datagram) or 0xFFFF
    return datagram[:6] + struct.pack("!H", csum) + datagram[8:]


def ipv4_tcp_frame(src: str, dst: str, sport: int, dport: int) -> bytes:
    """Ethernet / IPv4 / TCP ACK, no payload."""
    return ethernet(ETH_P_IP, ipv4(src, dst, IPPROTO_TCP, tcp(src, dst, sport, dport)))
