"""The history screen, driven by keys against a real SQLite file written at fixed times.

Every number the table shows is checked against ``queries.history`` for the same query, so the
screen cannot drift from ``flowscope history``. The clock is injected (NOW), never the
machine's."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from flowscope.errors import UsageError
from flowscope.history import files, queries
from flowscope.history.browse import (
    GROUP_CYCLE,
    TOP_ROWS,
    TimeRange,
    bucket_bytes,
    bucket_step,
    fit_columns,
    parse_range,
    row_cells,
)
from flowscope.query.filter import parse
from flowscope.query.nodes import register_sql_functions
from flowscope.ui.history import HistoryApp, HistoryGraph, HistoryScreen
from tests.support.scenario import HISTORY_NOW, history_db

sys.path.insert(0, str(Path(__file__).parent))
from history_data import NOW, make_db

H = 3600.0


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on its own event loop (no pytest-asyncio needed for Pilot tests)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_db(tmp_path_factory.mktemp("history") / "flows.db")


def expected(
    db: Path, since: float, until: float, group_by: str = "flow", filter_text: str = ""
) -> queries.HistoryResult:
    """What ``flowscope history`` answers for the same query."""
    conn = files.connect_readonly(db)
    try:
        register_sql_functions(conn)
        flt = parse(filter_text)
        where, params = (None, []) if flt.matches_all else flt.to_sql()
        q = queries.HistoryQuery(
            since=since, until=until, top=TOP_ROWS, group_by=group_by, where=where, params=params
        )
        return queries.history(conn, q, now=until)
    finally:
        conn.close()


async def settle(pilot: Pilot[Any]) -> HistoryScreen:
    """Wait until the screen's query has come back; the screen."""
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, HistoryScreen)
    assert not screen.query_one(DataTable).loading
    return screen


