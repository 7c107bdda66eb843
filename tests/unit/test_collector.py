"""The collector's arithmetic on crafted snapshots: per-CPU sums, deltas, rates, counter wrap,
and the expiry decisions (idle, FIN/RST, active timeout, high-water eviction, shutdown)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from flowscope import abi
from flowscope.collect.collector import Collector, CollectorSettings, counter_delta
from flowscope.model import FlowBatch, FlowEvent, FlowKey

SEC = 1_000_000_000
NCPU = 2


@dataclass
class FakeFlow:
    """Per-CPU values of one flow: [(packets, bytes, ip_bytes, first, last, flags), ...]."""

    cpus: list[tuple[int, int, int, int, int, int]]


@dataclass
class FakeSource:
    """A FlowSource over dicts, with a clock the test moves."""

    flow_entries: int = 1000
    map_bytes: int = 0
    now: int = 1000 * SEC
    flows: dict[int, dict[tuple[str, str, int, int, int], FakeFlow]] = field(
        default_factory=lambda: {abi.AF_INET: {}, abi.AF_INET6: {}}
    )
    counters: dict[abi.Counter, int] = field(default_factory=lambda: dict.fromkeys(abi.Counter, 0))
    taken: list[tuple[str, str, int, int, int]] = field(default_factory=list)
    late_packets: int = 0  # packets that arrive between the read and the delete
    callback: Callable[[FlowEvent], None] | None = None

    def add(
        self,
        src: str,
        dst: str,
        sport: int,
        dport: int,
        proto: int,
        cpus: list[tuple[int, int, int, int, int, int]],
    ) -> None:
        fam = abi.AF_INET6 if ":" in src else abi.AF_INET
        self.flows[fam][(src, dst, sport, dport, proto)] = FakeFlow(cpus)

    def _batch(
        self, family: int, items: list[tuple[tuple[str, str, int, int, int], FakeFlow]]
    ) -> FlowBatch:
        kd = abi.KEY4_DTYPE if family == abi.AF_INET else abi.KEY6_DTYPE
        keys = np.zeros(len(items), kd)
        vals = np.zeros((len(items), NCPU), abi.VALUE_DTYPE)
        for i, ((src, dst, sport, dport, proto), flow) in enumerate(items):
            keys[i]["saddr"] = np.frombuffer(ipaddress.ip_address(src).packed, np.uint8)
            keys[i]["daddr"] = np.frombuffer(ipaddress.ip_address(dst).packed, np.uint8)
            keys[i]["sport"], keys[i]["dport"], keys[i]["proto"] = sport, dport, proto
            keys[i]["ifindex"] = 7
            for c, (p, b, ib, f, la, fl) in enumerate(flow.cpus):
                vals[i, c] = (p, b, ib, f, la, fl)
        return FlowBatch.from_percpu(family, keys, vals)

    def read_flows(self, family: int) -> FlowBatch:
        return self._batch(family, list(self.flows[family].items()))

    def take_flows(self, family: int, keys: np.ndarray) -> tuple[np.ndarray, FlowBatch]:
        """Remove the flows with these keys; late_packets arrive between read and delete."""
        by_key = {}
        for k, flow in self.flows[family].items():
            by_key[self._batch(family, [(k, flow)]).keys[0].tobytes()] = k
        found, items = [], []
        for raw in keys:
            k = by_key.get(raw.tobytes())
            found.append(k is not None and k in self.flows[family])
            if found[-1]:
                flow = self.flows[family].pop(k)
                self.taken.append(k)
                p, by, ib, f, la, fl = flow.cpus[0]
                flow.cpus[0] = (p + self.late_packets, by + 100 * self.late_packets, ib, f, la, fl)
                items.append((k, flow))
        return np.array(found, bool), self._batch(family, items)

    def read_counters(self) -> dict[abi.Counter, int]:
        return dict(self.counters)

    def take_floods(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(0, abi.FLOOD_KEY_DTYPE), np.zeros(0, abi.FLOOD_VALUE_DTYPE)

    def open_events(self, callback: Callable[[FlowEvent], None]) -> None:
        self.callback = callback

    def poll_events(self, timeout_ms: int = 0) -> None:
        pass


def make(src: FakeSource, **settings: float) -> Collector:
    return Collector(
        src,
        CollectorSettings(**settings),
        iface_names={7: "eth7"},
        monotonic_ns=lambda: src.now,
        wall_time=lambda: 1_700_000_000.0 + src.now / SEC,
    )


def test_per_cpu_values_are_summed_and_rates_come_from_deltas() -> None:
    src = FakeSource()
    t0 = src.now
    src.add(
        "198.18.0.1",
        "198.18.0.2",
        1000,
        80,
        6,
        [(10, 1000, 800, t0, t0, 0x02), (5, 500, 400, t0 - SEC, t0, 0x10)],
    )
    col = make(src)
    src.now += SEC
    tick = col.tick()
    live = tick.live[0]
    assert int(live.batch.packets[0]) == 15
    assert int(live.batch.bytes[0]) == 1500
    assert int(live.batch.first_seen[0]) == t0 - SEC  # the earliest CPU
    assert int(live.batch.tcp_flags[0]) == 0x12
    assert live.bps[0] == pytest.approx(1500 * 8)
    assert tick.flow_packets == 15
    # the sample's rates are the kernel's counters: here nothing counted them
    assert tick.sample.pps == 0
    # the next tick: 30 more packets on one CPU over 2 s
    src.flows[abi.AF_INET][("198.18.0.1", "198.18.0.2", 1000, 80, 6)].cpus[0] = (
        40,
        4000,
        3200,
        t0,
        src.now,
        0x02,
    )
    src.now += 2 * SEC
    # the kernel saw 40 packets, 10 of them where no flow could take them (map full)
    src.counters[abi.Counter.PACKETS] += 40
    src.counters[abi.Counter.BYTES] += 4000
    src.counters[abi.Counter.MAP_FULL] += 10
    tick = col.tick()
    assert tick.live[0].pps[0] == pytest.approx(15)
    assert tick.live[0].bps[0] == pytest.approx(3000 * 8 / 2)
    assert tick.flow_packets == 30 and tick.flow_bytes == 3000
    assert tick.sample.pps == pytest.approx(40 / 2)
    assert tick.sample.bps == pytest.approx(4000 * 8 / 2)
    assert tick.sample.counters["unattributed"] == 10
    assert tick.sample.active_flows == 1
    assert tick.records == []


def test_kernel_counter_deltas_and_wrap() -> None:
    assert counter_delta(5, 2**64 - 3) == 8
    assert counter_delta(10, 4) == 6
    src = FakeSource()
    col = make(src)
    src.counters[abi.Counter.MALFORMED] = 2**64 - 1  # since the program's load
    src.now += SEC
    assert col.tick().sample.counters["malformed"] == 2**64 - 1
    src.counters[abi.Counter.MALFORMED] = 4
    src.counters[abi.Counter.FLOWS_CREATED] = 3
    src.now += SEC
    tick = col.tick()
    assert tick.sample.counters["malformed"] == 5
    assert tick.sample.new_flows == 3


def test_idle_flow_is_taken_with_late_packets_and_written_once() -> None:
    src = FakeSource(late_packets=2)
    t0 = src.now
    src.add("198.18.0.1", "198.18.0.2", 53, 53, 17, [(3, 300, 240, t0, t0, 0), (0, 0, 0, 0, 0, 0)])
    col = make(src, idle_timeout=15)
    src.now = t0 + 15 * SEC  # exactly the timeout: not yet idle
    assert col.tick().records == []
    src.now = t0 + 16 * SEC
    tick = col.tick()
    assert src.taken == [("198.18.0.1", "198.18.0.2", 53, 53, 17)]
    (rec,) = tick.records
    assert (rec.packets, rec.bytes, rec.end_reason, rec.iface) == (5, 500, "idle", "eth7")
    assert rec.key == FlowKey(4, "198.18.0.1", "198.18.0.2", 53, 53, 17, 0, 7, 0)
    assert rec.first_seen == pytest.approx(1_700_000_000.0 + t0 / SEC)
    assert tick.live[0].batch.keys.size == 0
    assert col.tick().records == []


@pytest.mark.parametrize(("flags", "reason"), [(0x11, "fin"), (0x14, "rst"), (0x15, "rst")])
def test_fin_and_rst_use_the_short_timeout(flags: int, reason: str) -> None:
    src = FakeSource()
    t0 = src.now
    src.add("2001:db8::1", "2001:db8::2", 40000, 443, 6, [(4, 400, 320, t0, t0, flags)])
    src.add("2001:db8::1", "2001:db8::2", 40001, 443, 6, [(4, 400, 320, t0, t0, 0x10)])
    col = make(src, idle_timeout=15, fin_timeout=2)
    src.now = t0 + 3 * SEC
    tick = col.tick()
    assert [(r.key.sport, r.end_reason) for r in tick.records] == [(40000, reason)]
    assert tick.sample.active_flows == 1


def test_active_timeout_writes_records_whose_sum_is_exact() -> None:
    src = FakeSource()
    t0 = src.now
    key = ("198.18.0.1", "198.18.0.2", 5000, 5432, 6)
    src.add(*key, [(10, 1000, 900, t0, t0, 0x02)])
    col = make(src, active_timeout=60, idle_timeout=15)
    written = []
    for sec in range(1, 150):
        src.now = t0 + sec * SEC
        src.flows[abi.AF_INET][key].cpus[0] = (
            10 + sec,
            1000 + 100 * sec,
            900 + 90 * sec,
            t0,
            src.now,
            0x12,
        )
        written += col.tick().records
    assert [r.end_reason for r in written] == ["active", "active"]
    src.now += 20 * SEC  # goes idle
    written += col.tick().records
    assert [r.end_reason for r in written] == ["active", "active", "idle"]
    assert sum(r.packets for r in written) == 10 + 149
    assert sum(r.bytes for r in written) == 1000 + 100 * 149
    assert sum(r.ip_bytes for r in written) == 900 + 90 * 149
    assert written[1].first_seen == pytest.approx(written[0].last_seen)


def test_high_water_evicts_the_idlest_flows() -> None:
    src = FakeSource(flow_entries=10)
    t0 = src.now
    for i in range(10):
        src.add(
            f"198.18.0.{i + 1}", "198.18.1.1", 1, 2, 17, [(1, 100, 80, t0, t0 + i * SEC // 10, 0)]
        )
    col = make(src, high_water=0.9, low_water=0.8)
    src.now += SEC
    tick = col.tick()
    assert tick.evicted == 2
    assert sorted(r.key.src for r in tick.records) == ["198.18.0.1", "198.18.0.2"]
    assert {r.end_reason for r in tick.records} == {"evicted"}
    assert tick.sample.counters["evicted"] == 2
    assert tick.sample.active_flows == 8


def test_shutdown_writes_what_was_not_yet_written() -> None:
    src = FakeSource()
    t0 = src.now
    key = ("198.18.0.1", "198.18.0.2", 5000, 5432, 6)
    src.add(*key, [(10, 1000, 900, t0, t0, 0)])
    col = make(src, active_timeout=1)
    src.now += 2 * SEC
    (first,) = col.tick().records
    src.flows[abi.AF_INET][key].cpus[0] = (25, 2500, 2250, t0, src.now, 0)
    (last,) = col.shutdown()
    assert (first.packets, last.packets, last.end_reason) == (10, 15, "shutdown")


def test_events_become_new_flows_on_the_wall_clock() -> None:
    src = FakeSource()
    col = make(src)
    key = FlowKey(4, "198.18.0.9", "198.18.0.1", 0, 8 * 256, 1, 0, 7, 0)
    assert src.callback is not None
    src.callback(FlowEvent(key=key, timestamp=src.now, length=98, map_full=False))
    tick = col.tick()
    (ev,) = tick.events
    assert (ev.key, ev.iface, ev.length, ev.map_full) == (key, "eth7", 98, False)
    assert ev.time == pytest.approx(1_700_000_000.0 + src.now / SEC)


def test_rates_stay_exact_when_the_kernel_reorders_and_flows_leave() -> None:
    """Many flows read in a different order every tick, some expiring on the way: each
    surviving flow's rate is exactly its own delta (the matching between ticks is by key)."""
    rng = np.random.default_rng(7)
    src = FakeSource()
    t0 = src.now
    keys = [(f"198.18.{i // 250}.{i % 250 + 1}", "198.18.9.9", 1000 + i, 80, 6) for i in range(300)]
    totals = {k: 0 for k in keys}
    for k in keys:
        src.add(*k, [(0, 0, 0, t0, t0, 0)])
    col = make(src, idle_timeout=2.5)
    expired: dict[int, int] = {}
    for tick_no in range(1, 6):
        src.now = t0 + tick_no * SEC
        sent = {}
        for k in list(src.flows[abi.AF_INET]):
            if int(k[2]) % 3 == 0 and tick_no > 1:
                continue  # every third flow stops after the first tick and goes idle
            n = int(rng.integers(1, 50))
            totals[k] += n
            sent[k] = n
            src.flows[abi.AF_INET][k].cpus[0] = (
                totals[k],
                100 * totals[k],
                80 * totals[k],
                t0,
                src.now,
                0,
            )
        items = list(src.flows[abi.AF_INET].items())
        rng.shuffle(items)  # the kernel's batch order is not stable
        src.flows[abi.AF_INET] = dict(items)
        tick = col.tick()
        expired |= {r.key.sport: r.packets for r in tick.records}
        live = tick.live[0]
        by_port = {
            live.batch.key(i).sport: (live.pps[i], live.bps[i]) for i in range(len(live.batch))
        }
        for k, n in sent.items():
            assert by_port[k[2]] == (pytest.approx(n), pytest.approx(n * 100 * 8))
        for k in totals:
            if k not in sent and k in src.flows[abi.AF_INET]:
                assert by_port[k[2]] == (0.0, 0.0)
    # the flows that stopped after the first tick were expired once, with everything they sent,
    # and nothing else was
    stopped = {k[2]: totals[k] for k in keys if k[2] % 3 == 0}
    assert expired == stopped
