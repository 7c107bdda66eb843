"""The egress (TC) program: the same parser as XDP on the same frames, real traffic both ways on
a veth pair, and attachments that never outlive flowscope nor disturb anyone else's.

BPF_PROG_TEST_RUN of a SCHED_CLS program builds an skb from the frame on the loopback device,
so the egress keys carry ifindex 1 there too, as XDP's do without a context. The kernel refuses
(EINVAL) an skb whose Ethernet type promises an IPv4 or IPv6 header that is not all there; such
frames cannot leave a real interface either, so they are left out of the comparison.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flowscope import abi
from flowscope.errors import BpfError
from flowscope.kernel import libbpf
from flowscope.kernel.egress import (
    TC_NAME,
    TcEgressAttachment,
    egress_attached,
    tcx_egress_programs,
)
from flowscope.kernel.program import TC_ACT_UNSPEC, BareProgram, FlowProgram
from flowscope.kernel.session import Probe
from flowscope.model import FlowKey, FlowStats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns import VethNamespace, veth_namespace, xdp_prog_id
from test_parser import CASES, Case, counters, observe

FLOWSCOPE = str(Path(sys.executable).parent / "flowscope")
UDP_ = 17
TC_VERDICT = TC_ACT_UNSPEC & 0xFFFFFFFF  # the u32 BPF_PROG_TEST_RUN reports


# -- the same frame table as the XDP parser -------------------------------------------------------


@pytest.fixture(scope="module")
def program(program_factory: Callable[..., FlowProgram]) -> FlowProgram:
    return program_factory(flow_entries=1024)


def egress(key: FlowKey) -> FlowKey:
    """The key the egress program gives the same frame: the direction is all that differs."""
    return FlowKey(
        key.family, key.src, key.dst, key.sport, key.dport, key.proto, key.vlan, key.ifindex,
        abi.DIR_EGRESS,
    )  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_egress_rule_gives_the_same_key(program: FlowProgram, case: Case) -> None:
    """Each rule of the parser table through the TC program: the XDP key with direction egress,
    the same counts, and the counters in the egress half only."""
    program.clear()
    try:
        for frame in case.frames:
            assert program.test_run_egress(frame).retval == TC_VERDICT
    except BpfError as e:
        assert e.errno == errno.EINVAL and case.key is None, case.id
        return
    flows, got = observe(program)
    n = len(case.frames)
    split = program.read_counters_by_direction()
    assert all(v == 0 for v in split[abi.DIR_INGRESS].values())
    size = sum(len(f) for f in case.frames)
    if case.key is None:
        assert flows == {}
        assert got == counters(n, size, **{case.outcome: n})
    else:
        assert flows == {egress(case.key): (n, size, n * case.ip_bytes, case.tcp_flags)}
        assert got == counters(n, size, flows_created=1)
    assert {c.name.lower(): v for c, v in split[abi.DIR_EGRESS].items()} == got


def test_both_programs_share_maps_and_keep_their_counters_apart(program: FlowProgram) -> None:
    """One frame through each program: two flows (one per direction) in the one map, and each
    direction's counters count its own packet; read_counters() gives the totals."""
    program.clear()
    frame = CASES[0].frames[0]
    assert program.test_run(frame).retval == 2  # XDP_PASS
    assert program.test_run_egress(frame).retval == TC_VERDICT
    assert program.test_run_egress(frame).retval == TC_VERDICT
    flows, got = observe(program)
    key = CASES[0].key
    assert key is not None and key.ifindex == 1  # the loopback device, for both programs
    assert {k: v[0] for k, v in flows.items()} == {key: 1, egress(key): 2}
    split = program.read_counters_by_direction()
    assert split[abi.DIR_INGRESS][abi.Counter.PACKETS] == 1
    assert split[abi.DIR_EGRESS][abi.Counter.PACKETS] == 2
    assert got == counters(3, 3 * len(frame), flows_created=2)


# -- real traffic both ways on a veth pair --------------------------------------------------------

UDP_SENDER = """
import socket, sys
src, dst = sys.argv[1], sys.argv[2]
port, n, size = (int(a) for a in sys.argv[3:6])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((src, 41000))
for _ in range(n):
    s.sendto(b"x" * size, (dst, port))
"""


@pytest.fixture
def net() -> Iterator[VethNamespace]:
    with veth_namespace() as n:
        yield n


def udp_flows(probe: Probe, port: int) -> dict[FlowKey, FlowStats]:
    """The test's UDP flows (to or from ``port``): the kernel's own chatter (MLD, ICMP errors
    for the datagrams nobody listens to) is left out by key."""
    return {
        k: s
        for batch in probe.program.read_all_flows()
        for k, s in batch.records()
        if k.proto == UDP_ and port in (k.sport, k.dport)
    }


