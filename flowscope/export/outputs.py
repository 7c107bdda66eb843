"""What a machine in a fleet sends out: flow records over IPFIX, health to Prometheus.

One place that starts both from the settings a command was given, so `record`, `live`, `demo`
and `replay` wire them the same way: wrap the sink (history writer) and the tick hook,
collect, then close.

    with Exports(settings, flow_entries=n, writer=writer) as exports:
        run(record_settings, exports.sink(writer), on_tick=exports.on_tick(status))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flowscope.collect.sinks import tee
from flowscope.export.ipfix import Exporter, Target
from flowscope.export.ipfix_records import DEFAULT_MTU

if TYPE_CHECKING:
    from flowscope.collect.collector import Tick
    from flowscope.collect.recorder import Sink
    from flowscope.export.prometheus import Listen, Metrics, MetricsServer
    from flowscope.history.writer import Writer


@dataclass(frozen=True, slots=True)
class ExportSettings:
    """The --ipfix and --metrics options of a collecting command."""

    ipfix: Target | None = None
    """IPFIX collector; None: no export."""
    ipfix_domain: int = 0
    """IPFIX observation domain id (tells this machine's records apart at the collector)."""
    ipfix_mtu: int = DEFAULT_MTU
    """Path MTU towards the collector; no message is larger."""
    metrics: Listen | None = None
    """Where to serve /metrics; None: not served."""


class Exports:
    """Starts the exporter and the metrics endpoint that ``settings`` ask for (the endpoint
    at once, so a port in use fails before collection starts)."""

    def __init__(
        self,
        settings: ExportSettings,
        *,
        flow_entries: int,
        writer: Writer | None = None,
        max_queue: int | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.notice = notice
        """Told in a few words when the export starts or stops failing (a status line, a log,
        the console's notifications); from the thread that runs the tick hook."""
        self._last_status: str | None = None
        self.exporter: Exporter | None = None
        self.metrics: Metrics | None = None
        self.server: MetricsServer | None = None
        if settings.ipfix is not None:
            self.exporter = Exporter(
                settings.ipfix, domain_id=settings.ipfix_domain, mtu=settings.ipfix_mtu
            )
            if max_queue is not None:  # a replay, which waits for the export, queues more
                self.exporter.max_queue = max_queue
        if settings.metrics is not None:
            from flowscope.export.prometheus import Metrics, MetricsServer

            self.metrics = Metrics(flow_entries=flow_entries, writer=writer, exporter=self.exporter)
            try:
                self.server = MetricsServer(self.metrics, settings.metrics)
            except BaseException:
                self.close()
                raise

    def sink(self, inner: Sink) -> Sink:
        """``inner`` and the exporter: the recorder closes both when it ends."""
        return tee(inner, self.exporter)

    def on_tick(self, other: Callable[[Tick], None] | None = None) -> Callable[[Tick], None] | None:
        """A tick hook that feeds the metrics, tells ``notice`` when the export starts or
        stops failing, then calls ``other`` (a status line)."""
        metrics, exporter = self.metrics, self.exporter
        if metrics is None and exporter is None:
            return other

        def hook(tick: Tick) -> None:
            if metrics is not None:
                metrics.on_tick(tick)
            if exporter is not None:
                self._watch(exporter)
            if other is not None:
                other(tick)

        return hook

    def _watch(self, exporter: Exporter) -> None:
        """One notice when the exporter's trouble begins or changes, one when it ends."""
        status = exporter.status
        if status == self._last_status:
            return
        self._last_status = status
        if self.notice is None:
            return
        if status is not None:
            self.notice(f"IPFIX export: {status}; records are dropped and counted until it works")
        else:
            self.notice(f"IPFIX export to {exporter.target}: sending again")

    def report(self) -> str | None:
        """After close(): one line when records were not exported (how many, to where, why),
        else None."""
        e = self.exporter
        if e is None or (not e.lost and e.status is None):
            return None
        why = f" ({e.status})" if e.status else ""
        return f"{e.lost} flow records not exported to IPFIX {e.target}{why}"

    def backlog(self) -> int:
        """Records waiting to be exported."""
        return self.exporter.backlog if self.exporter is not None else 0

    def status(self) -> str:
        """A few words for a status line, only when something is wrong with the export."""
        e = self.exporter
        if e is None or (e.status is None and not e.lost):
            return ""
        text = f"  {e.lost} not exported" if e.lost else ""
        return text + (f"  [{e.status}]" if e.status else "")

    def close(self) -> None:
        """Stop the endpoint and the exporter (closing an exporter twice is harmless)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.exporter is not None:
            self.exporter.close()

    def __enter__(self) -> Exports:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
