"""The console's flows table: a ScrollView that keeps its rows by key and draws only the lines
that changed, with the identity columns fixed while the others scroll sideways."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from flowscope.query.view import Row
from flowscope.ui.cells import (
    HEADERS,
    IDENTITY,
    NUMERIC,
    PAIR_HEADERS,
)
from flowscope.ui.messages import HeaderSelected, RowHighlighted, RowSelected


class FlowTable(ScrollView, can_focus=True):
    """The flows table, changed in place by row key every tick: rows whose cell texts changed
    are drawn again, rows that left are removed, new rows added, then the rows are put in the
    wanted order. It is never cleared and refilled, so the cursor and scroll stay put.

    It draws with Textual's line API: each row is one line of text with one style, kept until
    one of its cells changes, so a tick costs a few dict look-ups per row on screen (a
    DataTable renders every cell of every row again whenever any cell changes, which was most
    of the console's CPU time with busy rates). The leading identity columns (addresses,
    ports, protocol) stay put; when the rest does not fit, ← and → scroll it a column at a
    time, and ◂ ▸ in the header say more columns are off to that side."""

    DEFAULT_CSS = """
    FlowTable {
        background: $surface;
        color: $foreground;
        overflow-x: hidden;
        overflow-y: auto;
        scrollbar-size-vertical: 1;
        &:focus {
            background-tint: $foreground 5%;
            & > .flow-table--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
            & > .flow-table--header { background-tint: $foreground 5%; }
        }
        &:dark > .flow-table--even-row { background: $surface-darken-1 40%; }
        & > .flow-table--header { text-style: bold; background: $panel; color: $foreground; }
        &:ansi > .flow-table--header { background: ansi_bright_blue; color: ansi_default; }
        & > .flow-table--header-sorted { color: $text-accent; }
        & > .flow-table--even-row { background: $surface-lighten-1 50%; }
        & > .flow-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
    }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "flow-table--header",
        "flow-table--header-sorted",
        "flow-table--even-row",
        "flow-table--odd-row",
        "flow-table--cursor",
    }

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "select", show=False),
        Binding("up", "cursor(-1)", "up", show=False),
        Binding("down", "cursor(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "cursor_to(0)", "first row", show=False),
        Binding("end", "cursor_to(-1)", "last row", show=False),
        Binding("left", "scroll_columns(-1)", "columns left", show=False),
        Binding("right", "scroll_columns(1)", "columns right", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.columns_shown: tuple[str, ...] = ()
        """Every column of the current grouping, in order (some may be scrolled off)."""
        self.order: list[str] = []
        """Row keys, top to bottom."""
        self.cursor_row = 0
        self.first_column = 0
        """Index (in the scrolling part) of the first column on screen after the pinned ones."""
        self._widths: dict[str, int] = {}
        self._pinned = 0
        self._titles: dict[str, str] = {}
        self._sort = ""
        self._texts: dict[str, list[str]] = {}
        self._index: dict[str, int] = {}
        self._lines: dict[str, str] = {}
        self._visible: tuple[int, ...] = ()
        self._header: tuple[int, str, str] | None = None
        self._highlighted: str | None = None

    # --- columns --------------------------------------------------------------------------------

    def set_columns(
        self,
        columns: tuple[str, ...],
        widths: dict[str, int],
        group: str,
        sort: str,
        descending: bool,
    ) -> None:
        """Set the columns, their widths and the sort mark. A new column set drops the rows
        (they are keyed by grouping, so none would stay) and scrolls back to the left."""
        if columns != self.columns_shown:
            self._texts.clear()
            self._index.clear()
            self.order = []
            self.cursor_row = 0
            self.first_column = 0
            self.columns_shown = columns
            self._pinned = next(
                (i for i, c in enumerate(columns) if c not in IDENTITY), len(columns)
            )
        self._widths = {c: widths[c] for c in columns}
        names = PAIR_HEADERS if group == "pair" else {}
        self._titles = {
            c: names.get(c, HEADERS[c]) + (("▼" if descending else "▲") if c == sort else "")
            for c in columns
        }
        self._sort = sort
        self._layout()

    def header(self, column: str) -> str:
        """A column's title as shown (with ▼ or ▲ on the sorted one)."""
        return self._titles[column]

    @property
    def visible_columns(self) -> tuple[str, ...]:
        """The columns on screen, left to right."""
        return tuple(self.columns_shown[i] for i in self._visible)

    def _room(self) -> int:
        width = self.scrollable_content_region.width
        return width if width > 0 else 10**6

    def _layout(self) -> None:
        """Pick the columns that fit: the pinned ones, then from ``first_column`` on."""
        cols = self.columns_shown
        room = self._room() - 1  # a space before the first column
        scrolling = len(cols) - self._pinned
        self.first_column = max(0, min(self.first_column, scrolling - 1))
        visible: list[int] = []
        for i in range(self._pinned):
            room -= self._widths[cols[i]] + 1
            visible.append(i)
        # scrolled to the right no further than needed to show the last column
        while self.first_column > 0:
            need = sum(self._widths[c] + 1 for c in cols[self._pinned + self.first_column - 1 :])
            if need > room:
                break
            self.first_column -= 1
        for i in range(self._pinned + self.first_column, len(cols)):
            room -= self._widths[cols[i]] + 1
            if room < 0 and len(visible) > self._pinned:
                break
            visible.append(i)
        self._visible = tuple(visible)
        self._lines.clear()
        self._header = None
        self.virtual_size = Size(self._room(), len(self.order) + 1)
        self.refresh()

    @property
    def hidden_left(self) -> bool:
        return self.first_column > 0

    @property
    def hidden_right(self) -> bool:
        return bool(self._visible) and self._visible[-1] < len(self.columns_shown) - 1

    def action_scroll_columns(self, step: int) -> None:
        """Scroll the non-identity columns sideways by one."""
        if (step > 0 and self.hidden_right) or (step < 0 and self.hidden_left):
            self.first_column += step
            self._layout()

    def on_resize(self) -> None:
        self._layout()

    # --- rows -----------------------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self.order)

    def row_texts(self, index: int) -> list[str]:
        """The cell texts of the row at ``index``, one per column of columns_shown."""
        return self._texts[self.order[index]]

    def apply(self, rows: Sequence[Row], texts: Sequence[list[str]], frozen: bool) -> None:
        """Show ``rows`` (with their cell ``texts``) in this order, or, when ``frozen``, in
        the order rows already had (new ones at the end)."""
        selected = self.selected_key
        keys = [r.key for r in rows]
        wanted = set(keys)
        for key in [k for k in self._texts if k not in wanted]:
            del self._texts[key]
            self._lines.pop(key, None)
        for key, cells in zip(keys, texts, strict=True):
            if self._texts.get(key) != cells:
                self._texts[key] = cells
                self._lines.pop(key, None)
        if frozen:
            kept = [k for k in self.order if k in wanted]
            known = set(kept)
            keys = kept + [k for k in keys if k not in known]
        self.order = keys
        self._index = {k: i for i, k in enumerate(keys)}
        self.virtual_size = Size(self._room(), len(keys) + 1)
        if selected is not None and selected in self._index:
            self._move(self._index[selected], scroll=self._index[selected] != self.cursor_row)
        else:
            self._move(self.cursor_row, scroll=False)
        self.refresh()

    @property
    def selected_key(self) -> str | None:
        """The row key under the cursor, if any."""
        if 0 <= self.cursor_row < len(self.order):
            return self.order[self.cursor_row]
        return None

    def _move(self, row: int, *, scroll: bool = True) -> None:
        before = self.cursor_row
        self.cursor_row = max(0, min(row, len(self.order) - 1))
        if scroll:
            self._scroll_to_cursor()
        if self.cursor_row != before:
            self.refresh()
        key = self.selected_key
        if key != self._highlighted:
            self._highlighted = key
            self.post_message(RowHighlighted(key))

    def _scroll_to_cursor(self) -> None:
        rows = max(self.scrollable_content_region.height - 1, 1)
        top = int(self.scroll_y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True)
        elif self.cursor_row >= top + rows:
            self.scroll_to(y=self.cursor_row - rows + 1, animate=False, immediate=True)

    def action_cursor(self, step: int) -> None:
        self._move(self.cursor_row + step)

    def action_page(self, step: int) -> None:
        self._move(self.cursor_row + step * max(self.scrollable_content_region.height - 1, 1))

    def action_cursor_to(self, row: int) -> None:
        self._move(row if row >= 0 else len(self.order) - 1)

    def action_select_cursor(self) -> None:
        key = self.selected_key
        if key is not None:
            self.post_message(RowSelected(key))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            column = self._column_at(offset.x)
            if column is not None:
                self.post_message(HeaderSelected(column))
            return
        row = int(self.scroll_y) + offset.y - 1
        if 0 <= row < len(self.order):
            if row == self.cursor_row:
                self.action_select_cursor()
            else:
                self._move(row)

    def _column_at(self, x: int) -> str | None:
        left = 1
        for i in self._visible:
            column = self.columns_shown[i]
            right = left + self._widths[column] + 1
            if left - 1 <= x < right:
                return column
            left = right
        return None

    # --- drawing --------------------------------------------------------------------------------

    def _fit(self, cells: Sequence[str]) -> str:
        """One line of text for these cells (one per column) in the visible columns."""
        parts = [" "]
        cols = self.columns_shown
        for i in self._visible:
            column = cols[i]
            width = self._widths[column]
            text = set_cell_size(cells[i], width) if cell_len(cells[i]) > width else cells[i]
            pad = " " * (width - cell_len(text))
            parts.append(pad + text + " " if column in NUMERIC else text + pad + " ")
        return set_cell_size("".join(parts), self._room())

    def _header_line(self) -> tuple[int, str, str]:
        """(offset of the sorted title, its text, the whole header line)."""
        if self._header is None:
            line = self._fit([self._titles.get(c, "") for c in self.columns_shown])
            if self.hidden_left:
                pinned = self._visible[: self._pinned]
                at = 1 + sum(self._widths[self.columns_shown[i]] + 1 for i in pinned)
                line = line[: at - 1] + "◂" + line[at:]
            if self.hidden_right:
                end = 1 + sum(self._widths[self.columns_shown[i]] + 1 for i in self._visible)
                line = line[: end - 1] + "▸" + line[end:]
            title = self._titles.get(self._sort, "")
            at = -1
            left = 1
            for i in self._visible:
                column = self.columns_shown[i]
                if column == self._sort:
                    width = self._widths[column]
                    at = left + (width - cell_len(title) if column in NUMERIC else 0)
                left += self._widths[column] + 1
            self._header = (at, title, line)
        return self._header

    def render_line(self, y: int) -> Strip:
        base = self.rich_style
        if y == 0:
            at, title, line = self._header_line()
            style = base + self.get_component_rich_style("flow-table--header")
            if at < 0:
                return Strip([Segment(line, style)])
            sorted_style = style + self.get_component_rich_style("flow-table--header-sorted")
            end = at + cell_len(title)
            return Strip(
                [
                    Segment(line[:at], style),
                    Segment(line[at:end], sorted_style),
                    Segment(line[end:], style),
                ]
            )
        index = int(self.scroll_y) + y - 1
        if index >= len(self.order):
            return Strip([Segment(" " * self._room(), base)])
        key = self.order[index]
        row = self._lines.get(key)
        if row is None:
            row = self._lines[key] = self._fit(self._texts[key])
        if index == self.cursor_row:
            name = "flow-table--cursor"
        else:
            name = "flow-table--even-row" if index % 2 == 0 else "flow-table--odd-row"
        return Strip([Segment(row, base + self.get_component_rich_style(name))])
