"""The flow filter language shared by ``flowscope history --filter`` and the live console.

One parser, two back ends: ``Filter.to_sql()`` gives a WHERE fragment for the history store
(values always bound as parameters) and ``Filter.matches()`` tests in-memory rows, so a filter
selects the same flows in both places. Pure Python, no I/O.

Grammar (keywords are case-insensitive; precedence ``not`` > ``and`` > ``or``)::

    filter  := [or] END
    or      := and (("or" | "||") and)*
    and     := not (("and" | "&&") not)*
    not     := ("not" | "!") not | "(" or ")" | term
    term    := "host" ADDR | ("src" | "dst") ["host"] ADDR
             | ["src" | "dst"] "net" CIDR
             | ["src" | "dst"] "port" PORT | "sport" PORT | "dport" PORT
             | "proto" (NAME | 0-255) | PROTO [qualified]
             | PROTO := "tcp" | "udp" | "icmp" | "icmp6"
             | "vlan" 0-4095 | "iface" (WORD | STRING)
             | ("bytes" | "packets") (">" | ">=" | "<" | "<=" | "=" | "!=") COUNT
             | "flags" LETTERS | "ingress" | "egress"

A protocol followed by a host, net or port term is both, in tcpdump's qualifier order:
``tcp port 443`` is ``tcp and port 443``, ``udp dst port 53`` is ``udp and dst port 53``.

COUNT is a whole number with an optional k, M or G suffix (powers of 1000: ``1.5M`` is
1500000). LETTERS are TCP flags from FSRPAUEC; ``flags SA`` means SYN and ACK were both seen.
STRING is double-quoted, with ``\\"`` and ``\\\\`` as the only escapes; it is how an interface
name with characters outside ``[A-Za-z0-9_.:/-]`` is written (``iface "odd name"``).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import operator
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal, NoReturn, Protocol

from flowscope.errors import UsageError
from flowscope.model import PROTO_NUMBERS, TCP_FLAG_LETTERS, proto_name

__all__ = [
    "Filter",
    "FilterSyntaxError",
    "FlowRow",
    "parse",
    "register_sql_functions",
]

Side = Literal["src", "dst", "any"]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

INT64_MAX = 2**63 - 1  # SQLite's INTEGER; a larger bound parameter would not fit
PROTO_ALIASES: dict[str, int] = {**PROTO_NUMBERS, "icmpv6": 58, "ipv6-icmp": 58}
PROTO_SHORTHANDS = ("tcp", "udp", "icmp", "icmp6")
COMPARISONS: dict[str, Callable[[int, int], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "=": operator.eq,
    "!=": operator.ne,
}
SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


class FilterSyntaxError(UsageError):
    """A filter that does not parse: says at which column (1-based) and what was expected."""

    def __init__(self, column: int, expected: str, found: str) -> None:
        super().__init__(f"column {column}: expected {expected}, found {found}")
        self.column = column
        self.expected = expected
        self.found = found


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
            return f"iface {_quote(self.value)}"
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


# --- tokenizer ---------------------------------------------------------------------------------

WORD_RE = re.compile(r"[A-Za-z0-9_.:/\-]+")
OPERATORS = ("&&", "||", ">=", "<=", "!=", "==", "(", ")", "!", ">", "<", "=")


@dataclass(frozen=True, slots=True)
class Token:
    """A word, string, operator, stray character ('bad') or the end, with its 1-based column.
    ``text`` is the source as typed; ``value`` is the decoded string for strings."""

    kind: Literal["word", "string", "op", "bad", "end"]
    text: str
    column: int
    value: str = ""


def _quote(name: str) -> str:
    """An interface name as the parser reads it back: bare when it is a plain word that is not
    a keyword, else double-quoted with backslash escapes."""
    if WORD_RE.fullmatch(name) and name.lower() not in KEYWORDS:
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tokenize(text: str) -> Iterator[Token]:
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch == '"':
            start, i, chars = i, i + 1, []
            while i < len(text) and text[i] != '"':
                if text[i] == "\\" and i + 1 < len(text):
                    i += 1
                chars.append(text[i])
                i += 1
            if i >= len(text):
                raise FilterSyntaxError(len(text) + 1, "a closing '\"'", "end of filter")
            i += 1
            yield Token("string", text[start:i], start + 1, "".join(chars))
            continue
        if m := WORD_RE.match(text, i):
            yield Token("word", m.group(), i + 1, m.group())
            i = m.end()
            continue
        op = next((op for op in OPERATORS if text.startswith(op, i)), None)
        if op:
            yield Token("op", op, i + 1, op)
            i += len(op)
            continue
        yield Token("bad", ch, i + 1, ch)
        i += 1
    yield Token("end", "", len(text) + 1)


# --- parser ------------------------------------------------------------------------------------

KEYWORDS = frozenset(
    "and or not host src dst net port sport dport proto vlan iface bytes packets flags "  # noqa: SIM905
    "ingress egress".split()
) | frozenset(PROTO_SHORTHANDS)
QUALIFIED = frozenset({"host", "src", "dst", "net", "port", "sport", "dport"})
"""Terms a protocol may qualify, as in tcpdump (``tcp port 443``)."""
TERMS = "a filter term (host, src, dst, net, port, proto, vlan, iface, bytes, flags, ...)"
PORT = "a port number (0-65535)"
ADDRESS = "an IPv4 or IPv6 address"
NETWORK = "a network such as 10.0.0.0/8 or 2001:db8::/32"


def _found(token: Token) -> str:
    """The token as an error message shows it: quoted, on one line, not too long."""
    if token.kind == "end":
        return "end of filter"
    text = token.text if len(token.text) <= 40 else token.text[:37] + "..."
    return f"'{text}'" if text.isprintable() else repr(text)


MAX_DEPTH = 64
"""Levels of 'not' and '(' a filter may nest: far more than anyone types, far less than
Python's recursion limit."""


