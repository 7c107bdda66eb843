"""The flow filter language shared by ``flowscope history --filter`` and the live console.

One parser (this module) and one syntax tree (query/nodes.py) with three back ends: a WHERE
fragment for the history store (``Filter.to_sql()``), a test of one in-memory row
(``Filter.matches()``) and numpy masks over a live frame (query/frame.py), so a filter selects
the same flows everywhere. Pure Python, no I/O.

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
             | "proc" (WORD | STRING) | "pid" PID | "user" (NAME | UID)
             | "container" (WORD | STRING)
             | ("retrans" | "drops" | "resets") OP COUNT | "rtt" OP DURATION
             | "drop" "reason" (WORD | STRING)

A protocol followed by a host, net or port term is both, in tcpdump's qualifier order:
``tcp port 443`` is ``tcp and port 443``, ``udp dst port 53`` is ``udp and dst port 53``.

COUNT is a whole number with an optional k, M or G suffix (powers of 1000: ``1.5M`` is
1500000). LETTERS are TCP flags from FSRPAUEC; ``flags SA`` means SYN and ACK were both seen.
STRING is double-quoted, with ``\\"`` and ``\\\\`` as the only escapes; it is how an interface
name with characters outside ``[A-Za-z0-9_.:/-]`` is written (``iface "odd name"``).
``proc``, ``pid``, ``user`` and ``container`` are those of the flow's local socket (its
process's command, pid, user and container or systemd unit): ``proc nginx``, ``user www-data``,
``container docker:0123456789ab``, ``container nginx.service``, ``container ""`` (a process in
no container or unit). A user name is looked up on this host when the filter is read.

``retrans``, ``rtt`` and ``drops`` are a local TCP connection's retransmitted segments and
smoothed round-trip time, and the packets of the flow the kernel dropped (``drop reason
NO_SOCKET``: most of them for that reason); ``resets`` the TCP resets the kernel sent in the
flow (a sent flow) or received and acted on (a received flow). A flow where they are not
followed matches none of them. DURATION is a number with us, ms or s: ``rtt > 50ms``. A drop
reason must be one of the running kernel's where the caller gives them (``parse``'s
``drop_reasons``): a typo would match nothing and look like an answer.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import pwd
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal, NoReturn

from flowscope.errors import UsageError
from flowscope.model import PROTO_NUMBERS, TCP_FLAG_LETTERS
from flowscope.query.nodes import (
    COMPARISONS,
    INT64_MAX,
    WORD_RE,
    All,
    And,
    Compare,
    DropReason,
    Equals,
    Expr,
    Filter,
    Flags,
    Health,
    Host,
    Net,
    Network,
    Not,
    Or,
    Owned,
    Port,
    fold_case,
)

__all__ = ["Filter", "FilterSyntaxError", "parse"]

PROTO_ALIASES: dict[str, int] = {**PROTO_NUMBERS, "icmpv6": 58, "ipv6-icmp": 58}
SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


class FilterSyntaxError(UsageError):
    """A filter that does not parse: says at which column (1-based) and what was expected."""

    def __init__(self, column: int, expected: str, found: str) -> None:
        super().__init__(f"column {column}: expected {expected}, found {found}")
        self.column = column
        self.expected = expected
        self.found = found


# --- tokenizer ---------------------------------------------------------------------------------

OPERATORS = ("&&", "||", ">=", "<=", "!=", "==", "(", ")", "!", ">", "<", "=")


@dataclass(frozen=True, slots=True)
class Token:
    """A word, string, operator, stray character ('bad') or the end, with its 1-based column.
    ``text`` is the source as typed; ``value`` is the decoded string for strings."""

    kind: Literal["word", "string", "op", "bad", "end"]
    text: str
    column: int
    value: str = ""


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

QUALIFIED = frozenset({"host", "src", "dst", "net", "port", "sport", "dport"})
"""Terms a protocol may qualify, as in tcpdump (``tcp port 443``)."""
TERMS = "a filter term (host, src, dst, net, port, proto, vlan, iface, bytes, flags, proc, ...)"
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


DropReasons = Callable[[], Collection[str] | None]
"""The drop reason names a filter may use (the running kernel's: kernel.btf.known_drop_reasons),
asked for only when a filter has a ``drop reason`` term; None: any name is taken."""


class _Parser:
    """Recursive descent over the tokens, one method per grammar rule."""

    def __init__(self, text: str, drop_reasons: DropReasons | None = None) -> None:
        self.tokens = list(_tokenize(text))
        self.pos = 0
        self.depth = 0
        self.drop_reasons = drop_reasons

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
            case "proc":
                return Owned("comm", self.name("a command name"))
            case "container":
                return Owned("container", self.name("a container or unit name", empty=True))
            case "pid":
                return Owned("pid", self.number("a process id", 2**22))
            case "user":
                return self.user()
            case "retrans" | "drops" | "resets":
                return Health(word, self.op(), self.count())
            case "rtt":
                return Health("rtt_us", self.op(), self.duration())
            case "drop":
                if not self.at("reason"):
                    self.fail("'reason'", self.peek())
                return self.drop_reason()
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

    def name(self, expected: str, *, empty: bool = False) -> str:
        """A word or a quoted string; ``empty``: "" too."""
        token = self.take()
        if token.kind not in ("word", "string") or not (token.value or empty):
            self.fail(f'{expected} (double-quote it if it has odd characters: "...")', token)
        try:
            token.value.encode()
        except UnicodeEncodeError:
            self.fail(f"{expected} in valid Unicode", token)
        return token.value

    def user(self) -> Expr:
        expected = "a user name or uid"
        token = self.value(expected)
        if token.text.isdecimal():
            if len(token.text) > 10 or int(token.text) > 2**32 - 1:
                self.fail(expected, token)
            return Owned("uid", int(token.text))
        try:
            uid = pwd.getpwnam(token.text).pw_uid
        except (KeyError, ValueError):
            self.fail("a user name this host knows, or a uid", token)
        return Owned("uid", uid, token.text)

    def drop_reason(self) -> DropReason:
        """A reason name, which must be one the kernel has where its names are known: a typo
        would otherwise match nothing, and an empty table would say that no flow had such
        drops."""
        token = self.peek()
        name = self.name("a drop reason (NO_SOCKET, TC_INGRESS, ...)")
        known = self.drop_reasons() if self.drop_reasons is not None else None
        # a number is how flowscope names a reason outside the enum (a subsystem's reasons)
        if known is not None and not name.isdecimal():
            names = {fold_case(k): k for k in known}
            if fold_case(name) not in names:
                close = difflib.get_close_matches(fold_case(name), names, n=1, cutoff=0.6)
                hint = f"did you mean {names[close[0]]}?" if close else "NO_SOCKET, TC_INGRESS, ..."
                self.fail(f"a drop reason this kernel has ({hint})", token)
        return DropReason(name)

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
        return Compare(column, self.op(), self.count())

    def op(self) -> str:
        token = self.take()
        op = "=" if token.text == "==" else token.text
        if token.kind != "op" or op not in COMPARISONS:
            self.fail("a comparison (>, >=, <, <=, =, !=)", token)
        return op

    def duration(self) -> int:
        """A duration in whole microseconds."""
        expected = "a duration with us, ms or s (like 800us, 50ms, 1.5s)"
        token = self.value(expected)
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(us|ms|s)", token.text.lower())
        try:
            scale = {"us": 1, "ms": 1000, "s": 1_000_000}
            value = Decimal(m.group(1)) * scale[m.group(2)] if m else None
        except InvalidOperation:
            value = None
        if value is None or value != value.to_integral_value() or value > INT64_MAX:
            self.fail(expected, token)
        return int(value)

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


def parse(text: str, drop_reasons: DropReasons | None = None) -> Filter:
    """Parse a filter; an empty or blank text matches everything. ``drop_reasons``: where
    the names a ``drop reason`` term may take come from (without it, any name).

    Raises FilterSyntaxError, naming the column and what was expected there."""
    return Filter(_Parser(text, drop_reasons).filter(), text.strip())
