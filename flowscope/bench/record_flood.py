"""What floods cost the ticks of `record`, where every flow is followed (its process, drops and
resets), measured as an operator runs it.

record_syn_flood: `flowscope record --direction both --idle-timeout 3` (its own process) on the
host end of a veth pair made for the purpose, while the namespace sends SETTINGS.flood_syns TCP
SYNs (built by flowscope.packets) from as many source ports to a closed port: each is refused
with a reset, so the flood makes a received flow with a drop and a sent flow with a reset each,
far more than the default map holds, and they all go idle together a few seconds later. The
figure is the longest tick of the recording (the samples' intervals), beside the interval asked
for: the issue of floods asks for no tick longer than twice the interval. The packets the
samples counted must be at least the SYNs sent (plus the odd neighbour solicitation)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from flowscope.bench.harness import Lab, Result
from flowscope.bench.netlab import veth_lab
from flowscope.errors import BenchError
from flowscope.packets import ETH_P_IP, IPPROTO_TCP, TCP_SYN, ethernet, ipv4, tcp

_NET = ("198.18.213.1", "198.18.213.2")
CLOSED_PORT = 81
RECORD_SECONDS = 14
INTERVAL = 1.0

_SENDER = """
import socket, sys
iface, size = sys.argv[1], int(sys.argv[2])
frames = sys.stdin.buffer.read()
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
for at in range(0, len(frames), size):
    s.send(frames[at : at + size])
"""
"""Sends the frames on stdin, each ``size`` bytes, out of ``iface``."""


def syn_frames(host_mac: str, src: str, dst: str, n: int, port: int) -> list[bytes]:
    """n TCP SYNs from ``src`` to ``dst``'s ``port``, each from its own source port, in
    Ethernet frames to ``host_mac``."""
    mac = bytes.fromhex(host_mac.replace(":", ""))
    return [
        ethernet(
            ETH_P_IP,
            ipv4(src, dst, IPPROTO_TCP, tcp(src, dst, 1024 + i % 64000, port, flags=TCP_SYN)),
            dst=mac,
        )
        for i in range(n)
    ]


def _samples(db: Path) -> list[tuple[float, int]]:
    """The recording's (interval, packets) per tick, nothing while it has none."""
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT interval, packets FROM samples ORDER BY time").fetchall()
    except sqlite3.Error:
        return []


def record_syn_flood(lab: Lab) -> Iterator[Result]:
    """The longest tick of `record` through a refused SYN flood, beside the interval."""
    host_ip, peer_ip = _NET
    n = lab.settings.flood_syns
    with (
        tempfile.TemporaryDirectory() as tmp,
        veth_lab(f"{os.getpid()}r", host_ip, peer_ip, prefix=24) as net,
    ):
        db = Path(tmp) / "flows.db"
        mac = Path(f"/sys/class/net/{net.host_if}/address").read_text().strip()
        frames = syn_frames(mac, peer_ip, host_ip, n, CLOSED_PORT)
        record = subprocess.Popen(
            [sys.executable, "-m", "flowscope", "record", "-i", net.host_if, "--db", str(db),
             "--direction", "both", "--idle-timeout", "3", "--interval", str(INTERVAL),
             "--duration", str(RECORD_SECONDS)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while len(_samples(db)) < 2:  # compiled, attached, ticking
                if record.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("record_syn_flood: record did not start")
                time.sleep(0.2)
            sender = subprocess.run(
                ["ip", "netns", "exec", net.ns, sys.executable, "-c", _SENDER, net.peer_if,
                 str(len(frames[0]))],
                input=b"".join(frames), capture_output=True, check=False,
            )  # fmt: skip
            if sender.returncode != 0:
                error = sender.stderr.decode(errors="replace")[-200:]
                raise BenchError(f"record_syn_flood: the sender failed: {error}")
            _, err = record.communicate(timeout=RECORD_SECONDS + 60)
        finally:
            if record.poll() is None:
                record.kill()
                record.wait()
        if record.returncode != 0:
            raise BenchError(f"record_syn_flood: record failed: {err.strip()[-200:]}")
        samples = _samples(db)
    received = sum(p for _, p in samples)
    if received < n:
        raise BenchError(f"record_syn_flood: {received} packets counted of {n} sent")
    yield Result(
        "record_syn_flood_longest_tick", max(i for i, _ in samples), "s", "record_interval",
        INTERVAL,
    )  # fmt: skip
