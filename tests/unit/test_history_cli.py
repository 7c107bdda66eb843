"""`flowscope history` and `flowscope sql` through click's CliRunner, on a database written
with known records: exact sums, grouping, top-N, time ranges, filters, output formats and
the one-line errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowscope import abi
from flowscope.cli import main
from flowscope.history import queries, schema, store
from flowscope.model import FlowKey, FlowRecord

H = 3600.0
NOW = 1_795_000_000.0 - 1_795_000_000.0 % H + 0.5 * H  # half past an hour
IP = "10.0.0.1"


def rec(src, dst, sport, dport, proto, packets, nbytes, first, last, iface="eth0", vlan=0):
    key = FlowKey(abi.AF_INET, src, dst, sport, dport, proto, vlan=vlan)
    return FlowRecord(key, iface, packets, nbytes, nbytes - 20 * packets, first, last, 0, "idle")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Flow A (tcp 443) has two records (an active timeout) 10 min ago; flow B (its reply)
    one; flow C (udp 53) one 2 h ago; flow D (tcp 22, another interface) one 2 days ago."""
    path = tmp_path / "flows.db"
    t = NOW - 600
    with store.Store(path) as s:
        s.write_tick(
            [
                rec(IP, "10.0.0.2", 40000, 443, 6, 10, 5000, t - 60, t),
                rec("10.0.0.2", IP, 443, 40000, 6, 8, 20000, t - 60, t),
            ],
            None,
            [],
        )
        s.write_tick([rec(IP, "10.0.0.2", 40000, 443, 6, 5, 2500, t, t + 60)], None, [])
        s.write_tick(
            [rec(IP, "10.0.0.3", 5353, 53, 17, 2, 300, NOW - 2 * H, NOW - 2 * H + 1)], None, []
        )
        s.write_tick(
            [
                rec(
                    "10.0.0.9",
                    IP,
                    50000,
                    22,
                    6,
                    100,
                    90000,
                    NOW - 2 * 86400,
                    NOW - 2 * 86400 + 5,
                    iface="eth1",
                    vlan=7,
                )
            ],
            None,
            [],
        )
        s.rollup()
    return path


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def history_json(db: Path, *args: str) -> list[dict]:
    from unittest import mock

    with mock.patch("flowscope.cli.history.time.time", return_value=NOW):
        code, out, err = run("history", "--db", str(db), "--format", "json", *args)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_flow_records_of_one_flow_are_summed(db: Path) -> None:
    rows = history_json(db, "--since", "30m")
    assert [(r["src"], r["dport"], r["packets"], r["bytes"], r["records"]) for r in rows] == [
        ("10.0.0.2", 40000, 8, 20000, 1),
        (IP, 443, 15, 7500, 2),
    ]
    a = rows[1]
    assert a | {"bps": 0} == {
        "src": IP,
        "dst": "10.0.0.2",
        "sport": 40000,
        "dport": 443,
        "proto": "tcp",
        "direction": "ingress",
        "iface": "eth0",
        "vlan": 0,
        "packets": 15,
        "bytes": 7500,
        "ip_bytes": 7500 - 20 * 15,
        "records": 2,
        "retrans": None,
        "drops": None,
        "first_seen": schema.iso_time(NOW - 660),
        "last_seen": schema.iso_time(NOW - 540),
        "bps": 0,
    }
    # over the 120 s the flow was active in the range, not the whole 30 min
    assert a["bps"] == pytest.approx(7500 * 8 / 120)


def test_ranges_select_records_that_overlap_them(db: Path) -> None:
    assert len(history_json(db, "--since", "3h")) == 3
    assert len(history_json(db, "--since", "3h", "--exact")) == 3
    assert {r["dport"] for r in history_json(db, "--since", "3h", "--until", "1h")} == {53}
    # a range inside flow A's second record (first_seen NOW-600, last NOW-540, 2500 bytes):
    # the 20 s of its 60 s that fall in the range, a third of its bytes
    rows = history_json(db, "--since", "570s", "--until", "550s")
    assert [(r["dport"], r["bytes"]) for r in rows] == [(443, 833)]
    iso = schema.iso_time(NOW - 2 * 86400 - 10)
    assert [r["dport"] for r in history_json(db, "--since", iso, "--until", "1d")] == [22]
    assert len(history_json(db)) == 4  # no --since: everything


