"""--map-memory: the entries a budget buys on a number of possible CPUs (faked here; the model
itself is checked against the running kernel's own report in tests/kernel/test_memory.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowscope import abi
from flowscope.cli.options import flow_entries_for
from flowscope.doctor import Status, map_memory_check
from flowscope.errors import UsageError
from flowscope.kernel import memory
from flowscope.vocab import size_text

MIB = 1024**2


@pytest.mark.parametrize(
    ("ncpus", "entries"),
    [(1, 65_536), (2, 65_536), (40, 65_536), (41, 64_512), (64, 41_984), (128, 21_248),
     (256, 10_752), (1024, 2_560)],
)  # fmt: skip
def test_the_default_budget_per_cpu_count(ncpus: int, entries: int) -> None:
    assert memory.entries_for(memory.DEFAULT_MAP_MEMORY, ncpus) == entries
    assert flow_entries_for(None, memory.DEFAULT_MAP_MEMORY, ncpus) == entries


def test_a_128_cpu_server_stays_under_256_mib_where_the_old_default_took_three_times_that() -> None:
    assert memory.flow_maps_bytes(21_248, 128) <= 256 * MIB
    assert memory.flow_maps_bytes(abi.DEFAULT_FLOW_ENTRIES, 128) > 780 * MIB


@given(
    budget=st.integers(min_value=1, max_value=64 * 1024 * MIB),
    ncpus=st.integers(min_value=1, max_value=8192),
)
def test_the_entries_are_the_most_that_fit(budget: int, ncpus: int) -> None:
    entries = memory.entries_for(budget, ncpus)
    assert entries % memory.ENTRY_STEP == 0
    assert 0 <= entries <= abi.DEFAULT_FLOW_ENTRIES
    if entries:
        assert memory.flow_maps_bytes(entries, ncpus) <= budget
    if entries < abi.DEFAULT_FLOW_ENTRIES:  # one step more would not fit
        assert memory.flow_maps_bytes(entries + memory.ENTRY_STEP, ncpus) > budget


def test_more_cpus_never_buy_more_entries() -> None:
    counts = [memory.entries_for(memory.DEFAULT_MAP_MEMORY, n) for n in range(1, 600)]
    assert counts == sorted(counts, reverse=True)


def test_flow_entries_overrides_and_a_budget_too_small_is_one_clear_error() -> None:
    assert flow_entries_for(1_000_000, 1, 128) == 1_000_000
    with pytest.raises(UsageError) as e:
        flow_entries_for(None, 100_000, 2)
    assert "--map-memory: 97.7 KiB does not hold 256 flows per map on 2 possible CPUs" in str(
        e.value
    )
    assert (
        e.value.hint
        == f"give at least {size_text(memory.flow_maps_bytes(256, 2))}, or --flow-entries"
    )


def test_doctor_says_what_the_maps_lock_and_warns_on_many_cpus() -> None:
    small = map_memory_check(2)
    assert small.status is Status.OK
    assert small.detail == (
        "2 possible CPUs: 65,536 flows per map (IPv4, IPv6) lock 25.5 MiB (--map-memory 256.0 MiB)"
    )
    big = map_memory_check(128)
    assert big.status is Status.WARN
    assert "128 possible CPUs: 21,248 flows per map" in big.detail
    assert "65,536 per map would lock 781.5 MiB" in big.detail


def test_size_text() -> None:
    assert size_text(26_752_000) == "25.5 MiB"
    assert size_text(100_000) == "97.7 KiB"
    assert size_text(3 * 1024**3) == "3.0 GiB"
