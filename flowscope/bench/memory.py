"""What the flow maps lock in kernel memory (issue #19): on this machine, and as a many-CPU
server would pay for the same layout, each figure the kernel's own report (fdinfo memlock), and
what the two ways of saving it would cost per packet: maps allocated per insert
(BPF_F_NO_PREALLOC) and a value packed into 32 bytes."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

from flowscope import abi
from flowscope.bench.harness import (
    BIG_FLOW_ENTRIES,
    INSERT_RINGBUF_PAGES,
    NO_PREALLOC_CFLAGS,
    Lab,
    Result,
    check_counted,
    count_label,
    side_by_side,
)
from flowscope.bench.workload import HOT4, hot_ipv4_tcp_frame, insert_frames, other_flow_keys
from flowscope.errors import BenchError
from flowscope.packets import IPPROTO_TCP

MIB = 1024**2
SERVER_CPUS = (64, 128)


def value_as_if(ncpus: int) -> int:
    """The per-CPU value size that holds on this machine's CPUs the bytes of flowscope's value
    on ``ncpus`` (rounded up to 8, as the kernel lays each out)."""
    from flowscope.kernel import libbpf, memory

    here = libbpf.num_possible_cpus()
    return memory.round8(-(-memory.round8(abi.VALUE_DTYPE.itemsize) * ncpus // here))


def as_if_cpus(entries: int, ncpus: int) -> int:
    """The kernel's memlock of both flow maps laid out as on ``ncpus`` possible CPUs, measured
    here: a per-CPU hash of the same keys and entries whose value is ncpus / (this machine's
    CPUs) times as large holds the same bytes of values, so the kernel reports what the server
    would lock, but for the per-CPU lock counters (4 bytes x 8 per CPU and map, added)."""
    from flowscope.kernel import checks, libbpf, memory

    here = libbpf.num_possible_cpus()
    value = value_as_if(ncpus)
    locks = 4 * memory.LOCK_COUNT * (ncpus - here)
    return sum(
        checks.percpu_hash_memlock(kdtype.itemsize, value, entries) + locks
        for kdtype in abi.KEY_DTYPES.values()
    )


DRAIN_CPUS = (16, 64, 128)
"""The servers the drain model reads as if on (each beside this machine's own figure)."""


def drain_model(lab: Lab) -> Iterator[Result]:
    """The kernel's batched read of settings.flows IPv4 flows (the drain's floor) with the
    per-CPU values of 16, 64 and 128 possible CPUs, beside the same read at this machine's
    count: per-CPU hashes whose value is that many CPUs' values over this machine's CPUs (as
    as_if_cpus lays them out), filled from user space, each read three times and the fastest
    kept. The per-CPU copy loop walks this machine's CPUs, not the server's, so these are the
    bytes' cost; the loop's own cost per CPU is not in them."""
    import os
    import time

    import numpy as np

    from flowscope.kernel import checks, libbpf

    here = libbpf.num_possible_cpus()
    n = lab.settings.flows
    keys = other_flow_keys(n)
    size = keys.dtype.itemsize

    def read_ms(cpus: int) -> float:
        value = value_as_if(cpus)
        fd = checks.percpu_hash(size, value, n)
        try:
            zero = np.zeros(value * here, np.uint8)
            for i in range(n):
                libbpf.map_update(fd, keys[i : i + 1].ctypes.data, zero.ctypes.data)
            kbuf = np.zeros(n, keys.dtype)
            vbuf = np.zeros(n * here * value, np.uint8)
            token = ctypes.create_string_buffer(8)
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                got = libbpf.map_lookup_all(fd, kbuf, vbuf, here * value, token)
                best = min(best, time.perf_counter() - t)
                if got != n:
                    raise BenchError(f"drain_model: read {got} of {n} flows")
            return best * 1000
        finally:
            os.close(fd)

    base = read_ms(here)
    label = count_label(n)
    for cpus in DRAIN_CPUS:
        yield Result(f"drain_{label}_as_{cpus}cpus", read_ms(cpus), "ms",
                     f"drain_{label}_{here}cpus", base)  # fmt: skip


def map_memory(lab: Lab) -> Iterator[Result]:
    """The flow maps of the default --map-memory: the kernel's report of the loaded program's
    maps next to kernel.memory's model (1.00: the model is the kernel's accounting); then, for
    64 and 128 possible CPUs, what the default budget's entries lock next to what 65,536 entries
    (the size before the budget) would."""
    from flowscope.kernel import libbpf, memory
    from flowscope.kernel.program import FlowProgram

    ncpus = libbpf.num_possible_cpus()
    entries = memory.entries_for(memory.DEFAULT_MAP_MEMORY, ncpus)
    with FlowProgram(flow_entries=entries) as prog:
        reported = prog.map_bytes
    yield Result(
        f"flow_maps_memory_{ncpus}cpus", reported / MIB, "MiB", "kernel.memory model",
        memory.flow_maps_bytes(entries, ncpus) / MIB,
    )  # fmt: skip
    for n in SERVER_CPUS:
        budgeted = memory.entries_for(memory.DEFAULT_MAP_MEMORY, n)
        yield Result(
            f"flow_maps_memory_{n}cpus", as_if_cpus(budgeted, n) / MIB, "MiB",
            f"{abi.DEFAULT_FLOW_ENTRIES}_entries_{n}cpus",
            as_if_cpus(abi.DEFAULT_FLOW_ENTRIES, n) / MIB,
        )  # fmt: skip


def no_prealloc(lab: Lab) -> Iterator[Result]:
    """The flow maps built with BPF_F_NO_PREALLOC (memory per flow held, not per entry):
    the hot flow next to the default build; 100,000 inserts next to the same inserts into
    preallocated maps, frame by frame; and the memory each holds after them (kernel's report)."""
    from flowscope.kernel.program import FlowProgram

    progs = lab.programs("no_prealloc")
    value, base = side_by_side(
        lab.settings,
        [p.test_run for p in progs],
        [p.test_run for p in lab.programs("default")],
        hot_ipv4_tcp_frame(),
    )
    for prog in progs:
        check_counted("xdp_hot_no_prealloc", prog, HOT4, IPPROTO_TCP)
    yield Result("xdp_hot_no_prealloc", value, "ns/packet", "xdp_hot_ipv4_tcp", base)
    n = lab.settings.flows
    frames = insert_frames(n)
    big, pages = BIG_FLOW_ENTRIES, INSERT_RINGBUF_PAGES
    with (
        FlowProgram(
            flow_entries=big, ringbuf_pages=pages, event_budget=0, cflags=NO_PREALLOC_CFLAGS
        ) as lazy,
        FlowProgram(flow_entries=big, ringbuf_pages=pages, event_budget=0) as eager,
    ):
        empty = lazy.map_bytes
        total = base_total = 0
        for frame in frames:
            total += lazy.test_run(frame).duration_ns
            base_total += eager.test_run(frame).duration_ns
        made = {
            name: prog.read_counters()[abi.Counter.FLOWS_CREATED]
            for name, prog in (("preallocated", eager), ("BPF_F_NO_PREALLOC", lazy))
        }
        if made["preallocated"] != n:
            raise BenchError(f"xdp_insert_no_prealloc: {made} flows made of {n} frames")
        from flowscope.kernel import memory

        held = sum(memory.memlock(lazy.map_fd(f)) or 0 for f in abi.KEY_DTYPES)
        full = eager.map_bytes
    yield Result("xdp_insert_no_prealloc", total / n, "ns/flow", "xdp_insert_prealloc",
                 base_total / n)  # fmt: skip
    # a map without preallocation takes each entry from the BPF allocator's per-CPU cache,
    # refilled asynchronously: inserts back to back can find it empty and fail (map_full)
    yield Result("no_prealloc_inserts_refused", n - made["BPF_F_NO_PREALLOC"], "flows",
                 "new_flows_sent", n, informative=True)  # fmt: skip
    label = f"{n // 1000}k"
    yield Result(f"flow_maps_memory_no_prealloc_{label}", held / MIB, "MiB",
                 f"prealloc_{BIG_FLOW_ENTRIES}_entries", full / MIB)  # fmt: skip
    yield Result("flow_maps_memory_no_prealloc_empty", empty / MIB, "MiB",
                 f"prealloc_{BIG_FLOW_ENTRIES}_entries", full / MIB, informative=True)  # fmt: skip


def packed_value(lab: Lab) -> Iterator[Result]:
    """bpf/floor.c's lookup and update with the value packed into 32 bytes, next to the same
    with flowscope's 48-byte value: what a smaller value would cost or save per packet."""
    small = [f.test_run for f in lab.bares("hash_floor32")]
    big = [f.test_run for f in lab.bares("hash_floor")]
    value, base = side_by_side(lab.settings, small, big, hot_ipv4_tcp_frame())
    yield Result("xdp_hash_floor_value32", value, "ns/packet", "xdp_hash_floor", base)
