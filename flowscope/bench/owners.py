"""What naming each flow's process costs: the socket hooks (bpf/owners.c) per connection.

They run once per socket or connection, never per packet, so the figure is per connection:
connect, accept and close over the loopback of a network namespace made for the purpose
(never the machine's own), timed in a child process with the hooks attached and without,
interleaved, the minimum of each kept. The XDP and TC programs are the same code with or
without the hooks (the hot-path rows above measure them)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

from flowscope.bench.harness import Lab, Result
from flowscope.errors import BenchError

_LOOP = """
import socket, sys, time
n = int(sys.argv[1])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(128)
addr = srv.getsockname()
t = time.perf_counter()
for _ in range(n):
    c = socket.create_connection(addr)
    a, _ = srv.accept()
    c.close()
    a.close()
print((time.perf_counter() - t) / n * 1e6)
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def owner_hooks(lab: Lab) -> Iterator[Result]:
    """Microseconds per TCP connection (connect, accept, close) with the socket hooks
    attached, beside the same without them."""
    from flowscope.kernel.owners import OwnerHooks
    from flowscope.kernel.program import FlowProgram

    n = max(lab.settings.ringbuf_flows // 20, 1000)  # what the socket ring buffer holds
    rounds = min(lab.settings.rounds, 5)
    ns = f"fsbench{os.getpid()}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")

        def connections() -> float:
            out = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", _LOOP, str(n)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            return float(out.stdout)

        with FlowProgram(flow_entries=1024, owners=True) as program:
            hooked, bare = [], []
            hooks = OwnerHooks(program)
            try:
                for _ in range(rounds):
                    hooks.attach()
                    hooked.append(connections())
                    seen = len(hooks.poll())
                    hooks.close()
                    if seen < n:
                        raise BenchError(
                            f"owner_hooks: {seen} sockets announced for {n} connections"
                        )
                    bare.append(connections())
            finally:
                hooks.close()
    finally:
        _ip("netns", "del", ns)
    yield Result("owner_hooks_connection", min(hooked), "us/conn", "connection_bare", min(bare))
