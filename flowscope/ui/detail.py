"""Enter on a row: every field of it, its own rate graph, and the other direction of the
conversation, kept current tick by tick."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Label, Sparkline, Static

from flowscope.query.view import Row, find, find_reverse, reverse_ident
from flowscope.ui.context import ConsoleContext
from flowscope.ui.state import SERIES_DROPS, SERIES_RETRANS, SERIES_RTT
from flowscope.ui.widgets import describe_row, padded
from flowscope.vocab import human_rate, rtt_text


def _fields(pairs: list[tuple[str, str]]) -> Content:
    width = max((len(k) for k, _ in pairs), default=0)
    parts: list[str | tuple[str, str]] = []
    for i, (k, v) in enumerate(pairs):
        parts += ["\n" if i else "", (f"{k:<{width}}  ", "$text-muted"), (v, "bold")]
    return Content.assemble(*parts)


class DetailScreen(Screen[None]):
    """One row in full."""

    DEFAULT_CSS = """
    DetailScreen { layout: vertical; }
    DetailScreen #title { height: 1; padding: 0 1; background: $panel; text-style: bold; }
    DetailScreen #graph-label { height: 1; padding: 0 1; }
    DetailScreen Sparkline { height: 3; margin: 0 1; }
    DetailScreen #health-label { height: 1; padding: 0 1; }
    DetailScreen #rtt-graph { height: 1; }
    DetailScreen #sides { height: 1fr; }
    DetailScreen .side { width: 1fr; padding: 0 1; }
    DetailScreen .side-title { text-style: bold underline; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("backspace", "app.pop_screen", "back", show=False),
    ]

    def __init__(self, context: ConsoleContext, row: Row, group: str) -> None:
        super().__init__()
        self.context = context
        self.row = row
        self.group = group
        self._command: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield Label(id="graph-label")
        yield Sparkline([], id="row-graph")
        yield Label(id="health-label")
        yield Sparkline([], id="rtt-graph")
        with Horizontal(id="sides"):
            with Vertical(classes="side"):
                yield Label("this direction", classes="side-title", id="this-title")
                yield Static(id="this")
            with Vertical(classes="side"):
                yield Label("other direction", classes="side-title", id="other-title")
                yield Static(id="other")
        yield Footer()

    def on_mount(self) -> None:
        self.redraw()

    def _health_over_time(self, row: Row, width: int, ticks: int) -> None:
        """A followed TCP connection's RTT over the same ``ticks`` as the bit rate (a graph
        ``width`` cells wide, and its range), and what it retransmitted and the kernel
        dropped of it in them; hidden for other rows."""
        state = self.context.state
        label = self.query_one("#health-label", Label)
        rtt_graph = self.query_one("#rtt-graph", Sparkline)
        shown = self.group == "flow" and (row.rtt_us >= 0 or row.drops > 0)
        label.display = rtt_graph.display = shown
        if not shown:
            return
        parts = []
        rtts = [v for v in state.row_series(row.key, ticks, SERIES_RTT) if v > 0]
        if row.rtt_us >= 0 and rtts:
            low, high = rtt_text(int(min(rtts))), rtt_text(int(max(rtts)))
            span = f" ({low}-{high})" if low != high else ""
            parts.append(f"round trip {rtt_text(row.rtt_us)}{span}")
        for what, column in (("retransmitted", SERIES_RETRANS), ("dropped", SERIES_DROPS)):
            grew = state.row_growth(row.key, column, ticks)
            if grew is not None:
                parts.append(f"{what} +{grew:,}")
        label.update(f"{', '.join(parts)} in the last {ticks} ticks")
        rtt_graph.display = row.rtt_us >= 0
        rtt_graph.data = padded(state.row_series(row.key, ticks, SERIES_RTT), width)

    def redraw(self) -> None:
        """Refresh from the latest tick (the row may have left the top N: look it up)."""
        state = self.context.state
        now = find(state.frame, self.group, self.row.ident, self.context.iface_names)
        if now is not None:
            self.row = now
            state.record_rows([now])
        row = self.row
        gone = "" if now is not None else "  (no longer live)"
        if row.src and row.dst and self.group == "flow":
            title = f"{row.src}:{row.sport} → {row.dst}:{row.dport}"
        else:
            title = "  ".join(v for _, v in describe_row(row, self.group)[:3])
        self.query_one("#title", Static).update(Content(title + gone))
        graph = self.query_one("#row-graph", Sparkline)
        width = max(graph.size.width, 10)
        graph.data = padded(state.row_series(row.key), width)
        self.query_one("#graph-label", Label).update(
            f"bit rate {human_rate(row.bps)}, last {min(state.ticks, state.history)} ticks"
        )
        self._health_over_time(row, width, min(state.ticks, state.history))
        fields = describe_row(row, self.group)
        if row.owner is not None and self.group in ("flow", "process"):
            if self._command is None:  # once per screen: /proc is read on demand only
                self._command = self.context.command_line(row.owner) or "- (no longer running)"
            fields.append(("command", self._command))
        self.query_one("#this", Static).update(_fields(fields))
        other_title = self.query_one("#other-title", Label)
        other = self.query_one("#other", Static)
        rev = reverse_ident(row.ident)
        if rev is None:
            other_title.update("both directions" if self.group == "pair" else "")
            other.update(
                Content.styled("bytes out and in are above", "$text-muted")
                if self.group == "pair"
                else ""
            )
            return
        back = find_reverse(state.frame, row.ident, self.context.iface_names)
        other_title.update("other direction")
        if back is None:
            other.update(Content.styled("no packets seen the other way", "$text-muted"))
        else:
            state.record_rows([back])
            other.update(_fields(describe_row(back, "flow")))
