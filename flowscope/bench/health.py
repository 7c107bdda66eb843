"""What following TCP health and kernel drops costs under a bulk transfer.

health_hooks_bulk: one TCP connection sends as fast as it can from this namespace across a
veth pair made for the purpose, into a namespace made for it, through a rate-limited (tbf)
host end, so that the queue overflows: the sender retransmits and the qdisc drops, the
events the hooks exist for. The sock_ops program (bpf/owners.c: RETRANS, RTT and STATE
callbacks) and the drop hook (bpf/drops.c on skb:kfree_skb) are timed by the kernel
(BPF_ENABLE_STATS), and their nanoseconds are divided by the packets the host end sent; beside
it, the CPU the same transfer takes per packet with the hooks off (the sender's user and
system time, where the veth's transmit path runs, over the packets it sent). The ratio is the
share of a bulk transfer's CPU the hooks add. The flow programs (XDP, TC) are not attached:
the hot-path rows measure them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from flowscope.bench.harness import Lab, Result
from flowscope.bench.netlab import server_in, veth_lab
from flowscope.errors import BenchError

_NET = ("198.18.255.249", "198.18.255.250")  # a /30 of the benchmark range
_PORT = 7302

_SINK = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept()
    while c.recv(1 << 16):
        pass
    c.close()
"""

_SEND = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
end = time.monotonic() + float(sys.argv[3])
data = b"z" * 65536
while time.monotonic() < end:
    c.sendall(data)
c.shutdown(socket.SHUT_WR)
c.recv(1)
"""


def _tx_packets(ifname: str) -> int:
    return int(Path(f"/sys/class/net/{ifname}/statistics/tx_packets").read_text())


def _transfer(host_if: str, seconds: float) -> tuple[int, float]:
    """(packets the host end sent, CPU seconds the sender took) of one bulk transfer."""
    before = _tx_packets(host_if)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SEND, _NET[1], str(_PORT), str(seconds)],
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        assert proc.stderr is not None
        raise BenchError(f"health_hooks_bulk: the sender failed: {proc.stderr.read()[-200:]!r}")
    return _tx_packets(host_if) - before, usage.ru_utime + usage.ru_stime


def health_bulk(lab: Lab) -> Iterator[Result]:
    """Nanoseconds the health and drop hooks run per packet of a lossy bulk transfer, beside
    the CPU nanoseconds per packet of the transfer without them."""
    from flowscope.kernel import libbpf
    from flowscope.kernel.drops import DropHooks
    from flowscope.kernel.owners import OwnerHooks
    from flowscope.kernel.program import FlowProgram

    seconds = float(min(lab.settings.churn_seconds, 3))
    with (
        veth_lab(f"{os.getpid()}t", *_NET) as net,
        server_in(net, _SINK, str(_PORT), what="health_hooks_bulk"),
    ):
        subprocess.run(
            ["tc", "qdisc", "add", "dev", net.host_if, "root", "tbf", "rate", "200mbit",
             "burst", "32kbit", "latency", "5ms"],
            check=True, capture_output=True,
        )  # fmt: skip
        with FlowProgram(flow_entries=1024, owners=True) as program:
            off_packets, off_cpu = _transfer(net.host_if, seconds)
            owners = OwnerHooks(program)
            try:
                drops = DropHooks(program)
            except BaseException:
                owners.close()
                raise
            stats = libbpf.enable_run_stats()
            try:

                def hooks_ns() -> int:
                    return owners.run_stats()[0] + libbpf.prog_run_stats(drops.prog_fd)[0]

                before = hooks_ns()
                on_packets, _ = _transfer(net.host_if, seconds)
                time.sleep(0.1)
                spent = hooks_ns() - before
                dropped = sum(drops.by_reason().values())
            finally:
                os.close(stats)
                drops.close()
                owners.close()
    if not dropped or not on_packets or not off_packets:
        raise BenchError(f"health_hooks_bulk: no drops ({dropped}) or no packets to measure")
    yield Result(
        "health_hooks_bulk",
        spent / on_packets,
        "ns/packet",
        "bulk_transfer_cpu",
        off_cpu * 1e9 / off_packets,
    )
