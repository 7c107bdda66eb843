"""What floods cost the ticks of `record`, where every flow is followed (its process, drops and
resets), measured as an operator runs it.

record_syn_flood: `flowscope record --direction both --idle-timeout 3` (its own process) on the
host end of a veth pair made for the purpose, while the namespace sends SETTINGS.flood_syns TCP
SYNs from as many source ports to a closed port: each is refused with a reset, so the flood
makes a received flow with a drop and a sent flow with a reset each, far more than the default
map holds, and they all go idle together a few seconds later. The figure is the longest tick of
the recording (the samples' intervals), beside the interval asked for: the issue of floods asks
for no tick longer than twice the interval. The SYNs the samples counted received must be at
least those sent (the sender's, plus the odd neighbour solicitation)."""

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

_NET = ("198.18.213.1", "198.18.213.2")
CLOSED_PORT = 81
RECORD_SECONDS = 14
INTERVAL = 1.0

_SENDER = """
import socket, struct, sys
iface, dmac, src_ip, dst_ip, n, port = sys.argv[1:7]
n, port = int(n), int(port)
smac = bytes.fromhex(open(f"/sys/class/net/{iface}/address").read().strip().replace(":", ""))
dmac = bytes.fromhex(dmac.replace(":", ""))
src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
def csum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
frames = []
for i in range(n):
    tcp = struct.pack("!HHIIBBHHH", 1024 + i % 64000, port, i, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, 20)
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    frames.append(dmac + smac + b"\\x08\\x00" + ip + tcp)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
for f in frames:
    s.send(f)
print(len(frames))
"""


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
            mac = Path(f"/sys/class/net/{net.host_if}/address").read_text().strip()
            sender = subprocess.run(
                ["ip", "netns", "exec", net.ns, sys.executable, "-c", _SENDER, net.peer_if, mac,
                 peer_ip, host_ip, str(n), str(CLOSED_PORT)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if sender.returncode != 0:
                raise BenchError(f"record_syn_flood: the sender failed: {sender.stderr[-200:]}")
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