def test_known_traffic_both_ways_gives_exact_counts_per_direction(net: VethNamespace) -> None:
    """Datagrams from the namespace are ingress on the host end (XDP); datagrams the root
    namespace sends from the host end's address are egress (TC). Each lands in its own flow,
    with the direction in the key and the exact packets and bytes."""
    with Probe([net.host_if], mode="generic", direction="both") as probe:
        assert probe.directions == ("ingress", "egress")
        assert probe.egress[0].how == "tcx"
        cases = [
            # (sender's address, receiver's address, port, datagrams, payload, IP header)
            (net.peer_ip4, net.host_ip4, 5101, 7, 100, 20),
            (net.host_ip4, net.peer_ip4, 5102, 5, 300, 20),
            (net.peer_ip6, net.host_ip6, 5103, 4, 60, 40),
            (net.host_ip6, net.peer_ip6, 5104, 9, 20, 40),
        ]
        for src, dst, port, n, size, _ in cases:
            args = (UDP_SENDER, src, dst, str(port), str(n), str(size))
            if src in (net.peer_ip4, net.peer_ip6):
                net.python(*args)
            else:
                subprocess.run([sys.executable, "-c", *args], check=True, timeout=30)
        for src, dst, port, n, size, iph in cases:
            family = abi.AF_INET6 if ":" in src else abi.AF_INET
            direction = abi.DIR_INGRESS if src in (net.peer_ip4, net.peer_ip6) else abi.DIR_EGRESS
            key = FlowKey(family, src, dst, 41000, port, UDP_, 0, net.host_ifindex, direction)
            got = udp_flows(probe, port)
            assert list(got) == [key], (port, got)
            s = got[key]
            assert (s.packets, s.bytes, s.ip_bytes) == (
                n, n * (14 + iph + 8 + size), n * (iph + 8 + size)
            ), port  # fmt: skip
        split = probe.program.read_counters_by_direction()
        # every packet counted in a flow is counted in its direction's packets too
        assert split[abi.DIR_INGRESS][abi.Counter.PACKETS] >= 7 + 4
        assert split[abi.DIR_EGRESS][abi.Counter.PACKETS] >= 5 + 9
        assert split[abi.DIR_EGRESS][abi.Counter.MALFORMED] == 0
    assert tcx_egress_programs(net.host_ifindex) == []
    assert xdp_prog_id(net.host_if) == 0


def test_direction_ingress_or_egress_alone(net: VethNamespace) -> None:
    """--direction egress attaches no XDP program; ingress no TC program."""
    with Probe([net.host_if], direction="egress") as probe:
        assert probe.directions == ("egress",)
        assert xdp_prog_id(net.host_if) == 0
        assert [n for _, n in tcx_egress_programs(net.host_ifindex)] == [TC_NAME]
        assert egress_attached(net.host_ifindex)
        assert probe.describe() == f"{net.host_if} (tcx egress)"
    with Probe([net.host_if], mode="generic", direction="ingress") as probe:
        assert probe.directions == ("ingress",)
        assert tcx_egress_programs(net.host_ifindex) == []
        assert not egress_attached(net.host_ifindex)


# -- never left behind, never in anyone's way ------------------------------------------------------

HOLDER = """
import sys, time
from flowscope.kernel.session import Probe
p = Probe([sys.argv[1]], mode="generic", direction="both")
print(p.describe(), flush=True)
time.sleep(120)
"""


def test_sigkill_removes_the_egress_program(net: VethNamespace) -> None:
    """The tcx link dies with the process, even by SIGKILL: no flowscope_tc is left."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, net.host_if], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == f"{net.host_if} (generic XDP, tcx egress)"
        assert [n for _, n in tcx_egress_programs(net.host_ifindex)] == [TC_NAME]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    assert tcx_egress_programs(net.host_ifindex) == []
    assert xdp_prog_id(net.host_if) == 0


def _tc_filters(ifname: str) -> str:
    return subprocess.run(
        ["tc", "filter", "show", "dev", ifname, "egress"], capture_output=True, text=True
    ).stdout


def _foreign_clsact_filter(ifindex: int, fd: int) -> None:
    """Another tool's cls_bpf filter on the clsact egress hook (priority 1, name 'foreign')."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.tc("add", "clsact", ifindex)
        ipr.tc(
            "add-filter", "bpf", ifindex, 1, fd=fd, name="foreign", parent=0xFFFFFFF3,
            prio=1, protocol=3, direct_action=True,
        )  # fmt: skip