def table_cells(screen: HistoryScreen) -> list[list[str]]:
    table = screen.query_one(DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def table_columns(screen: HistoryScreen) -> list[str]:
    return [str(c.label) for c in screen.query_one(DataTable).columns.values()]


def assert_table_is(screen: HistoryScreen, want: queries.HistoryResult, group_by: str) -> None:
    """The screen's rows are queries.history's, and the table shows exactly them, in order."""
    assert screen.result is not None
    assert screen.result.rows == want.rows
    assert (screen.result.since, screen.result.until) == (want.since, want.until)
    cells = [row_cells(r, group_by) for r in want.rows]
    assert table_cells(screen) == [list(c.values()) for c in cells]
    if cells:
        assert table_columns(screen) == list(cells[0])


def text_of(screen: HistoryScreen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


def app_for(db: Path, **kwargs: Any) -> HistoryApp:
    return HistoryApp(db, now=lambda: NOW, **kwargs)


# --- pure helpers ----------------------------------------------------------------------------


def test_bucket_step_is_round_and_fits() -> None:
    assert bucket_step(300, 78) == 5
    assert bucket_step(3600, 78) == 60
    assert bucket_step(86400, 78) == 1800
    assert bucket_step(86400, 120) == 900
    assert bucket_step(10 * 86400, 10) == 86400
    assert bucket_step(100 * 86400, 10) == 864001


def test_parse_range_forms() -> None:
    assert parse_range("10m", NOW) == TimeRange(NOW - 600, NOW, "10m")
    assert parse_range("2h 1h", NOW) == TimeRange(NOW - 2 * H, NOW - H, "2h 1h")
    r = parse_range("2026-11-22T02:25:00Z..2026-11-22T02:35:00Z", NOW)
    assert (r.since, r.until) == (NOW - 35 * 60, NOW - 25 * 60)
    r = parse_range("2026-11-22T02:25 to now", NOW)
    assert (r.since, r.until) == (NOW - 35 * 60, NOW)


@pytest.mark.parametrize(
    ("text", "column"),
    [("soon", 1), ("  soon", 3), ("2h 1x", 4), ("1h 2h", 1), ("", 1), ("1h..later", 5)],
)
def test_parse_range_errors_say_where(text: str, column: int) -> None:
    with pytest.raises(UsageError) as info:
        parse_range(text, NOW)
    assert info.value.error_column == column  # type: ignore[attr-defined]


def test_graph_buckets_hold_every_byte_of_the_range(db: Path) -> None:
    rng = TimeRange(NOW - H, NOW, "1h")
    conn = files.connect_readonly(db)
    try:
        values = bucket_bytes(conn, rng, 60.0)
    finally:
        conn.close()
    assert len(values) == 60
    total = sum(r["bytes"] for r in expected(db, rng.since, rng.until).rows)
    assert sum(values) == total
    # The record of 02:29:00-02:30:00 is in that bucket, not in the one where it ended.
    assert values[29] == 2_000_000 and values[30] == 0
    # The one of 02:58:30-02:59:30 is split over two buckets; the reverse one of
    # 02:58:00-02:59:00 is in the first of them.
    assert values[59] == 75_000
    assert values[58] == 75_000 + 30_000
    # a filter reads the flow records instead, with the same spreading
    conn = files.connect_readonly(db)
    try:
        flows_only = bucket_bytes(conn, rng, 60.0, "dport = ?", [443])
    finally:
        conn.close()
    assert flows_only[29] == 2_000_000 and flows_only[58:] == [75_000, 75_000]


# --- the screen ------------------------------------------------------------------------------


@sync
async def test_opens_on_the_last_hour_with_the_numbers_of_history(db: Path) -> None:
    async with app_for(db).run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot)
        assert (screen.range.since, screen.range.until) == (NOW - H, NOW)
        assert_table_is(screen, expected(db, NOW - H, NOW), "flow")
        # Written out once by hand, so the formatting itself is pinned too.
        assert table_cells(screen)[0] == [
            "10.0.0.1:40000",
            "192.0.2.10:443",
            "↓tcp",  # received (the direction mark, as in the live table)
            "2.1 MB",
            "9.4 kb/s",  # over 02:29:00-02:59:30, when it was active
            "1.6 k",
            "2",
        ]
        assert "last 1h" in text_of(screen, "#title")
        assert "2026-11-22 02:00:00 → 03:00:00 UTC" in text_of(screen, "#title")
        assert "5 rows" in text_of(screen, "#status")


@pytest.mark.parametrize(
    ("key", "seconds", "label"),
    [("1", 300, "last 5m"), ("2", H, "last 1h"), ("3", 24 * H, "last 24h")],
)
@sync
async def test_range_keys(db: Path, key: str, seconds: float, label: str) -> None:
    async with app_for(db).run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("1" if key != "1" else "2")  # start somewhere else
        await settle(pilot)
        await pilot.press(key)
        screen = await settle(pilot)
        assert (screen.range.since, screen.range.until) == (NOW - seconds, NOW)
        assert label in text_of(screen, "#title")
        want = expected(db, NOW - seconds, NOW)
        assert_table_is(screen, want, "flow")
        sources = {r["src"] for r in want.rows}
        if key == "1":  # only what ended in the last 5 minutes
            assert sources == {"10.0.0.1", "192.0.2.10", "10.0.0.2"}
        if key == "3":  # 20 hours ago is in the day, read from hourly sums
            assert "10.0.0.3" in sources


@sync
async def test_g_cycles_the_groupings(db: Path) -> None:
    async with app_for(db).run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot)
        seen = [screen.group_by]
        for _ in GROUP_CYCLE:
            await pilot.press("g")
            screen = await settle(pilot)
            seen.append(screen.group_by)
            assert_table_is(screen, expected(db, NOW - H, NOW, screen.group_by), screen.group_by)
            assert f"group {screen.group_by}" in text_of(screen, "#status")
        assert seen == [*GROUP_CYCLE, "flow"]


@sync
async def test_pair_grouping_merges_both_directions(db: Path) -> None:
    async with app_for(db, group_by="pair").run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot)
        assert table_columns(screen)[:2] == ["host_a", "host_b"]
        assert table_cells(screen)[0][:3] == ["10.0.0.1", "192.0.2.10", "2.2 MB"]


@sync
async def test_filter_narrows_the_table_and_graph(db: Path) -> None:
    async with app_for(db).run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("slash")
        assert isinstance(pilot.app.focused, Input)
        await pilot.press(*"dport 443 or udp", "enter")
        screen = await settle(pilot)
        assert str(screen.filter) == "dport 443 or proto udp"  # canonical form
        want = expected(db, NOW - H, NOW, filter_text="dport 443 or udp")
        assert_table_is(screen, want, "flow")
        assert {r["dport"] for r in want.rows} == {443, 53}
        assert sum(screen.buckets) == sum(r["bytes"] for r in want.rows)
        assert "filter dport 443 or proto udp" in text_of(screen, "#status")
        assert not screen.query_one("#filter-bar").has_class("-open")
        assert isinstance(pilot.app.focused, HistoryGraph)


