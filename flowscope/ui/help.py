"""``?``: every key, from flowscope.ui.keys (the README's table comes from the same list)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

from flowscope.ui.keys import KEYS


class HelpScreen(ModalScreen[None]):
    """The keys, over the live screen."""

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

    def compose(self) -> ComposeResult:
        width = max(len(k) for k, _ in KEYS)
        parts: list[str | tuple[str, str]] = [("flowscope live: keys", "bold $text-accent")]
        for key, what in KEYS:
            parts += ["\n", (f"{key:<{width}}  ", "bold"), what]
        parts += ["\n\n", ("Esc or ? closes this.", "$text-muted")]
        with VerticalScroll():
            yield Static(Content.assemble(*parts))
