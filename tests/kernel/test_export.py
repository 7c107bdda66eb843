"""`flowscope record --ipfix --metrics` end to end: known frames on a veth pair, history in
SQLite, the same flows at real collectors, and Prometheus numbers that match the database.

- UDP to Debian's nfcapd on loopback: `nfdump -r` lists the same flows (addresses, ports,
  packets, IP bytes, start and end to the millisecond) as history, for IPv4 and IPv6.
- TCP to a collector the test runs, captured on loopback by tshark, whose IPFIX dissector
  decodes the same records; the collector is stopped in the middle: collection goes on, the
  record made meanwhile is counted as lost, and export resumes when the collector returns.
Everything listens and sends on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.kernel.test_record import (
    FLOWSCOPE,
    start_record,
    udp4,
    udp6,
    wait_detached,
)
from tests.netns import VethNamespace, veth_namespace
from tests.unit.test_ipfix import Collector

pytestmark = pytest.mark.skipif(
    not (shutil.which("nfcapd") and shutil.which("nfdump") and shutil.which("tshark")),
    reason="needs Debian's nfdump and tshark packages (make setup installs them)",
)


@pytest.fixture
def net() -> Iterator[VethNamespace]:
    with veth_namespace() as n:
        yield n


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def flows(db: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT src, dst, sport, dport, proto, packets, bytes, ip_bytes, first_seen, "
            "last_seen FROM flows WHERE sport IN (4000, 4001, 5000, 5001, 5002) ORDER BY sport"
        ).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


def ms(iso: str) -> int:
    """Unix milliseconds of history's 2026-11-22T03:12:00.123Z."""
    dt = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def record(net: VethNamespace, db: Path, *extra: str) -> subprocess.Popen[str]:
    """`flowscope record` on the host end, ingress only: the tests count the frames they send,
    and the host's own replies (ICMP port unreachable) would add egress flows."""
    return start_record(
        net, db, "--direction", "ingress",
        "--interval", "0.2", "--idle-timeout", "1", "--active-timeout", "600", *extra,
    )  # fmt: skip


def nfdump_flows(nfdir: Path) -> list[tuple[object, ...]]:
    """What nfcapd wrote into its files in ``nfdir`` (one, or two when the run crossed one of
    its 5-minute rotations), as `nfdump -o json` reads them: sorted (src, dst, sport, dport,
    proto, packets, octets, first ms, last ms)."""
    captures = sorted(p for p in nfdir.iterdir() if p.name.startswith("nfcapd.2"))
    assert captures, "nfcapd wrote no file"
    flows: list[dict[str, Any]] = []
    for capture in captures:
        out = subprocess.run(
            ["nfdump", "-r", str(capture), "-o", "json"],
            capture_output=True, text=True, check=True, env={**os.environ, "TZ": "UTC"},
        ).stdout  # fmt: skip
        # a file of a rotation with nothing in it: nfdump prints a sentence, not JSON
        if out.strip() and "No matching flows" not in out:
            flows += json.loads(out)
    return sorted(
        (
            f.get("src4_addr") or f["src6_addr"],
            f.get("dst4_addr") or f["dst6_addr"],
            f["src_port"],
            f["dst_port"],
            f["proto"],
            f["in_packets"],
            f["in_bytes"],
            ms(f["first"] + "Z"),
            ms(f["last"] + "Z"),
        )
        for f in flows
    )


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err
    return err


def udp_queue_empty(port: int) -> bool:
    out = subprocess.run(
        ["ss", "-Hnu", "state", "all", "sport", "=", f":{port}"], capture_output=True, text=True
    ).stdout.split()
    return bool(out) and out[1] == "0"  # Recv-Q


