"""Detections that stay: a scan or a SYN flood becomes an alert that is listed until someone
acknowledges it, instead of a rate that is orange for one tick.

Fed with new-connection events (model.NewFlow, the first packet of each flow, as the ring
buffer announces them; replies already left out, so a scanned host's RSTs are not a second
scanner). Pure: no clock but the events' own times, no I/O. Its work per event does not
depend on what the window holds (running counts, no sums over it): a flood of new sources
must not slow it down as it goes (bench: detect_flood).

- **Scan**: one source opens new flows to at least SCAN_TARGETS distinct (host, port) targets
  of ours within WINDOW seconds: a port scan when they are mostly ports of one host, a host
  scan (a sweep) otherwise.
- **SYN flood**: at least FLOOD_FLOWS new TCP flows to one (host, port) within WINDOW from at
  least FLOOD_SOURCES distinct sources (spoofed, random sources are the usual kind).
- **Flood** (fed per tick, ``pressure``): the flow map was full, new flows came faster than
  flood.NEW_FLOWS_PER_S, or most received TCP packets were SYNs without ACK
  (flood.flood_signal); the alert names the source prefix and target most of it came from
  at its last tick. Unlike the two above it does not need the new-flow events, which a flood
  past the kernel's announcement budget only samples.

An alert names its source (or how many sources), its target, when it started, how many new
flows it counted and their rate; a detection that goes on updates its alert, never adds a
second one.

Two users feed the same classes: the console (``ui.state``: alerts stay until acknowledged)
and the history writer (``Watch``: alerts are written as they are raised and updated, and
forgotten once quiet for a window, so a recording of weeks does not grow).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from flowscope.collect.flood import filter_text, flood_signal, target_text
from flowscope.model import NewFlow, Sample

WINDOW = 10.0
"""Seconds of new flows a detection looks at."""
SCAN_TARGETS = 20
FLOOD_FLOWS = 200
FLOOD_SOURCES = 50
MAX_TRACKED = 100_000
"""Events kept in the window at most (a flood must not grow the detector without bound)."""
COLUMNS = ("kind", "source", "target", "since", "last", "flows", "per s")
"""An alert's columns as every table shows them (the console's alerts screen, `flowscope
alerts`): since and last are its first and last new flow, per s their rate."""
OPENED = 65_536
"""Conversations remembered for telling a reply from a new connection."""


class Openings:
    """Tells a new connection from a reply: the first direction seen of a conversation opens
    it; an event for the other direction (a reply, a victim's RST to a scan) is counted in
    ``replies``, not taken as a connection of its own."""

    def __init__(self, limit: int = OPENED) -> None:
        self.limit = limit
        self.replies = 0
        # OrderedDict: popping the oldest is O(1) (next(iter(dict)) after many deletions at
        # its front is not: it walks the holes they leave)
        self._seen: collections.OrderedDict[tuple[object, ...], None] = collections.OrderedDict()
        """The conversations opened so far (their opening direction), oldest first."""

    def opens(self, ev: NewFlow) -> bool:
        """True when ``ev`` opens a connection (and remember it), False for a reply."""
        k = ev.key
        if (k.family, k.dst, k.src, k.dport, k.sport, k.proto, k.vlan) in self._seen:
            self.replies += 1
            return False
        self._seen[(k.family, k.src, k.dst, k.sport, k.dport, k.proto, k.vlan)] = None
        if len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        return True


@dataclass(slots=True)
class Alert:
    """One detection, updated while it goes on."""

    id: int
    """Its number in the detector that raised it (1, 2, ...)."""
    kind: str
    """'port scan', 'host scan', 'SYN flood' or 'flood'."""
    source: str
    """The scanner's address, 'N sources' for a SYN flood, a prefix for a flood."""
    target: str
    """The scanned host (a port scan), 'N hosts' (a host scan), host:port (a SYN flood) or
    protocol/port (a flood)."""
    start: float
    last: float
    count: int
    """New flows counted for it so far."""
    filter: str
    """The filter that shows its flows (Enter on the alert applies it)."""
    targets: set[tuple[str, int]] = field(default_factory=set, repr=False)
    sources: int = 0
    """A flood's most distinct sources in one window so far (``source`` says it in words)."""

    @property
    def rate(self) -> float:
        """New flows per second over its life so far."""
        return rate(self.count, self.start, self.last)


def rate(count: int, start: float, last: float) -> float:
    """An alert's new flows per second from its first to its last (over at least a second):
    the console's live alert and a stored one say the same."""
    return count / max(last - start, 1.0)


class Detector:
    """Scan and SYN-flood detection over a sliding window of new flows; ``alerts`` holds
    every alert until ``acknowledge()``."""

    def __init__(self) -> None:
        self.window: collections.deque[NewFlow] = collections.deque()
        self.by_source: dict[str, dict[tuple[str, int], int]] = {}
        """Per source, its new flows in the window per target (host, port)."""
        self.by_target: dict[tuple[str, int], dict[str, int]] = {}
        """Per target, its new TCP flows in the window per source."""
        # Kept up to date with the two above, so that a check costs the same whatever the
        # window holds (a flood of 100,000 new flows must not be 100,000 sums per event):
        self.target_flows: dict[tuple[str, int], int] = {}
        """New TCP flows in the window per target (the sum of its by_target counter)."""
        self.source_hosts: dict[str, dict[str, int]] = {}
        """Per source, its distinct targets in the window per host (len: how many hosts)."""
        self.alerts: list[Alert] = []
        self._open: dict[tuple[str, str], Alert] = {}
        self._ids = itertools.count(1)

    def feed(self, events: Iterable[NewFlow]) -> list[Alert]:
        """Take new flows in (oldest first); returns the alerts raised by them (new ones)."""
        raised: list[Alert] = []
        for ev in events:
            if ev.key.proto not in (6, 17):
                continue
            self._expire(ev.time)
            self._add(ev)
            raised += self._check(ev)
        return raised

    def pressure(self, sample: Sample) -> list[Alert]:
        """Take a tick's sample in; returns the flood alert it raised (a new one), if any. A
        flood that goes on updates its alert (new flows attempted, the current top source and
        target); one quiet for WINDOW seconds is over, and the next is a new alert."""
        signal = flood_signal(sample)
        if signal is None:
            return []
        top = signal.top
        alert = self._open.get(("flood", ""))
        if alert is not None and sample.time - alert.last <= WINDOW:
            alert.count += signal.attempts
            alert.last = sample.time
            alert.source, alert.target = top.prefix, target_text(top)
            alert.filter = filter_text(top)
            return []
        alert = Alert(
            next(self._ids),
            "flood",
            top.prefix,
            target_text(top),
            sample.time - sample.interval,
            sample.time,
            signal.attempts,
            filter_text(top),
        )
        self._open[("flood", "")] = alert
        self.alerts.append(alert)
        return [alert]

    def acknowledge(self, alert: Alert) -> None:
        """Take an alert off the list (a detection that goes on raises a new one)."""
        if alert in self.alerts:
            self.alerts.remove(alert)
        for key, a in list(self._open.items()):
            if a is alert:
                del self._open[key]

    # --- the window -------------------------------------------------------------------------

    def _add(self, ev: NewFlow) -> None:
        # plain dicts, not Counters: a spoofed flood makes new ones for every event
        k = ev.key
        self.window.append(ev)
        aim = (k.dst, k.dport)
        targets = self.by_source.get(k.src)
        if targets is None:
            targets = self.by_source[k.src] = {}
            self.source_hosts[k.src] = {}
        n = targets[aim] = targets.get(aim, 0) + 1
        if n == 1:
            hosts = self.source_hosts[k.src]
            hosts[k.dst] = hosts.get(k.dst, 0) + 1
        if k.proto == 6:
            sources = self.by_target.get(aim)
            if sources is None:
                sources = self.by_target[aim] = {}
                self.target_flows[aim] = 0
            sources[k.src] = sources.get(k.src, 0) + 1
            self.target_flows[aim] += 1
        while len(self.window) > MAX_TRACKED:
            self._drop(self.window.popleft())

    def _expire(self, now: float) -> None:
        while self.window and self.window[0].time < now - WINDOW:
            self._drop(self.window.popleft())

    def _drop(self, ev: NewFlow) -> None:
        k = ev.key
        aim = (k.dst, k.dport)
        if k.proto == 6:
            sources = self.by_target[aim]
            sources[k.src] -= 1
            if not sources[k.src]:
                del sources[k.src]
            self.target_flows[aim] -= 1
            if not sources:
                del self.by_target[aim]
                del self.target_flows[aim]
        targets = self.by_source[k.src]
        targets[aim] -= 1
        if not targets[aim]:
            del targets[aim]
            hosts = self.source_hosts[k.src]
            hosts[k.dst] -= 1
            if not hosts[k.dst]:
                del hosts[k.dst]
        if not targets:
            del self.by_source[k.src]
            del self.source_hosts[k.src]

    # --- the rules --------------------------------------------------------------------------

    def _check(self, ev: NewFlow) -> list[Alert]:
        k = ev.key
        raised: list[Alert] = []
        targets = self.by_source[k.src]
        if len(targets) >= SCAN_TARGETS:
            hosts = len(self.source_hosts[k.src])
            kind = "port scan" if hosts <= max(1, len(targets) // 4) else "host scan"
            alert = self._open.get(("scan", k.src))
            if alert is None:
                first = min((e.time for e in self.window if e.key.src == k.src), default=ev.time)
                target = k.dst if kind == "port scan" else f"{hosts} hosts"
                alert = Alert(
                    next(self._ids), kind, k.src, target, first, ev.time, 0, f"src {k.src}"
                )
                alert.targets = set(targets)
                alert.count = len(targets)
                self._open[("scan", k.src)] = alert
                self.alerts.append(alert)
                raised.append(alert)
            elif (k.dst, k.dport) not in alert.targets:
                alert.targets.add((k.dst, k.dport))
                alert.count += 1
            alert.last = ev.time
        if k.proto == 6:
            sources = self.by_target.get((k.dst, k.dport))
            flows = self.target_flows.get((k.dst, k.dport), 0)
            if sources is not None and flows >= FLOOD_FLOWS and len(sources) >= FLOOD_SOURCES:
                name = f"{k.dst}:{k.dport}" if ":" not in k.dst else f"[{k.dst}]:{k.dport}"
                alert = self._open.get(("flood", name))
                if alert is None:
                    aim = (k.dst, k.dport)
                    first = min(
                        (e.time for e in self.window if (e.key.dst, e.key.dport) == aim),
                        default=ev.time,
                    )
                    alert = Alert(
                        next(self._ids),
                        "SYN flood",
                        f"{len(sources)} sources",
                        name,
                        first,
                        ev.time,
                        flows,
                        f"tcp and dst host {k.dst} and dst port {k.dport}",
                        sources=len(sources),
                    )
                    self._open[("flood", name)] = alert
                    self.alerts.append(alert)
                    raised.append(alert)
                else:
                    alert.count += 1
                    alert.sources = max(alert.sources, len(sources))
                    alert.source = f"{alert.sources} sources"
                alert.last = ev.time
        return raised


class Watch:
    """Detection for a recording (the history writer): new connections only (``Openings``),
    and each tick's alerts that were raised or changed, to be written. An alert quiet for
    WINDOW seconds (on the events' clock) is over and forgotten: if its source starts
    again, that is a new alert."""

    def __init__(self) -> None:
        self.openings = Openings()
        self.detector = Detector()

    def feed(self, events: Iterable[NewFlow], sample: Sample | None = None) -> list[Alert]:
        """Take a tick's new-flow events (oldest first) and its sample in; the alerts raised or
        updated by them, oldest first."""
        alerts = self.detector.alerts
        before = {a.id: (a.count, a.last, a.source) for a in alerts}
        opened = [ev for ev in events if self.openings.opens(ev)]
        self.detector.feed(opened)
        if sample is not None:
            self.detector.pressure(sample)
        changed = [a for a in alerts if before.get(a.id) != (a.count, a.last, a.source)]
        now = opened[-1].time if opened else sample.time if sample is not None else None
        if now is not None:
            for a in [a for a in alerts if a.last < now - WINDOW]:
                self.detector.acknowledge(a)
        return changed
