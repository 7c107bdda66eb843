"""What the flow maps cost in locked kernel memory, and how many entries a budget buys.

A per-CPU hash is allocated whole when it is loaded (flowscope does not pass
BPF_F_NO_PREALLOC: a full map in a flood then never asks the allocator for anything), and each
entry holds one value for every *possible* CPU. So the same ``--flow-entries`` that takes 26 MiB
on a 2-CPU machine takes 1.6 GiB on a 128-CPU one. ``--map-memory`` states the budget instead,
and the entries follow from the CPU count.

The model is the kernel's own accounting (``htab_map_mem_usage`` in kernel/bpf/hashtab.c, which
is what ``/proc/<pid>/fdinfo/<map fd>`` reports as ``memlock``) for a preallocated per-CPU hash:

    elements  entries x (HTAB_ELEM + round_up(key, 8) + pointer to the per-CPU value)
    values    entries x possible CPUs x round_up(value, 8)
    buckets   roundup_pow_of_two(entries) x BUCKET
    fixed     the map itself and its per-CPU lock counters

The struct sizes are those of Linux 6.x on 64-bit machines; tests/kernel/test_memory.py checks
the model against the running kernel's report, and what flowscope shows at run time is always
the kernel's report (``memlock``), never the model.
"""

from __future__ import annotations

from pathlib import Path

from flowscope import abi

HTAB_ELEM = 48
"""sizeof(struct htab_elem) before its key (list node, hash, lock bookkeeping)."""
BUCKET = 16
"""sizeof(struct bucket): a list head and a raw spinlock."""
HTAB_FIXED = 832
"""sizeof(struct bpf_htab), give or take a kernel config."""
LOCK_COUNT = 8
"""HASHTAB_MAP_LOCK_COUNT: per-CPU ints that stop a program re-entering a bucket's lock."""

DEFAULT_MAP_MEMORY = 256 * 1024**2
"""--map-memory's default: both flow maps of a 128-CPU server fit in 256 MiB (21,248 entries
each); a machine of up to 40 possible CPUs gets the full abi.DEFAULT_FLOW_ENTRIES (65,536)."""

ENTRY_STEP = 256
"""Entries chosen from a budget are a multiple of this (readable figures)."""


def round8(n: int) -> int:
    """The kernel's round_up(n, 8) of key and value sizes."""
    return (n + 7) & ~7


def buckets(entries: int) -> int:
    """A hash map's buckets: roundup_pow_of_two(max_entries), as htab_map_alloc makes them
    (the batch token of a hash map is a bucket index, kernel.drain splits by it)."""
    return 1 << max(0, (entries - 1).bit_length())


def hash_bytes(entries: int, ncpus: int, key_size: int, value_size: int) -> int:
    """Locked kernel memory of one preallocated per-CPU hash, by the kernel's accounting."""
    elem = HTAB_ELEM + round8(key_size) + 8
    return (
        HTAB_FIXED
        + 4 * ncpus * LOCK_COUNT
        + BUCKET * buckets(entries)
        + entries * (elem + ncpus * round8(value_size))
    )


def flow_maps_bytes(entries: int, ncpus: int) -> int:
    """Both flow maps (IPv4 and IPv6 keys, the same value), ``entries`` each."""
    value = abi.VALUE_DTYPE.itemsize
    return hash_bytes(entries, ncpus, abi.KEY4_DTYPE.itemsize, value) + hash_bytes(
        entries, ncpus, abi.KEY6_DTYPE.itemsize, value
    )


def entries_for(budget: int, ncpus: int, cap: int = abi.DEFAULT_FLOW_ENTRIES) -> int:
    """The most entries per flow map (a multiple of ENTRY_STEP, at most ``cap``) whose two maps
    fit in ``budget`` bytes on ``ncpus`` possible CPUs; 0 when not even ENTRY_STEP fit."""
    lo, hi = 0, cap // ENTRY_STEP
    while lo < hi:  # the largest k with flow_maps_bytes(k * STEP) <= budget
        mid = (lo + hi + 1) // 2
        if flow_maps_bytes(mid * ENTRY_STEP, ncpus) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo * ENTRY_STEP


def memlock(map_fd: int) -> int | None:
    """The kernel's own figure for a loaded map's locked memory (``memlock`` in fdinfo), or
    None where the kernel does not report it."""
    try:
        text = Path(f"/proc/self/fdinfo/{map_fd}").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return None
