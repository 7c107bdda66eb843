"""Loss made on purpose (issue #17): a tc-bpf program on the receiving side's ingress drops
every EVERY-th TCP data segment of one port, and counts what it dropped. Against that truth
and the kernel's own view of the sockets:

- a connection this host opens, whose segments the peer's side loses: the retransmissions
  flowscope reports for its sent flow equal `ss -ti`'s total for the socket, exactly;
- a connection into this host, whose segments this side loses: the drops flowscope reports
  for its received flow equal what the loss program dropped, with the reason the kernel gave
  (TC_INGRESS: a tc program's verdict), and nothing else of the host is blamed on the flow;
- a connection to a closed port: one reset received on the client's flow, one sent on the
  server's side (ss cannot see these: the TCP flags of the flows are the truth);
- a connection open (and retransmitting) before flowscope started, which the hooks never saw
  established: its flows carry `ss -ti`'s numbers (from sock_diag), and its records only the
  retransmissions made after start.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from flowscope import abi
from flowscope.collect.collector import Collector, CollectorSettings
from flowscope.collect.health import OLDER_REFRESH
from flowscope.collect.owners import ProcessWatch, watch_processes
from flowscope.kernel.session import Probe
from flowscope.model import RETRANS_KINDS
from tests.kernel.test_tcp_health import BulkSender, live_health
from tests.netns import PYTHON, VethNamespace, veth_namespace

EVERY = 25

LOSS = r"""
import json, sys
from bcc import BPF
ifname, port, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
b = BPF(text='''
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
BPF_ARRAY(count, u64, 2);   /* 0: data segments seen, 1: dropped */
int lose(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != htons(ETH_P_IP))
        return TC_ACT_OK;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP || ip->ihl != 5)
        return TC_ACT_OK;
    struct tcphdr *tcp = (void *)(ip + 1);
    if ((void *)(tcp + 1) > end || tcp->dest != htons(PORT))
        return TC_ACT_OK;
    if (ntohs(ip->tot_len) <= 20 + tcp->doff * 4)
        return TC_ACT_OK;   /* no data: SYN, pure ACK, FIN */
    int k = 0;
    u64 *seen = count.lookup(&k);
    if (!seen)
        return TC_ACT_OK;
    *seen += 1;
    if (*seen % EVERY)
        return TC_ACT_OK;
    k = 1;
    u64 *dropped = count.lookup(&k);
    if (dropped)
        *dropped += 1;
    return TC_ACT_SHOT;
}
''', cflags=[f"-DPORT={port}", f"-DEVERY={every}"])
fn = b.load_func(b"lose", BPF.SCHED_CLS)
import ctypes, socket
lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
link = lib.bpf_link_create(fn.fd, socket.if_nametoindex(ifname), 46, None)  # BPF_TCX_INGRESS
assert link >= 0, ctypes.get_errno()
print("ready", flush=True)
sys.stdin.read()
c = b["count"]
print(json.dumps({"seen": c[ctypes.c_int(0)].value, "dropped": c[ctypes.c_int(1)].value}))
"""

SINK = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 0))
s.listen()
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
while c.recv(1 << 16):
    pass
"""

SEND = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
end = time.monotonic() + float(sys.argv[3])
data = b'y' * 65536
while time.monotonic() < end:
    c.sendall(data)
c.shutdown(socket.SHUT_WR)
c.recv(1)
"""


def tcp_mibs() -> dict[str, int]:
    """The root namespace's TCP retransmission counters (/proc/net/snmp and netstat)."""
    out: dict[str, int] = {}
    for path, group in (("/proc/net/snmp", "Tcp:"), ("/proc/net/netstat", "TcpExt:")):
        with open(path) as f:
            rows = [line.split() for line in f if line.startswith(group)]
        out.update(zip(rows[0][1:], map(int, rows[1][1:]), strict=True))
    names = ("RetransSegs", "TCPFastRetrans", "TCPRetransFail", "TCPLossProbes")
    return {k: out.get(k, 0) for k in names}


