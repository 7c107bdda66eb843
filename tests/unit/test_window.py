"""Window semantics: a record's packets and bytes spread evenly over its interval, every range
counting only its share, in whole numbers that add up exactly (flowscope/history/window.py).

Properties over random records and random cuts: the shares of ranges that tile a record are
the record; SQL (history) and numpy (the graph) give the same shares; the hourly sums and the
record-by-record sums of history agree for any range; no graph bucket holds more than the
records could have sent in it."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowscope import abi
from flowscope.history import files, queries, schema, store, window
from flowscope.model import FlowKey, FlowRecord

BASE = 1_794_999_600_000  # ms, on an hour boundary
records_st = st.lists(
    st.tuples(
        st.integers(0, 10**9),  # packets or bytes
        st.integers(0, 20_000_000),  # first, ms after BASE
        st.integers(0, 8_000_000),  # duration, ms (up to a bit over two hours)
    ),
    min_size=1,
    max_size=30,
)


def _arrays(recs: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = np.array([r[0] for r in recs], np.int64)
    f = np.array([BASE + r[1] for r in recs], np.int64)
    la = f + np.array([r[2] for r in recs], np.int64)
    return v, f, la


@given(recs=records_st, cuts=st.lists(st.integers(-1_000_000, 30_000_000), max_size=12))
def test_shares_of_ranges_that_tile_a_record_add_up_to_it(
    recs: list[tuple[int, int, int]], cuts: list[int]
) -> None:
    v, f, la = _arrays(recs)
    edges = sorted({BASE - 2_000_000, BASE + 40_000_000, *(BASE + c for c in cuts)})
    total = np.zeros(len(v), np.int64)
    for lo, hi in itertools.pairwise(edges):
        share = window.cumulative(v, f, la, np.full(len(v), hi)) - window.cumulative(
            v, f, la, np.full(len(v), lo)
        )
        assert (share >= 0).all()
        total += share
    assert (total == v).all()


@given(recs=records_st, lo=st.integers(-1_000_000, 30_000_000), width=st.integers(1, 9_000_000))
def test_sql_and_numpy_give_the_same_share(
    recs: list[tuple[int, int, int]], lo: int, width: int
) -> None:
    v, f, la = _arrays(recs)
    since, until = BASE + lo, BASE + lo + width
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE r (v INTEGER, f INTEGER, l INTEGER)")
    rows = zip(v.tolist(), f.tolist(), la.tolist(), strict=True)
    conn.executemany("INSERT INTO r VALUES (?, ?, ?)", rows)
    sql = [
        row[0]
        for row in conn.execute(f"SELECT {window.share_sql('v', 'f', 'l', since, until)} FROM r")
    ]
    want = window.cumulative(v, f, la, np.full(len(v), until)) - window.cumulative(
        v, f, la, np.full(len(v), since)
    )
    assert sql == want.tolist()


@given(
    recs=records_st,
    start=st.integers(-2_000_000, 20_000_000),
    step=st.sampled_from([1000, 10_000, 60_000, 3_600_000]),
    n=st.integers(1, 120),
)
def test_graph_buckets_are_the_shares_of_their_ranges(
    recs: list[tuple[int, int, int]], start: int, step: int, n: int
) -> None:
    v, f, la = _arrays(recs)
    since = BASE + start
    got = window.spread(v, f, la, since, step, n)
    for b in (0, n // 2, n - 1):
        lo, hi = since + b * step, since + (b + 1) * step
        share = window.cumulative(v, f, la, np.full(len(v), hi)) - window.cumulative(
            v, f, la, np.full(len(v), lo)
        )
        assert got[b] == share.sum()
    # no bucket holds more than the records' rate allows (plus one for the rounding of each)
    rate_bound = np.where(la > f, v / np.maximum(la - f, 1), v)
    assert (got <= np.ceil(rate_bound.sum() * step) + len(v)).all()


def _rec(i: int, packets: int, first_ms: int, last_ms: int) -> FlowRecord:
    """Record i; every third one's flow is not a followed connection (retrans and drops -1:
    NULL in history), the others retransmitted and lost a share of their packets."""
    key = FlowKey(abi.AF_INET, f"198.18.0.{i % 5 + 1}", "198.19.0.1", 1000 + i % 7, 443, 6)
    followed = i % 3 != 0
    return FlowRecord(
        key, "veth0", packets, packets * 1000, packets * 980, first_ms / 1000, last_ms / 1000, 0,
        "active", retrans=packets // 7 if followed else -1, drops=packets // 5 if followed else -1,
        drop_reason="NO_SOCKET" if followed and packets >= 5 else "",
    )  # fmt: skip


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    recs=st.lists(
        st.tuples(st.integers(1, 10**6), st.integers(0, 30 * 3_600_000), st.integers(0, 7_200_000)),
        min_size=1,
        max_size=40,
    ),
    roll_after=st.integers(0, 40),
    since=st.integers(-3_600_000, 30 * 3_600_000),
    width=st.integers(3 * 3_600_000, 20 * 3_600_000),
    group_by=st.sampled_from(["flow", "src", "dport"]),
)
def test_hourly_sums_and_every_record_agree_on_any_range(
    tmp_path_factory: pytest.TempPathFactory,
    recs: list[tuple[int, int, int]],
    roll_after: int,
    since: int,
    width: int,
    group_by: str,
) -> None:
    """A long range reads whole hours from flows_hourly (only what was rolled up) and the rest
    from flows; the totals are the record-by-record ones, and a range that covers everything
    counts every packet."""
    db = tmp_path_factory.mktemp("w") / "flows.db"
    with store.Store(db) as s:
        for i, (p, f, d) in enumerate(recs):
            s.write_tick([_rec(i, p, BASE + f, BASE + f + d)], None, [])
            if i + 1 == roll_after:
                s.rollup()
    conn = files.connect_readonly(db)
    try:
        lo, hi = (BASE + since) / 1000, (BASE + since + width) / 1000
        for top in (None, 3):
            q = queries.HistoryQuery(since=lo, until=hi, top=top, group_by=group_by)
            fast = queries.history(conn, q, now=hi).rows
            q_exact = queries.HistoryQuery(
                since=lo, until=hi, top=top, group_by=group_by, exact=True
            )
            exact = queries.history(conn, q_exact, now=hi).rows
            counts = ("packets", "bytes", "records", "retrans", "drops")
            assert [tuple(r[c] for c in counts) for r in fast] == [
                tuple(r[c] for c in counts) for r in exact
            ]
        everything = queries.history(
            conn, queries.HistoryQuery(top=None), now=(BASE + 40 * 3_600_000) / 1000
        ).rows
        assert sum(r["packets"] for r in everything) == sum(p for p, _, _ in recs)
        # retransmissions and drops: every one counted, where followed; NULL (not 0) for a
        # group whose records were none of them followed
        assert sum(r["retrans"] or 0 for r in everything) == sum(
            p // 7 for i, (p, _, _) in enumerate(recs) if i % 3
        )
        assert sum(r["drops"] or 0 for r in everything) == sum(
            p // 5 for i, (p, _, _) in enumerate(recs) if i % 3
        )
        followed = {_rec(i, 1, 0, 0).key for i in range(len(recs)) if i % 3}
        for r in everything:
            key = FlowKey(abi.AF_INET, r["src"], r["dst"], r["sport"], r["dport"], 6)
            assert (r["retrans"] is None) == (key not in followed), r
    finally:
        conn.close()


def test_a_record_in_an_old_database_is_spread_after_the_upgrade(tmp_path: Path) -> None:
    """Migration 6 rebuilds flows_hourly with shares: a record across an hour boundary is in
    both hours, half each."""
    db = tmp_path / "flows.db"
    with store.Store(db) as s:
        s.write_tick([_rec(0, 3600, BASE - 1_800_000, BASE + 1_800_000)], None, [])
        s.rollup()
        rows = s.conn.execute("SELECT hour, packets, records FROM flows_hourly ORDER BY hour")
        assert [r[1:] for r in rows] == [(1800, 0), (1800, 1)]


@given(ms=st.integers(0, 253402300799999))
def test_ms_sql_reads_back_every_stored_millisecond(ms: int) -> None:
    """julianday() is a double: rounding must still give the exact stored millisecond, for
    any time history can hold (1970 to 9999)."""
    conn = sqlite3.connect(":memory:")
    text = schema.iso_time(ms / 1000)
    (got,) = conn.execute(f"SELECT {window.ms_sql('?')}", (text,)).fetchone()
    assert got == ms, text
