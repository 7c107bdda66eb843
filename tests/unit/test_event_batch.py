"""Ring buffer records decoded in bulk (what poll_events delivers) are the same events as
decoded one by one."""

from __future__ import annotations

import ipaddress

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from flowscope import abi, model

FAMILY = abi.FlowEvent.family.offset
record = st.tuples(
    st.binary(min_size=model.EVENT_SIZE, max_size=model.EVENT_SIZE),
    st.sampled_from([abi.AF_INET, abi.AF_INET6]),
).map(lambda t: t[0][:FAMILY] + bytes([t[1]]) + t[0][FAMILY + 1 :])


@given(st.lists(record, max_size=20))
def test_bulk_decoding_equals_one_by_one(records: list[bytes]) -> None:
    assert model.events_from_records(records) == [model.event_from_bytes(r) for r in records]


def test_a_known_ipv4_event() -> None:
    ev = abi.FlowEvent(timestamp=5, ifindex=2, length=60, proto=6, family=abi.AF_INET, vlan=7)
    ev.saddr[:4] = [192, 0, 2, 1]
    ev.daddr[:4] = [198, 51, 100, 1]
    ev.sport[:] = [0x9C, 0x40]  # 40000, network order
    ev.dport[:] = [0x01, 0xBB]  # 443
    ev.flags = abi.EVENT_MAP_FULL
    (decoded,) = model.events_from_records([bytes(ev) + b"extra ring padding"])
    assert decoded == model.FlowEvent(
        key=model.FlowKey(abi.AF_INET, "192.0.2.1", "198.51.100.1", 40000, 443, 6, 7, 2),
        timestamp=5,
        length=60,
        map_full=True,
    )


def _key_rows(family: int) -> st.SearchStrategy[bytes]:
    size = abi.KEY_DTYPES[family].itemsize
    return st.lists(st.binary(min_size=size, max_size=size), max_size=20).map(b"".join)


@given(
    st.sampled_from([abi.AF_INET, abi.AF_INET6]).flatmap(
        lambda f: st.tuples(st.just(f), _key_rows(f))
    )
)
def test_flow_keys_decoded_in_bulk_equal_one_by_one(case: tuple[int, bytes]) -> None:
    """The collector makes the keys of the records of a tick in bulk (keys_from_rows)."""
    family, raw = case
    rows = np.frombuffer(raw, abi.KEY_DTYPES[family])
    assert model.keys_from_rows(family, rows) == [model.key_from_row(family, r) for r in rows]


group = st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x0DB8, 0x2001]) | st.integers(0, 0xFFFF)


@given(st.lists(group, min_size=8, max_size=8), st.binary(min_size=4, max_size=4))
def test_address_text_prints_as_ipaddress_does(groups: list[int], v4: bytes) -> None:
    """address_text formats IPv6 with inet_ntop, except where it prints an embedded IPv4."""
    raw = b"".join(g.to_bytes(2, "big") for g in groups)
    assert model.address_text(abi.AF_INET6, raw) == str(ipaddress.IPv6Address(raw))
    assert model.address_text(abi.AF_INET, v4) == str(ipaddress.IPv4Address(v4))
    mapped = bytes(10) + b"\xff\xff" + v4
    assert model.address_text(abi.AF_INET6, mapped) == str(ipaddress.IPv6Address(mapped))


SADDR, DADDR = abi.FlowEvent.saddr.offset, abi.FlowEvent.daddr.offset
POOL = [bytes(16), bytes([198, 18, 0, 1]) + bytes(12), bytes.fromhex("20010db8" + "00" * 11 + "01")]


@given(st.lists(st.tuples(record, st.sampled_from(POOL), st.sampled_from(POOL)), max_size=20))
def test_bulk_decoding_of_repeated_addresses_equals_one_by_one(
    cases: list[tuple[bytes, bytes, bytes]],
) -> None:
    """Each distinct address is printed once for the whole batch: the rows that share one get
    its text, IPv4 and IPv6 mixed."""
    records = [r[:SADDR] + s + r[SADDR + 16 : DADDR] + d + r[DADDR + 16 :] for r, s, d in cases]
    assert model.events_from_records(records) == [model.event_from_bytes(r) for r in records]
