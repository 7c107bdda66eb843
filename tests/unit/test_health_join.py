"""The join of flows with their TCP connections' health (collect.health), against a
brute-force rule over every connection the kernel reported."""

from __future__ import annotations

from ipaddress import ip_address

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flowscope import abi
from flowscope.collect.health import NONE, OLDER_REFRESH, HealthTable
from flowscope.model import NO_KINDS, RETRANS_KINDS, FlowKey
from tests.unit.test_owner_join import batch_of

NETNS = 4242
ADDRS = {
    abi.AF_INET: ["198.18.0.1", "198.18.0.2", "198.18.9.9"],
    abi.AF_INET6: ["2001:db8::1", "2001:db8::2"],
}
PORTS = [80, 443, 50000]


@st.composite
def connections(draw: st.DrawFn) -> tuple[int, str, int, str, int, int, int, int, int]:
    """(family, local, lport, remote, rport, netns, retrans, srtt, rtt_min); an IPv4 one may
    come from a dual-stack IPv6 socket (IPv4-mapped addresses)."""
    family = draw(st.sampled_from([abi.AF_INET, abi.AF_INET6]))
    return (
        family,
        draw(st.sampled_from(ADDRS[family])),
        draw(st.sampled_from(PORTS)),
        draw(st.sampled_from(ADDRS[family])),
        draw(st.sampled_from(PORTS)),
        draw(st.sampled_from([NETNS, NETNS, 9])),
        draw(st.integers(0, 1000)),
        draw(st.integers(1, 10**6)),
        draw(st.integers(1, 10**6)),
    )


def rows_of(
    conns: list[tuple[int, str, int, str, int, int, int, int, int]], mapped: list[bool]
) -> np.ndarray:
    rows = np.zeros(len(conns), abi.HEALTH_DTYPE)
    for i, (family, local, lport, remote, rport, netns, retrans, srtt, rtt_min) in enumerate(conns):
        if family == abi.AF_INET and mapped[i]:
            fam, la, ra = abi.AF_INET6, b"\0" * 10 + b"\xff\xff", b"\0" * 10 + b"\xff\xff"
        else:
            fam, la, ra = family, b"", b""
        la += ip_address(local).packed
        ra += ip_address(remote).packed
        rows[i]["laddr"][: len(la)] = np.frombuffer(la, np.uint8)
        rows[i]["raddr"][: len(ra)] = np.frombuffer(ra, np.uint8)
        rows[i]["family"], rows[i]["netns"] = fam, netns
        rows[i]["lport"], rows[i]["rport"] = lport, rport
        rows[i]["retrans"], rows[i]["srtt_us"], rows[i]["rtt_min_us"] = retrans, srtt, rtt_min
        for kind, n in zip(RETRANS_KINDS, kinds_of(retrans), strict=True):
            rows[i][f"retrans_{kind}"] = n
    return rows