def test_foreign_tc_programs_stay(net: VethNamespace) -> None:
    """A foreign tcx program and a foreign clsact filter on the same egress hook are still
    there, in place, after flowscope ran on the interface and exited."""
    with BareProgram("tc") as bare:
        link = libbpf.link_create(bare.prog_fd, net.host_ifindex, libbpf.BPF_TCX_EGRESS)
        try:
            _foreign_clsact_filter(net.host_ifindex, bare.prog_fd)
            before = tcx_egress_programs(net.host_ifindex)
            assert [n for _, n in before] == ["bare_tc"]
            proc = subprocess.run(
                [FLOWSCOPE, "dump", "-i", net.host_if, "--duration", "1", "--json"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr
            assert tcx_egress_programs(net.host_ifindex) == before
            filters = _tc_filters(net.host_if)
            assert "foreign" in filters and TC_NAME not in filters
        finally:
            os.close(link)
    assert tcx_egress_programs(net.host_ifindex) == []


def test_clsact_fallback_counts_and_cleans_up(net: VethNamespace) -> None:
    """The path for kernels without tcx, exercised here by skipping tcx: a clsact qdisc and a
    cls_bpf filter that count egress, removed on detach (qdisc too, as flowscope added it)."""
    prog = FlowProgram(flow_entries=1024)
    try:
        with TcEgressAttachment(prog.tc_prog_fd, net.host_if, tcx=False) as att:
            assert att.how == "clsact"
            assert TC_NAME in _tc_filters(net.host_if)
            assert egress_attached(net.host_ifindex)
            subprocess.run(
                [sys.executable, "-c", UDP_SENDER, net.host_ip4, net.peer_ip4, "5105", "3", "50"],
                check=True,
                timeout=30,
            )
            flows = {
                k: s
                for b in prog.read_all_flows()
                for k, s in b.records()
                if k.proto == UDP_ and k.dport == 5105
            }
            key = FlowKey(
                abi.AF_INET, net.host_ip4, net.peer_ip4, 41000, 5105, UDP_, 0,
                net.host_ifindex, abi.DIR_EGRESS,
            )  # fmt: skip
            assert {k: s.packets for k, s in flows.items()} == {key: 3}
        assert _tc_filters(net.host_if).strip() == ""
        qdiscs = subprocess.run(
            ["tc", "qdisc", "show", "dev", net.host_if], capture_output=True, text=True
        ).stdout
        assert "clsact" not in qdiscs
    finally:
        prog.close()


CLSACT_HOLDER = """
import sys, time
from flowscope.kernel.program import FlowProgram
from flowscope.kernel.egress import TcEgressAttachment
p = FlowProgram(flow_entries=64)
a = TcEgressAttachment(p.tc_prog_fd, sys.argv[1], tcx=False)
print(a.how, flush=True)
time.sleep(120)
"""


def test_clsact_filter_left_by_sigkill_is_removed_by_the_next_start(net: VethNamespace) -> None:
    """Without tcx nothing removes a filter when its process dies (the documented limit of the
    fallback): the next flowscope start on the interface removes it before adding its own."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CLSACT_HOLDER, net.host_if], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "clsact"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        proc.wait()
    assert _tc_filters(net.host_if).count(TC_NAME) >= 1  # left behind
    prog = FlowProgram(flow_entries=64)
    try:
        with TcEgressAttachment(prog.tc_prog_fd, net.host_if, tcx=False):
            filters = _tc_filters(net.host_if)
            assert filters.count("handle") == 1, filters
    finally:
        prog.close()


def test_dump_counts_both_directions_in_json(net: VethNamespace) -> None:
    """`flowscope dump` (default --direction both) sees the replies the host sends."""
    proc = subprocess.Popen(
        [FLOWSCOPE, "dump", "-i", net.host_if, "--duration", "4", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not egress_attached(net.host_ifindex) or xdp_prog_id(net.host_if) == 0:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        subprocess.run(
            [sys.executable, "-c", UDP_SENDER, net.host_ip4, net.peer_ip4, "5106", "2", "10"],
            check=True,
            timeout=30,
        )
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    rows = [json.loads(line) for line in out.splitlines()[:-1]]
    mine = [r for r in rows if r["dport"] == 5106 and r["proto"] == "udp"]
    assert [(r["src"], r["direction"], r["packets"]) for r in mine] == [
        (net.host_ip4, "egress", 2)
    ], out


def test_record_keeps_the_direction_in_history(net: VethNamespace, tmp_path: Path) -> None:
    """`record` fills the direction from the key: `history --filter egress` gives the sent
    flow, `--filter ingress` the received one, and --group-by flow keeps the two apart even
    for the same addresses and ports."""
    db = tmp_path / "flows.db"
    proc = subprocess.Popen(
        [FLOWSCOPE, "record", "-i", net.host_if, "--db", str(db), "--duration", "6"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not egress_attached(net.host_ifindex) or xdp_prog_id(net.host_if) == 0:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        # the same ports both ways: host -> peer is sent, peer -> host received
        sender = (UDP_SENDER, "5107", "3", "40")
        subprocess.run(
            [sys.executable, "-c", sender[0], net.host_ip4, net.peer_ip4, *sender[1:]],
            check=True,
            timeout=30,
        )
        net.python(sender[0], net.peer_ip4, net.host_ip4, *sender[1:])
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0, err

    def history(*args: str) -> list[dict[str, object]]:
        out = subprocess.run(
            [FLOWSCOPE, "history", "--db", str(db), "--format", "json", *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [r for r in map(json.loads, out.splitlines()) if r.get("dport") == 5107]

    sent = history("--filter", "egress and udp")
    assert [(r["src"], r["direction"], r["packets"]) for r in sent] == [(net.host_ip4, "egress", 3)]
    received = history("--filter", "ingress and udp")
    assert [(r["src"], r["direction"], r["packets"]) for r in received] == [
        (net.peer_ip4, "ingress", 3)
    ]
    both = history("--group-by", "flow", "--filter", "udp")
    assert sorted(str(r["direction"]) for r in both) == ["egress", "ingress"]
