"""Block rules in the XDP program (-DFS_BLOCK) through BPF_PROG_TEST_RUN, against the rule's
own model (collect.block.Rule.matches): random rules and packets of both families, each
packet's verdict and each rule's count of what it dropped; the egress program never drops; the
build without --allow-block has no drop path."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from flowscope import abi
from flowscope.collect.block import Blocks, Rule, parse_rule
from flowscope.errors import UsageError
from flowscope.kernel.block import BITMAP_FIELDS, BLOCK_CFLAGS, BlockMaps, bitmaps
from flowscope.kernel.program import FlowProgram
from tests.kernel.test_record import FLOWSCOPE, wait_attached, wait_detached
from tests.netns import VethNamespace, veth_namespace, xdp_prog_id

XDP_DROP, XDP_PASS = 1, 2
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; not in Python's socket module
SOURCES = ["10.0.0.1", "10.0.0.77", "10.0.1.5", "2001:db8::1", "2001:db8:0:1::9"]
RULES = [
    "10.0.0.0/24", "10.0.0.77", "10.0.0.0/16", "udp/53", "tcp/443", "10.0.0.1 udp/53",
    "10.0.0.0/24 tcp/443", "2001:db8::/64", "2001:db8::/32 udp/53", "2001:db8:0:1::9",
]  # fmt: skip


def frame(src: str, proto: int, dport: int) -> bytes:
    l4 = TCP(sport=1000, dport=dport) if proto == 6 else UDP(sport=1000, dport=dport)
    ip = IPv6(src=src, dst="2001:db8::ffff") if ":" in src else IP(src=src, dst="10.9.9.9")
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / l4)


@pytest.fixture(scope="module")
def blocking(program_factory: Callable[..., FlowProgram]) -> FlowProgram:
    return program_factory(cflags=BLOCK_CFLAGS)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rules=st.lists(st.sampled_from(RULES), unique=True, max_size=4),
    packets=st.lists(
        st.tuples(st.sampled_from(SOURCES), st.sampled_from([6, 17]), st.sampled_from([53, 443])),
        max_size=12,
    ),
)
def test_verdicts_and_counts_follow_the_rules(
    blocking: FlowProgram,
    rules: list[str],
    packets: list[tuple[str, int, int]],
) -> None:
    maps = BlockMaps(blocking)
    blocks = Blocks(maps)
    parsed = [parse_rule(r) for r in rules]
    for rule in parsed:
        assert blocks.add(rule, now=0.0, confirmed=True) == []
    try:
        want: dict[Rule, int] = dict.fromkeys(parsed, 0)
        for src, proto, dport in packets:
            family = abi.AF_INET6 if ":" in src else abi.AF_INET
            hits = [r for r in parsed if r.matches(family, src, proto, dport)]
            verdict = blocking.test_run(frame(src, proto, dport)).retval
            assert verdict == (XDP_DROP if hits else XDP_PASS), (src, proto, dport, rules)
            if hits:
                # the kernel counts it under one rule: its source trie first, then its target's,
                # the longest prefix in each
                counted = [r for r in parsed if maps.matched(r) > want[r]]
                assert len(counted) == 1 and counted[0] in hits, (counted, hits)
                want[counted[0]] += 1
        for e in blocks.listing():
            assert e.matched == want[e.rule]
    finally:
        blocks.close()
    assert maps.counts.src4 == maps.counts.src6 == maps.counts.target4 == maps.counts.target6 == 0
    # without rules nothing is dropped
    assert {blocking.test_run(frame(s, 17, 53)).retval for s in SOURCES} == {XDP_PASS}


PACKETS = st.tuples(st.sampled_from(SOURCES), st.sampled_from([6, 17]), st.sampled_from([53, 443]))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("packet"), PACKETS),
            st.tuples(st.sampled_from(["add", "remove"]), st.sampled_from(RULES)),
        ),
        max_size=30,
    )
)
def test_verdicts_follow_rules_that_change_while_flows_pass(
    blocking: FlowProgram, steps: list[tuple[str, object]]
) -> None:
    """Rules put in force and taken out between packets of flows the map already holds: each
    packet's verdict is what the rules in force at that moment say. A flow remembers that it
    passed (bpf/flowscope.h, block_gen), so a rule put in force after its last packet must
    still drop its next one, and one taken out must let it pass."""
    maps = BlockMaps(blocking)
    blocks = Blocks(maps)
    in_force: set[Rule] = set()
    try:
        for action, arg in steps:
            if action == "packet":
                src, proto, dport = arg  # type: ignore[misc]
                family = abi.AF_INET6 if ":" in src else abi.AF_INET
                drop = any(r.matches(family, src, proto, dport) for r in in_force)
                verdict = blocking.test_run(frame(src, proto, dport)).retval
                assert verdict == (XDP_DROP if drop else XDP_PASS), (arg, in_force)
                continue
            rule = parse_rule(str(arg))
            if action == "add" and rule not in in_force:
                assert blocks.add(rule, now=0.0, confirmed=True) == []
                in_force.add(rule)
            elif action == "remove" and rule in in_force:
                blocks.remove(rule)
                in_force.discard(rule)
            assert_told_the_rules(maps, in_force)
    finally:
        blocks.close()


def assert_told_the_rules(maps: BlockMaps, rules: set[Rule]) -> None:
    """What BlockMaps keeps rule by rule is what the rules in force say all at once: a count
    per trie of their keys, and the bitmaps (kernel.block.bitmaps)."""
    want: collections.Counter[str] = collections.Counter()
    for r in rules:
        if r.proto is None:  # a source prefix: its family's source trie
            assert r.net is not None
            want[f"src{r.net.version}"] += 1
        elif r.net is None:  # a target from anywhere: both families' target tries
            want["target4"] += 1
            want["target6"] += 1
        else:  # a target from a prefix: its family's target trie
            want[f"target{r.net.version}"] += 1
    got = {t: getattr(maps.counts, t) for t in ("src4", "src6", "target4", "target6")}
    assert got == {t: want[t] for t in got}, (got, rules)
    for field, words in zip(BITMAP_FIELDS, bitmaps(rules), strict=True):
        assert bytes(getattr(maps.counts, field)) == words.tobytes(), (field, rules)


def test_the_egress_program_never_drops(blocking: FlowProgram) -> None:
    blocks = Blocks(BlockMaps(blocking))
    blocks.add(parse_rule("10.0.0.0/8"), now=0.0, confirmed=True)
    try:
        assert blocking.test_run(frame("10.0.0.1", 17, 53)).retval == XDP_DROP
        assert blocking.test_run_egress(frame("10.0.0.1", 17, 53)).retval == 0xFFFFFFFF  # UNSPEC
    finally:
        blocks.close()


def test_without_allow_block_there_is_no_drop_path(
    program_factory: Callable[..., FlowProgram],
) -> None:
    plain = program_factory()
    with pytest.raises(UsageError, match="--allow-block"):
        BlockMaps(plain)


# --- end to end: `record --allow-block` and `flowscope block` on a veth pair ------------------


class Listener:
    """A UDP socket of the root namespace counting what it receives per source address."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # room for a whole burst (root may pass rmem_max): a full socket buffer drops too
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.got: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                _, (src, _) = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            self.got[src] += 1

    def take(self) -> dict[str, int]:
        """What arrived since the last take (after the stack has had time to deliver it)."""
        time.sleep(0.3)
        out, self.got = dict(self.got), collections.Counter()
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _udp(net: VethNamespace, src: str, dport: int, n: int) -> list[bytes]:
    from scapy.layers.inet import IP as IP_

    return [
        bytes(Ether(src=net.peer_mac, dst=net.host_mac) / IP_(src=src, dst=net.host_ip4)
              / UDP(sport=4000 + i % 1000, dport=dport) / b"x")
        for i in range(n)
    ]  # fmt: skip


