"""BlockService (collect.block) driven by any sequence of block, unblock, list, packets and
ticks, against a model that is a dict of rule -> (expiry, packets dropped): the kernel's maps
hold exactly the model's rules, every change is noted once with what the rule dropped, the
second confirmation is asked for exactly the rules that touch the SSH client or this host, and
a rule ends at its time to live, never before."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from flowscope.collect.block import BlockNote, BlockService, Rule, Safety, parse_rule
from flowscope.errors import UsageError
from flowscope.model import FloodShape

SSH_CLIENT, LOCAL = "203.0.113.7", "198.18.0.1"
RULES = ["198.19.77.0/24", "198.19.77.5", "udp/9", "198.19.77.5 udp/9", "2001:db8:7::/64",
         SSH_CLIENT, "203.0.113.0/24", "tcp/22", LOCAL, "198.18.0.0/30 tcp/80"]  # fmt: skip
NEEDS_CONFIRMING = {SSH_CLIENT, "203.0.113.0/24", "tcp/22", LOCAL, "198.18.0.0/30 tcp/80"}
"""The rules that match the SSH client (from 203.0.113.7 to port 22) or an address of this
host: what the model says needs a second confirmation."""


class Maps:
    """The kernel's rule maps as the service sees them: a rule and its drop counter."""

    def __init__(self) -> None:
        self.rules: dict[Rule, int] = {}

    def put(self, r: Rule) -> None:
        assert r not in self.rules, "put twice"
        self.rules[r] = 0

    def delete(self, r: Rule) -> None:
        del self.rules[r]

    def matched(self, r: Rule) -> int:
        return self.rules[r]


class BlockMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.maps = Maps()
        self.notes: list[BlockNote] = []
        self.service = BlockService(
            self.maps,
            Safety(ssh_client=SSH_CLIENT, ssh_port=22, local=frozenset({LOCAL})),
            self.notes.append,
            clock=lambda: self.now,
            wall=lambda: self.now + 1e9,
        )
        self.model: dict[str, tuple[float, int]] = {}
        self.expected: list[tuple[str, str, float | None, int]] = []

    @rule(text=st.sampled_from(RULES), ttl=st.integers(1, 30), confirmed=st.booleans())
    def block(self, text: str, ttl: int, confirmed: bool) -> None:
        canonical = parse_rule(text).text
        got = self.service.handle({"op": "block", "rule": text, "ttl": ttl, "confirmed": confirmed})
        if text in NEEDS_CONFIRMING and not confirmed:
            assert got.get("confirm"), got
            return
        assert got["ok"] is True and got["rule"] == canonical
        dropped = self.model.get(canonical, (0.0, 0))[1]
        self.model[canonical] = (self.now + ttl, dropped)
        self.expected.append(("block", canonical, float(ttl), 0))

    @rule(text=st.sampled_from(RULES))
    def unblock(self, text: str) -> None:
        canonical = parse_rule(text).text
        if canonical not in self.model:
            try:
                self.service.handle({"op": "unblock", "rule": text})
            except UsageError as e:
                assert "no block rule" in e.message
            else:
                raise AssertionError("unblocked a rule that was not in force")
            return
        got = self.service.handle({"op": "unblock", "rule": text})
        _, dropped = self.model.pop(canonical)
        assert got == {"ok": True, "rule": canonical, "matched": dropped}
        self.expected.append(("unblock", canonical, None, dropped))

    @rule(text=st.sampled_from(RULES), packets=st.integers(1, 1000))
    def drop(self, text: str, packets: int) -> None:
        """The kernel drops packets a rule in force matches."""
        canonical = parse_rule(text).text
        if canonical in self.model:
            self.maps.rules[parse_rule(text)] += packets
            expires, dropped = self.model[canonical]
            self.model[canonical] = (expires, dropped + packets)

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 29.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        ended = self.service.tick(FloodShape())
        # in the order the rules were first put in force
        gone = [t for t, (expires, _) in self.model.items() if expires <= self.now]
        assert [e.rule.text for e in ended] == gone
        for text in gone:
            _, dropped = self.model.pop(text)
            self.expected.append(("expire", text, None, dropped))

    @rule()
    def listing(self) -> None:
        rows = self.service.handle({"op": "list"})["rules"]
        assert isinstance(rows, list)
        assert {r["rule"]: (r["matched"], r["remaining"]) for r in rows} == {
            t: (dropped, max(expires - self.now, 0.0))
            for t, (expires, dropped) in self.model.items()
        }

    @invariant()
    def the_kernel_holds_the_rules_in_force(self) -> None:
        assert {r.text for r in self.maps.rules} == set(self.model)

    @invariant()
    def every_change_is_noted_once(self) -> None:
        assert [(n.action, n.rule, n.ttl, n.matched) for n in self.notes] == self.expected

    def teardown(self) -> None:
        self.service.close()
        assert self.maps.rules == {}


BlockMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestBlockService = BlockMachine.TestCase
