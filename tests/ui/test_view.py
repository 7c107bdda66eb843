"""Filtering, grouping and the top N on arrays, held to the filter language's own answers."""

from __future__ import annotations

import numpy as np
import pytest

from flowscope.query.filter import parse
from flowscope.query.frame import FlowFrame, RowView, filter_mask
from flowscope.query.view import GROUPS, ViewSpec, compute, find, reverse_ident
from tests.support.scenario import SCANNER, SERVER, scenario

TICK = scenario(76)[75]
FRAME = FlowFrame.from_live(TICK.tick.live, TICK.now_ns)
NAMES = {2: "eth0"}

FILTERS = [
    "",
    "tcp",
    "udp or icmp",
    "host 198.18.0.10",
    "src 198.18.0.10 and dport 443",
    "dst net 198.18.0.0/24",
    "net 2001:db8::/32",
    "not net 198.19.0.0/16",
    "port 443",
    "sport 5432",
    "vlan 100",
    "iface eth0",
    "iface eth1",
    "ingress",
    "egress",
    "bytes > 1M",
    "retrans > 0",
    "rtt > 10ms",
    "not rtt < 500us",
    "drops > 0",
    "drop reason no_socket",
    "packets <= 1",
    "flags S",
    "flags PA and not (src host 198.18.7.21 or dst 198.18.9.4)",
    "proto 58 || proto icmp",
    "proc nginx",
    "pid 640",
    "user 33",
    "user root",
    'container ""',
    "container nginx.service",
    "not proc sshd and tcp",
]


@pytest.mark.parametrize("text", FILTERS)
def test_array_filter_decides_as_the_filter_language(text: str) -> None:
    flt = parse(text)
    mask = filter_mask(flt, FRAME, NAMES)
    expected = [flt.matches(RowView(FRAME, i, NAMES)) for i in range(len(FRAME))]
    assert mask.tolist() == expected


def test_top_n_by_rate_in_order() -> None:
    rows = compute(FRAME, ViewSpec(top=5)).rows
    assert len(rows) == 5
    assert [r.bps for r in rows] == sorted((r.bps for r in rows), reverse=True)
    everything = sorted(FRAME.bps.tolist(), reverse=True)
    assert [r.bps for r in rows] == everything[:5]
    rev = compute(FRAME, ViewSpec(top=5, reverse=True)).rows
    assert [r.bps for r in rev] == sorted(FRAME.bps.tolist())[:5]


def test_sort_by_address_and_port() -> None:
    rows = compute(FRAME, ViewSpec(sort="dport", top=1000)).rows
    assert [r.dport for r in rows] == sorted(r.dport for r in rows)
    rows = compute(FRAME, ViewSpec(sort="src", top=1000)).rows
    v4 = [r.src for r in rows if r.family == 4]
    assert v4 == sorted(v4, key=lambda a: tuple(int(x) for x in a.split(".")))


@pytest.mark.parametrize("group", list(GROUPS))
def test_groups_sum_their_flows(group: str) -> None:
    view = compute(FRAME, ViewSpec(group=group, top=10_000))
    assert sum(r.bytes for r in view.rows) == int(FRAME.bytes.sum())
    assert sum(r.flows for r in view.rows) == len(FRAME)
    assert sum(r.bps for r in view.rows) == pytest.approx(float(FRAME.bps.sum()))


@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("empty", ["filter", "frame"])
def test_a_group_of_nothing_is_an_empty_view(group: str, empty: str) -> None:
    """A filter that matches nothing, or flows that all expired, grouped by anything: no rows
    (this ended the console with a traceback: numpy cannot reshape zero rows to width -1)."""
    if empty == "filter":
        frame, spec = FRAME, ViewSpec(group=group, filter=parse("host 203.0.113.99"))
    else:
        frame, spec = FlowFrame.empty(), ViewSpec(group=group)
    assert compute(frame, spec).rows == []


def test_conversation_merges_both_directions_with_bytes_in_and_out() -> None:
    """The server's egress flow and the client's ingress flow are one conversation row: Out is
    what the server sent (egress), In what it received (ingress)."""
    rows = compute(FRAME, ViewSpec(group="pair", top=10_000)).rows
    web = next(r for r in rows if {r.src, r.dst} == {"198.18.0.10", "198.18.7.21"})
    flows = compute(FRAME, ViewSpec(filter=parse("host 198.18.7.21"), top=100)).rows
    assert {f.direction for f in flows} == {0, 1}
    sent = sum(f.bytes for f in flows if f.direction == 1)
    received = sum(f.bytes for f in flows if f.direction == 0)
    assert all(f.src == "198.18.0.10" for f in flows if f.direction == 1)
    assert (web.out, web.in_, web.flows) == (sent, received, 2)
    assert web.bytes == sent + received
    egress = compute(FRAME, ViewSpec(filter=parse("egress and host 198.18.7.21"), top=100)).rows
    assert [f.direction for f in egress] == [1]


