"""The join of flows with their processes (collect.owners), held to a brute-force model, and
the decoding of what the socket hooks send."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowscope import abi
from flowscope.collect.owners import OwnerTable
from flowscope.model import (
    FlowBatch,
    FlowKey,
    Owner,
    SocketEvent,
    container_of,
    socket_event_from_bytes,
)
from flowscope.query.frame import addr_bytes

NETNS = 4242
LOCAL = {"198.18.0.1", "2001:db8::1"}
ADDRS = {
    abi.AF_INET: ["198.18.0.1", "198.18.0.2", "198.18.9.9"],
    abi.AF_INET6: ["2001:db8::1", "2001:db8::2"],
}
OWNERS = [Owner(100 + i, f"p{i}", i, f"/system.slice/p{i}.service") for i in range(4)]


@pytest.mark.parametrize(
    ("cgroup", "container"),
    [
        ("/system.slice/docker-" + "0123456789ab" + "c" * 52 + ".scope", "docker:0123456789ab"),
        ("/docker/" + "fedcba987654" + "0" * 52, "docker:fedcba987654"),
        ("/kubepods.slice/kubepods-burstable.slice/kubepods-pod1.slice/cri-containerd-"
         + "a" * 64 + ".scope", "containerd:aaaaaaaaaaaa"),
        ("/machine.slice/libpod-" + "b" * 64 + ".scope", "podman:bbbbbbbbbbbb"),
        ("/system.slice/nginx.service", "nginx.service"),
        ("/user.slice/user-1000.slice/session-3.scope", ""),
        ("/", ""),
        ("", ""),
    ],
)  # fmt: skip
def test_container_of_a_cgroup_path(cgroup: str, container: str) -> None:
    assert container_of(cgroup) == container


def test_a_hand_annotated_socket_event_decodes() -> None:
    raw = bytes.fromhex(
        "0010a5d4e8000000"  # timestamp
        "0300000000000000"  # netns cookie 3
        "5110000000000000"  # socket cookie 4177
        "0700000000000000"  # cgroup id 7
        "2c030000"  # pid 812
        "21000000"  # uid 33
        + b"nginx".hex() + "00" * 11  # comm
        + "00000000000000000000ffffc6120001"  # laddr ::ffff:198.18.0.1 (IPv4-mapped)
        + "00000000000000000000ffffc6120002"  # raddr ::ffff:198.18.0.2
        + "bb01"  # lport 443, host order
        "50c3"  # rport 50000
        "06"  # family AF_INET6 (a dual-stack socket)
        "06"  # TCP
        "01"  # connect
        "00"
    )  # fmt: skip
    assert len(raw) == 96
    ev = socket_event_from_bytes(raw)
    assert ev == SocketEvent(
        kind=abi.SOCK_CONNECT,
        family=abi.AF_INET,
        proto=6,
        laddr="198.18.0.1",
        lport=443,
        raddr="198.18.0.2",
        rport=50000,
        netns=3,
        owner=Owner(812, "nginx", 33),
        cgroup_id=7,
    )
    unowned = socket_event_from_bytes(raw[:32] + b"\0" * 8 + raw[40:])
    assert unowned.owner is None


@st.composite
def socket_events(draw: st.DrawFn) -> SocketEvent:
    family = draw(st.sampled_from([abi.AF_INET, abi.AF_INET6]))
    kind = draw(st.sampled_from([abi.SOCK_CONNECT, abi.SOCK_LISTEN, abi.SOCK_BIND]))
    wildcard = "0.0.0.0" if family == abi.AF_INET else "::"
    laddr = draw(st.sampled_from([*ADDRS[family], wildcard]))
    connected = kind == abi.SOCK_CONNECT
    return SocketEvent(
        kind=kind,
        family=family,
        proto=draw(st.sampled_from([6, 17, 1 if family == abi.AF_INET else 58])),
        laddr=laddr,
        lport=draw(st.sampled_from([80, 443, 50000])),
        raddr=draw(st.sampled_from(ADDRS[family])) if connected else "",
        rport=draw(st.sampled_from([80, 443, 50000])) if connected else 0,
        netns=draw(st.sampled_from([NETNS, NETNS, 9])),
        owner=draw(st.sampled_from([None, *OWNERS])),
    )


@st.composite
def flow_keys(draw: st.DrawFn) -> FlowKey:
    family = draw(st.sampled_from([abi.AF_INET, abi.AF_INET6]))
    return FlowKey(
        family,
        draw(st.sampled_from(ADDRS[family])),
        draw(st.sampled_from(ADDRS[family])),
        draw(st.sampled_from([80, 443, 50000])),
        draw(st.sampled_from([80, 443, 50000])),
        draw(st.sampled_from([6, 17, 1 if family == abi.AF_INET else 58])),
        direction=draw(st.sampled_from([abi.DIR_INGRESS, abi.DIR_EGRESS])),
    )


def model(events: list[SocketEvent], key: FlowKey) -> Owner | None:
    """The rule, by brute force over everything announced (the latest socket of a kind wins):
    the flow's local end is its destination when received, its source when sent; a connected
    socket with the exact 4-tuple first, then one bound to the local port on the local address,
    then one on the wildcard address if the local address is this host's (an IPv4 flow also
    takes an IPv6 wildcard socket). Sockets without an owner or of another namespace: none."""
    if key.direction == abi.DIR_EGRESS:
        laddr, lport, raddr, rport = key.src, key.sport, key.dst, key.dport
    else:
        laddr, lport, raddr, rport = key.dst, key.dport, key.src, key.sport
    usable = [e for e in events if e.netns == NETNS and e.owner is not None]
    if key.proto in (1, 58):  # ICMP: type and code in the ports differ between request and
        # reply; a socket that sent to this address pair owns both directions
        icmp = [
            e for e in usable
            if e.kind == abi.SOCK_CONNECT
            and (e.family, e.proto, e.laddr, e.raddr) == (key.family, key.proto, laddr, raddr)
        ]  # fmt: skip
        return icmp[-1].owner if icmp else None
    exact = [
        e for e in usable
        if e.kind == abi.SOCK_CONNECT
        and (e.family, e.proto, e.laddr, e.lport, e.raddr, e.rport)
        == (key.family, key.proto, laddr, lport, raddr, rport)
    ]  # fmt: skip
    if exact:
        return exact[-1].owner
    families = [key.family] + ([abi.AF_INET6] if key.family == abi.AF_INET else [])
    for fam in families:
        bound = [
            e for e in usable
            if e.kind != abi.SOCK_CONNECT
            and (e.family, e.proto, e.lport) == (fam, key.proto, lport)
        ]  # fmt: skip
        if fam == key.family:
            same = [e for e in bound if e.laddr == laddr]
            if same:
                return same[-1].owner
        wild = [e for e in bound if e.laddr == ("0.0.0.0" if fam == abi.AF_INET else "::")]
        if wild and laddr in LOCAL:
            return wild[-1].owner
    return None


def batch_of(keys: list[FlowKey], family: int) -> FlowBatch:
    dtype = abi.KEY_DTYPES[family]
    width = 4 if family == abi.AF_INET else 16
    arr = np.zeros(len(keys), dtype)
    for i, k in enumerate(keys):
        arr[i]["saddr"] = addr_bytes(k.src)[1][:width]
        arr[i]["daddr"] = addr_bytes(k.dst)[1][:width]
        arr[i]["sport"], arr[i]["dport"] = k.sport, k.dport
        arr[i]["proto"], arr[i]["direction"] = k.proto, k.direction
    z = np.zeros(len(keys), np.uint64)
    return FlowBatch(family, arr, z, z, z, z, z, z.astype(np.uint8))


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.lists(socket_events(), max_size=6), min_size=1, max_size=4),
    keys=st.lists(flow_keys(), min_size=1, max_size=12),
)
def test_the_join_is_the_rule_over_everything_announced(
    steps: list[list[SocketEvent]], keys: list[FlowKey]
) -> None:
    """Sockets arrive in several batches (as ticks poll them); after each, every flow's owner
    is what the brute-force model says of all sockets so far, whichever family."""
    table = OwnerTable(NETNS, local_addresses=lambda: set(LOCAL))
    seen: list[SocketEvent] = []
    for events in steps:
        table.add(events)
        seen.extend(events)
        for family in (abi.AF_INET, abi.AF_INET6):
            mine = [k for k in keys if k.family == family]
            got = table.join(batch_of(mine, family), np.arange(len(mine)))
            assert list(got) == [model(seen, k) for k in mine]


def test_the_command_line_is_the_running_process_s_own() -> None:
    """The detail view's command line comes from /proc while the process runs, as ps shows
    it; a pid that exited, or that now runs another command, gives none."""
    import subprocess
    import sys

    from flowscope.kernel.owners import running_command

    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "two words"],
        stdin=subprocess.DEVNULL,
    )
    try:
        comm = Path(f"/proc/{child.pid}/comm").read_text().strip()
        ps = subprocess.run(
            ["ps", "-o", "args=", "-p", str(child.pid)], capture_output=True, text=True
        ).stdout.strip()
        assert running_command(Owner(child.pid, comm, 0)) == ps
        assert ps.endswith("time.sleep(30) two words")
        assert running_command(Owner(child.pid, "not-" + comm, 0)) is None
    finally:
        child.kill()
        child.wait()
    assert running_command(Owner(child.pid, comm, 0)) is None
    assert running_command(Owner(2, "kthreadd", 0)) == "[kthreadd]"