@sync
async def test_bad_filter_is_shown_at_its_column_and_the_last_good_one_stays(db: Path) -> None:
    async with app_for(db, filter_text="tcp").run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot)
        before = screen.result
        await pilot.press("slash", "ctrl+u", *"dport abc", "enter")
        screen = await settle(pilot)
        error = screen.query_one("#filter-error", Static)
        assert error.display
        text = str(error.render())
        assert "column 7: expected a port number (0-65535), found 'abc'" in text
        # The caret sits under the 'a' of 'abc' in the input on the line above.
        box = screen.query_one("#filter-input", Input)
        assert error.content_region.x + text.index("^") == box.region.x + 6
        assert str(screen.filter) == "proto tcp"
        assert screen.result is before
        # Escape closes the bar; the good filter is still in force and shown.
        await pilot.press("escape")
        screen = await settle(pilot)
        assert not error.display
        assert "filter proto tcp" in text_of(screen, "#status")
        assert_table_is(screen, expected(db, NOW - H, NOW, filter_text="tcp"), "flow")


@sync
async def test_keys_typed_into_a_bar_are_text_not_commands(db: Path) -> None:
    async with app_for(db).run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("slash", *"vlan 123 g r")
        screen = pilot.app.screen
        assert isinstance(screen, HistoryScreen)
        assert screen.query_one("#filter-input", Input).value == "vlan 123 g r"
        assert screen.group_by == "flow"
        assert screen.range.duration == H


@sync
async def test_keys_typed_in_one_burst_with_the_bar_key_land_in_the_bar(db: Path) -> None:
    """`r` and `/` and what follows them, queued at once (as a terminal delivers a burst or a
    paste): every key lands in the bar, none is a command of the screen (`1` would pick the
    last 5 minutes, `r` reopen the range)."""
    from textual import events

    names = {"/": "slash", " ": "space", ".": "full_stop", ":": "colon", "-": "minus",
             "\r": "enter"}  # fmt: skip
    async with app_for(db).run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for ch in "r2026-11-22T02:25..2026-11-22T02:35\r":
            pilot.app.post_message(events.Key(names.get(ch, ch), ch))
        screen = await settle(pilot)
        assert (screen.range.since, screen.range.until) == (NOW - 35 * 60, NOW - 25 * 60)
        for ch in "/dport 1 or net 198.18.0.0/16":
            pilot.app.post_message(events.Key(names.get(ch, ch), ch))
        screen = await settle(pilot)
        assert screen.query_one("#filter-input", Input).value == "dport 1 or net 198.18.0.0/16"
        assert (screen.range.since, screen.range.until) == (NOW - 35 * 60, NOW - 25 * 60)


@sync
async def test_typed_range(db: Path) -> None:
    async with app_for(db).run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("r", *"2026-11-22T02:25..2026-11-22T02:35", "enter")
        screen = await settle(pilot)
        assert (screen.range.since, screen.range.until) == (NOW - 35 * 60, NOW - 25 * 60)
        want = expected(db, NOW - 35 * 60, NOW - 25 * 60)
        assert_table_is(screen, want, "flow")
        assert [r["bytes"] for r in want.rows] == [2_000_000]
        assert "02:25:00 → 02:35:00" in text_of(screen, "#title")


@sync
async def test_bad_typed_range_is_shown_and_the_range_stays(db: Path) -> None:
    async with app_for(db).run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot)
        await pilot.press("1")
        screen = await settle(pilot)
        await pilot.press("r", *"2h sometime", "enter")
        screen = await settle(pilot)
        error = screen.query_one("#range-error", Static)
        assert error.display
        assert "until: 'sometime' is not a time" in str(error.render())
        assert screen.range.duration == 300
        assert_table_is(screen, expected(db, NOW - 300, NOW), "flow")


