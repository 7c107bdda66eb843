"""A network namespace joined to the root namespace by a veth pair, for tests that need real
traffic on a real interface.

    with veth_namespace() as net:
        probe = Probe([net.host_if], mode="generic")
        net.python("import socket; ...")          # runs inside the namespace
        net.send_frames([bytes(Ether() / IP() / UDP())])

The host side of the pair stays in the root namespace: that is where flowscope attaches, and it
receives what the namespace sends. Both ends get an IPv4 address from 198.18.0.0/15 and an IPv6
address from 2001:db8::/32, and a permanent neighbour entry for the other end, so that neither
ARP nor neighbour discovery run. The namespace is also made quiet (no router solicitations, no
duplicate address detection, no link-local address): what leaves the namespace is what the test
sends, apart from the MLD reports the kernel sends when addresses are added (multicast, to
ff02::16; filter them out by key when exact flow sets matter).

Names are unique per process and per call, and everything is removed on the way out, even when
the test fails. Only 198.18.0.0/15 and 2001:db8::/32 are used; nothing is routed anywhere else.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PYTHON = str(Path(sys.executable))
"""The interpreter of the test run (the project's virtualenv): scapy and flowscope import in it."""

_counter = itertools.count()

# Sends frames given on stdin as (u32 length, bytes) records through an AF_PACKET socket bound
# to the interface named in argv[1]; prints how many it sent.
_SEND_FRAMES = """
import socket, struct, sys
data = sys.stdin.buffer.read()
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
n = pos = 0
while pos < len(data):
    (size,) = struct.unpack_from("<I", data, pos)
    s.send(data[pos + 4 : pos + 4 + size])
    pos += 4 + size
    n += 1
print(n)
"""

# Sends frames (stdin: u32 length, bytes records) in turn, argv[2] frames per second in all,
# through an AF_PACKET socket on argv[1] until SIGTERM; then prints the CLOCK_MONOTONIC ns of
# every send, one per line (the clock is the same in every namespace, so a test can tell which
# frames went before a moment of its own). Frame i of the output is frames[i % len(frames)].
_PACED = """
import signal, socket, struct, sys, time
data = sys.stdin.buffer.read()
frames, pos = [], 0
while pos < len(data):
    (size,) = struct.unpack_from("<I", data, pos)
    frames.append(data[pos + 4 : pos + 4 + size])
    pos += 4 + size
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
gap = 1e9 / float(sys.argv[2])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
sent = []
nxt = time.monotonic_ns()
print("ready", flush=True)
while not stop:
    s.send(frames[len(sent) % len(frames)])
    sent.append(time.monotonic_ns())
    nxt += gap
    delay = nxt - time.monotonic_ns()
    if delay > 0:
        time.sleep(delay / 1e9)
sys.stdout.write("".join(f"{t}\\n" for t in sent))
"""


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=30)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def _mac(ns: str | None, ifname: str) -> str:
    path = f"/sys/class/net/{ifname}/address"
    if ns is None:
        return Path(path).read_text().strip()
    return _run(["ip", "netns", "exec", ns, "cat", path]).stdout.strip()


def _ifindex(ns: str | None, ifname: str) -> int:
    path = f"/sys/class/net/{ifname}/ifindex"
    if ns is None:
        return int(Path(path).read_text())
    return int(_run(["ip", "netns", "exec", ns, "cat", path]).stdout)


