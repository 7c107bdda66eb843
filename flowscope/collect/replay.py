"""``flowscope replay``: a capture file through the real XDP program, on the capture's clock.

Every frame runs through the replay build of the same program with BPF_PROG_TEST_RUN (see
flowscope/kernel/testrun.py), which takes the frame's time, original length and interface from
metadata in front of it. The collector is the live one, driven by a clock that is the capture's:
it ticks at every capture-second boundary a frame crosses, so idle and active expiry, samples and
new-flow events follow the same rules as ``record`` would have on that traffic. Stretches of the
capture in which no flow is alive are skipped rather than ticked through second by second.

Whatever was replayed is finished (the last tick, then every live flow with end reason
'shutdown') also when the file turns out damaged halfway or Ctrl-C stops it; the damage is
reported afterwards.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flowscope import abi
from flowscope.collect import split
from flowscope.collect.capture import RELEASE_EVERY, Capture, CaptureError
from flowscope.collect.collector import Collector, CollectorSettings, FlowSource, Tick
from flowscope.collect.recorder import Sink
from flowscope.model import (
    FlowBatch,
    FlowEvent,
    FlowRecord,
    NewFlow,
    PendingFlows,
    Sample,
    proto_name,
    tcp_flags_text,
)

if TYPE_CHECKING:
    from flowscope.kernel.testrun import ReplayRunner

EVENT_DRAIN_FRAMES = 16384
"""Frames between two drains of the ring buffer (and progress updates): 16,384 new-flow events
of 72 bytes fit in the replay build's 8 MiB ring many times over."""
MAX_WRITER_BACKLOG = 200_000
"""Records the history writer may have waiting before the replay waits for it: a replay is
faster than any disk, and unlike live collection it can afford to wait rather than drop."""


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """What ``flowscope replay`` is told."""

    path: Path
    """The pcap or pcapng file."""
    flow_entries: int = abi.DEFAULT_FLOW_ENTRIES
    """Size of each kernel flow map, as for live collection."""
    collector: CollectorSettings = field(default_factory=CollectorSettings)
    """Tick interval and expiry timeouts, on capture time."""
    workers: int | None = None
    """Processes that run frames, each on its own CPU (collect.split); None: one per CPU
    for a capture of at least split.SPLIT_BYTES, one for a smaller one."""


@dataclass(slots=True)
class ReplaySummary:
    """What a replay did: for the summary line and the closing message."""

    frames: int = 0
    """Frames read from the file (fed to the program, or counted as too short)."""
    too_short: int = 0
    """Frames shorter than an Ethernet header (counted as packets and malformed)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Records passed over, by reason (empty, over_snaplen, unknown_interface)."""
    counters: dict[str, int] = field(default_factory=dict)
    """Kernel counters at the end, summed over CPUs, by lower-case name."""
    first_ns: int | None = None
    """Time of the first frame (ns since the epoch)."""
    last_ns: int | None = None
    """Time of the last frame."""
    records: int = 0
    events: int = 0
    ticks: int = 0
    seconds: float = 0.0
    """Wall-clock seconds the whole replay took (compiling the program included)."""
    loop_seconds: float = 0.0
    """Wall-clock seconds of the frame loop alone (reading, running, ticking)."""
    interrupted: bool = False
    damage: CaptureError | None = None
    """Why the file was not read to its end, if it was not."""
    cut_off: bool = False
    """The damage is a file that ends inside a record (an interrupted capture)."""
    interfaces: dict[int, str] = field(default_factory=dict)


