"""A replay split over processes (collect.split): the same records as one process, and the truth.

Each check runs the real replay build through BPF_PROG_TEST_RUN, once with one process and once
with one per CPU (two here), on captures whose flows span several ticks and several kinds of
frame (IPv4 with and without VLAN tags, IPv6, ARP), in both directions. The truth is what the
test wrote into the capture: each flow's packets, bytes, first and last time.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from flowscope import abi
from flowscope.collect import split
from flowscope.collect.capture import Capture
from flowscope.collect.collector import CollectorSettings
from flowscope.collect.replay import ReplaySettings, _nothing, _run_frames, replay
from flowscope.model import FlowRecord, NewFlow, PendingFlows, Sample
from tests.pcaps import T0, pcap_header, pcap_record

pytestmark = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2 and os.environ.get("CI") != "true",
    reason="a split replay needs two CPUs",
)

HOSTS4 = [f"198.18.{i // 200}.{i % 200 + 1}" for i in range(40)]
HOSTS6 = [f"2001:db8::{i:x}" for i in range(1, 21)]
KINDS = ("tcp", "udp", "vlan", "qinq", "v6", "arp")


def frame(kind: str, a: int, b: int, port: int, back: bool) -> Packet:
    """A frame of ``kind`` between host a and host b (b to a when ``back``)."""
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if kind == "arp":
        return eth / ARP(psrc=HOSTS4[a], pdst=HOSTS4[b])
    if kind == "v6":
        s, d = HOSTS6[a % 20], HOSTS6[b % 20]
        ip: Packet = IPv6(src=d if back else s, dst=s if back else d)
    else:
        ip = IP(src=HOSTS4[b] if back else HOSTS4[a], dst=HOSTS4[a] if back else HOSTS4[b])
    sport, dport = (443, 40000 + port) if back else (40000 + port, 443)
    l4 = UDP(sport=sport, dport=dport) if kind == "udp" else TCP(sport=sport, dport=dport)
    pkt = ip / l4 / Raw(b"x" * (port % 7 * 10))
    if kind == "vlan":
        return eth / Dot1Q(vlan=10 + port % 3) / pkt
    if kind == "qinq":
        return eth / Dot1AD(vlan=7) / Dot1Q(vlan=20) / pkt
    return eth / pkt


def capture(path: Path, frames: list[tuple[int, Packet]]) -> Path:
    out = pcap_header()
    for us, pkt in frames:
        raw = bytes(pkt)
        out += pcap_record(raw, T0 + us // 10**6, us % 10**6, wire=len(raw))
    path.write_bytes(out)
    return path


class Sink:
    """Everything a replay hands its sink."""

    def __init__(self) -> None:
        self.records: list[FlowRecord] = []
        self.events: list[NewFlow] = []
        self.samples: list[Sample] = []

    def submit(
        self,
        records: Any,
        sample: Sample | None,
        events: Any,
        pending: list[PendingFlows] | None = None,
    ) -> None:
        self.records += records
        self.events += events
        if sample is not None:
            self.samples.append(sample)

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


SETTINGS = CollectorSettings(interval=1.0, idle_timeout=1.5, active_timeout=3.0)


def run(path: Path, workers: int) -> tuple[Sink, dict[str, int]]:
    sink = Sink()
    summary = replay(ReplaySettings(path, collector=SETTINGS, workers=workers), sink)
    assert summary.damage is None and not summary.interrupted
    # what the summary says of the file, whichever process ran its frames
    counters = {**summary.counters, "frames": summary.frames}
    counters["first_ns"], counters["last_ns"] = summary.first_ns or 0, summary.last_ns or 0
    return sink, counters


def records(sink: Sink) -> list[tuple[Any, ...]]:
    return sorted(
        (r.key, r.iface, r.packets, r.bytes, r.ip_bytes, r.first_seen, r.last_seen, r.tcp_flags,
         r.end_reason)
        for r in sink.records
    )  # fmt: skip


FRAMES = st.lists(
    st.tuples(
        st.integers(0, 6_000_000),  # microseconds: six ticks
        st.sampled_from(KINDS),
        st.integers(0, 39),
        st.integers(0, 39),
        st.integers(0, 5),
        st.booleans(),
    ),
    min_size=1,
    max_size=300,
)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(FRAMES)
def test_a_split_replay_makes_the_records_of_one_process_and_of_the_truth(
    tmp_path: Path, drawn: list[tuple[int, str, int, int, int, bool]]
) -> None:
    frames = sorted(((us, frame(k, a, b, p, back)) for us, k, a, b, p, back in drawn),
                    key=lambda f: f[0])  # fmt: skip
    path = capture(tmp_path / "split.pcap", frames)
    one, one_counters = run(path, 1)
    two, two_counters = run(path, 2)
    assert records(two) == records(one)
    assert sorted((e.key, e.time, e.length) for e in two.events) == sorted(
        (e.key, e.time, e.length) for e in one.events
    )
    assert two_counters == one_counters
    assert [s.active_flows for s in two.samples] == [s.active_flows for s in one.samples]
    # the truth: every IP frame counted once, in a flow between its own two hosts
    ip_frames = [f for f in frames if not f[1].haslayer(ARP)]
    assert sum(r.packets for r in two.records) == len(ip_frames)
    assert sum(r.bytes for r in two.records) == sum(len(bytes(p)) for _, p in ip_frames)
    sent = Counter(p[IP].src if p.haslayer(IP) else p[IPv6].src for _, p in ip_frames)
    got: Counter[str] = Counter()
    for r in two.records:
        got[r.key.src] += r.packets
    assert got == sent
    assert two_counters["non_ip"] == len(frames) - len(ip_frames)
    assert two_counters["frames"] == len(frames)
    assert two_counters["last_ns"] == T0 * 10**9 + frames[-1][0] * 1000


def test_the_frames_are_shared_out_and_each_flow_stays_in_one_share() -> None:
    shares: dict[tuple[str, int, int], set[int]] = {}
    for kind in KINDS:
        for a in range(8):
            for b in range(8):
                for back in (False, True):
                    raw = bytes(frame(kind, a, b, 1, back))
                    shares.setdefault((kind, a, b), set()).add(split.share(raw, 0, len(raw), 2))
    # both ways of a flow: one share; IP flows use both shares; ARP (not IP) is share 0
    assert all(len(s) == 1 for s in shares.values())
    for kind in KINDS:
        used = set().union(*(s for (k, _, _), s in shares.items() if k == kind))
        assert used == ({0} if kind == "arp" else {0, 1}), kind
    assert split.share(b"\x00" * 13, 0, 13, 2) == 0


class RecordingRunner:
    """A stand-in for kernel.testrun.ReplayRunner that only notes which frames it was given
    (for the choice of frames alone: the kernel runs them in the tests above)."""

    def __init__(self) -> None:
        self.control = bytearray(64)
        self.frames: list[bytes] = []

    def per_frame(self) -> tuple[Any, ...]:
        def pack(_control: Any, _at: int, m: int, _size: int, start: int, _m: int) -> None:
            # the m bytes at start are the frame's metadata, then the frame
            self.frames.append(ctypes.string_at(start, m)[abi.REPLAY_META_SIZE :])

        return pack, lambda _fd, _opts: 0, -1, None, 0


def test_each_flow_is_run_by_exactly_one_process(tmp_path: Path) -> None:
    """Which frames each process runs, as the replay loop chooses them (split.share, and its
    inline form for untagged IPv4): the shares are disjoint, cover every frame, and hold
    each flow (here: the frames between two hosts) in one of them."""
    frames = [
        (i * 1000, frame(kind, a, b, a % 6, back))
        for i, (kind, a, b, back) in enumerate(
            (k, a, b, back) for k in KINDS for a in range(8) for b in range(8) for back in (0, 1)
        )
    ]
    path = capture(tmp_path / "shares.pcap", frames)
    runs = []
    for part in (0, 1):
        runner = RecordingRunner()
        with Capture(path) as cap:
            counts = cast(Any, SimpleNamespace(too_short=0, too_short_bytes=0))
            _run_frames(cap, cast(Any, runner), counts, part, 2, lambda _ts: 2**62, _nothing)
        runs.append(runner.frames)
    assert sorted(runs[0] + runs[1]) == sorted(bytes(p) for _, p in frames)

    def hosts(raw: bytes) -> frozenset[str]:
        pkt = Ether(raw)
        ip = pkt[IP] if pkt.haslayer(IP) else pkt[IPv6] if pkt.haslayer(IPv6) else None
        return frozenset((ip.src, ip.dst)) if ip is not None else frozenset({"not ip"})

    first, second = ({hosts(f) for f in run} for run in runs)
    assert first and second and not first & second


def big_capture(path: Path, n: int) -> Path:
    pkts = [bytes(frame("tcp", a, (a + 1) % 40, 1, False)) for a in range(40)]
    out = [pcap_header()]
    for i in range(n):
        out.append(pcap_record(pkts[i % 40], T0 + i // 100_000, i % 100_000 * 10))
    path.write_bytes(b"".join(out))
    return path


def alive(pid: int) -> bool:
    """A process that runs (not gone, not a zombie waiting for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def start_replay(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowscope", "replay", str(path), "--json", "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not children(proc.pid):  # the helper is forked once the program is compiled
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc


def test_ctrl_c_keeps_what_was_replayed_and_leaves_no_helper(tmp_path: Path) -> None:
    proc = start_replay(big_capture(tmp_path / "big.pcap", 3_000_000))
    helpers = children(proc.pid)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    lines = out.splitlines()
    assert lines and '"summary"' in lines[-1]
    assert '"complete": false' in lines[-1]
    assert len(lines) > 1  # the flows replayed before Ctrl-C were finished and printed
    assert helpers and not any(alive(pid) for pid in helpers)


def test_a_replay_killed_with_9_leaves_no_helper(tmp_path: Path) -> None:
    proc = start_replay(big_capture(tmp_path / "big.pcap", 3_000_000))
    helpers = children(proc.pid)
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    assert helpers
    while any(alive(pid) for pid in helpers):
        assert time.monotonic() < deadline, "a helper outlived its replay"
        time.sleep(0.05)