def test_flow_view_shows_the_direction() -> None:
    """The protocol cell of a flow starts with ↓ (received, ingress) or ↑ (sent, egress)."""
    from flowscope.ui.cells import cell

    flows = compute(FRAME, ViewSpec(filter=parse("host 198.18.7.21"), top=100)).rows
    texts = {f.src: cell(f, "proto", width=6) for f in flows}
    assert texts == {"198.18.0.10": "↑tcp", "198.18.7.21": "↓tcp"}


def test_scan_groups_under_its_source() -> None:
    rows = compute(FRAME, ViewSpec(group="src", sort="flows", top=1)).rows
    assert rows[0].src == SCANNER and rows[0].flows == 200


def test_filter_then_group() -> None:
    rows = compute(FRAME, ViewSpec(group="dst", filter=parse("tcp and dst " + SERVER))).rows
    assert [r.dst for r in rows] == [SERVER]
    assert rows[0].flows == int(((FRAME.proto == 6) & _is(FRAME.dst, SERVER)).sum())


def _is(col, addr):  # type: ignore[no-untyped-def]
    from flowscope.query.frame import addr_bytes

    return (col == addr_bytes(addr)[1]).all(axis=1)


def test_find_and_reverse() -> None:
    top = compute(FRAME, ViewSpec(top=1), NAMES).rows[0]
    assert find(FRAME, "flow", top.ident, NAMES) == top
    back = find(FRAME, "flow", reverse_ident(top.ident) or (), NAMES)
    assert back is not None and (back.src, back.dst) == (top.dst, top.src)
    assert back.sport == top.dport


def test_a_hundred_thousand_flows_make_only_top_n_rows() -> None:

    big = FRAME.take(np.resize(np.arange(len(FRAME)), 100_000))
    view = compute(big, ViewSpec(top=50, filter=parse("tcp")))
    assert len(view.rows) == 50 and view.matched == int((big.proto == 6).sum())


def test_destination_ports_of_received_and_sent_flows_stay_apart() -> None:
    """Issue #13: grouped by destination port, the client ports of what the server sends were
    mixed in with its services. Each row is one (protocol, port, direction); its protocol cell
    says which (↓ received: a service of ours, ↑ sent: a peer's port)."""
    from flowscope.ui.cells import cell

    rows = compute(FRAME, ViewSpec(group="dport", top=10_000)).rows
    https = [r for r in rows if r.dport == 443 and r.proto == 6]
    assert [cell(r, "proto", width=6) for r in https] == ["↓tcp"]
    received = FRAME.dport[(FRAME.direction == 0) & (FRAME.dport == 443) & (FRAME.proto == 6)]
    assert https[0].flows == len(received)
    client = next(r for r in rows if r.dport == 50412)
    assert cell(client, "proto", width=6) == "↑tcp"
    assert find(FRAME, "dport", client.ident, NAMES) == client


def _model_groups(group: str, names: dict[int, str]) -> dict[tuple[object, ...], tuple[int, int]]:
    """Per group key, (flows, bytes), summed in plain Python over the frame's flows."""
    out: dict[tuple[object, ...], tuple[int, int]] = {}
    for i in range(len(FRAME)):
        key: tuple[object, ...] = {
            "sport": (int(FRAME.proto[i]), int(FRAME.sport[i]), int(FRAME.direction[i])),
            "dport": (int(FRAME.proto[i]), int(FRAME.dport[i]), int(FRAME.direction[i])),
            "iface": (names.get(int(FRAME.ifindex[i]), str(int(FRAME.ifindex[i]))),),
            "vlan": (int(FRAME.vlan[i]),),
        }[group]
        flows, nbytes = out.get(key, (0, 0))
        out[key] = (flows + 1, nbytes + int(FRAME.bytes[i]))
    return out


