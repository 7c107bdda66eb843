"""Scan and SYN-flood detection (flowscope.collect.detect) against a brute-force model of its rules,
on generated streams of new flows; and the scenario's scan, which must raise exactly one alert
naming its source that stays listed."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowscope import abi
from flowscope.collect import detect
from flowscope.model import FlowKey, NewFlow
from tests.support.scenario import SCANNER, SERVER, scenario

SOURCES = [f"198.18.1.{i}" for i in range(1, 5)]
HOSTS = ["198.18.0.10", "198.18.0.11", "198.18.0.12"]


@st.composite
def streams(draw: st.DrawFn) -> list[NewFlow]:
    """New flows in time order, in bursts: one source to several targets (a scan in the
    making), several sources to one target (a flood in the making) or anything; few sources,
    hosts and ports, so that the small thresholds below are crossed, missed, and crossed again
    after a window has passed (the gaps between bursts)."""
    t = 1_000.0
    out = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["scan", "flood", "noise"]))
        t += draw(st.sampled_from([0.0, 1.0, 12.0]))
        step = draw(st.sampled_from([0.0, 0.1, 1.0, 3.0]))
        src, dst, dport = (draw(st.sampled_from(SOURCES)), draw(st.sampled_from(HOSTS)),
                           draw(st.integers(1, 6)))  # fmt: skip
        proto = draw(st.sampled_from([6, 6, 17, 1]))
        for _ in range(draw(st.integers(1, 12))):
            t += step
            key = FlowKey(
                abi.AF_INET,
                draw(st.sampled_from(SOURCES)) if kind != "scan" else src,
                draw(st.sampled_from(HOSTS)) if kind != "flood" else dst,
                draw(st.integers(30000, 30003)),
                draw(st.integers(1, 6)) if kind != "flood" else dport,
                proto if kind != "noise" else draw(st.sampled_from([6, 17, 1])),
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
        state.ingest(msg.tick, msg.now_ns, msg.writer)
    (alert,) = state.detector.alerts
    assert (alert.kind, alert.source, alert.target) == ("port scan", SCANNER, SERVER)
    assert alert.count == 200 and alert.filter == f"src {SCANNER}"


def reversed_key(k: FlowKey) -> FlowKey:
    return FlowKey(k.family, k.dst, k.src, k.dport, k.sport, k.proto, k.vlan)


@st.composite
def conversations(draw: st.DrawFn) -> list[NewFlow]:
    """A stream of new flows where some are the other direction of an earlier one (a reply)
    and some repeat an earlier one (a flow that expired and came back)."""
    out: list[NewFlow] = []
    for ev in draw(streams()):
        if out and draw(st.booleans()):
            earlier = draw(st.sampled_from(out))
            key = draw(st.sampled_from([earlier.key, reversed_key(earlier.key)]))
            ev = NewFlow(ev.time, key, ev.iface, ev.length, False)
        out.append(ev)
    return out


@settings(max_examples=300, deadline=None)
@given(events=conversations())
def test_openings_tell_replies_from_new_connections(events: list[NewFlow]) -> None:
    """Against a model: an event opens a connection unless the other direction of the same
    conversation opened one before it."""
    openings = detect.Openings()
    opened: list[FlowKey] = []
    for ev in events:
        expected = reversed_key(ev.key) not in opened
        assert openings.opens(ev) == expected
        if expected:
            opened.append(ev.key)
    assert openings.replies == len(events) - len(opened)


def test_openings_forget_the_oldest_conversations_past_their_limit() -> None:
    openings = detect.Openings(limit=2)
    keys = [FlowKey(abi.AF_INET, SOURCES[0], HOSTS[0], 30000 + i, 22, 6) for i in range(3)]
    for k in keys:
        assert openings.opens(NewFlow(1.0, k, "eth0", 60, False))
    # the first is forgotten: its reply now looks like a connection of its own
    assert openings.opens(NewFlow(2.0, reversed_key(keys[0]), "eth0", 60, False))
    assert not openings.opens(NewFlow(2.0, reversed_key(keys[2]), "eth0", 60, False))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=conversations(), cuts=st.lists(st.integers(0, 60), max_size=4))
def test_a_recordings_watch_writes_every_alert_as_it_ends_up(
    small: None, events: list[NewFlow], cuts: list[int]
) -> None:
    """What the history writer stores: fold each tick's changed alerts into a table by id (an
    upsert); at the end, the table holds every alert with its final state, the detections are
    those the rules give for the new connections, and quiet alerts were let go."""
    watch = detect.Watch()
    table: dict[int, tuple[str, str, str, float, float, int]] = {}
    raised: dict[int, detect.Alert] = {}
    bounds = [0, *sorted(cuts), len(events)]
    for lo, hi in itertools.pairwise(bounds):
        for a in watch.feed(events[lo:hi]):
            table[a.id] = (a.kind, a.source, a.target, a.start, a.last, a.count)
            raised[a.id] = a
    for a in raised.values():  # nothing changed without being handed to the writer
        assert table[a.id] == (a.kind, a.source, a.target, a.start, a.last, a.count)
    model_openings = detect.Openings()
    opened = [ev for ev in events if model_openings.opens(ev)]
    scans, floods = model(opened)
    assert {s for k, s, *_ in table.values() if k.endswith("scan")} == scans
    assert {t for k, _, t, *_ in table.values() if k == "SYN flood"} == {
        f"{h}:{p}" for h, p in floods
    }
    if opened:
        now = opened[-1].time
        assert all(a.last >= now - detect.WINDOW for a in watch.detector.alerts)


def test_a_flood_that_fills_the_map_is_one_alert_naming_its_top_source() -> None:
    """Issue #18: the scenario's SYN flood fills the map from tick 90: one 'flood' alert from
    its /24 to tcp/443, counting every new flow it tried (created or found no room), updated
    while it goes on; none before it (the scan's rate is far below the thresholds). Quiet for
    longer than the window, the next flood is a new alert."""
    import dataclasses

    ticks = [t.tick for t in scenario(94, flood=True)]
    d = detect.Detector()
    assert [a for t in ticks[:90] for a in d.pressure(t.sample)] == []
    (alert,) = d.pressure(ticks[90].sample)
    assert (alert.kind, alert.source, alert.target) == ("flood", "198.19.77.0/24", "tcp/443")
    assert alert.filter == "src net 198.19.77.0/24 and dport 443 and tcp and ingress"
    for t in ticks[91:]:
        assert d.pressure(t.sample) == []
    want = sum(t.sample.new_flows + t.sample.counters["map_full"] for t in ticks[90:])
    assert alert.count == want and alert.last == ticks[-1].sample.time
    later = dataclasses.replace(ticks[-1].sample, time=ticks[-1].sample.time + detect.WINDOW + 1)
    (again,) = d.pressure(later)
    assert again.id != alert.id and len(d.alerts) == 2


@pytest.mark.parametrize(
    ("new_flows", "syn", "reasons"),
    [
        (9_000, 0, ()),
        (10_000, 0, ("new flows 10.0k/s",)),
        (0, 2_000, ("SYN without ACK 67%",)),
        (0, 500, ()),  # too few SYNs a second to say
    ],
)
def test_flood_signal_thresholds(new_flows: int, syn: int, reasons: tuple[str, ...]) -> None:
    """Without map pressure: the new-flow rate and the share of SYNs without ACK among the
    received TCP packets decide, each from its threshold."""
    from flowscope.collect.flood import flood_signal
    from flowscope.model import FloodRow, FloodShape, Sample

    rows = (
        FloodRow(4, "198.19.7.0/24", 6, 80, 0, 0x02, syn, syn * 60, syn),
        FloodRow(4, "198.18.0.0/24", 6, 443, 0, 0x12, 1_000, 10**6, 1_000),
    )
    shape = FloodShape(rows=rows)
    counters = {c.name.lower(): 0 for c in abi.Counter}
    sample = Sample(1.0, 1.0, 0.0, 0.0, 0, new_flows, counters, flood=shape)
    signal = flood_signal(sample)
    assert (signal.reasons if signal else ()) == reasons
