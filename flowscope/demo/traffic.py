"""The demo's traffic: listeners on the host end of the veth pair, and a generator inside the
namespace that talks to them. Run as ``python -m flowscope.demo.traffic serve|generate``.

The generator makes what the console is there to show: long TCP transfers at different rates,
UDP request/response, ICMP and ICMPv6 pings, IPv6 TCP, waves of short connections, an
802.1Q-tagged stream (raw frames: this kernel has no VLAN devices, and tags written on a veth
reach XDP intact), and every half minute a burst of SYNs to many ports, shaped like a scan.
Only sockets and struct: no scapy in product code.

Both processes are bounded: they ask the kernel for SIGKILL when the demo (their parent) dies
(PR_SET_PDEATHSIG), and also poll their parent pid, so a demo killed by SIGKILL does not leave
traffic running. Every packet goes between the namespace and the host end of the pair.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flowscope import packets

PR_SET_PDEATHSIG = 1

# Ports the listeners try first (well known, so the console shows familiar numbers); when one
# is taken on this machine the listener falls back to the port plus 10000.
PORTS = {"bulk": 443, "db": 5432, "http": 80, "dns": 53}

VLAN_IDS = (100, 200)
SCAN_EVERY = 30.0
SCAN_FIRST = 6.0


def bind_to_parent(owner: int) -> None:
    """Die with the demo: SIGKILL on the parent's death, and a watchdog for the race where
    it died before prctl ran (or prctl is unavailable)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def watchdog() -> None:
        while True:
            if os.getppid() != owner:
                os._exit(0)
            time.sleep(0.5)

    if os.getppid() != owner:
        os._exit(0)
    threading.Thread(target=watchdog, name="watchdog", daemon=True).start()


def forever(name: str, fn: Callable[[], None], pause: float = 1.0) -> threading.Thread:
    """Run ``fn`` again and again in a daemon thread; an error (a reset connection) only
    pauses it."""

    def loop() -> None:
        while True:
            with contextlib.suppress(OSError):
                fn()
            time.sleep(pause)

    t = threading.Thread(target=loop, name=name, daemon=True)
    t.start()
    return t


# -- listeners (root namespace, host end of the pair) -------------------------------------------


def _listen(family: int, kind: int, addr: str, port: int) -> socket.socket:
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    for candidate in (port, port + 10000):
        try:
            s.bind((addr, candidate))
            break
        except OSError:
            continue
    else:
        s.close()
        raise OSError(f"cannot bind {addr} port {port} or {port + 10000}")
    if kind == socket.SOCK_STREAM:
        s.listen(256)
    return s


def _discard(conn: socket.socket) -> None:
    with conn:
        while conn.recv(65536):
            pass


def _http(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(5)
        conn.recv(4096)
        body = b"flowscope demo\n" * 20
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def _accept_loop(server: socket.socket, handler: Callable[[socket.socket], None]) -> None:
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def _udp_echo(server: socket.socket) -> None:
    while True:
        data, peer = server.recvfrom(2048)
        server.sendto(data[:2] + b"\x81\x80" + data[4:] + b"\x00" * 16, peer)


def serve(ip4: str, ip6: str) -> None:
    """Bind the listeners to the host end's addresses only, print the ports as one JSON line,
    then serve until killed."""
    ports: dict[str, int] = {}
    for name, port in PORTS.items():
        kind = socket.SOCK_DGRAM if name == "dns" else socket.SOCK_STREAM
        s4 = _listen(socket.AF_INET, kind, ip4, port)
        s6 = _listen(socket.AF_INET6, kind, ip6, s4.getsockname()[1])
        ports[name] = s4.getsockname()[1]
        for s in (s4, s6):
            if kind == socket.SOCK_DGRAM:
                target, args = _udp_echo, (s,)
            else:
                handler = _http if name == "http" else _discard
                target, args = _accept_loop, (s, handler)  # type: ignore[assignment]
            threading.Thread(target=target, args=args, daemon=True).start()
    print(json.dumps(ports), flush=True)
    while True:
        time.sleep(3600)


# -- generator (inside the namespace) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Peer:
    """Where the generator sends to, and what its raw frames need."""

    iface: str
    ip4: str
    ip6: str
    src4: str
    src6: str
    host_mac: str
    peer_mac: str
    ports: dict[str, int]


def tcp_transfer(addr: str, port: int, rate: float) -> Callable[[], None]:
    """A long TCP upload paced to ``rate`` bytes per second."""

    def run() -> None:
        chunk = b"\x00" * 8192
        with socket.create_connection((addr, port), timeout=5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start, sent = time.monotonic(), 0
            while True:
                s.sendall(chunk)
                sent += len(chunk)
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)

    return run


def udp_requests(addrs: list[str], port: int) -> Callable[[], None]:
    """DNS-shaped request/response over IPv4 and IPv6: a fresh source port every few
    seconds, so flows come and go as resolver traffic does."""

    def run() -> None:
        socks = {}
        for a in addrs:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.settimeout(0.3)
            socks[a] = s
        try:
            for i in range(20):
                for a, s in socks.items():
                    qid = random.getrandbits(16)
                    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
                    query += b"\x04demo\x09flowscope\x07example\x00\x00\x01\x00\x01"
                    s.sendto(query, (a, port))
                    with contextlib.suppress(TimeoutError):
                        s.recvfrom(2048)
                time.sleep(0.25 + (i % 3) * 0.05)
        finally:
            for s in socks.values():
                s.close()

    return run


def pings(addr4: str, addr6: str) -> Callable[[], None]:
    """ICMP and ICMPv6 echo requests twice a second (raw sockets; the kernel fills in the
    ICMPv6 checksum)."""

    def run() -> None:
        ident = os.getpid() & 0xFFFF
        with (
            socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s4,
            socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s6,
        ):
            seq = 0
            while True:
                seq = (seq + 1) & 0xFFFF
                payload = struct.pack("!d", time.time()) + b"flowscope-demo" * 3
                head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
                csum = packets.checksum(head + payload)
                s4.sendto(struct.pack("!BBHHH", 8, 0, csum, ident, seq) + payload, (addr4, 0))
                s6.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload, (addr6, 0))
                time.sleep(0.5)

    return run