@pytest.mark.parametrize("group", ["sport", "dport", "iface", "vlan"])
def test_port_interface_and_vlan_groups_sum_as_a_plain_model(group: str) -> None:
    """Live groups by source port, interface and VLAN as history does (issue 15): each row is
    the flows of one key, ports per protocol and direction."""
    view = compute(FRAME, ViewSpec(group=group, top=10_000), NAMES)
    got: dict[tuple[object, ...], tuple[int, int]] = {}
    for r in view.rows:
        key: tuple[object, ...] = {
            "sport": (r.proto, r.sport, r.direction),
            "dport": (r.proto, r.dport, r.direction),
            "iface": (r.iface,),
            "vlan": (r.vlan,),
        }[group]
        got[key] = (r.flows, r.bytes)
    assert got == _model_groups(group, NAMES)
    assert len({r.key for r in view.rows}) == len(view.rows)
    for r in view.rows:  # Enter finds the same group again, outside the top N too
        again = find(FRAME, group, r.ident, NAMES)
        assert again is not None and (again.flows, again.bytes) == (r.flows, r.bytes)


def test_every_grouping_is_one_of_historys_and_the_reverse() -> None:
    from flowscope.history.browse import GROUP_CYCLE
    from flowscope.history.queries import GROUPINGS as HISTORY

    assert set(GROUPS) == set(HISTORY)
    assert tuple(GROUPS) == GROUP_CYCLE


def test_the_array_back_end_knows_every_node_of_the_filter() -> None:
    """No node falls back to row-by-row matching (issue 15): a new node class without its
    numpy form fails here, not silently slow in the console."""
    from flowscope.query import nodes
    from flowscope.query.frame import MASKERS

    def leaves(cls: type) -> set[type]:
        # dataclass(slots=True) makes a new class: the one the module names is the live one
        subs = {s for s in cls.__subclasses__() if getattr(nodes, s.__name__, None) is s}
        return subs | {s for sub in subs for s in leaves(sub)}

    assert leaves(nodes.Expr) == set(MASKERS)


@pytest.mark.parametrize(
    ("group", "attr"), [("process", "pid"), ("user", "uid"), ("container", "container")]
)
def test_owner_groupings_are_the_sums_of_their_flows_processes(group: str, attr: str) -> None:
    """Grouped by process, user or container: each row is the plain sum of the flows whose
    owner has that value; flows without a process are one row (the ``-`` group)."""
    expected: dict[object, list[int]] = {}
    for i, owner in enumerate(FRAME.owner.tolist()):
        value = None if owner is None else getattr(owner, attr)
        if group == "container" and value == "":
            value = None  # outside any container: with the flows that have no process
        sums = expected.setdefault(value, [0, 0])
        sums[0] += int(FRAME.bytes[i])
        sums[1] += 1
    rows = compute(FRAME, ViewSpec(group=group, top=10_000)).rows
    got = {}
    for r in rows:
        value = r.ident[1]
        got[None if value in (-1, "") else value] = [r.bytes, r.flows]
    assert got == expected
    assert len(expected) > 3
    nginx = find(
        FRAME, group, next(r.ident for r in rows if r.owner and r.owner.comm == "nginx"), NAMES
    )
    assert nginx is not None and nginx.owner is not None and nginx.owner.comm == "nginx"


def test_drops_view_sums_each_reason_as_a_plain_model() -> None:
    """Issue #17's drops view: grouped by drop reason, each row is the flows whose drops were
    mostly for that reason, with the sum of their drops; flows without drops are one row,
    "-"; Enter finds the group again, and its filter term selects the same flows."""
    from flowscope.ui.cells import cell
    from flowscope.ui.live import owner_term

    view = compute(FRAME, ViewSpec(group="drop_reason", sort="drops", top=10_000), NAMES)
    model: dict[str, tuple[int, int]] = {}
    for i in range(len(FRAME)):
        reason = FRAME.drop_reason[i] or ""
        flows, drops = model.get(reason, (0, 0))
        model[reason] = (flows + 1, drops + max(int(FRAME.drops[i]), 0))
    got = {r.ident[1]: (r.flows, r.drops) for r in view.rows}
    assert got == model and model["NO_SOCKET"][1] > 0
    assert view.rows[0].ident[1] == "NO_SOCKET"  # the most drops first
    assert [cell(r, "reason", width=24) for r in view.rows] == ["NO_SOCKET", "-"]
    for r in view.rows:
        again = find(FRAME, "drop_reason", r.ident, NAMES)
        assert again is not None and (again.flows, again.drops) == (r.flows, r.drops)
    term = owner_term(view.rows[0])
    assert term == "drop reason NO_SOCKET"
    mask = filter_mask(parse(term), FRAME, NAMES)
    assert int(mask.sum()) == view.rows[0].flows
    assert owner_term(view.rows[1]) is None  # the flows without drops: no filter


def test_interface_rows_sum_the_drops_of_their_flows() -> None:
    view = compute(FRAME, ViewSpec(group="iface", top=10_000), NAMES)
    assert sum(r.drops for r in view.rows) == int(np.maximum(FRAME.drops, 0).sum()) > 0
