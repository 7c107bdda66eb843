"""``F``: the flood view. The last tick's traffic by source prefix (IPv4 /24, IPv6 /64) and
target (protocol and destination port), most packets first, counting the packets the flow map
took and those it had no room for alike (collect.flood): when a flood of new flows fills the
map, this is where its shape stays visible. Enter filters the live table to a row's flows."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from flowscope.collect.flood import filter_text, target_text
from flowscope.model import TCP_FLAG_LETTERS, FloodRow, FloodShape
from flowscope.ui.context import ConsoleContext
from flowscope.vocab import compact, human_rate

COLUMNS = ("Source", "Target", "Dir", "Flags", "pkt/s", "bit/s", "Share", "In map")


def flag_letters(flags: int) -> str:
    """Only the TCP flags set, in tcpdump's letters ('S', 'SA'; '' for none): a column of 4."""
    return "".join(TCP_FLAG_LETTERS[bit] for bit in range(8) if flags & (1 << bit))


def title(shape: FloodShape, map_full: int) -> str:
    """What the table is, and what no row holds."""
    total = shape.packets
    text = f"sources by /24 (/64) → target: {compact(total / shape.interval)} pkt/s"
    if map_full:
        text += f" · MAP FULL: {compact(map_full / shape.interval)} pkt/s in no flow"
    if shape.unplaced:
        text += f" · {shape.unplaced:,} in no row (flood table full)"
    return text


def cells(row: FloodRow, shape: FloodShape) -> tuple[str, ...]:
    """One row of the table."""
    total = max(shape.packets, 1)
    seconds = shape.interval if shape.interval > 0 else 1.0
    return (
        row.prefix,
        target_text(row),
        "in" if row.direction == 0 else "out",
        flag_letters(row.tcp_flags),
        compact(row.packets / seconds),
        human_rate(row.bytes * 8 / seconds).replace(" ", ""),
        f"{100 * row.packets / total:.0f}%",
        f"{100 * row.in_flows / max(row.packets, 1):.0f}%",
    )


class FloodScreen(Screen[None]):
    """The last tick's flood shape as a table."""

    DEFAULT_CSS = """
    FloodScreen #flood-title { height: 1; padding: 0 1; text-style: bold; }
    FloodScreen DataTable { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "show", "filter to it"),
        Binding("b", "block", "block it"),
        Binding("escape", "app.pop_screen", "back"),
    ]

    def __init__(self, context: ConsoleContext) -> None:
        super().__init__()
        self.context = context
        self._rows: tuple[FloodRow, ...] = ()

    def compose(self) -> ComposeResult:
        yield Static(id="flood-title")
        yield DataTable(cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*COLUMNS)
        self.redraw()

    def redraw(self) -> None:
        """The table again, from the last tick (called on every tick)."""
        sample = self.context.state.sample
        shape = sample.flood if sample is not None else FloodShape()
        map_full = sample.counters.get("map_full", 0) if sample is not None else 0
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        self._rows = shape.rows
        for r in shape.rows:
            table.add_row(*cells(r, shape))
        if shape.rows:
            table.move_cursor(row=min(max(row, 0), len(shape.rows) - 1))
        text = title(shape, map_full) if sample is not None else "waiting for the first tick"
        self.query_one("#flood-title", Static).update(text)

    def action_show(self) -> None:
        row = self.query_one(DataTable).cursor_row
        if 0 <= row < len(self._rows):
            self.app.pop_screen()
            self.context.show_filter(filter_text(self._rows[row]))

    def action_block(self) -> None:
        """Block the selected row's source prefix to its target (--allow-block)."""
        from flowscope.ui.blocks import BlockConfirm

        row = self.query_one(DataTable).cursor_row
        if self.context.control is None:
            self.app.notify("blocking is off: start live with --allow-block", severity="warning")
        elif 0 <= row < len(self._rows):
            r = self._rows[row]
            self.app.push_screen(BlockConfirm(self.context, r.prefix, r.proto, r.dport))

    @on(DataTable.RowSelected)
    def _row_selected(self) -> None:  # Enter on the table (it takes the key before the screen)
        self.action_show()