def test_long_ranges_from_hourly_sums_equal_reading_every_record(db: Path) -> None:
    for grouping in ("flow", "src", "pair", "dport"):
        fast = history_json(db, "--since", "7d", "--group-by", grouping, "--top", "0")
        exact = history_json(db, "--since", "7d", "--group-by", grouping, "--top", "0", "--exact")
        strip = [{k: v for k, v in r.items() if k != "bps"} for r in fast]
        assert strip == [{k: v for k, v in r.items() if k != "bps"} for r in exact], grouping


def test_top_n_and_ranking(db: Path) -> None:
    rows = history_json(db, "--top", "2")
    assert [r["bytes"] for r in rows] == [90000, 20000]
    by_packets = history_json(db, "--by", "packets")
    assert [r["packets"] for r in by_packets] == [100, 15, 8, 2]
    by_flows = history_json(db, "--by", "flows", "--top", "1")
    assert by_flows[0]["records"] == 2


def test_groupings(db: Path) -> None:
    pair = history_json(db, "--since", "1h", "--group-by", "pair")
    assert pair == [
        {
            "host_a": IP,
            "host_b": "10.0.0.2",
            "packets": 23,
            "bytes": 27500,
            "ip_bytes": 27500 - 20 * 23,
            "records": 3,
            "retrans": None,
            "drops": None,
            "first_seen": schema.iso_time(NOW - 660),
            "last_seen": schema.iso_time(NOW - 540),
            "bps": pytest.approx(27500 * 8 / 120),  # over the 2 minutes it was active
        }
    ]
    src = history_json(db, "--group-by", "src")
    assert [(r["src"], r["bytes"]) for r in src] == [
        ("10.0.0.9", 90000),
        ("10.0.0.2", 20000),
        (IP, 7800),
    ]
    proto = history_json(db, "--group-by", "proto")
    assert [(r["proto"], r["packets"]) for r in proto] == [("tcp", 123), ("udp", 2)]
    vlan = history_json(db, "--group-by", "vlan")
    assert [(r["vlan"], r["records"]) for r in vlan] == [(7, 1), (0, 4)]
    iface = history_json(db, "--group-by", "iface")
    assert [(r["iface"], r["bytes"]) for r in iface] == [("eth1", 90000), ("eth0", 27800)]
    dport = history_json(db, "--group-by", "dport", "--by", "packets")
    assert [(r["dport"], r["proto"]) for r in dport][:2] == [(22, "tcp"), (443, "tcp")]


def test_filters_select_flows(db: Path) -> None:
    rows = history_json(db, "--filter", "dport 443 and proto tcp")
    assert [(r["src"], r["bytes"]) for r in rows] == [(IP, 7500)]
    rows = history_json(db, "--since", "7d", "--filter", "src net 10.0.0.0/30 and not port 443")
    assert [r["dport"] for r in rows] == [53]
    # a per-record condition reads the records themselves
    rows = history_json(db, "--since", "7d", "--filter", "bytes > 4000 and dport 443")
    assert [(r["bytes"], r["records"]) for r in rows] == [(5000, 1)]
    assert history_json(db, "--filter", "vlan 7 and iface eth1")[0]["dport"] == 22


def test_filter_syntax_error_is_one_line_exit_2(db: Path) -> None:
    code, out, err = run("history", "--db", str(db), "--filter", "dport 443 and")
    assert code == 2 and out == ""
    assert err.startswith("flowscope: error: column ") and err.count("\n") == 1


