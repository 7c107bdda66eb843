"""The history screen: top flows of a past time range from SQLite, with a graph to zoom by.

An operator after an incident asks "who was it, and when": the screen shows the same table,
grouping and filter as the live console over a chosen range (last 5 minutes, hour, day, or a
typed ``--since/--until`` range), and a bytes-per-bucket graph of that range in which a bucket
can be chosen to narrow the range to it. Escape zooms back out, then leaves.

Queries go through ``queries.history`` (the same code as ``flowscope history``) in a worker
thread with its own read-only connection, so a slow query over a day of records never freezes
the screen; the results come back as messages. Time comes from an injected ``now`` so that a
replayed database and the tests see a fixed clock.

About 480 lines: one screen and its app; what it asks SQLite and how it words the answer are
in history/browse.py already, what is left is keys, workers and widgets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.actions import SkipAction
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, Static

from flowscope.errors import FlowscopeError, UsageError
from flowscope.history import files, queries
from flowscope.history.browse import (
    EMPTY_ROWS,
    GROUP_CYCLE,
    NUMERIC_COLUMNS,
    SPANS,
    TOP_ROWS,
    TimeRange,
    bucket_bytes,
    bucket_step,
    clock,
    day_clock,
    duration_text,
    fit_columns,
    parse_range,
    row_cells,
    row_key,
)
from flowscope.query.filter import DropReasons, FilterSyntaxError, parse
from flowscope.query.nodes import Filter, register_sql_functions
from flowscope.ui.help import HelpScreen, filter_help
from flowscope.ui.history_graph import HistoryGraph
from flowscope.ui.keys import HISTORY_KEYS
from flowscope.vocab import human_bytes, human_rate

__all__ = ["HistoryApp", "HistoryGraph", "HistoryScreen"]

RANGE_EXAMPLE = "30m | 2h 1h | yesterday 03:00 | 2026-11-22T03:00..03:30Z"
"""The range box's placeholder: each of its examples is accepted (local time without a Z)."""


