"""The console's own benchmark (issue 4): CPU time per tick with many live flows, and the time
from a key press to the repainted table. Run by `flowscope bench`; kept here because only
flowscope/ui/ imports textual.

The app runs headless (Textual's test driver, 160x48) on synthetic ticks: N IPv4 flows with
random rates that change every tick, a few new-flow events, so every tick re-sorts, re-picks
the top rows and repaints them, as a busy server would make it do.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
from textual import events

from flowscope import abi
from flowscope.collect.collector import LiveFlows, Tick
from flowscope.model import FlowBatch, Sample
from flowscope.ui.messages import TickArrived

IFINDEX = 2
"""The interface index of the synthetic flows."""

MONO0 = 1_000 * 10**9
WALL0 = 1_795_000_000.0


@dataclass(frozen=True, slots=True)
class ConsoleCost:
    """What the console costs."""

    cpu_ms_per_tick: float
    """Process CPU time (all threads) per tick, ms."""
    wall_ms_per_tick: float
    """Wall time to take in and draw one tick, ms."""
    key_ms: float
    """Wall time from a sort-key press to the repainted table (median of the presses), ms."""


def synthetic_ticks(flows: int, count: int, seed: int = 1) -> list[TickArrived]:
    """``count`` one-second ticks over ``flows`` live IPv4 flows."""
    rng = np.random.default_rng(seed)
    keys = np.zeros(flows, abi.KEY4_DTYPE)
    keys["ifindex"] = IFINDEX
    src = np.arange(flows, dtype=np.uint64) + (198 << 24 | 18 << 16)
    keys["saddr"] = src.astype(">u4").view(np.uint8).reshape(flows, 4)
    keys["daddr"] = np.frombuffer(bytes([198, 19, 0, 1]), np.uint8)
    keys["sport"] = 1024 + np.arange(flows) % 60000
    keys["dport"] = rng.choice(np.array([22, 53, 80, 443, 5432], np.uint16), flows)
    keys["proto"] = 6
    packets = np.zeros(flows, np.uint64)
    nbytes = np.zeros(flows, np.uint64)
    out = []
    for t in range(count):
        now = MONO0 + t * 10**9
        pps = rng.pareto(1.5, flows) * 10
        dp = pps.astype(np.uint64)
        packets += dp
        nbytes += dp * 800
        batch = FlowBatch(
            family=abi.AF_INET,
            keys=keys,
            packets=packets.copy(),
            bytes=nbytes.copy(),
            ip_bytes=nbytes.copy(),
            first_seen=np.full(flows, MONO0, np.uint64),
            last_seen=np.full(flows, now, np.uint64),
            tcp_flags=np.full(flows, 0x18, np.uint8),
        )
        empty6 = FlowBatch.from_percpu(
            abi.AF_INET6, np.zeros(0, abi.KEY6_DTYPE), np.zeros((0, 1), abi.VALUE_DTYPE)
        )
        live = [
            LiveFlows(batch, dp.astype(np.float64) * 800 * 8, dp.astype(np.float64)),
            LiveFlows(empty6, np.zeros(0), np.zeros(0)),
        ]
        sample = Sample(
            time=WALL0 + t,
            interval=1.0,
            bps=float(dp.sum()) * 800 * 8,
            pps=float(dp.sum()),
            active_flows=flows,
            new_flows=0,
            counters=dict.fromkeys((c.name.lower() for c in abi.Counter), 0) | {"evicted": 0},
        )
        out.append(TickArrived(Tick(sample, [], [], live, 0), now))
    return out


async def _measure(flows: int, ticks: int, presses: int) -> ConsoleCost:
    from flowscope.ui.app import make_app
    from flowscope.ui.source import ScriptedSource

    source = ScriptedSource(synthetic_ticks(flows, ticks + presses + 2), preload=1)
    app = make_app(source, clock=lambda: WALL0, lookup=lambda addr: None)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        source.step()
        await pilot.pause()
        # pause(0): every message queued so far handled, then the screen painted at once.
        # Pilot's press() and pause() without a delay also sleep until the process looks
        # idle (in 20 ms steps, at least three times per key): time the app spends asleep in
        # the test harness is no part of the app's reaction.
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(ticks):
            source.step()
            await pilot.pause(0)
        cpu = (time.process_time() - cpu0) / ticks
        wall = (time.perf_counter() - wall0) / ticks
        key_times = []
        for _ in range(presses):
            await pilot.pause()
            before = app.live.spec.sort
            t0 = time.perf_counter()
            app.post_message(events.Key("s", "s"))  # next sort column: a new order of the top rows
            await pilot.pause(0)
            key_times.append(time.perf_counter() - t0)
            sort = app.live.spec.sort
            assert sort != before and app.live.table.header(sort).endswith(("▼", "▲"))
        await pilot.press("q")
    return ConsoleCost(cpu * 1e3, wall * 1e3, float(np.median(key_times)) * 1e3)


def measure(flows: int = 100_000, ticks: int = 10, presses: int = 5) -> ConsoleCost:
    """Run the console headless on ``flows`` live flows and measure it."""
    return asyncio.run(_measure(flows, ticks, presses))
