"""``make screenshots``: an SVG and a PNG of every console screen, from the recorded scenario
(tests.support.scenario), at 80x24 and 160x48, dark and light.

    python -m tests.support.screenshots [DIR]

PNGs are made with rsvg-convert (Debian's librsvg2-bin) when it is installed. Textual's SVG
positions each run of text on its own, so the root element is told to preserve white space:
otherwise librsvg drops the spaces at the start of a run.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from textual.pilot import Pilot

from flowscope.collect.block import BlockService, Rule, Safety
from flowscope.ui.app import FlowscopeApp, make_app
from flowscope.ui.source import ScriptedSource
from tests.support.scenario import HISTORY_NOW, T0, command_line, history_db, scenario

NAMES = {"198.18.0.10": "web1.example.net", "198.18.7.21": "client7.example.net"}
Steps = Callable[[Pilot[None]], Awaitable[None]]


class RuleMaps:
    """The kernel's block rule maps, as the screens need them: each rule dropped 1,200."""

    def __init__(self) -> None:
        self.rules: set[Rule] = set()

    def put(self, rule: Rule) -> None:
        self.rules.add(rule)

    def delete(self, rule: Rule) -> None:
        self.rules.discard(rule)

    def matched(self, rule: Rule) -> int:
        return 1200


def sample_app(
    *, preload: int | None = None, has_db: bool = False, ticks: int = 90, blocking: bool = False
) -> FlowscopeApp:
    """The console over the scenario's first ``ticks`` ticks (the flood from tick 90 when there
    are more than 90), fixed clock, fake reverse DNS; ``blocking``: as with --allow-block, over
    a recorder's block service whose maps are faked and whose clock stands still."""
    source = ScriptedSource(scenario(ticks, flood=ticks > 90), preload=preload, has_db=has_db)
    control = None
    if blocking:
        service = BlockService(
            RuleMaps(), Safety(ssh_client="198.18.7.21"), clock=lambda: 1000.0, wall=lambda: T0
        )
        control = service.handle
    return make_app(
        source, clock=lambda: T0 - 1, lookup=NAMES.get, command_line=command_line, control=control
    )


async def _press(pilot: Pilot[None], *keys: str) -> None:
    await pilot.pause()
    await pilot.press(*keys)
    await pilot.pause()


SCREENS: dict[str, tuple[tuple[str, ...], int | None]] = {
    "live": ((), None),
    "burst": ((), 72),
    "columns": (("right", "right", "right", "right"), None),
    "conversations": (("g", "g", "g"), None),
    "processes": (("G", "G", "G", "G"), None),
    "drops": (("G",), 72),
    "filter-error": (("slash", *"port abc", "enter"), None),
    "detail": (("enter",), None),
    "help": (("question_mark",), None),
    "alerts": (("a",), None),
    "flood": (("F",), 93),
    "block-confirm": (("F", "b"), 93),
    "blocks": (("F", "b", "y", "escape", "B"), 93),
}
"""Screen name -> (keys pressed, ticks delivered (None: all 90))."""
TICKS = {"flood": 94, "block-confirm": 94, "blocks": 94}
"""Screens over more of the scenario than its first 90 ticks (the flood comes after them)."""


def svg_for_png(svg: str) -> str:
    """The SVG with white space preserved (see the module docstring)."""
    return svg.replace("<svg ", '<svg xml:space="preserve" ', 1)


async def shoot(name: str, size: tuple[int, int], dark: bool = True) -> str:
    """The SVG of one screen."""
    keys, preload = SCREENS[name]
    app = sample_app(preload=preload, ticks=TICKS.get(name, 90), blocking=name.startswith("block"))
    async with app.run_test(size=size) as pilot:
        app.theme = "textual-dark" if dark else "textual-light"
        await _press(pilot, *keys)
        await pilot.pause(0.1)
        return app.export_screenshot(title="flowscope live")


HISTORY_SCREENS: dict[str, tuple[str, ...]] = {
    "history": (),
    "history-day": ("3",),
    "history-by-src": ("g",),
}
"""History screen name -> keys pressed (over tests.support.scenario.history_db)."""


async def shoot_history(name: str, size: tuple[int, int], dark: bool, db: Path) -> str:
    """The SVG of one history screen, at the sample database's fixed "now"."""
    from flowscope.ui.history import HistoryApp

    app = HistoryApp(db, now=lambda: HISTORY_NOW)
    async with app.run_test(size=size) as pilot:
        app.theme = "textual-dark" if dark else "textual-light"
        # "2" asks again for the last hour once the layout has its final size: the graph's
        # buckets follow its width, and the first query may run before the size settles
        await _press(pilot, "2")
        await app.workers.wait_for_complete()
        await _press(pilot, *HISTORY_SCREENS[name])
        for _ in range(3):  # the queries run in worker threads; their answers post messages
            await pilot.pause()
            await app.workers.wait_for_complete()
        await pilot.pause(0.1)
        return app.export_screenshot(title="flowscope history")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rsvg = shutil.which("rsvg-convert")
    with tempfile.TemporaryDirectory() as tmp:
        db = history_db(Path(tmp) / "history.db")

        def one(name: str, size: tuple[int, int], dark: bool) -> str:
            if name in HISTORY_SCREENS:
                return asyncio.run(shoot_history(name, size, dark, db))
            return asyncio.run(shoot(name, size, dark))

        _write(out, [*SCREENS, *HISTORY_SCREENS], one, rsvg)
    main_svg = out / "live-160x48.svg"
    shutil.copyfile(main_svg, out / "live.svg")
    if rsvg:
        shutil.copyfile(out / "live-160x48.png", out / "live.png")
    if not rsvg:
        print("rsvg-convert not found: SVG only (apt-get install librsvg2-bin)", file=sys.stderr)


def _write(
    out: Path,
    names: list[str],
    shoot_one: Callable[[str, tuple[int, int], bool], str],
    rsvg: str | None,
) -> None:
    """Each screen at both sizes and in both themes, as SVG (and PNG with rsvg-convert)."""
    for name in names:
        for size in ((80, 24), (160, 48)):
            for dark in (True, False):
                stem = f"{name}-{size[0]}x{size[1]}" + ("" if dark else "-light")
                svg = svg_for_png(shoot_one(name, size, dark))
                (out / f"{stem}.svg").write_text(svg)
                if rsvg:
                    subprocess.run(
                        [rsvg, str(out / f"{stem}.svg"), "-o", str(out / f"{stem}.png")], check=True
                    )
                print(out / stem)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "screenshots"))
