"""A console over the recorded scenario (tests.support.scenario), with a fixed clock and a fake
resolver: no kernel, no machine clock, no network."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from flowscope.ui.app import FlowscopeApp, make_app
from flowscope.ui.messages import TickArrived
from flowscope.ui.source import ScriptedSource
from tests.support.scenario import T0, command_line, scenario

NAMES = {"198.18.0.10": "web1.example", "198.18.7.21": "client7.example"}


def console(
    ticks: list[TickArrived] | None = None,
    *,
    preload: int | None = None,
    has_db: bool = False,
    control: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    drop_reasons: Collection[str] | None = None,
) -> FlowscopeApp:
    source = ScriptedSource(
        ticks if ticks is not None else scenario(), preload=preload, has_db=has_db
    )
    return make_app(
        source,
        clock=lambda: T0 - 1,
        lookup=NAMES.get,
        command_line=command_line,
        control=control,
        drop_reasons=None if drop_reasons is None else lambda: drop_reasons,
    )


def synchronous(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async Pilot test with asyncio.run (no pytest async plugin needed)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run