class _ReplaySource:
    """The program as the collector's FlowSource, with the frames too short for
    BPF_PROG_TEST_RUN added to the counters, where the live program would have put them."""

    def __init__(self, program: FlowSource) -> None:
        self.program = program
        self.flow_entries = program.flow_entries
        self.map_bytes = program.map_bytes
        self.too_short = 0
        self.too_short_bytes = 0

    def read_flows(self, family: int) -> FlowBatch:
        return self.program.read_flows(family)

    def take_flows(self, family: int, keys: np.ndarray) -> tuple[np.ndarray, FlowBatch]:
        return self.program.take_flows(family, keys)

    def take_floods(self) -> tuple[np.ndarray, np.ndarray]:
        return self.program.take_floods()

    def read_counters(self) -> dict[abi.Counter, int]:
        counters = dict(self.program.read_counters())
        counters[abi.Counter.PACKETS] += self.too_short
        counters[abi.Counter.BYTES] += self.too_short_bytes
        counters[abi.Counter.MALFORMED] += self.too_short
        return counters

    def open_events(self, callback: Callable[[FlowEvent], None]) -> None:
        self.program.open_events(callback)

    def poll_events(self, timeout_ms: int = 0) -> None:
        self.program.poll_events(timeout_ms)


def _nothing(_n: int, _addr: int) -> None:
    return None


