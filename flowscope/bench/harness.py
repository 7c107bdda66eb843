"""What every benchmark shares: its settings, its result (a figure beside its baseline, measured
side by side in the same run), interleaved and repeated BPF_PROG_TEST_RUN timing, and the lab
that loads each program once and checks afterwards that a frame landed in its flow."""

from __future__ import annotations

import functools
import ipaddress
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from flowscope import abi
from flowscope.bench.workload import other_flow_keys
from flowscope.errors import BenchError

if TYPE_CHECKING:
    from flowscope.kernel.libbpf import TestRunResult
    from flowscope.kernel.program import BareProgram, FlowProgram


BARE_NAME = "bare_xdp_pass"
BARE_TC_NAME = "bare_tc_unspec"
BIG_FLOW_ENTRIES = 131072
"""Map size for the benchmarks with 100,000 flows: room to spare, as a sized deployment has."""
NO_PREALLOC_CFLAGS = ("-DFLOW_MAP_FLAGS=BPF_F_NO_PREALLOC",)
"""The flow maps without preallocation: memory taken per insert (bench compares both)."""
INSERT_RINGBUF_PAGES = 2048
"""8 MiB: every one of 100,000 new-flow events (64 bytes + 8 of ring header) fits, so the insert
benchmark measures a successful announcement each time, not the cheaper "ring full" path."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How hard to measure. The defaults are what the README's numbers come from."""

    repeat: int = 1_000_000
    """Runs per BPF_PROG_TEST_RUN call for the per-packet benchmarks."""
    rounds: int = 15
    """Interleaved rounds of program and baseline; the minimum of each is kept. The host this
    VM runs on slows every program by up to a third for seconds at a time; 15 rounds (about 8
    seconds per benchmark) reach past such a stretch."""
    loads: int = 5
    """Separate loads of each program (and of the bare one) for the per-packet benchmarks; the
    median over the loads of their minimums is reported. Measured here: 8 loads of the same
    program ranged over 51-58 ns, a wider spread than the rounds of one load."""
    flows: int = 100_000
    """Flows pre-filled (xdp_hot_ipv4_tcp_100k) and inserted (xdp_insert_100k)."""
    drain_flows: tuple[int, ...] = (100_000, 1_000_000)
    """Flows in the map for the collector_tick benchmarks."""
    insert_records: int = 200_000
    """Flow records written by store_insert, in ticks of 10,000."""
    history_records: int = 10_000_000
    """Flow records over 24 hours in the database history_top20 queries."""
    ringbuf_flows: int = 100_000
    """New flows announced on the ring buffer before ringbuf_events drains them."""
    console_flows: int = 100_000
    """Live flows behind the console benchmarks."""
    detect_flows: int = 200_000
    """New flows of the spoofed SYN flood detect_flood feeds the detector."""
    flood_syns: int = 60_000
    """SYNs of the refused flood record_syn_flood sends (the default map holds 65,536 flows
    a family, and the flood makes two a SYN)."""
    churn_seconds: float = 5.0
    """Seconds of 1,000 new connections a second in owner_churn."""
    starts: int = 3
    """Compiles and console starts of the start-up benchmarks (the median is reported)."""


DEFAULT = Settings()
QUICK = Settings(
    repeat=100_000,
    rounds=3,
    loads=1,
    flows=10_000,
    drain_flows=(10_000,),
    insert_records=20_000,
    history_records=100_000,
    ringbuf_flows=10_000,
    console_flows=10_000,
    detect_flows=20_000,
    churn_seconds=1.0,
    flood_syns=2_000,
    starts=1,
)
"""A smoke test of the whole command in a few seconds; its numbers are rougher."""


