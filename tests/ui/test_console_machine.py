"""The console under random use: a hypothesis rule-based state machine drives the real app
through Textual's Pilot with every binding (sort, reverse, group, filter with valid and invalid
expressions, pause, freeze, names, detail, help, history and back, resize) while the source
goes empty, fills and expires flows.

Invariants after every step: the app is alive (no exception reached Textual), and whenever the
live screen is in front and not paused, the rows it shows are exactly the view computed
directly from the last tick the source delivered (same keys, same order unless frozen).

This is the test that finds the kind of crash issue #13 reported (an empty grouped view); with
``_as_bytes`` reverted to ``reshape(n, -1)`` it fails within the CI's examples.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from textual.pilot import Pilot
from textual.widgets import Input

from flowscope.collect.collector import LiveFlows, Tick
from flowscope.model import FlowBatch
from flowscope.query import view as views
from flowscope.query.frame import FlowFrame
from flowscope.ui.app import FlowscopeApp, make_app
from flowscope.ui.live import FilterBar, LiveScreen
from flowscope.ui.messages import TickArrived
from flowscope.ui.source import ScriptedSource
from tests.support.scenario import T0, command_line, history_db, scenario
from tests.ui.consoles import NAMES

Step = Callable[[Pilot[Any]], Awaitable[object]]

TICKS = scenario()
"""The recorded scenario: flows start over 90 ticks, a scan at tick 70."""
_HISTORY_DIR = tempfile.mkdtemp(prefix="flowscope-machine-")
HISTORY_DB = history_db(Path(_HISTORY_DIR) / "flows.db")

KEYS = [
    *"sSrRfgGn1234567890",
    "space",
    "question_mark",
    "escape",
    "enter",
    "up",
    "down",
    "pageup",
    "pagedown",
    "home",
    "end",
    "left",
    "right",
    "h",
    "backspace",
    "a",
    "x",
    "f1",
]
"""Every key the console binds, and those of the screens it opens (detail, help, history)."""

ATOMS = [
    "tcp",
    "udp",
    "icmp",
    "port 1",
    "port 443",
    "dport 22",
    "sport 443",
    "host 198.18.0.10",
    "src 198.19.66.6",
    "net 198.18.0.0/16",
    "net 2001:db8::/32",
    "proto 6",
    "vlan 100",
    "iface eth0",
    "bytes > 1000",
    "host 203.0.113.1",  # matches nothing
    # issue #17's columns: TCP health and kernel drops
    "retrans > 0",
    "rtt > 50ms",
    "rtt > 1s",  # matches nothing
    "drops > 0",
    "drop reason NO_SOCKET",
    "drop reason tcp_csum",
]
JUNK = ["(", ")", "and", "or", "not", "port", "99999", "net 1.2.3.4/99", "'", "\\", "\x1b[2J"]


@st.composite
def expressions(draw: st.DrawFn) -> str:
    """Filters: valid combinations of the atoms, or junk that must only show an error."""
    if draw(st.booleans()):
        parts = draw(st.lists(st.sampled_from(ATOMS), min_size=1, max_size=3))
        joins = draw(st.lists(st.sampled_from([" and ", " or ", " and not "]), min_size=2))
        text = parts[0]
        for p, j in zip(parts[1:], joins, strict=False):
            text += j + p
        return text
    return " ".join(draw(st.lists(st.sampled_from(ATOMS + JUNK), max_size=4)))


def _subset(msg: TickArrived, keep: str, seed: int) -> TickArrived:
    """The tick with only some of its live flows: none (everything expired), all, or a
    random part (some expired)."""
    rng = np.random.default_rng(seed)
    live = []
    for lf in msg.tick.live:
        b = lf.batch
        n = len(b)
        mask = {
            "none": np.zeros(n, bool),
            "all": np.ones(n, bool),
            "part": rng.random(n) < 0.3,
        }[keep]
        batch = FlowBatch(
            b.family,
            b.keys[mask],
            b.packets[mask],
            b.bytes[mask],
            b.ip_bytes[mask],
            b.first_seen[mask],
            b.last_seen[mask],
            b.tcp_flags[mask],
        )
        live.append(LiveFlows(batch, lf.bps[mask], lf.pps[mask]))
    t = msg.tick
    tick = Tick(t.sample, t.records, t.events if keep != "none" else [], live, t.evicted)
    return TickArrived(tick, msg.now_ns, msg.writer)


class ConsoleMachine(RuleBasedStateMachine):
    """One console per example, on an event loop of its own that runs between steps."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        source = ScriptedSource([], preload=0, has_db=True)
        self.app: FlowscopeApp = make_app(
            source,
            clock=lambda: T0 - 1,
            lookup=NAMES.get,
            command_line=command_line,
            db_path=HISTORY_DB,
        )
        self.steps: asyncio.Queue[tuple[Step, asyncio.Future[None]] | None] = asyncio.Queue()
        self.driver = self.loop.create_task(self._drive())
        self._do(lambda pilot: pilot.pause())
        self.position = 0
        self.last: TickArrived | None = None

    async def _drive(self) -> None:
        """The Pilot session as one task (Textual keeps context variables for the whole
        session, so it cannot be entered in one step and left in another)."""
        async with self.app.run_test(size=(80, 24)) as pilot:
            while (item := await self.steps.get()) is not None:
                step, done = item
                try:
                    await step(pilot)
                    await pilot.pause()
                except BaseException as e:  # handed to the step's caller
                    done.set_exception(e)
                else:
                    done.set_result(None)

    def _do(self, step: Step) -> None:
        """Run one step in the session and wait for the app to settle."""
        done: asyncio.Future[None] = self.loop.create_future()
        self.steps.put_nowait((step, done))
        either = asyncio.wait([done, self.driver], return_when=asyncio.FIRST_COMPLETED)
        self.loop.run_until_complete(either)
        if self.driver.done() and not done.done():
            self.driver.result()  # the session ended: raise what ended it
            raise AssertionError("the console exited")
        done.result()

    # --- the source ---------------------------------------------------------------------------

    @rule(
        keep=st.sampled_from(["all", "none", "part"]),
        seed=st.integers(0, 2**16),
        skip=st.integers(1, 40),
    )
    def tick(self, keep: str, seed: int, skip: int) -> None:
        self.position = min(self.position + skip, len(TICKS) - 1)
        msg = _subset(TICKS[self.position], keep, seed)
        self.last = msg
        self.app.post_message(msg)
        self._do(lambda pilot: pilot.pause())

    # --- the keyboard and the terminal ------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS))
    def press(self, key: str) -> None:
        self._do(lambda pilot: pilot.press(key))

    @rule(text=expressions())
    def filter(self, text: str) -> None:
        async def type_filter(pilot: Pilot[Any]) -> None:
            if isinstance(self.app.screen, LiveScreen):
                self.app.live.action_open_filter()
                self.app.live.query_one(FilterBar).query_one(Input).value = text
            else:
                await pilot.press("slash", *[c for c in text if c.isalnum()][:8])
            await pilot.press("enter")

        self._do(type_filter)

    @rule(width=st.integers(60, 200), height=st.integers(20, 50))
    def resize(self, width: int, height: int) -> None:
        self._do(lambda pilot: pilot.resize_terminal(width, height))

    @precondition(lambda self: not isinstance(self.app.screen, LiveScreen))
    @rule()
    def back(self) -> None:
        self._do(lambda pilot: pilot.press("escape"))

    # --- what must hold ---------------------------------------------------------------------------

    @invariant()
    def alive(self) -> None:
        assert self.app._exception is None, self.app._exception
        assert self.app.is_running

    @invariant()
    def rows_are_the_view_of_the_source(self) -> None:
        app = self.app
        if self.last is None or app.paused or not isinstance(app.screen, LiveScreen):
            return
        frame = FlowFrame.from_live(self.last.tick.live, self.last.now_ns)
        expected = views.compute(frame, app.live.spec, app.iface_names)
        shown = list(app.live.table.order)
        keys = [r.key for r in expected.rows]
        if app.live.frozen:
            assert sorted(shown) == sorted(keys)
        else:
            assert shown == keys
        assert app.live.view.matched == expected.matched

    def teardown(self) -> None:
        try:
            if not self.driver.done():
                self.steps.put_nowait(None)
                self.loop.run_until_complete(self.driver)
        finally:
            self.loop.close()


EXAMPLES = int(os.environ.get("FLOWSCOPE_MACHINE_EXAMPLES", "30"))

ConsoleMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_console_under_random_use = ConsoleMachine.TestCase
