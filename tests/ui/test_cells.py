"""Addresses clipped to a column's width: different hosts never read the same, and what is
shown is the host's own text. Round-trip times fit their column."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowscope.vocab import clip, clip_column, rtt_text


@st.composite
def neighbours(draw: st.DrawFn) -> list[str]:
    """Addresses as an incident shows them: many hosts of one or two prefixes, differing in
    the middle, the end or both, IPv4 among them, a few repeated."""
    bases = [int(ipaddress.IPv6Address(p)) for p in ("2001:db8:aaaa:1::", "2001:db8:abab:77::")]
    out = []
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.integers(0, 5)) == 0:
            out.append(f"198.18.{draw(st.integers(0, 255))}.{draw(st.integers(0, 255))}")
            continue
        base = draw(st.sampled_from(bases))
        shift = draw(st.sampled_from([0, 16, 48, 64, 80]))
        value = base + (draw(st.integers(0, 0xFFFF)) << shift) + draw(st.integers(0, 3))
        out.append(str(ipaddress.IPv6Address(value % (1 << 128))))
    if out and draw(st.booleans()):
        out.append(out[0])
    return out


@settings(max_examples=300)
@given(texts=neighbours(), width=st.integers(12, 40))
def test_different_hosts_never_read_the_same(texts: list[str], width: int) -> None:
    shown = clip_column(texts, width)
    for text, cell in zip(texts, shown, strict=True):
        assert len(cell) <= width
        if len(text) <= width:
            assert cell == text
        for part in cell.split("…"):
            assert part in text
    pairs = {(c, t) for c, t in zip(shown, texts, strict=True)}
    assert len({c for c, _ in pairs}) == len({t for _, t in pairs}), pairs


def test_hosts_of_one_prefix_show_where_they_differ() -> None:
    hosts = [f"2001:db8:{i}aaa:1::2" for i in (1, 2, 3, 4)]
    assert {clip(h, 12) for h in hosts} == {"2001:…a:1::2"}  # cut in the middle: four alike
    assert clip_column(hosts, 12) == [f"…:db8:{i}aaa:…" for i in (1, 2, 3, 4)]


@pytest.mark.parametrize(
    ("us", "text"),
    [(0, "0us"), (850, "850us"), (999, "999us"), (1000, "1.0ms"), (12_449, "12.4ms"),
     (99_999, "100.0ms"), (100_000, "100ms"), (999_999, "999ms"), (1_200_000, "1.20s")],
)  # fmt: skip
def test_round_trip_times_read_as_ss_and_ping_write_them(us: int, text: str) -> None:
    assert rtt_text(us) == text
    assert len(text) <= 7  # the RTT column's width
