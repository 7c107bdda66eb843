"""flowscope bench without the kernel: its JSON lines, its table, its --only check, and the frames
it builds with struct (checked against scapy, which only the tests may use)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence

import pytest
from click.testing import CliRunner
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether

from flowscope.bench import harness, workload
from flowscope.bench import suite as bench
from flowscope.cli import main

KEYS = ["name", "value", "unit", "baseline_name", "baseline", "ratio"]

FAKE = [
    harness.Result("xdp_hot_ipv4_tcp", 55, "ns/packet", "bare_xdp_pass", 22),
    harness.Result("xdp_insert_100k", 1019.44, "ns/flow", "bare_xdp_pass", 124.81),
    harness.Result("xdp_hot_ipv4_tcp_precise_clock", 85, "ns/packet", "xdp_hot_ipv4_tcp", 55, True),
]


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], harness.Settings]]:
    """Replace the kernel part of the bench with canned results, recording what was asked."""
    calls: list[tuple[list[str], harness.Settings]] = []

    def run(
        names: Sequence[str], settings: harness.Settings = harness.DEFAULT
    ) -> Iterator[harness.Result]:
        calls.append((list(names), settings))
        return iter([r for r in FAKE if r.name in names])

    monkeypatch.setattr(bench, "run", run)
    return calls


def test_json_lines_have_the_documented_keys(
    fake_run: list[tuple[list[str], harness.Settings]],
) -> None:
    result = CliRunner().invoke(main, ["bench", "--json"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(FAKE)
    objs = [json.loads(line) for line in lines]
    assert [list(o) for o in objs] == [KEYS] * len(FAKE)
    hot, insert, precise = objs
    assert hot == {
        "name": "xdp_hot_ipv4_tcp",
        "value": 55.0,
        "unit": "ns/packet",
        "baseline_name": "bare_xdp_pass",
        "baseline": 22.0,
        "ratio": 2.5,
    }
    assert insert["value"] == 1019.4 and insert["baseline"] == 124.8
    assert insert["ratio"] == pytest.approx(1019.44 / 124.81, abs=1e-3)
    assert precise["baseline_name"] == "xdp_hot_ipv4_tcp"
    # the informative sentence goes to stderr, so stdout stays pure JSON lines
    assert "informative" in result.stderr
    assert fake_run[0][1] == harness.DEFAULT


def test_only_and_quick_select_a_fast_subset(
    fake_run: list[tuple[list[str], harness.Settings]],
) -> None:
    result = CliRunner().invoke(main, ["bench", "--json", "--quick", "--only", "xdp_hot_ipv4_tcp"])
    assert result.exit_code == 0, result.output
    assert fake_run == [(["xdp_hot_ipv4_tcp"], harness.QUICK)]
    assert [json.loads(line)["name"] for line in result.stdout.splitlines()] == ["xdp_hot_ipv4_tcp"]


def test_only_takes_repeats_and_commas_in_the_usual_order() -> None:
    assert bench.select(["xdp_insert_100k,xdp_hot_ipv4_tcp"]) == [
        "xdp_hot_ipv4_tcp",
        "xdp_insert_100k",
    ]
    assert bench.select(["xdp_vlan_ipv4_udp", "xdp_ipv6_tcp_ext"]) == [
        "xdp_ipv6_tcp_ext",
        "xdp_vlan_ipv4_udp",
    ]
    assert bench.select([]) == list(bench.NAMES)


def test_unknown_name_is_a_one_line_usage_error(
    fake_run: list[tuple[list[str], harness.Settings]],
) -> None:
    result = CliRunner().invoke(main, ["bench", "--only", "xdp_nope"])
    assert result.exit_code == 2
    assert "no benchmark named 'xdp_nope'" in result.stderr
    assert "xdp_hot_ipv4_tcp" in result.stderr  # the hint lists the names
    assert "Traceback" not in result.output
    assert fake_run == []  # rejected before anything is compiled


def test_table_is_aligned_and_explains_the_minimum(
    fake_run: list[tuple[list[str], harness.Settings]],
) -> None:
    result = CliRunner().invoke(main, ["bench"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header, rows = lines[0], lines[1:4]
    assert header.split() == ["benchmark", "value", "unit", "baseline", "value", "ratio"]
    assert {len(line) for line in [header, *rows]} == {len(header)}
    assert rows[0].split() == [
        "xdp_hot_ipv4_tcp",
        "55.0",
        "ns/packet",
        "bare_xdp_pass",
        "22.0",
        "2.50",
    ]
    assert "informative" in result.stdout
    assert "minimum over 15 interleaved rounds" in result.stdout


def test_help_says_the_minimum_is_reported() -> None:
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0
    assert "MINIMUM" in result.output and "15 rounds" in result.output


def _rebuilt(frame: bytes) -> bytes:
    """The frame as scapy builds it from its own parse, checksums and lengths recomputed."""
    pkt = Ether(frame)
    for layer in (IP, TCP, UDP):
        if layer in pkt:
            del pkt[layer].chksum
    if IP in pkt:
        del pkt[IP].len
    if IPv6 in pkt:
        del pkt[IPv6].plen
    return bytes(pkt)


def test_hot_ipv4_tcp_frame() -> None:
    frame = workload.hot_ipv4_tcp_frame()
    pkt = Ether(frame)
    assert len(frame) == 60
    assert (pkt[IP].src, pkt[IP].dst, pkt[TCP].sport, pkt[TCP].dport) == workload.HOT4
    assert pkt[TCP].flags == "A"
    assert _rebuilt(frame) == frame


def test_ipv6_frame_has_two_extension_headers_before_tcp() -> None:
    frame = workload.ipv6_tcp_ext_frame()
    pkt = Ether(frame)
    assert IPv6ExtHdrHopByHop in pkt and IPv6ExtHdrDestOpt in pkt
    assert pkt[IPv6].nh == 0 and pkt[IPv6ExtHdrHopByHop].nh == 60
    assert pkt[IPv6ExtHdrDestOpt].nh == 6
    assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[TCP].sport, pkt[TCP].dport) == workload.V6
    assert _rebuilt(frame) == frame


def test_vlan_frame_is_tagged_ipv4_udp() -> None:
    frame = workload.vlan_ipv4_udp_frame()
    pkt = Ether(frame)
    assert pkt[Dot1Q].vlan == workload.VLAN_ID
    assert (pkt[IP].src, pkt[IP].dst, pkt[UDP].sport, pkt[UDP].dport) == workload.VLAN4
    assert _rebuilt(frame) == frame


def test_insert_frames_and_fill_keys_are_distinct_flows_apart_from_the_hot_one() -> None:
    frames = workload.insert_frames(1000)
    tuples = {(Ether(f)[IP].src, Ether(f)[TCP].sport) for f in frames}
    assert len(tuples) == 1000
    assert (workload.HOT4[0], workload.HOT4[2]) not in tuples
    keys = workload.other_flow_keys(70_000)
    assert len({k.tobytes() for k in keys}) == 70_000
    assert bytes(keys[1]["saddr"]) == bytes([172, 16, 0, 1])
    assert int(keys[0]["dport"]) == 443 and int(keys[0]["proto"]) == 6


def test_median_of_loads_is_the_median_of_each_loads_minimum() -> None:
    """Three loads of a program (minimums 5, 3 and 1 over three rounds) and one of the
    baseline: the program's number is the middle load, not its luckiest one."""
    durations = [iter([9, 5, 7]), iter([3, 8, 8]), iter([6, 6, 1]), iter([2, 4, 2])]
    runs = [functools.partial(next, it) for it in durations]
    assert harness.median_of_loads([runs[:3], runs[3:]], 3) == [3.0, 2.0]