def kinds_of(retrans: int) -> tuple[int, int, int]:
    """A connection's retransmissions by kind in these tests: some of each, adding up."""
    return (retrans // 2, retrans // 3, retrans - retrans // 2 - retrans // 3)


@settings(max_examples=300, deadline=None)
@given(
    conns=st.lists(connections(), max_size=8, unique_by=lambda c: c[:5]),
    mapped=st.lists(st.booleans(), min_size=8, max_size=8),
    flows=st.lists(
        st.tuples(
            st.sampled_from([abi.AF_INET, abi.AF_INET6]),
            st.integers(0, 2), st.integers(0, 2), st.sampled_from(PORTS), st.sampled_from(PORTS),
            st.sampled_from([6, 17]), st.sampled_from([abi.DIR_INGRESS, abi.DIR_EGRESS]),
            st.one_of(st.none(), st.integers(0, 7)),
        ),
        min_size=1, max_size=12,
    ),
)  # fmt: skip
def test_each_flow_gets_its_own_connections_health(
    conns: list[tuple[int, str, int, str, int, int, int, int, int]],
    mapped: list[bool],
    flows: list[tuple[int, int, int, int, int, int, int, int | None]],
) -> None:
    """A TCP flow whose local end (its destination when received, its source when sent) and
    remote end are a connection of this namespace has that connection's RTTs; its
    retransmissions only when it is the sent flow (0 on the received one); any other flow has
    none (NONE)."""
    table = HealthTable(NETNS)
    table.add(rows_of(conns, mapped))
    for family in (abi.AF_INET, abi.AF_INET6):
        addrs = ADDRS[family]
        keys = []
        for f, a, b, sp, dp, proto, d, pick in flows:
            if pick is not None and conns:  # a flow of a connection, either way
                c = conns[pick % len(conns)]
                if c[0] != family:
                    continue
                ends = (c[1], c[3], c[2], c[4]) if d == abi.DIR_EGRESS else (c[3], c[1], c[4], c[2])
                keys.append(FlowKey(family, *ends, proto, direction=d))
            elif f == family:
                keys.append(
                    FlowKey(
                        f, addrs[a % len(addrs)], addrs[b % len(addrs)], sp, dp, proto, direction=d
                    )
                )
        if not keys:
            continue
        retrans, srtt, rtt_min, _, kinds = table.join(batch_of(keys, family))
        for i, k in enumerate(keys):
            egress = k.direction == abi.DIR_EGRESS
            local = (k.src, k.sport) if egress else (k.dst, k.dport)
            remote = (k.dst, k.dport) if egress else (k.src, k.sport)
            match = [
                c for c in conns
                if c[5] == NETNS and k.proto == 6 and c[0] == family
                and (c[1], c[2]) == local and (c[3], c[4]) == remote
            ]  # fmt: skip
            if not match:
                assert (retrans[i], srtt[i], rtt_min[i]) == (NONE, NONE, NONE), k
                assert tuple(kinds[i]) == NO_KINDS
            else:
                c = match[0]
                assert (retrans[i], srtt[i], rtt_min[i]) == (c[6] if egress else 0, c[7], c[8])
                assert tuple(kinds[i]) == (kinds_of(c[6]) if egress else (0, 0, 0))


Conn = tuple[int, str, int, str, int, int, int, int, int]


def _conn(cookie: int, retrans: int) -> Conn:
    return (abi.AF_INET, "198.18.0.1", 40000 + cookie, "198.18.0.2", 80, NETNS, retrans, 100, 50)


def _health_of(
    cookies: list[int], retrans: dict[int, int], kinds: dict[int, list[int]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of connections: the hooks' with their ``kinds``, sock_diag's without."""
    conns = [_conn(c, retrans[c]) for c in cookies]
    rows = rows_of(conns, [False] * len(conns))
    for i, c in enumerate(cookies):
        for j, kind in enumerate(RETRANS_KINDS):
            rows[i][f"retrans_{kind}"] = kinds[c][j] if kinds is not None else 0
    return np.array(cookies, np.uint64), rows


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["open", "older", "retransmit", "tick", "wait", "close"]),
            st.integers(1, 6),
            st.integers(1, 5),
        ),
        max_size=40,
    )
)
def test_connections_older_than_the_hooks_come_from_sock_diag(
    steps: list[tuple[str, int, int]],
) -> None:
    """Connections the hooks follow from their start ("open") and connections that were open
    before ("older", with retransmissions made before flowscope started), retransmitting,
    closing, ticks and time passing. Model: a flow's retransmissions are the hooks' number
    when they follow its connection, else sock_diag's as of its last read (at most every
    OLDER_REFRESH seconds); what records take of a connection adds up to what it made after
    it was first seen (older) or since it began (followed); the host's deltas add up to what
    the records took. The same for the kinds, which only the hooks tell (NO_KINDS for an older
    connection)."""
    now = [0.0]
    truth: dict[int, int] = {}  # every open connection's retransmissions, as the socket has them
    followed: set[int] = set()  # the connections the hooks follow
    kinds: dict[int, list[int]] = {}  # the followed ones' retransmissions by kind
    gone: set[int] = set()  # closed (cookies are never reused)
    hooks = type("Hooks", (), {"tcp_health": lambda _: _health_of(sorted(followed), truth, kinds)})
    table = HealthTable(
        NETNS,
        source=hooks(),
        older=lambda: _health_of(sorted(truth), truth),  # sock_diag lists every connection
        clock=lambda: now[0],
    )
    read_at: float | None = None
    last_read: dict[int, int] = {}
    first: dict[int, int] = {}
    taken: dict[int, int] = {}
    taken_kinds: dict[int, np.ndarray] = {}
    host = 0
    host_kinds = np.zeros(3, np.int64)
    keys = [FlowKey(abi.AF_INET, "198.18.0.1", "198.18.0.2", 40000 + c, 80, 6, direction=1)
            for c in range(1, 7)]  # fmt: skip
    for what, cookie, n in steps:
        if what in ("open", "older") and cookie not in truth and cookie not in gone:
            truth[cookie] = 0 if what == "open" else n
            if what == "open":
                followed.add(cookie)
                kinds[cookie] = [0, 0, 0]
        elif what == "retransmit" and cookie in truth:
            truth[cookie] += n
            if cookie in followed:
                kinds[cookie][n % 3] += n
        elif what == "close" and cookie in truth:
            del truth[cookie]
            followed.discard(cookie)
            gone.add(cookie)
        elif what == "wait":
            now[0] += n * 0.5
        elif what == "tick":
            if read_at is None or now[0] >= read_at + OLDER_REFRESH:
                read_at, last_read = now[0], dict(truth)
            table.refresh()
            host += table.retrans_delta
            host_kinds += table.kind_deltas
            retrans, _, _, cookies, got_kinds = table.join(batch_of(keys, abi.AF_INET))
            for c in range(1, 7):
                if c in followed:
                    want = truth[c]
                elif c in last_read:  # sock_diag's, as of its last read
                    want = last_read[c]
                    # (a followed connection, closed since, was counted from its start)
                    first.setdefault(c, 0 if c in kinds else want)
                else:
                    want = NONE
                assert retrans[c - 1] == want, (c, int(retrans[c - 1]), want, steps)
                want_kinds = tuple(kinds[c]) if c in followed else NO_KINDS
                assert tuple(got_kinds[c - 1]) == want_kinds, (c, got_kinds, want_kinds, steps)
                if want >= 0:
                    got = table.take(int(cookies[c - 1]), want)
                    taken[c] = taken.get(c, 0) + got
                    assert taken[c] == want - first.get(c, 0), (c, taken, first, want)
                    new = table.take_kinds(int(cookies[c - 1]), got_kinds[c - 1])
                    if c in followed:
                        taken_kinds[c] = taken_kinds.get(c, np.zeros(3, np.int64)) + new
                        assert tuple(taken_kinds[c]) == want_kinds, (c, taken_kinds, steps)
                    else:
                        assert new == NO_KINDS
    assert host == sum(taken.values())
    assert host_kinds.tolist() == np.sum(list(taken_kinds.values()) or [[0, 0, 0]], 0).tolist()
