"""Messages from background threads to the console (the only way they reach widgets), and
the flows table's own (cursor moved, row chosen, header clicked).

Each is a small dataclass; Textual's Message calls ``__post_init__`` for dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from flowscope.collect.collector import Tick
from flowscope.history.writer import WriterState


@dataclass
class TickArrived(Message):
    """One collector tick. ``now_ns`` is the monotonic time it was taken (flow ages)."""

    tick: Tick
    now_ns: int
    writer: WriterState | None = None


@dataclass
class Attached(Message):
    """The program is on the interfaces: (name, XDP mode) of each."""

    interfaces: tuple[tuple[str, str], ...]
    indexes: dict[int, str] = field(default_factory=dict)
    """ifindex -> name, for the filter's ``iface``."""


@dataclass
class CollectionEnded(Message):
    """Collection ended because whoever started the console said so (the demo's traffic
    generator died): the console closes."""


@dataclass
class CollectorFailed(Message):
    """Collection stopped on an error (attach refused, privileges, ...)."""

    error: str


@dataclass
class Trouble(Message):
    """Something the operator should know that did not stop collection (the IPFIX export
    failing or working again)."""

    text: str


@dataclass
class NameResolved(Message):
    """Reverse DNS of an address finished (None: no name)."""

    address: str
    name: str | None


@dataclass
class RowHighlighted(Message):
    """The flows table's cursor is on another row (None: the table is empty)."""

    key: str | None


@dataclass
class RowSelected(Message):
    """Enter (or a click on the cursor row) on a row of the flows table."""

    key: str


@dataclass
class HeaderSelected(Message):
    """A click on a column title of the flows table."""

    column: str
