"""The history screen: top flows of a past time range from SQLite, with a graph to zoom by.

An operator after an incident asks "who was it, and when": the screen shows the same table,
grouping and filter as the live console over a chosen range (last 5 minutes, hour, day, or a
typed ``--since/--until`` range), and a bytes-per-bucket graph of that range in which a bucket
can be chosen to narrow the range to it. Escape zooms back out, then leaves.

Queries go through ``store.history`` (the same code as ``flowscope history``) in a worker
thread with its own read-only connection, so a slow query over a day of records never freezes
the screen; the results come back as messages. Time comes from an injected ``now`` so that a
replayed database and the tests see a fixed clock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Input, Label, Static

from flowscope import store
from flowscope.errors import FlowscopeError, UsageError
from flowscope.filter import Filter, FilterSyntaxError, parse, register_sql_functions
from flowscope.model import proto_name
from flowscope.output import human, human_bytes, human_rate

# The preset ranges, by key: (label, seconds).
SPANS: dict[str, tuple[str, float]] = {
    "5m": ("5m", 300.0),
    "1h": ("1h", 3600.0),
    "24h": ("24h", 86400.0),
}
# What `g` cycles through: the live console's groupings.
GROUP_CYCLE: tuple[str, ...] = ("flow", "src", "dst", "pair", "dport", "proto")
# Bucket widths the graph may use, in seconds: round numbers, so bucket edges read well.
BUCKET_STEPS: tuple[float, ...] = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip
TOP_ROWS = 200  # rows the table holds; the graph still counts every record of the range


# --- pure helpers (no widgets) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A closed range of Unix seconds and how the title names it (``1h``, ``zoom``...)."""

    since: float
    until: float
    label: str

    @property
    def duration(self) -> float:
        return self.until - self.since


def bucket_step(duration: float, max_buckets: int) -> float:
    """The smallest round bucket width that cuts ``duration`` into at most ``max_buckets``."""
    need = duration / max(max_buckets, 1)
    for step in BUCKET_STEPS:
        if step >= need:
            return float(step)
    return float(int(need) + 1)