def test_a_drop_reason_this_kernel_lacks_is_one_line_exit_2(db: Path) -> None:
    code, out, err = run("history", "--db", str(db), "--filter", "drop reason NO_SOKCET")
    assert code == 2 and out == ""
    assert err == (
        "flowscope: error: column 13: expected a drop reason this kernel has "
        "(did you mean NO_SOCKET?), found 'NO_SOKCET'\n"
    )
    assert run("history", "--db", str(db), "--filter", "drop reason no_socket")[0] == 0


def test_csv_has_a_header_and_the_sums(db: Path) -> None:
    code, out, _ = run("history", "--db", str(db), "--format", "csv", "--group-by", "dport")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert table[0].keys() >= {"dport", "proto", "packets", "bytes", "records", "bps"}
    assert [(r["dport"], r["bytes"]) for r in table] == [
        ("22", "90000"),
        ("40000", "20000"),
        ("443", "7500"),
        ("53", "300"),
    ]


def test_table_has_human_units_first_last_and_direction(db: Path) -> None:
    code, out, _ = run("history", "--db", str(db))
    assert code == 0
    assert "10.0.0.9:50000" in out and "90.0 kB" in out and "b/s" in out
    assert "eth1.7" in out  # interface and VLAN shown when rows differ in them
    header = next(line for line in out.splitlines() if line.startswith("proto"))
    assert header.split()[:3] == ["proto", "source", "destination"]
    assert "first" in header.split() and "last" in header.split()
    row = next(line for line in out.splitlines() if "10.0.0.2:443" in line.split()[1:2])
    assert row.split()[0] == "↑tcp" or row.split()[0] == "↓tcp"
    assert "times UTC" in out.splitlines()[0]


def test_on_an_80_column_terminal_the_table_leaves_out_columns_before_folding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flowscope.cli import output

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "80")
    out = Terminal()
    columns = ["proto", "source", "destination", "first", "last", "pkts", "bytes", "rate", "recs"]
    row = ["↓tcp", "198.18.7.21:50412", "198.18.0.10:443", "11:06:40", "12:05:40", "6.0 M",
           "7.2 GB", "16.3 Mb/s", "59"]  # fmt: skip
    output.write_table(columns, [row] * 3, droppable=("recs", "first", "last"), out=out)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in out.getvalue().splitlines()]
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert "recs" not in lines[0] and "first" not in lines[0] and "last" in lines[0]
    assert all("198.18.7.21:50412" in line for line in lines[1:])  # not folded


def test_missing_database_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    for cmd in (["history"], ["sql", "SELECT 1"]):
        code, _, err = run(cmd[0], "--db", str(missing), *cmd[1:])
        assert code == 2
        assert (
            err == f"flowscope: error: no history database at {missing} "
            "(record first, or pass --db PATH)\n"
        )
    assert not missing.exists()


@pytest.mark.parametrize("bad", ["last tuesday", "10x", "2026-13-01", "25:00"])
def test_bad_since_names_the_value(db: Path, bad: str) -> None:
    code, _, err = run("history", "--db", str(db), "--since", bad)
    assert code == 2 and f"--since: {bad!r}" in err and err.count("\n") == 1


def test_sql_prints_json_csv_and_table(db: Path) -> None:
    q = "SELECT dport, sum(bytes) AS b FROM flows GROUP BY dport ORDER BY b DESC LIMIT 2"
    code, out, _ = run("sql", "--db", str(db), "--format", "json", q)
    assert code == 0
    assert [json.loads(x) for x in out.splitlines()] == [
        {"dport": 22, "b": 90000},
        {"dport": 40000, "b": 20000},
    ]
    code, out, _ = run("sql", "--db", str(db), "--format", "csv", q)
    assert out.splitlines() == ["dport,b", "22,90000", "40000,20000"]
    code, out, _ = run("sql", "--db", str(db), "PRAGMA table_info(flows)")
    assert code == 0 and "last_seen" in out


