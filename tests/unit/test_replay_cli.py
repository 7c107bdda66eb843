"""The parts of `flowscope replay` that need no kernel: the progress bar's rule, the span the
history screen opens with, and the JSON form of times and records."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from flowscope import abi
from flowscope.cli import replay as cli
from flowscope.collect.replay import iso_us, record_json
from flowscope.model import FlowKey, FlowRecord


def test_progress_bar_only_on_a_terminal_and_for_large_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small, large = tmp_path / "s.pcap", tmp_path / "l.pcap"
    small.write_bytes(b"x" * 100)
    with open(large, "wb") as f:
        f.truncate(cli.PROGRESS_MIN_BYTES)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    with cli._replay_progress(large) as progress:
        assert progress is None

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Tty())
    with cli._replay_progress(small) as progress:
        assert progress is None
    with cli._replay_progress(large) as progress:
        assert progress is not None
        progress(cli.PROGRESS_MIN_BYTES // 2, cli.PROGRESS_MIN_BYTES)


def test_history_span_covers_the_capture() -> None:
    assert cli._history_span(0, 10) == "5m"
    assert cli._history_span(0, 3000) == "1h"
    assert cli._history_span(0, 86400 * 3) == "24h"


def test_json_times_are_utc_with_microseconds() -> None:
    assert iso_us(1_763_780_000.000001) == "2025-11-22T02:53:20.000001Z"
    assert iso_us(1_763_780_000.9999996) == "2025-11-22T02:53:21.000000Z"


def test_record_json_has_the_promised_fields() -> None:
    key = FlowKey(abi.AF_INET6, "2001:db8::1", "2001:db8::2", 0, 0x8000, 58, 7, 2)
    rec = FlowRecord(key, "eth1", 3, 300, 258, 1.5, 2.25, 0, "idle")
    assert record_json(rec) == {
        "iface": "eth1",
        "vlan": 7,
        "src": "2001:db8::1",
        "dst": "2001:db8::2",
        "sport": 0,
        "dport": 0x8000,
        "proto": "icmp6",
        "packets": 3,
        "bytes": 300,
        "ip_bytes": 258,
        "first_seen": "1970-01-01T00:00:01.500000Z",
        "last_seen": "1970-01-01T00:00:02.250000Z",
        "tcp_flags": "........",
        "end_reason": "idle",
    }
