"""Prometheus metrics of a running flowscope: what it counts, and how well it keeps up.

Health goes to the Prometheus a fleet already runs, not to a dashboard of flowscope's own. The
numbers are kept per tick by ``on_tick`` (sums of the tick's deltas, so a counter here adds up
to exactly what history holds) and turned into metric families only when Prometheus scrapes,
by a custom collector that also reads the writer's and the exporter's live attributes. Names
follow the Prometheus naming guide: a ``flowscope_`` prefix, base units (bytes, seconds),
``_total`` on counters.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import start_http_server

from flowscope import abi
from flowscope.collect.flood import flood_signal, target_text
from flowscope.errors import UsageError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from flowscope.collect.collector import Tick
    from flowscope.export.ipfix import Exporter
    from flowscope.history.writer import Writer

# Sample.counters key -> (metric name, help). Unknown keys get flowscope_kernel_<key>_total.
COUNTERS: dict[str, tuple[str, str]] = {
    "packets": (
        "flowscope_kernel_packets_total",
        "Packets the XDP program saw; each ends in a flow, non-IP, malformed or map full.",
    ),
    "flows_created": (
        "flowscope_kernel_flows_created_total",
        "Flows the XDP program inserted into its maps.",
    ),
    "non_ip": ("flowscope_kernel_non_ip_packets_total", "Packets that were not IPv4 or IPv6."),
    "malformed": (
        "flowscope_kernel_malformed_packets_total",
        "Packets whose Ethernet, VLAN or IP header was cut short or invalid (no flow).",
    ),
    "truncated": (
        "flowscope_kernel_truncated_packets_total",
        "Packets whose transport header was cut short (counted in their flow with ports 0).",
    ),
    "map_full": (
        "flowscope_kernel_map_full_packets_total",
        "Packets not counted in any flow because the flow map was full.",
    ),
    "ringbuf_full": (
        "flowscope_ringbuf_lost_events_total",
        "New-flow records lost because the ring buffer was full.",
    ),
    "sockets_lost": (
        "flowscope_socket_events_lost_total",
        "Socket announcements lost to a full ring buffer (their flows have no process).",
    ),
    "retrans": (
        "flowscope_tcp_retransmits_total",
        "TCP segments this host's connections retransmitted since start.",
    ),
    "retrans_fast": (
        "flowscope_tcp_retransmits_fast_total",
        "TCP segments the followed connections resent in fast recovery (dup ACKs, SACK, RACK).",
    ),
    "retrans_rto": (
        "flowscope_tcp_retransmits_rto_total",
        "TCP segments the followed connections resent after a retransmission timeout.",
    ),
    "retrans_probe": (
        "flowscope_tcp_retransmits_probe_total",
        "TCP segments the followed connections resent as tail loss probes.",
    ),
    "resets_sent": (
        "flowscope_tcp_resets_sent_total",
        "TCP resets this host's kernel sent (tcp:tcp_send_reset, in its network namespace).",
    ),
    "resets_received": (
        "flowscope_tcp_resets_received_total",
        "TCP resets this host's kernel received and acted on (tcp:tcp_receive_reset).",
    ),
    "evicted": (
        "flowscope_evicted_flows_total",
        "Flows expired early because a kernel map passed its high-water mark.",
    ),
    "flood_other": (
        "flowscope_kernel_flood_other_packets_total",
        "Map-full packets the flood table had no room for either (in no source prefix).",
    ),
    "drops_unattributed": (
        "flowscope_kernel_drops_unattributed_total",
        "Kernel drops past the drop hook's per-flow budget: counted by reason, in no flow.",
    ),
    "drops_missed": (
        "flowscope_kernel_drops_missed_total",
        "Kernel drops the drop hook did not see (it was already running on that CPU).",
    ),
    "events_limited": (
        "flowscope_kernel_events_limited_total",
        "New-flow records the kernel's per-CPU announcement budget held back (still counted).",
    ),
}
FLOOD_TOP = 5
"""Source prefixes the flood gauges list while a flood goes on."""
FAMILIES = {abi.AF_INET: "ipv4", abi.AF_INET6: "ipv6"}


@dataclass(frozen=True, slots=True)
class Listen:
    """Where the metrics endpoint listens."""

    addr: str
    port: int

    def __str__(self) -> str:
        return f"[{self.addr}]:{self.port}" if ":" in self.addr else f"{self.addr}:{self.port}"


def parse_listen(text: str) -> Listen:
    """``PORT``, ``ADDR:PORT`` or ``[IPv6]:PORT``; a bare port listens on every address, as
    exporters do (Prometheus scrapes from elsewhere). Raises UsageError (one line)."""
    usage = "give PORT, ADDR:PORT or [IPv6]:PORT, e.g. --metrics 9812 or --metrics 127.0.0.1:9812"
    rest = text.strip()
    addr = "0.0.0.0"
    if rest.startswith("["):
        addr, sep, rest = rest[1:].partition("]:")
        if not sep:
            raise UsageError(f"--metrics {text!r}: no port", usage)
    elif ":" in rest:
        addr, _, rest = rest.rpartition(":")
        if ":" in addr:
            raise UsageError(f"--metrics {text!r}: an IPv6 address goes in brackets", usage)
    if not addr:
        raise UsageError(f"--metrics {text!r}: no address before ':'", usage)
    if not rest.isdigit() or not 0 < int(rest) < 65536:
        raise UsageError(f"--metrics {text!r}: port must be 1-65535", usage)
    return Listen(addr, int(rest))


class Metrics:
    """The numbers of one recording, kept per tick, read at scrape time.

    ``on_tick`` is the recorder's hook (chain it with a status line); the writer and the
    exporter are read as they are when Prometheus asks."""

    def __init__(
        self,
        *,
        flow_entries: int,
        writer: Writer | None = None,
        exporter: Exporter | None = None,
    ) -> None:
        self.flow_entries = flow_entries
        self.writer = writer
        self.exporter = exporter
        self._lock = threading.Lock()
        self._packets: dict[tuple[str, str], int] = {}
        self._bytes: dict[tuple[str, str], int] = {}
        self._counters: dict[str, int] = {}
        self._records: dict[str, int] = {}
        self._drops: dict[str, int] = {}
        self._new_flows = 0
        self._active = 0
        self._fill: dict[str, float] = {}
        self._map_bytes = 0
        self._ticks = 0
        self._tick_seconds = 0.0
        self._flood: list[tuple[str, str, str, float]] = []
        self._flooding = False

    def on_tick(self, tick: Tick) -> None:
        """Add one tick's deltas (cheap: a few dict updates per interface and counter)."""
        with self._lock:
            for (iface, direction), (p, b) in tick.interfaces.items():
                key = (iface, abi.DIRECTION_NAMES.get(direction, str(direction)))
                self._packets[key] = self._packets.get(key, 0) + p
                self._bytes[key] = self._bytes.get(key, 0) + b
            for name, value in tick.sample.counters.items():
                self._counters[name] = self._counters.get(name, 0) + value
            for r in tick.records:
                self._records[r.end_reason] = self._records.get(r.end_reason, 0) + 1
            for reason, n in tick.drops.items():
                self._drops[reason] = self._drops.get(reason, 0) + n
            self._new_flows += tick.sample.new_flows
            self._active = tick.sample.active_flows
            self._map_bytes = tick.sample.map_bytes
            for live in tick.live:
                family = FAMILIES.get(live.batch.family, str(live.batch.family))
                self._fill[family] = len(live.batch) / self.flow_entries
            self._ticks += 1
            self._tick_seconds += tick.duration
            s = tick.sample
            self._flooding = flood_signal(s) is not None
            self._flood = [
                (r.prefix, target_text(r), abi.DIRECTION_NAMES.get(r.direction, "?"),
                 r.packets / s.interval)
                for r in s.flood.rows[:FLOOD_TOP]
            ] if self._flooding and s.interval > 0 else []  # fmt: skip

    def describe(self) -> list[Metric]:
        """Nothing up front: the families are made per scrape (the registry then calls
        collect() once at registration, which is harmless)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metric families as they are now."""
        with self._lock:
            packets, nbytes = dict(self._packets), dict(self._bytes)
            counters, records = dict(self._counters), dict(self._records)
            drops = dict(self._drops)
            new_flows, active, fill = self._new_flows, self._active, dict(self._fill)
            map_bytes = self._map_bytes
            ticks, tick_seconds = self._ticks, self._tick_seconds
            flooding, flood = self._flooding, list(self._flood)
        labels = ["interface", "direction"]
        b = CounterMetricFamily(
            "flowscope_bytes_total",
            "Frame bytes counted in flows, per interface and direction (times 8 for bits).",
            labels=labels,
        )
        p = CounterMetricFamily(
            "flowscope_packets_total",
            "Packets counted in flows, per interface and direction.",
            labels=labels,
        )
        for key in sorted(packets):
            p.add_metric(list(key), packets[key])
            b.add_metric(list(key), nbytes[key])
        yield b
        yield p
        for name in sorted(set(COUNTERS) | set(counters)):
            if name == "drops":  # by reason, below
                continue
            metric, text = COUNTERS.get(
                name, (f"flowscope_kernel_{name}_total", f"Kernel counter {name}.")
            )
            yield CounterMetricFamily(metric, text, value=counters.get(name, 0))
        yield CounterMetricFamily(
            "flowscope_new_flows_total", "New flows announced by the kernel.", value=new_flows
        )
        d = CounterMetricFamily(
            "flowscope_kernel_drops_total",
            "Packets the kernel dropped in flowscope's network namespace, by drop reason "
            "(skb:kfree_skb; the running kernel's enum skb_drop_reason).",
            labels=["reason"],
        )
        for reason in sorted(drops):
            d.add_metric([reason], drops[reason])
        yield d
        rec = CounterMetricFamily(
            "flowscope_flow_records_total",
            "Flow records produced, by end reason (idle, active, fin, rst, evicted, shutdown).",
            labels=["reason"],
        )
        for reason in sorted(records):
            rec.add_metric([reason], records[reason])
        yield rec
        yield GaugeMetricFamily(
            "flowscope_active_flows", "Flows in the kernel maps after the last tick.", value=active
        )
        f = GaugeMetricFamily(
            "flowscope_map_fill_ratio",
            "Flows in each kernel map over its size (early eviction starts at 0.9).",
            labels=["family"],
        )
        for family in sorted(fill):
            f.add_metric([family], fill[family])
        yield f
        yield GaugeMetricFamily(
            "flowscope_map_entries",
            "Entries of each kernel flow map (IPv4 and IPv6): --flow-entries, or what "
            "--map-memory buys on this machine's possible CPUs.",
            value=self.flow_entries,
        )
        yield GaugeMetricFamily(
            "flowscope_map_memory_bytes",
            "Locked kernel memory of the two flow maps, as the kernel reports it (memlock).",
            value=map_bytes,
        )
        yield GaugeMetricFamily(
            "flowscope_flood",
            "1 while the last tick looked like a flood (flow map full, new flows or SYNs "
            "without ACK past their thresholds), else 0.",
            value=int(flooding),
        )
        top = GaugeMetricFamily(
            "flowscope_flood_source_packets_per_second",
            "During a flood: the last tick's largest sources by /24 (IPv6 /64) and target, "
            "packets a second, the flows' and those the full map could not take alike.",
            labels=["prefix", "target", "direction"],
        )
        for prefix, target, direction, pps in flood:
            top.add_metric([prefix, target, direction], pps)
        yield top
        yield SummaryMetricFamily(
            "flowscope_tick_duration_seconds",
            "Time each tick took to read the maps, expire flows and read the counters.",
            count_value=ticks,
            sum_value=tick_seconds,
        )
        yield from self._writer_metrics()
        yield from self._exporter_metrics()

    def _writer_metrics(self) -> Iterator[Metric]:
        w = self.writer
        if w is None:
            return
        yield SummaryMetricFamily(
            "flowscope_db_write_duration_seconds",
            "Time each tick's transaction took to commit to the history database.",
            count_value=w.writes,
            sum_value=w.write_seconds,
        )
        yield GaugeMetricFamily(
            "flowscope_db_backlog_records",
            "Records and events waiting to be written to the history database.",
            value=w.backlog,
        )
        yield CounterMetricFamily(
            "flowscope_db_written_records_total",
            "Flow records written to the history database.",
            value=w.written,
        )
        yield CounterMetricFamily(
            "flowscope_db_dropped_records_total",
            "Flow records dropped because the database writer's backlog was full.",
            value=w.dropped,
        )

    def _exporter_metrics(self) -> Iterator[Metric]:
        e = self.exporter
        if e is None:
            return
        yield CounterMetricFamily(
            "flowscope_ipfix_sent_records_total",
            "Flow records sent to the IPFIX collector.",
            value=e.sent,
        )
        yield CounterMetricFamily(
            "flowscope_ipfix_lost_records_total",
            "Flow records not exported: collector unreachable, send failed or queue full.",
            value=e.lost,
        )
        yield CounterMetricFamily(
            "flowscope_ipfix_messages_total", "IPFIX messages sent.", value=e.messages
        )
        yield GaugeMetricFamily(
            "flowscope_ipfix_connected",
            "1 while a connection (TCP) or socket (UDP) to the collector is open.",
            value=1 if e.connected else 0,
        )


class MetricsServer:
    """The HTTP endpoint (/metrics) in a daemon thread, on a registry of its own."""

    def __init__(self, metrics: Metrics, listen: Listen) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(metrics)
        self.listen = listen
        try:
            started = start_http_server(listen.port, listen.addr, registry=self.registry)
        except OSError as e:
            raise UsageError(
                f"--metrics {listen}: cannot listen ({e.strerror or e})",
                "choose another port or address",
            ) from e
        server, self._thread = started
        self._server: WSGIServer = server

    @property
    def port(self) -> int:
        """The port it listens on (the one asked for, or the one given for port 0)."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
