"""The frames and flow keys the benchmarks run: the hot flows of each family, 100,000
distinct flows, a capture for the replay."""

from __future__ import annotations

import ipaddress
import struct

import numpy as np

from flowscope import abi
from flowscope.packets import (
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_DSTOPTS,
    IPPROTO_HOPOPTS,
    IPPROTO_TCP,
    IPPROTO_UDP,
    ethernet,
    ipv4,
    ipv4_tcp_frame,
    ipv6,
    ipv6_options,
    tcp,
    udp,
)

LOOPBACK_IFINDEX = 1
"""BPF_PROG_TEST_RUN without a context runs XDP as if received on the loopback device."""

HOT4 = ("192.0.2.1", "198.51.100.1", 40000, 443)
V6 = ("2001:db8::1", "2001:db8::2", 40001, 443)
VLAN4 = ("192.0.2.2", "198.51.100.2", 5353, 53)
VLAN_ID = 100


def hot_ipv4_tcp_frame() -> bytes:
    """The one hot IPv4 TCP flow of the per-packet benchmarks."""
    return ipv4_tcp_frame(*HOT4)


def ipv6_tcp_ext_frame() -> bytes:
    """IPv6 TCP behind a hop-by-hop and a destination-options header: the parser's walk."""
    src, dst, sport, dport = V6
    payload = (
        ipv6_options(IPPROTO_DSTOPTS) + ipv6_options(IPPROTO_TCP) + tcp(src, dst, sport, dport)
    )
    return ethernet(ETH_P_IPV6, ipv6(src, dst, IPPROTO_HOPOPTS, payload))


def vlan_ipv4_udp_frame() -> bytes:
    """An 802.1Q-tagged IPv4 UDP frame with a small payload."""
    src, dst, sport, dport = VLAN4
    datagram = udp(src, dst, sport, dport, b"\0" * 32)
    return ethernet(ETH_P_IP, ipv4(src, dst, IPPROTO_UDP, datagram), vlans=(VLAN_ID,))


def insert_frames(n: int) -> list[bytes]:
    """n IPv4 TCP frames of n distinct flows (sources 10.0.0.0 + i), none of them HOT4."""
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    return [
        ipv4_tcp_frame(str(ipaddress.IPv4Address(base + i)), "198.51.100.1", 1024 + i % 60000, 443)
        for i in range(n)
    ]


def other_flow_keys(n: int) -> np.ndarray:
    """n distinct IPv4 flow keys in the kernel layout (sources 172.16.0.0 + i), none of them
    HOT4, for filling the map from user space."""
    keys = np.zeros(n, dtype=abi.KEY4_DTYPE)
    keys["ifindex"] = LOOPBACK_IFINDEX
    saddr = np.arange(n, dtype=np.uint64) + int(ipaddress.IPv4Address("172.16.0.0"))
    keys["saddr"] = saddr.astype(">u4").view(np.uint8).reshape(n, 4)
    keys["daddr"] = np.frombuffer(ipaddress.IPv4Address("198.51.100.1").packed, np.uint8)
    keys["sport"] = 1024 + np.arange(n) % 60000
    keys["dport"] = 443
    keys["proto"] = IPPROTO_TCP
    return keys


REPLAY_FLOWS = 1_000


def replay_capture(n: int) -> bytes:
    """A pcap of ``n`` Ethernet IPv4 TCP frames of REPLAY_FLOWS flows in turn, one microsecond
    apart (a second of capture per million frames: the collector ticks as it would live)."""
    frames = [
        ipv4_tcp_frame("192.0.2.1", f"198.51.{100 + i // 250}.{i % 250 + 1}", 40000 + i, 443)
        for i in range(REPLAY_FLOWS)
    ]
    t0 = 1_700_000_000_000_000  # microseconds
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(n):
        frame = frames[i % REPLAY_FLOWS]
        t = t0 + i
        out.append(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(frame), len(frame)))
        out.append(frame)
    return b"".join(out)
