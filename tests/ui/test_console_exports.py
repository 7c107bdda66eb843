"""The console's collection thread with --ipfix and --metrics: records reach the exporter and
ticks reach the metrics in that thread, never on the UI thread (recorder.run is faked)."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from flowscope.collect import recorder
from flowscope.collect.collector import Tick
from flowscope.collect.recorder import RecordSettings
from flowscope.export.ipfix import parse_target
from flowscope.export.outputs import ExportSettings
from flowscope.export.prometheus import Listen
from flowscope.pipeline import Pipeline, PipelineSettings
from flowscope.ui.messages import TickArrived
from flowscope.ui.source import RecorderSource
from tests.unit.test_ipfix import rec4
from tests.unit.test_metrics import tick


def test_records_go_to_the_exporter_and_ticks_to_the_metrics_in_the_collection_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []

    def fake_run(
        settings: RecordSettings,
        sink: Any,
        *,
        on_tick: Any,
        stop: Any,
        on_notice: Any = None,
        on_block: Any = None,
        on_attached: Any = None,
        prepared: Any = None,
    ) -> None:
        t: Tick = tick(10, 1000, 2)
        t.records.extend([rec4(1), rec4(2)])
        sink.submit(t.records, t.sample, t.events)
        on_tick(t)
        sink.close()

    monkeypatch.setattr(recorder, "run", fake_run)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(10)
        settings = ExportSettings(
            ipfix=parse_target(f"127.0.0.1:{collector.getsockname()[1]}"),
            metrics=Listen("127.0.0.1", 0),
        )
        pipeline_settings = PipelineSettings(
            RecordSettings(interfaces=("lo",), flow_entries=8), None, settings
        )
        with Pipeline(pipeline_settings) as pipeline:
            out = pipeline.exports
            assert out.metrics is not None and out.exporter is not None
            metrics_on_tick = out.metrics.on_tick

            def spy(t: Tick) -> None:
                seen.append(threading.current_thread().name)
                metrics_on_tick(t)

            monkeypatch.setattr(out.metrics, "on_tick", spy)
            posted: list[object] = []
            source = RecorderSource(pipeline)
            source.start(posted.append)
            assert source.stop()
            assert source.error is None
            assert out.exporter.sent == 2 and out.exporter.lost == 0
            assert len(collector.recv(65535)) > 0
            samples = {m.name: m.samples for m in out.metrics.collect()}
    assert seen == ["flowscope-collect"]
    assert [s.value for s in samples["flowscope_kernel_packets"]] == [10]
    [arrived] = [m for m in posted if isinstance(m, TickArrived)]  # the UI still gets its tick
    assert [r.key.sport for r in arrived.tick.records] == [4001, 4002]
