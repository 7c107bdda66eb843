"""Reading a per-CPU flow map with every CPU: its buckets split between threads.

A tick reads every flow the map holds (entries x possible CPUs values), and that read is most
of what a tick costs with many flows: one BPF_MAP_LOOKUP_BATCH thread copies about a million
entries of two CPUs' values a second here. The kernel walks a hash map bucket by bucket, and the
batch token it hands back is nothing but the next bucket's index, so a read may start at any
bucket: each worker thread reads its own range of buckets (the call releases the GIL, and so do
numpy's sums), summing each chunk's per-CPU values into the result as it goes.

A batch returns whole buckets until its count is reached, so a worker's last chunk may run past
the end of its range into the next one's. Those entries are the last ones of that chunk (the
kernel walks in bucket order), and the worker that owns those buckets reads them too: keys are
unique in a map, so an entry of the overrun whose key a later worker read from buckets before
the overrun's end is dropped. That compares a chunk against the next worker's first chunk, not
the whole read.

Like the sequential read, this is no snapshot: a flow inserted or deleted during the read may or
may not be in it, and each entry's values are those of the moment its bucket was copied.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from flowscope import abi
from flowscope.errors import BpfError
from flowscope.kernel import libbpf
from flowscope.kernel.memory import buckets
from flowscope.model import FlowBatch, opaque_rows

CHUNK = 16384
"""Entries per BPF_MAP_LOOKUP_BATCH call: large enough that the call's own cost is nothing,
small enough that a worker's per-CPU values buffer stays a few MiB on a few CPUs."""
MAX_VALUES_BYTES = 64 * 1024**2
"""A worker's per-CPU values buffer is at most this (the chunk shrinks on many-CPU machines)."""
MAX_WORKERS = 8
"""Threads reading one map at most: the kernel copies, and past a few threads the memory bus
does not give more."""
MIN_PARALLEL = CHUNK
"""With fewer entries than this in the last read, one thread reads the whole map: the split
would mostly read the same entries twice."""
MIN_CHUNK = 1024
CHUNKS_PER_WORKER = 4
"""A split read asks for at most a quarter of a worker's share of the last read per call, so
the overrun it reads twice is small beside what it reads once."""


def default_workers() -> int:
    """The CPUs this process may run on, at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


@dataclass
class _Call:
    """One batch call of one worker: the buckets it started at and ended before, and the rows
    of the result its entries went to."""

    start: int
    end: int
    row: int
    count: int


@dataclass
class _Result:
    """What a read has found so far: ``used`` of the batch's rows, reserved chunk by chunk."""

    batch: FlowBatch
    used: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reserve(self, n: int) -> int | None:
        """The first of n rows for a chunk, or None when the result is full."""
        with self.lock:
            if self.used + n > len(self.batch):
                return None
            row = self.used
            self.used += n
            return row


def _fill_holes(columns: tuple[np.ndarray, ...], keep: np.ndarray) -> int:
    """Move the kept rows past the end into the rows not kept, in every column: how many
    rows are left. A FlowBatch's order means nothing, and there are at most a few chunks of
    holes, where compressing would copy every row."""
    total = int(keep.sum())
    holes = np.flatnonzero(~keep[:total])
    movers = np.flatnonzero(keep[total:]) + total
    for column in columns:
        column[holes] = column[movers]
    return total