@dataclass(frozen=True, slots=True)
class Result:
    """One measurement next to its baseline, both in ``unit``."""

    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    informative: bool = False
    """Not one of the issue's targets: a design choice's cost, shown so the README can cite it."""

    @property
    def ratio(self) -> float:
        """value / baseline; how many bare programs' worth of time the measured one costs."""
        return self.value / self.baseline if self.baseline > 0 else math.inf

    def as_dict(self) -> dict[str, object]:
        """The JSON object of ``flowscope bench --json``, one per line."""
        return {
            "name": self.name,
            "value": round(float(self.value), 1),
            "unit": self.unit,
            "baseline_name": self.baseline_name,
            "baseline": round(float(self.baseline), 1),
            "ratio": round(self.ratio, 3),
        }


# -- measuring ---------------------------------------------------------------------------------


def interleaved_min(runs: Sequence[Callable[[], int]], rounds: int) -> list[int]:
    """Call each run once per round, alternating the order between rounds so no run always
    follows the same neighbour, and keep the minimum duration of each."""
    best = [math.inf] * len(runs)
    order = list(range(len(runs)))
    for r in range(rounds):
        for i in order if r % 2 == 0 else reversed(order):
            best[i] = min(best[i], runs[i]())
    return [int(b) for b in best]


def _duration(run: Callable[..., TestRunResult], frame: bytes, repeat: int) -> int:
    return run(frame, repeat=repeat).duration_ns


def _timed(
    runs: Sequence[Callable[..., TestRunResult]], frame: bytes, repeat: int
) -> list[Callable[[], int]]:
    """One measurement per load: a test_run method called with ``repeat`` runs of the frame,
    giving the kernel's mean duration per run in ns."""
    return [functools.partial(_duration, run, frame, repeat) for run in runs]


def side_by_side(
    s: Settings,
    runs: Sequence[Callable[..., TestRunResult]],
    baselines: Sequence[Callable[..., TestRunResult]],
    frame: bytes,
) -> tuple[float, float]:
    """Every load of a program (``runs``: their test_run methods) next to every load of its
    baseline, on one frame: one untimed run of each first (a flow program's first packet
    inserts the flow: from then on it is hot), then median_of_loads of each side."""
    for run in (*runs, *baselines):
        run(frame)
    value, base = median_of_loads(
        [_timed(runs, frame, s.repeat), _timed(baselines, frame, s.repeat)], s.rounds
    )
    return value, base


def median_of_loads(groups: Sequence[Sequence[Callable[[], int]]], rounds: int) -> list[float]:
    """Each group holds one run per load of one program. Every run of every group is
    interleaved (interleaved_min); each group's result is the median of its loads' minimums."""
    flat = [run for group in groups for run in group]
    best = interleaved_min(flat, rounds)
    out: list[float] = []
    start = 0
    for group in groups:
        out.append(float(statistics.median(best[start : start + len(group)])))
        start += len(group)
    return out