class Loss:
    """The loss program on one interface's ingress (in the root namespace, or a test's)."""

    def __init__(self, ifname: str, port: int, netns: str | None = None) -> None:
        prefix = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        self.proc = subprocess.Popen(
            [*prefix, PYTHON, "-c", LOSS, ifname, str(port), str(EVERY)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def counts(self) -> dict[str, int]:
        """What it saw and dropped; detaches it."""
        out, _ = self.proc.communicate(timeout=30)
        return dict(json.loads(out.strip().splitlines()[-1]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def hooks_retrans(watch: ProcessWatch, lport: int) -> list[int]:
    """The retransmissions the socket hooks hold for connections from local port ``lport``."""
    assert watch.health is not None and watch.health.source is not None
    _cookies, rows = watch.health.source.tcp_health()
    return [int(r["retrans"]) for r in rows if int(r["lport"]) == lport]


@pytest.fixture
def net() -> Iterator[VethNamespace]:
    with veth_namespace() as n:
        yield n


def test_loss_on_the_receiving_side_is_retransmitted_and_dropped(net: VethNamespace) -> None:
    procs: list[subprocess.Popen[str]] = []
    losses: list[Loss] = []
    try:
        # the host's connection to the namespace, lost on the namespace's side; the
        # namespace's connection to the host, lost on the host's side (ports the sinks drew)
        out_sink = subprocess.Popen(
            net.command(PYTHON, "-c", SINK), stdout=subprocess.PIPE, text=True
        )
        in_sink = subprocess.Popen([PYTHON, "-c", SINK], stdout=subprocess.PIPE, text=True)
        procs += [out_sink, in_sink]
        out_port, in_port = (int(p.stdout.readline()) for p in procs if p.stdout is not None)
        out_loss = Loss(net.peer_if, out_port, net.ns)  # the peer loses what we send
        in_loss = Loss(net.host_if, in_port)  # we lose what the peer sends
        losses += [out_loss, in_loss]
        with Probe([net.host_if], owners=True) as probe:
            table, watch = watch_processes(probe.program)
            try:
                assert watch.problem is None and watch.health is not None, watch.problem
                assert watch.drops is not None, watch.drops_problem
                collector = Collector(
                    probe.program,
                    CollectorSettings(idle_timeout=600, active_timeout=1.0),
                    owners=table,
                    health=watch.health,
                    drops=watch.drops,
                )
                mib_before = tcp_mibs()
                conn = socket.create_connection((net.peer_ip4, out_port))
                lport = conn.getsockname()[1]
                sender = BulkSender(conn)
                peer = subprocess.Popen(
                    net.command(PYTHON, "-c", SEND, net.host_ip4, str(in_port), "2.5"),
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                procs.append(peer)
                records = []
                ticks = []
                for _ in range(4):
                    time.sleep(0.7)
                    tick = collector.tick()
                    records += tick.records
                    ticks.append(tick)
                final = sender.stop(net.peer_ip4)  # everything acknowledged: final counts
                mib_after = tcp_mibs()
                peer.wait(timeout=30)
                lost_out = out_loss.counts()
                lost_in = in_loss.counts()
                tick = collector.tick()
                ticks.append(tick)
                records += tick.records + collector.shutdown()
                hooks_final = hooks_retrans(watch, lport)
                conn.close()
            finally:
                watch.close()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for loss in losses:
            loss.kill()
    assert lost_out["dropped"] > 0 and lost_in["dropped"] > 0, (lost_out, lost_in)
    # what we sent and the peer lost: retransmitted, as many as the socket says
    mine = [r for r in records if lport in (r.key.sport, r.key.dport)]
    sent = [r for r in mine if r.key.direction == abi.DIR_EGRESS]
    assert final["retrans"] >= lost_out["dropped"] > 0, (final, lost_out)
    # (said as each record's packets, retransmissions and end, and the hooks' own total)
    told = [(r.packets, r.retrans, r.end_reason) for r in sent]
    assert sum(r.retrans for r in sent) == final["retrans"], (told, final, hooks_final)
    # by kind (the congestion state the socket resent in): each record's kinds add up to its
    # retransmissions (no SYN was lost here), and the kernel's own counters of the namespace
    # (which has no other connection that retransmits) bound them: fast retransmits are
    # TCPFastRetrans (counted when sent) and those that failed to send (TCPRetransFail); a
    # tail loss probe resends one segment, and TCPLossProbes also counts probes of new data
    kinds = [r.retrans_kinds for r in sent]
    assert all(sum(k) == r.retrans for k, r in zip(kinds, sent, strict=True)), (kinds, told)
    fast, rto, probes = (sum(k[j] for k in kinds) for j in range(3))
    mibs = {k: mib_after[k] - mib_before[k] for k in mib_after}
    assert mibs["TCPFastRetrans"] <= fast <= mibs["TCPFastRetrans"] + mibs["TCPRetransFail"], (
        kinds,
        mibs,
    )
    assert probes <= mibs["TCPLossProbes"], (kinds, mibs)
    assert fast > 0 and rto >= 0, kinds
    by_tick = {k: sum(t.sample.counters[f"retrans_{k}"] for t in ticks) for k in RETRANS_KINDS}
    assert list(by_tick.values()) == [fast, rto, probes], (by_tick, kinds)
    # ... and not dropped here: the peer's namespace dropped it
    assert sum(r.drops for r in mine) == 0
    # what the peer sent and we lost: every drop on its received flow, with the kernel's reason
    theirs = [r for r in records if r.key.dport == in_port and r.key.direction == abi.DIR_INGRESS]
    # ... every drop the kernel reported, exactly (the host's TC_INGRESS drops are all this
    # flow's: nothing else is dropped by a tc program here)
    missed = sum(t.sample.counters["drops_missed"] for t in ticks)
    dropped = sum(r.drops for r in theirs)
    told = [(r.packets, r.drops, r.end_reason) for r in theirs]
    per_tick = [t.drops.get("TC_INGRESS", 0) for t in ticks]
    assert dropped == sum(per_tick), (told, per_tick)
    # ... and that is what the loss program dropped, but for any drop the kernel did not run
    # the hook for (it was running on that CPU already: a drop in an interrupt during
    # another's hook), which is counted apart, and for rare drops skb:kfree_skb never
    # reported at all: 2 of 2,140 in one run of about 45 here, with no miss counted (the
    # tracepoint fires only when the last reference to a packet goes; the cause is not
    # known). Allowed: 1 in 500.
    slack = lost_in["dropped"] // 500
    assert dropped <= lost_in["dropped"] <= dropped + missed + slack, (told, missed, lost_in)
    assert {r.drop_reason for r in theirs if r.drops} == {"TC_INGRESS"}
    # the peer's replies (ACKs) to it were not dropped; its sent side has no drops here
    acks = [r for r in records if r.key.sport == in_port and r.key.direction == abi.DIR_EGRESS]
    assert acks and sum(r.drops for r in acks) == 0
    # the host's drops per tick, per reason, hold at least those
    per_reason: dict[str, int] = {}
    for t in ticks:
        for name, n in t.drops.items():
            per_reason[name] = per_reason.get(name, 0) + n
    assert per_reason.get("TC_INGRESS", 0) + slack >= lost_in["dropped"], per_reason


def test_a_connection_to_a_closed_port_is_one_reset_each_way(net: VethNamespace) -> None:
    """The host connects to a port nothing listens on in the namespace, and the namespace to
    one on the host: the client's received flow is the one RST it got, the server's sent flow
    the one RST it sent (nothing else of either flow)."""
    # a port of the host nobody listens on: bound (so nothing else takes it), never listening
    closed = socket.socket()
    closed.bind(("0.0.0.0", 0))
    closed_port = closed.getsockname()[1]
    with closed, Probe([net.host_if]) as probe:
        collector = Collector(probe.program, CollectorSettings(idle_timeout=600))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((net.peer_ip4, closed_port), timeout=5)
        refused = net.python(
            "import socket, sys\n"
            "try:\n"
            "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
            "except ConnectionRefusedError:\n"
            "    print('refused')\n",
            net.host_ip4,
            str(closed_port),
        )
        assert refused.strip() == "refused"
        time.sleep(0.2)
        collector.tick()
        records = collector.shutdown()
    rst = 0x04
    # the host as client: it sent a SYN and received one RST
    received = [r for r in records if r.key.sport == closed_port and r.key.direction == 0]
    assert [(r.packets, r.tcp_flags & rst) for r in received] == [(1, rst)], received
    # the host as server: it received a SYN and sent one RST
    sent = [r for r in records if r.key.sport == closed_port and r.key.direction == 1]
    assert [(r.packets, r.tcp_flags & rst) for r in sent] == [(1, rst)], sent


def unused_udp_port() -> int:
    """A UDP port of the host that nothing listens on (bound, then freed again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def collecting_drops(probe: Probe) -> Iterator[Collector]:
    """A collector of the probe's flows and of the kernel's drops (the hook detached after)."""
    table, watch = watch_processes(probe.program)
    try:
        assert watch.drops is not None, watch.drops_problem
        yield Collector(
            probe.program, CollectorSettings(idle_timeout=600), owners=table, drops=watch.drops
        )
    finally:
        watch.close()


def test_a_burst_of_drops_is_attributed_up_to_the_budget_and_counted_past_it(
    net: VethNamespace,
) -> None:
    """5,000 UDP packets of one flow to a closed port of the host in one burst, from one CPU:
    the kernel drops each (NO_SOCKET). The hook attributes at most its budget per jiffy to the
    flow (built with a budget of 4 here, so that however slowly the sender goes the burst
    passes it) and counts the rest as unattributed (issue #18: a flood of drops must not cost
    an LRU insert each), so the flow's drops are fewer than were sent, and with the
    unattributed ones they cover every drop."""
    from tests.kernel.test_record import udp4

    closed_port = unused_udp_port()
    frames = [udp4(net, 5555, closed_port, 10)] * 5000
    with (
        Probe([net.host_if], owners=True, cflags=("-DDROP_BUDGET=4",)) as probe,
        collecting_drops(probe) as collector,
    ):
        assert net.send_frames(frames, cpu=0) == len(frames)
        time.sleep(0.3)
        tick = collector.tick()
        records = tick.records + collector.shutdown()
    flow = [r for r in records if r.key.dport == closed_port and r.key.sport == 5555]
    attributed = sum(r.drops for r in flow)
    unattributed = tick.sample.counters["drops_unattributed"]
    assert sum(r.packets for r in flow) == len(frames)
    assert tick.drops.get("NO_SOCKET", 0) >= len(frames), tick.drops
    assert 0 < attributed < len(frames), attributed
    assert attributed + unattributed >= len(frames), (attributed, unattributed)
    assert {r.drop_reason for r in flow if r.drops} == {"NO_SOCKET"}


def test_what_a_block_rule_drops_in_generic_xdp_is_an_xdp_drop(net: VethNamespace) -> None:
    """A block rule on an interface in generic XDP mode (veth here): the kernel frees each
    packet the program dropped through kfree_skb with reason NOT_SPECIFIED, from inside
    do_xdp_generic. flowscope names those XDP (the reason the kernel gives the other drops of
    that function), so that the status line does not show flowscope's own drops as drops of
    unknown cause; every one of them is the rule's, and no other drop is renamed."""
    from flowscope.collect.block import parse_rule
    from flowscope.kernel.block import BLOCK_CFLAGS, BlockMaps
    from tests.kernel.test_record import udp4

    closed_port = unused_udp_port()
    with (
        Probe([net.host_if], owners=True, cflags=BLOCK_CFLAGS, direction="ingress") as probe,
        collecting_drops(probe) as collector,
    ):
        rules = BlockMaps(probe.program)
        rules.put(parse_rule(f"udp/{closed_port}"))
        assert net.send_frames([udp4(net, 5555, closed_port, 10)] * 300, cpu=0) == 300
        # and to another closed port, not blocked: the stack drops these (NO_SOCKET)
        assert net.send_frames([udp4(net, 5556, closed_port + 1, 10)] * 40, cpu=0) == 40
        time.sleep(0.3)
        tick = collector.tick()
        records = tick.records + collector.shutdown()
        matched = rules.matched(parse_rule(f"udp/{closed_port}"))
    assert matched == 300
    assert tick.drops.get("XDP") == 300, tick.drops
    # tick.drops is the whole host's: another drop of unknown cause may fall in the same moment
    # (CI saw one once), but none of the rule's 300 is NOT_SPECIFIED, and no flow of the test's
    assert tick.drops.get("NOT_SPECIFIED", 0) < 300, tick.drops
    assert not [r for r in records if r.drop_reason == "NOT_SPECIFIED"], records
    assert tick.drops.get("NO_SOCKET", 0) >= 40, tick.drops
    # the flow's own (up to the hook's budget per jiffy: the burst may pass it)
    (blocked,) = [r for r in records if r.key.dport == closed_port]
    assert blocked.packets == 300 and 0 < blocked.drops <= 300, blocked
    assert blocked.drop_reason == "XDP"


def test_a_connection_open_before_start_has_its_health_from_sock_diag(
    net: VethNamespace,
) -> None:
    """A connection that was open and retransmitting before flowscope started (the hooks
    never saw it established): its flows carry the socket's own numbers, read from sock_diag,
    as `ss -ti` shows them; its records hold only the retransmissions made after start."""
    subprocess.run(
        ["tc", "qdisc", "add", "dev", net.host_if, "root", "tbf", "rate", "20mbit",
         "burst", "32kbit", "latency", "50ms"],
        check=True,
    )  # fmt: skip
    sink = subprocess.Popen(net.command(PYTHON, "-c", SINK), stdout=subprocess.PIPE, text=True)
    loss: Loss | None = None
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        loss = Loss(net.peer_if, port, net.ns)  # every 25th data segment lost: retransmitted
        conn = socket.create_connection((net.peer_ip4, port))
        lport = conn.getsockname()[1]
        time.sleep(0.1)
        # before start: a burst that overflows the queue, then quiet (all acknowledged)
        before = BulkSender(conn)
        time.sleep(1.5)
        baseline = before.stop(net.peer_ip4)
        with Probe([net.host_if], owners=True) as probe:
            _table, watch = watch_processes(probe.program)
            try:
                assert watch.health is not None, watch.problem
                collector = Collector(
                    probe.program,
                    CollectorSettings(idle_timeout=600, active_timeout=1.0),
                    owners=_table,
                    health=watch.health,
                )
                records = collector.tick().records
                sender = BulkSender(conn)
                for _ in range(4):
                    time.sleep(0.7)
                    records += collector.tick().records
                final = sender.stop(net.peer_ip4)
                time.sleep(OLDER_REFRESH + 0.1)  # the next read of sock_diag is after the end
                tick = collector.tick()
                live = live_health(tick, lport)
                records += tick.records + collector.shutdown()
                conn.close()
            finally:
                watch.close()
    finally:
        if loss is not None:
            loss.kill()
        sink.kill()
        sink.wait()
    assert baseline["retrans"] > 0, "no retransmission before start: nothing to leave out"
    assert final["retrans"] > baseline["retrans"], "no retransmission after start"
    # live: the socket's total, as ss shows it, on the sent flow
    assert {d: r for d, (r, _) in live.items()} == {
        abi.DIR_EGRESS: final["retrans"],
        abi.DIR_INGRESS: 0,
    }, (live, final)
    for _, rtt in live.values():
        assert abs(rtt - final["rtt"]) <= 0.1 * final["rtt"], (live, final)
    # records: exactly the retransmissions made while flowscope ran
    mine = [r for r in records if lport in (r.key.sport, r.key.dport)]
    sent = [r for r in mine if r.key.direction == abi.DIR_EGRESS]
    assert sum(r.retrans for r in sent) == final["retrans"] - baseline["retrans"], (
        [r.retrans for r in sent],
        baseline,
        final,
    )
    assert all(r.retrans == 0 for r in mine if r.key.direction == abi.DIR_INGRESS)
