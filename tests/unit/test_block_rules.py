"""Block rules (collect.block) and the control socket (collect.control), without a kernel:
rules as typed and read back, the second-confirmation concerns, expiry, the service behind the
socket, and the socket's permissions and errors."""

from __future__ import annotations

import ipaddress
import json
import socket
import stat
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from flowscope import abi
from flowscope.collect.block import (
    Blocks,
    BlockService,
    Rule,
    Safety,
    concerns,
    parse_rule,
    ssh_session,
)
from flowscope.collect.control import ControlServer, request
from flowscope.errors import FlowscopeError, UsageError
from flowscope.model import FloodRow, FloodShape, TickFlows


class Maps:
    def __init__(self) -> None:
        self.rules: dict[Rule, int] = {}

    def put(self, rule: Rule) -> None:
        self.rules[rule] = 0

    def delete(self, rule: Rule) -> None:
        del self.rules[rule]

    def matched(self, rule: Rule) -> int:
        return self.rules.get(rule, 0)


sources = st.one_of(
    st.none(),
    st.builds(lambda a: f"198.18.{a}.0/24", st.integers(0, 255)),
    st.builds(lambda a: f"198.{a}.0.0/16", st.integers(18, 19)),
    st.builds(lambda a: f"198.19.0.{a}/32", st.integers(0, 255)),
    st.builds(lambda a: str(ipaddress.ip_network(f"2001:db8:{a:x}::/64")), st.integers(0, 0xFFFF)),
)
targets = st.one_of(st.none(), st.tuples(st.sampled_from([6, 17, 1, 47]), st.integers(0, 65535)))


@given(source=sources, target=targets)
def test_a_rule_reads_back_as_written(source: str | None, target: tuple[int, int] | None) -> None:
    if source is None and target is None:
        return
    rule = Rule(source, *(target or (None, None)))
    assert parse_rule(rule.text) == rule


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("198.19.77.5", Rule("198.19.77.5/32")),
        ("198.19.77.9/24", Rule("198.19.77.0/24")),
        ("UDP/9", Rule(None, 17, 9)),
        ("2001:db8::1 tcp/443", Rule("2001:db8::1/128", 6, 443)),
        ("17/53", Rule(None, 17, 53)),
    ],
)
def test_rules_as_typed(text: str, rule: Rule) -> None:
    assert parse_rule(text) == rule


@pytest.mark.parametrize(
    "text", ["", "foo", "0.0.0.0/0", "udp/70000", "udp/9 10.0.0.1", "a b c", "xyz/1", "300/1"]
)
def test_bad_rules_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_rule(text)


def test_matches_follows_source_and_target() -> None:
    rule = parse_rule("198.19.77.0/24 udp/9")
    assert rule.matches(abi.AF_INET, "198.19.77.200", 17, 9)
    assert not rule.matches(abi.AF_INET, "198.19.78.1", 17, 9)
    assert not rule.matches(abi.AF_INET, "198.19.77.1", 6, 9)
    assert not rule.matches(abi.AF_INET6, "2001:db8::1", 17, 9)
    assert parse_rule("udp/9").matches(abi.AF_INET6, "2001:db8::1", 17, 9)


def test_ssh_session_from_the_environment() -> None:
    assert ssh_session({"SSH_CONNECTION": "198.18.0.7 50000 198.18.0.10 2222"}) == (
        "198.18.0.7",
        2222,
    )
    assert ssh_session({}) == (None, 22)
    assert ssh_session({"SSH_CONNECTION": "garbage"}) == (None, 22)