class HistoryScreen(Screen[None]):
    """Top flows of a past range from the history database, a graph of it, zoom by bucket.

    ``now`` is the clock the preset ranges count back from (time.time unless injected: tests
    pass a fixed one, replay the end of the recording)."""

    KEYS_HELP = ("flowscope history: keys", HISTORY_KEYS)
    """What ``?`` shows over this screen."""

    DEFAULT_CSS = """
    HistoryScreen { layout: vertical; }
    HistoryScreen #title { height: 1; padding: 0 1; background: $panel; text-style: bold; }
    HistoryScreen #info { height: 1; padding: 0 1; color: $text-muted; }
    HistoryScreen #status { height: 1; padding: 0 1; }
    HistoryScreen .bar { height: 1; display: none; padding: 0 1; }
    HistoryScreen .bar.-open { display: block; }
    HistoryScreen .bar Label { width: auto; color: $accent; text-style: bold; }
    HistoryScreen .bar Input { border: none; height: 1; padding: 0; width: 1fr; }
    HistoryScreen .error { height: auto; display: none; padding: 0 1; color: $error; }
    HistoryScreen .error.-open { display: block; }
    HistoryScreen #message {
        display: none; height: auto; margin: 1 2; padding: 1 2;
        border: round $error; color: $text;
    }
    HistoryScreen #message.-open { display: block; }
    HistoryScreen DataTable { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "span('5m')", "5m/1h/24h", key_display="1-3"),
        Binding("2", "span('1h')", "last hour", show=False),
        Binding("3", "span('24h')", "last day", show=False),
        # priority, as the live screen's `/`: what is typed right after lands in the bar
        Binding("r", "bar_key('range')", "range", priority=True),
        Binding("g", "cycle_group", "group"),
        Binding("slash", "bar_key('filter')", "filter", key_display="/", priority=True),
        Binding("escape", "back", "back"),
        Binding("down", "table('cursor_down')", show=False),
        Binding("up", "table('cursor_up')", show=False),
        Binding("pagedown", "table('page_down')", show=False),
        Binding("pageup", "table('page_up')", show=False),
    ]

    @dataclass
    class Loaded(Message):
        """A worker finished a query."""

        generation: int
        result: queries.HistoryResult
        buckets: list[int]
        rng: TimeRange
        step: float
        group_by: str

    @dataclass
    class Failed(Message):
        """A worker's query failed; ``text`` is for the user."""

        generation: int
        text: str

    def __init__(
        self,
        db_path: Path,
        filter_text: str = "",
        group_by: str = "flow",
        *,
        now: Callable[[], float] = time.time,
        span: str = "1h",
        name: str | None = None,
        drop_reasons: DropReasons | None = None,
    ) -> None:
        super().__init__(name=name)
        self.drop_reasons = drop_reasons
        """The drop reason names a filter may use (None: any)."""
        if group_by not in queries.GROUPINGS:
            raise ValueError(f"unknown grouping {group_by!r}")
        if span not in SPANS:
            raise ValueError(f"unknown span {span!r}")
        self.db_path = Path(db_path)
        self.now = now
        self.group_by = group_by
        self.filter: Filter = parse("")
        self._initial_filter = filter_text
        self.range = self._span_range(span)
        self.zoom_stack: list[TimeRange] = []
        self.result: queries.HistoryResult | None = None
        self.buckets: list[int] = []
        self.error: str | None = None  # what the message box says, if anything
        self._generation = 0
        self._pending = False

    # composition and start-up

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield HistoryGraph(id="graph")
        yield Static(id="info")
        yield Static(id="status")
        with Horizontal(id="filter-bar", classes="bar"):
            yield Label("/ ")
            yield Input(
                id="filter-input", placeholder="host 10.0.0.1 and dport 443   (F1: the language)"
            )
        yield Static(id="filter-error", classes="error")
        with Horizontal(id="range-bar", classes="bar"):
            yield Label("range ")
            yield Input(id="range-input", placeholder=RANGE_EXAMPLE)
        yield Static(id="range-error", classes="error")
        yield Static(id="message")
        table: DataTable[Text] = DataTable(id="table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one(HistoryGraph).focus()
        if self._initial_filter.strip():
            self.query_one("#filter-input", Input).value = self._initial_filter
            self._apply_filter(self._initial_filter)
        self._refresh_labels()
        self._start_query(keep_cursor=False)

    # queries

    def _span_range(self, span: str) -> TimeRange:
        label, seconds = SPANS[span]
        now = self.now()
        return TimeRange(now - seconds, now, f"last {label}")

    def _max_buckets(self) -> int:
        # The graph spans the screen; one bucket per column at most, and no more than 120
        # (finer than that is noise, and each bucket must stay wide enough to point at).
        return max(10, min(120, self.app.size.width - 2))

    def _start_query(self, keep_cursor: bool = True) -> None:
        self._generation += 1
        self._keep_cursor = keep_cursor
        self._pending = True
        self.query_one(DataTable).loading = True
        # Dimmed, not covered by a loading indicator: that would take the keyboard focus.
        self.query_one(HistoryGraph).add_class("-pending")
        step = bucket_step(self.range.duration, self._max_buckets())
        where, params = (None, []) if self.filter.matches_all else self.filter.to_sql()
        self._query(self._generation, self.range, step, self.group_by, where, params)
        self._refresh_labels()

    @work(thread=True, exclusive=True, group="history-query")
    def _query(
        self,
        generation: int,
        rng: TimeRange,
        step: float,
        group_by: str,
        where: str | None,
        params: list[object],
    ) -> None:
        """Run the table's and the graph's queries on a connection of this thread's own."""
        try:
            conn = files.connect_readonly(self.db_path)
            try:
                register_sql_functions(conn)
                q = queries.HistoryQuery(
                    since=rng.since,
                    until=rng.until,
                    top=TOP_ROWS,
                    group_by=group_by,
                    where=where,
                    params=params,
                )
                result = queries.history(conn, q, now=rng.until)
                buckets = bucket_bytes(conn, rng, step, where, params)
            finally:
                conn.close()
        except FlowscopeError as e:
            self.post_message(self.Failed(generation, str(e)))
        except Exception as e:  # the screen must show it, never die of it
            self.post_message(self.Failed(generation, f"unexpected error: {e!r}"))
        else:
            self.post_message(self.Loaded(generation, result, buckets, rng, step, group_by))

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        if message.generation != self._generation:
            return  # an older query finished after a newer one was asked for
        self._pending = False
        self.error = None
        self.result, self.buckets = message.result, message.buckets
        self.query_one("#message").remove_class("-open")
        graph = self.query_one(HistoryGraph)
        graph.show(message.buckets, message.rng, message.step, self._keep_cursor)
        self._fill_table(message.result, message.group_by)
        self.query_one(DataTable).loading = False
        graph.remove_class("-pending")
        self._refresh_labels()

    @on(Failed)
    def _failed(self, message: Failed) -> None:
        if message.generation != self._generation:
            return
        self._pending = False
        self.error = message.text
        box = self.query_one("#message", Static)
        box.update(Text(f"Cannot show history: {message.text}"))
        box.add_class("-open")
        table = self.query_one(DataTable)
        table.loading = False
        table.clear(columns=True)
        graph = self.query_one(HistoryGraph)
        graph.remove_class("-pending")
        graph.show([], self.range, 1.0, False)
        self._refresh_labels()

    def _fill_table(self, result: queries.HistoryResult, group_by: str) -> None:
        """Refill the table: a new query is a new set of rows (there are no ticks here). The
        columns are fitted to the screen (fit_columns), leaving room for a scrollbar."""
        table: DataTable[Text] = self.query_one(DataTable)
        table.clear(columns=True)
        cells = [row_cells(r, group_by) for r in result.rows]
        columns = list(cells[0]) if cells else list(row_cells(EMPTY_ROWS[group_by], group_by))
        columns, cells = fit_columns(columns, cells, self.app.size.width - 2, table.cell_padding)
        for col in columns:
            table.add_column(col, key=col)
        for row, c in zip(result.rows, cells, strict=True):
            table.add_row(
                *(Text(c[k], justify="right" if k in NUMERIC_COLUMNS else "left") for k in columns),
                key=row_key(row, group_by),
            )

    def on_resize(self) -> None:
        """Fit the table to the new width; the rows stay, and the cursor on its row."""
        if self.result is not None and not self._pending and self.error is None:
            table = self.query_one(DataTable)
            cursor = table.cursor_row
            self._fill_table(self.result, self.group_by)
            table.move_cursor(row=cursor)

    # what the lines above the table say

    def _refresh_labels(self) -> None:
        rng = self.range
        zoom = f"  zoom {len(self.zoom_stack)}" if self.zoom_stack else ""
        title = Text.assemble(
            ("History ", "bold"),
            (rng.label, "bold"),
            f"  {day_clock(rng.since)} → {clock(rng.until)} UTC{zoom}",
        )
        self.query_one("#title", Static).update(title)
        graph = self.query_one(HistoryGraph)
        info = Text()
        if self._pending:
            info.append("loading…")
        elif graph.values:
            b = graph.bucket_range(graph.cursor)
            v = graph.values[graph.cursor]
            total = sum(graph.values)
            info.append(f"▲ {clock(b.since)}-{clock(b.until)} ", "bold")
            info.append(f"{human_bytes(v)} {human_rate(v * 8 / max(b.duration, 1e-3))}")
            info.append(f"  · {duration_text(graph.step)} buckets, {human_bytes(total)} in all")
        self.query_one("#info", Static).update(info)
        status = Text()
        status.append("group ", "dim")
        status.append(self.group_by, "bold")
        status.append("  filter ", "dim")
        status.append(str(self.filter) or "none", "bold")
        if self.result is not None and not self._pending:
            n = len(self.result.rows)
            status.append(f"  {n} row{'' if n == 1 else 's'}", "dim")
            status.append("  rate: while active", "dim")
        self.query_one("#status", Static).update(status)

    def on_history_graph_zoom(self, message: HistoryGraph.Zoom) -> None:
        graph = self.query_one(HistoryGraph)
        if self._pending or not graph.values:
            return
        target = graph.bucket_range(message.index)
        if target.duration >= self.range.duration or target.duration < 1:
            self.notify("cannot zoom further", severity="warning")
            return
        self.zoom_stack.append(self.range)
        self.range = target
        self._refresh_labels()
        self._start_query(keep_cursor=False)

    def on_history_graph_moved(self) -> None:
        self._refresh_labels()

    # actions

    def action_span(self, span: str) -> None:
        self._close_bars()
        self.zoom_stack.clear()
        self.range = self._span_range(span)
        self._refresh_labels()
        self._start_query(keep_cursor=False)

    def action_cycle_group(self) -> None:
        i = GROUP_CYCLE.index(self.group_by) if self.group_by in GROUP_CYCLE else -1
        self.group_by = GROUP_CYCLE[(i + 1) % len(GROUP_CYCLE)]
        self._refresh_labels()
        self._start_query()

    def action_bar_key(self, which: str) -> None:
        """`r` and `/` open their bar, unless typed into a bar (a range, a filter's net)."""
        if isinstance(self.focused, Input):
            raise SkipAction
        self._open_bar(which)

    def action_table(self, action: str) -> None:
        getattr(self.query_one(DataTable), f"action_{action}")()

    def action_back(self) -> None:
        if self._close_bars():
            return
        if self.zoom_stack:
            self.range = self.zoom_stack.pop()
            self._refresh_labels()
            self._start_query(keep_cursor=False)
            return
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()
        else:
            self.app.exit()

    def _open_bar(self, which: str) -> None:
        self._close_bars(refocus=False)
        self.query_one(f"#{which}-bar").add_class("-open")
        box = self.query_one(f"#{which}-input", Input)
        if which == "filter":
            box.value = self.filter.text
        self.set_focus(box)  # now: keys typed in the same burst are queued already
        box.cursor_position = len(box.value)

    def _close_bars(self, refocus: bool = True) -> bool:
        """Close the filter and range bars (and their errors); whether one was open."""
        was_open = False
        for which in ("filter", "range"):
            bar = self.query_one(f"#{which}-bar")
            was_open |= bar.has_class("-open")
            bar.remove_class("-open")
            self.query_one(f"#{which}-error").remove_class("-open")
        if was_open and refocus:
            self.query_one(HistoryGraph).focus()
        return was_open

    @on(Input.Submitted, "#filter-input")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if self._apply_filter(event.value):
            self._close_bars()
            self._refresh_labels()
            self._start_query()

    @on(Input.Submitted, "#range-input")
    def _range_submitted(self, event: Input.Submitted) -> None:
        try:
            rng = parse_range(event.value, self.now())
        except UsageError as e:
            self._show_error("range", getattr(e, "error_column", 1), str(e), len("range "))
            return
        self._close_bars()
        self.zoom_stack.clear()
        self.range = rng
        self._refresh_labels()
        self._start_query(keep_cursor=False)

    def _apply_filter(self, text: str) -> bool:
        """Parse a filter; on an error show it under its column and keep the last good one."""
        try:
            self.filter = parse(text, self.drop_reasons)
        except FilterSyntaxError as e:
            self._show_error("filter", e.column, str(e), len("/ "))
            return False
        self.query_one("#filter-error").remove_class("-open")
        return True

    def _show_error(self, which: str, column: int, text: str, prefix: int) -> None:
        self.query_one(f"#{which}-bar").add_class("-open")
        error = self.query_one(f"#{which}-error", Static)
        caret = prefix + column - 1
        width = self.size.width - 2  # the error line's padding
        if caret + 2 + len(text) <= width:
            line = " " * caret + "^ " + text
        else:  # the message on a line of its own, as close under the caret as it fits
            line = " " * caret + "^\n" + " " * max(0, min(caret, width - len(text))) + text
        error.update(Text(line))
        error.add_class("-open")


class HistoryApp(App[None]):
    """Just the history screen, on one database: ``flowscope replay`` and the tests use it."""

    TITLE = "flowscope history"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "help"),
        Binding("f1", "filter_help", "filter language", show=False, priority=True),
    ]

    def __init__(
        self,
        db_path: Path,
        filter_text: str = "",
        group_by: str = "flow",
        *,
        now: Callable[[], float] = time.time,
        span: str = "1h",
    ) -> None:
        super().__init__()
        self._screen_args = (Path(db_path), filter_text, group_by)
        self._now = now
        self._span = span

    def get_default_screen(self) -> HistoryScreen:
        return HistoryScreen(*self._screen_args, now=self._now, span=self._span)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(*HistoryScreen.KEYS_HELP))

    def action_filter_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(filter_help())