def flowscope(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLOWSCOPE, *args], env=env, capture_output=True, text=True, timeout=60)


def test_block_drops_a_prefix_counts_what_it_dropped_and_ends_on_ttl_unblock_and_kill(
    tmp_path: Path,
) -> None:
    """A UDP listener in the root namespace; from the namespace, packets from a blocked half
    of its /24 and from its own address. Blocked: the listener gets nothing from the blocked
    prefix and everything from the other source; the rule's count is exactly the packets
    sent to it since. After the time to live, and after unblock, the prefix gets through
    again; after kill -9 no program is left on the interface (the rules went with it), and
    history has every block, expiry and unblock."""
    listener = Listener()
    db = tmp_path / "flows.db"
    env = dict(os.environ, FLOWSCOPE_CONTROL=str(tmp_path / "control" / "c.sock"))
    with veth_namespace() as net:
        base = net.peer_ip4.rsplit(".", 1)[0]
        blocked_src, prefix = f"{base}.200", f"{base}.128/25"
        proc = subprocess.Popen(
            [*FLOWSCOPE, "record", "-i", net.host_if, "--db", str(db), "--allow-block",
             "--direction", "ingress"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_attached(net.host_if, proc)
            deadline = time.monotonic() + 30
            while not (tmp_path / "control" / "c.sock").exists():
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)

            def send(n: int) -> dict[str, int]:
                frames = _udp(net, blocked_src, listener.port, n)
                frames += _udp(net, net.peer_ip4, listener.port, n)
                assert net.send_frames(frames) == 2 * n
                return listener.take()

            assert send(100) == {blocked_src: 100, net.peer_ip4: 100}
            done = flowscope(env, "block", prefix, "--ttl", "4s")
            assert done.returncode == 0, done.stderr
            assert f"blocking {prefix} for 4s" in done.stderr
            assert send(500) == {net.peer_ip4: 500}
            listed = flowscope(env, "blocks", "--json")
            (rule,) = [json.loads(line) for line in listed.stdout.splitlines()]
            assert (rule["rule"], rule["matched"]) == (prefix, 500)
            time.sleep(5.5)  # the time to live, and the tick that ends it
            assert flowscope(env, "blocks", "--json").stdout == ""
            assert send(50) == {blocked_src: 50, net.peer_ip4: 50}
            assert flowscope(env, "block", prefix).returncode == 0
            assert send(20) == {net.peer_ip4: 20}
            gone = flowscope(env, "unblock", prefix)
            assert gone.returncode == 0 and "it dropped 20 packets" in gone.stderr
            assert send(30) == {blocked_src: 30, net.peer_ip4: 30}
            # a rule that would drop this host's own address needs a second confirmation
            mine = flowscope(env, "block", net.host_ip4)
            assert mine.returncode == 1 and "second confirmation" in mine.stderr
            assert flowscope(env, "block", prefix).returncode == 0  # left in force
            time.sleep(1.5)  # a tick: the block goes to history
        finally:
            proc.kill()  # kill -9: the rules must go with the program
            proc.wait()
            listener.close()
        wait_detached(net.host_if)
        assert xdp_prog_id(net.host_if) == 0
        assert flowscope(env, "blocks").returncode == 1  # nobody answers
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT action, rule, matched FROM blocks ORDER BY time").fetchall()
    assert rows == [
        ("block", prefix, 0), ("expire", prefix, 500), ("block", prefix, 0),
        ("unblock", prefix, 20), ("block", prefix, 0),
    ]  # fmt: skip


def test_ctrl_c_ends_the_rules_and_the_control_socket(tmp_path: Path) -> None:
    """Stopped the ordinary way (SIGINT, as Ctrl-C and the console's q end collection), a
    recorder with --allow-block and a rule in force leaves no program, no rule and no control
    socket behind, and history has the block."""
    db = tmp_path / "flows.db"
    sock = tmp_path / "control" / "c.sock"
    env = dict(os.environ, FLOWSCOPE_CONTROL=str(sock))
    with veth_namespace() as net:
        proc = subprocess.Popen(
            [*FLOWSCOPE, "record", "-i", net.host_if, "--db", str(db), "--allow-block"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_attached(net.host_if, proc)
            deadline = time.monotonic() + 30
            while not sock.exists():
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            assert flowscope(env, "block", "udp/9").returncode == 0
            time.sleep(1.5)  # a tick writes the block
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode in (0, 130), err
        assert "blocking is on" in err
        wait_detached(net.host_if)
        assert not sock.exists()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT action, rule FROM blocks").fetchall() == [("block", "udp/9")]