def short_connections(addr: str, port: int, per_wave: int = 15) -> Callable[[], None]:
    """A wave of short HTTP-shaped connections every few seconds."""

    def run() -> None:
        for _ in range(per_wave):
            with socket.create_connection((addr, port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: demo\r\n\r\n")
                while s.recv(4096):
                    pass
            time.sleep(0.02)
        time.sleep(4)

    return run


def _vlan_frame(peer: Peer, vid: int, sport: int, payload: bytes) -> bytes:
    """Ethernet + 802.1Q tag + IPv4 + UDP (to port 4789), checksummed."""
    datagram = packets.udp(peer.src4, peer.ip4, sport, 4789, payload)
    return packets.ethernet(
        packets.ETH_P_IP,
        packets.ipv4(peer.src4, peer.ip4, packets.IPPROTO_UDP, datagram),
        vlans=(vid,),
        dst=bytes.fromhex(peer.host_mac.replace(":", "")),
        src=bytes.fromhex(peer.peer_mac.replace(":", "")),
    )


def vlan_stream(peer: Peer, per_second: int = 40) -> Callable[[], None]:
    """Tagged frames on VLANs 100 and 200, written raw on the namespace's end of the pair."""

    def run() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((peer.iface, 0))
            frames = [_vlan_frame(peer, vid, 40000 + vid, b"v" * 300) for vid in VLAN_IDS]
            while True:
                for f in frames:
                    s.send(f)
                time.sleep(1 / per_second)

    return run


def port_scan(addr: str, count: int = 150) -> Callable[[], None]:
    """Every SCAN_EVERY seconds, SYNs to ``count`` ports (non-blocking connects, one source
    port each): a burst of new flows shaped like a scan."""
    state = {"first": True}

    def run() -> None:
        time.sleep(SCAN_FIRST if state["first"] else SCAN_EVERY)
        state["first"] = False
        ports = random.sample(range(1, 10000), count)
        socks = []
        try:
            for p in ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex((addr, p))
                socks.append(s)
            time.sleep(1)
        finally:
            for s in socks:
                s.close()

    return run


def generate(peer: Peer) -> None:
    """Start every kind of traffic, each in its own thread, and run until killed."""
    p = peer.ports
    forever("bulk-fast", tcp_transfer(peer.ip4, p["bulk"], 2_000_000))
    forever("bulk-medium", tcp_transfer(peer.ip4, p["db"], 250_000))
    forever("bulk-slow", tcp_transfer(peer.ip4, p["bulk"], 30_000))
    forever("bulk-ipv6", tcp_transfer(peer.ip6, p["bulk"], 600_000))
    forever("udp", udp_requests([peer.ip4, peer.ip6], p["dns"]), pause=0.1)
    forever("ping", pings(peer.ip4, peer.ip6))
    forever("http", short_connections(peer.ip4, p["http"]), pause=0.1)
    forever("vlan", vlan_stream(peer))
    forever("scan", port_scan(peer.ip4), pause=0)
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowscope.demo.traffic")
    parser.add_argument("role", choices=["serve", "generate"])
    parser.add_argument("--owner", type=int, required=True, help="the demo's pid")
    parser.add_argument("--ip4", required=True, help="host end IPv4 address")
    parser.add_argument("--ip6", required=True, help="host end IPv6 address")
    parser.add_argument("--src4", default="")
    parser.add_argument("--src6", default="")
    parser.add_argument("--iface", default="")
    parser.add_argument("--host-mac", default="")
    parser.add_argument("--peer-mac", default="")
    parser.add_argument("--ports", default="{}", help="JSON from serve")
    args = parser.parse_args(argv)
    bind_to_parent(args.owner)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the demo's to handle
    try:
        if args.role == "serve":
            serve(args.ip4, args.ip6)
        else:
            generate(
                Peer(
                    iface=args.iface,
                    ip4=args.ip4,
                    ip6=args.ip6,
                    src4=args.src4,
                    src6=args.src6,
                    host_mac=args.host_mac,
                    peer_mac=args.peer_mac,
                    ports=json.loads(args.ports),
                )
            )
    except OSError as e:
        print(f"flowscope demo traffic: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
