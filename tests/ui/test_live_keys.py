"""Every key of the live console, driven by Pilot against the recorded scenario."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest
from textual.command import CommandPalette
from textual.widgets import Input

from flowscope import abi
from flowscope.ui.app import FlowscopeApp, make_app
from flowscope.ui.detail import DetailScreen
from flowscope.ui.flowtable import FlowTable
from flowscope.ui.help import HelpScreen
from flowscope.ui.live import FilterBar
from flowscope.ui.messages import TickArrived
from flowscope.ui.source import ScriptedSource
from flowscope.ui.state import WriterState
from flowscope.ui.widgets import StatusLine
from tests.support.scenario import SCANNER, SERVER, T0, scenario
from tests.ui.consoles import console, synchronous

SIZE = (80, 24)


def table(app: FlowscopeApp) -> FlowTable:
    return app.live.table


def column(app: FlowscopeApp, name: str) -> list[str]:
    t = table(app)
    return [t.row_texts(i)[t.columns_shown.index(name)] for i in range(t.row_count)]


def shown_rows(app: FlowscopeApp):  # type: ignore[no-untyped-def]
    by_key = {r.key: r for r in app.live.view.rows}
    return [by_key[k] for k in table(app).order]


@synchronous
async def test_table_shows_the_top_flows_by_rate_in_order() -> None:
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        rows = shown_rows(app)
        assert table(app).row_count == len(rows) == 200  # the top 200 of 218 flows
        assert app.live.view.groups == 218
        assert [r.bps for r in rows] == sorted((r.bps for r in rows), reverse=True)
        assert (rows[0].src, rows[0].sport, rows[0].dst) == ("198.18.0.10", 443, "198.18.7.21")
        assert column(app, "dport")[6] == "443 https"
        assert column(app, "bps")[0] == "72.9M"


@synchronous
async def test_a_view_closed_twice_leaves_the_live_screen() -> None:
    """The live screen is the bottom of the stack: closing a view, then closing once more
    (two handlers of one key), leaves the live console drawn and working, not an error."""
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await app.pop_screen()
        await app.pop_screen()
        await pilot.pause()
        assert app.screen is app.live and app.is_running
        await pilot.press("s")
        assert app.live.spec.sort != "bps"


@synchronous
async def test_s_digits_and_r_sort() -> None:
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        assert app.live.spec.sort == "pps"
        pps = [r.pps for r in shown_rows(app)]
        assert pps == sorted(pps, reverse=True)
        await pilot.press("S", "S")
        assert app.live.spec.sort == "proto"
        await pilot.press("4")
        assert app.live.spec.sort == "dport"
        dports = [r.dport for r in shown_rows(app)]
        assert dports == sorted(dports)
        await pilot.press("r")
        dports = [r.dport for r in shown_rows(app)]
        assert dports == sorted(dports, reverse=True)
        assert table(app).header("dport") == "Dport▼"


@synchronous
async def test_f_freezes_the_order_while_rates_change() -> None:
    app = console(preload=40)
    source = app.source
    assert isinstance(source, ScriptedSource)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        before = list(table(app).order)
        await pilot.press("f")
        source.step(20)
        await pilot.pause()
        after = table(app).order
        assert after[: len(before)] == before
        assert [r.bps for r in shown_rows(app)] != sorted(
            (r.bps for r in shown_rows(app)), reverse=True
        )
        await pilot.press("f")
        assert [r.bps for r in shown_rows(app)] == sorted(
            (r.bps for r in shown_rows(app)), reverse=True
        )


@synchronous
async def test_g_cycles_groupings_and_sums() -> None:
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        total = int(app.state.frame.bytes.sum())
        await pilot.press("g")
        assert app.live.spec.group == "src"
        assert table(app).columns_shown[:2] == ("src", "flows")
        rows = shown_rows(app)
        assert sum(r.bytes for r in rows) == total
        assert next(r for r in rows if r.src == SCANNER).flows == 200
        await pilot.press("g", "g")
        assert app.live.spec.group == "pair"
        pair = shown_rows(app)[0]
        assert {pair.src, pair.dst} == {"198.18.0.10", "198.18.7.21"}
        assert pair.out is not None and pair.in_ is not None
        assert pair.out + pair.in_ == pair.bytes
        await pilot.press("g", "g", "g")
        assert app.live.spec.group == "sport"
        await pilot.press("g", "g", "g")
        assert app.live.spec.group == "process"
        await pilot.press("g", "g", "g")
        assert app.live.spec.group == "drop_reason"  # the drops view
        assert table(app).columns_shown[:2] == ("reason", "drops")
        assert column(app, "reason")[0] == "NO_SOCKET"  # the scan's SYNs to closed ports
        await pilot.press("g")
        assert app.live.spec.group == "flow"
        await pilot.press("G", "G")
        assert app.live.spec.group == "container"
        await pilot.press("G", "G", "G")
        assert app.live.spec.group == "vlan"
        assert table(app).columns_shown[:2] == ("vlan", "flows")
        assert sum(r.bytes for r in shown_rows(app)) == total
        await pilot.press("G", "G")
        assert app.live.spec.group == "sport"
        await pilot.press("G")
        assert app.live.spec.group == "proto"
        assert column(app, "proto") == ["tcp", "udp", "icmp"]


@synchronous
async def test_slash_filters_and_an_error_keeps_the_last_good_filter() -> None:
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash", *"dport 443", "enter")
        rows = shown_rows(app)
        assert rows and all(r.dport == 443 for r in rows)
        assert not app.live.query_one(FilterBar).has_class("-open")
        await pilot.press("slash")
        bar = app.live.query_one(FilterBar)
        assert bar.has_class("-open")
        await pilot.press(*["backspace"] * 20, *"port abc", "enter")
        error = str(bar.query_one("#filter-error").render())
        assert "column 6: expected a port number" in error
        assert error.index("^") == len("filter: ") + 5  # the caret under the column
        assert all(r.dport == 443 for r in shown_rows(app))  # still in force
        await pilot.press("escape")
        assert not bar.has_class("-open")
        await pilot.press("slash", *["backspace"] * 20, "enter")
        assert app.live.view.matched == 218 and app.live.spec.filter is None


@synchronous
async def test_a_drop_reason_the_kernel_lacks_is_an_error_not_an_empty_table() -> None:
    # a typo would match nothing, and the empty table would say no flow had such drops
    app = console(drop_reasons={"NO_SOCKET", "TC_INGRESS"})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash", *"dport 443", "enter")
        await pilot.press("slash", *["backspace"] * 20, *"drop reason NO_SOKET", "enter")
        bar = app.live.query_one(FilterBar)
        error = str(bar.query_one("#filter-error").render())
        assert "column 13: expected a drop reason this kernel has (did you mean NO_SOCKET?)" in (
            error
        )
        assert app.live.spec.filter is not None
        assert app.live.spec.filter.text == "dport 443"  # the last good one stays
        await pilot.press(*["backspace"] * 20, *"drop reason no_socket", "enter")
        assert not bar.has_class("-open")
        assert app.live.spec.filter is not None
        assert app.live.spec.filter.text == "drop reason no_socket"


@synchronous
async def test_n_shows_reverse_dns_names_from_the_background() -> None:
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        for _ in range(20):
            await asyncio.sleep(0.1)
            await pilot.pause()
            if column(app, "src")[0] == "web1.example":
                break
        assert column(app, "src")[0] == "web1.example"
        assert column(app, "dst")[0] == "client7.exam…"[:15] or column(app, "dst")[0].startswith(
            "client7"
        )
        await pilot.press("n")
        assert column(app, "src")[0] == "198.18.0.10"


@synchronous
async def test_space_pauses_the_display_not_the_collection() -> None:
    app = console(preload=30)
    source = app.source
    assert isinstance(source, ScriptedSource)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        frozen = column(app, "bps")
        await pilot.press("space")
        source.step(10)
        await pilot.pause()
        assert column(app, "bps") == frozen
        assert app.state.ticks == 40
        await pilot.press("space")
        assert column(app, "bps") != frozen


@synchronous
async def test_enter_opens_the_detail_with_the_other_direction() -> None:
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, DetailScreen)
        this = str(screen.query_one("#this").render())
        other = str(screen.query_one("#other").render())
        assert "198.18.7.21" in this and "443 https" in this
        assert "source            198.18.7.21" in other
        assert "50412" in other
        await pilot.press("escape")
        assert app.screen is app.live


@synchronous
async def test_question_mark_help_and_escape() -> None:
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert app.screen is app.live


@synchronous
async def test_h_without_a_database_says_so() -> None:
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("h")
        assert ("warning", "history needs a database (this console runs with --no-db)") in (
            app.notices
        )
        assert app.screen is app.live


@synchronous
async def test_command_palette_opens() -> None:
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+p")
        assert isinstance(app.screen, CommandPalette)
        await pilot.press(*"group by conv", "enter")
        await pilot.pause()
        assert app.live.spec.group == "pair"


@synchronous
async def test_q_and_ctrl_c_quit_and_stop_the_source() -> None:
    for key in ("q", "ctrl+c"):
        app = console()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press(key)
            await pilot.pause()
        assert app.return_code == 0
        assert isinstance(app.source, ScriptedSource) and app.source.stopped


@synchronous
async def test_writer_trouble_and_lost_events_are_notifications() -> None:
    app = console(scenario(90, writer_trouble_at=80))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        severities = {s for s, _ in app.notices}
        texts = " ".join(m for _, m in app.notices)
        assert "history: database or disk is full" in texts
        assert "records dropped" in texts
        assert "ring buffer full: 3 new-flow events lost" in texts
        assert {"error", "warning"} <= severities
        assert app.is_running


@synchronous
async def test_burst_of_new_flows_is_flagged() -> None:
    app = console(preload=72)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.state.burst and app.state.new_per_second == 40
        feed = str(app.live.query_one("#feed").render())
        assert feed.splitlines()[0].startswith(" new flows 40/s")
        assert f"{SCANNER}:40001 → 198.18.0.10:79" in feed  # newest first


def screen_line(app: FlowscopeApp, y: int) -> str:
    """Line ``y`` of the flows table as drawn (0: the header)."""
    return table(app).render_line(y).text


@synchronous
async def test_left_right_scroll_the_columns_at_80_and_all_fit_at_160() -> None:
    app = console()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        head = screen_line(app, 0)
        assert "Source" in head and "bit/s▼" in head and "Flags" not in head
        assert head.rstrip().endswith("▸")  # more columns to the right
        await pilot.press("right", "right", "right", "right")
        head = screen_line(app, 0)
        assert "Flags" in head and "VLAN" in head and "Age" in head and "◂" in head
        assert "Source" in head and "Destination" in head and "Dport" in head  # pinned
        assert "bit/s" not in head and head.rstrip().endswith("▸")  # the process is next
        assert "...AP..." in screen_line(app, 1)  # the top flow's TCP flags
        assert "198.18.0.10" in screen_line(app, 1)
        await pilot.press("right", "right", "right")
        head = screen_line(app, 0)
        # the connection's retransmissions and RTT (a sent flow of nginx's)
        assert "Retr" in head and "RTT" in head and head.rstrip().endswith("▸")
        assert re.search(r"\d+\s+\d+(\.\d)?(us|ms)", screen_line(app, 1)), screen_line(app, 1)
        await pilot.press("right", "right")
        head = screen_line(app, 0)
        assert "Drops" in head and head.rstrip().endswith("▸")  # the kernel's drops next
        await pilot.press("right")
        head = screen_line(app, 0)
        assert "Process" in head and not head.rstrip().endswith("▸")
        assert "nginx[812]" in screen_line(app, 1)
        await pilot.press(*["left"] * 10)
        assert "bit/s▼" in screen_line(app, 0) and "◂" not in screen_line(app, 0)
    app = console()
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        head = screen_line(app, 0)
        for title in ("Source", "Sport", "Destination", "Dport", "Proto", "bit/s▼", "pkt/s"):
            assert title in head
        for title in ("Bytes", "Pkts", "Age", "VLAN", "Flags"):
            assert title in head
        # the process column is last, as htop's command: beside the feed, one step right
        assert "◂" not in head and head.rstrip().endswith("▸")
        assert "...AP..." in screen_line(app, 1)


@synchronous
async def test_arrows_move_the_selection_and_a_header_click_sorts() -> None:
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        rows = shown_rows(app)
        assert table(app).selected_key == rows[0].key
        await pilot.press("down", "down")
        assert table(app).selected_key == rows[2].key
        await pilot.press("pagedown")
        assert table(app).cursor_row > 2
        assert table(app).scroll_y > 0  # the selection stays on screen
        await pilot.press("home")
        assert table(app).selected_key == rows[0].key and table(app).scroll_y == 0
        await pilot.press("end")
        assert table(app).selected_key == shown_rows(app)[-1].key
        await pilot.press("home")
        head = screen_line(app, 0)
        await pilot.click(FlowTable, offset=(head.index("pkt/s") + 2, 0))
        assert app.live.spec.sort == "pps"
        assert "pkt/s▼" in screen_line(app, 0)
        await pilot.click(FlowTable, offset=(head.index("pkt/s") + 2, 0))
        assert app.live.spec.reverse  # a second click on the sorted column reverses it
        await pilot.click(FlowTable, offset=(5, 3))  # a row: selects it
        assert table(app).cursor_row == 2
        await pilot.click(FlowTable, offset=(5, 3))  # the selected row again: its detail
        assert isinstance(app.screen, DetailScreen)


@synchronous
async def test_the_selected_flow_keeps_the_cursor_as_rows_move() -> None:
    app = console(preload=40)
    source = app.source
    assert isinstance(source, ScriptedSource)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("down", "down", "down")
        key = table(app).selected_key
        source.step(30)
        await pilot.pause()
        assert table(app).selected_key == key
        assert table(app).order[table(app).cursor_row] == key
        row = table(app).cursor_row
        line = screen_line(app, row - int(table(app).scroll_y) + 1)
        src, sport = key.split("|")[2], key.split("|")[4]
        assert src in line and sport in line


def status_lines(app: FlowscopeApp) -> list[str]:
    st = app.live.query_one(StatusLine)
    return [st.render_line(y).text for y in range(2)]


@synchronous
async def test_at_80x24_pause_grouping_sort_and_filter_stay_on_the_status_line() -> None:
    app = console()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("g", "s", "slash", *"port 443 and tcp", "enter", "space", "f")
        await pilot.pause()
        second = status_lines(app)[1]
        for badge in ("PAUSED", "frozen", "source host by pkt/s▼", "/port 443 and tcp  "):
            assert badge in second, second
        long = "host 198.18.0.10 and not port 443 and not port 22 and not port 5432"
        await pilot.press("space", "slash")
        app.live.query_one(FilterBar).query_one(Input).value = long
        await pilot.press("enter")
        await pilot.pause()
        second = status_lines(app)[1]
        assert "source host by pkt/s▼" in second and "/host 198.18.0.10 and no…" in second


def writer_ticks(backlogs: list[int], dropped_at: int | None = None) -> list[TickArrived]:
    ticks = scenario(len(backlogs))
    return [
        TickArrived(
            t.tick, t.now_ns, WriterState(b, 5 if dropped_at is not None and i >= dropped_at else 0)
        )
        for i, (t, b) in enumerate(zip(ticks, backlogs, strict=True))
    ]


@pytest.mark.parametrize(
    ("backlogs", "dropped_at", "shown"),
    [
        ([0, 400, 0, 300, 0, 500, 0], None, "history ok"),  # written away each tick: ordinary
        ([0, 400, 0, 300, 0, 500, 10], None, "history writing 10"),
        ([0, 100, 200, 300, 400], None, "history behind 400"),  # grew three ticks running
        ([0, 0, 0], 1, "history dropped 5"),
    ],
)
def test_the_writer_is_a_warning_only_when_it_falls_behind_or_drops(
    backlogs: list[int], dropped_at: int | None, shown: str
) -> None:
    @synchronous
    async def run() -> None:
        app = console(writer_ticks(backlogs, dropped_at), has_db=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert shown in status_lines(app)[1]
            assert app.state.falling_behind == (shown.split()[1] in ("behind", "dropped"))

    run()


@synchronous
async def test_the_feed_lists_each_connection_once_and_follows_the_filter() -> None:
    scan = scenario(72)
    # the server's RSTs answer the scanner's first probes: replies, not new connections
    probes = scan[70].tick.events[:10]
    replies = [
        dataclasses.replace(
            ev, key=dataclasses.replace(ev.key.reversed(), direction=abi.DIR_EGRESS)
        )
        for ev in probes
    ]
    t = scan[71]
    scan[71] = TickArrived(
        dataclasses.replace(t.tick, events=[*t.tick.events, *replies]), t.now_ns, t.writer
    )
    app = console(scan)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        # the scenario's seven two-way conversations (https twice, postgres, ssh, dns, https
        # over IPv6, rsync) each have one reply; the echo reply has its own ICMP type
        assert app.state.replies == 7 + 10
        shown = list(app.state.feed)
        assert not any(ev.key.src == SERVER and ev.key.sport < 300 for ev in shown[:80])
        await pilot.press("slash", *"dport 22", "enter")
        await pilot.pause()
        feed = str(app.live.query_one("#feed").render())
        lines = feed.splitlines()[1:]
        assert lines and all(":22 ssh" in line or "→ 198.18.0.10:22" in line for line in lines)


@synchronous
async def test_export_trouble_is_a_warning_notification() -> None:
    from flowscope.ui.messages import Trouble

    app = console()
    async with app.run_test(size=SIZE) as pilot:
        app.post_message(Trouble("IPFIX export: IPFIX collector x:4739: cannot resolve"))
        await pilot.pause()
        assert ("warning", "IPFIX export: IPFIX collector x:4739: cannot resolve") in app.notices


@synchronous
async def test_the_console_opens_with_the_view_live_was_given() -> None:
    from flowscope.cli.collect import _view_spec

    source = ScriptedSource(scenario(), has_db=False)
    spec = _view_spec("tcp port 443", "src", "pps")
    app = make_app(source, clock=lambda: T0 - 1, spec=spec)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        second = status_lines(app)[1]
        assert "source host by pkt/s▼" in second and "/tcp port 443  " in second
        assert app.live.view.groups == len({r.src for r in app.live.view.rows})
        pps = [r.pps for r in shown_rows(app)]
        assert pps == sorted(pps, reverse=True)


def test_live_groupings_in_the_help_are_the_consoles() -> None:
    from flowscope.cli.collect import LIVE_GROUPS
    from flowscope.query.view import GROUPS

    assert tuple(GROUPS) == LIVE_GROUPS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group-by", "nope"], "--group-by: 'nope' is not a grouping (one of flow, src, "),
        (["--group-by", "src", "--sort", "sport"], "--sort: 'sport' is not a column of the src"),
        (["--filter", "port 99999"], "column 6: expected a port number (0-65535)"),
    ],
)
def test_live_view_options_are_checked_before_anything_starts(
    args: list[str], message: str
) -> None:
    from click.testing import CliRunner

    from flowscope.cli import main

    result = CliRunner().invoke(main, ["live", "-i", "nosuchif0", "--no-db", *args])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert message in line, line


@synchronous
async def test_help_is_the_screens_own_and_the_filter_language_is_f1_away() -> None:
    import tempfile
    from pathlib import Path

    from flowscope.ui.history import HistoryScreen
    from flowscope.ui.keys import FILTER_SYNTAX, HISTORY_KEYS, KEYS
    from tests.support.scenario import history_db

    db = history_db(Path(tempfile.mkdtemp(prefix="flowscope-help-")) / "flows.db")
    source = ScriptedSource(scenario(), has_db=True)
    app = make_app(source, clock=lambda: T0 - 1, db_path=db)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen) and app.screen.keys is KEYS
        await pilot.press("escape", "slash", *"port", "f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen) and app.screen.keys is FILTER_SYNTAX
        await pilot.press("escape")
        await pilot.pause()
        field = app.live.query_one(FilterBar).query_one(Input)
        assert field.value == "port" and field.has_focus  # back where the typing was
        await pilot.press("escape", "h")
        await pilot.pause()
        assert isinstance(app.screen, HistoryScreen)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen) and app.screen.keys is HISTORY_KEYS


@synchronous
async def test_the_palette_offers_every_sort_with_what_it_does() -> None:
    app = console()
    async with app.run_test(size=SIZE) as pilot:
        titles = {c.title: c.help for c in app.get_system_commands(app.screen)}
        assert titles["Sort by pkt/s"] == "Order the table by pkt/s, largest first (s, 1-0)"
        assert (
            "Group by source host" in titles
            and "sum the flows per source host" in titles["Group by source host"]
        )
        await pilot.press("ctrl+p")
        await pilot.press(*"sort by pkt", "enter")
        await pilot.pause()
        assert app.live.spec.sort == "pps"


def test_rate_graphs_start_at_zero() -> None:
    """Issue #13: 13.5-13.7 Mb/s looked like big swings (the graph was scaled from its
    smallest value). Now a steady rate is a row of full bars."""
    from rich.console import Console
    from textual.renderables.sparkline import Sparkline as Bars

    from flowscope.ui.widgets import padded

    steady = [13.5e6 + i * 0.2e6 / 300 for i in range(300)]  # 13.5 to 13.7 Mb/s
    data = padded(steady, 40)
    console = Console(width=40, record=True, color_system=None)
    console.print(Bars(data, width=40))
    bars = console.export_text().strip()
    assert len(bars) == 40 and set(bars) <= {"▇", "█"}, bars


@synchronous
async def test_a_scan_is_one_alert_that_stays_filters_the_table_and_can_be_acknowledged() -> None:
    """Issue #13: the scenario's SYN scan (200 ports from one source in five seconds) raises
    exactly one alert naming its source, still listed a minute later; Enter on it filters the
    table to it; x acknowledges it."""
    from flowscope.ui.alerts import AlertsScreen

    app = console(scenario(140), preload=76)
    source = app.source
    assert isinstance(source, ScriptedSource)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert [(s, m) for s, m in app.notices if m.startswith("port scan")] == [
            ("error", f"port scan from {SCANNER} to {SERVER} (a: alerts)")
        ]
        source.step(64)  # a minute later
        await pilot.pause()
        (alert,) = app.state.detector.alerts
        assert (alert.source, alert.count) == (SCANNER, 200)
        assert "1 ALERT (a)" in status_lines(app)[1]
        await pilot.press("a")
        await pilot.pause()
        assert isinstance(app.screen, AlertsScreen)
        await pilot.press("enter")
        await pilot.pause()
        assert app.live.spec.filter is not None and app.live.spec.filter.text == f"src {SCANNER}"
        assert app.live.view.rows and {r.src for r in app.live.view.rows} == {SCANNER}
        await pilot.press("a", "x", "escape")
        await pilot.pause()
        assert app.state.detector.alerts == [] and "ALERT" not in status_lines(app)[1]


@synchronous
async def test_keys_typed_right_after_slash_go_to_the_filter() -> None:
    """An operator types `/port 1` and Enter in one burst (or pastes it): every key after `/`
    lands in the filter bar, none reaches the table (where `1` would sort and `p` would not
    be typed). The keys are queued together, as a terminal delivers a burst."""
    from textual import events

    app = console()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        sort = app.live.spec.sort
        for ch in "/port 1":
            name = {"/": "slash", " ": "space"}.get(ch, ch)
            app.post_message(events.Key(name, ch))
        app.post_message(events.Key("enter", "\r"))
        await pilot.pause()
        await pilot.pause()
        assert app.live.spec.filter is not None and app.live.spec.filter.text == "port 1"
        assert app.live.spec.sort == sort
        # a "/" inside the filter is typed, not a second "open the filter"
        for ch in "/net 198.18.0.0/16\r":
            name = {"/": "slash", " ": "space", ".": "full_stop", "\r": "enter"}.get(ch, ch)
            app.post_message(events.Key(name, ch))
        await pilot.pause()
        await pilot.pause()
        assert app.live.spec.filter is not None
        assert app.live.spec.filter.text == "net 198.18.0.0/16"


@synchronous
async def test_an_interface_down_or_gone_stays_on_the_status_line_until_it_is_up() -> None:
    """The notification says it once; the status line says it for as long as it lasts,
    at 80 columns, before anything else on the first line."""

    def with_links(ticks: list[TickArrived], states: list[str]) -> list[TickArrived]:
        return [
            TickArrived(dataclasses.replace(t.tick, links={"eth0": s}), t.now_ns, t.writer)
            for t, s in zip(ticks, states, strict=True)
        ]

    for states, shown in [
        (["up"] * 8 + ["down"] * 4, "eth0 (native)  DOWN"),
        (["up"] * 8 + ["down"] * 2 + ["gone"] * 2, "eth0 (native)  GONE"),
        (["up"] * 8 + ["down"] * 3 + ["up"], None),
    ]:
        app = console(with_links(scenario(12), states), preload=11)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            before = status_lines(app)[0]
            app.source.step()
            await pilot.pause()
            line = status_lines(app)[0]
            if shown is None:
                assert "DOWN" not in line and "DOWN" in before
            else:
                assert line.startswith(f"{shown}   up ")


@synchronous
async def test_control_characters_in_an_interface_name_are_shown_escaped() -> None:
    """Linux takes almost any byte in an interface name (not "/", ":" or spaces): an escape
    sequence in one is shown as text on the status line, never sent to the terminal."""
    source = ScriptedSource(scenario(3), interfaces=(("e\x1b[2Jx", "native"),))
    app = make_app(source, clock=lambda: T0 - 1, lookup=lambda _: None)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert status_lines(app)[0].startswith("e\\x1b[2Jx (native)")


@synchronous
async def test_a_process_group_and_enter_shows_its_flows() -> None:
    """Grouped by process (G from flows: drop reason, container, user, process), the top row
    is the web server; Enter on it filters its flows (``pid 812``), every one of them nginx's,
    and the flow table's process column says so."""
    app = console()
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        await pilot.press("G", "G", "G", "G")
        assert app.live.spec.group == "process"
        assert table(app).columns_shown[:2] == ("process", "flows")
        assert column(app, "process")[0] == "nginx[812]"
        assert "-" in column(app, "process")  # the flows without a process: one row
        await pilot.press("enter")
        await pilot.pause()
        assert app.live.spec.group == "flow"
        assert app.live.spec.filter is not None and str(app.live.spec.filter) == "pid 812"
        rows = shown_rows(app)
        assert len(rows) == 6 and all(r.owner and r.owner.comm == "nginx" for r in rows)
        assert set(column(app, "process")) == {"nginx[812]"}
        await pilot.press("/")
        await pilot.press(*"proc sshd or user 0", "enter")
        await pilot.pause()
        names = {r.owner.comm for r in shown_rows(app) if r.owner}
        assert names == {"sshd", "rsync"}


