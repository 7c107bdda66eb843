"""Which process: every local flow attributed to its own process, against the pids the test
started itself (issue #16).

Real processes on a real veth pair: short-lived clients in the root namespace talk to a server
in the test namespace (their flows are theirs, both the sent and the received side), clients in
the test namespace talk to a server in the root namespace (those flows are the server's). The
collector joins flows and owners only after every client has exited, so nothing here can come
from /proc: it must have been taken in the kernel when the sockets were made."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from flowscope import abi
from flowscope.collect.collector import Collector, CollectorSettings
from flowscope.collect.owners import watch_processes
from flowscope.kernel.owners import cgroup2_root
from flowscope.kernel.session import Probe
from flowscope.model import FlowRecord
from tests.netns import PYTHON, VethNamespace, veth_namespace

TCP_PORT, UDP_PORT = 7001, 7002

SERVER = """
import socket, sys, threading
open('/proc/self/comm', 'w').write(sys.argv[1])
TCP_PORT, UDP_PORT = int(sys.argv[2]), int(sys.argv[3])

def echo(c):
    with c:
        while (d := c.recv(4096)):
            c.sendall(d)

def tcp(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, TCP_PORT))
    s.listen(512)
    ready.release()
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()

def udp(family, addr):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, UDP_PORT))
    ready.release()
    while True:
        d, a = s.recvfrom(4096)
        s.sendto(d, a)

