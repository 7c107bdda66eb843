"""What the console's screens share, handed to each screen when it is made.

A screen never imports the app: it reads the live state, the interface names and the display
switches from this object, and asks for what only the app can do (show the live table with a
filter, redraw it) through the two callables. The app makes one and keeps its own attributes
(``app.state``, ``app.paused``, ...) as views of it, so tests and screens see the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flowscope.model import Owner
from flowscope.query.filter import DropReasons
from flowscope.ui.state import LiveState


def _nothing(*_: object) -> None:
    return None


@dataclass(slots=True)
class ConsoleContext:
    """The shared state of one console."""

    state: LiveState
    """Everything the ticks brought: the live frame, the feed, the detector, the series."""
    iface_names: dict[int, str] = field(default_factory=dict)
    """Interface index -> name, as the kernel reported them at attach time."""
    paused: bool = False
    """The display is frozen (collection goes on)."""
    show_names: bool = False
    """Addresses are shown as their reverse DNS names where known."""
    name_of: Callable[[str], str | None] = lambda address: None
    """The name of an address (None until the resolver has it)."""
    command_line: Callable[[Owner], str | None] = lambda owner: None
    """A flow's process's full command line while it runs (None when it is gone)."""
    show_filter: Callable[[str], None] = _nothing
    """Back to the live table with this filter applied (an alert's Enter)."""
    redraw_live: Callable[[], None] = _nothing
    """Draw the live table again (after an alert was acknowledged)."""
    control: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """One request to the recorder's control socket (blocking: collect.control.request), None
    when the console was started without --allow-block."""
    drop_reasons: DropReasons | None = None
    """The drop reason names a filter may use (the kernel's), None: any."""