@sync
async def test_zoom_into_a_bucket_and_back_out(db: Path) -> None:
    async with app_for(db).run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot)
        graph = screen.query_one(HistoryGraph)
        assert graph.step == 60 and len(graph.values) == 60
        assert graph.cursor == 59
        # Walk left to the 02:29 bucket; the line under the graph follows the cursor.
        for _ in range(30):
            await pilot.press("left")
        await pilot.pause()
        assert graph.cursor == 29
        assert "02:29:00-02:30:00 2.0 MB" in text_of(screen, "#info")
        await pilot.press("enter")
        screen = await settle(pilot)
        assert (screen.range.since, screen.range.until) == (NOW - 31 * 60, NOW - 30 * 60)
        want = expected(db, NOW - 31 * 60, NOW - 30 * 60)
        assert_table_is(screen, want, "flow")
        assert [r["bytes"] for r in want.rows] == [2_000_000]
        assert "zoom 1" in text_of(screen, "#title")
        assert graph.step == 1 and sum(graph.values) == 2_000_000
        # Escape: back to the hour, then out of the app.
        await pilot.press("escape")
        screen = await settle(pilot)
        assert (screen.range.since, screen.range.until) == (NOW - H, NOW)
        assert_table_is(screen, expected(db, NOW - H, NOW), "flow")
        await pilot.press("escape")
        await pilot.pause()
        assert not pilot.app.is_running


@sync
async def test_home_end_and_bounds_of_the_cursor(db: Path) -> None:
    async with app_for(db).run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot)
        graph = screen.query_one(HistoryGraph)
        await pilot.press("right")
        assert graph.cursor == 59
        await pilot.press("home", "left")
        assert graph.cursor == 0
        await pilot.press("end")
        assert graph.cursor == 59


@sync
async def test_up_down_move_the_table_and_tab_gives_it_the_keys(db: Path) -> None:
    async with app_for(db).run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot)
        table = screen.query_one(DataTable)
        graph = screen.query_one(HistoryGraph)
        await pilot.press("down", "down")
        assert table.cursor_row == 2
        assert isinstance(pilot.app.focused, HistoryGraph)
        await pilot.press("tab")
        assert pilot.app.focused is table
        await pilot.press("up", "left")
        assert table.cursor_row == 1
        assert graph.cursor == 59  # left belongs to the table now
        await pilot.press("shift+tab", "left")
        assert graph.cursor == 58


@sync
async def test_pushed_by_another_app_escape_goes_back(db: Path) -> None:
    class Live(App[None]):
        BINDINGS = [("h", "history", "history")]  # noqa: RUF012

        def compose(self) -> ComposeResult:
            yield Static("live")

        def action_history(self) -> None:
            self.push_screen(HistoryScreen(db, "udp", "src", now=lambda: NOW))

    async with Live().run_test(size=(80, 24)) as pilot:
        await pilot.press("h")
        screen = await settle(pilot)
        assert_table_is(screen, expected(db, NOW - H, NOW, "src", "udp"), "src")
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(pilot.app.screen, HistoryScreen)
        assert pilot.app.is_running


@pytest.mark.parametrize("kind", ["missing", "not a database"])
@sync
async def test_unreadable_database_is_a_message_not_a_traceback(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "flows.db"
    if kind == "not a database":
        path.write_text("this is not SQLite\n" * 100)
    async with app_for(path).run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot)
        message = screen.query_one("#message", Static)
        assert message.display
        text = str(message.render())
        assert text.startswith("Cannot show history: ")
        assert ("no history database at" if kind == "missing" else "not a database") in text
        assert screen.query_one(DataTable).row_count == 0
        # Keys still work and the app is still there.
        await pilot.press("2", "g")
        screen = await settle(pilot)
        assert pilot.app.is_running and screen.error


@sync
async def test_a_slow_query_shows_loading_and_the_keys_still_work(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real = queries.history

    def slow(*args: Any, **kwargs: Any) -> queries.HistoryResult:
        assert threading.current_thread() is not threading.main_thread()
        release.wait(10)
        return real(*args, **kwargs)

    async with app_for(db).run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot)
        monkeypatch.setattr(queries, "history", slow)
        await pilot.press("1")
        await pilot.pause()
        assert screen.query_one(DataTable).loading
        assert "loading" in text_of(screen, "#info")
        await pilot.press("slash")  # the UI answers while the query waits
        assert screen.query_one("#filter-bar").has_class("-open")
        await pilot.press("escape")
        release.set()
        screen = await settle(pilot)
        monkeypatch.undo()
        assert_table_is(screen, expected(db, NOW - 300, NOW), "flow")