class _Parser:
    """Recursive descent over the tokens, one method per grammar rule."""

    def __init__(self, text: str) -> None:
        self.tokens = list(_tokenize(text))
        self.pos = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def take(self) -> Token:
        token = self.tokens[self.pos]
        if token.kind != "end":
            self.pos += 1
        return token

    def at(self, *words: str) -> bool:
        """The next token is one of these keywords or operators; consume it if so."""
        token = self.peek()
        spelled = token.text.lower() if token.kind == "word" else token.text
        if token.kind in ("word", "op") and spelled in words:
            self.pos += 1
            return True
        return False

    def fail(self, expected: str, token: Token) -> NoReturn:
        raise FilterSyntaxError(token.column, expected, _found(token))

    def filter(self) -> Expr:
        if self.peek().kind == "end":
            return All()
        expr = self.or_()
        if self.peek().kind != "end":
            self.fail("'and', 'or' or end of filter", self.peek())
        return expr

    def or_(self) -> Expr:
        parts = [self.and_()]
        while self.at("or", "||"):
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_(self) -> Expr:
        parts = [self.not_()]
        while self.at("and", "&&"):
            parts.append(self.not_())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def not_(self) -> Expr:
        token = self.peek()
        if self.at("not", "!"):
            with self.nested(token):
                return Not(self.not_())
        if self.at("("):
            with self.nested(token):
                expr = self.or_()
            if not self.at(")"):
                self.fail("'and', 'or' or ')'", self.peek())
            return expr
        return self.term()

    @contextlib.contextmanager
    def nested(self, token: Token) -> Iterator[None]:
        """One more level of 'not' or '(': past MAX_DEPTH the filter is refused where it
        goes too deep (the parser, the matcher and the SQL are recursive)."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterSyntaxError(
                token.column, f"at most {MAX_DEPTH} levels of 'not' and '('", f"'{token.text}'"
            )
        try:
            yield
        finally:
            self.depth -= 1

    def term(self) -> Expr:
        token = self.take()
        word = token.text.lower() if token.kind == "word" else None
        match word:
            case "host":
                return Host("any", self.address())
            case "src" | "dst":
                return self.sided(word)
            case "net":
                return Net("any", self.network())
            case "port":
                return Port("any", self.number(PORT, 65535))
            case "sport":
                return Port("src", self.number(PORT, 65535))
            case "dport":
                return Port("dst", self.number(PORT, 65535))
            case "proto":
                return Equals("proto", self.proto())
            case "tcp" | "udp" | "icmp" | "icmp6":
                proto = Equals("proto", PROTO_NUMBERS[word])
                if self.peek().kind == "word" and self.peek().text.lower() in QUALIFIED:
                    return And((proto, self.term()))  # tcpdump's order: "tcp port 443"
                return proto
            case "vlan":
                return Equals("vlan", self.number("a VLAN id (0-4095)", 4095))
            case "iface":
                return Equals("iface", self.iface())
            case "bytes" | "packets":
                return self.compare(word)
            case "flags":
                return Flags(self.flags())
            case "ingress" | "egress":
                return Equals("direction", word)
        self.fail(TERMS, token)

    def sided(self, side: Literal["src", "dst"]) -> Expr:
        if self.at("net"):
            return Net(side, self.network())
        if self.at("port"):
            return Port(side, self.number(PORT, 65535))
        self.at("host")
        return Host(side, self.address())

    def value(self, expected: str) -> Token:
        token = self.take()
        if token.kind != "word":
            self.fail(expected, token)
        return token

    def address(self) -> str:
        token = self.value(ADDRESS)
        try:
            return str(ipaddress.ip_address(token.text))
        except ValueError:
            self.fail(ADDRESS, token)

    def network(self) -> Network:
        token = self.value(NETWORK)
        try:
            return ipaddress.ip_network(token.text)
        except ValueError:
            pass
        try:
            # Host bits set (10.0.0.1/8) is refused rather than guessed at, as tcpdump does.
            guess = ipaddress.ip_network(token.text, strict=False)
        except ValueError:
            self.fail(NETWORK, token)
        self.fail(f"a network without host bits set (did you mean {guess}?)", token)

    def number(self, expected: str, maximum: int) -> int:
        token = self.value(expected)
        if not token.text.isdecimal() or len(token.text) > 10 or int(token.text) > maximum:
            self.fail(expected, token)
        return int(token.text)

    def proto(self) -> int:
        expected = "a protocol name (" + ", ".join(sorted(PROTO_ALIASES)) + ") or number (0-255)"
        token = self.value(expected)
        if token.text.isdecimal():
            if len(token.text) > 10 or int(token.text) > 255:
                self.fail(expected, token)
            return int(token.text)
        if token.text.lower() not in PROTO_ALIASES:
            self.fail(expected, token)
        return PROTO_ALIASES[token.text.lower()]

    def iface(self) -> str:
        token = self.take()
        if token.kind not in ("word", "string"):
            self.fail('an interface name (double-quote it if it has odd characters: "...")', token)
        try:
            token.value.encode()
        except UnicodeEncodeError:  # a lone surrogate from undecodable argv bytes
            self.fail("an interface name in valid Unicode", token)
        return token.value

    def compare(self, column: Literal["bytes", "packets"]) -> Expr:
        token = self.take()
        op = "=" if token.text == "==" else token.text
        if token.kind != "op" or op not in COMPARISONS:
            self.fail("a comparison (>, >=, <, <=, =, !=)", token)
        return Compare(column, op, self.count())

    def count(self) -> int:
        expected = "a whole number, optionally with k, M or G (like 1500, 64k, 1.5M)"
        token = self.value(expected)
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgG]?)", token.text)
        try:
            value = Decimal(m.group(1)) * SUFFIXES[m.group(2).lower()] if m else None
        except InvalidOperation:
            value = None
        if value is None or value != value.to_integral_value() or value > INT64_MAX:
            self.fail(expected, token)
        return int(value)

    def flags(self) -> int:
        expected = f"TCP flag letters (any of {TCP_FLAG_LETTERS})"
        token = self.value(expected)
        mask = 0
        for offset, letter in enumerate(token.text.upper()):
            bit = TCP_FLAG_LETTERS.find(letter)
            if bit < 0:
                raise FilterSyntaxError(token.column + offset, expected, f"'{token.text[offset]}'")
            mask |= 1 << bit
        return mask


def parse(text: str) -> Filter:
    """Parse a filter; an empty or blank text matches everything.

    Raises FilterSyntaxError, naming the column and what was expected there."""
    return Filter(_Parser(text).filter(), text.strip())
