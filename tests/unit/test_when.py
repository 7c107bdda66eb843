"""Times as an operator types them (flowscope.when), in the zone TZ names, against times
computed by hand in UTC."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flowscope import when
from flowscope.errors import UsageError
from flowscope.history.browse import parse_range
from flowscope.history.schema import iso_time, parse_iso

NOW = parse_iso("2026-11-22T12:00:00Z")


@pytest.fixture
def tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's zone is UTC+3 (a POSIX TZ string: no tzdata needed)."""
    monkeypatch.setenv("TZ", "FST-3")
    yield
    monkeypatch.undo()
    when.local_zone()  # tzset() again with the original TZ


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", "2026-11-22T12:00:00.000Z"),
        ("10m", "2026-11-22T11:50:00.000Z"),
        ("13:30", "2026-11-22T10:30:00.000Z"),  # 13:30 at UTC+3, earlier today
        ("16:00", "2026-11-21T13:00:00.000Z"),  # 16:00 local is still to come: yesterday's
        ("13:30:15", "2026-11-22T10:30:15.000Z"),
        ("13:30Z", "2026-11-21T13:30:00.000Z"),  # a zone of its own, still to come today
        ("yesterday 03:00", "2026-11-21T00:00:00.000Z"),
        ("yesterday", "2026-11-20T21:00:00.000Z"),  # local midnight
        ("today", "2026-11-21T21:00:00.000Z"),
        ("2026-11-22", "2026-11-21T21:00:00.000Z"),
        ("2026-11-22 03:10", "2026-11-22T00:10:00.000Z"),
        ("2026-11-22T03:10", "2026-11-22T00:10:00.000Z"),
        ("2026-11-22T03:10:00Z", "2026-11-22T03:10:00.000Z"),
        ("2026-11-22T03:10:00+01:00", "2026-11-22T02:10:00.000Z"),
    ],
)
def test_times_without_a_zone_are_local(tz: None, text: str, expected: str) -> None:
    assert iso_time(when.parse_when(text, "--since", NOW)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("13:30", "2026-11-21T13:30:00.000Z"),
        ("11:30", "2026-11-22T11:30:00.000Z"),
        ("yesterday 03:00", "2026-11-21T03:00:00.000Z"),
        ("2026-11-22 03:10", "2026-11-22T03:10:00.000Z"),
    ],
)
def test_utc_reads_them_as_utc(tz: None, text: str, expected: str) -> None:
    assert iso_time(when.parse_when(text, "--since", NOW, utc=True)) == expected


def test_daylight_saving_time_of_that_date_not_of_today(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
    try:
        summer = when.parse_when("2026-07-01 12:00", "--since", NOW)
        winter = when.parse_when("2026-11-22 12:00", "--since", NOW)
    finally:
        monkeypatch.undo()
        when.local_zone()
    assert iso_time(summer) == "2026-07-01T10:00:00.000Z"
    assert iso_time(winter) == "2026-11-22T11:00:00.000Z"


@pytest.mark.parametrize("bad", ["25:00", "13:60", "last tuesday", "yesterday 3", "2026-13-01"])
def test_bad_times_are_one_usage_error_naming_the_option(tz: None, bad: str) -> None:
    with pytest.raises(UsageError, match=f"--since: {bad!r} is not a time") as e:
        when.parse_when(bad, "--since", NOW)
    assert e.value.exit_code == 2


def test_the_range_box_accepts_its_own_example_and_local_ranges(tz: None) -> None:
    from flowscope.ui.history import RANGE_EXAMPLE

    r = parse_range(RANGE_EXAMPLE.split(" | ")[-1], NOW)
    assert r.until - r.since == 30 * 60
    r = parse_range("2026-11-22T03:00Z..03:30Z", NOW)
    assert (iso_time(r.since), iso_time(r.until)) == (
        "2026-11-22T03:00:00.000Z",
        "2026-11-22T03:30:00.000Z",
    )
    r = parse_range("2026-11-22T03:00..03:30", NOW)  # local, on the day it starts
    assert (iso_time(r.since), iso_time(r.until)) == (
        "2026-11-22T00:00:00.000Z",
        "2026-11-22T00:30:00.000Z",
    )
    r = parse_range("yesterday 03:00", NOW)  # one time, not a range split at the space
    assert (iso_time(r.since), r.until) == ("2026-11-21T00:00:00.000Z", NOW)
    r = parse_range("13:00 to 13:30", NOW)
    assert (iso_time(r.since), iso_time(r.until)) == (
        "2026-11-22T10:00:00.000Z",
        "2026-11-22T10:30:00.000Z",
    )
