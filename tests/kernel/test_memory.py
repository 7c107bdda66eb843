"""The flow maps' locked memory: kernel.memory's model against the kernel's own report
(``memlock`` in the maps' fdinfo), and --map-memory's entries loaded for real."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from flowscope import abi
from flowscope.cli.options import flow_entries_for
from flowscope.kernel import libbpf, memory
from flowscope.kernel.program import FlowProgram


@pytest.mark.parametrize("entries", [1, 1000, 4096, 65_536, 100_000])
def test_the_model_is_the_kernels_own_figure(
    program_factory: Callable[..., FlowProgram], entries: int
) -> None:
    prog = program_factory(flow_entries=entries)
    for family, kdtype in abi.KEY_DTYPES.items():
        reported = memory.memlock(prog.map_fd(family))
        assert reported == memory.hash_bytes(
            entries, prog.ncpus, kdtype.itemsize, abi.VALUE_DTYPE.itemsize
        )
    assert prog.map_bytes == memory.flow_maps_bytes(entries, prog.ncpus)


@pytest.mark.parametrize("budget", [16 * 1024**2, 2 * 1024**2])
def test_a_budget_loads_maps_that_fit_it(
    program_factory: Callable[..., FlowProgram], budget: int
) -> None:
    entries = flow_entries_for(None, budget, libbpf.num_possible_cpus())
    assert entries < abi.DEFAULT_FLOW_ENTRIES  # these budgets bind here
    prog = program_factory(flow_entries=entries)
    assert prog.map_bytes <= budget
    assert memory.flow_maps_bytes(entries + memory.ENTRY_STEP, prog.ncpus) > budget