@pytest.mark.parametrize(
    ("query", "word"),
    [
        ("DELETE FROM flows", "DELETE"),
        ("DROP TABLE flows", "DROP"),
        ("INSERT INTO samples (time) VALUES ('x')", "INSERT"),
        ("UPDATE flows SET bytes = 1", "UPDATE"),
        ("ATTACH DATABASE ':memory:' AS m", "ATTACH"),
        ("PRAGMA writable_schema=1", "PRAGMA writable_schema=1"),
    ],
)
def test_sql_refuses_writes_with_one_line(db: Path, query: str, word: str) -> None:
    code, out, err = run("sql", "--db", str(db), query)
    assert (code, out) == (2, "")
    assert err == f"flowscope: error: sql: only reading is allowed ({word} refused)\n"
    code, out, _ = run("sql", "--db", str(db), "--format", "csv", "SELECT count(*) FROM flows")
    assert out.splitlines()[1] == "5"


def test_sql_syntax_error_is_one_line(db: Path) -> None:
    code, _, err = run("sql", "--db", str(db), "SELECT FROM WHERE")
    assert code == 2 and err.startswith("flowscope: error: sql: near ") and err.count("\n") == 1


def test_history_and_sql_never_import_textual(db: Path) -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from flowscope.cli import main\n"
        f"r = CliRunner().invoke(main, ['history', '--db', {str(db)!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        f"r = CliRunner().invoke(main, ['sql', '--db', {str(db)!r}, 'SELECT 1'])\n"
        "assert r.exit_code == 0, r.output\n"
        "import flowscope.history.writer\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'bcc', 'pyroute2')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ipv6_endpoints_print_as_written(tmp_path: Path) -> None:
    """Brackets around IPv6 addresses are text, not table markup: `[2001:db8::1]:443` must
    reach the terminal whole (it once vanished as an unknown style tag)."""
    path = tmp_path / "v6.db"
    key = FlowKey(abi.AF_INET6, "2001:db8::1", "2001:db8::2", 443, 51000, 6)
    with store.Store(path) as s:
        s.write_tick(
            [FlowRecord(key, "eth0", 3, 300, 240, NOW - 60, NOW - 30, 0, "idle")], None, []
        )
    since, until = schema.iso_time(NOW - 600), schema.iso_time(NOW)
    code, out, _ = run("history", "--db", str(path), "--since", since, "--until", until)
    assert code == 0
    assert "[2001:db8::1]:443" in out and "[2001:db8::2]:51000" in out
    code, out, _ = run("sql", "--db", str(path), "SELECT '[x]' AS tag, src FROM flows")
    assert code == 0 and "[x]" in out and "2001:db8::1" in out


@pytest.fixture
def day_db(tmp_path: Path) -> Path:
    """30 hours of records of 400 flows between 40 sources and 10 destinations: a few flows
    carry most bytes (as on servers), many byte counts tie, every hour has 60 short bursts,
    and the last ticks are not rolled up yet."""
    rng = random.Random(7)
    path = tmp_path / "day.db"
    flows = [
        (f"10.0.0.{i % 40}", f"10.1.0.{i % 10}", 1024 + i, (443, 53, 22, 80)[i % 4])
        for i in range(400)
    ]
    with store.Store(path) as s:
        for tick in range(30 * 12):  # one tick every 5 minutes
            t = NOW - 30 * H + tick * 300
            batch = []
            for _ in range(40):
                i = min(int(rng.paretovariate(0.8)), 400) - 1
                src, dst, sport, dport = flows[i]
                packets = rng.choice((1, 2, 10))
                proto = 17 if dport == 53 else 6
                batch.append(rec(src, dst, sport, dport, proto, packets, 100 * packets, t - 5, t))
            # Three steady flows, never among an hour's 60 largest, larger than any of those
            # over the day: the threshold algorithm must look deeper than each hour's top.
            batch += [
                rec(IP, f"10.3.0.{j}", 7000 + j, 443, 6, 25, 2500, t - 5, t) for j in range(3)
            ]
            if tick % 12 == 0:
                hour = tick // 12
                batch += [
                    rec(f"10.2.{hour}.{j}", IP, 9000 + j, 80, 6, 500, 50_000, t - 5, t)
                    for j in range(60)
                ]
            s.write_tick(batch, None, [])
            if tick == 30 * 12 - 3:
                s.rollup()
    return path


