"""What naming each flow's process costs, and how many flows get one under churn.

owner_hooks: the socket hooks (bpf/owners.c) run once per socket or connection, never per
packet, so the figure is per connection: connect, accept and close over the loopback of a
network namespace made for the purpose (never the machine's own). The hooks' own time is
the kernel's (BPF_ENABLE_STATS: every run of each hook timed, the sysctl left alone), summed
and divided by the connections made, beside what a whole connection takes without the hooks
(timed in a child process, the minimum of the rounds). Timing the connection with and
without the hooks instead gave 78-95 us either way: the hooks are far below that noise. The
XDP and TC programs are the same code with or without the hooks (the hot-path rows measure
them).

owner_churn: 1,000 new connections a second (TCP and unbound UDP, each on a new socket) from
this namespace to a server across a veth pair made for the purpose, recorded as ``record``
does (the XDP and TC programs on the host end, a collector tick a second, flows expiring as
they end): of the flows whose local end is the client's socket, how many carry the client's
own pid, beside how many there are. The target is all of them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

from flowscope import abi
from flowscope.bench.harness import Lab, Result
from flowscope.bench.netlab import ip, server_in, veth_lab
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


_SERVER = """
import socket, sys, threading
port = int(sys.argv[1])
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", port))
    while True:
        d, a = u.recvfrom(64)
        u.sendto(d, a)
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", port))
t.listen(4096)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, _ = t.accept()
    c.recv(64)
    c.sendall(b"ok")
    c.close()
"""

_CHURN = """
import socket, sys, time
host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
n = int(rate * seconds)
used = set()
t0 = time.perf_counter()
for i in range(n):
    wait = t0 + i / rate - time.perf_counter()
    if wait > 0:
        time.sleep(wait)
    if i % 2:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(b"x", (host, port))
        s.recvfrom(64)
    else:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"x")
        s.recv(64)
    used.add((s.type, s.getsockname()[1]))
    s.close()
print(n / (time.perf_counter() - t0), len(used), flush=True)
"""
CHURN_RATE = 1000.0
"""New connections a second in owner_churn (the issue's figure)."""
_CHURN_NET = ("198.18.255.253", "198.18.255.254")  # a /30 of the benchmark range


def owner_hooks(lab: Lab) -> Iterator[Result]:
    """Nanoseconds the socket hooks run per TCP connection (connect, accept, close), beside
    the nanoseconds of a whole connection without them."""
    from flowscope.kernel import libbpf
    from flowscope.kernel.owners import OwnerHooks
    from flowscope.kernel.program import FlowProgram

    n = max(lab.settings.ringbuf_flows // 20, 1000)  # what the socket ring buffer holds
    rounds = min(lab.settings.rounds, 5)
    ns = f"fsbench{os.getpid()}"
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "set", "lo", "up")

        def connections() -> float:
            out = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", _LOOP, str(n)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            return float(out.stdout)

        with FlowProgram(flow_entries=1024, owners=True) as program:
            bare = []
            hooks = OwnerHooks(program)
            stats = libbpf.enable_run_stats()
            try:
                hooks_ns = -hooks.run_stats()[0]
                for _ in range(rounds):
                    hooks.attach()
                    connections()
                    seen = len(hooks.poll())
                    hooks.close()
                    if seen < n:
                        raise BenchError(
                            f"owner_hooks: {seen} sockets announced for {n} connections"
                        )
                    bare.append(connections())
                hooks_ns += hooks.run_stats()[0]
            finally:
                os.close(stats)
                hooks.close()
    finally:
        ip("netns", "del", ns)
    per_conn = hooks_ns / (n * rounds)
    yield Result("owner_hooks_connection", per_conn, "ns/conn", "connection_bare", min(bare) * 1e3)


def owner_churn(lab: Lab) -> Iterator[Result]:
    """Flows of the churning client attributed to its pid, beside its local flows; then the
    connection rate reached, beside the one asked for."""
    from flowscope.collect.collector import Collector
    from flowscope.collect.owners import watch_processes
    from flowscope.kernel.session import Probe
    from flowscope.model import FlowRecord

    seconds = lab.settings.churn_seconds
    host_ip, peer_ip = _CHURN_NET
    port = 7300
    records: list[FlowRecord] = []
    with (
        veth_lab(f"{os.getpid()}c", host_ip, peer_ip) as net,
        server_in(net, _SERVER, str(port), what="owner_churn"),
        Probe([net.host_if], owners=True) as probe,
    ):
        table, watch = watch_processes(probe.program)
        try:
            if watch.problem is not None:
                raise BenchError(f"owner_churn: {watch.problem}")
            collector = Collector(probe.program, owners=table)
            client = subprocess.Popen(
                [sys.executable, "-c", _CHURN, peer_ip, str(port), str(CHURN_RATE),
                 str(seconds)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            while client.poll() is None:
                time.sleep(1.0)
                records += collector.tick().records
            out, err = client.communicate()
            if client.returncode != 0:
                raise BenchError(f"owner_churn: the client failed: {err.strip()[-200:]}")
            time.sleep(0.2)
            records += collector.tick().records
            records += collector.shutdown()
        finally:
            watch.close()
    owned: dict[object, bool] = {}
    for r in records:
        k = r.key
        local = k.src if k.direction == abi.DIR_EGRESS else k.dst
        if local != host_ip:
            continue
        mine = r.owner is not None and r.owner.pid == client.pid
        owned[k] = owned.get(k, True) and mine
    rate, sockets = out.split()
    # each socket a flow sent and one received (two UDP sockets that drew the same port
    # one after the other are one flow: the kernel map cannot tell them apart)
    expected = 2 * int(sockets)
    if len(owned) != expected:
        raise BenchError(f"owner_churn: {len(owned)} local flows for {expected} expected")
    yield Result("owner_churn_coverage", sum(owned.values()), "flows", "local_flows", len(owned))
    yield Result("owner_churn_rate", float(rate), "conn/s", "churn_target", CHURN_RATE)
