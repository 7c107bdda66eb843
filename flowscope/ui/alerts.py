"""``a``: the alerts (scans, SYN floods) that stay until acknowledged, newest first. Enter
filters the live table to the selected one; ``x`` acknowledges it."""

from __future__ import annotations

import time
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from flowscope.collect.detect import COLUMNS, Alert
from flowscope.ui.context import ConsoleContext
from flowscope.vocab import human


class AlertsScreen(Screen[None]):
    """The detector's alerts as a table."""

    DEFAULT_CSS = """
    AlertsScreen #alerts-title { height: 1; padding: 0 1; text-style: bold; }
    AlertsScreen DataTable { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "show", "filter to it"),
        Binding("x", "acknowledge", "acknowledge"),
        Binding("escape", "app.pop_screen", "back"),
    ]

    def __init__(self, context: ConsoleContext) -> None:
        super().__init__()
        self.context = context

    def compose(self) -> ComposeResult:
        yield Static(id="alerts-title")
        yield DataTable(cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*COLUMNS)
        self.redraw()

    @property
    def alerts(self) -> list[Alert]:
        return list(reversed(self.context.state.detector.alerts))

    def redraw(self) -> None:
        """The table again (called on every tick: counts and rates change)."""
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        for a in self.alerts:
            table.add_row(
                a.kind,
                a.source,
                a.target,
                _clock(a.start),
                _clock(a.last),
                str(a.count),
                human(a.rate),
            )
        if self.alerts:
            table.move_cursor(row=min(max(row, 0), len(self.alerts) - 1))
        n = len(self.alerts)
        title = f"{n} alert{'s' if n != 1 else ''} (UTC)" if n else "no alerts"
        self.query_one("#alerts-title", Static).update(
            title + "  ·  Enter: filter the table to it  ·  x: acknowledge"
        )

    def _selected(self) -> Alert | None:
        alerts = self.alerts
        row = self.query_one(DataTable).cursor_row
        return alerts[row] if 0 <= row < len(alerts) else None

    def action_show(self) -> None:
        alert = self._selected()
        if alert is None:
            return
        self.app.pop_screen()
        self.context.show_filter(alert.filter)

    @on(DataTable.RowSelected)
    def _row_selected(self) -> None:  # Enter on the table (it takes the key before the screen)
        self.action_show()

    def action_acknowledge(self) -> None:
        alert = self._selected()
        if alert is not None:
            self.context.state.detector.acknowledge(alert)
            self.redraw()
            self.context.redraw_live()


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))