@dataclass(frozen=True, slots=True)
class VethNamespace:
    """A namespace ``ns`` holding ``peer_if``, whose other end ``host_if`` is in the root
    namespace. Addresses are plain strings without prefix length (both /24 and /64)."""

    ns: str
    host_if: str
    peer_if: str
    host_ifindex: int
    peer_ifindex: int
    host_mac: str
    peer_mac: str
    host_ip4: str
    peer_ip4: str
    host_ip6: str
    peer_ip6: str

    def command(self, *args: str) -> list[str]:
        """The argv that runs ``args`` inside the namespace."""
        return ["ip", "netns", "exec", self.ns, *args]

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside the namespace and wait for it. With ``check`` a non-zero exit
        raises CalledProcessError whose message includes stderr."""
        proc = subprocess.run(
            self.command(*args), input=input, capture_output=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, proc.args, proc.stdout, proc.stderr
            ) from RuntimeError(proc.stderr.decode(errors="replace"))
        return proc

    def python(self, code: str, *args: str, input: bytes | None = None, timeout: float = 30) -> str:
        """Run Python code (with the test run's interpreter) inside the namespace; return its
        stdout. Fails with the child's stderr in the message when it exits non-zero."""
        proc = self.run(PYTHON, "-c", code, *args, input=input, check=False, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(
                f"python in {self.ns} exited {proc.returncode}:\n"
                f"{proc.stderr.decode(errors='replace')}"
            )
        return proc.stdout.decode()

    def send_frames(self, frames: Iterable[bytes], *, cpu: int | None = None) -> int:
        """Write whole Ethernet frames, as given, on the namespace's end of the pair (an
        AF_PACKET socket: no routing, no neighbour lookup, tags and checksums as built).
        ``cpu`` pins the sender to one CPU, which on veth is also the CPU that runs XDP for
        these frames. Returns how many were sent."""
        data = b"".join(struct.pack("<I", len(f)) + bytes(f) for f in frames)
        args: tuple[str, ...] = (PYTHON, "-c", _SEND_FRAMES, self.peer_if)
        if cpu is not None:
            args = ("taskset", "-c", str(cpu), *args)
        proc = self.run(*args, input=data)
        return int(proc.stdout)


class PacedSender:
    """Frames sent in turn at a steady rate (``pps`` in all) from inside the namespace until
    stop(); ``times`` are then the monotonic ns of every send, send i being frame i modulo
    their number (the truth a test compares history with)."""

    def __init__(self, net: VethNamespace, frames: Sequence[bytes], pps: float) -> None:
        self.proc = subprocess.Popen(
            net.command(PYTHON, "-c", _PACED, net.peer_if, str(pps)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"".join(struct.pack("<I", len(f)) + bytes(f) for f in frames))
        self.proc.stdin.close()
        assert self.proc.stdout.readline().strip() == b"ready"
        self.times: list[int] = []

    def stop(self) -> list[int]:
        if self.proc.poll() is None:
            self.proc.terminate()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out = self.proc.stdout.read()
        err = self.proc.stderr.read()
        self.proc.wait(timeout=30)
        assert self.proc.returncode == 0, err.decode(errors="replace")
        self.times = [int(line) for line in out.split()]
        return self.times


def unique_names(prefix: str = "fs") -> tuple[str, str, str]:
    """(namespace, host interface, peer interface) names unique to this process and call, and
    short enough for interface names (at most 15 characters). The tag is ``<pid>x<n>``, so
    remove_orphans() can tell whose they are."""
    tag = f"{os.getpid()}x{next(_counter)}"
    return f"{prefix}ns{tag}", f"{prefix}h{tag}", f"{prefix}p{tag}"


_OWNED = re.compile(r"^fsns(\d+)x\d+$")


def remove_orphans() -> list[str]:
    """Remove the namespaces (and host ends) of test runs whose process is gone: a run that
    died without its finally blocks (a segfault, SIGKILL) cannot remove its own. Only names
    this module makes, and only when no process has that pid. Returns what it removed."""
    listing = _ip("netns", "list", check=False).stdout
    removed = []
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _OWNED.match(name)
        if not m or Path(f"/proc/{m.group(1)}").exists():
            continue
        _ip("link", "del", "fsh" + name[len("fsns") :], check=False)
        _ip("netns", "del", name, check=False)
        removed.append(name)
    return removed


def _free_subnet() -> int:
    """A third octet n such that 198.18.n.0/24 is on no interface of the root namespace, so
    that two namespaces alive at once (other tests, other processes) never share a route."""
    used = _ip("-4", "-o", "addr", "show").stdout
    start = (os.getpid() * 7 + next(_counter)) % 256
    for i in range(256):
        n = (start + i) % 256
        if f" 198.18.{n}." not in used:
            return n
    raise RuntimeError("every 198.18.n.0/24 is in use in the root namespace")


def _sysctl(ns: str, name: str, value: str) -> None:
    _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{name}={value}"])


@contextlib.contextmanager
def veth_namespace(subnet: int | None = None) -> Iterator[VethNamespace]:
    """Create a namespace and a veth pair between it and the root namespace; remove both on
    exit, whatever happens. ``subnet`` (0-255) picks 198.18.<subnet>.0/24 and
    2001:db8:<subnet>::/64; by default it is derived from the unique name."""
    ns, host_if, peer_if = unique_names()
    n = _free_subnet() if subnet is None else subnet
    host_ip4, peer_ip4 = f"198.18.{n}.1", f"198.18.{n}.2"
    host_ip6, peer_ip6 = f"2001:db8:{n:x}::1", f"2001:db8:{n:x}::2"
    created_ns = False
    try:
        _ip("netns", "add", ns)
        created_ns = True
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if, "netns", ns)
        # Quiet the namespace before its interface comes up: no router solicitations, no DAD,
        # no link-local address (which would also mean DAD and MLD), no IPv6 autoconf.
        for scope in ("all", "default", peer_if):
            _sysctl(ns, f"net.ipv6.conf.{scope}.router_solicitations", "0")
            _sysctl(ns, f"net.ipv6.conf.{scope}.accept_ra", "0")
            _sysctl(ns, f"net.ipv6.conf.{scope}.accept_dad", "0")
        _sysctl(ns, f"net.ipv6.conf.{peer_if}.addr_gen_mode", "1")
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", peer_if, "up")
        _ip("addr", "add", f"{host_ip4}/24", "dev", host_if)
        _ip("addr", "add", f"{host_ip6}/64", "dev", host_if, "nodad")
        _ip("-n", ns, "addr", "add", f"{peer_ip4}/24", "dev", peer_if)
        _ip("-n", ns, "addr", "add", f"{peer_ip6}/64", "dev", peer_if, "nodad")
        net = VethNamespace(
            ns=ns,
            host_if=host_if,
            peer_if=peer_if,
            host_ifindex=_ifindex(None, host_if),
            peer_ifindex=_ifindex(ns, peer_if),
            host_mac=_mac(None, host_if),
            peer_mac=_mac(ns, peer_if),
            host_ip4=host_ip4,
            peer_ip4=peer_ip4,
            host_ip6=host_ip6,
            peer_ip6=peer_ip6,
        )
        for addr in (peer_ip4, peer_ip6):
            _ip(
                "neigh", "replace", addr, "lladdr", net.peer_mac, "dev", host_if, "nud", "permanent"
            )
        for addr in (host_ip4, host_ip6):
            _ip(
                "-n",
                ns,
                "neigh",
                "replace",
                addr,
                "lladdr",
                net.host_mac,
                "dev",
                peer_if,
                "nud",
                "permanent",
            )
        yield net
    finally:
        # Deleting one end deletes both; deleting the namespace would too, but the host end
        # may exist alone if the move into the namespace failed.
        _ip("link", "del", host_if, check=False)
        if created_ns:
            _ip("netns", "del", ns, check=False)


def xdp_prog_id(ifname: str) -> int:
    """The id of the XDP program on an interface of the root namespace, 0 when there is none
    (read with ``ip -details -json link``, independently of flowscope's own code)."""
    import json

    proc = _ip("-details", "-json", "link", "show", "dev", ifname)
    link = json.loads(proc.stdout)[0]
    xdp = link.get("xdp") or {}
    prog = xdp.get("prog") or {}
    if prog.get("id"):
        return int(prog["id"])
    for attached in xdp.get("attached", []):
        if attached.get("prog", {}).get("id"):
            return int(attached["prog"]["id"])
    return 0