def test_concerns_name_the_ssh_client_local_addresses_and_a_large_share() -> None:
    safety = Safety(ssh_client="198.18.0.7", ssh_port=22, local=frozenset({"198.18.0.10"}))
    assert concerns(parse_rule("198.18.0.0/24"), safety, None) == [
        "it matches your SSH client 198.18.0.7",
        "it matches this host's address 198.18.0.10",
    ]
    assert concerns(parse_rule("198.18.0.7 udp/53"), safety, None) == []  # SSH is tcp/22
    assert concerns(parse_rule("198.18.0.7 tcp/22"), safety, None) == [
        "it matches your SSH client 198.18.0.7"
    ]
    shape = FloodShape(
        rows=(
            FloodRow(4, "198.19.77.0/24", 17, 9, 0, 0, 900, 9000, 0),
            FloodRow(4, "198.19.78.0/24", 17, 9, 0, 0, 100, 1000, 0),
        )
    )
    assert concerns(parse_rule("udp/9"), safety, shape) == [
        "it drops 100% of the traffic received in the last tick"
    ]
    assert concerns(parse_rule("198.19.78.0/24"), safety, shape) == []


def test_blocks_expire_and_remove() -> None:
    maps = Maps()
    blocks = Blocks(maps)
    rule = parse_rule("198.19.77.0/24")
    assert blocks.add(rule, now=100.0, ttl=10.0) == []
    assert blocks.add(rule, now=105.0, ttl=10.0) == []  # again: a new time to live
    assert blocks.expire(114.0) == [] and rule in maps.rules
    maps.rules[rule] = 42
    (done,) = blocks.expire(115.0)
    assert (done.rule, done.matched) == (rule, 42) and not maps.rules
    with pytest.raises(UsageError, match="no block rule"):
        blocks.remove(rule)
    with pytest.raises(UsageError):
        blocks.add(rule, now=0.0, ttl=0.0)


def test_the_service_behind_a_socket_only_its_owner_may_use(tmp_path: Path) -> None:
    """The socket is mode 0600 in a private directory; requests go to the service and its
    errors come back as FlowscopeErrors; a second server on the same path is refused while
    the first answers, and a socket left by a dead one is replaced."""
    notes: list[object] = []
    service = BlockService(Maps(), Safety(local=frozenset({"198.18.0.10"})), notes.append)
    path = tmp_path / "run" / "c.sock"
    server = ControlServer(path, service.handle)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert request(path, {"op": "block", "rule": "udp/9", "ttl": 60})["ok"] is True
        assert request(path, {"op": "block", "rule": "198.18.0.10"}) == {
            "confirm": ["it matches this host's address 198.18.0.10"],
            "rule": "198.18.0.10/32",
        }
        (row,) = request(path, {"op": "list"})["rules"]
        assert row["rule"] == "udp/9" and 59 < row["remaining"] <= 60
        with pytest.raises(FlowscopeError, match="no block rule"):
            request(path, {"op": "unblock", "rule": "tcp/1"})
        with pytest.raises(FlowscopeError, match="not a block rule"):
            request(path, {"op": "block", "rule": "a b c"})
        with pytest.raises(FlowscopeError, match="unknown control request"):
            request(path, {"op": "reboot", "rule": "udp/9"})
        with socket.socket(socket.AF_UNIX) as s:  # not JSON: an error, the server goes on
            s.connect(str(path))
            s.sendall(b"hello\n")
            assert "not a request" in json.loads(s.recv(4096))["error"]
        with pytest.raises(UsageError, match="another flowscope"):
            ControlServer(path, service.handle)
        assert request(path, {"op": "unblock", "rule": "udp/9"})["ok"] is True
    finally:
        server.close()
    assert not path.exists()
    assert [n.action for n in notes] == ["block", "unblock"]  # type: ignore[attr-defined]
    # a socket file left by a process that is gone is taken over
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    again = ControlServer(path, service.handle)
    again.close()
    with pytest.raises(FlowscopeError, match="no flowscope with --allow-block"):
        request(path, {"op": "list"})


