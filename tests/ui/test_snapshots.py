"""SVG snapshots of every live-console screen at 80x24 and 160x48 (pytest-textual-snapshot).
Update them with ``pytest tests/ui/test_snapshots.py --snapshot-update`` after looking."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.screenshots import SCREENS, TICKS, sample_app

SIZES = [(80, 24), (160, 48)]
SNAPPED = [
    "live", "columns", "burst", "filter-error", "detail", "help", "alerts", "processes",
    "drops", "flood", "block-confirm", "blocks",
]  # fmt: skip


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", SNAPPED)
def test_screen(snap_compare: Any, name: str, size: tuple[int, int]) -> None:
    keys, preload = SCREENS[name]
    app = sample_app(preload=preload, ticks=TICKS.get(name, 90), blocking=name.startswith("block"))
    assert snap_compare(app, press=keys, terminal_size=size)
