"""``?``: the keys of the screen it was opened on, and F1 in a filter bar: the filter language,
from flowscope.ui.keys (the README's tables come from the same lists)."""

from __future__ import annotations

import textwrap
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.content import Content
from textual.events import Resize
from textual.screen import ModalScreen
from textual.widgets import Static

from flowscope.ui.keys import FILTER_SYNTAX, KEYS


class HelpScreen(ModalScreen[None]):
    """A list of (key, what it does), over the screen it was opened on: the live screen's
    keys unless told otherwise. What a key does wraps under itself where the terminal is too
    narrow for it (the grouping keys name thirteen groupings), and how to close the list is in
    its bottom border, so the live screen's keys fit 80x24 whole."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen VerticalScroll {
        width: auto; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; padding: 0 1; background: $surface;
    }
    HelpScreen Static { width: auto; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "close"),
        Binding("question_mark", "app.pop_screen", "close", show=False),
    ]

    def __init__(
        self, title: str = "flowscope live: keys", keys: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__()
        self.title_text = title
        self.keys = KEYS if keys is None else keys

    def compose(self) -> ComposeResult:
        width = max(len(k) for k, _ in self.keys)
        # the border and padding take 4 columns; at least 20 for the text whatever the size
        room = max(20, self.app.size.width - 4 - width - 2)
        parts: list[str | tuple[str, str]] = [(self.title_text, "bold $text-accent")]
        for key, what in self.keys:
            lines = textwrap.wrap(what, room) or [""]
            parts += ["\n", (f"{key:<{width}}  ", "bold"), lines[0]]
            for line in lines[1:]:
                parts += ["\n", " " * (width + 2), line]
        scroll = VerticalScroll()
        scroll.border_subtitle = "Esc or ? closes this"
        with scroll:
            yield Static(Content.assemble(*parts))

    def on_resize(self, event: Resize) -> None:
        """Wrap again for the new width."""
        self.refresh(recompose=True)


def filter_help() -> HelpScreen:
    """The filter language in short (F1 in a filter bar)."""
    return HelpScreen("the filter language (as history --filter)", FILTER_SYNTAX)