ready = threading.Semaphore(0)
for f, a in ((socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::')):
    threading.Thread(target=tcp, args=(f, a), daemon=True).start()
    threading.Thread(target=udp, args=(f, a), daemon=True).start()
for _ in range(4):
    ready.acquire()
print('ready', flush=True)
sys.stdin.read()
"""

CLIENT = """
import os, socket, sys
name, proto, host, port, cgroup = sys.argv[1:6]
if cgroup:
    open(cgroup + '/cgroup.procs', 'w').write(str(os.getpid()))
open('/proc/self/comm', 'w').write(name)
family = socket.AF_INET6 if ':' in host else socket.AF_INET
if proto == 'tcp':
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect((host, int(port)))
    s.sendall(b'hello')
    s.recv(16)
else:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b'hello', (host, int(port)))
    s.recvfrom(16)
print(s.getsockname()[1], flush=True)
s.close()
"""


@pytest.fixture
def net() -> Iterator[VethNamespace]:
    with veth_namespace() as n:
        yield n


def start_server(argv: list[str], name: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*argv, PYTHON, "-c", SERVER, name, str(TCP_PORT), str(UDP_PORT)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"server {name} did not start: {proc.communicate()}")
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()


def run_client(
    argv: list[str], name: str, proto: str, host: str, cgroup: str = ""
) -> tuple[int, int]:
    """(pid, local port) of one client run to its end."""
    port = str(TCP_PORT if proto == "tcp" else UDP_PORT)
    proc = subprocess.Popen(
        [*argv, PYTHON, "-c", CLIENT, name, proto, host, port, cgroup],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return proc.pid, int(out)


def test_short_lived_clients_and_servers_each_get_their_own_flows(net: VethNamespace) -> None:
    ns = ["ip", "netns", "exec", net.ns]
    with Probe([net.host_if], owners=True) as probe:
        table, watch = watch_processes(probe.program)
        try:
            assert watch.problem is None, watch.problem
            collector = Collector(
                probe.program,
                CollectorSettings(idle_timeout=600, fin_timeout=600, active_timeout=600),
                iface_names=probe.interface_names(),
                owners=table,
            )
            far = start_server(ns, "fs-far-srv")
            near = start_server([], "fs-near-srv")
            try:
                jobs = []
                for i in range(200):
                    proto = ("tcp", "udp")[i % 2]
                    if i % 4 < 2:  # from the root namespace to the far server
                        host = net.peer_ip4 if i % 8 < 4 else net.peer_ip6
                        jobs.append(("root", [], f"fsc{i}", proto, host))
                    else:  # from the test namespace to the near (root namespace) server
                        host = net.host_ip4 if i % 8 < 4 else net.host_ip6
                        jobs.append(("ns", ns, f"fsc{i}", proto, host))
                with ThreadPoolExecutor(8) as pool:
                    done = list(pool.map(lambda j: (j, run_client(j[1], j[2], j[3], j[4])), jobs))
                collector.tick()
                records = collector.shutdown()
                near_pid, far_pid = near.pid, far.pid
            finally:
                stop(far)
                stop(near)
        finally:
            watch.close()

    # a client's flows: its address and port at one end (ports alone repeat across namespaces)
    by_end: dict[tuple[int, str, int], list[FlowRecord]] = {}
    for r in records:
        by_end.setdefault((r.key.proto, r.key.src, r.key.sport), []).append(r)
        by_end.setdefault((r.key.proto, r.key.dst, r.key.dport), []).append(r)

    def client_end(job: tuple[str, list[str], str, str, str], port: int) -> tuple[int, str, int]:
        side, _argv, _name, proto, host = job
        number = socket.IPPROTO_TCP if proto == "tcp" else socket.IPPROTO_UDP
        v6 = ":" in host
        if side == "root":
            return number, net.host_ip6 if v6 else net.host_ip4, port
        return number, net.peer_ip6 if v6 else net.peer_ip4, port

    # Two clients that drew the same port one after the other are one flow (the kernel map
    # cannot tell them apart, README "Which process"): a few percent of runs have one such
    # pair among the UDP clients. Those are left out; every other client is checked.
    drawn = collections.Counter(client_end(job, port) for job, (_pid, port) in done)
    assert sum(n for n in drawn.values() if n > 1) <= 6, drawn.most_common(3)
    checked = 0
    for job, (pid, port) in done:
        side, _argv, name, proto, host = job
        end = client_end(job, port)
        if drawn[end] > 1:
            continue
        flows = by_end.get(end, [])
        directions = {r.key.direction for r in flows}
        assert directions == {abi.DIR_INGRESS, abi.DIR_EGRESS}, (name, flows)
        for r in flows:
            assert r.owner is not None, (name, r)
            if side == "root":  # the client's own socket, both what it sent and received
                assert (r.owner.pid, r.owner.comm) == (pid, name), r
            else:  # the near server's socket: its listener, or its bound UDP socket
                assert (r.owner.pid, r.owner.comm) == (near_pid, "fs-near-srv"), r
            checked += 1
    assert checked >= 400 - 2 * sum(n for n in drawn.values() if n > 1)
    # the far server's sockets are in another namespace: no flow is its
    assert not [r for r in records if r.owner is not None and r.owner.pid == far_pid]


def test_a_flow_that_is_not_for_a_local_address_has_no_process(net: VethNamespace) -> None:
    """Packets to the near server's port, but for an address this host does not have (what a
    router forwards): nobody here owns them, whatever listens on that port."""
    with Probe([net.host_if], direction="ingress", owners=True) as probe:
        table, watch = watch_processes(probe.program)
        near = start_server([], "fs-near-srv")
        try:
            assert watch.problem is None, watch.problem
            collector = Collector(probe.program, CollectorSettings(idle_timeout=600), owners=table)
            frames = [
                bytes(
                    Ether(src=net.peer_mac, dst=net.host_mac)
                    / IP(src=net.peer_ip4, dst=dst)
                    / TCP(sport=40000, dport=TCP_PORT, flags="S")
                )
                for dst in ("198.19.200.7", net.host_ip4)
            ]
            net.send_frames(frames)
            time.sleep(0.2)
            collector.tick()
            records = collector.shutdown()
        finally:
            stop(near)
            watch.close()
    owners = {r.key.dst: r.owner for r in records if r.key.dport == TCP_PORT}
    assert owners["198.19.200.7"] is None
    assert owners[net.host_ip4] is not None and owners[net.host_ip4].pid == near.pid


def test_a_child_cgroup_and_a_connection_older_than_flowscope(net: VethNamespace) -> None:
    root = cgroup2_root()
    assert root is not None, "no cgroup v2 hierarchy"
    cgroup = root / f"fstest{os.getpid()}"
    ns = ["ip", "netns", "exec", net.ns]
    far = start_server(ns, "fs-far-srv")
    # a long-lived connection opened before any hook exists
    old = subprocess.Popen(
        [PYTHON, "-c",
         "import socket, sys, time\n"
         "open('/proc/self/comm', 'w').write('fs-old')\n"
         f"s = socket.create_connection(({net.peer_ip4!r}, {TCP_PORT}))\n"
         "print(s.getsockname()[1], flush=True)\n"
         "while True:\n    s.sendall(b'x'); s.recv(1); time.sleep(0.05)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    cgroup.mkdir()
    try:
        assert old.stdout is not None
        old_port = int(old.stdout.readline())
        with Probe([net.host_if], owners=True) as probe:
            table, watch = watch_processes(probe.program)
            try:
                assert watch.problem is None, watch.problem
                collector = Collector(
                    probe.program, CollectorSettings(idle_timeout=600), owners=table
                )
                pid, port = run_client([], "fs-in-cg", "tcp", net.peer_ip4, str(cgroup))
                time.sleep(0.3)
                collector.tick()
                records = collector.shutdown()
            finally:
                watch.close()
    finally:
        stop(old)
        stop(far)
        cgroup.rmdir()
    mine = [r for r in records if port in (r.key.sport, r.key.dport)]
    assert mine and all(r.owner is not None for r in mine)
    assert {(r.owner.pid, r.owner.cgroup) for r in mine if r.owner} == {(pid, "/" + cgroup.name)}
    older = [r for r in records if old_port in (r.key.sport, r.key.dport)]
    assert {r.key.direction for r in older} == {abi.DIR_INGRESS, abi.DIR_EGRESS}
    assert {(r.owner.pid, r.owner.comm) for r in older if r.owner} == {(old.pid, "fs-old")}
    assert all(r.owner is not None for r in older)


def test_announcements_the_ring_buffer_cannot_hold_are_counted(net: VethNamespace) -> None:
    """A socket ring buffer of one page (4 KiB: 39 announcements of 104 bytes with their
    headers) and 300 sockets bound before the collector polls: the kernel's own count of what
    it could not write is what the tick reports as sockets_lost (the status line and
    Prometheus show it), and nothing written is lost on the way."""
    from flowscope.kernel.owners import OwnerHooks

    with Probe([net.host_if], owners=True, cflags=("-DSOCK_RINGBUF_PAGES=1",)) as probe:
        table, watch = watch_processes(probe.program)
        try:
            assert watch.problem is None, watch.problem
            hooks = table.source
            assert isinstance(hooks, OwnerHooks)
            collector = Collector(probe.program, CollectorSettings(), owners=table)
            before = hooks.counters()
            delivered: list[object] = []
            poll = hooks.poll
            hooks.poll = lambda: delivered.extend(got := poll()) or got  # type: ignore[method-assign]
            socks = []
            try:
                for _ in range(300):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.bind((net.host_ip4, 0))
                    socks.append(s)
                mid = hooks.counters()  # other processes may make sockets meanwhile: bounds
                tick = collector.tick()
                after = hooks.counters()
            finally:
                for s in socks:
                    s.close()
        finally:
            watch.close()
    full, events = abi.SockCounter.RINGBUF_FULL, abi.SockCounter.EVENTS
    assert mid[full] - before[full] >= 300 - 4096 // 104, (mid, before)
    assert mid[full] <= tick.sample.counters["sockets_lost"] <= after[full]
    assert mid[events] - before[events] <= len(delivered) <= after[events] - before[events]


CONNECTED = """
import socket, sys
name, kind, host, port = sys.argv[1:5]
open('/proc/self/comm', 'w').write(name)
family = socket.AF_INET6 if ':' in host else socket.AF_INET
if kind == 'udp':  # connect() then send(): no bind, no sendto (the glibc resolver's way)
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((host, int(port)))
    s.send(b'hello')
    s.recv(16)
    print(s.getsockname()[1], flush=True)