@synchronous
async def test_the_flood_view_shows_who_fills_the_map_and_enter_filters_to_it() -> None:
    """Issue #18: from tick 90 the scenario's SYN flood fills the flow map. The status line
    names the flood's top source prefix and target; F lists the last tick by prefix and target
    with the flood first (its packets in no flow), then the flows the map holds; Enter filters
    the table to a row, with a filter the filter language takes."""
    from flowscope.query.filter import parse
    from flowscope.ui.flood import FloodScreen

    app = console(scenario(94, flood=True), preload=92)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "FLOOD 198.19.77.0/24 tcp/443 150k pkt/s (F)" in status_lines(app)[1]
        await pilot.press("F")
        await pilot.pause()
        assert isinstance(app.screen, FloodScreen)
        shape = app.state.sample.flood if app.state.sample is not None else None
        assert shape is not None
        top, second = shape.rows[:2]
        assert (top.prefix, top.proto, top.dport, top.packets, top.in_flows) == (
            "198.19.77.0/24",
            6,
            443,
            150_000,
            0,
        )
        assert (second.prefix, second.packets) == ("2001:db8:77::/64", 20_000)
        # every packet of the tick is in a row (the flows' share and the flood's)
        assert shape.packets == app.state.sample.counters["packets"]
        await pilot.press("down", "down", "enter")  # the third row: flows the map holds
        await pilot.pause()
        third = shape.rows[2]
        flt = app.live.spec.filter
        assert flt is not None and flt.text == (
            f"src net {third.prefix} and dport {third.dport} and tcp and "
            f"{'ingress' if third.direction == 0 else 'egress'}"
        )
        assert parse(flt.text) is not None
        rows = app.live.view.rows
        assert rows and all(r.dport == third.dport for r in rows)
        assert sum(r.pps for r in rows) == third.packets


