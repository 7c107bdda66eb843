"""The filter's syntax tree, and two of its back ends beside each node: ``sql()`` renders a
WHERE fragment for history (values always bound as parameters), ``matches()`` tests one
in-memory row (the console's new-flow feed, the detector's replies). The third back end, numpy
masks over a whole live frame, is query/frame.py's, exhaustive over the same node classes (a
test holds it to that). ``render()`` gives the canonical text. Pure Python, no I/O."""

from __future__ import annotations

import functools
import ipaddress
import operator
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from flowscope.model import TCP_FLAG_LETTERS, Owner, proto_name

Side = Literal["src", "dst", "any"]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

INT64_MAX = 2**63 - 1  # SQLite's INTEGER; a larger bound parameter would not fit
COMPARISONS: dict[str, Callable[[int, int], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "=": operator.eq,
    "!=": operator.ne,
}


PROTO_SHORTHANDS = ("tcp", "udp", "icmp", "icmp6")
WORD_RE = re.compile(r"[A-Za-z0-9_.:/\-]+")
KEYWORDS = frozenset(
    "and or not host src dst net port sport dport proto vlan iface bytes packets flags "  # noqa: SIM905
    "ingress egress proc pid user container retrans rtt drops drop resets".split()
) | frozenset(PROTO_SHORTHANDS)


def quote_name(name: str) -> str:
    """An interface name as the parser reads it back: bare when it is a plain word that is not
    a keyword, else double-quoted with backslash escapes."""
    if WORD_RE.fullmatch(name) and name.lower() not in KEYWORDS:
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class FlowRow(Protocol):
    """What ``Filter.matches`` reads from a row. Addresses are in ``ipaddress`` text form, as
    model.address_text writes them; direction is 'ingress' or 'egress'."""

    @property
    def src(self) -> str: ...
    @property
    def dst(self) -> str: ...
    @property
    def sport(self) -> int: ...
    @property
    def dport(self) -> int: ...
    @property
    def proto(self) -> int: ...
    @property
    def vlan(self) -> int: ...
    @property
    def iface(self) -> str: ...
    @property
    def packets(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def tcp_flags(self) -> int: ...
    @property
    def direction(self) -> str: ...
    @property
    def owner(self) -> Owner | None: ...


# --- network matching, shared by matches() and the SQL function --------------------------------


@functools.lru_cache(maxsize=65536)
def _address(text: str) -> Address | None:
    """A row's address parsed once: the same few thousand addresses come back every tick."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)
def _network(text: str) -> Network | None:
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        return None


def _in_net(address: str | None, network: Network | None) -> bool:
    addr = _address(address) if isinstance(address, str) else None
    # ipaddress does not promise False across families, so check the version first.
    return (
        addr is not None
        and network is not None
        and addr.version == network.version
        and addr in network
    )


def _fs_in_net(address: str | None, cidr: str | None) -> int:
    return int(_in_net(address, _network(cidr) if isinstance(cidr, str) else None))


def register_sql_functions(conn: sqlite3.Connection) -> None:
    """Make ``fs_in_net(address_text, cidr_text)`` available to SQL that to_sql() produced.

    SQLite has no address type, so CIDR matching on the text columns is done in Python."""
    conn.create_function("fs_in_net", 2, _fs_in_net, deterministic=True)


# --- the syntax tree: each node renders, compiles to SQL and matches rows ----------------------


class Expr:
    """A node of a parsed filter."""

    __slots__ = ()
    precedence = 3  # terms bind tightest; Not 2, And 1, Or 0

    def render(self) -> str:
        """Canonical text that parses back to an equivalent node."""
        raise NotImplementedError

    def sql(self, params: list[object]) -> str:
        """SQL over the flows table; values are appended to params, never put in the text."""
        raise NotImplementedError

    def matches(self, row: FlowRow) -> bool:
        """Whether an in-memory row passes, exactly as the SQL would decide."""
        raise NotImplementedError

    def _wrapped(self, outer: int) -> str:
        text = self.render()
        return f"({text})" if self.precedence < outer else text


@dataclass(frozen=True, slots=True)
class All(Expr):
    """The empty filter: everything passes."""

    def render(self) -> str:
        return ""

    def sql(self, params: list[object]) -> str:
        return "1"

    def matches(self, row: FlowRow) -> bool:
        return True


def _sided(side: Side, word: str) -> str:
    return word if side == "any" else f"{side} {word}"


def _either(side: Side, clause: str) -> str:
    """``clause`` has one ``{}`` for the column: src, dst, or either of them."""
    if side == "any":
        return f"({clause.format('src')} OR {clause.format('dst')})"
    return clause.format(side)


@dataclass(frozen=True, slots=True)
class Host(Expr):
    """An address as source, destination, or either."""

    side: Side
    address: str  # normalized by ipaddress

    def render(self) -> str:
        return f"host {self.address}" if self.side == "any" else f"{self.side} {self.address}"

    def sql(self, params: list[object]) -> str:
        params.extend([self.address] * (2 if self.side == "any" else 1))
        return _either(self.side, "{} = ?")

    def matches(self, row: FlowRow) -> bool:
        if self.side == "src":
            return row.src == self.address
        if self.side == "dst":
            return row.dst == self.address
        return row.src == self.address or row.dst == self.address


@dataclass(frozen=True, slots=True)
class Net(Expr):
    """A CIDR network containing the source, the destination, or either."""

    side: Side
    network: Network

    def render(self) -> str:
        return f"{_sided(self.side, 'net')} {self.network}"

    def sql(self, params: list[object]) -> str:
        params.extend([str(self.network)] * (2 if self.side == "any" else 1))
        return _either(self.side, "fs_in_net({}, ?)")

    def matches(self, row: FlowRow) -> bool:
        if self.side == "src":
            return _in_net(row.src, self.network)
        if self.side == "dst":
            return _in_net(row.dst, self.network)
        return _in_net(row.src, self.network) or _in_net(row.dst, self.network)


@dataclass(frozen=True, slots=True)
class Port(Expr):
    """A source port, destination port, or either (for ICMP, dport is type * 256 + code)."""

    side: Side
    port: int

    def render(self) -> str:
        word = {"any": "port", "src": "sport", "dst": "dport"}[self.side]
        return f"{word} {self.port}"

    def sql(self, params: list[object]) -> str:
        params.extend([self.port] * (2 if self.side == "any" else 1))
        if self.side == "any":
            return "(sport = ? OR dport = ?)"
        return "sport = ?" if self.side == "src" else "dport = ?"

    def matches(self, row: FlowRow) -> bool:
        if self.side == "src":
            return row.sport == self.port
        if self.side == "dst":
            return row.dport == self.port
        return row.sport == self.port or row.dport == self.port


@dataclass(frozen=True, slots=True)
class Equals(Expr):
    """One column equal to a value: proto, vlan, iface or direction."""

    column: Literal["proto", "vlan", "iface", "direction"]
    value: int | str

    def render(self) -> str:
        if self.column == "direction":
            return str(self.value)
        if self.column == "proto":
            assert isinstance(self.value, int)
            return f"proto {proto_name(self.value)}"
        if self.column == "iface":
            assert isinstance(self.value, str)
            return f"iface {quote_name(self.value)}"
        return f"{self.column} {self.value}"

    def sql(self, params: list[object]) -> str:
        params.append(self.value)
        return f"{self.column} = ?"  # column is one of four fixed names, never user text

    def matches(self, row: FlowRow) -> bool:
        return bool(getattr(row, self.column) == self.value)


@dataclass(frozen=True, slots=True)
class Compare(Expr):
    """A counter compared with a number."""

    column: Literal["bytes", "packets"]
    op: str  # a key of COMPARISONS
    value: int

    def render(self) -> str:
        return f"{self.column} {self.op} {self.value}"

    def sql(self, params: list[object]) -> str:
        params.append(self.value)
        return f"{self.column} {self.op} ?"  # both from fixed sets, never user text

    def matches(self, row: FlowRow) -> bool:
        return COMPARISONS[self.op](int(getattr(row, self.column)), self.value)


@dataclass(frozen=True, slots=True)
class Flags(Expr):
    """All of these TCP flag bits were seen (bit 0 FIN ... bit 7 CWR)."""

    mask: int

    def render(self) -> str:
        letters = "".join(c for bit, c in enumerate(TCP_FLAG_LETTERS) if self.mask & (1 << bit))
        return f"flags {letters}"

    def sql(self, params: list[object]) -> str:
        params.extend([self.mask, self.mask])
        return "(tcp_flags & ?) = ?"

    def matches(self, row: FlowRow) -> bool:
        return row.tcp_flags & self.mask == self.mask


HEALTH_WORDS = {"retrans": "retrans", "rtt_us": "rtt", "drops": "drops", "resets": "resets"}
"""The filter word of each health column (history's column names, the live frame's)."""


def duration_text(us: int) -> str:
    """Microseconds as the filter reads them back: ``50ms``, ``1500us``, ``2s``."""
    if us and us % 1_000_000 == 0:
        return f"{us // 1_000_000}s"
    if us and us % 1000 == 0:
        return f"{us // 1000}ms"
    return f"{us}us"


@dataclass(frozen=True, slots=True)
class Health(Expr):
    """A flow's TCP health or kernel drops compared with a number: retransmitted segments,
    smoothed RTT (microseconds), packets the kernel dropped, TCP resets that travelled in the
    flow. Live, the totals so far; in history, what one record holds (its retransmissions,
    drops and resets during the record, its RTT at the end). A flow where they are not
    followed (not a local TCP connection; drops and resets not followed) matches none."""

    column: Literal["retrans", "rtt_us", "drops", "resets"]
    op: str  # a key of COMPARISONS
    value: int

    def render(self) -> str:
        value = duration_text(self.value) if self.column == "rtt_us" else str(self.value)
        return f"{HEALTH_WORDS[self.column]} {self.op} {value}"

    def sql(self, params: list[object]) -> str:
        params.append(self.value)
        # NULL (not followed) is false here, and NOT of it true, as matches() has it
        return f"coalesce({self.column} {self.op} ?, 0)"  # fixed sets, never user text

    def matches(self, row: FlowRow) -> bool:
        value = getattr(row, self.column, None)  # rows of new flows have none
        return value is not None and value >= 0 and COMPARISONS[self.op](value, self.value)


_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def fold_case(text: str) -> str:
    """ASCII letters in upper case, the rest as it is: what SQLite's NOCASE compares."""
    return text.translate(_ASCII_UPPER)


@dataclass(frozen=True, slots=True)
class DropReason(Expr):
    """The kernel's main reason for a flow's drops (enum skb_drop_reason's name without its
    prefix, as dropwatch shows it: ``NO_SOCKET``, ``TC_INGRESS``). Case-insensitive in ASCII
    letters, as SQLite's NOCASE."""

    name: str

    def render(self) -> str:
        return f"drop reason {quote_name(self.name)}"

    def sql(self, params: list[object]) -> str:
        params.append(self.name)
        return "coalesce(drop_reason = ? COLLATE NOCASE, 0)"

    def matches(self, row: FlowRow) -> bool:
        reason = getattr(row, "drop_reason", None)
        return isinstance(reason, str) and fold_case(reason) == fold_case(self.name)


OWNER_WORDS = {"comm": "proc", "pid": "pid", "uid": "user", "container": "container"}
"""The filter word of each owner column (history's column names, model.Owner's attributes)."""


@dataclass(frozen=True, slots=True)
class Owned(Expr):
    """The process of the flow's local socket (collect.owners): its command (``proc``), pid,
    user (a uid; ``name`` keeps the user name as typed) or container. A flow without a known
    process matches none of them."""

    column: Literal["comm", "pid", "uid", "container"]
    value: int | str
    name: str = field(default="", compare=False)

    def render(self) -> str:
        word = OWNER_WORDS[self.column]
        if self.column == "uid" and self.name:
            return f"{word} {quote_name(self.name)}"
        if isinstance(self.value, str):
            return f"{word} {quote_name(self.value)}"
        return f"{word} {self.value}"

    def sql(self, params: list[object]) -> str:
        params.append(self.value)
        # IS, not =: these columns are NULL for flows without a process, and NOT of a NULL
        # comparison would drop them where matches() keeps them
        return f"{self.column} IS ?"  # one of four fixed names, never user text

    def matches(self, row: FlowRow) -> bool:
        owner = row.owner
        return owner is not None and getattr(owner, self.column) == self.value


@dataclass(frozen=True, slots=True)
class Not(Expr):
    """Negation."""

    operand: Expr
    precedence = 2

    def render(self) -> str:
        return f"not {self.operand._wrapped(self.precedence)}"

    def sql(self, params: list[object]) -> str:
        return f"NOT ({self.operand.sql(params)})"

    def matches(self, row: FlowRow) -> bool:
        return not self.operand.matches(row)


@dataclass(frozen=True, slots=True)
class And(Expr):
    """Every part passes."""

    parts: tuple[Expr, ...]
    precedence = 1

    def render(self) -> str:
        return " and ".join(p._wrapped(self.precedence + 1) for p in self.parts)

    def sql(self, params: list[object]) -> str:
        return "(" + " AND ".join(p.sql(params) for p in self.parts) + ")"

    def matches(self, row: FlowRow) -> bool:
        return all(p.matches(row) for p in self.parts)


@dataclass(frozen=True, slots=True)
class Or(Expr):
    """Some part passes."""

    parts: tuple[Expr, ...]
    precedence = 0

    def render(self) -> str:
        return " or ".join(p._wrapped(self.precedence + 1) for p in self.parts)

    def sql(self, params: list[object]) -> str:
        return "(" + " OR ".join(p.sql(params) for p in self.parts) + ")"

    def matches(self, row: FlowRow) -> bool:
        return any(p.matches(row) for p in self.parts)


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed filter. ``text`` is what the user typed (stripped), ``str()`` the canonical
    form; two filters are equal when their trees are."""

    expr: Expr
    text: str = field(default="", compare=False)

    def matches(self, row: FlowRow) -> bool:
        """Whether an in-memory row passes."""
        return self.expr.matches(row)

    def to_sql(self) -> tuple[str, list[object]]:
        """A WHERE fragment over the flows table and its parameters. ``net`` calls fs_in_net:
        run register_sql_functions on the connection first. Columns are taken as NOT NULL."""
        params: list[object] = []
        return self.expr.sql(params), params

    @property
    def matches_all(self) -> bool:
        """True for the empty filter, so callers can skip filtering altogether."""
        return isinstance(self.expr, All)

    def __str__(self) -> str:
        return self.expr.render()
