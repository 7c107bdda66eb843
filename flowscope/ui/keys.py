"""Every key of the console, one list per screen, and the filter language in short: the help
screens and the README's tables read them. Descriptions stay under 56 characters so that the
help fits in 80 columns."""

from __future__ import annotations

from flowscope.vocab import GROUPINGS

KEYS: list[tuple[str, str]] = [
    ("↑ ↓ PgUp PgDn", "move the selection (its rate graph: under the total)"),
    ("← →", "scroll the columns right of the addresses (◂ ▸)"),
    ("Enter", "detail: every field, rate graph, other direction"),
    ("s / S", "sort by the next / previous column"),
    ("1 … 9, 0", "sort by column 1 … 10 (a header click too)"),
    ("r", "reverse the sort"),
    ("f", "freeze the order (new rows go to the end)"),
    ("g / G", "group: " + " ".join(GROUPINGS)),
    ("/", "filter (as history --filter); Enter applies"),
    ("F1", "in the filter bar: the filter language"),
    ("n", "reverse DNS names (looked up in the background)"),
    ("space", "pause the display (collection goes on)"),
    ("h", "history screen (needs the database)"),
    ("a", "alerts: scans, SYN floods (Enter filters, x acks)"),
    ("F", "flood view: sources by /24 and target (Enter filters)"),
    ("b / B", "block the selected source (--allow-block) / rules"),
    ("?, Ctrl+P", "this help; the command palette"),
    ("Esc", "back from detail, help or the filter bar"),
    ("q, Ctrl+C", "quit (detaches the program)"),
]

HISTORY_KEYS: list[tuple[str, str]] = [
    ("1 / 2 / 3", "the last 5 minutes / hour / day"),
    ("r", "type a range: 2h 1h, 13:00..13:30, yesterday 03:00"),
    ("← →", "pick a time bucket of the graph"),
    ("Enter", "zoom into the bucket under the cursor"),
    ("↑ ↓ PgUp PgDn", "move in the table"),
    ("g", "group: flow, src, dst, conversation, port, proto"),
    ("/", "filter (the live filter language); Enter applies"),
    ("F1", "in the filter bar: the filter language"),
    ("?", "this help"),
    ("Esc", "zoom out, then back to the live screen"),
]

FILTER_SYNTAX: list[tuple[str, str]] = [
    ("host A, src A, dst A", "an address, either side or one side"),
    ("net CIDR, src net CIDR", "a network: 10.0.0.0/8, 2001:db8::/32"),
    ("port N, sport N, dport N", "a port; src port N, dst port N too"),
    ("tcp, udp, icmp, icmp6", "a protocol; proto sctp, proto 47"),
    ("tcp port 443", "tcpdump's order: tcp and port 443"),
    ("vlan N, iface NAME", 'a VLAN id; an interface (iface "odd name")'),
    ("ingress, egress", "received / sent by this host"),
    ("bytes > N, packets >= N", "> >= < <= = != ; N may be 64k, 1.5M, 3G"),
    ("flags SA", "every listed TCP flag seen (F S R P A U E C)"),
    ("proc NAME, pid N, user U", "the process of the local socket; container C"),
    ("retrans > 0, rtt > 50ms", "TCP health of a local connection"),
    ("drops > 0, resets > 0", "kernel drops (drop reason NAME), TCP resets"),
    ("not, and, or, ( )", "not binds tightest, then and, then or"),
]
"""The filter language in thirteen lines, for the help a key away from the filter bar."""
