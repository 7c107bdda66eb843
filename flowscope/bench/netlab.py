"""The network a benchmark makes for itself and removes afterwards: a namespace, a veth pair
from this namespace into it (never the machine's own interfaces), and a server inside that
says when it is ready."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from flowscope.errors import BenchError


def ip(*args: str) -> None:
    """Run ``ip`` with these arguments; its failure is the benchmark's."""
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass(frozen=True, slots=True)
class VethLab:
    """A namespace ``ns`` holding ``peer_if``, whose other end ``host_if`` is here."""

    ns: str
    host_if: str
    peer_if: str
    host_ip: str
    peer_ip: str


@contextlib.contextmanager
def veth_lab(tag: str, host_ip: str, peer_ip: str, prefix: int = 30) -> Iterator[VethLab]:
    """Make the namespace and the pair (names from ``tag``: a benchmark's and this process's),
    addressed and up; delete both on the way out, whatever happened."""
    lab = VethLab(f"fsbench{tag}", f"fsb{tag}h", f"fsb{tag}p", host_ip, peer_ip)
    ip("netns", "add", lab.ns)
    try:
        ip("link", "add", lab.host_if, "type", "veth", "peer", "name", lab.peer_if, "netns", lab.ns)
        ip("addr", "add", f"{host_ip}/{prefix}", "dev", lab.host_if)
        ip("link", "set", lab.host_if, "up")
        ip("-n", lab.ns, "addr", "add", f"{peer_ip}/{prefix}", "dev", lab.peer_if)
        ip("-n", lab.ns, "link", "set", lab.peer_if, "up")
        ip("-n", lab.ns, "link", "set", "lo", "up")
        yield lab
    finally:
        ip("netns", "del", lab.ns)  # the pair goes with its end in the namespace


@contextlib.contextmanager
def server_in(lab: VethLab, code: str, *args: str, what: str) -> Iterator[None]:
    """Run Python ``code`` in the namespace until the block ends; it must print ``ready``
    first (else BenchError names ``what``)."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns, sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise BenchError(f"{what}: the server in the namespace did not start")
        yield
    finally:
        server.kill()
        server.wait()