else:  # an echo request from a raw socket, as ping does without ping sockets
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    s = socket.socket(family, socket.SOCK_RAW, proto)
    s.settimeout(5)
    s.sendto(bytes.fromhex(sys.argv[5]), (host, 0))
    s.recv(256)
    print(0, flush=True)
s.close()
"""


def test_connected_udp_and_icmp_sockets_are_attributed_by_the_packets_they_send(
    net: VethNamespace,
) -> None:
    """Sockets no bind, listen, connect or sendto hook names: a UDP socket that connect()s and
    send()s (its port is chosen after the connect hook), and a raw ICMP socket. The TC program
    names them from the socket of their first packet sent: both directions of each flow carry
    the client's own pid."""
    from scapy.layers.inet import ICMP
    from scapy.layers.inet6 import ICMPv6EchoRequest

    ns = ["ip", "netns", "exec", net.ns]
    echo = {
        net.peer_ip4: bytes(ICMP(type=8, id=0x4242, seq=1) / b"fs").hex(),
        net.peer_ip6: bytes(ICMPv6EchoRequest(id=0x4242, seq=1, cksum=0) / b"fs").hex(),
    }
    with Probe([net.host_if], owners=True) as probe:
        table, watch = watch_processes(probe.program)
        try:
            assert watch.problem is None, watch.problem
            collector = Collector(probe.program, CollectorSettings(idle_timeout=600), owners=table)
            far = start_server(ns, "fs-far-srv")
            try:
                done = []
                # ICMP flows are keyed by type and code: a second pinger of the same host
                # would only add to the first one's flow, so one of each family
                clients = [("udp", net.peer_ip4), ("udp", net.peer_ip6)] * 3 + [
                    ("icmp", net.peer_ip4),
                    ("icmp", net.peer_ip6),
                ]
                for i, (kind, host) in enumerate(clients):
                    proc = subprocess.Popen(
                        [PYTHON, "-c", CONNECTED, f"fsk{i}", kind, host, str(UDP_PORT),
                         echo[host]],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    )  # fmt: skip
                    out, err = proc.communicate(timeout=30)
                    assert proc.returncode == 0, err
                    done.append((kind, host, proc.pid, f"fsk{i}", int(out)))
                records = collector.tick().records + collector.shutdown()
            finally:
                stop(far)
        finally:
            watch.close()
    for kind, host, pid, name, port in done:
        if kind == "udp":
            mine = [r for r in records if r.key.proto == 17 and port in (r.key.sport, r.key.dport)
                    and host in (r.key.src, r.key.dst)]  # fmt: skip
        else:  # the request out and the reply in
            mine = [r for r in records if r.key.proto in (1, 58) and host in (r.key.src, r.key.dst)
                    and r.key.dport >> 8 in (0, 8, 128, 129)]  # fmt: skip
        assert {r.key.direction for r in mine} == {abi.DIR_INGRESS, abi.DIR_EGRESS}, (name, mine)
        for r in mine:
            assert r.owner is not None and (r.owner.pid, r.owner.comm) == (pid, name), r


