"""Scan and SYN-flood detection (flowscope.detect) against a brute-force model of its rules,
on generated streams of new flows; and the scenario's scan, which must raise exactly one alert
naming its source that stays listed."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowscope import abi, detect
from flowscope.model import FlowKey, NewFlow
from flowscope.ui.sample import SCANNER, SERVER, scenario

SOURCES = [f"198.18.1.{i}" for i in range(1, 7)]
HOSTS = ["198.18.0.10", "198.18.0.11", "198.18.0.12"]


@st.composite
def streams(draw: st.DrawFn) -> list[NewFlow]:
    """New flows in time order: few sources, hosts and ports, so that the small thresholds
    below are crossed, missed, and crossed again after a window has passed."""
    n = draw(st.integers(0, 60))
    t = 1_000.0
    out = []
    for _ in range(n):
        t += draw(st.sampled_from([0.0, 0.1, 0.5, 2.0, 6.0]))
        key = FlowKey(
            abi.AF_INET,
            draw(st.sampled_from(SOURCES)),
            draw(st.sampled_from(HOSTS)),
            draw(st.integers(30000, 30003)),
            draw(st.integers(1, 6)),
            draw(st.sampled_from([6, 17, 1])),
        )
        out.append(NewFlow(t, key, "eth0", 60, False))
    return out


def model(events: list[NewFlow]) -> tuple[set[str], set[tuple[str, int]]]:
    """Scanning sources and flooded targets, straight from the rules: for each event, the
    events of the last WINDOW seconds up to it."""
    scans: set[str] = set()
    floods: set[tuple[str, int]] = set()
    for i, ev in enumerate(events):
        if ev.key.proto not in (6, 17):
            continue
        recent = [
            e
            for e in events[: i + 1]
            if e.time >= ev.time - detect.WINDOW and e.key.proto in (6, 17)
        ]
        mine = {(e.key.dst, e.key.dport) for e in recent if e.key.src == ev.key.src}
        if len(mine) >= detect.SCAN_TARGETS:
            scans.add(ev.key.src)
        if ev.key.proto == 6:
            aim = (ev.key.dst, ev.key.dport)
            hits = [e for e in recent if e.key.proto == 6 and (e.key.dst, e.key.dport) == aim]
            if len(hits) >= detect.FLOOD_FLOWS and len({e.key.src for e in hits}) >= (
                detect.FLOOD_SOURCES
            ):
                floods.add(aim)
    return scans, floods


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "SCAN_TARGETS", 4)
    monkeypatch.setattr(detect, "FLOOD_FLOWS", 5)
    monkeypatch.setattr(detect, "FLOOD_SOURCES", 3)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=streams(), split=st.integers(0, 60))
def test_alerts_are_exactly_what_the_rules_say_one_per_detection(
    small: None, events: list[NewFlow], split: int
) -> None:
    d = detect.Detector()
    d.feed(events[:split])  # fed in two batches, as ticks do
    d.feed(events[split:])
    scans, floods = model(events)
    assert {a.source for a in d.alerts if a.kind.endswith("scan")} == scans
    assert {a.target for a in d.alerts if a.kind == "SYN flood"} == {f"{h}:{p}" for h, p in floods}
    keys = [(a.kind.endswith("scan"), a.source if a.kind.endswith("scan") else a.target)
            for a in d.alerts]  # fmt: skip
    assert len(keys) == len(set(keys))  # never a second alert for one detection
    for a in d.alerts:
        assert a.start <= a.last and a.count >= 1


def test_acknowledged_alerts_leave_the_list() -> None:
    d = detect.Detector()
    events = [
        NewFlow(1000.0 + i * 0.01, FlowKey(abi.AF_INET, SCANNER, SERVER, 40000, 1 + i, 6), "eth0",
                60, False)
        for i in range(30)
    ]  # fmt: skip
    (alert,) = d.feed(events)
    d.acknowledge(alert)
    assert d.alerts == []


def test_the_scenarios_scan_is_one_alert_naming_its_source() -> None:
    """The sample scenario: a SYN scan of 200 ports from 198.19.66.6 over five seconds, in a
    minute and a half of ordinary traffic (whose replies the console leaves out)."""
    from flowscope.ui.state import LiveState

    state = LiveState(clock_start=0.0)
    for msg in scenario(90):
        state.ingest(msg)
    (alert,) = state.detector.alerts
    assert (alert.kind, alert.source, alert.target) == ("port scan", SCANNER, SERVER)
    assert alert.count == 200 and alert.filter == f"src {SCANNER}"