class Lab:
    """The programs of one bench run, each compiled on first use (BCC takes seconds) and
    shared by the benchmarks that measure it in the same state."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._bares: dict[str, list[BareProgram]] = {}
        self._programs: dict[str, list[FlowProgram]] = {}

    def bares(self, kind: str = "xdp") -> list[BareProgram]:
        """settings.loads loads of a reference program: the XDP_PASS baseline (xdp), the
        TC_ACT_UNSPEC one of the egress program (tc), or the lookup and update alone
        (hash_floor)."""
        bares = self._bares.get(kind)
        if bares is None:
            from flowscope.kernel.program import BareProgram

            bares = self._bares[kind] = [BareProgram(kind) for _ in range(self.settings.loads)]
        return bares

    def bare(self) -> BareProgram:
        """One XDP_PASS baseline, for the benchmarks that are not per packet."""
        return self.bares()[0]

    def programs(self, role: str) -> list[FlowProgram]:
        """settings.loads loads of the flow program for one role: default (without the socket
        hooks), processes (with them, as record and live run), precise (FS_PRECISE_CLOCK),
        filled (a large map holding settings.flows other flows), full (a map of one entry
        that another flow holds: every frame is a flood's)."""
        progs = self._programs.get(role)
        if progs is None:
            progs = self._programs[role] = [self._load(role) for _ in range(self.settings.loads)]
        return progs

    def program(self, role: str) -> FlowProgram:
        """One load of the flow program for one role: the roles of programs(), or insert (a
        large map and a ring buffer big enough for every new-flow event)."""
        progs = self._programs.get(role)
        if progs is None:
            progs = self._programs[role] = [self._load(role)]
        return progs[0]

    def _load(self, role: str) -> FlowProgram:
        from flowscope.kernel.program import FlowProgram

        if role == "default":
            return FlowProgram()
        if role == "precise":
            return FlowProgram(cflags=("-DFS_PRECISE_CLOCK",))
        if role == "processes":
            return FlowProgram(owners=True)
        if role == "filled":
            prog = FlowProgram(flow_entries=BIG_FLOW_ENTRIES)
            prog.put_flows(abi.AF_INET, other_flow_keys(self.settings.flows))
            return prog
        if role == "block":  # the drop path built in (--allow-block)
            from flowscope.kernel.block import BLOCK_CFLAGS

            return FlowProgram(cflags=BLOCK_CFLAGS)
        if role == "full":  # a map of one entry, held by another flow
            prog = FlowProgram(flow_entries=1)
            prog.put_flows(abi.AF_INET, other_flow_keys(1))
            return prog
        if role == "insert":
            return FlowProgram(
                flow_entries=BIG_FLOW_ENTRIES, ringbuf_pages=INSERT_RINGBUF_PAGES, event_budget=0
            )
        if role == "no_prealloc":  # the default build with its flow maps allocated per insert
            return FlowProgram(cflags=NO_PREALLOC_CFLAGS)
        raise ValueError(role)

    def close(self) -> None:
        """Free every program compiled."""
        for progs in self._programs.values():
            for prog in progs:
                prog.close()
        for bares in self._bares.values():
            for bare in bares:
                bare.close()


CLEAN_COUNTERS = (
    abi.Counter.NON_IP,
    abi.Counter.MALFORMED,
    abi.Counter.TRUNCATED,
    abi.Counter.MAP_FULL,
    abi.Counter.RINGBUF_FULL,
)


def check_counted(
    name: str,
    prog: FlowProgram,
    flow: tuple[str, str, int, int],
    proto: int,
    vlan: int = 0,
    direction: int = abi.DIR_INGRESS,
) -> None:
    """Fail unless every frame was counted in a flow, and the benchmark's flow (source,
    destination, ports) is there with packets."""
    counters = prog.read_counters()
    dirty = {c.name.lower(): counters[c] for c in CLEAN_COUNTERS if counters[c]}
    if dirty:
        raise BenchError(
            f"{name}: the bench frames did not all land in flows ({dirty})",
            "the parser or the bench's frame builder changed; 'make test' should say which",
        )
    src = ipaddress.ip_address(flow[0]).packed
    family = abi.AF_INET if len(src) == 4 else abi.AF_INET6
    batch = prog.read_flows(family)
    keys = batch.keys
    hit = (
        (keys["saddr"] == np.frombuffer(src, np.uint8)).all(axis=1)
        & (keys["sport"] == flow[2])
        & (keys["dport"] == flow[3])
        & (keys["proto"] == proto)
        & (keys["vlan"] == vlan)
        & (keys["direction"] == direction)
    )
    if not (hit & (batch.packets > 0)).any():
        raise BenchError(
            f"{name}: the bench frame was not counted as the flow it is meant to exercise",
            "the parser or the bench's frame builder changed; 'make test' should say which",
        )


def per_packet(
    lab: Lab,
    name: str,
    progs: Sequence[FlowProgram],
    frame: bytes,
    flow: tuple[str, str, int, int],
    proto: int,
    vlan: int = 0,
) -> Result:
    """One frame through every load of the program and of the baseline, interleaved; the
    median over loads of each one's minimum."""
    bares = [b.test_run for b in lab.bares()]
    value, base = side_by_side(lab.settings, [p.test_run for p in progs], bares, frame)
    for prog in progs:
        check_counted(name, prog, flow, proto, vlan)
    return Result(name, value, "ns/packet", BARE_NAME, base)


def count_label(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k"
