"""Blocking from the console (live --allow-block): ``b`` on a flow or a flood-view row asks to
drop what it names, ``B`` lists the rules in force.

The console is a client of the recorder's control socket like `flowscope block`
(ConsoleContext.control sends one request): the same rules, the same second confirmation, the
same history. ``b`` proposes the narrowest rule, the row's source to its target, and a key
widens it (the source host, its /24 or /64, or the target from anywhere); the confirmation says
exactly what will be dropped, where and for how long. A rule that needs a second confirmation
says why, and takes ``y`` a second time.
"""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Static

from flowscope.collect.block import DEFAULT_TTL, Rule
from flowscope.errors import FlowscopeError
from flowscope.ui.context import ConsoleContext


def ask(context: ConsoleContext, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the recorder's control socket; a FlowscopeError when blocking is off."""
    if context.control is None:
        raise FlowscopeError("blocking is off", "start live with --allow-block")
    return context.control(request)


def rule_for(src: str, proto: int | None, dport: int | None, scope: str) -> Rule:
    """The rule of one scope for a row's source and target: 'flow' (its source to its
    target), 'host' (everything from its source host), 'prefix' (everything from its source's
    /24 or /64) or 'target' (its target from anywhere)."""
    addr = ipaddress.ip_address(src.split("/")[0])
    host = f"{addr}/{addr.max_prefixlen}"
    plen = 24 if addr.version == 4 else 64
    prefix = str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))
    if "/" in src:  # a flood-view row: its source is a prefix already
        host = prefix = str(ipaddress.ip_network(src, strict=False))
    target = (proto, dport) if proto is not None and dport is not None else (None, None)
    if scope == "host":
        return Rule(host)
    if scope == "prefix":
        return Rule(prefix)
    if scope == "target" and target[0] is not None:
        return Rule(None, *target)
    return Rule(host, *target)


class BlockConfirm(ModalScreen[None]):
    """What a block would drop, and the keys to change it, do it or leave."""

    DEFAULT_CSS = """
    BlockConfirm { align: center middle; }
    BlockConfirm > Vertical { width: 76; height: auto; border: thick $error; padding: 0 1;
                              background: $surface; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "block", "block"),
        Binding("f", "scope('flow')", "source→target"),
        Binding("h", "scope('host')", "host"),
        Binding("p", "scope('prefix')", "prefix"),
        Binding("t", "scope('target')", "target"),
        Binding("escape,n", "app.pop_screen", "cancel"),
    ]

    def __init__(
        self, context: ConsoleContext, src: str, proto: int | None, dport: int | None
    ) -> None:
        super().__init__()
        self.context = context
        self.src, self.proto, self.dport = src, proto, dport
        self.scope = "flow"
        self.reasons: list[str] = []
        """Why the rule needs a second confirmation (empty until the recorder said so)."""

    @property
    def rule(self) -> Rule:
        return rule_for(self.src, self.proto, self.dport, self.scope)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(id="block-text")
            yield Footer()

    def on_mount(self) -> None:
        self._show()

    def _show(self) -> None:
        ifaces = ", ".join(name for name, _ in self.context.state.interfaces) or "the interfaces"
        text = (
            f"Drop every packet received on {ifaces} that matches\n\n"
            f"    {self.rule.text}\n\n"
            f"(XDP_DROP, counted first) for {DEFAULT_TTL / 60:.0f} minutes, or until B and d.\n"
            "f: source→target  h: the host  p: its prefix  t: the target  y: block  Esc: cancel"
        )
        if self.reasons:
            text += "\n\nSECOND CONFIRMATION: " + "; ".join(self.reasons) + ". y blocks anyway."
        self.query_one("#block-text", Static).update(text)

    def action_scope(self, scope: str) -> None:
        self.scope = scope
        self.reasons = []
        self._show()

    def action_block(self) -> None:
        request = {
            "op": "block",
            "rule": self.rule.text,
            "ttl": DEFAULT_TTL,
            "confirmed": bool(self.reasons),
        }
        try:
            answer = ask(self.context, request)
        except FlowscopeError as e:
            self.app.notify(str(e), severity="error")
            self.app.pop_screen()
            return
        if "confirm" in answer:
            self.reasons = [str(r) for r in answer["confirm"]]
            self._show()
            return
        self.app.notify(f"blocking {self.rule.text} for {DEFAULT_TTL / 60:.0f} minutes (B)")
        self.app.pop_screen()


class BlocksScreen(Screen[None]):
    """The rules in force, with what each dropped and the time it has left."""

    DEFAULT_CSS = """
    BlocksScreen #blocks-title { height: 1; padding: 0 1; text-style: bold; }
    BlocksScreen DataTable { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "unblock", "unblock"),
        Binding("escape", "app.pop_screen", "back"),
    ]

    def __init__(self, context: ConsoleContext) -> None:
        super().__init__()
        self.context = context
        self._rules: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static(id="blocks-title")
        yield DataTable(cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("Rule", "Dropped", "Left")
        self.redraw()

    def redraw(self) -> None:
        """The rules again (every tick: counts and times change)."""
        try:
            rules = ask(self.context, {"op": "list"})["rules"]
        except FlowscopeError as e:
            self.query_one("#blocks-title", Static).update(str(e))
            return
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        self._rules = []
        for r in rules:
            self._rules.append(str(r["rule"]))
            left = float(r["remaining"])
            table.add_row(r["rule"], f"{r['matched']:,}", f"{left // 60:.0f}m{left % 60:02.0f}s")
        if self._rules:
            table.move_cursor(row=min(max(row, 0), len(self._rules) - 1))
        n = len(self._rules)
        self.query_one("#blocks-title", Static).update(
            f"{n} block rule{'s' if n != 1 else ''} in force  ·  d: unblock the selected one"
        )

    def action_unblock(self) -> None:
        row = self.query_one(DataTable).cursor_row
        if not 0 <= row < len(self._rules):
            return
        try:
            answer = ask(self.context, {"op": "unblock", "rule": self._rules[row]})
            self.app.notify(f"unblocked {answer['rule']}: it dropped {answer['matched']:,} packets")
        except FlowscopeError as e:
            self.app.notify(str(e), severity="error")
        self.redraw()
