"""The live screen: status line, rate graphs, the flows table, the new-flows feed, the filter
bar. It owns the view settings (grouping, sort, filter) and redraws from LiveState when the
app tells it a tick arrived."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from textual import on
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Horizontal, Vertical
from textual.content import Content
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Static

from flowscope.errors import FlowscopeError
from flowscope.query import view as views
from flowscope.query.filter import FilterSyntaxError, parse
from flowscope.query.nodes import DropReason, Owned
from flowscope.query.view import COLUMNS, DESCENDING, GROUPS, Row, View, ViewSpec
from flowscope.ui.cells import HEADERS, column_texts, widths
from flowscope.ui.context import ConsoleContext
from flowscope.ui.flowtable import FlowTable
from flowscope.ui.messages import HeaderSelected, RowHighlighted, RowSelected
from flowscope.ui.widgets import NewFlowsFeed, RateGraph, StatusLine

WIDE = 140
"""From this many columns on, the feed goes to the right of the table."""
TALL = 40
"""From this many lines on, the graphs get two lines each."""
FEED_WIDTH = 54
FILTER_PROMPT = "filter: "
FILTER_BADGE = 24
"""Characters of the filter shown in the status line (the rest is in the filter bar)."""


class FilterBar(Vertical):
    """``/`` opens it: an input for the filter language, and under it the error of the last
    try, with a caret at its column. The filter in force changes only when one parses."""

    DEFAULT_CSS = """
    FilterBar { height: auto; display: none; background: $panel; }
    FilterBar.-open { display: block; }
    FilterBar Horizontal { height: 1; }
    FilterBar #filter-prompt { width: auto; color: $text-accent; }
    FilterBar Input { width: 1fr; }
    FilterBar #filter-error { height: auto; color: $text-error; text-wrap: nowrap; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Label(FILTER_PROMPT, id="filter-prompt")
            yield Input(
                placeholder="dport 443 and not net 198.18.0.0/16   (F1: the language)",
                compact=True,
            )
        yield Static("", id="filter-error")

    def show_error(self, error: FilterSyntaxError | None) -> None:
        box = self.query_one("#filter-error", Static)
        if error is None:
            box.update("")
            box.display = False
            return
        caret = " " * (len(FILTER_PROMPT) + error.column - 1) + "^ "
        box.update(Content(caret + str(error)))
        box.display = True


