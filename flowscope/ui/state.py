"""What the console remembers between ticks: the latest flows, rate histories, the new-flows
feed and the running totals of the counters that mean lost visibility.

Kept apart from the widgets so that it is plain Python (tested without a screen) and so that
every screen (live, detail) reads the same state. Fed only on the UI thread, from TickArrived
messages. No textual import here (tests/unit/test_layers.py holds it to that).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from flowscope import abi
from flowscope.collect.collector import Tick
from flowscope.collect.detect import Alert, Detector, Openings
from flowscope.collect.drops import main_reason
from flowscope.collect.flood import overflow_top, target_text
from flowscope.history.writer import WriterState
from flowscope.model import NewFlow, Owner, Sample
from flowscope.query.frame import FlowFrame
from flowscope.query.nodes import Filter
from flowscope.query.view import Row
from flowscope.vocab import compact

HISTORY = 300
"""Ticks of rate history kept (5 minutes at one tick a second)."""
SERIES_RTT, SERIES_RETRANS, SERIES_DROPS = 2, 3, 4
"""The columns of LiveState.row_history besides the bit rate (1)."""
FEED = 500
"""New-flow events kept for the feed."""
LOSS_COUNTERS = ("map_full", "ringbuf_full", "malformed", "sockets_lost")
"""Kernel counters that mean flows or events were not seen; shown in a warning colour."""
BEHIND_TICKS = 3
"""The writer is behind (a warning) when its backlog grew over this many ticks in a row: a
backlog that is written away by the next tick is the ordinary pace of a busy second."""


@dataclass(frozen=True, slots=True)
class EventRow:
    """A new-flow event as the filter reads a row (filter.FlowRow): its first packet (the
    event carries no TCP flags)."""

    src: str
    dst: str
    sport: int
    dport: int
    proto: int
    vlan: int
    iface: str
    packets: int
    bytes: int
    tcp_flags: int
    direction: str
    owner: Owner | None = None
    """Not known yet when a flow is announced: the tick that first counts it joins it."""

    @classmethod
    def of(cls, ev: NewFlow) -> EventRow:
        k = ev.key
        direction = abi.DIRECTION_NAMES[k.direction]
        return cls(
            k.src, k.dst, k.sport, k.dport, k.proto, k.vlan, ev.iface, 1, ev.length, 0, direction
        )


@dataclass(slots=True)
class LiveState:
    """The console's memory. ``clock_start`` is the wall time the console started."""

    clock_start: float
    history: int = HISTORY
    frame: FlowFrame = field(default_factory=FlowFrame.empty)
    sample: Sample | None = None
    writer: WriterState | None = None
    ticks: int = 0
    bps: collections.deque[float] = field(default_factory=collections.deque)
    new_flows: collections.deque[float] = field(default_factory=collections.deque)
    feed: collections.deque[NewFlow] = field(default_factory=lambda: collections.deque(maxlen=FEED))
    totals: collections.Counter[str] = field(default_factory=collections.Counter)
    row_history: dict[str, collections.deque[tuple[int, float, int, int, int]]] = field(
        default_factory=dict
    )
    """Per shown row: (tick, bit rate, RTT us, retransmissions, drops) at each tick shown."""
    interfaces: tuple[tuple[str, str], ...] = ()
    links: dict[str, str] = field(default_factory=dict)
    """Each interface's state as of the last tick ('up', 'down', 'gone')."""
    openings: Openings = field(default_factory=Openings)
    """Tells the feed's new connections from replies (which it counts, not lists)."""
    detector: Detector = field(default_factory=Detector)
    """Scans and SYN floods among the new connections; its alerts stay until acknowledged."""
    raised: list[Alert] = field(default_factory=list)
    """Alerts the last tick raised (the app notifies once for each)."""
    backlogs: collections.deque[int] = field(
        default_factory=lambda: collections.deque(maxlen=BEHIND_TICKS + 1)
    )
    drops: dict[str, int] = field(default_factory=dict)
    """Packets the kernel dropped in the last tick, per reason (empty: none, or not
    followed)."""

    def ingest(self, tick: Tick, now_ns: int, writer: WriterState | None) -> Tick:
        """Take one tick in (``now_ns``: the monotonic time it was taken, for flow ages)."""
        self.ticks += 1
        self.sample = tick.sample
        self.links = tick.links
        self.drops = tick.drops
        self.writer = writer
        self.backlogs.append(writer.backlog if writer is not None else 0)
        self.frame = FlowFrame.from_live(tick.live, now_ns)
        s = tick.sample
        self.bps.append(s.bps)
        self.new_flows.append(s.new_flows / s.interval if s.interval > 0 else 0.0)
        while len(self.bps) > self.history:
            self.bps.popleft()
            self.new_flows.popleft()
        self.totals.update({k: v for k, v in s.counters.items() if v})
        opened = [ev for ev in tick.events if self._to_feed(ev)]
        self.raised = self.detector.feed(opened) + self.detector.pressure(tick.sample)
        if self.ticks % 60 == 0:
            self._forget_old_rows()
        return tick

    def _to_feed(self, ev: NewFlow) -> bool:
        """One line per new connection: the first direction seen opens it; the other
        direction (a reply, a victim's RST to a scan) is counted, not listed. The feed reads
        newest first. True when ``ev`` opened a connection."""
        if not self.openings.opens(ev):
            return False
        self.feed.appendleft(ev)
        return True

    @property
    def replies(self) -> int:
        """New-flow events left out of the feed because they answer a flow it already showed."""
        return self.openings.replies

    def feed_matching(self, flt: Filter | None) -> Iterator[NewFlow]:
        """The feed, newest first, only what ``flt`` matches (the event's first packet)."""
        for ev in self.feed:
            if flt is None or flt.matches(EventRow.of(ev)):
                yield ev

    @property
    def uptime(self) -> float:
        """Seconds since the console started, on the ticks' own clock."""
        return max(self.sample.time - self.clock_start, 0.0) if self.sample else 0.0

    def drops_per_second(self) -> tuple[float, str]:
        """The kernel's drops per second in the last tick and the reason most of them had."""
        if not self.drops or self.sample is None or self.sample.interval <= 0:
            return 0.0, ""
        top = main_reason(self.drops)
        return sum(self.drops.values()) / self.sample.interval, top

    def flood_badge(self) -> str:
        """'FLOOD 198.18.7.0/24 udp/9 158k pkt/s' while the flow map is full (the last tick had
        packets no flow could take): the source and target with the most packets the map could
        not take, and all its packets; '' else."""
        s = self.sample
        if s is None or not s.counters.get("map_full", 0) or not s.flood.rows:
            return ""
        top = overflow_top(s.flood)
        rate = compact(top.packets / s.interval) if s.interval > 0 else "?"
        return f"FLOOD {top.prefix} {target_text(top)} {rate} pkt/s"

    @property
    def new_per_second(self) -> float:
        """New flows per second in the last tick."""
        return self.new_flows[-1] if self.new_flows else 0.0

    @property
    def burst(self) -> bool:
        """True when new flows arrive far faster than usual (a scan, a SYN flood): at least
        20 a second and five times the median of the last minute."""
        if not self.new_flows:
            return False
        recent = sorted(list(self.new_flows)[-60:])
        median = recent[len(recent) // 2]
        now = self.new_flows[-1]
        return now >= 20 and now >= 5 * max(median, 1.0)

    @property
    def falling_behind(self) -> bool:
        """True when the history writer's backlog grew at each of the last BEHIND_TICKS
        ticks, or it dropped records: history is (or will be) missing flows."""
        if self.writer is not None and self.writer.dropped:
            return True
        b = list(self.backlogs)
        return len(b) > BEHIND_TICKS and all(x < y for x, y in itertools.pairwise(b))

    def record_rows(self, rows: Iterable[Row]) -> None:
        """Remember each shown row's bit rate at this tick (for its own graph), and its TCP
        health and drops (for the detail view's)."""
        for r in rows:
            h = self.row_history.get(r.key)
            if h is None:
                h = self.row_history[r.key] = collections.deque(maxlen=self.history)
            if not h or h[-1][0] != self.ticks:
                h.append((self.ticks, r.bps, r.rtt_us, r.retrans, r.drops))

    def row_series(self, key: str, width: int | None = None, column: int = 1) -> list[float]:
        """A row's bit rate per tick over the kept history, 0 where it was not shown; another
        ``column`` of what record_rows keeps (SERIES_RTT, SERIES_RETRANS, SERIES_DROPS)
        likewise, with its -1 (not followed) as 0."""
        n = min(self.ticks, self.history) if width is None else min(width, self.history)
        start = self.ticks - n + 1
        values = [0.0] * n
        for entry in self.row_history.get(key, ()):
            if entry[0] >= start:
                values[entry[0] - start] = max(float(entry[column]), 0.0)
        return values

    def row_growth(self, key: str, column: int, width: int | None = None) -> int | None:
        """How much a row's running total (SERIES_RETRANS, SERIES_DROPS) grew over the last
        ``width`` ticks it was shown in (None: not followed in them)."""
        n = min(self.ticks, self.history) if width is None else min(width, self.history)
        seen = [int(e[column]) for e in self.row_history.get(key, ()) if e[0] > self.ticks - n]
        seen = [v for v in seen if v >= 0]
        return seen[-1] - seen[0] if seen else None

    def _forget_old_rows(self) -> None:
        cutoff = self.ticks - self.history
        for key in [k for k, h in self.row_history.items() if not h or h[-1][0] < cutoff]:
            del self.row_history[key]
