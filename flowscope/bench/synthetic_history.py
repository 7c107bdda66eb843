"""Synthetic history for `flowscope bench`: records as the writer makes them, a database of a
given size, and the time its queries take."""

from __future__ import annotations

import dataclasses
import itertools
import random
import sqlite3
import tempfile
import time
from pathlib import Path

import sqlite_utils

from flowscope import abi
from flowscope.history.files import StoreError, connect_readonly, create_private_file
from flowscope.history.queries import HistoryQuery, history
from flowscope.history.schema import FLOW_COLUMNS_V1, iso_time, migration_1
from flowscope.history.store import Store
from flowscope.model import FlowKey, FlowRecord, Owner
from flowscope.when import parse_when

_V1_COLUMNS = FLOW_COLUMNS_V1
_INSERT_V1 = (
    f"INSERT INTO flows ({', '.join(_V1_COLUMNS)}) VALUES ({', '.join('?' * len(_V1_COLUMNS))})"
)

# --- benchmark hooks (flowscope bench) -----------------------------------------------------


def synthetic_records(
    n: int,
    flows: int = 10_000,
    now: float | None = None,
    span: float = 60.0,
    seed: int = 1,
    *,
    followed: bool = False,
) -> list[FlowRecord]:
    """``n`` FlowRecords over ``flows`` distinct IPv4 flows, in time order over the ``span``
    seconds before ``now`` (as a collector writes them): test and benchmark input.
    ``followed``: each also has a process, TCP health, drops, resets and retransmission kinds,
    as `record` gives a local TCP connection (without, those columns are NULL)."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    out = []
    for i in range(n):
        f = rng.randrange(flows)
        last = now - span + span * i / n
        key = FlowKey(
            family=abi.AF_INET,
            src=f"10.{(f >> 16) & 255}.{(f >> 8) & 255}.{f & 255}",
            dst="192.0.2.1",
            sport=1024 + f % 60000,
            dport=443,
            proto=6,
        )
        pk = rng.randint(1, 1000)
        record = FlowRecord(key, "eth0", pk, pk * 800, pk * 780, last - 30, last, 0x18, "active")
        if followed:
            retrans = f % 5
            record = dataclasses.replace(
                record,
                owner=_OWNERS[f % len(_OWNERS)],
                retrans=retrans,
                retrans_kinds=(retrans, 0, 0),
                rtt_us=200 + f % 5000,
                rtt_min_us=150,
                drops=f % 3,
                drop_reason="NO_SOCKET" if f % 3 else "",
                resets=0,
            )
        out.append(record)
    return out


_OWNERS = [
    Owner(800 + i, name, 33, f"/system.slice/{name}.service")
    for i, name in enumerate(("nginx", "api", "postgres", "redis"))
]


def insert_rate(
    records_n: int = 200_000,
    batch: int = 10_000,
    path: Path | str | None = None,
    flows: int = 50_000,
) -> dict[str, float]:
    """Insert ``records_n`` generated records with write_tick, ``batch`` records per tick (one
    transaction each), into a fresh database (a temporary one unless ``path``). Returns
    ``{"records": n, "seconds": s, "records_per_second": r}``; record generation is not timed."""
    records = synthetic_records(records_n, flows=flows)
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(path) if path is not None else Path(tmp) / "bench.db"
        with Store(db_path) as store:
            t0 = time.perf_counter()
            for i in range(0, records_n, batch):
                store.write_tick(records[i : i + batch], None, [])
            seconds = time.perf_counter() - t0
    return {"records": records_n, "seconds": seconds, "records_per_second": records_n / seconds}


def make_bench_db(
    path: Path | str,
    records: int = 10_000_000,
    flows: int = 20_000,
    span: float = 86_400.0,
    now: float | None = None,
    seed: int = 1,
) -> float:
    """Fill a new database with ``records`` flow records of ``flows`` distinct flows (a skewed
    mix: a few flows carry most bytes, as on real servers), last seen over the ``span``
    seconds before ``now``, evenly in time; flows_hourly is built by the same migration code
    that backfills old files. Plain executemany, indexes after: about a minute for 10 M.
    Returns the seconds it took."""
    t0 = time.perf_counter()
    now = time.time() if now is None else now
    p = Path(path)
    if p.exists():
        raise StoreError(f"{p} exists; make_bench_db fills only a new file")
    create_private_file(p)
    conn = sqlite3.connect(p, isolation_level=None)
    db = sqlite_utils.Database(conn)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    rng = random.Random(seed)
    keys = [
        (
            "eth0",
            "ingress",
            0,
            4,
            f"10.{(f >> 16) & 255}.{(f >> 8) & 255}.{f & 255}",
            "192.0.2.1",
            1024 + f % 60000,
            (443, 80, 53, 22)[f % 4],
            17 if f % 4 == 2 else 6,
        )
        for f in range(flows)
    ]
    # Pareto-like weights: flow i gets weight 1/(i+1).
    cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(flows)))
    conn.execute("BEGIN")
    migration_1(db)  # the version-1 flows table: the later migrations add to it on open
    conn.execute("DROP INDEX idx_flows_last_seen")  # built once, after the rows
    chunk = 200_000
    step = span / records
    for start in range(0, records, chunk):
        n = min(chunk, records - start)
        picks = rng.choices(range(flows), cum_weights=cum, k=n)
        rows = []
        for j, f in enumerate(picks):
            last = now - span + (start + j) * step
            pk = 1 + (f * 7919 + j) % 500
            rows.append(
                (
                    *keys[f],
                    iso_time(last - 30),
                    iso_time(last),
                    pk,
                    pk * 900,
                    pk * 880,
                    0x18,
                    "active",
                )
            )
        conn.executemany(_INSERT_V1, rows)
    conn.execute("CREATE INDEX idx_flows_last_seen ON flows (last_seen)")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("COMMIT")
    conn.close()
    Store(p).close()  # migration 2 builds flows_hourly
    return time.perf_counter() - t0


def history_query_time(
    path: Path | str, top: int = 20, since: str = "24h", group_by: str = "flow", repeat: int = 3
) -> dict[str, float]:
    """Time the `flowscope history --top N --since 24h` query on an existing database: the
    best of ``repeat`` runs, in milliseconds, and the rows it gave."""
    conn = connect_readonly(path)
    try:
        q = HistoryQuery(since=parse_when(since, "--since"), top=top, group_by=group_by)
        best = float("inf")
        rows = 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            rows = len(history(conn, q).rows)
            best = min(best, time.perf_counter() - t0)
    finally:
        conn.close()
    return {"ms": best * 1000, "rows": rows}
