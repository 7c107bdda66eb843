"""Cell text for the console's tables: compact units (so eight numeric columns fit in 80
columns), ages, ports with their service names, addresses cut in the middle. No textual here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flowscope.model import proto_name, tcp_flags_text
from flowscope.query.view import Row
from flowscope.ui.names import service
from flowscope.vocab import (
    DIRECTION_MARKS,
    ICMP,
    age_text,
    clip,
    clip_column,
    compact,
    owner_text,
    rtt_text,
)
from flowscope.vocab import port_text as number_text

HEADERS: dict[str, str] = {
    "src": "Source",
    "dst": "Destination",
    "sport": "Sport",
    "dport": "Dport",
    "proto": "Proto",
    "bps": "bit/s",
    "pps": "pkt/s",
    "bytes": "Bytes",
    "packets": "Pkts",
    "age": "Age",
    "vlan": "VLAN",
    "flags": "Flags",
    "flows": "Flows",
    "out": "Out",
    "in": "In",
    "iface": "Iface",
    "retrans": "Retr",
    "rtt": "RTT",
    "drops": "Drops",
    "reason": "Drop reason",
    "process": "Process",
    "user": "User",
    "container": "Container",
}
"""Column titles. For conversations Source and Destination are hosts A and B, Out and In the
bytes sent (egress) and received (ingress). A flow's protocol cell starts with its direction:
↓ received (ingress), ↑ sent (egress)."""
PAIR_HEADERS = {"src": "Host A", "dst": "Host B"}
NUMERIC = frozenset(
    {
        "sport",
        "bps",
        "pps",
        "bytes",
        "packets",
        "age",
        "vlan",
        "flows",
        "out",
        "in",
        "retrans",
        "rtt",
        "drops",
    }
)
"""Right-aligned columns."""
IDENTITY = frozenset(
    {"src", "dst", "sport", "dport", "proto", "iface", "process", "user", "container", "reason"}
)
"""Columns that say which flow or group a row is: the leading run of them stays on screen
while the other columns scroll sideways."""


def service_name(port: int, proto: int | None) -> str | None:
    """The service a port is known for (``https``); None for ICMP, whose ports are not."""
    return None if proto in ICMP else service(port, proto or 0)


def port_text(port: int | None, proto: int | None, named: bool = True) -> str:
    """``443 https``; ICMP ports are type/code (``8/0``)."""
    if port is None:
        return ""
    text = number_text(port, proto)
    name = service_name(port, proto) if named else None
    return f"{text} {name}" if name else text


ADDRESSES = ("src", "dst")


def address_text(row: Row, column: str, name_of: Callable[[str], str | None] | None = None) -> str:
    """A source or destination cell whole: the host's name when it has one, else its
    address ("" for a grouping without it)."""
    addr = row.src if column == "src" else row.dst
    if addr is None:
        return ""
    name = name_of(addr) if name_of else None
    return name or addr


def column_texts(
    rows: Sequence[Row],
    column: str,
    *,
    width: int,
    name_of: Callable[[str], str | None] | None = None,
) -> list[str]:
    """The cells of one column, fitted to ``width``: addresses with clip_column, so that
    different hosts never read the same; every other column cell by cell."""
    if column in ADDRESSES:
        return clip_column([address_text(r, column, name_of) for r in rows], width)
    return [cell(r, column, width=width, name_of=name_of) for r in rows]


def cell(
    row: Row,
    column: str,
    *,
    width: int,
    name_of: Callable[[str], str | None] | None = None,
) -> str:
    """The text of one cell, fitted to ``width``."""
    if column in ADDRESSES:
        return clip(address_text(row, column, name_of), width)
    if column == "sport":
        return "" if row.proto in (1, 58) else port_text(row.sport, row.proto, named=False)
    if column == "dport":
        text = port_text(row.dport, row.proto)
        return text if len(text) <= width else text[: width - 1] + "…"
    if column == "proto":
        if row.proto is None:
            return ""
        return DIRECTION_MARKS.get(row.direction, "") + proto_name(row.proto)  # type: ignore[arg-type]
    if column in ("bps", "pps", "bytes", "packets"):
        return compact(getattr(row, column))
    if column == "flows":
        return compact(row.flows)
    if column == "out":
        return compact(row.out or 0)
    if column == "in":
        return compact(row.in_ or 0)
    if column == "age":
        return age_text(row.age)
    if column == "vlan":
        if row.vlan:
            return str(row.vlan)
        return "-" if row.ident[:1] == ("vlan",) else ""  # the untagged group
    if column == "iface":
        return clip(row.iface or "", width)
    if column == "flags":
        return tcp_flags_text(row.tcp_flags) if row.proto == 6 else ""
    if column in ("process", "user", "container"):
        return clip(owner_text(row.owner, column), width)
    if column == "retrans":
        return "-" if row.retrans < 0 else compact(row.retrans)
    if column == "rtt":
        return "-" if row.rtt_us < 0 else rtt_text(row.rtt_us)
    if column == "drops":
        return "-" if row.drops < 0 else compact(row.drops)
    if column == "reason":
        return clip(row.drop_reason or "-", width)
    raise ValueError(column)


def widths(columns: tuple[str, ...], total: int) -> dict[str, int]:
    """Column widths for a table ``total`` cells wide: numbers fixed, addresses take what is
    left (15 at 80 columns, up to 39 for a whole IPv6 address)."""
    fixed = {
        "sport": 5,
        "dport": 9,
        "proto": 6,
        "bps": 6,
        "pps": 6,
        "bytes": 6,
        "packets": 6,
        "age": 5,
        "vlan": 4,
        "flags": 8,
        "retrans": 5,
        "rtt": 7,
        "drops": 5,
        "flows": 5,
        "out": 6,
        "in": 6,
        "iface": 15,  # IFNAMSIZ - 1: a whole interface name
        "process": 22,  # a whole command name (15) and a pid of up to 7 digits
        "user": 10,
        "container": 24,
        "reason": 24,  # most of the kernel's names, whole (NETFILTER_DROP, TCP_OFO_QUEUE_PRUNE)
    }
    out = {c: fixed[c] for c in columns if c in fixed}
    if "dport" in out and total >= 120:
        out["dport"] = 14
    addrs = [c for c in columns if c in ("src", "dst")]
    if addrs:
        # a space between columns and one before the first; what is left goes to addresses
        spare = total - sum(out.values()) - len(columns) - 2
        share = spare // len(addrs)
        out.update({c: max(15, min(share, 39)) for c in addrs})
    return out
