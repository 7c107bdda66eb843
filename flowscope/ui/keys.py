"""Every key of the console, in one list: the help screen and the README's table read it."""

from __future__ import annotations

KEYS: list[tuple[str, str]] = [
    ("↑ ↓ PgUp PgDn", "move the selection (its own rate graph shows under the total)"),
    ("Enter", "detail of the selected row: every field, its rate graph, the other direction"),
    ("s / S", "sort by the next / previous column"),
    ("1 … 9, 0", "sort by column 1 … 10"),
    ("r", "reverse the sort"),
    ("f", "freeze the order (rows keep their places; new ones go to the end)"),
    ("g / G", "group by: flow, source host, destination host, conversation, dport, protocol"),
    ("/", "filter (the language of history --filter); Enter applies, Esc closes"),
    ("n", "reverse DNS names instead of addresses (looked up in the background)"),
    ("space", "pause the display (collection and history go on)"),
    ("h", "history screen (needs the database)"),
    ("Ctrl+P", "command palette"),
    ("?", "this help"),
    ("Esc", "back (from detail, help or the filter bar)"),
    ("q, Ctrl+C", "quit (detaches the program)"),
]