class MapDrain:
    """Reads one per-CPU flow map (abi.VALUE_DTYPE values) with ``workers`` threads, once the
    last read found ``min_parallel`` entries or more, at most ``chunk`` entries a call (tests
    make both small to split small maps)."""

    def __init__(
        self,
        map_fd: int,
        family: int,
        key_dtype: np.dtype,
        max_entries: int,
        ncpus: int,
        *,
        workers: int | None = None,
        chunk: int = CHUNK,
        min_parallel: int = MIN_PARALLEL,
    ) -> None:
        self.map_fd = map_fd
        self.family = family
        self.key_dtype = key_dtype
        self.max_entries = max_entries
        self.ncpus = ncpus
        self.workers = workers if workers is not None else default_workers()
        self.buckets = buckets(max_entries)
        per_entry = max(1, ncpus) * abi.VALUE_DTYPE.itemsize
        self.chunk = max(1, min(chunk, MAX_VALUES_BYTES // per_entry))
        self.min_parallel = min_parallel
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._last = 0
        """Entries the last read found: whether the next one is worth splitting."""

    def read(self) -> FlowBatch:
        """Every flow of the map, per-CPU values summed. The arrays are fresh."""
        workers = self.workers if self._last >= self.min_parallel else 1
        workers = min(workers, self.buckets)
        chunk = self.chunk
        if workers > 1:
            share = self._last // (workers * CHUNKS_PER_WORKER)
            chunk = min(chunk, max(MIN_CHUNK, share))
        # room for every entry, and for what each worker may read past its range (one call)
        overrun = max(chunk, MIN_CHUNK)
        capacity = self.max_entries + workers * overrun
        result = _Result(FlowBatch.empty(self.family, capacity, self.key_dtype))
        bounds = [self.buckets * w // workers for w in range(workers + 1)]
        ranges = list(itertools.pairwise(bounds))
        if workers == 1:
            calls = [self._read_range(0, self.buckets, chunk, result)]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="flowscope-drain")
            futures = [self._pool.submit(self._read_range, a, b, chunk, result) for a, b in ranges]
            calls = [f.result() for f in futures]
        keep = self._overlaps(calls, ranges, result)
        n = result.used
        columns = result.batch.columns
        if keep is not None:
            n = _fill_holes(columns, keep)
        small = n < capacity // 2  # then copies: do not hold on to a mostly empty buffer
        self._last = n
        return FlowBatch.from_columns(
            self.family, [c[:n].copy() if small else c[:n] for c in columns]
        )

    def _buffers(self) -> tuple[np.ndarray, np.ndarray, ctypes.Array[ctypes.c_char]]:
        """This thread's chunk buffers (keys, per-CPU values, batch token), made once."""
        local = self._local
        if getattr(local, "keys", None) is None:
            size = max(self.chunk, MIN_CHUNK)
            local.keys = np.empty(size, self.key_dtype)
            local.values = np.empty(size * max(1, self.ncpus), abi.VALUE_DTYPE)
            local.token = ctypes.create_string_buffer(8)
        return local.keys, local.values, local.token

    def _read_range(self, start: int, stop: int, chunk: int, result: _Result) -> list[_Call]:
        """Read buckets from ``start`` until a call ends at or past ``stop`` (or the map ends),
        ``chunk`` entries a call at most, summing each chunk into ``result``."""
        keys, values, token = self._buffers()
        position = ctypes.c_uint32.from_buffer(token)
        position.value = start
        calls: list[_Call] = []
        ncpus = max(1, self.ncpus)
        while True:
            begin = position.value
            try:
                got, done = libbpf.map_lookup_batch(
                    self.map_fd, keys.ctypes.data, values.ctypes.data, chunk, token, False
                )
            except BpfError as e:
                if e.errno != errno.ENOSPC or chunk >= len(keys):
                    raise
                # the next bucket holds more entries than the call asked for (only a test's
                # tiny chunks meet that): ask for a whole buffer this once
                got, done = libbpf.map_lookup_batch(
                    self.map_fd, keys.ctypes.data, values.ctypes.data, len(keys), token, False
                )
            end = self.buckets if done else position.value
            if got:
                row = result.reserve(got)
                if row is None:  # cannot be: only the collector deletes, and not during a read,
                    break  # so the rows are at most every entry plus one overrun per worker
                per_cpu = values[: got * ncpus].reshape(got, ncpus)
                result.batch.fill(slice(row, row + got), keys[:got], per_cpu)
                calls.append(_Call(begin, end, row, got))
            if done or end >= stop:
                break
        return calls

    @staticmethod
    def _overlaps(
        calls: list[list[_Call]], ranges: list[tuple[int, int]], result: _Result
    ) -> np.ndarray | None:
        """Which rows to keep once the entries a worker read past its range, and a later one
        read again, are dropped; None when no worker ran past its range."""
        keep: np.ndarray | None = None
        rows = opaque_rows(result.batch.keys[: result.used])  # whole keys, pad bytes included
        for w, (mine, (_, stop)) in enumerate(zip(calls, ranges, strict=True)):
            if not mine or mine[-1].end <= stop:
                continue
            last = mine[-1]
            later = [
                c for theirs in calls[w + 1 :] for c in theirs if c.start < last.end
            ]  # the buckets the overrun covers, as the later workers read them
            if not later:
                continue
            theirs = np.concatenate([rows[c.row : c.row + c.count] for c in later])
            again = np.isin(rows[last.row : last.row + last.count], theirs)
            if again.any():
                if keep is None:
                    keep = np.ones(result.used, bool)
                keep[last.row : last.row + last.count] &= ~again
        return keep

    def close(self) -> None:
        """Stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
