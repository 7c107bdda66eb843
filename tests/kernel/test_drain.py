"""kernel.drain: a flow map read by threads, each from its own range of buckets, against what
was put in the map (keys and per-CPU values written from user space, summed by a model)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowscope import abi
from flowscope.kernel import libbpf
from flowscope.kernel.drain import MapDrain
from flowscope.kernel.program import FlowProgram
from flowscope.model import opaque_rows

ENTRIES = 40_000


@pytest.fixture(scope="module")
def prog(program_factory: Callable[..., FlowProgram]) -> FlowProgram:
    return program_factory(flow_entries=ENTRIES)


def _fill(prog: FlowProgram, n: int, seed: int) -> dict[bytes, tuple[int, ...]]:
    """n IPv4 flows with random per-CPU values (some CPUs without packets); what each flow's
    summed value must be, by its key's bytes: packets, bytes, ip_bytes, first, last, flags."""
    rng = np.random.default_rng(seed)
    fd = prog.map_fd(abi.AF_INET)
    keys = np.zeros(n, abi.KEY4_DTYPE)
    keys["saddr"] = rng.integers(0, 256, (n, 4))
    keys["daddr"] = [198, 18, 0, 1]
    keys["sport"] = np.arange(n) % 65_536
    keys["dport"] = np.arange(n) // 65_536 + 1
    keys["proto"] = 6
    keys = keys[np.unique(opaque_rows(keys), return_index=True)[1]]
    values = np.zeros((len(keys), prog.ncpus), abi.VALUE_DTYPE)
    values["packets"] = rng.integers(0, 3, values.shape) * rng.integers(1, 1 << 40, values.shape)
    values["bytes"] = rng.integers(0, 1 << 50, values.shape)
    values["ip_bytes"] = rng.integers(0, 1 << 50, values.shape)
    values["first_seen"] = rng.integers(1, 1 << 60, values.shape)
    values["last_seen"] = rng.integers(1, 1 << 60, values.shape)
    values["tcp_flags"] = rng.integers(0, 256, values.shape)
    expected = {}
    for i in range(len(keys)):
        libbpf.map_update(fd, keys[i : i + 1].ctypes.data, values[i].ctypes.data)
        v = values[i]
        seen = v["packets"] > 0
        expected[opaque_rows(keys[i : i + 1])[0].tobytes()] = (
            int(v["packets"].sum()),
            int(v["bytes"].sum()),
            int(v["ip_bytes"].sum()),
            int(v["first_seen"][seen].min()) if seen.any() else 0,
            int(v["last_seen"].max()),
            int(np.bitwise_or.reduce(v["tcp_flags"])),
        )
    return expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 6_000),
    workers=st.integers(1, 5),
    chunk=st.integers(1, 3_000),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_split_read_gives_every_flow_once_with_its_summed_values(
    prog: FlowProgram, n: int, workers: int, chunk: int, seed: int
) -> None:
    prog.clear()
    expected = _fill(prog, n, seed)
    reader = MapDrain(
        prog.map_fd(abi.AF_INET), abi.AF_INET, abi.KEY4_DTYPE, ENTRIES, prog.ncpus,
        workers=workers, chunk=chunk, min_parallel=0,
    )  # fmt: skip
    try:
        for _ in range(2):  # the second read with what the first one found
            batch = reader.read()
            got = {
                k.tobytes(): (
                    int(batch.packets[i]), int(batch.bytes[i]), int(batch.ip_bytes[i]),
                    int(batch.first_seen[i]), int(batch.last_seen[i]), int(batch.tcp_flags[i]),
                )
                for i, k in enumerate(opaque_rows(batch.keys))
            }  # fmt: skip
            assert len(batch) == len(expected)  # none twice
            assert got == expected
    finally:
        reader.close()
        prog.clear()


def test_the_program_reads_a_large_map_with_threads(prog: FlowProgram) -> None:
    """FlowProgram.read_flows splits once a read found enough flows, and still gives each once."""
    expected = _fill(prog, 36_000, 7)
    try:
        first = prog.read_flows(abi.AF_INET)  # one thread: nothing read before
        second = prog.read_flows(abi.AF_INET)  # split (on a machine of more than one CPU)
        for batch in (first, second):
            assert len(batch) == len(expected)
            assert {k.tobytes() for k in opaque_rows(batch.keys)} == set(expected)
            assert int(batch.packets.sum()) == sum(v[0] for v in expected.values())
    finally:
        prog.clear()


def test_a_split_read_while_the_program_adds_flows(prog: FlowProgram) -> None:
    """The real program inserts new flows (and counts packets of known ones) on another thread
    while reads split between threads run: no read holds a flow twice, every flow that was in
    the map before a read began is in it, and none holds a flow the program never saw."""
    import threading

    from flowscope.bench.workload import insert_frames, other_flow_keys

    before = other_flow_keys(12_000)
    prog.put_flows(abi.AF_INET, before)
    frames = insert_frames(12_000)
    known = {k.tobytes() for k in opaque_rows(before)}
    done = threading.Event()

    def traffic() -> None:
        for i, frame in enumerate(frames):
            prog.test_run(frame)
            if i % 7 == 0:  # a packet of a flow that is already there
                prog.test_run(frames[i // 2])
        done.set()

    reader = MapDrain(
        prog.map_fd(abi.AF_INET), abi.AF_INET, abi.KEY4_DTYPE, ENTRIES, prog.ncpus,
        workers=3, chunk=500, min_parallel=0,
    )  # fmt: skip
    sender = threading.Thread(target=traffic)
    try:
        sender.start()
        reads = 0
        while not done.is_set() or reads < 3:
            batch = reader.read()
            rows = opaque_rows(batch.keys)
            keys = {k.tobytes() for k in rows}
            assert len(keys) == len(rows)  # none twice
            assert known <= keys  # none that was there from the start is missing
            assert len(keys) <= len(before) + len(frames)
            reads += 1
        sender.join()
        final = {k.tobytes() for k in opaque_rows(reader.read().keys)}
        assert len(final) == len(before) + len(frames)  # every new flow, once
        assert reads >= 3
    finally:
        done.set()
        sender.join()
        reader.close()
        prog.clear()
