"""A replay on several CPUs at once: one process per CPU, each running its share of the flows.

One BPF_PROG_TEST_RUN per frame is the replay's floor, and one process makes one call at a
time. So a large capture is run by a process per CPU (the replay's own, and helpers forked from
it), each pinned to its CPU. A frame's share is decided by its two addresses (``share``), so all
frames between two hosts, both ways, are run by one process in capture order: what a flow's
counts, times, flags and its one new-flow announcement need. Flows of different processes
interleave, as flows handled by different CPUs of a live server do.

Every process reads the whole capture (each has its own private mapping of it, where the frame
metadata is written) and skips the frames that are not its own: reading a frame is cheaper than
sending it to another process. Only the replay's own process ticks the collector. At each tick
boundary every helper stops at the same frame, says so, and waits to be told the next boundary,
so a tick reads the maps after every frame before it and before any frame after it.

A helper never returns into its parent's code: it ends with os._exit, and dies with its parent
(PR_SET_PDEATHSIG), so a replay killed with -9 leaves no process behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import signal
import struct
from collections.abc import Callable, Sequence
from typing import NoReturn

from flowscope.errors import FlowscopeError

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
VLAN_TYPES = (0x8100, 0x88A8)
MAX_HELPERS = 7
"""Helpers at most (eight processes): past that, every process's own reading of the whole
capture costs more than the calls it shares out."""
SPLIT_BYTES = 8 << 20
"""Captures smaller than this are replayed by one process unless asked otherwise: a fork and a
second reading would cost more than they save."""
_MESSAGE = struct.Struct("<q")
DONE = -1
"""What a helper says when it has run its last frame."""
_PR_SET_PDEATHSIG = 1


class SplitError(FlowscopeError):
    """A helper of a split replay failed or vanished."""


def share(data: bytes | mmap.mmap, at: int, length: int, parts: int) -> int:
    """Which of ``parts`` processes runs the Ethernet frame of ``length`` bytes at offset ``at``
    of ``data``: the XOR of the last bytes of its two IP addresses (behind up to two VLAN
    tags), the same for both directions of every flow between two hosts; 0 for anything
    else."""
    if length < 14:
        return 0
    l3 = 14
    ethertype = data[at + 12] << 8 | data[at + 13]
    for _ in range(2):
        if ethertype not in VLAN_TYPES or length < l3 + 4:
            break
        ethertype = data[at + l3 + 2] << 8 | data[at + l3 + 3]
        l3 += 4
    if ethertype == ETH_P_IP and length >= l3 + 20:
        return (data[at + l3 + 15] ^ data[at + l3 + 19]) % parts
    if ethertype == ETH_P_IPV6 and length >= l3 + 40:
        return (data[at + l3 + 23] ^ data[at + l3 + 39]) % parts
    return 0


def default_parts(size: int, cpus: Sequence[int]) -> int:
    """Processes for a capture of ``size`` bytes on these CPUs when not told: one per CPU
    for a large capture, one for a small one."""
    if size < SPLIT_BYTES:
        return 1
    return max(1, min(len(cpus), MAX_HELPERS + 1))


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(1)


class Helpers:
    """The parent's side of the helpers: forks them, meets them at each tick boundary, and
    waits for (or kills) them at the end."""

    def __init__(self) -> None:
        self._pids: list[int] = []
        self._to: list[int] = []
        self._from: list[int] = []

    def start(self, cpus: Sequence[int], run: Callable[[int, Callable[[int], int]], None]) -> None:
        """Fork one helper per CPU of ``cpus`` after the first (the caller's, which it pins
        itself); helper i (from 1) calls ``run(i, boundary)``, where ``boundary(ts)`` reports
        the tick boundary it stopped at and returns the next one. SplitError, with none left
        running, when the system cannot make one (the caller goes on alone)."""
        parent = os.getpid()
        for part, cpu in enumerate(cpus[1:], start=1):
            opened: list[int] = []
            try:
                down_r, down_w = os.pipe()
                opened += (down_r, down_w)
                up_r, up_w = os.pipe()
                opened += (up_r, up_w)
                pid = os.fork()
            except OSError as e:
                for fd in opened:
                    os.close(fd)
                self.close()
                raise SplitError(f"cannot start a helper process: {e.strerror}") from e
            if pid == 0:
                others = (down_w, up_r, *self._to, *self._from)
                _helper(part, cpu, run, down_r, up_w, others, parent)
            os.close(down_r)
            os.close(up_w)
            self._pids.append(pid)
            self._to.append(down_w)
            self._from.append(up_r)

    def gather(self, ts: int) -> None:
        """Wait until every helper has stopped at the boundary the frame at time ``ts``
        crossed."""
        for fd in self._from:
            got = _read(fd)
            if got != ts:
                raise SplitError(
                    "a helper process of the replay stopped at another frame "
                    f"({got} against {ts}): the replay cannot go on"
                )

    def release(self, next_tick: int) -> None:
        """Let every helper go on, up to the boundary ``next_tick``."""
        for fd in self._to:
            _write(fd, next_tick)

    def finish(self) -> None:
        """Wait for every helper to run its last frame and end."""
        try:
            for fd in self._from:
                if _read(fd) != DONE:
                    raise SplitError("a helper process of the replay did not finish its frames")
        finally:
            self.close()

    def close(self) -> None:
        """End every helper (killed if still running) and reap it."""
        for fd in (*self._to, *self._from):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._to.clear()
        self._from.clear()
        for pid in self._pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._pids.clear()

    def __bool__(self) -> bool:
        return bool(self._pids)


def _helper(
    part: int,
    cpu: int,
    run: Callable[[int, Callable[[int], int]], None],
    down: int,
    up: int,
    others: Sequence[int],
    parent: int,
) -> NoReturn:
    """A helper process, just forked: pinned to ``cpu``, it runs ``run`` and tells the
    parent it is done (``up``), then ends without ever unwinding into the parent's code (its
    finally blocks, atexit, buffered output); on any error it ends without DONE, which the
    parent reports."""
    code = 1
    try:
        for fd in others:
            os.close(fd)
        _die_with_parent(parent)
        os.sched_setaffinity(0, {cpu})

        def boundary(ts: int) -> int:
            _write(up, ts)
            return _read(down)

        run(part, boundary)
        _write(up, DONE)
        code = 0
    except BaseException:
        pass
    finally:
        os._exit(code)


def _write(fd: int, value: int) -> None:
    os.write(fd, _MESSAGE.pack(value))


def _read(fd: int) -> int:
    data = b""
    while len(data) < _MESSAGE.size:
        chunk = os.read(fd, _MESSAGE.size - len(data))
        if not chunk:
            raise SplitError("a helper process of the replay ended before its frames did")
        data += chunk
    value: int = _MESSAGE.unpack(data)[0]
    return value
