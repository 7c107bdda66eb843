"""Block rules (opt-in, --allow-block): what an operator asked the XDP program to drop, for how
long, and whether it needs a second confirmation first.

A rule is a source prefix (a host is a /32 or /128), a target (protocol and destination port)
from anywhere, or both: a prefix's packets to one target. Written as the operator types it and
as every list shows it: ``198.19.77.0/24``, ``udp/9``, ``198.19.77.5 udp/9``. Rules live in
the kernel's maps (kernel.block), so they die with flowscope; here they carry their time to
live, and ``Blocks`` decides when they end.

A rule needs a second confirmation (``Blocks.add`` names why) when it would drop packets of the
operator's own SSH client (SSH_CONNECTION), of an address of this host, or more than
``max_share`` of the last tick's received packets (from the flood shape). Pure: the maps, the
clock and the traffic come from the caller.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from flowscope import abi, model
from flowscope.errors import UsageError
from flowscope.model import PROTO_NUMBERS, BlockRule, FloodShape

Rule = BlockRule
"""A block rule (model.BlockRule: pure data, so the kernel layer can take it too)."""


DEFAULT_TTL = 600.0
"""Seconds a rule lives unless told otherwise (10 minutes)."""
MAX_SHARE = 0.5
"""A rule that would drop more than this share of the last tick's received packets needs a
second confirmation."""
_TARGET = re.compile(r"^([a-z0-9]+)/(\d+)$")


def parse_rule(text: str) -> Rule:
    """A rule from what an operator typed: an address or prefix, a target (PROTO/PORT), or
    an address or prefix then a target. A UsageError names what is wrong."""
    words = text.split()
    if not words or len(words) > 2:
        raise UsageError(
            f"not a block rule: {text!r}",
            "give a source (198.19.77.0/24, 198.19.77.5), a target (udp/9, tcp/443) or both",
        )
    network: str | None = None
    proto = dport = None
    for i, word in enumerate(words):
        m = _TARGET.match(word.lower())
        if m and (i == len(words) - 1):
            name, port = m.groups()
            proto = PROTO_NUMBERS.get(name) if not name.isdigit() else int(name)
            if proto is None or not 0 <= proto <= 255:
                raise UsageError(f"unknown protocol {name!r} in {text!r}", "tcp, udp, icmp, ...")
            dport = int(port)
            if dport > 65535:
                raise UsageError(f"port {dport} is out of range in {text!r}", "0 to 65535")
            continue
        if i != 0 or network is not None:
            raise UsageError(f"not a block rule: {text!r}", "a source, then a target (udp/9)")
        try:
            net = ipaddress.ip_network(word, strict=False)
        except ValueError:
            raise UsageError(
                f"not an address, prefix or target: {word!r}",
                "198.19.77.0/24, 2001:db8::/64, 198.19.77.5, udp/9, tcp/443",
            ) from None
        if net.prefixlen == 0:
            raise UsageError(f"{word} would drop everything", "give a narrower prefix or a port")
        network = str(net)
    return Rule(network, proto, dport)


@dataclass(slots=True)
class Entry:
    """A rule in force: when it was made and when it ends (monotonic seconds)."""

    rule: Rule
    created: float
    expires: float
    matched: int = 0
    """Packets it dropped so far (read from the kernel)."""

    def remaining(self, now: float) -> float:
        return max(self.expires - now, 0.0)


class RuleMaps(Protocol):
    """Where rules take effect (kernel.block.BlockMaps, or a test's)."""

    def put(self, rule: Rule) -> None: ...

    def delete(self, rule: Rule) -> None: ...

    def matched(self, rule: Rule) -> int: ...


@dataclass(slots=True)
class Safety:
    """What a rule must not drop without a second confirmation."""

    ssh_client: str | None = None
    """The operator's SSH client address (SSH_CONNECTION's first word)."""
    ssh_port: int = 22
    """The port its connection came to on this host (SSH_CONNECTION's last word)."""
    local: frozenset[str] = frozenset()
    """This host's addresses."""
    max_share: float = MAX_SHARE


def ssh_session(environ: Mapping[str, str]) -> tuple[str | None, int]:
    """The SSH client's address and the port it came to, from SSH_CONNECTION ('client port
    server port'); (None, 22) outside SSH."""
    words = environ.get("SSH_CONNECTION", "").split()
    try:
        return str(ipaddress.ip_address(words[0])), int(words[3])
    except (IndexError, ValueError):
        return None, 22


def share(rule: Rule, shape: FloodShape) -> float:
    """The share of the last tick's received packets the rule would drop. A rule as wide as a
    row's prefix (/24, /64) or wider: the rows it covers (flows and the flood table alike).
    A narrower one (a host): what the tick's flows from its addresses received
    (FloodShape.flows, counted now, at no cost per tick); the flood table's part is not known
    per host, so this is a lower bound while the flow map is full, and exact otherwise."""
    rows = [r for r in shape.rows if r.direction == abi.DIR_INGRESS]
    total = sum(r.packets for r in rows)
    if not total:
        return 0.0
    net = rule.net
    if net is None or net.prefixlen <= (24 if net.version == 4 else 64):
        hit = sum(
            r.packets
            for r in rows
            if rule.covers_prefix(r.prefix)
            and (rule.proto is None or (r.proto, r.dport) == (rule.proto, rule.dport))
        )
        return min(hit / total, 1.0)
    family = abi.AF_INET if net.version == 4 else abi.AF_INET6
    hit = 0
    for f in shape.flows:
        if f.family != family or not len(f.keys):
            continue
        k = f.keys
        sel = (k["direction"] == abi.DIR_INGRESS) & model.in_network(k["saddr"], net)
        if rule.proto is not None:
            sel &= (k["proto"] == rule.proto) & (k["dport"] == rule.dport)
        hit += int(f.packets[sel].sum())
    return min(hit / total, 1.0)


def concerns(rule: Rule, safety: Safety, shape: FloodShape | None) -> list[str]:
    """Why a rule needs a second confirmation (empty: it does not)."""
    out: list[str] = []
    net = rule.net
    client = safety.ssh_client
    if (
        client
        and (net is None or ipaddress.ip_address(client) in net)
        and (rule.proto is None or (rule.proto, rule.dport) == (6, safety.ssh_port))
    ):
        out.append(f"it matches your SSH client {client}")
    if net is not None:
        mine = sorted(a for a in safety.local if ipaddress.ip_address(a) in net)
        if mine:
            out.append(f"it matches this host's address {mine[0]}")
    if shape is not None:
        part = share(rule, shape)
        if part > safety.max_share:
            out.append(f"it drops {100 * part:.0f}% of the traffic received in the last tick")
    return out


@dataclass(slots=True)
class Blocks:
    """The rules in force, kept in step with the kernel's maps."""

    maps: RuleMaps
    safety: Safety = field(default_factory=Safety)
    entries: dict[Rule, Entry] = field(default_factory=dict)

    def add(
        self,
        rule: Rule,
        now: float,
        ttl: float = DEFAULT_TTL,
        *,
        confirmed: bool = False,
        shape: FloodShape | None = None,
    ) -> list[str]:
        """Put a rule in force for ``ttl`` seconds, unless it needs a second confirmation and
        ``confirmed`` is not given: then nothing changes and the reasons are returned. A rule
        already in force gets the new time to live."""
        if ttl <= 0:
            raise UsageError(f"a time to live of {ttl:g} s", "give a positive duration (10m)")
        if not confirmed:
            reasons = concerns(rule, self.safety, shape)
            if reasons:
                return reasons
        entry = self.entries.get(rule)
        if entry is None:
            self.maps.put(rule)
            self.entries[rule] = Entry(rule, now, now + ttl)
        else:
            entry.expires = now + ttl
        return []

    def remove(self, rule: Rule) -> Entry:
        """Take a rule out of force; a UsageError when there is no such rule."""
        entry = self.entries.pop(rule, None)
        if entry is None:
            raise UsageError(
                f"no block rule {rule.text!r}", "flowscope blocks lists the rules in force"
            )
        entry.matched = self.maps.matched(rule)
        self.maps.delete(rule)
        return entry

    def expire(self, now: float) -> list[Entry]:
        """Take out the rules whose time is up; those, with what they dropped."""
        done = [e for e in self.entries.values() if e.expires <= now]
        for e in done:
            self.remove(e.rule)
        return done

    def listing(self) -> list[Entry]:
        """The rules in force, oldest first, with what each dropped so far."""
        out = sorted(self.entries.values(), key=lambda e: (e.created, e.rule.text))
        for e in out:
            e.matched = self.maps.matched(e.rule)
        return out

    def close(self) -> list[Entry]:
        """Take every rule out (flowscope stops; the maps go with the program anyway)."""
        return [self.remove(e.rule) for e in list(self.entries.values())]


@dataclass(frozen=True, slots=True)
class BlockNote:
    """One change of the rules, for history: a block, an unblock, or a rule whose time ran
    out (action 'block', 'unblock', 'expire')."""

    time: float
    """Unix time."""
    action: str
    rule: str
    ttl: float | None
    """The time to live a block was given (None for the others)."""
    matched: int
    """Packets the rule had dropped when it ended (0 for a block)."""
    confirmed: str
    """What the operator confirmed a second time ('' when nothing needed it)."""


class BlockService:
    """Blocks behind the control socket: requests from `flowscope block`, `unblock`, `blocks`
    (the socket's thread) and ticks (the collection loop), serialised by a lock; every change
    goes to ``note`` (the history writer)."""

    def __init__(
        self,
        maps: RuleMaps,
        safety: Safety,
        note: Callable[[BlockNote], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.blocks = Blocks(maps, safety)
        self._note = note or (lambda _n: None)
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._shape: FloodShape | None = None

    def tick(self, shape: FloodShape) -> list[Entry]:
        """After a tick: remember its traffic (for the share a rule would drop) and end the
        rules whose time is up; those."""
        with self._lock:
            self._shape = shape
            done = self.blocks.expire(self._clock())
            for e in done:
                self._note(BlockNote(self._wall(), "expire", e.rule.text, None, e.matched, ""))
            return done

    def handle(self, request: Mapping[str, object]) -> dict[str, object]:
        """One control request: {"op": "block", "rule": R, "ttl": S, "confirmed": bool},
        {"op": "unblock", "rule": R} or {"op": "list"}. UsageErrors go back as errors."""
        op = request.get("op")
        with self._lock:
            now = self._clock()
            if op == "list":
                return {"rules": [self._row(e, now) for e in self.blocks.listing()]}
            rule = parse_rule(str(request.get("rule", "")))
            if op == "block":
                ttl = request.get("ttl", DEFAULT_TTL)
                if not isinstance(ttl, int | float):
                    raise UsageError(f"not a time to live: {ttl!r}", "seconds, such as 600")
                confirmed = bool(request.get("confirmed", False))
                reasons = concerns(rule, self.blocks.safety, self._shape)
                if reasons and not confirmed:
                    return {"confirm": reasons, "rule": rule.text}
                self.blocks.add(rule, now, float(ttl), confirmed=True)
                self._note(
                    BlockNote(self._wall(), "block", rule.text, float(ttl), 0, "; ".join(reasons))
                )
                return {"ok": True, "rule": rule.text, "ttl": float(ttl), "filter": rule.filter()}
            if op == "unblock":
                entry = self.blocks.remove(rule)
                self._note(BlockNote(self._wall(), "unblock", rule.text, None, entry.matched, ""))
                return {"ok": True, "rule": rule.text, "matched": entry.matched}
        raise UsageError(f"unknown control request {op!r}", "block, unblock or list")

    @staticmethod
    def _row(e: Entry, now: float) -> dict[str, object]:
        return {"rule": e.rule.text, "matched": e.matched, "remaining": e.remaining(now)}

    def close(self) -> None:
        """Take every rule out (the recording ends: the maps go with the program anyway)."""
        with self._lock:
            self.blocks.close()