def test_top_n_of_a_day_equals_summing_every_record(
    day_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decided = []
    top_flows = queries._top_flows
    monkeypatch.setattr(queries, "_top_flows", lambda *a: decided.append(r := top_flows(*a)) or r)
    since = schema.iso_time(NOW - 0.5 * H - 24 * H)  # on the hour: exact and hourly agree
    for grouping in ("flow", "src", "pair", "dport"):
        for by in ("bytes", "packets", "flows", "bps"):
            for top in ("1", "5", "20"):
                for extra in ([], ["--filter", "dport 443 or dport 80"]):
                    args = ["--since", since, "--group-by", grouping, "--by", by, "--top", top]
                    fast = history_json(day_db, *args, *extra)
                    exact = history_json(day_db, *args, *extra, "--exact")
                    assert fast == exact, (grouping, by, top, extra)
                    groups = (2 if extra else 4) if grouping == "dport" else 20
                    assert len(fast) == min(int(top), groups)
    # the top flows were found without summing every flow of the day (not just by falling back)
    assert sum(r is not None for r in decided) >= 12


def test_tables_escape_control_characters_from_the_database(db: Path) -> None:
    """A value holding a terminal escape (an interface name from a crafted capture, any sql
    result) is printed as its escape, never obeyed (issue #14)."""
    query = (
        "SELECT char(27) || '[2J' || char(27) || ']0;owned' || char(7) AS x, 'a' || char(10) AS y"
    )
    code, out, _ = run("sql", "--db", str(db), query)
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J\\x1b]0;owned\\x07" in out and "a\\n" in out
    code, out, _ = run("sql", "--db", str(db), "--format", "json", query)
    assert "\x1b" not in out  # JSON escapes it itself


def test_piped_tables_never_wrap_a_row(tmp_path: Path) -> None:
    """To a pipe, one line per row with whole endpoints, however wide (issue #13: an address
    cut mid-token breaks grep and awk)."""
    path = tmp_path / "wide.db"
    a, b = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:1", "2001:db8:aaaa:bbbb:cccc:dddd:eeee:2"
    records = [
        FlowRecord(
            FlowKey(abi.AF_INET6, a, b, 40000 + i, 443, 6),
            "a-rather-long-interface-name",
            3,
            300,
            240,
            NOW - 60,
            NOW - 30,
            0,
            "idle",
        )
        for i in range(3)
    ]
    records.append(rec(IP, "10.0.0.2", 1, 2, 17, 1, 100, NOW - 60, NOW - 30, iface="eth0"))
    with store.Store(path) as s:
        s.write_tick(records, None, [])
    since, until = schema.iso_time(NOW - 600), schema.iso_time(NOW)
    code, out, _ = run("history", "--db", str(path), "--since", since, "--until", until)
    assert code == 0
    rows = [line for line in out.splitlines() if f"[{a}]:" in line]
    assert len(rows) == 3 and all(f"[{b}]:443" in line for line in rows), out
    assert sum("a-rather-long-interface-name" in line for line in rows) == 3


