"""Watch the interfaces flowscope is attached to: down, up again, gone.

An interface can go down (a cable, `ip link set down`, a peer veth gone) or disappear (a
container's veth deleted) while flowscope records. The program stays attached to a device that
is down and counts again when it comes back; a deleted device takes the attachment with it,
and a new device of the same name is another device (another ifindex) that flowscope did not
attach to. Either way the flows counted so far stay in the maps and in history, and the other
interfaces go on: this module only tells the operator, once per change.

Read from /sys/class/net, which costs a few small reads per interface per tick.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

SYS_NET = Path("/sys/class/net")
UP_STATES = frozenset({"up", "unknown"})
"""operstate values of a device that passes packets (``unknown``: drivers that do not say,
such as loopback-like devices, count as up)."""


def link_state(name: str, ifindex: int, root: Path = SYS_NET) -> str:
    """'up', 'down', or 'gone' (no such device, or another device of that name now)."""
    base = root / name
    try:
        index = int((base / "ifindex").read_text())
        operstate = (base / "operstate").read_text().strip()
    except (OSError, ValueError):
        return "gone"
    if index != ifindex:
        return "gone"
    return "up" if operstate in UP_STATES else "down"


class LinkWatch:
    """The state of each watched interface; ``changes()`` says what changed since the last
    call, in words for a status line or a log."""

    def __init__(self, indexes: Mapping[str, int], root: Path = SYS_NET) -> None:
        self.indexes = dict(indexes)
        self.root = root
        self.states = {name: link_state(name, i, root) for name, i in self.indexes.items()}

    def changes(self) -> list[str]:
        out = []
        for name, index in self.indexes.items():
            state = link_state(name, index, self.root)
            before = self.states[name]
            if state == before or before == "gone":
                continue  # a device that went is not ours again, whatever takes its name
            self.states[name] = state
            out.append(_say(name, state))
        return out

    @property
    def watching(self) -> list[str]:
        """The interfaces still there (up or down)."""
        return [n for n, s in self.states.items() if s != "gone"]


def _say(name: str, state: str) -> str:
    if state == "up":
        return f"{name} is up again: counting goes on"
    if state == "down":
        return f"{name} went down: nothing to count until it comes back (its flows are kept)"
    return (
        f"{name} disappeared: flowscope no longer sees it (its flows so far are kept; the "
        "other interfaces go on)"
    )
