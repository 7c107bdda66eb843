"""The TCP connections of this network namespace with their health, as the kernel's sock_diag
reports them (the numbers `ss -ti` prints: total retransmissions, smoothed and minimum RTT).

The socket hooks (kernel.owners) follow a connection from its established callback on, so a
connection that was already open when flowscope started has no entry in their map; during an
incident most connections are of that kind. This reads them instead, as rows of the hooks' own
layout (abi.HEALTH_DTYPE) keyed by the same socket cookie.

One netlink dump per family, parsed at the fixed offsets of the kernel's uapi structs, not
with pyroute2: pyroute2 decodes every attribute of every socket in Python, 140 us a socket
measured here (0.45 s for 3,000 connections); this takes a few microseconds a socket.
"""

from __future__ import annotations

import os
import socket
import struct

import numpy as np

from flowscope import abi
from flowscope.errors import UnsupportedKernelError

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_INFO = 2
"""The attribute that holds struct tcp_info (asked for with bit INET_DIAG_INFO - 1)."""
# the TCP states in which a connection still has a peer (tcp_states.h): not SYN_SENT or
# SYN_RECV (no round trip yet), TIME_WAIT (no socket left), CLOSE or LISTEN
CONNECTED = sum(1 << s for s in (1, 4, 5, 8, 9, 11))
"""ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING."""

_HEADER = struct.Struct("<IHHII")  # struct nlmsghdr
_REQUEST = struct.Struct("<BBBxI48x")  # struct inet_diag_req_v2, socket id left zero
_PORTS = struct.Struct(">HH")  # in struct inet_diag_msg, after four bytes
_COOKIE = struct.Struct("<Q")  # idiag_cookie, at offset 44
MSG_SIZE = 72
"""sizeof(struct inet_diag_msg)."""
_ATTR = struct.Struct("<HH")  # struct rtattr
# struct tcp_info: tcpi_rtt at 68, tcpi_total_retrans at 100, tcpi_min_rtt at 148 (u32 each)
_RTT, _MIN_RTT = 68, 148
_INFO = struct.Struct("<I28xI44xI")  # from tcpi_rtt: rtt, total_retrans, min_rtt
_FAMILIES = ((socket.AF_INET, abi.AF_INET), (socket.AF_INET6, abi.AF_INET6))


def _request(family: int, seq: int) -> bytes:
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), CONNECTED)
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY,
                        NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body  # fmt: skip


def _messages(sock: socket.socket) -> list[memoryview]:
    """The bodies of a dump's messages, until NLMSG_DONE."""
    out: list[memoryview] = []
    while True:
        data = memoryview(sock.recv(1 << 20))
        off = 0
        while off + _HEADER.size <= len(data):
            length, kind, _, _, _ = _HEADER.unpack_from(data, off)
            if kind == NLMSG_DONE:
                return out
            if kind == NLMSG_ERROR:
                (errno,) = struct.unpack_from("<i", data, off + _HEADER.size)
                raise OSError(-errno, os.strerror(-errno))
            if length < _HEADER.size:
                return out
            out.append(data[off + _HEADER.size : off + length])
            off += (length + 3) & ~3


Connection = tuple[int, int, int, bytes, bytes, int, int, int]
"""(socket cookie, local port, remote port, local address, remote address (16 bytes each),
smoothed RTT us, total retransmissions, minimum RTT us)."""


def parse(body: memoryview) -> Connection | None:
    """One struct inet_diag_msg and its attributes; None without struct tcp_info."""
    info = None
    off = MSG_SIZE
    while off + _ATTR.size <= len(body):
        length, kind = _ATTR.unpack_from(body, off)
        if length < _ATTR.size:
            break
        if kind == INET_DIAG_INFO and length - _ATTR.size >= _MIN_RTT + 4:
            info = body[off + _ATTR.size : off + length]
        off += (length + 3) & ~3
    if info is None:
        return None
    lport, rport = _PORTS.unpack_from(body, 4)
    return (
        _COOKIE.unpack_from(body, 44)[0], lport, rport, bytes(body[8:24]), bytes(body[24:40]),
        *_INFO.unpack_from(info, _RTT),
    )  # fmt: skip


def tcp_connections(netns: int) -> tuple[np.ndarray, np.ndarray]:
    """Every connected TCP socket of this network namespace: socket cookies and their health
    (abi.HEALTH_DTYPE rows, ``netns`` in each; an IPv6 socket may carry IPv4-mapped
    addresses, as the hooks' rows do)."""
    found: list[tuple[int, Connection]] = []
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
            for seq, (family, fs_family) in enumerate(_FAMILIES, 1):
                sock.sendall(_request(family, seq))
                for body in _messages(sock):
                    got = parse(body)
                    if got is not None:
                        found.append((fs_family, got))
    except OSError as e:
        raise UnsupportedKernelError(f"sock_diag cannot list TCP connections ({e})") from e
    rows = np.zeros(len(found), abi.HEALTH_DTYPE)
    if not found:
        return np.zeros(0, np.uint64), rows
    families, conns = zip(*found, strict=True)
    cookie, lport, rport, laddr, raddr, srtt, retrans, rtt_min = zip(*conns, strict=True)
    rows["netns"] = netns
    rows["family"] = families
    rows["lport"], rows["rport"] = lport, rport
    rows["laddr"] = np.frombuffer(b"".join(laddr), np.uint8).reshape(-1, 16)
    rows["raddr"] = np.frombuffer(b"".join(raddr), np.uint8).reshape(-1, 16)
    rows["srtt_us"], rows["retrans"], rows["rtt_min_us"] = srtt, retrans, rtt_min
    return np.array(cookie, np.uint64), rows
