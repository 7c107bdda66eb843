"""Every key of the console, in one list: the help screen and the README's table read it.
Descriptions stay under 56 characters so that the help fits in 80 columns."""

from __future__ import annotations

KEYS: list[tuple[str, str]] = [
    ("↑ ↓ PgUp PgDn", "move the selection (its rate graph: under the total)"),
    ("← →", "scroll the columns right of the addresses (◂ ▸)"),
    ("Enter", "detail: every field, rate graph, other direction"),
    ("s / S", "sort by the next / previous column"),
    ("1 … 9, 0", "sort by column 1 … 10 (a header click too)"),
    ("r", "reverse the sort"),
    ("f", "freeze the order (new rows go to the end)"),
    ("g / G", "group: flow, src, dst, conversation, dport, proto"),
    ("/", "filter (as history --filter); Enter applies"),
    ("n", "reverse DNS names (looked up in the background)"),
    ("space", "pause the display (collection goes on)"),
    ("h", "history screen (needs the database)"),
    ("Ctrl+P", "command palette"),
    ("?", "this help"),
    ("Esc", "back from detail, help or the filter bar"),
    ("q, Ctrl+C", "quit (detaches the program)"),
]
