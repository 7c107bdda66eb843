"""A small history database at fixed times, for the history screen's tests."""

from __future__ import annotations

from pathlib import Path

from flowscope import abi
from flowscope.history.schema import parse_iso
from flowscope.history.store import Store
from flowscope.model import FlowKey, FlowRecord, Sample

NOW = parse_iso("2026-11-22T03:00:00Z")


def _key(src: str, dst: str, sport: int, dport: int, proto: int) -> FlowKey:
    family = abi.AF_INET6 if ":" in src else abi.AF_INET
    return FlowKey(family, src, dst, sport, dport, proto)


# (key, seconds before NOW the record ended, how long it lasted, packets, bytes)
RECORDS: list[tuple[FlowKey, float, float, int, int]] = [
    (_key("10.0.0.1", "192.0.2.10", 40000, 443, 6), 30, 60, 120, 150_000),
    (_key("10.0.0.1", "192.0.2.10", 40000, 443, 6), 1800, 60, 1500, 2_000_000),
    (_key("192.0.2.10", "10.0.0.1", 443, 40000, 6), 60, 60, 40, 30_000),
    (_key("10.0.0.2", "192.0.2.53", 53000, 53, 17), 120, 1, 10, 4_000),
    (_key("10.0.0.2", "192.0.2.53", 53000, 53, 17), 3 * 3600, 30, 9000, 9_000_000),
    (_key("2001:db8::5", "2001:db8::1", 5555, 22, 6), 600, 120, 300, 60_000),
    (_key("10.0.0.4", "192.0.2.10", 0, 8 * 256, 1), 2700, 10, 10, 840),
    (_key("10.0.0.3", "198.51.100.7", 41000, 80, 6), 20 * 3600, 60, 4000, 5_000_000),
]


def make_db(path: Path) -> Path:
    """Write RECORDS (oldest first, one tick each, with a sample) and roll up hourly sums."""
    with Store(path) as store:
        for key, ago, lasted, packets, nbytes in sorted(RECORDS, key=lambda r: -r[1]):
            last = NOW - ago
            record = FlowRecord(
                key,
                "eth0",
                packets,
                nbytes,
                nbytes - 14 * packets,
                last - lasted,
                last,
                0x18,
                "idle",
            )
            # what the kernel's counters would say: the record's packets and bytes, over its
            # lifetime (samples of concurrent records overlap: fine for the graph's sums)
            counters = {"packets": packets, "bytes": nbytes}
            span = max(lasted, 1.0)
            sample = Sample(last, span, nbytes * 8 / span, packets / span, 1, 0, counters)
            store.write_tick([record], sample, [])
        store.rollup()
    return path