def test_the_query_half_does_not_import_textual() -> None:
    code = "import sys, flowscope.history.browse; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- pictures --------------------------------------------------------------------------------


def _snapshot_app(db: Path) -> HistoryApp:
    return app_for(db)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_snapshot_last_hour(snap_compare: Any, db: Path, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)

    assert snap_compare(_snapshot_app(db), terminal_size=size, run_before=run_before)


def test_snapshot_light_theme(snap_compare: Any, db: Path) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        pilot.app.theme = "textual-light"
        await settle(pilot)
        await pilot.press("left", "left", "g")
        await settle(pilot)

    assert snap_compare(_snapshot_app(db), terminal_size=(80, 24), run_before=run_before)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_snapshot_zoomed_with_filter_error(
    snap_compare: Any, db: Path, size: tuple[int, int]
) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("g", "g", "g", "3", "end", "left")
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press("slash", *"host 10.0.0.1 and port x", "enter")
        await settle(pilot)

    assert snap_compare(_snapshot_app(db), terminal_size=size, run_before=run_before)


# --- fitting the table to the terminal ---------------------------------------------------------

WIDE = [
    {"source": "[2001:db8:7::21]:40110", "destination": "[2001:db8:1::10]:443", "proto": "tcp",
     "bytes": "382 MB", "rate": "850 kb/s", "pkts": "319 k", "recs": "60"},
    {"source": "198.18.200.5:47000", "destination": "198.18.0.10:873", "proto": "tcp",
     "bytes": "2.8 GB", "rate": "6.2 Mb/s", "pkts": "2.3 M", "recs": "60"},
]  # fmt: skip


def test_fit_columns_gives_up_recs_then_cuts_addresses_in_the_middle() -> None:
    columns = list(WIDE[0])
    kept = ["source", "destination", "proto", "bytes", "rate", "pkts"]

    def width(cols: list[str], cells: list[dict[str, str]]) -> int:
        return sum(max(len(c), *(len(r[c]) for r in cells)) + 2 for c in cols)

    # 78 cells: without recs the rows fit whole
    cols, cells = fit_columns(columns, WIDE, 78)
    assert cols == kept and width(cols, cells) == 78
    assert cells == [{c: r[c] for c in kept} for r in WIDE]
    # 70: the addresses give up their middles; what fits its column and the numbers stay whole
    cols, cells = fit_columns(columns, WIDE, 70)
    assert cols == kept and width(cols, cells) <= 70
    assert cells[0]["source"].startswith("[2001:") and cells[0]["source"].endswith(":40110")
    assert "…" in cells[0]["source"] and "…" in cells[0]["destination"]
    assert cells[1]["destination"] == "198.18.0.10:873"
    assert [r["pkts"] for r in cells] == ["319 k", "2.3 M"]


def test_fit_columns_leaves_a_table_that_fits_alone() -> None:
    assert fit_columns(list(WIDE[0]), WIDE, 120) == (list(WIDE[0]), WIDE)


@sync
async def test_every_column_is_on_an_80_column_screen_and_a_resize_refits(tmp_path: Path) -> None:
    """The screenshots' database has IPv6 flows wider than 80 columns allow: the table shows
    every column it keeps without a horizontal scrollbar, and gets recs back when the terminal
    grows, with the cursor on the same row."""
    db = history_db(tmp_path / "sample.db")
    app = HistoryApp(db, now=lambda: HISTORY_NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot)
        table = screen.query_one(DataTable)
        assert table_columns(screen) == ["source", "destination", "proto", "bytes", "rate", "pkts"]
        assert table.virtual_size.width <= 78
        assert any("…" in row[0] for row in table_cells(screen))
        await pilot.press("down", "down")
        assert table.cursor_row == 2
        await pilot.resize_terminal(160, 48)
        screen = await settle(pilot)
        assert table_columns(screen)[-1] == "recs"
        assert screen.query_one(DataTable).cursor_row == 2  # still on the row it was on
        assert not any("…" in cell for row in table_cells(screen) for cell in row)