class _CaptureClock:
    """The time as the collector sees it: the capture's, in ns since the epoch. Both of the
    collector's clocks read it, so its monotonic-to-wall offset is exactly 0."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def monotonic_ns(self) -> int:
        return self.now_ns

    def wall_time(self) -> float:
        return self.now_ns / 1e9


def replay(
    settings: ReplaySettings,
    sink: Sink,
    *,
    progress: Callable[[int, int], None] | None = None,
    backlog: Callable[[], int] | None = None,
    on_tick: Callable[[Tick], None] | None = None,
) -> ReplaySummary:
    """Replay the capture into ``sink`` (records, samples and events of every tick).

    ``progress(bytes_done, bytes_total)`` is called now and then; ``backlog()`` says how many
    records the sink still has waiting, and the replay pauses while it is above
    MAX_WRITER_BACKLOG; ``on_tick(tick)`` follows every tick on the capture's clock, as it
    follows the live ones of `record` (the metrics; the last tick carries the shutdown
    records too). Raises CaptureError before anything is replayed when the file cannot
    be replayed at all; damage found later is in the summary."""
    from flowscope.kernel.testrun import ReplayRunner, compile_replay_program

    summary = ReplaySummary()
    started = time.monotonic()
    with Capture(settings.path) as cap:
        program = compile_replay_program(flow_entries=settings.flow_entries)
        try:
            source = _ReplaySource(program)
            runner = ReplayRunner(program)
            interval_ns = max(1, int(settings.collector.interval * 1e9))
            clock = _CaptureClock(0)
            collector: Collector | None = None
            next_tick = 0
            affinity = os.sched_getaffinity(0)  # given back at the end
            cpus = sorted(affinity)
            parts = settings.workers or split.default_parts(cap.size, cpus)
            cpus = cpus[:parts]
            parts = len(cpus)
            helpers = split.Helpers()

            def tick_until(ts: int) -> None:
                """Tick at every boundary up to ts; skip the quiet stretches."""
                nonlocal next_tick
                assert collector is not None
                while ts >= next_tick:
                    clock.now_ns = next_tick
                    tick = collector.tick()
                    sink.submit(tick.records, tick.sample, tick.events, tick.pending)
                    summary.ticks += 1
                    summary.records += len(tick.records)
                    summary.events += len(tick.events)
                    if on_tick is not None:
                        on_tick(tick)
                    next_tick += interval_ns
                    if tick.sample.active_flows == 0 and ts >= next_tick:
                        next_tick += ((ts - next_tick) // interval_ns + 1) * interval_ns
                    if backlog is not None:
                        while backlog() > MAX_WRITER_BACKLOG:
                            time.sleep(0.01)
                clock.now_ns = ts

            def boundary(ts: int) -> int:
                """At the first frame at or past the next tick boundary: tick (every helper
                stopped at this frame too), and say the next boundary."""
                nonlocal collector, next_tick
                if helpers:
                    helpers.gather(ts)
                if collector is None:
                    summary.first_ns = ts
                    clock.now_ns = ts
                    collector = Collector(
                        source,
                        settings.collector,
                        iface_names=cap.interface_names,
                        monotonic_ns=clock.monotonic_ns,
                        wall_time=clock.wall_time,
                    )
                    next_tick = (ts // interval_ns + 1) * interval_ns
                else:
                    tick_until(ts)
                if helpers:
                    helpers.release(next_tick)
                return next_tick

            def helper(part: int, boundary: Callable[[int], int]) -> None:
                """A helper process's run: its share of the frames, meeting the replay at
                each boundary (the frames it counts, and the progress, are the replay's)."""
                stop = _run_frames(cap, runner, source, part, parts, boundary, _nothing)[2]
                if stop is not None:
                    raise stop  # no DONE: the replay must not take it as finished

            def every_drain(n: int, addr: int) -> None:
                """Every EVENT_DRAIN_FRAMES frames: the ring buffer, and progress."""
                program.poll_events(0)
                if progress is not None:
                    progress(cap.offset(addr), cap.size)

            loop_start = time.perf_counter()
            failure: split.SplitError | None = None
            try:
                if parts > 1:
                    try:
                        helpers.start(cpus, helper)
                        os.sched_setaffinity(0, {cpus[0]})
                    except split.SplitError:
                        parts = 1  # no process to spare: the replay runs every frame itself
                n, last_ts, stop = _run_frames(cap, runner, source, 0, parts, boundary, every_drain)
                if stop is None and helpers:
                    try:
                        helpers.finish()  # the helpers' last frames, before the last tick
                    except (KeyboardInterrupt, SystemExit, split.SplitError) as e:
                        stop = e
                # Ctrl-C, or SIGTERM turned into SystemExit by the CLI: what was replayed is
                # still finished and kept, as `record` does; so it is when a helper failed,
                # which is told afterwards
                summary.interrupted = isinstance(stop, (KeyboardInterrupt, SystemExit))
                failure = stop if isinstance(stop, split.SplitError) else None
            finally:
                helpers.close()
                if parts > 1:
                    os.sched_setaffinity(0, affinity)
                summary.loop_seconds = time.perf_counter() - loop_start
            if collector is not None:
                # the last partial tick at the last frame's time, then every live flow
                clock.now_ns = max(last_ts, clock.now_ns)
                tick = collector.tick()
                sink.submit(tick.records, tick.sample, tick.events, tick.pending)
                last = collector.shutdown()
                sink.submit(last, None, [], [])
                summary.ticks += 1
                summary.records += len(tick.records) + len(last)
                summary.events += len(tick.events)
                if on_tick is not None:
                    on_tick(dataclasses.replace(tick, records=[*tick.records, *last]))
            if progress is not None:
                progress(cap.size if not summary.interrupted else cap.offset(0), cap.size)
            summary.frames = n
            summary.too_short = source.too_short
            summary.last_ns = last_ts if n else None
            summary.counters = {c.name.lower(): v for c, v in source.read_counters().items()}
            summary.skipped = cap.skipped.as_dict()
            summary.damage = cap.damage
            summary.cut_off = cap.cut_off
            summary.interfaces = dict(cap.interface_names)
        finally:
            program.close()
    summary.seconds = time.monotonic() - started
    if failure is not None:
        raise failure
    return summary


def _run_frames(
    cap: Capture,
    runner: ReplayRunner,
    source: _ReplaySource,
    part: int,
    parts: int,
    boundary: Callable[[int], int],
    every_drain: Callable[[int, int], None],
) -> tuple[int, int, BaseException | None]:
    """Run the frames of share ``part`` of ``parts`` (split.share; all of them with one part),
    calling ``boundary(ts)`` at the first frame past each tick boundary (it returns the next
    one) and ``every_drain`` every EVENT_DRAIN_FRAMES frames. Returns the frames read, the last
    frame's time, and what stopped it before the end: Ctrl-C (or SIGTERM made SystemExit), or
    a helper that failed (split.SplitError). The frames too short to run are counted in
    ``source``."""
    from flowscope.kernel.testrun import MAX_FRAME, MIN_FRAME, check

    meta = abi.REPLAY_META_SIZE
    pack, call, fd, opts, opts_size = runner.per_frame()
    control = runner.control
    frames = cap.frames()
    mapping, base, size = cap.mapping or b"", cap.base, cap.size
    share = split.share
    n = 0
    last_ts = 0
    next_tick = 0
    drain = EVENT_DRAIN_FRAMES
    release = RELEASE_EVERY
    try:
        for ts, addr, length in frames:
            if ts >= next_tick:
                next_tick = boundary(ts)
            last_ts = ts
            n += 1
            if not MIN_FRAME <= length <= MAX_FRAME:
                if length < MIN_FRAME:
                    source.too_short += 1
                    source.too_short_bytes += length
                    continue
                length = MAX_FRAME
            if parts > 1:
                at = addr - base
                if (
                    0 <= at < size
                    and mapping[at + 12] == 8
                    and not mapping[at + 13]
                    and length > 33
                ):
                    # split.share's untagged IPv4, inline: the common frame, read by every process
                    mine = (mapping[at + 29] ^ mapping[at + 33]) % parts == part
                elif 0 <= at < size:
                    mine = share(mapping, at, length, parts) == part
                else:  # a frame copied out of the file (raw IP, loopback)
                    mine = share(ctypes.string_at(addr, min(length, 96)), 0, length, parts) == part
                if not mine:
                    length = 0
            if length:
                m = meta + length
                pack(control, 4, m, opts_size, addr - meta, m)
                ret = call(fd, opts)
                if ret < 0:
                    check(ret)
            if not n % drain:
                done = cap.offset(addr)
                if done >= release:
                    cap.release(done)
                    release = done + RELEASE_EVERY
                every_drain(n, addr)
    except (KeyboardInterrupt, SystemExit, split.SplitError) as e:
        return n, last_ts, e
    finally:
        frames.close()
    return n, last_ts, None


# -- --json ------------------------------------------------------------------------------------


def iso_us(t: float) -> str:
    """Unix seconds as ISO 8601 UTC with microseconds (captures usually have them)."""
    us = round(t * 1_000_000)
    second, frac = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{frac:06d}Z"


def record_json(r: FlowRecord) -> dict[str, object]:
    """One flow record as ``replay --json`` prints it."""
    return {
        "iface": r.iface,
        "vlan": r.key.vlan,
        "src": r.key.src,
        "dst": r.key.dst,
        "sport": r.key.sport,
        "dport": r.key.dport,
        "proto": proto_name(r.key.proto),
        "packets": r.packets,
        "bytes": r.bytes,
        "ip_bytes": r.ip_bytes,
        "first_seen": iso_us(r.first_seen),
        "last_seen": iso_us(r.last_seen),
        "tcp_flags": tcp_flags_text(r.tcp_flags),
        "end_reason": r.end_reason,
    }


def summary_json(s: ReplaySummary, path: Path) -> dict[str, object]:
    """The last line of ``replay --json``: the kernel counters and what the replay read."""
    return {
        "summary": {
            "file": str(path),
            "frames": s.frames,
            "records": s.records,
            "first_seen": iso_us(s.first_ns / 1e9) if s.first_ns is not None else None,
            "last_seen": iso_us(s.last_ns / 1e9) if s.last_ns is not None else None,
            "interfaces": {str(k): v for k, v in s.interfaces.items()},
            "skipped": s.skipped,
            "complete": s.damage is None and not s.interrupted,
        },
        "counters": s.counters,
    }


class JsonSink:
    """Prints each flow record as one JSON line as soon as the collector finishes it, so a
    replay stopped by damage or Ctrl-C has printed everything before."""

    def __init__(self, write: Callable[[str], object]) -> None:
        self._write = write

    def submit(
        self,
        records: Sequence[FlowRecord],
        sample: Sample | None,
        events: Sequence[NewFlow],
        pending: Sequence[PendingFlows] | None = None,
    ) -> None:
        for r in records:
            self._write(json.dumps(record_json(r)) + "\n")

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass
