"""Times as an operator types them: ``10m`` (ago), ``now``, ``13:30``, ``yesterday 03:00``,
``2026-11-22``, ``2026-11-22 03:10``, full ISO 8601.

A time without a zone is local time: the TZ environment variable, else the machine's zone
(UTC on most servers); ``utc=True`` (the CLI's ``--utc``) reads it as UTC instead. A time of
day alone is the most recent one that is not in the future (at 02:00, ``03:00`` is yesterday's),
unless ``day_of`` gives the day: in a range, ``2026-11-22T03:00..03:30Z`` ends on the day it
starts. History stores and prints UTC with a ``Z``, so output always says its zone.

Pure functions of the text, ``now`` and the zone; no I/O.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo

from flowscope.errors import UsageError

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
MAX_DURATION = 100 * 365 * 86400.0
"""The longest duration a user may type (a century): anything longer reaches before 1970."""
FIRST_TIME, LAST_TIME = 0.0, 253402300799.0
"""The times history can store: 1970-01-01 to 9999-12-31T23:59:59Z."""

_ZONE_TEXT = r"[zZ]|[+-]\d{2}(?::?\d{2})?"
_ZONE = rf"(?P<zone>{_ZONE_TEXT})?"
_CLOCK = r"(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2}(?:\.\d+)?))?"
_ENDS_IN_CLOCK = re.compile(rf"{_CLOCK}$")
_ENDS_IN_ZONE = re.compile(rf"{_CLOCK}(?P<zone>{_ZONE_TEXT})$")
_TIME_OF_DAY = re.compile(rf"^{_CLOCK}{_ZONE}$")
_DAY_WORD = re.compile(rf"^(?P<day>today|yesterday)(?:[ T]+{_CLOCK}{_ZONE})?$", re.IGNORECASE)
HINT = "use 10m, 2h, 13:30, yesterday 03:00, 2026-11-22 03:10 or 2026-11-22T03:10:00Z"


def parse_duration(text: str, option: str = "--retain") -> float:
    """Seconds from ``30s``, ``10m``, ``2h``, ``7d``, ``1w``, up to a century; anything else
    is a UsageError."""
    m = DURATION_RE.match(text)
    seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()] if m else 0.0
    if not m or not 0 < seconds <= MAX_DURATION:
        raise UsageError(
            f"{option}: {text!r} is not a duration (up to 100 years)",
            "a positive number and a unit: s, m, h, d or w, as in 7d",
        )
    return seconds


Zone = tzinfo | None
"""A zone to read wall-clock times in; None is the machine's own (TZ respected), whose
daylight-saving rules mktime knows for every date."""


def share_zone(first: str, second: str) -> tuple[str, str]:
    """The two ends of a range, a zone written once applying to both, as a reader takes it:
    in ``2026-11-22T03:00..03:30Z`` both times are UTC."""
    m = _ENDS_IN_ZONE.search(second)
    if m and _ENDS_IN_CLOCK.search(first):
        return first + m.group("zone"), second
    m = _ENDS_IN_ZONE.search(first)
    if m and second and _ENDS_IN_CLOCK.search(second):
        return first, second + m.group("zone")
    return first, second


def local_zone(utc: bool = False) -> Zone:
    """The zone a time without one is read in: UTC when asked, else the machine's."""
    if utc:
        return UTC
    time.tzset()  # TZ may have changed since the process started (tests, a wrapper script)
    return None


def parse_when(
    text: str,
    option: str,
    now: float | None = None,
    *,
    utc: bool = False,
    day_of: float | None = None,
) -> float:
    """Unix seconds from what an operator typed (see the module's docstring). ``day_of``:
    a time of day alone falls on the day of this time (in the zone it is read in)."""
    now = time.time() if now is None else now
    raw = text.strip()
    try:
        t = _parse(raw, option, now, utc, day_of)
    except (ValueError, OverflowError) as e:
        raise UsageError(f"{option}: {text!r} is not a time", HINT) from e
    if not FIRST_TIME <= t <= LAST_TIME:
        raise UsageError(
            f"{option}: {text!r} is outside the times history keeps",
            "from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z",
        )
    return t


def _parse(raw: str, option: str, now: float, utc: bool, day_of: float | None) -> float:
    if raw.lower() == "now":
        return now
    if DURATION_RE.match(raw):
        return now - parse_duration(raw, option)
    if m := _TIME_OF_DAY.match(raw):
        zone = _zone(m.group("zone"), utc)
        if day_of is not None:
            return _at(datetime.fromtimestamp(day_of, zone).date(), m, zone)
        today = datetime.fromtimestamp(now, zone).date()
        t = _at(today, m, zone)
        return t if t <= now else _at(today - timedelta(days=1), m, zone)
    if m := _DAY_WORD.match(raw):
        zone = _zone(m.group("zone"), utc)
        day = datetime.fromtimestamp(now, zone).date()
        if m.group("day").lower() == "yesterday":
            day -= timedelta(days=1)
        return _at(day, m, zone) if m.group("hour") else _midnight(day, zone)
    iso = raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw
    dt = datetime.fromisoformat(iso)  # also "2026-11-22" and "2026-11-22 03:10"
    if dt.tzinfo is None:
        return _local(dt, local_zone(utc))
    return dt.timestamp()


def _zone(text: str | None, utc: bool) -> Zone:
    if not text:
        return local_zone(utc)
    if text in ("Z", "z"):
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _at(day: date, m: re.Match[str], zone: Zone) -> float:
    second = float(m.group("second") or 0)
    naive = datetime(day.year, day.month, day.day, int(m.group("hour")), int(m.group("minute")))
    return _local(naive, zone) + second


def _midnight(day: date, zone: Zone) -> float:
    return _local(datetime(day.year, day.month, day.day), zone)


def _local(naive: datetime, zone: Zone) -> float:
    """A wall-clock time in ``zone`` (None: the machine's, through mktime)."""
    if zone is not None:
        return naive.replace(tzinfo=zone).timestamp()
    return naive.timestamp()  # a naive datetime is local time to Python (TZ respected)