def test_a_host_rule_that_takes_most_of_the_traffic_needs_a_second_confirmation() -> None:
    """The prefix rows cannot say how much of a /24 one host of it sent: the tick's flows can.
    A host (or narrower-than-/24) rule's share counts its hosts' packets from the flows: one
    host that sent 900 of 1,000 packets is 90 % of the traffic, another in the same /24 with
    100 of them 10 % (issue #18: a /32 rule that took all the traffic once went through with
    no second confirmation). What the host sent is not counted."""
    safety = Safety()
    keys = np.zeros(3, abi.KEY4_DTYPE)
    keys["saddr"] = [[198, 19, 77, 5], [198, 19, 77, 6], [198, 19, 77, 5]]
    keys["proto"], keys["dport"] = 17, 9
    keys["direction"] = [abi.DIR_INGRESS, abi.DIR_INGRESS, abi.DIR_EGRESS]
    shape = FloodShape(
        rows=(FloodRow(4, "198.19.77.0/24", 17, 9, 0, 0, 1000, 10000, 1000),),
        flows=(TickFlows(abi.AF_INET, keys, np.array([900, 100, 5000], np.uint64)),),
    )
    assert concerns(parse_rule("198.19.77.5"), safety, shape) == [
        "it drops 90% of the traffic received in the last tick"
    ]
    assert concerns(parse_rule("198.19.77.5 udp/9"), safety, shape) != []
    assert concerns(parse_rule("198.19.77.5 udp/10"), safety, shape) == []
    assert concerns(parse_rule("198.19.77.6"), safety, shape) == []
    assert concerns(parse_rule("198.19.77.4/31"), safety, shape) == [
        "it drops 90% of the traffic received in the last tick"
    ]


def _bit(words: np.ndarray, i: int) -> bool:
    return bool((int(words[i >> 6]) >> (i & 63)) & 1)


@example(
    nets=[ipaddress.ip_network("2001:db8:5::/48"), ipaddress.ip_network("198.18.4.0/22"),
          ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:f000::/20")],
    ports=[53, 443],
    probe4=int(ipaddress.IPv4Address("198.18.7.9")),
    probe6=int(ipaddress.IPv6Address("2001:db8:5::1")),
    probe_port=443,
)  # fmt: skip
@given(
    nets=st.lists(
        st.one_of(
            st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 32)).map(
                lambda t: ipaddress.ip_network((t[0], t[1]), strict=False)
            ),
            st.tuples(st.integers(0, 2**128 - 1), st.integers(1, 128)).map(
                lambda t: ipaddress.ip_network((t[0], t[1]), strict=False)
            ),
        ),
        max_size=6,
    ),
    ports=st.lists(st.integers(0, 65535), max_size=4),
    probe4=st.integers(0, 2**32 - 1),
    probe6=st.integers(0, 2**128 - 1),
    probe_port=st.integers(0, 65535),
)
def test_the_block_bitmaps_let_every_packet_a_rule_matches_reach_the_trie(
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    ports: list[int],
    probe4: int,
    probe6: int,
    probe_port: int,
) -> None:
    """kernel.block.bitmaps: a packet from inside a source rule's prefix has its /16's bit
    set (IPv4 address bits 0-15, IPv6 bits 16-31), a packet to a target rule's port has that
    port's bit; and a bit is set only where some rule could match (the point of them)."""
    from flowscope.kernel.block import bitmaps

    rules = [Rule(str(n)) for n in nets] + [Rule(None, 17, p) for p in ports]
    src4, src6, target = bitmaps(rules)
    for n in nets:  # the network's own first and last addresses, and one probe inside it
        for addr in (n.network_address, n.broadcast_address):
            raw = addr.packed
            words, i = (
                (src4, raw[0] << 8 | raw[1]) if n.version == 4 else (src6, raw[2] << 8 | raw[3])
            )
            assert _bit(words, i), (n, addr)
    a4 = ipaddress.IPv4Address(probe4)
    assert _bit(src4, probe4 >> 16) == any(
        n.version == 4
        and n.supernet(new_prefix=min(n.prefixlen, 16)).overlaps(
            ipaddress.ip_network((probe4 >> 16 << 16, 16))
        )
        for n in nets
    ), a4
    assert _bit(target, probe_port) == (probe_port in ports)
    index6 = (probe6 >> 96) & 0xFFFF
    if _bit(src6, index6):  # set only for a rule whose prefix leaves those bits open or equal
        assert any(
            n.version == 6
            and (
                n.prefixlen <= 16
                or (int(n.network_address) >> 96 & 0xFFFF) >> max(32 - n.prefixlen, 0)
                == index6 >> max(32 - n.prefixlen, 0)
            )
            for n in nets
        )