def test_since_as_an_operator_types_it_in_the_local_zone(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--since 13:30` and `yesterday 03:00` are accepted; without a zone they are TZ's
    local time, --utc reads them as UTC (issue #13)."""
    from flowscope import when

    monkeypatch.setenv("TZ", "FST-3")
    try:
        for args in (
            ["--since", "13:30"],
            ["--since", "yesterday 03:00"],
            ["--utc", "--since", "13:30"],
        ):
            code, _, err = run("history", "--db", str(db), *args)
            assert code == 0 and err == "", err
        local = when.parse_when("2026-11-22 03:00", "--since")
        utc = when.parse_when("2026-11-22 03:00", "--since", utc=True)
        assert utc - local == 3 * 3600
    finally:
        monkeypatch.undo()
        when.local_zone()


def test_alerts_lists_what_recordings_detected_in_every_format(tmp_path: Path) -> None:
    """A recording that saw a 30-port scan (through the writer, as record and live write
    it): `flowscope alerts` lists it once, as a table, JSON and CSV, and its filter shows the
    scan's flows in `history`."""
    from unittest import mock

    from flowscope.history.writer import Writer
    from flowscope.model import NewFlow, Sample

    path = tmp_path / "flows.db"
    t0 = NOW - 300
    events = [
        NewFlow(t0 + i * 0.1, FlowKey(abi.AF_INET, "198.18.9.9", IP, 50000, 1 + i, 6), "eth0",
                60, False)
        for i in range(30)
    ]  # fmt: skip
    w = Writer(path)
    w.submit([rec("198.18.9.9", IP, 50000, 1 + i, 6, 1, 60, t0, t0) for i in range(30)],
             Sample(t0 + 3, 1.0, 0.0, 0.0, 0, 30, {}), events)  # fmt: skip
    assert w.close(timeout=10)
    with mock.patch("flowscope.cli.history.time.time", return_value=NOW):
        code, out, err = run("alerts", "--db", str(path), "--since", "10m")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == "alerts; times UTC; per s: new flows per second while it went on"
        assert lines[1].split() == [
            "kind", "source", "target", "since", "last", "flows", "per", "s", "filter"
        ]  # fmt: skip
        start, last = schema.iso_time(t0)[11:19], schema.iso_time(t0 + 2.9)[11:19]
        assert lines[2].split() == ["port", "scan", "198.18.9.9", IP, start, last, "30",
                                    "10.3", "src", "198.18.9.9"]  # fmt: skip
        code, out, _ = run("alerts", "--db", str(path), "--format", "json")
        (row,) = [json.loads(x) for x in out.splitlines()]
        assert row["kind"] == "port scan" and row["flows"] == 30 and row["rate"] == 10.3
        code, out, _ = run("alerts", "--db", str(path), "--format", "csv")
        assert out.splitlines()[0] == "start,last,kind,source,target,flows,sources,filter,rate"
        code, out, _ = run("alerts", "--db", str(path), "--since", "1m")
        assert (code, out) == (0, f"no alerts since {schema.iso_time(NOW - 60)}\n")
        flows = history_json(path, "--filter", row["filter"], "--top", "0")
        assert len(flows) == 30


def test_port_groupings_keep_our_services_apart_from_the_peers_ports(tmp_path: Path) -> None:
    """A server's connection: received to its port 443 from a client's 50412, and its reply
    sent to 50412. Grouped by destination port, 443 is a service of ours (↓) and 50412 a
    peer's port (↑), two rows, never one mixed sum; the same for source ports."""
    from unittest import mock

    path = tmp_path / "flows.db"
    t = NOW - 60
    inbound = FlowKey(abi.AF_INET, "10.0.0.7", IP, 50412, 443, 6)
    outbound = FlowKey(abi.AF_INET, IP, "10.0.0.7", 443, 50412, 6, direction=abi.DIR_EGRESS)
    with store.Store(path) as s:
        s.write_tick(
            [
                FlowRecord(inbound, "eth0", 10, 1000, 800, t - 10, t, 0, "idle"),
                FlowRecord(outbound, "eth0", 20, 30000, 29600, t - 10, t, 0, "idle"),
            ],
            None,
            [],
        )
    rows = history_json(path, "--group-by", "dport")
    assert [(r["dport"], r["proto"], r["direction"], r["bytes"]) for r in rows] == [
        (50412, "tcp", "egress", 30000),
        (443, "tcp", "ingress", 1000),
    ]
    rows = history_json(path, "--group-by", "sport")
    assert [(r["sport"], r["direction"]) for r in rows] == [(443, "egress"), (50412, "ingress")]
    with mock.patch("flowscope.cli.history.time.time", return_value=NOW):
        code, out, _ = run("history", "--db", str(path), "--group-by", "dport")
    assert code == 0
    lines = [line.split() for line in out.splitlines()[2:]]
    assert [line[:2] for line in lines] == [["50412", "↑tcp"], ["443", "↓tcp"]]


def test_retransmissions_and_drops_rank_and_group(tmp_path: Path) -> None:
    """--by retrans and --by drops rank by what the records hold (flows not followed last,
    "-" in the table), and --group-by drop_reason sums drops per the kernel's reason."""
    path = tmp_path / "flows.db"
    t = NOW - 300

    def r(dport: int, retrans: int, drops: int, reason: str) -> FlowRecord:
        key = FlowKey(abi.AF_INET, IP, "10.0.0.2", 40000, dport, 6)
        return FlowRecord(
            key, "eth0", 100, 10000, 8000, t, t + 10, 0x18, "idle",
            retrans=retrans, drops=drops, drop_reason=reason,
        )  # fmt: skip

    with store.Store(path) as s:
        s.write_tick(
            [
                r(443, 7, 0, ""),
                r(8080, 2, 30, "TC_INGRESS"),
                r(22, 0, 5, "NO_SOCKET"),
                r(25, -1, -1, ""),  # neither followed
                r(8443, 1, 4, "TC_INGRESS"),
            ],
            None,
            [],
        )
    rows = history_json(path, "--by", "retrans")
    assert [(x["dport"], x["retrans"]) for x in rows] == [
        (443, 7), (8080, 2), (8443, 1), (22, 0), (25, None)
    ]  # fmt: skip
    rows = history_json(path, "--by", "drops")
    assert [(x["dport"], x["drops"]) for x in rows][:3] == [(8080, 30), (22, 5), (8443, 4)]
    rows = history_json(path, "--group-by", "drop_reason", "--by", "drops")
    assert [(x["drop_reason"], x["drops"]) for x in rows] == [
        ("TC_INGRESS", 34), ("NO_SOCKET", 5), (None, 0)
    ]  # fmt: skip
    from unittest import mock

    with mock.patch("flowscope.cli.history.time.time", return_value=NOW):
        code, out, err = run("history", "--db", str(path), "--by", "drops", "--since", "1h")
    assert code == 0, err
    lines = out.splitlines()
    assert "retr" in lines[1] and "drops" in lines[1], out
    assert lines[2].split()[-2:] == ["2", "30"], out  # the dport 8080 flow first
    assert lines[-1].split()[-2:] == ["-", "-"], out  # the flow not followed
    code, out, err = run("history", "--db", str(path), "--group-by", "drop_reason")
    assert code == 0 and "TC_INGRESS" in out, (out, err)


def test_the_filter_finds_records_with_resets(tmp_path: Path) -> None:
    """--filter 'resets > 0' reads what each record holds (issue #17): the record of a flow
    that carried a reset, not those without one or where resets were not followed."""
    path = tmp_path / "flows.db"
    t = NOW - 300

    def r(dport: int, resets: int) -> FlowRecord:
        key = FlowKey(abi.AF_INET, IP, "10.0.0.2", 40000, dport, 6)
        return FlowRecord(
            key, "eth0", 1, 60, 40, t, t + 1, 0x04, "rst", resets=resets
        )  # fmt: skip

    with store.Store(path) as s:
        s.write_tick([r(443, 1), r(8080, 0), r(25, -1)], None, [])
    rows = history_json(path, "--filter", "resets > 0", "--since", "1h")
    assert [x["dport"] for x in rows] == [443]
    rows = history_json(path, "--filter", "not resets > 0", "--since", "1h")
    assert sorted(x["dport"] for x in rows) == [25, 8080]
    with contextlib.closing(sqlite3.connect(path)) as c:
        got = c.execute("SELECT dport, resets FROM flows ORDER BY dport").fetchall()
    assert got == [(25, None), (443, 1), (8080, 0)]
