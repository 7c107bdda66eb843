"""Metrics: the --metrics syntax, and per-tick deltas that add up to exact counters."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from flowscope import abi
from flowscope.collect.collector import LiveFlows, Tick
from flowscope.errors import UsageError
from flowscope.export.prometheus import Listen, Metrics, parse_listen
from flowscope.model import FlowBatch, Sample


@pytest.mark.parametrize(
    ("text", "listen"),
    [
        ("9812", Listen("0.0.0.0", 9812)),
        ("127.0.0.1:9812", Listen("127.0.0.1", 9812)),
        ("[::1]:9812", Listen("::1", 9812)),
    ],
)
def test_listen(text: str, listen: Listen) -> None:
    assert parse_listen(text) == listen


@pytest.mark.parametrize("text", ["", "x", "0", "65536", ":9812", "::1:9812", "[::1]"])
def test_bad_listen(text: str) -> None:
    with pytest.raises(UsageError):
        parse_listen(text)


def tick(packets: int, nbytes: int, flows: int) -> Tick:
    empty = np.zeros(0, np.uint64)
    keys = np.zeros(flows, abi.KEY4_DTYPE)
    batch = FlowBatch(abi.AF_INET, keys, *(np.zeros(flows, np.uint64) for _ in range(5)),
                      tcp_flags=np.zeros(flows, np.uint8))  # fmt: skip
    counters = {c.name.lower(): 0 for c in abi.Counter} | {"packets": packets, "evicted": 0}
    sample = Sample(
        0.0, 1.0, nbytes * 8.0, float(packets), flows, 1, counters, map_fill=flows / 8,
        map_bytes=26_752_000,
    )  # fmt: skip
    return Tick(sample, [], [], [LiveFlows(batch, empty, empty)], 0,
                interfaces={("eth0", 0): (packets, nbytes)}, duration=0.25)  # fmt: skip


def test_counters_sum_the_ticks() -> None:
    m = Metrics(flow_entries=8)
    m.on_tick(tick(10, 1000, 2))
    m.on_tick(tick(5, 300, 4))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(m)
    text = generate_latest(registry).decode()
    for line in (
        'flowscope_packets_total{direction="ingress",interface="eth0"} 15.0',
        'flowscope_bytes_total{direction="ingress",interface="eth0"} 1300.0',
        "flowscope_kernel_packets_total 15.0",
        "flowscope_new_flows_total 2.0",
        "flowscope_active_flows 4.0",
        'flowscope_map_fill_ratio{family="ipv4"} 0.5',
        "flowscope_map_entries 8.0",
        "flowscope_map_memory_bytes 2.6752e+07",
        "flowscope_tick_duration_seconds_count 2.0",
        "flowscope_tick_duration_seconds_sum 0.5",
        "# HELP flowscope_ringbuf_lost_events_total New-flow records lost because the ring "
        "buffer was full.",
        "# TYPE flowscope_packets_total counter",
    ):
        assert line in text.splitlines()


def test_drops_by_reason_and_retransmissions_sum_the_ticks() -> None:
    import dataclasses

    m = Metrics(flow_entries=8)
    for drops, retrans in (({"NO_SOCKET": 3, "TC_INGRESS": 1}, 2), ({"NO_SOCKET": 4}, 5)):
        t = tick(10, 1000, 2)
        sample = dataclasses.replace(
            t.sample,
            counters=t.sample.counters
            | {"retrans": retrans, "drops": sum(drops.values()), "resets_sent": 1},
        )
        m.on_tick(dataclasses.replace(t, sample=sample, drops=drops))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(m)
    lines = generate_latest(registry).decode().splitlines()
    assert 'flowscope_kernel_drops_total{reason="NO_SOCKET"} 7.0' in lines
    assert 'flowscope_kernel_drops_total{reason="TC_INGRESS"} 1.0' in lines
    assert "flowscope_tcp_retransmits_total 7.0" in lines
    assert "flowscope_tcp_resets_sent_total 2.0" in lines
    assert "flowscope_tcp_resets_received_total 0.0" in lines
    assert not any(line.startswith("flowscope_kernel_drops_total ") for line in lines)


def test_a_flood_is_a_gauge_with_its_top_sources_while_it_lasts() -> None:
    """Issue #18: the scenario's SYN flood (from tick 90) sets flowscope_flood and lists its
    top sources by prefix and target, packets a second; the tick before it has neither."""
    from tests.support.scenario import scenario

    ticks = scenario(92, flood=True)
    m = Metrics(flow_entries=8)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(m)
    m.on_tick(ticks[89].tick)
    before = generate_latest(registry).decode().splitlines()
    assert "flowscope_flood 0.0" in before
    assert not any(line.startswith("flowscope_flood_source_packets") for line in before)
    m.on_tick(ticks[90].tick)
    text = generate_latest(registry).decode().splitlines()
    assert "flowscope_flood 1.0" in text
    assert (
        'flowscope_flood_source_packets_per_second{direction="ingress",'
        'prefix="198.19.77.0/24",target="tcp/443"} 150000.0'
    ) in text
    assert "flowscope_kernel_flood_other_packets_total 0.0" in text