ROUTER = """
import json, os, socket, sys, threading, time
from flowscope.collect.collector import Collector, CollectorSettings
from flowscope.collect.owners import watch_processes
from flowscope.kernel.session import Probe

far, port = sys.argv[1], int(sys.argv[2])
with Probe(["fsra", "fsrb"], owners=True) as probe:
    table, watch = watch_processes(probe.program)
    assert watch.problem is None, watch.problem
    collector = Collector(probe.program, CollectorSettings(idle_timeout=600), owners=table)
    # a listener of the router's own on the port the forwarded connection goes to
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen()
    print("ready", flush=True)
    sys.stdin.readline()
    # and a connection of its own to the far end, through the same interfaces
    c = socket.create_connection((far, port), timeout=5)
    c.sendall(b"hello")
    c.recv(16)
    c.close()
    time.sleep(0.3)
    collector.tick()
    for r in collector.shutdown():
        k = r.key
        print(json.dumps([k.proto, k.src, k.dst, k.sport, k.dport, k.direction,
                          r.owner.pid if r.owner else None]), flush=True)
    watch.close()
"""


def test_a_flow_the_host_only_forwards_has_no_process() -> None:
    """Three namespaces, A - R - B, R forwarding (its own sysctl; nothing of the machine's is
    touched) and flowscope recording in R on both of its interfaces: a connection from A to B
    crosses R and has no process there, though a process of R listens on the same port;
    R's own connection to B, over the same interfaces, is R's process's."""
    tag = f"{os.getpid()}x{time.monotonic_ns() % 10**6}"
    a, r, b = f"fsns{tag}a", f"fsns{tag}r", f"fsns{tag}b"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    try:
        for ns in (a, r, b):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", r, "link", "add", "fsra", "type", "veth", "peer", "name", "fsar", "netns", a)
        ip("-n", r, "link", "add", "fsrb", "type", "veth", "peer", "name", "fsbr", "netns", b)
        for ns, dev, addr in (
            (r, "fsra", "198.18.100.1"),
            (a, "fsar", "198.18.100.2"),
            (r, "fsrb", "198.18.101.1"),
            (b, "fsbr", "198.18.101.2"),
        ):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")  # fmt: skip
        ip("-n", a, "route", "add", "default", "via", "198.18.100.1")
        ip("-n", b, "route", "add", "default", "via", "198.18.101.1")
        subprocess.run(["ip", "netns", "exec", r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
                       check=True)  # fmt: skip
        server = start_server(["ip", "netns", "exec", b], "fs-b-srv")
        router = subprocess.Popen(
            # nsenter, not ip netns exec: that one mounts a /sys without the cgroup hierarchy
            ["nsenter", f"--net=/run/netns/{r}", PYTHON, "-c", ROUTER, "198.18.101.2",
             str(TCP_PORT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=str(Path(__file__).resolve().parents[2]),
        )  # fmt: skip
        try:
            assert router.stdout is not None and router.stdin is not None
            line = router.stdout.readline()
            assert line.strip() == "ready", (line, router.stderr.read() if router.stderr else "")
            client_pid, _ = run_client(
                ["ip", "netns", "exec", a], "fs-a-cli", "tcp", "198.18.101.2"
            )
            router.stdin.write("go\n")
            router.stdin.flush()
            out, err = router.communicate(timeout=60)
            assert router.returncode == 0, err
        finally:
            if router.poll() is None:
                router.kill()
                router.wait()
            stop(server)
    finally:
        for ns in (a, r, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    rows = [json.loads(line) for line in out.splitlines()]
    forwarded = [x for x in rows if "198.18.100.2" in (x[1], x[2]) and x[0] == 6]
    own = [x for x in rows if x[0] == 6 and "198.18.101.1" in (x[1], x[2])]
    # the forwarded connection, both directions on both of R's interfaces: no process
    assert {(x[1], x[5]) for x in forwarded} == {
        ("198.18.100.2", abi.DIR_INGRESS),  # A -> B arriving from A
        ("198.18.100.2", abi.DIR_EGRESS),  # A -> B leaving towards B
        ("198.18.101.2", abi.DIR_INGRESS),  # B -> A arriving from B
        ("198.18.101.2", abi.DIR_EGRESS),  # B -> A leaving towards A
    }, rows
    assert [x for x in forwarded if x[6] is not None] == [], forwarded
    # R's own connection to B: sent and received, R's process (nsenter execs it)
    assert {x[5] for x in own} == {abi.DIR_INGRESS, abi.DIR_EGRESS}, rows
    assert {x[6] for x in own} == {router.pid} != {client_pid}, own
