"""The history screen's graph: bytes per time bucket as bars, with a cursor to zoom by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from flowscope.history.browse import TimeRange, clock, duration_text

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
    HistoryGraph.-pending { tint: $background 60%; }
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
        return TimeRange(lo, hi, f"{clock(lo)}+{duration_text(hi - lo)}")

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