class LiveScreen(Screen[None]):
    """The console's main screen."""

    DEFAULT_CSS = f"""
    LiveScreen {{ layout: vertical; }}
    LiveScreen #body {{ height: 1fr; layout: vertical; }}
    LiveScreen FlowTable {{ height: 1fr; }}
    LiveScreen NewFlowsFeed {{ height: 7; border-top: solid $primary 50%; }}
    LiveScreen.-wide #body {{ layout: horizontal; }}
    LiveScreen.-wide NewFlowsFeed {{
        width: {FEED_WIDTH}; height: 1fr; border-top: none; border-left: solid $primary 50%;
    }}
    LiveScreen.-tall RateGraph > Horizontal {{ height: 2; }}
    LiveScreen.-tall RateGraph Sparkline {{ height: 2; }}
    LiveScreen.-tall NewFlowsFeed {{ height: 12; }}
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "next_sort(1)", "sort"),
        Binding("S", "next_sort(-1)", "sort back", show=False),
        Binding("r", "reverse", "reverse"),
        Binding("f", "freeze", "freeze", show=False),
        Binding("g", "next_group(1)", "group"),
        Binding("G", "next_group(-1)", "group back", show=False),
        # priority: handled as the app reads the key, so that the keys typed after it in
        # one burst already find the bar focused (see action_open_filter)
        Binding("slash", "slash", "filter", key_display="/", priority=True),
        Binding("n", "names", "DNS", show=False),
        Binding("escape", "close_filter", "close", show=False),
        *[
            Binding(str(d), f"sort_column({(d - 1) % 10})", f"sort by column {d}", show=False)
            for d in (1, 2, 3, 4, 5, 6, 7, 8, 9, 0)
        ],
    ]

    def __init__(self, context: ConsoleContext, spec: ViewSpec | None = None) -> None:
        super().__init__()
        self.context = context
        self.spec = spec or ViewSpec()
        self.frozen = False
        self.view = View([], 0, 0)

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        yield RateGraph()
        with Container(id="body"):
            yield FlowTable(id="flows")
            yield NewFlowsFeed(id="feed")
        yield FilterBar(id="filterbar")
        yield Footer()

    def on_mount(self) -> None:
        self._layout_for(self.app.size.width, self.app.size.height)
        self._columns()
        self.query_one(FlowTable).focus()

    def on_resize(self, event: Resize) -> None:
        self._layout_for(event.size.width, event.size.height)
        self._columns()
        self.redraw()

    def _layout_for(self, width: int, height: int) -> None:
        self.set_class(width >= WIDE, "-wide")
        self.set_class(height >= TALL, "-tall")

    # --- drawing --------------------------------------------------------------------------------

    @property
    def table(self) -> FlowTable:
        return self.query_one(FlowTable)

    def _table_width(self) -> int:
        width = self.app.size.width
        return width - FEED_WIDTH if width >= WIDE else width

    def _columns(self) -> None:
        cols = COLUMNS[self.spec.group]
        descending = (self.spec.sort in DESCENDING) != self.spec.reverse
        self.table.set_columns(
            cols, widths(cols, self._table_width()), self.spec.group, self.spec.sort, descending
        )

    def compute(self) -> View:
        """The rows for the latest tick (also remembered for the rows' own graphs)."""
        state = self.context.state
        self.view = views.compute(state.frame, self.spec, self.context.iface_names)
        state.record_rows(self.view.rows)
        return self.view

    def redraw(self) -> None:
        """Draw everything from the last computed view and the state."""
        if not self.is_mounted:
            return
        state = self.context.state
        cols = self.table.columns_shown
        w = widths(cols, self._table_width())
        name_of = self.context.name_of if self.context.show_names else None
        by_column = [column_texts(self.view.rows, c, width=w[c], name_of=name_of) for c in cols]
        texts = [list(row) for row in zip(*by_column, strict=True)]
        self.table.apply(self.view.rows, texts, self.frozen)
        self.query_one(StatusLine).show(
            state,
            paused=self.context.paused,
            badges=self.badges(),
            alerts=len(state.detector.alerts),
            blocking=self.context.control is not None,
        )
        selected = self.selected_row()
        self.query_one(RateGraph).show(state, selected, self._row_name(selected))
        self.query_one(NewFlowsFeed).show(state, name_of, self.spec.filter)

    def badges(self) -> list[str]:
        """The view settings as a few short badges for the status line: frozen, grouping and
        sort, the filter in force (clipped, with how many flows it matches; last, so that a
        narrow terminal clips only its end)."""
        descending = (self.spec.sort in DESCENDING) != self.spec.reverse
        arrow = "▼" if descending else "▲"
        out = ["frozen"] if self.frozen else []
        out.append(f"{GROUPS[self.spec.group]} by {HEADERS[self.spec.sort]}{arrow}")
        f = self.spec.filter
        if f is not None and not f.matches_all:
            text = f.text if len(f.text) <= FILTER_BADGE else f.text[: FILTER_BADGE - 1] + "…"
            out.append(f"/{text}  {self.view.matched:,} match")
        return out

    def selected_row(self) -> Row | None:
        key = self.table.selected_key
        return next((r for r in self.view.rows if r.key == key), None) if key else None

    @staticmethod
    def _row_name(row: Row | None) -> str:
        if row is None:
            return ""
        if row.src and row.dst:
            return f"{row.src}→{row.dst}"
        return row.src or row.dst or "/".join(str(p) for p in row.ident[1:])

    def refresh_view(self) -> None:
        """Recompute for the current settings and draw (after a key changed them)."""
        self._columns()
        self.compute()
        self.redraw()

    @on(RowHighlighted)
    def _highlighted(self) -> None:
        state = self.context.state
        selected = self.selected_row()
        self.query_one(RateGraph).show(state, selected, self._row_name(selected))

    @on(RowSelected)
    def _selected(self, event: RowSelected) -> None:
        row = next((r for r in self.view.rows if r.key == event.key), None)
        term = owner_term(row) if row is not None else None
        if term is not None:
            # a process, user or container: its flows (as k9s shows a pod's containers)
            old = self.spec.filter
            text = f"({old.text}) and {term}" if old is not None else term
            self.apply_filter(text)
            self.group_by("flow")
            return
        if row is not None:
            from flowscope.ui.detail import DetailScreen

            self.app.push_screen(DetailScreen(self.context, row, self.spec.group))

    @on(HeaderSelected)
    def _header(self, event: HeaderSelected) -> None:
        key = event.column
        if key == self.spec.sort:
            self.action_reverse()
        else:
            self._show(dataclasses.replace(self.spec, sort=key, reverse=False))

    # --- actions --------------------------------------------------------------------------------

    def _show(self, spec: ViewSpec) -> None:
        self.spec = spec
        self.refresh_view()

    def group_by(self, group: str) -> None:
        """Group the table by ``group`` (keeping the sort when the grouping has its column);
        the drops view opens sorted by drops, what it is for."""
        sort = self.spec.sort if self.spec.sort in COLUMNS[group] else "bps"
        if group == "drop_reason" and self.spec.group != group:
            sort = "drops"
        self._show(dataclasses.replace(self.spec, group=group, sort=sort))

    def sort_by(self, column: str) -> None:
        """Sort the table by ``column`` (one of the grouping's), in its natural order."""
        if column in COLUMNS[self.spec.group]:
            self._show(dataclasses.replace(self.spec, sort=column, reverse=False))

    def action_next_sort(self, step: int) -> None:
        cols = COLUMNS[self.spec.group]
        i = cols.index(self.spec.sort) if self.spec.sort in cols else -1
        self._show(dataclasses.replace(self.spec, sort=cols[(i + step) % len(cols)], reverse=False))

    def action_sort_column(self, index: int) -> None:
        cols = COLUMNS[self.spec.group]
        if index < len(cols):
            self._show(dataclasses.replace(self.spec, sort=cols[index], reverse=False))

    def action_reverse(self) -> None:
        self._show(dataclasses.replace(self.spec, reverse=not self.spec.reverse))

    def action_freeze(self) -> None:
        self.frozen = not self.frozen
        self.notify("order frozen" if self.frozen else "order follows the sort", timeout=2)
        self.refresh_view()

    def action_next_group(self, step: int) -> None:
        groups = list(GROUPS)
        group = groups[(groups.index(self.spec.group) + step) % len(groups)]
        self.group_by(group)

    def action_names(self) -> None:
        self.context.show_names = not self.context.show_names
        self.notify("reverse DNS on" if self.context.show_names else "addresses", timeout=2)
        self.redraw()

    def action_slash(self) -> None:
        """`/` opens the filter bar, unless it is typed into the bar (net 10.0.0.0/8)."""
        if isinstance(self.focused, Input):
            raise SkipAction
        self.action_open_filter()

    def action_open_filter(self) -> None:
        bar = self.query_one(FilterBar)
        bar.add_class("-open")
        field = bar.query_one(Input)
        if self.spec.filter is not None and not field.value:
            field.value = self.spec.filter.text
        # Focus now, not as field.focus() does (after the messages already queued): the keys
        # typed in one burst with the `/` (or pasted) are queued already and must reach the
        # bar, not the table, where `1` would sort.
        self.set_focus(field)

    def action_close_filter(self) -> None:
        bar = self.query_one(FilterBar)
        if bar.has_class("-open"):
            bar.remove_class("-open")
            self.table.focus()

    def apply_filter(self, text: str) -> None:
        """Put ``text`` in force as the filter (an alert's Enter, the palette); a bad one is
        a notification, the filter in force stays."""
        try:
            flt = parse(text, self.context.drop_reasons)
        except FlowscopeError as e:
            self.notify(str(e), severity="error")
            return
        self.query_one(FilterBar).query_one(Input).value = text
        self._show(dataclasses.replace(self.spec, filter=None if flt.matches_all else flt))

    @on(Input.Submitted)
    def _filter_submitted(self, event: Input.Submitted) -> None:
        bar = self.query_one(FilterBar)
        try:
            flt = parse(event.value, self.context.drop_reasons)
        except FilterSyntaxError as e:
            bar.show_error(e)  # the last good filter stays in force
            return
        except FlowscopeError as e:
            self.notify(str(e), severity="error")
            return
        bar.show_error(None)
        self.action_close_filter()
        self._show(dataclasses.replace(self.spec, filter=None if flt.matches_all else flt))


def owner_term(row: Row) -> str | None:
    """The filter term of a process, user, container or drop reason row (``pid 812``,
    ``user 33``, ``container nginx.service``, ``drop reason NO_SOCKET``); None for other rows
    and for the group without one."""
    group, value = row.ident[0], row.ident[1] if len(row.ident) > 1 else None
    if group == "process" and isinstance(value, int) and value >= 0:
        return Owned("pid", value).render()
    if group == "user" and isinstance(value, int) and value >= 0:
        return Owned("uid", value).render()
    if group == "container" and isinstance(value, str) and value:
        return Owned("container", value).render()
    if group == "drop_reason" and isinstance(value, str) and value:
        return DropReason(value).render()
    return None