@synchronous
async def test_blocking_from_the_flood_view_and_the_rules_view() -> None:
    """Issue #18 with --allow-block (the recorder's control service, its maps faked): the
    status line says blocking is on; b in the flood view proposes the flood's prefix to its
    target, y blocks it; on the live table b proposes the selected flow's source to its target,
    h widens it to the host, which is the operator's SSH client: a second confirmation names
    why, and y a second time blocks it; B lists both, d unblocks one. Without --allow-block, b
    says blocking is off and changes nothing."""
    from flowscope.collect.block import BlockService, Safety
    from flowscope.ui.blocks import BlockConfirm, BlocksScreen
    from tests.unit.test_block_rules import Maps

    maps = Maps()
    notes: list[object] = []
    service = BlockService(maps, Safety(ssh_client="198.18.7.21"), notes.append)
    app = console(scenario(94, flood=True), preload=92, control=service.handle)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "BLOCK ON (B)" in status_lines(app)[1]
        await pilot.press("F", "b")
        await pilot.pause()
        assert isinstance(app.screen, BlockConfirm)
        assert app.screen.rule.text == "198.19.77.0/24 tcp/443"
        await pilot.press("y")
        await pilot.pause()
        assert [r.text for r in maps.rules] == ["198.19.77.0/24 tcp/443"]  # type: ignore[attr-defined]
        await pilot.press("escape")  # the flood view
        await pilot.pause()
        app.live.apply_filter("src 198.18.7.21 and ingress")
        await pilot.pause()
        await pilot.press("b")
        await pilot.pause()
        confirm = app.screen
        assert isinstance(confirm, BlockConfirm)
        assert confirm.rule.text.startswith("198.18.7.21/32 tcp/")
        await pilot.press("h", "y")
        await pilot.pause()
        assert confirm.reasons == ["it matches your SSH client 198.18.7.21"]
        assert len(maps.rules) == 1  # not yet
        await pilot.press("y")
        await pilot.pause()
        assert {r.text for r in maps.rules} == {  # type: ignore[attr-defined]
            "198.19.77.0/24 tcp/443",
            "198.18.7.21/32",
        }
        await pilot.press("B")
        await pilot.pause()
        assert isinstance(app.screen, BlocksScreen)
        await pilot.press("d")
        await pilot.pause()
        assert len(maps.rules) == 1
    assert [n.action for n in notes] == ["block", "block", "unblock"]  # type: ignore[attr-defined]
    assert notes[1].confirmed == "it matches your SSH client 198.18.7.21"  # type: ignore[attr-defined]

    plain = console(scenario(94, flood=True), preload=92)
    async with plain.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "BLOCK" not in status_lines(plain)[1].replace("FLOOD", "")
        await pilot.press("b")
        await pilot.pause()
        assert not isinstance(plain.screen, BlockConfirm)
        assert any("blocking is off" in m for _, m in plain.notices)


@synchronous
async def test_the_status_line_says_how_full_the_flow_maps_are_and_what_they_lock() -> None:
    """Issue #19: the fuller flow map's share and the kernel memory both maps lock (the
    scenario's: a 2-CPU machine's 65,536 entries, 25.5 MiB), after the history state, which
    must not be cut at 80 columns; full (and a warning) while the flood fills it."""
    for preload, shown in ((88, "map 0% of 25.5 MiB"), (92, "map 100% of 25.5 MiB")):
        app = console(scenario(94, flood=True), preload=preload)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            second = status_lines(app)[1]
            assert shown in second, second
            assert second.index("history") < second.index(shown)