def test_udp_export_to_nfcapd_and_metrics_match_history(net: VethNamespace, tmp_path: Path) -> None:
    nf_port, metrics_port = free_port(socket.SOCK_DGRAM), free_port()
    nfdir = tmp_path / "nfcapd"
    nfdir.mkdir()
    nfcapd = subprocess.Popen(
        ["nfcapd", "-b", "127.0.0.1", "-p", str(nf_port), "-w", str(nfdir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    db = tmp_path / "flows.db"
    proc: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: udp_queue_empty(nf_port), "nfcapd to listen")
        proc = record(
            net, db, "--ipfix", f"127.0.0.1:{nf_port}", "--metrics", f"127.0.0.1:{metrics_port}"
        )
        net.send_frames([udp4(net, 4000, 53, 100)] * 5)
        net.send_frames([udp6(net, 5000, 5432, 200)] * 7)
        net.send_frames([udp4(net, 4001, 123, 48)] * 3)
        wait_for(lambda: len(flows(db)) == 3, "three flows in history")
        # every flow has ended: the metrics hold what history holds, to the packet
        wait_for(lambda: scrape(metrics_port)[("flowscope_active_flows", ())] == 0, "expiry")
        m = scrape(metrics_port)
        rows = flows(db)
        iface = (("direction", "ingress"), ("interface", net.host_if))
        assert m[("flowscope_packets_total", iface)] == sum(r[5] for r in rows) == 15
        assert m[("flowscope_bytes_total", iface)] == sum(r[6] for r in rows)
        assert m[("flowscope_kernel_packets_total", ())] == 15
        assert m[("flowscope_flow_records_total", (("reason", "idle"),))] == 3
        assert m[("flowscope_db_written_records_total", ())] == 3
        assert m[("flowscope_ipfix_sent_records_total", ())] == 3
        assert m[("flowscope_ipfix_lost_records_total", ())] == 0
        assert m[("flowscope_tick_duration_seconds_count", ())] > 0
        stop(proc)
        wait_detached(net.host_if)
        wait_for(lambda: udp_queue_empty(nf_port), "nfcapd to read everything")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        nfcapd.send_signal(signal.SIGTERM)
        nfcapd.communicate(timeout=30)
    exported = nfdump_flows(nfdir)
    expected = sorted((*r[:6], r[7], ms(str(r[8])), ms(str(r[9]))) for r in flows(db))
    assert exported == expected
    assert [(r[2], r[5]) for r in expected] == [(4000, 5), (4001, 3), (5000, 7)]


def tshark_records(capture: Path, port: int) -> list[tuple[str, int, int, int, int]]:
    """(source address, source port, packets, IP bytes, flowStart ms) of every data record
    tshark's IPFIX dissector finds in a capture."""
    out = subprocess.run(
        ["tshark", "-r", str(capture), "-d", f"tcp.port=={port},cflow", "-Y", "cflow",
         "-T", "fields", "-E", "separator=;", "-E", "occurrence=a", "-E", "aggregator=|",
         "-e", "cflow.srcaddr", "-e", "cflow.srcaddrv6", "-e", "cflow.srcport",
         "-e", "cflow.packets", "-e", "cflow.octets", "-e", "cflow.abstimestart"],
        capture_output=True, text=True, check=True, env={**os.environ, "TZ": "UTC"},
    ).stdout  # fmt: skip
    found = []
    for line in out.splitlines():
        v4, v6, sports, packets, octets, starts = (
            f.split("|") if f else [] for f in line.split(";")
        )
        addrs = v4 + v6  # a message holds IPv4 records first, then IPv6
        for a, sp, p, o, t in zip(addrs, sports, packets, octets, starts, strict=True):
            found.append((a, int(sp), int(p), int(o), tshark_ms(t)))
    return found


def tshark_ms(text: str) -> int:
    # "Sep 21, 2026 14:13:20.123000000 UTC"
    stamp, frac = text.rsplit(" ", 1)[0].rsplit(".", 1)
    dt = datetime.strptime(stamp, "%b %d, %Y %H:%M:%S").replace(tzinfo=UTC)
    return round(dt.timestamp()) * 1000 + int(frac[:3])


def test_tcp_export_decoded_by_tshark_survives_a_collector_restart(
    net: VethNamespace, tmp_path: Path
) -> None:
    collector = Collector()
    port, metrics_port = collector.port, free_port()
    pcap = tmp_path / "ipfix.pcapng"
    tshark = subprocess.Popen(
        ["tshark", "-i", "lo", "-f", f"tcp port {port}", "-w", str(pcap)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    db = tmp_path / "flows.db"
    proc: subprocess.Popen[str] | None = None
    try:
        assert tshark.stderr is not None
        while "Capturing on" not in tshark.stderr.readline():
            assert tshark.poll() is None, "tshark exited"
        proc = record(
            net, db, "--ipfix", f"tcp://127.0.0.1:{port}",
            "--metrics", f"127.0.0.1:{metrics_port}",
        )  # fmt: skip
        collector.accept()
        collector.messages(1)  # the templates
        net.send_frames([udp4(net, 4000, 53, 100)] * 4)
        net.send_frames([udp6(net, 5000, 5432, 200)] * 6)
        wait_for(lambda: len(flows(db)) == 2, "two flows in history")
        assert collector.records(2) == 2  # both records (one message, or one per tick)

        collector.stop()  # collection goes on; the next record cannot be exported
        wait_for(lambda: scrape(metrics_port)[("flowscope_ipfix_connected", ())] == 0, "notice")
        net.send_frames([udp6(net, 5001, 5432, 300)] * 2)
        wait_for(lambda: len(flows(db)) == 3, "the third flow in history")
        m = scrape(metrics_port)
        assert m[("flowscope_ipfix_lost_records_total", ())] == 1
        assert m[("flowscope_ipfix_sent_records_total", ())] == 2

        collector.start()  # the collector is back: export resumes
        collector.accept()
        collector.messages(1)  # templates again, on the new connection
        wait_for(lambda: scrape(metrics_port)[("flowscope_ipfix_connected", ())] == 1, "reconnect")
        net.send_frames([udp4(net, 4001, 123, 48)] * 3)
        net.send_frames([udp6(net, 5002, 5432, 64)] * 1)
        wait_for(lambda: len(flows(db)) == 5, "five flows in history")
        assert collector.records(2) == 2
        m = scrape(metrics_port)
        assert m[("flowscope_ipfix_sent_records_total", ())] == 4
        assert m[("flowscope_ipfix_lost_records_total", ())] == 1
        stop(proc)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        collector.stop()
        time.sleep(0.5)  # let the last segments reach the capture before it stops
        tshark.send_signal(signal.SIGINT)
        tshark.communicate(timeout=30)
    rows = {r[2]: r for r in flows(db)}
    expected = sorted(
        (str(r[0]), int(r[2]), int(r[5]), int(r[7]), ms(str(r[8])))
        for sport, r in rows.items()
        if sport != 5001  # made while the collector was away
    )
    assert sorted(tshark_records(pcap, port)) == expected
    assert [e[1] for e in expected] == [4000, 4001, 5000, 5002]


# -- replay: a known capture, exported with the capture's times ---------------------------------


def test_replay_to_nfcapd_lists_the_same_flows_as_replay_json(tmp_path: Path) -> None:
    """`replay --ipfix` of a capture with IPv4 and IPv6 flows: nfdump lists exactly the flows
    (packets, IP bytes, first and last to the millisecond, in 2025) that `replay --json`
    prints."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Packet, Raw

    from tests.kernel.test_replay import A4, A6, B4, B6, eth, replay_json, write_pcap
    from tests.pcaps import T0

    def u4(sport: int, n: int) -> Packet:
        return eth() / IP(src=A4, dst=B4) / UDP(sport=sport, dport=53) / Raw(b"x" * n)

    def t6(flags: str, n: int) -> Packet:
        return (
            eth() / IPv6(src=A6, dst=B6) / TCP(sport=40000, dport=443, flags=flags) / Raw(b"y" * n)
        )

    ms_ = 1000  # microseconds
    frames: list[tuple[int, Packet | bytes, int | None]] = [
        (0, u4(4000, 100), None),  # IPv4 UDP: 3 packets of 128 IP bytes, 0 to 250 ms
        (5 * ms_, t6("S", 0), None),  # IPv6 TCP: 4 packets, 5 ms to 1.5 s
        (120 * ms_, u4(4000, 100), None),
        (250 * ms_, u4(4000, 100), None),
        (300 * ms_, u4(4001, 20), None),  # IPv4 UDP: 1 packet of 48 IP bytes at 300 ms
        (400 * ms_, t6("A", 1000), None),
        (900 * ms_, t6("PA", 200), None),
        (1500 * ms_, t6("FA", 0), None),
    ]
    capture = write_pcap(tmp_path / "known.pcap", frames)
    flows_json, summary, result = replay_json(capture)
    assert result.exit_code == 0, result.output
    assert summary["summary"]["records"] == 3

    port = free_port(socket.SOCK_DGRAM)
    nfdir = tmp_path / "nfcapd"
    nfdir.mkdir()
    nfcapd = subprocess.Popen(
        ["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", str(nfdir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: udp_queue_empty(port), "nfcapd to listen")
        run = subprocess.run(
            [*FLOWSCOPE, "replay", str(capture), "--ipfix", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert run.stderr == ""  # nothing lost
        # piped, it prints what --json prints (in the kernel map's order)
        piped = [json.loads(line) for line in run.stdout.splitlines()[:-1]]
        assert sorted(piped, key=json.dumps) == sorted(flows_json, key=json.dumps)
        wait_for(lambda: udp_queue_empty(port), "nfcapd to read everything")
    finally:
        nfcapd.send_signal(signal.SIGTERM)
        nfcapd.communicate(timeout=30)
    # replay --json names the protocol; the ports already tell these flows apart
    exported = sorted((*f[:4], *f[5:]) for f in nfdump_flows(nfdir))
    printed = sorted(
        (
            f["src"],
            f["dst"],
            f["sport"],
            f["dport"],
            f["packets"],
            f["ip_bytes"],
            ms(f["first_seen"]),
            ms(f["last_seen"]),
        )
        for f in flows_json
    )
    assert exported == printed
    t0 = T0 * 1000
    ip6 = 40 + 20  # IPv6 and TCP headers
    assert printed == [
        (A4, B4, 4000, 53, 3, 3 * 128, t0, t0 + 250),
        (A4, B4, 4001, 53, 1, 48, t0 + 300, t0 + 300),
        (A6, B6, 40000, 443, 4, 4 * ip6 + 1000 + 200, t0 + 5, t0 + 1500),
    ]


def test_record_says_when_the_collector_cannot_be_resolved_and_how_many_were_lost(
    net: VethNamespace, tmp_path: Path
) -> None:
    """Issue #14: `record --ipfix nosuchhost.invalid:4739` said nothing (exit 0, empty
    stderr). Now a notice as the export fails, and at the end the count of lost records."""
    db = tmp_path / "flows.db"
    proc = record(net, db, "--ipfix", "nosuchhost.invalid:4739")
    try:
        net.send_frames([udp4(net, 4000, 53, 100)] * 3)
        wait_for(lambda: len(flows(db)) == 1, "the flow in history")
    finally:
        err = stop(proc)
    lines = [line for line in err.splitlines() if "IPFIX" in line]
    assert any(
        line.startswith("flowscope: IPFIX export: ") and "nosuchhost.invalid" in line
        for line in lines
    ), err
    lost = [line for line in lines if "not exported to IPFIX" in line]
    assert len(lost) == 1 and lost[0].startswith("flowscope: warning: "), err
    assert int(lost[0].split()[2]) >= 1  # the flow record, and any shutdown records
