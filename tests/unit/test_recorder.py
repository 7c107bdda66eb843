"""The collection loop without a kernel: a fake probe over the collector tests' FakeSource.

What the tick hook (the metrics, a status line) sums over a recording must be what the sink
got, including the last partial tick and the shutdown records written on the way out: a
scrape just before exit matches history."""

from __future__ import annotations

import threading
import time
from types import TracebackType

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flowscope import abi
from flowscope.collect import recorder
from flowscope.collect.collector import CollectorSettings, Tick
from flowscope.export.prometheus import Metrics
from flowscope.model import FlowRecord, NewFlow, Sample
from tests.unit.test_collector import FakeSource

FLOW = ("198.18.0.1", "198.18.0.2", 1000, 53, 17)


class Source(FakeSource):
    """Traffic starts once the loop waits for the first tick: 3 packets of one flow."""

    started = False

    def poll_events(self, timeout_ms: int = 0) -> None:
        if not self.started:
            self.started = True
            set_flow(self, 3)
        time.sleep(timeout_ms / 1000)


class FakeProbe:
    """recorder._run's Probe: one FakeSource as the program, interface 7 named eth7."""

    source: FakeSource

    def __init__(self, interfaces: list[str], **kwargs: object) -> None:
        self.program = self.source

    def interface_names(self) -> dict[int, str]:
        return {7: "eth7"}

    def __enter__(self) -> FakeProbe:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass


class ListSink:
    def __init__(self) -> None:
        self.records: list[FlowRecord] = []
        self.packets = 0

    def submit(
        self,
        records: list[FlowRecord],
        sample: Sample | None,
        events: list[NewFlow],
        pending: object = None,
    ) -> None:
        self.records += records
        if sample is not None:
            self.packets += sample.counters.get("packets", 0)

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


def set_flow(src: FakeSource, packets: int) -> None:
    """The flow's totals so far (100 frame bytes, 86 IP bytes a packet), seen now."""
    now = time.monotonic_ns()
    src.add(*FLOW, [(packets, 100 * packets, 86 * packets, now, now, 0)])
    src.counters[abi.Counter.PACKETS] = packets


def test_the_last_partial_tick_and_the_shutdown_records_reach_the_hook() -> None:
    source = Source()
    FakeProbe.source = source
    metrics = Metrics(flow_entries=source.flow_entries)
    ticks: list[Tick] = []
    stop = threading.Event()

    def on_tick(tick: Tick) -> None:
        ticks.append(tick)
        metrics.on_tick(tick)
        if len(ticks) == 1:  # after the first tick: 4 more packets, then stop mid-interval
            set_flow(source, 7)
            stop.set()

    sink = ListSink()
    settings = recorder.RecordSettings(
        interfaces=("eth7",),
        collector=CollectorSettings(interval=0.05, idle_timeout=3600, active_timeout=3600),
    )
    summary = recorder._run(settings, sink, on_tick, stop, FakeProbe)  # type: ignore[arg-type]

    assert len(ticks) == 2  # one in the loop, the final one on the way out
    assert [t.sample.counters["packets"] for t in ticks] == [3, 4]
    assert [r.end_reason for r in ticks[-1].records] == ["shutdown"]
    assert [(r.packets, r.bytes, r.ip_bytes) for r in sink.records] == [(7, 700, 602)]
    assert summary.packets == sink.packets == 7
    # a scrape right before exit: what the sink (history) got
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(generate_latest(registry).decode())
        for s in fam.samples
    }
    assert got[("flowscope_kernel_packets_total", ())] == 7
    assert got[("flowscope_packets_total", (("direction", "ingress"), ("interface", "eth7")))] == 7
    assert got[("flowscope_bytes_total", (("direction", "ingress"), ("interface", "eth7")))] == 700
    assert got[("flowscope_flow_records_total", (("reason", "shutdown"),))] == 1
    assert got[("flowscope_tick_duration_seconds_count", ())] == 2
