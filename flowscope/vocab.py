"""The words live and history share: groupings, directions, ports, protocols, units, times
and how a too-long text is cut. The console, the CLI's tables and JSON/CSV all say a thing the
way this module does; if two screens show the same thing two ways, one of them is a bug.

No numpy, no textual: `flowscope --help` and the headless commands import it cheaply.
"""

from __future__ import annotations

import functools
import pwd
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowscope.model import Owner

GROUPINGS: dict[str, str] = {
    "flow": "flow",
    "src": "source host",
    "dst": "destination host",
    "pair": "conversation",
    "dport": "destination port",
    "proto": "protocol",
    "sport": "source port",
    "iface": "interface",
    "vlan": "VLAN",
    "process": "process",
    "user": "user",
    "container": "container",
    "drop_reason": "drop reason",
}
"""What flows can be summed by, live and in history, in the order `g` cycles through them,
with their labels. Ports are summed per protocol and direction: received on our port 443 is a
service of ours, sent to a peer's 50412 is its client port (↓tcp 443, ↑tcp 50412). Process,
user and container are those of the flow's local socket (collect.owners); flows without one
(forwarded, or not known) are one group, ``-``. A drop reason is the kernel's for most of a
flow's drops (collect.drops); flows without drops are one group, ``-``."""


DIRECTION_MARKS: dict[int | str, str] = {0: "↓", 1: "↑", "ingress": "↓", "egress": "↑"}
"""Before a protocol: received (ingress) or sent (egress), in every table."""
ICMP = (1, 58)


def port_text(port: int, proto: int | None) -> str:
    """A port as every table writes it: the number, or ``type/code`` for ICMP and ICMPv6
    (whose flows carry type * 256 + code as destination port)."""
    if proto in ICMP:
        return f"{port >> 8}/{port & 0xFF}"
    return str(port)


def endpoint(addr: str, port: int, proto: int | None = None) -> str:
    """``10.0.0.1:443``, ``[2001:db8::1]:443``, ``10.0.0.1:8/0`` (ICMP echo request)."""
    text = port_text(port, proto)
    return f"[{addr}]:{text}" if ":" in addr else f"{addr}:{text}"


def proto_text(proto: int, direction: int | str | None = None) -> str:
    """``↓tcp``: the protocol's name after its direction's mark (none when unknown)."""
    from flowscope.model import proto_name

    mark = DIRECTION_MARKS.get(direction, "") if direction is not None else ""
    return mark + proto_name(proto)


def time_of_day(iso: str, day: bool = False) -> str:
    """``03:10:05`` (``11-22 03:10``: with the day) from history's
    ``2026-11-22T03:10:05.123Z``, UTC as the table's title says."""
    return f"{iso[5:10]} {iso[11:16]}" if day else iso[11:19]


def printable(text: str) -> str:
    """``text`` with every control character (a newline, an escape sequence from a user's
    input, a capture's interface name or a database value) written as its escape: one line,
    and nothing a terminal obeys."""
    return "".join(
        c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text
    )


def human(value: float, unit: str = "", base: float = 1000.0) -> str:
    """``1234567`` -> ``1.2 M`` + unit: three significant figures at most, SI prefixes."""
    for prefix in ("", "k", "M", "G", "T", "P"):
        if abs(value) < base or prefix == "P":
            if prefix == "":
                text = f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
            else:
                text = f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
            return f"{text} {prefix}{unit}".rstrip()
        value /= base
    raise AssertionError("unreachable")


def human_bytes(n: float) -> str:
    """Bytes in SI units: ``1.2 MB``."""
    return human(n, "B")


def size_text(n: float) -> str:
    """Bytes in powers of 1024, as --map-memory and the kernel's memlock count them:
    ``25.5 MiB``, ``133.1 KiB``, ``1.5 GiB``."""
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}"
    raise AssertionError("unreachable")


MAP_HIGH_WATER = 0.9
"""The share of a flow map past which the collector evicts the oldest flows early; the status
lines warn from there."""


def human_rate(bps: float) -> str:
    """Bits per second: ``3.4 Mb/s``."""
    return human(bps, "b/s")


def compact(value: float) -> str:
    """A count in at most five characters: ``47.9M``, ``812k``, ``12``."""
    return human(value).replace(" ", "")


def rtt_text(us: int) -> str:
    """A round-trip time in at most seven characters, as ss and ping show it: ``850us``,
    ``12.4ms``, ``1.20s``."""
    if us < 1000:
        return f"{us}us"
    if us < 100_000:
        return f"{us / 1000:.1f}ms"
    if us < 1_000_000:
        return f"{us // 1000}ms"
    return f"{us / 1e6:.2f}s"


def age_text(seconds: float) -> str:
    """``42s``, ``3m05``, ``2h10``, ``3d04``: the age of a flow, in five characters at most."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}"
    return f"{s // 86400}d{s % 86400 // 3600:02d}"


def clip(text: str, width: int) -> str:
    """Cut the middle out of a too-long text (addresses and names keep both ends)."""
    if len(text) <= width:
        return text
    if width < 4:
        return text[:width]
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def clip_column(texts: Sequence[str], width: int) -> list[str]:
    """Each text clipped to ``width`` (``clip``), except that texts that would then look the
    same (four IPv6 hosts of one /64 are ``2001:db…::2`` alike) show, between ``…`` marks,
    the part where they differ instead: rows that are different hosts never read the same."""
    out = [clip(t, width) for t in texts]
    if width < 4:
        return out
    # Two collision groups can each be separated into windows that then read the same as
    # the other's (::1 and ::2 of two /64s that differ inside the window): separate again
    # what collides now, until nothing does.
    for _ in range(8):
        _separate(texts, out, range(len(texts)), 0, width)
        seen: dict[str, str] = {}
        if all(seen.setdefault(o, t) == t for o, t in zip(out, texts, strict=True)):
            break
    return out


def _separate(
    texts: Sequence[str], out: list[str], indexes: Iterable[int], start: int, width: int
) -> None:
    """Re-clip, in place, the texts of ``indexes`` whose clipped forms collide; each collision
    group shows the window just before the first character its members do not all share,
    from ``start`` on, and groups that agree on that window too are separated further on."""
    groups: dict[str, list[int]] = {}
    for i in indexes:
        groups.setdefault(out[i], []).append(i)
    for members in groups.values():
        distinct = {texts[i] for i in members}
        if len(distinct) < 2:
            continue
        lo, hi = min(distinct), max(distinct)  # the common prefix of all is theirs
        common = next((k for k, (a, b) in enumerate(zip(lo, hi, strict=False)) if a != b), len(lo))
        longest = max(len(t) for t in distinct)
        window = width - 2  # "…" on both sides
        begin = max(start, common - window // 2, 0)
        if begin + window >= longest - 1:  # the rest fits after one "…": show the end whole
            begin, window = max(longest - (width - 1), 0), width - 1
        for i in members:
            t = texts[i]
            part = t[begin : begin + window]
            head = "…" if begin > 0 else ""
            tail = "…" if begin + window < len(t) else ""
            out[i] = head + part + tail
        if begin + window < longest:
            _separate(texts, out, members, begin + window, width)


def owner_text(owner: Owner | None, key: str) -> str:
    """What the table shows of an owner in a process, user or container column."""
    if owner is None:
        return "-"
    if key == "process":
        return owner.label
    if key == "user":
        return user_name(owner.uid)
    return owner.container or "-"


@functools.lru_cache(maxsize=4096)
def user_name(uid: int) -> str:
    """A uid's name on this host (as ps and htop show it), or the number when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