def bucket_bytes(
    conn: sqlite3.Connection,
    rng: TimeRange,
    step: float,
    where: str | None = None,
    params: Sequence[Any] = (),
) -> list[int]:
    """Bytes per bucket of ``step`` seconds from ``rng.since``: the records ``history`` reads
    for the range (those overlapping it), each counted in the bucket of its ``last_seen``
    (when it was exported), clamped into the range.

    From ``flows`` rather than ``samples`` because a filter must narrow the graph as it narrows
    the table, and samples are per-tick totals with no flow in them. Times are compared as
    whole milliseconds taken from the fixed-width text, so a bucket edge is exact."""
    n = max(1, -(-round(rng.duration * 1000) // round(step * 1000)))
    since_text = store.iso_time(rng.since)
    since_ms = round(store.parse_iso(since_text) * 1000)
    step_ms = round(step * 1000)
    ms = (
        "(CAST(strftime('%s', last_seen) AS INTEGER) * 1000"
        " + CAST(substr(last_seen, 21, 3) AS INTEGER))"
    )
    sql = (
        f"SELECT max(0, ({ms} - ?) / ?) AS bucket, sum(bytes) FROM flows "
        f"WHERE last_seen >= ? AND first_seen <= ?{f' AND ({where})' if where else ''} "
        "GROUP BY bucket"
    )
    out = [0] * n
    with store.translate_errors("cannot read history from", "the database"):
        rows = conn.execute(
            sql, [since_ms, step_ms, since_text, store.iso_time(rng.until), *params]
        )
        for bucket, total in rows:
            out[min(int(bucket), n - 1)] += int(total or 0)
    return out


def parse_range(text: str, now: float) -> TimeRange:
    """A typed range: ``SINCE``, ``SINCE UNTIL``, ``SINCE..UNTIL`` or ``SINCE to UNTIL``, each
    part as ``--since``/``--until`` take it (``10m``, ``now``, ISO 8601). A UsageError carries
    ``error_column``: where the bad part starts, for the caret under it."""
    raw = text.strip()
    for sep in ("..", " to ", " "):
        if sep in raw:
            first, _, second = raw.partition(sep)
            break
    else:
        first, second = raw, ""
    if not first.strip():
        raise _column_error(UsageError("type a range: 10m, 2h 1h, or ISO..ISO"), 1)
    start_col = len(text) - len(text.lstrip()) + 1
    try:
        since = store.parse_time_arg(first.strip(), "since", now)
    except UsageError as e:
        raise _column_error(e, start_col) from None
    until = now
    if second.strip():
        until_col = text.find(second.strip(), start_col - 1 + len(first)) + 1
        try:
            until = store.parse_time_arg(second.strip(), "until", now)
        except UsageError as e:
            raise _column_error(e, until_col) from None
    if since >= until:
        raise _column_error(
            UsageError(
                f"since {store.iso_time(since)} is not before until {store.iso_time(until)}"
            ),
            start_col,
        )
    return TimeRange(since, until, raw)


def _column_error(e: UsageError, column: int) -> UsageError:
    e.error_column = column  # type: ignore[attr-defined]
    return e


def endpoint(addr: str, port: int) -> str:
    """``10.0.0.1:443``, ``[2001:db8::1]:443``."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


NUMERIC_COLUMNS = ("bytes", "rate", "pkts", "recs", "dport", "sport", "vlan")


def row_cells(row: dict[str, Any], group_by: str) -> dict[str, str]:
    """The cells of one history row, as the table shows them: who first, then how much."""
    cells: dict[str, str] = {}
    if group_by == "flow":
        cells["source"] = endpoint(row["src"], row["sport"])
        cells["destination"] = endpoint(row["dst"], row["dport"])
        cells["proto"] = proto_name(row["proto"])
    else:
        for col in ("host_a", "host_b", "src", "dst", "sport", "dport", "iface", "vlan"):
            if col in row:
                cells[col] = str(row[col])
        if "proto" in row:
            cells["proto"] = proto_name(row["proto"])
    cells["bytes"] = human_bytes(row["bytes"])
    cells["rate"] = human_rate(row["bps"])
    cells["pkts"] = human(row["packets"])
    cells["recs"] = str(row["records"])
    return cells


def row_key(row: dict[str, Any], group_by: str) -> str:
    """A stable key for a row: its grouping values."""
    return "|".join(str(row[name]) for name, _ in store.GROUPINGS[group_by])


def clock(t: float) -> str:
    """``03:12:05`` (UTC, as stored)."""
    return time.strftime("%H:%M:%S", time.gmtime(t))


def day_clock(t: float) -> str:
    """``2026-11-22 03:12:05`` (UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


# --- the graph ---------------------------------------------------------------------------------

_EIGHTHS = " ▁▂▃▄▅▆▇█"


class HistoryGraph(Widget, can_focus=True):
    """Bytes per time bucket as bars of block characters, with a cursor on one bucket.

    Left/right move the cursor; Enter asks the screen to zoom into the bucket under it. The
    last row is an axis: the range's start and end, and a caret under the cursor."""

    DEFAULT_CSS = """
    HistoryGraph { height: 22%; min-height: 4; padding: 0 1; }
    HistoryGraph > .graph--bar { color: $primary; }
    HistoryGraph > .graph--cursor { color: $accent; text-style: bold; }
    HistoryGraph > .graph--axis { color: $text-muted; }
    HistoryGraph:focus > .graph--cursor { color: $warning; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {"graph--bar", "graph--cursor", "graph--axis"}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "move(-1)", "bucket", key_display="←→"),
        Binding("right", "move(1)", "bucket", show=False),
        Binding("home", "move_to(0)", "first bucket", show=False),
        Binding("end", "move_to(-1)", "last bucket", show=False),
        Binding("enter", "zoom", "zoom"),
    ]

    cursor: reactive[int] = reactive(0)

    @dataclass
    class Zoom(Message):
        """Enter on a bucket: narrow the range to it."""

        index: int

    class Moved(Message):
        """The cursor moved to another bucket (the screen names it under the graph)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.values: list[int] = []
        self.rng: TimeRange | None = None
        self.step: float = 1.0

    def show(self, values: list[int], rng: TimeRange, step: float, keep_cursor: bool) -> None:
        """New buckets; the cursor stays where it was if asked and possible, else goes last."""
        self.values, self.rng, self.step = values, rng, step
        if not keep_cursor or not 0 <= self.cursor < len(values):
            self.cursor = len(values) - 1
        self.refresh()

    def bucket_range(self, index: int) -> TimeRange:
        """The time range of bucket ``index`` (the last one ends at the range's end)."""
        assert self.rng is not None
        lo = self.rng.since + index * self.step
        hi = min(lo + self.step, self.rng.until)
        return TimeRange(lo, hi, f"{clock(lo)}+{_duration_text(hi - lo)}")

    def watch_cursor(self) -> None:
        self.refresh()
        self.post_message(self.Moved())

    def action_move(self, delta: int) -> None:
        if self.values:
            self.cursor = max(0, min(len(self.values) - 1, self.cursor + delta))

    def action_move_to(self, index: int) -> None:
        if self.values:
            self.cursor = index % len(self.values)

    def action_zoom(self) -> None:
        if self.values:
            self.post_message(self.Zoom(self.cursor))

    def _columns(self, width: int) -> list[tuple[int, int]]:
        """Each bucket's [start, end) column: spread over the whole width."""
        n = len(self.values)
        return [(i * width // n, max((i + 1) * width // n, i * width // n + 1)) for i in range(n)]

    def render(self) -> Text:
        width, height = self.content_size.width, self.content_size.height
        if not self.values or width <= 0 or height <= 0 or self.rng is None:
            return Text("")
        bar = self.get_component_rich_style("graph--bar")
        cur = self.get_component_rich_style("graph--cursor")
        axis_style = self.get_component_rich_style("graph--axis")
        rows = max(1, height - 1)
        peak = max(self.values) or 1
        spans = self._columns(width)
        lines: list[Text] = []
        for r in range(rows):
            level = rows - 1 - r
            line = Text(no_wrap=True, overflow="crop")
            last_end = 0
            for i, (c0, c1) in enumerate(spans):
                if c0 >= width:
                    break
                v = self.values[i]
                eighths = round(v / peak * rows * 8)
                if v > 0:
                    eighths = max(eighths, 1)
                fill = max(0, min(8, eighths - level * 8))
                ch = _EIGHTHS[fill]
                if i == self.cursor and fill == 0 and level == 0:
                    ch = "▁"  # an empty bucket under the cursor still shows where it is
                line.append(" " * (c0 - last_end))
                line.append(ch * (min(c1, width) - c0), cur if i == self.cursor else bar)
                last_end = min(c1, width)
            lines.append(line)
        lines.append(self._axis(width, spans, axis_style, cur))
        return Text("\n").join(lines)

    def _axis(
        self, width: int, spans: list[tuple[int, int]], style: Style, cursor_style: Style
    ) -> Text:
        assert self.rng is not None
        chars = [" "] * width
        left, right = clock(self.rng.since), clock(self.rng.until)
        caret = -1
        if 0 <= self.cursor < len(spans):
            c0, c1 = spans[self.cursor]
            caret = min((c0 + c1 - 1) // 2, width - 1)
        # A time label gives way to the caret rather than be cut by it.
        if width >= len(left) and not 0 <= caret <= len(left):
            chars[: len(left)] = left[:width]
        r0 = width - len(right)
        if r0 > len(left) + 1 and not r0 - 1 <= caret < width:
            chars[r0:] = right
        axis = Text("".join(chars), style=style, no_wrap=True)
        if caret >= 0:
            axis = axis[:caret] + Text("▲", style=cursor_style) + axis[caret + 1 :]
        return axis


def _duration_text(seconds: float) -> str:
    """``5m``, ``1h``, ``90s``, ``1h30m``: how long a range is, briefly."""
    s = round(seconds)
    if s % 86400 == 0 and s:
        return f"{s // 86400}d"
    if s % 3600 == 0 and s:
        return f"{s // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s % 60 == 0 and s:
        return f"{s // 60}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{seconds:g}s"


# --- the screen --------------------------------------------------------------------------------


class HistoryScreen(Screen[None]):
    """Top flows of a past range from the history database, a graph of it, zoom by bucket.

    ``now`` is the clock the preset ranges count back from (time.time unless injected: tests
    pass a fixed one, replay the end of the recording)."""

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
        Binding("r", "edit_range", "range"),
        Binding("g", "cycle_group", "group"),
        Binding("slash", "edit_filter", "filter", key_display="/"),
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
        result: store.HistoryResult
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
    ) -> None:
        super().__init__(name=name)
        if group_by not in store.GROUPINGS:
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
        self.result: store.HistoryResult | None = None
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
            yield Input(id="filter-input", placeholder="host 10.0.0.1 and dport 443")
        yield Static(id="filter-error", classes="error")
        with Horizontal(id="range-bar", classes="bar"):
            yield Label("range ")
            yield Input(id="range-input", placeholder="30m | 2h 1h | 2026-11-22T03:00..03:30Z")
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
        step = bucket_step(self.range.duration, self._max_buckets())
        where, params = (None, []) if self.filter.matches_all else self.filter.to_sql()
        self._query(self._generation, self.range, step, self.group_by, where, params)

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
            conn = store.connect_readonly(self.db_path)
            try:
                register_sql_functions(conn)
                q = store.HistoryQuery(
                    since=rng.since,
                    until=rng.until,
                    top=TOP_ROWS,
                    group_by=group_by,
                    where=where,
                    params=params,
                )
                result = store.history(conn, q, now=rng.until)
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
        self.query_one(HistoryGraph).show([], self.range, 1.0, False)
        self._refresh_labels()

    def _fill_table(self, result: store.HistoryResult, group_by: str) -> None:
        """Refill the table: a new query is a new set of rows (there are no ticks here)."""
        table: DataTable[Text] = self.query_one(DataTable)
        table.clear(columns=True)
        cells = [row_cells(r, group_by) for r in result.rows]
        columns = list(cells[0]) if cells else list(row_cells(_EMPTY_ROWS[group_by], group_by))
        for col in columns:
            table.add_column(col, key=col)
        for row, c in zip(result.rows, cells, strict=True):
            table.add_row(
                *(Text(c[k], justify="right" if k in NUMERIC_COLUMNS else "left") for k in columns),
                key=row_key(row, group_by),
            )

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
        if graph.values:
            b = graph.bucket_range(graph.cursor)
            v = graph.values[graph.cursor]
            total = sum(graph.values)
            info.append(f"▲ {clock(b.since)}-{clock(b.until)} ", "bold")
            info.append(f"{human_bytes(v)} {human_rate(v * 8 / max(b.duration, 1e-3))}")
            info.append(f"  · {_duration_text(graph.step)} buckets, {human_bytes(total)} in all")
        elif self._pending:
            info.append("loading…")
        self.query_one("#info", Static).update(info)
        status = Text()
        status.append("group ", "dim")
        status.append(self.group_by, "bold")
        status.append("  filter ", "dim")
        status.append(str(self.filter) or "none", "bold")
        if self.result is not None and not self._pending:
            n = len(self.result.rows)
            status.append(f"  {n} row{'' if n == 1 else 's'}", "dim")
            if self.result.rounded:
                status.append(f"  from {clock(self.result.since)} (hourly sums)", "dim")
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

    def action_edit_filter(self) -> None:
        self._open_bar("filter")

    def action_edit_range(self) -> None:
        self._open_bar("range")

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
        box.focus()
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
            self.filter = parse(text)
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


# Column names for an empty result (so the table shows its header even with no rows).
_EMPTY_ROWS: dict[str, dict[str, Any]] = {
    g: {
        **{
            name: (0 if name in ("sport", "dport", "proto", "vlan", "family") else "")
            for name, _ in cols
        },
        "bytes": 0,
        "bps": 0.0,
        "packets": 0,
        "records": 0,
    }
    for g, cols in store.GROUPINGS.items()
}


class HistoryApp(App[None]):
    """Just the history screen, on one database: ``flowscope replay`` and the tests use it."""

    TITLE = "flowscope history"

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
