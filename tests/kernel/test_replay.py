"""flowscope replay: captures through the real XDP program (BPF_PROG_TEST_RUN), end to end.

One varied capture exercises every rule of the parser (VLAN, QinQ, IPv6 extension headers,
fragments, ICMP, ICMPv6, SCTP, a transport header cut by the snap length, a frame cut after its
transport header, non-IP, frames too short or not IP at all) and must replay to exactly the
flows written down here, and to what tshark says about the same file. Other captures pin
several interfaces, the cooked and raw link types, expiry on the capture's clock into a history
database, and what damaged files print.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Packet, Raw
from scapy.utils import PcapNgWriter, wrpcap

from flowscope.cli import main
from flowscope.collect.replay import iso_us
from flowscope.history import browse as history_query
from flowscope.history import files, queries
from tests.pcaps import T0, ng_epb, ng_idb, ng_shb, pcap_header, pcap_record

A4, B4 = "10.0.0.1", "10.0.0.2"
A6, B6 = "2001:db8::1", "2001:db8::2"


def eth() -> Ether:
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


# (microseconds after T0, packet, captured bytes or None for all of it)
VARIED: list[tuple[int, Packet | bytes, int | None]] = [
    (0, eth() / IP(src=A4, dst=B4) / TCP(sport=1234, dport=80, flags="S"), None),
    (
        100_000,
        eth() / IP(src=A4, dst=B4) / TCP(sport=1234, dport=80, flags="PA") / Raw(b"p" * 100),
        None,
    ),
    (
        200_000,
        eth() / Dot1Q(vlan=100) / IP(src=A4, dst=B4) / UDP(sport=5000, dport=53) / Raw(b"q" * 20),
        None,
    ),
    (
        300_000,
        eth() / Dot1AD(vlan=200) / Dot1Q(vlan=300) / IP(src=A4, dst=B4) / UDP(sport=5001, dport=53),
        None,
    ),
    (
        400_000,
        eth()
        / IPv6(src=A6, dst=B6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / TCP(sport=40000, dport=443, flags="S"),
        None,
    ),
    (
        500_000,
        eth()
        / IP(src=A4, dst=B4, id=7, flags="MF", proto=17)
        / UDP(sport=7000, dport=7001, len=32)
        / Raw(b"a" * 8),
        None,
    ),
    (510_000, eth() / IP(src=A4, dst=B4, id=7, frag=2, proto=17) / Raw(b"b" * 16), None),
    (
        600_000,
        eth()
        / IPv6(src=A6, dst=B6)
        / IPv6ExtHdrFragment(m=1, offset=0, id=9, nh=17)
        / UDP(sport=7002, dport=7003, len=32)
        / Raw(b"c" * 8),
        None,
    ),
    (
        610_000,
        eth()
        / IPv6(src=A6, dst=B6)
        / IPv6ExtHdrFragment(m=0, offset=2, id=9, nh=17)
        / Raw(b"d" * 16),
        None,
    ),
    (700_000, eth() / IP(src=A4, dst=B4) / ICMP(type=8, code=0) / Raw(b"e" * 8), None),
    (800_000, eth() / IPv6(src=A6, dst=B6) / ICMPv6EchoRequest(), None),
    (900_000, eth() / IP(src=A4, dst=B4) / SCTP(sport=9000, dport=9001), None),
    # the snap length cuts the TCP header: ports 0, counted as truncated, full length counted
    (
        1_000_000,
        eth() / IP(src=A4, dst=B4) / TCP(sport=2222, dport=22, flags="A") / Raw(b"f" * 1000),
        40,
    ),
    # cut after the TCP header: a normal flow, the bytes are the original length
    (
        1_100_000,
        eth() / IP(src=A4, dst=B4) / TCP(sport=3333, dport=22, flags="A") / Raw(b"g" * 1000),
        200,
    ),
    (1_150_000, eth() / IP(src=A4, dst=B4) / TCP(sport=1234, dport=80, flags="FA"), None),
    (1_200_000, eth() / ARP(), None),  # non-IP
    (1_300_000, b"0123456789", None),  # shorter than Ethernet: malformed
    (1_400_000, bytes(eth())[:12] + b"\x08\x00\x55" + bytes(30), None),  # IP version 5: malformed
]


def write_pcap(path: Path, frames: list[tuple[int, Packet | bytes, int | None]]) -> Path:
    out = pcap_header()
    for us, pkt, cut in frames:
        raw = bytes(pkt)
        out += pcap_record(raw[:cut] if cut else raw, T0 + us // 10**6, us % 10**6, wire=len(raw))
    path.write_bytes(out)
    return path


def at(us: int) -> str:
    return iso_us(T0 + us / 1e6)


def flow(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    proto: str,
    frames: list[int],
    *,
    vlan: int = 0,
    flags: str = "........",
    iface: str = "if0",
) -> dict[str, Any]:
    """The JSON line of a flow made of the VARIED frames at these indexes."""
    raws = [(VARIED[i][0], bytes(VARIED[i][1])) for i in frames]
    ip_bytes = 0
    for i in frames:
        pkt = VARIED[i][1]
        assert isinstance(pkt, Packet)
        ip_bytes += len(pkt[IP]) if IP in pkt else len(pkt[IPv6])
    return {
        "iface": iface,
        "vlan": vlan,
        "src": src,
        "dst": dst,
        "sport": sport,
        "dport": dport,
        "proto": proto,
        "packets": len(frames),
        "bytes": sum(len(r) for _, r in raws),
        "ip_bytes": ip_bytes,
        "first_seen": at(min(t for t, _ in raws)),
        "last_seen": at(max(t for t, _ in raws)),
        "tcp_flags": flags,
        "end_reason": "shutdown",
    }


EXPECTED = [
    flow(A4, B4, 1234, 80, "tcp", [0, 1, 14], flags="...AP.SF"),
    flow(A4, B4, 5000, 53, "udp", [2], vlan=100),
    flow(A4, B4, 5001, 53, "udp", [3], vlan=200),  # the outer tag of QinQ
    flow(A6, B6, 40000, 443, "tcp", [4], flags="......S."),
    flow(A4, B4, 7000, 7001, "udp", [5]),
    flow(A4, B4, 0, 0, "udp", [6]),  # a later fragment: no ports
    flow(A6, B6, 7002, 7003, "udp", [7]),
    flow(A6, B6, 0, 0, "udp", [8]),
    flow(A4, B4, 0, 8 * 256, "icmp", [9]),
    flow(A6, B6, 0, 128 * 256, "icmp6", [10]),
    flow(A4, B4, 9000, 9001, "sctp", [11]),
    flow(A4, B4, 0, 0, "tcp", [12]),
    flow(A4, B4, 3333, 22, "tcp", [13], flags="...A...."),
]


def replay_json(path: Path, *args: str) -> tuple[list[dict[str, Any]], dict[str, Any], Any]:
    """(flow lines, summary line, click result) of `flowscope replay --json`."""
    result = CliRunner().invoke(main, ["replay", str(path), "--json", *args])
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines, result.output
    assert "Traceback" not in result.output
    return lines[:-1], lines[-1], result


def key(f: dict[str, Any]) -> tuple[Any, ...]:
    return (f["iface"], f["vlan"], f["src"], f["dst"], f["sport"], f["dport"], f["proto"])


def by_key(flows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    out = {key(f): f for f in flows}
    assert len(out) == len(flows), "one record per flow expected here"
    return out


def test_varied_capture_replays_to_exactly_the_expected_flows(tmp_path: Path) -> None:
    flows, summary, result = replay_json(write_pcap(tmp_path / "varied.pcap", VARIED))
    assert result.exit_code == 0, result.output
    got = by_key(flows)
    want = by_key(EXPECTED)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k] == want[k], k
    assert summary["counters"] == {
        "packets": len(VARIED),
        "flows_created": len(EXPECTED),
        "non_ip": 1,
        "malformed": 2,
        "truncated": 1,
        "map_full": 0,
        "ringbuf_full": 0,
        "flood_other": 0,
        "events_limited": 0,  # a replay announces every new flow
        # every frame's length on the wire, whatever became of it
        "bytes": sum(len(bytes(pkt)) for _, pkt, _ in VARIED),
    }
    assert summary["summary"]["frames"] == len(VARIED)
    assert summary["summary"]["complete"] is True
    assert summary["summary"]["first_seen"] == at(0)
    assert summary["summary"]["last_seen"] == at(1_400_000)


# -- the same capture, as tshark sees it ----------------------------------------------------------

TSHARK_FIELDS = [
    "frame.time_epoch", "frame.len", "ieee8021ad.id", "vlan.id", "ip.src", "ip.dst", "ip.proto",
    "ip.len", "ipv6.src", "ipv6.dst", "ipv6.nxt", "ipv6.plen", "ipv6.fraghdr.nxt", "tcp.srcport",
    "tcp.dstport", "tcp.flags", "udp.srcport", "udp.dstport", "sctp.srcport", "sctp.dstport",
    "icmp.type", "icmp.code", "icmpv6.type", "icmpv6.code", "_ws.short",
]  # fmt: skip
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6", 132: "sctp"}
FLAG_LETTERS = "FSRPAUEC"


def tshark_flows(path: Path) -> list[dict[str, Any]]:
    """tshark's frames, without IP reassembly, summed into flows by flowscope's key rules:
    outermost VLAN tag, outermost IP header, ports of a transport header only when it was
    captured whole, ICMP type * 256 + code as the destination port."""
    args = ["tshark", "-r", str(path), "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE"]
    args += ["-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]
    for f in TSHARK_FIELDS:
        args += ["-e", f]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    flows: dict[tuple[Any, ...], dict[str, Any]] = {}
    acc: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, 0, None, None, 0])
    for line in out.splitlines():
        v = dict(zip(TSHARK_FIELDS, line.split("|"), strict=True))
        if v["ip.src"]:
            src, dst, ip_bytes = v["ip.src"], v["ip.dst"], int(v["ip.len"])
            proto = int(v["ip.proto"])
        elif v["ipv6.src"]:
            src, dst, ip_bytes = v["ipv6.src"], v["ipv6.dst"], 40 + int(v["ipv6.plen"])
            proto = int(v["ipv6.fraghdr.nxt"] or v["ipv6.nxt"])
        else:
            continue  # not IP, or an IP header tshark could not read: no flow
        sport = dport = flags = 0
        for name, number in (("tcp", 6), ("udp", 17), ("sctp", 132)):
            if v[f"{name}.srcport"]:
                proto = number
                if f"{name.upper()} truncated" not in v["_ws.short"]:
                    sport, dport = int(v[f"{name}.srcport"]), int(v[f"{name}.dstport"])
                    if name == "tcp":
                        flags = int(v["tcp.flags"], 16) & 0xFF
        for name, number in (("icmp", 1), ("icmpv6", 58)):
            if v[f"{name}.type"]:
                proto = number
                dport = int(v[f"{name}.type"]) * 256 + int(v[f"{name}.code"])
        vlan = int(v["ieee8021ad.id"] or v["vlan.id"] or 0)
        k = ("if0", vlan, src, dst, sport, dport, PROTO_NAMES.get(proto, str(proto)))
        t = float(v["frame.time_epoch"])
        a = acc[k]
        a[0] += 1
        a[1] += int(v["frame.len"])
        a[2] += ip_bytes
        a[3] = t if a[3] is None else min(a[3], t)
        a[4] = t if a[4] is None else max(a[4], t)
        a[5] |= flags
    for k, (packets, nbytes, ip_bytes, first, last, flags) in acc.items():
        flows[k] = {
            "packets": packets,
            "bytes": nbytes,
            "ip_bytes": ip_bytes,
            "first_seen": iso_us(first),
            "last_seen": iso_us(last),
            "tcp_flags": "".join(
                FLAG_LETTERS[b] if flags & (1 << b) else "." for b in range(7, -1, -1)
            ),
        }
    names = ("iface", "vlan", "src", "dst", "sport", "dport", "proto")
    return [dict(zip(names, k, strict=True)) | f for k, f in flows.items()]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (make setup)")
def test_replay_agrees_with_tshark_flow_by_flow(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "varied.pcap", VARIED)
    ours = {key(f): {k: f[k] for k in f if k != "end_reason"} for f in replay_json(path)[0]}
    theirs = {key(f): f for f in tshark_flows(path)}
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        assert ours[k] == theirs[k], k


# -- interfaces and link types ------------------------------------------------------------------


def udp(src: str = A4, dst: str = B4, sport: int = 1000, dport: int = 53) -> Packet:
    return IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(b"u" * 12)


def test_pcapng_interfaces_are_kept_apart(tmp_path: Path) -> None:
    path = tmp_path / "two.pcapng"
    w = PcapNgWriter(str(path))
    for i, ifname in enumerate(["eth0", "eth1", "eth1", "eth0", "eth1"]):
        p = eth() / udp()
        p.time = T0 + i / 10
        p.sniffed_on = ifname
        w.write(p)
    w.close()
    flows, _, result = replay_json(path)
    assert result.exit_code == 0, result.output
    got = {f["iface"]: (f["packets"], f["first_seen"], f["last_seen"]) for f in flows}
    assert got == {
        "eth0": (2, at(0), at(300_000)),
        "eth1": (3, at(100_000), at(400_000)),
    }
    assert len(flows) == 2 and {key(f)[1:] for f in flows} == {(0, A4, B4, 1000, 53, "udp")}


def test_sll2_capture(tmp_path: Path) -> None:
    pkts = [
        CookedLinuxV2(proto=0x0800) / udp(),
        CookedLinuxV2(proto=0x86DD) / IPv6(src=A6, dst=B6),
    ]
    for i, p in enumerate(pkts):
        p.time = T0 + i
    path = tmp_path / "sll2.pcap"
    wrpcap(str(path), pkts)
    flows, summary, _ = replay_json(path)
    got = {(f["src"], f["proto"]): (f["packets"], f["bytes"], f["first_seen"]) for f in flows}
    # bytes are the lengths the capture recorded (the cooked header's 20 bytes included)
    assert got == {
        (A4, "udp"): (1, len(bytes(pkts[0])), at(0)),
        (A6, "59"): (1, len(bytes(pkts[1])), at(1_000_000)),
    }
    assert summary["counters"]["packets"] == 2


@pytest.mark.parametrize("linktype", [101, 228])
def test_raw_ip_capture(tmp_path: Path, linktype: int) -> None:
    raws = [bytes(udp(sport=1)), bytes(udp(sport=2))]
    data = pcap_header(linktype=linktype)
    for i, raw in enumerate(raws):
        data += pcap_record(raw, T0 + i, 0)
    path = tmp_path / "raw.pcap"
    path.write_bytes(data)
    flows, _, _ = replay_json(path)
    assert sorted((f["sport"], f["bytes"], f["first_seen"]) for f in flows) == [
        (1, len(raws[0]), at(0)),
        (2, len(raws[1]), at(1_000_000)),
    ]


def test_unsupported_link_type_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "wifi.pcap"
    path.write_bytes(pcap_header(linktype=105) + pcap_record(b"x" * 40))
    result = CliRunner().invoke(main, ["replay", str(path), "--json"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"flowscope: error: {path}: link type 105 (IEEE802_11) is not supported (flowscope "
        "replays Ethernet, Linux cooked (SLL, SLL2), raw IP (RAW, IPV4, IPV6) and BSD loopback "
        "captures)"
    ]


# -- damaged files: the message, and what came before is kept ---------------------------------


def two_flows() -> bytes:
    return (
        pcap_header(snaplen=1000)
        + pcap_record(bytes(eth() / udp(sport=1)), T0, 0)
        + pcap_record(bytes(eth() / udp(sport=2)), T0, 500_000)
    )


@pytest.mark.parametrize(
    ("name", "tail", "code", "message"),
    [
        ("cut-header", b"\x00" * 7, 0, "warning: {p}: the file ends inside the header of frame 3"),
        ("cut-record", pcap_record(b"z" * 100)[:-30], 0,
         "warning: {p}: the file ends inside frame 3"),
        ("huge-record", pcap_record(b"z" * 64)[:8] + b"\xff\xff\xff\x7f" * 2 + b"z" * 64, 2,
         "error: {p}: frame 3 (byte 164) claims 2147483647 bytes"),
    ],
)  # fmt: skip
def test_damage_keeps_what_came_before(
    tmp_path: Path, name: str, tail: bytes, code: int, message: str
) -> None:
    path = tmp_path / f"{name}.pcap"
    path.write_bytes(two_flows() + tail)
    flows, summary, result = replay_json(path)
    assert result.exit_code == code
    assert sorted(f["sport"] for f in flows) == [1, 2]
    assert summary["summary"]["complete"] is False
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("flowscope: " + message.format(p=path))
    assert line.endswith("the 2 frames before it were replayed")


def test_skipped_records_are_counted_not_fatal(tmp_path: Path) -> None:
    empty = pcap_record(b"")
    too_long = pcap_record(b"w" * 1001)
    path = tmp_path / "skips.pcap"
    path.write_bytes(
        two_flows() + empty + too_long + pcap_record(bytes(eth() / udp(sport=3)), T0 + 1)
    )
    flows, summary, result = replay_json(path)
    assert result.exit_code == 0 and result.stderr == ""
    assert sorted(f["sport"] for f in flows) == [1, 2, 3]
    assert summary["summary"]["skipped"] == {"empty": 1, "over_snaplen": 1, "unknown_interface": 0}


@pytest.mark.parametrize("content", [b"", b"GARBAGE!" * 10])
def test_not_a_capture(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["replay", str(path), "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"flowscope: error: {path}: ")
    assert "too short" in line or "not a pcap or pcapng file" in line


def test_piped_without_json_or_db_prints_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["replay", str(write_pcap(tmp_path / "v.pcap", VARIED))])
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == len(EXPECTED) + 1


# -- a history database, with expiry on the capture's clock --------------------------------------


def test_db_gets_records_samples_and_events_with_live_expiry(tmp_path: Path) -> None:
    frames: list[tuple[int, Packet | bytes, int | None]] = []
    s = 1_000_000
    # X: packets at 0, 1, 2 s, then nothing until 30 s: idle after 15 s, then a new record
    for t in (0, 1, 2, 30):
        frames.append((t * s, eth() / udp(sport=1111), None))
    # Y: a TCP exchange closed by FIN at 0.5 s: expired 2 s later (fin timeout)
    frames.append(
        (s // 10, eth() / IP(src=A4, dst=B4) / TCP(sport=2222, dport=80, flags="S"), None)
    )
    frames.append(
        (s // 2, eth() / IP(src=A4, dst=B4) / TCP(sport=2222, dport=80, flags="FA"), None)
    )
    # Z: one packet a second for 70 s: an active-timeout record at 60 s
    for t in range(71):
        frames.append((t * s + 1000, eth() / udp(sport=3333), None))
    frames.sort(key=lambda f: f[0])
    path = write_pcap(tmp_path / "expiry.pcap", frames)
    db = tmp_path / "h.db"
    result = CliRunner().invoke(main, ["replay", str(path), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "replayed 77 frames" in result.stderr
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT sport, packets, first_seen, last_seen, end_reason FROM flows"
        " ORDER BY sport, first_seen"
    ).fetchall()

    def ms(us: int) -> str:
        return at(us)[:23] + "Z"

    assert rows == [
        (1111, 3, ms(0), ms(2 * s), "idle"),
        (1111, 1, ms(30 * s), ms(30 * s), "idle"),  # idle again by 45 s
        (2222, 2, ms(s // 10), ms(s // 2), "fin"),
        (3333, 61, ms(1000), ms(60 * s + 1000), "active"),
        # the next record starts where the active one ended, as live
        (3333, 10, ms(60 * s + 1000), ms(70 * s + 1000), "shutdown"),
    ]
    # per-second samples on capture time (Z keeps a flow alive all along), and their packets
    samples = conn.execute("SELECT time, packets FROM samples ORDER BY time").fetchall()
    assert samples[0][0] == iso_us(T0 + 1)[:23] + "Z"
    assert len(samples) == 71
    assert sum(p for _, p in samples) == 77
    events = conn.execute("SELECT time, sport FROM events ORDER BY time, sport").fetchall()
    assert events == [(ms(0), 1111), (ms(1000), 3333), (ms(s // 10), 2222), (ms(30 * s), 1111)]


# -- on a terminal ------------------------------------------------------------------------------


def test_on_a_terminal_the_history_screen_opens_on_the_capture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowscope.cli import replay as cli
    from flowscope.ui import history

    opened: list[tuple[int, str, float, list[Any]]] = []

    def fake_run(app: history.HistoryApp) -> None:
        db = app._screen_args[0]
        rows = sqlite3.connect(db).execute("SELECT sport, packets FROM flows").fetchall()
        opened.append((len(rows), app._span, app._now(), sorted(rows)))

    monkeypatch.setattr(cli, "_stdout_is_terminal", lambda: True)
    monkeypatch.setattr(history.HistoryApp, "run", fake_run)
    result = CliRunner().invoke(main, ["replay", str(write_pcap(tmp_path / "v.pcap", VARIED))])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    ((n, span, now, rows),) = opened
    assert n == len(EXPECTED) and span == "5m"
    assert now == pytest.approx(T0 + 1.4 + 1)  # just after the capture's last frame
    assert (1234, 3) in rows


def test_frames_out_of_time_order_keep_the_earliest_and_latest_time(tmp_path: Path) -> None:
    """pcapng files merge interfaces and capture clocks step: the order in the file is not
    always the order in time."""
    frames: list[tuple[int, Packet | bytes, int | None]] = [
        (500_000, eth() / udp(sport=7), None),
        (900_000, eth() / udp(sport=7), None),
        (100_000, eth() / udp(sport=7), None),  # earlier than both
        (700_000, eth() / udp(sport=7), None),
    ]
    (f,), _, result = replay_json(write_pcap(tmp_path / "order.pcap", frames))
    assert result.exit_code == 0
    assert (f["packets"], f["first_seen"], f["last_seen"]) == (4, at(100_000), at(900_000))


def test_metrics_follow_the_replay_ticks_to_the_last_record(tmp_path: Path) -> None:
    """--metrics on replay: the ticks on the capture's clock feed the metrics, and their sums
    are what the replay printed, the last partial tick and the shutdown records included."""
    from flowscope.collect.collector import Tick
    from flowscope.collect.replay import JsonSink, ReplaySettings, replay
    from flowscope.export.prometheus import Metrics

    metrics = Metrics(flow_entries=1024)
    ticks: list[Tick] = []

    def on_tick(tick: Tick) -> None:
        ticks.append(tick)
        metrics.on_tick(tick)

    lines: list[str] = []
    summary = replay(
        ReplaySettings(write_pcap(tmp_path / "v.pcap", VARIED), flow_entries=1024),
        JsonSink(lines.append),
        on_tick=on_tick,
    )
    flows = [json.loads(line) for line in lines]
    assert len(ticks) == summary.ticks == 2  # 0 to 1.4 s: one second boundary, then the end
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in metrics.collect()
        for s in m.samples
    }
    iface = (("direction", "ingress"), ("interface", "if0"))
    assert values[("flowscope_packets_total", iface)] == sum(f["packets"] for f in flows) == 15
    assert values[("flowscope_bytes_total", iface)] == sum(f["bytes"] for f in flows)
    assert values[("flowscope_kernel_packets_total", ())] == len(VARIED) == 18
    assert values[("flowscope_flow_records_total", (("reason", "shutdown"),))] == len(EXPECTED)


# -- history over windows, from a capture whose every packet time is known ----------------------


def test_windows_count_what_was_sent_in_them(tmp_path: Path) -> None:
    """A constant 100 frames/s of 1,000 bytes for 200 s (800 kb/s), replayed into history:
    records of 60 s (the active timeout). A window counts the frames sent in it (within one per
    record it cuts, the rounding of the even spread), at 800 kb/s, whether it lies inside one
    record, straddles two or covers all; no graph bucket holds more than was sent in it."""
    frame = bytes(eth() / IP(src=A4, dst=B4) / UDP(sport=4444, dport=5555))
    frame += b"z" * (1000 - len(frame))
    frames: list[tuple[int, Packet | bytes, int | None]] = [
        (i * 10_000, frame, None) for i in range(20_000)
    ]
    db = tmp_path / "h.db"
    cbr = tmp_path / "cbr.pcap"
    cbr.write_bytes(  # write_pcap's += is quadratic: fine for a few frames, not for 20,000
        pcap_header()
        + b"".join(pcap_record(frame, T0 + us // 10**6, us % 10**6) for us, _, _ in frames)
    )
    result = CliRunner().invoke(main, ["replay", str(cbr), "--db", str(db)])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM flows WHERE sport = 4444").fetchone()[0] >= 3

    conn = files.connect_readonly(db)
    try:

        def window(lo: float, hi: float) -> dict[str, Any]:
            q = queries.HistoryQuery(since=T0 + lo, until=T0 + hi, top=None, exact=True)
            (row,) = queries.history(conn, q, now=T0 + 300).rows
            return row

        for lo, hi, cut in ((10, 40, 1), (50, 80, 2), (0, 10, 1), (-100, 400, 0)):
            row = window(lo, hi)
            sent = sum(1 for us, _, _ in frames if T0 + lo <= T0 + us / 1e6 < T0 + hi)
            assert abs(row["packets"] - sent) <= cut, (lo, hi, row["packets"], sent)
            assert abs(row["bytes"] - 1000 * sent) <= 1000 * cut
            if cut:  # the whole range: the flow's rate over the 200 s it was active
                assert row["bps"] == pytest.approx(800_000, rel=0.01)
        assert window(-100, 400)["packets"] == 20_000
        # the graph: from the kernel's per-tick counts, and from the records with a filter
        rng = history_query.TimeRange(T0, T0 + 200, "cbr")
        totals = history_query.bucket_bytes(conn, rng, 10.0)
        flows_only = history_query.bucket_bytes(conn, rng, 10.0, "sport = ?", [4444])
    finally:
        conn.close()
    assert totals == [1_000_000] * 20  # each tick counted its 100 frames
    assert sum(flows_only) == 20_000_000
    assert max(flows_only) <= 1_000_000 + 2 * 1000 and min(flows_only) >= 1_000_000 - 2 * 1000


@pytest.mark.parametrize(
    "idb_and_time",
    [("plain", 2**64 - 1), ("offset", 10**10), ("offset", -(10**10)), ("resol0", 2**60)],
    ids=["time-2^64", "offset+1e10", "offset-1e10", "tsresol0"],
)
def test_a_pcapng_time_out_of_range_is_one_line_exit_2_with_the_db_kept(
    tmp_path: Path, idb_and_time: tuple[str, int]
) -> None:
    """Issue #14: these raised struct.error (a traceback), also with --db."""
    kind, value = idb_and_time
    frame = bytes(eth() / udp(sport=1))
    if kind == "offset":
        idb, good, bad = ng_idb(tsoffset=value), b"", ng_epb(0, T0 * 10**6, frame)
    else:
        idb = ng_idb(tsresol=0) if kind == "resol0" else ng_idb()
        good = ng_epb(0, T0 * (1 if kind == "resol0" else 10**6), frame)
        bad = ng_epb(0, value, frame)
    path = tmp_path / "t.pcapng"
    path.write_bytes(ng_shb() + idb + good + bad)
    db = tmp_path / "r.db"
    result = CliRunner().invoke(main, ["replay", str(path), "--db", str(db)])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    frames = 1 if good else 0
    assert line.startswith("flowscope: error: ") and f"frame {frames + 1} " in line
    assert "outside 1970..2262" in line and "Traceback" not in result.output
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM flows").fetchone()[0] == frames
    conn.close()
