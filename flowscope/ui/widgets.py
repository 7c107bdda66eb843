"""The live screen's widgets: the status line, the rate graphs, the flows table, the new-flows
feed. Each draws from LiveState; none of them knows where ticks come from."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Label, Sparkline, Static

from flowscope import abi
from flowscope.model import proto_name, tcp_flags_text
from flowscope.query.nodes import Filter
from flowscope.query.view import GROUPS, Row
from flowscope.ui.cells import (
    port_text,
    service_name,
)
from flowscope.ui.state import LOSS_COUNTERS, LiveState
from flowscope.vocab import (
    MAP_HIGH_WATER,
    age_text,
    endpoint,
    human,
    human_rate,
    owner_text,
    printable,
    rtt_text,
    size_text,
)


def padded(values: Sequence[float], width: int) -> list[float]:
    """A series for a sparkline ``width`` cells wide: the newest value at the right edge,
    zeros before the first tick (so the graph scrolls in from the right), and always one zero
    in front: Textual scales a sparkline from its smallest value, and a rate graph must start
    at zero (13.5 to 13.7 Mb/s is a flat line, not a cliff). Its bars show each cell's
    maximum, so the extra zero shares the first cell and never shows."""
    data = list(values)
    if len(data) < width:
        data = [0.0] * (width - len(data)) + data
    return [0.0, *data]


class StatusLine(Static):
    """Two lines. The first: what is watched and how busy it is. The second starts with the
    view's state as badges (PAUSED, grouping and sort, filter, frozen), so that at 80 columns
    they are always on screen, then what might be missing from view: kernel loss counters and
    the history writer, in a warning colour only when something is lost or falling behind."""

    DEFAULT_CSS = """
    StatusLine { height: 2; text-wrap: nowrap; text-overflow: ellipsis; padding: 0 1; }
    """

    def show(
        self,
        state: LiveState,
        *,
        paused: bool,
        badges: Sequence[str],
        alerts: int = 0,
        blocking: bool = False,
    ) -> None:
        s = state.sample
        p: list[str | tuple[str, str]] = []
        if not state.interfaces:
            p.append(("compiling…", "bold"))  # BCC, until Attached
        for i, (name, mode) in enumerate(state.interfaces):
            # printable: Linux takes escape sequences in interface names
            p.append(((" " if i else "") + f"{printable(name)} ({mode})", "bold"))
            link = state.links.get(name, "up")
            if link != "up":  # stays until it is up again: the notification said it once
                p += [" ", (f" {link.upper()} ", "bold reverse $error")]
        up = int(state.uptime)
        p.append(f"  up {up // 3600}:{up % 3600 // 60:02d}:{up % 60:02d}")
        if s is not None:
            p += ["  ", (human_rate(s.bps), "bold $accent")]
            p.append(f"  {human(s.pps)} pkt/s  {s.active_flows:,} flows  ")
            burst = "bold reverse $warning" if state.burst else ""
            p.append((f"{state.new_per_second:,.0f} new/s", burst))
        p.append("\n")
        if alerts:
            p += [(f" {alerts} ALERT{'S' if alerts > 1 else ''} (a) ", "bold reverse $error"), " "]
        if blocking:  # the console can drop traffic: it says so while it can (b, B)
            p += [(" BLOCK ON (B) ", "bold reverse $warning"), " "]
        flood = state.flood_badge()
        if flood:  # the map is full: who fills it, a key away from the whole shape
            p += [(f" {flood} (F) ", "bold reverse $error"), " "]
        if paused:
            p += [(" PAUSED ", "bold reverse $warning"), " "]
        for badge in badges:
            p += [(f" {badge} ", "bold $text on $primary"), " "]
        p.append("│ ")
        lost = [(name, state.totals.get(name, 0)) for name in LOSS_COUNTERS]
        if not any(n for _, n in lost):
            p += [("no loss", "$text-muted"), "  "]
        for name, n in lost:
            if n:
                p += [(f"{name} {n:,}", "bold $warning"), "  "]
        w = state.writer
        if w is None:
            p.append(("no history", "$text-muted"))
        elif w.dropped:
            p.append((f"history dropped {w.dropped:,}", "bold $error"))
        elif state.falling_behind:
            p.append((f"history behind {w.backlog:,}", "bold $warning"))
        elif w.backlog:
            p.append((f"history writing {w.backlog:,}", "$text-muted"))
        else:
            p.append(("history ok", "$text-muted"))
        if s is not None and s.map_bytes:  # how full the flow maps are, what they lock (after
            # history, which must not be cut at 80 columns)
            style = "bold $warning" if s.map_fill >= MAP_HIGH_WATER else "$text-muted"
            p += ["  ", (f"map {s.map_fill:.0%} of {size_text(s.map_bytes)}", style)]
        drops, reason = state.drops_per_second()
        if drops:  # what the kernel threw away, as dropwatch says it (last: it may be cut)
            p += ["  ", (f"drops {human(drops)}/s {reason}", "bold $warning")]
        self.update(Content.assemble(*p))


class RateGraph(Widget):
    """Total bit rate over the last minutes, and the selected row's under it."""

    DEFAULT_CSS = """
    RateGraph { height: auto; }
    RateGraph > Horizontal { height: 1; }
    RateGraph Label { width: 26; }
    RateGraph Sparkline { width: 1fr; height: 1; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Label("total", id="total-label")
            yield Sparkline([], id="total-graph")
        with Horizontal():
            yield Label("", id="row-label")
            yield Sparkline([], id="row-graph")

    def show(self, state: LiveState, selected: Row | None, selected_name: str) -> None:
        total = self.query_one("#total-graph", Sparkline)
        width = max(total.size.width, 10)
        total.data = padded(state.bps, width)
        rate = human_rate(state.sample.bps) if state.sample else "-"
        self.query_one("#total-label", Label).update(f"total    {rate:>11}")
        row_graph = self.query_one("#row-graph", Sparkline)
        label = self.query_one("#row-label", Label)
        if selected is None:
            row_graph.data = [0.0] * width
            label.update(Content.styled("(no row)", "$text-muted"))
            return
        row_graph.data = padded(state.row_series(selected.key), width)
        label.update(Content.assemble(("selected", "bold"), f" {human_rate(selected.bps):>11}"))


class NewFlowsFeed(Static):
    """New connections from the ring buffer, newest first, under a line with their rate and
    a sparkline of it; a burst turns the title line into a warning. Only those the table's
    filter matches are listed (the rate counts them all)."""

    DEFAULT_CSS = """
    NewFlowsFeed { text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def show(
        self,
        state: LiveState,
        name_of: Callable[[str], str | None] | None,
        flt: Filter | None = None,
    ) -> None:
        height = max(self.size.height, 2)
        width = max(self.size.width, 20)
        rate = state.new_per_second
        style = "bold reverse $warning" if state.burst else "bold"
        head = f" new flows {rate:,.0f}/s "
        peak = f" peak {max(state.new_flows, default=0.0):,.0f}/s "
        bars = _bars(list(state.new_flows), max(width - len(head) - len(peak) - 1, 0))
        p: list[str | tuple[str, str]] = [(head, style), (peak, "$text-muted"), (bars, "$warning")]
        for ev in itertools.islice(state.feed_matching(flt), height - 1):
            k = ev.key
            src = (name_of(k.src) if name_of else None) or k.src
            dst = (name_of(k.dst) if name_of else None) or k.dst
            when = time.strftime("%H:%M:%S", time.gmtime(ev.time))
            svc = service_name(k.dport, k.proto)
            name = f" {svc}" if svc else ""
            p += ["\n", (when + " ", "$text-muted"), f"{proto_name(k.proto):<5} "]
            p.append(f"{endpoint(src, k.sport, k.proto)} → {endpoint(dst, k.dport, k.proto)}{name}")
            if ev.map_full:
                p.append((" MAP FULL", "bold $error"))
        self.update(Content.assemble(*p))


_BARS = " ▁▂▃▄▅▆▇█"


def _bars(values: list[float], width: int) -> str:
    """A one-line sparkline as text (the feed's title line has no room for a widget)."""
    if width <= 0:
        return ""
    vals = values[-width:]
    top = max(vals, default=0.0) or 1.0
    chars = "".join(_BARS[min(int(v / top * 8 + 0.999), 8)] if v > 0 else " " for v in vals)
    return chars.rjust(width)


def describe_row(row: Row, group: str) -> list[tuple[str, str]]:
    """Every field of a row as (name, value) pairs, for the detail screen."""
    out: list[tuple[str, str]] = [("grouping", GROUPS[group])]
    if row.src is not None:
        out.append(("host A" if group == "pair" else "source", row.src))
    if row.dst is not None:
        out.append(("host B" if group == "pair" else "destination", row.dst))
    if row.sport is not None:
        out.append(("source port", port_text(row.sport, row.proto)))
    if row.dport is not None:
        out.append(("destination port", port_text(row.dport, row.proto)))
    if row.proto is not None:
        out.append(("protocol", f"{proto_name(row.proto)} ({row.proto})"))
    if row.vlan is not None:
        out.append(("VLAN", str(row.vlan) if row.vlan else "untagged"))
    if row.iface is not None:
        out.append(("interface", row.iface))
    if row.direction is not None:
        out.append(("direction", "ingress" if row.direction == 0 else "egress"))
    out += [
        ("bit rate", human_rate(row.bps)),
        ("packet rate", f"{human(row.pps)} pkt/s"),
        ("bytes", f"{row.bytes:,}"),
        ("packets", f"{row.packets:,}"),
        ("age", age_text(row.age)),
        ("TCP flags", tcp_flags_text(row.tcp_flags)),
    ]
    if group != "flow":
        out.append(("flows", f"{row.flows:,}"))
    if row.out is not None:
        out.append(("bytes out (sent)", f"{row.out:,}"))
    if row.in_ is not None:
        out.append(("bytes in (received)", f"{row.in_:,}"))
    if group in ("flow", "process", "user", "container"):
        o = row.owner
        if o is None:
            out.append(("process", "- (not local, or not known)"))
        else:
            if group != "user":
                out.append(("process", o.label))
            out.append(("user", f"{owner_text(o, 'user')} ({o.uid})"))
            out.append(("container", o.container or "-"))
    if row.rtt_us >= 0:  # a local TCP connection flowscope follows (its socket's numbers)
        out.append(("retransmitted", f"{row.retrans:,} segments{kinds_text(row)}"))
        out.append(("round trip", rtt_text(row.rtt_us)))
    if row.drops > 0:  # what the kernel dropped of it, since flowscope started
        reason = f" (mostly {row.drop_reason})" if row.drop_reason else ""
        out.append(("dropped by the kernel", f"{row.drops:,} packets{reason}"))
    if row.resets > 0:  # TCP resets in it, since flowscope started
        sent = row.direction == abi.DIR_EGRESS
        out.append(("TCP resets " + ("sent" if sent else "received"), f"{row.resets:,}"))
    return out


def kinds_text(row: Row) -> str:
    """What a flow's retransmissions were, where the kernel said: " (fast 120, timeout 3,
    probe 1)"; empty when it did not, or there were none."""
    if row.retrans_kinds[0] < 0 or not any(row.retrans_kinds):
        return ""
    names = ("fast", "timeout", "probe")
    return (
        " (" + ", ".join(f"{n} {v:,}" for n, v in zip(names, row.retrans_kinds, strict=True)) + ")"
    )
