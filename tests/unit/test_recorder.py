"""The collection loop without a kernel: a fake probe over the collector tests' FakeSource.

What the tick hook (the metrics, a status line) sums over a recording must be what the sink
got, including the last partial tick and the shutdown records written on the way out: a
scrape just before exit matches history."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from types import TracebackType

import pytest
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
        processes=False,  # a fake program has no socket hooks
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


class CallbackSource(FakeSource):
    """Polls as bcc's ring buffer does: C code calls a Python callback for each record, and
    the signal is handled while that callback runs."""

    def __init__(self, sig: int) -> None:
        super().__init__()
        self.sig = sig
        self.polls = 0
        self.sent = False
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
        self._callback = callback_type(self._on_record)
        # qsort is C that calls back: with two elements it calls the comparison once
        self._qsort = ctypes.CDLL(None).qsort
        self._items = (ctypes.c_int * 2)(2, 1)

    def _on_record(self, _arg: int) -> int:
        if self.polls == 3 and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.sig)  # handled right here, inside the callback
        sum(range(100))
        return 0

    def poll_events(self, timeout_ms: int = 0) -> None:
        self.polls += 1
        compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(
            lambda a, b: self._on_record(0)
        )
        self._qsort(self._items, 2, ctypes.sizeof(ctypes.c_int), compare)
        time.sleep(timeout_ms / 1000)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_ring_buffer_callback_still_stops_collection(sig: int) -> None:
    """Ctrl-C or SIGTERM that Python handles inside the ring buffer's ctypes callback raised
    there, and ctypes swallows what a callback raises: the demo went on collecting after its
    SIGINT (a CI run caught it). The loop must stop, with the live flows written."""
    from flowscope.cli.main import _sigterm

    source = CallbackSource(sig)
    FakeProbe.source = source
    sink = ListSink()
    settings = recorder.RecordSettings(
        interfaces=("eth7",),
        duration=3.0,
        collector=CollectorSettings(interval=0.05),
        processes=False,  # a fake program has no socket hooks
    )
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm)  # as the CLI sets it
    try:
        started = time.monotonic()
        summary = recorder._run(  # type: ignore[arg-type]
            settings, sink, None, threading.Event(), FakeProbe
        )
        elapsed = time.monotonic() - started
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert summary.interrupted
    assert elapsed < 2.0, "the signal was lost: collection ran until its duration"
    assert signal.getsignal(signal.SIGINT) is saved[signal.SIGINT]
