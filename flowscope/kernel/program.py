"""Compile the flow programs (XDP ingress, TC egress) with BCC and read what they collect.

BCC compiles bpf/flowscope.c at run time against the running kernel's headers. Tunables go in
as -D cflags, never by editing the source. Reading the flow maps uses BPF_MAP_LOOKUP_BATCH into
numpy buffers that are reused between reads, so a drain costs a few syscalls and no Python
object per flow; the per-CPU values are summed with numpy.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowscope import abi
from flowscope.errors import (
    CompileError,
    KernelHeadersError,
    PrivilegeError,
    UnsupportedKernelError,
)
from flowscope.kernel import btf, drain, libbpf, memory, ringbuf
from flowscope.kernel.attach import FLOWSCOPE_XDP
from flowscope.kernel.privileges import require_bpf_privileges
from flowscope.model import FlowBatch, FlowEvent, events_from_array

XDP_FUNCTION = FLOWSCOPE_XDP
TC_FUNCTION = "flowscope_tc"
TC_ACT_UNSPEC = -1
"""The TC program's only verdict: none (tcx: run the next program, then the default)."""


def bpf_dir() -> Path:
    """Where the C sources are: inside the installed package, or the source tree's bpf/."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "bpf", here.parent / "bpf"):
        if (candidate / "flowscope.c").is_file():
            return candidate
    raise CompileError("the BPF sources (flowscope.c) are missing from the installation")


COMPILING = threading.Lock()
"""Held for each BCC compile: LLVM in one process crashed (SIGSEGV) with two at once, and
captured_stderr points the whole process's descriptor 2 at one compile's log."""


@contextlib.contextmanager
def captured_stderr() -> Iterator[Callable[[], str]]:
    """BCC and the verifier print to fd 2; keep it so an error can quote the compiler."""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)

        def text() -> str:
            tmp.seek(0)
            return tmp.read().decode(errors="replace")

        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def kernel_headers() -> Path | None:
    """The kernel headers BCC will compile against, or None when there are none. Checked
    before compiling because BCC reports their absence only on stdout, which belongs to the
    console while it runs."""
    override = os.environ.get("BCC_KERNEL_SOURCE")
    if override:
        return Path(override) if Path(override).is_dir() else None
    build = Path(f"/lib/modules/{os.uname().release}/build")
    if build.is_dir():
        return build
    kheaders = Path("/sys/kernel/kheaders.tar.xz")
    return kheaders if kheaders.exists() else None


def compile_error(log: str, what: str) -> Exception:
    if "Unable to find kernel headers" in log or "linux/kconfig.h" in log:
        return KernelHeadersError(
            "no kernel headers for this kernel",
            "run 'make setup', which installs Debian's linux-headers-amd64 and links them",
        )
    if "ringbuf" in log.lower() and ("invalid" in log.lower() or "unknown" in log.lower()):
        return UnsupportedKernelError(
            "this kernel has no BPF ring buffer", "flowscope needs Linux 5.8 or later"
        )
    errors = [ln for ln in log.splitlines() if "error:" in ln]
    detail = errors[0].strip() if errors else (log.strip().splitlines() or [what])[-1]
    return CompileError(f"{what}: {detail}")


@dataclass
class _BatchBuffers:
    """Reusable buffers for one flow map."""

    keys: np.ndarray
    values: np.ndarray
    token: ctypes.Array[ctypes.c_char] = field(
        default_factory=lambda: ctypes.create_string_buffer(8)
    )


def default_event_budget(ringbuf_pages: int, ncpus: int) -> int:
    """Records each CPU may announce per one-second window so that all CPUs together fill at
    most three quarters of the ring buffer between two reads a second apart (the collector
    drains it once a tick), even when a read falls between the end of one window and the start
    of the next (two budgets): 3/8 of the ring buffer over the CPUs, at least 1. A record takes
    64 bytes and an 8-byte header. A burst (a scan of a few hundred ports) goes through whole."""
    capacity = ringbuf_pages * 4096 // ringbuf.record_span(abi.EVENT_DTYPE.itemsize)
    return max(1, capacity * 3 // 8 // max(1, ncpus))


class FlowProgram:
    """The compiled programs (XDP for ingress, TC for egress: one source, the same maps), the
    maps, and the ways to read them.

    Not attached to anything by itself: probe.attach does that, and BPF_PROG_TEST_RUN can run
    them directly (tests, benchmarks, replay). The TC program is loaded on first use."""

    def __init__(
        self,
        *,
        flow_entries: int = abi.DEFAULT_FLOW_ENTRIES,
        ringbuf_pages: int = abi.DEFAULT_RINGBUF_PAGES,
        cflags: tuple[str, ...] = (),
        owners: bool = False,
        event_budget: int | None = None,
    ) -> None:
        require_bpf_privileges()
        if flow_entries < 1:
            raise CompileError("--flow-entries must be at least 1")
        if ringbuf_pages < 1 or ringbuf_pages & (ringbuf_pages - 1):
            raise CompileError("the ring buffer size must be a power of two pages")
        src = bpf_dir()
        if kernel_headers() is None:
            raise KernelHeadersError(
                f"no kernel headers for this kernel ({os.uname().release})",
                "run 'make setup', which installs Debian's linux-headers-amd64 and links them",
            )
        self.flow_entries = flow_entries
        self.ncpus = libbpf.num_possible_cpus()
        self.event_budget = (
            default_event_budget(ringbuf_pages, self.ncpus)
            if event_budget is None
            else event_budget
        )
        """Ring buffer records each CPU may write per one-second window (0: no limit)."""
        flags = [
            f"-I{src}",
            f"-DFLOW_ENTRIES={flow_entries}",
            f"-DRINGBUF_PAGES={ringbuf_pages}",
            f"-DFLOOD_ENTRIES={abi.DEFAULT_FLOOD_ENTRIES}",
            f"-DEVENT_BUDGET={self.event_budget}",
            *cflags,
        ]
        # the drop hook (bpf/drops.c) reads kernel structs at offsets from the kernel's BTF;
        # without it the rest still works, and drops_reason says why there are no drops
        drop_flags: list[str] = []
        self.drops_reason: str | None = "not asked for"
        if owners:
            try:
                drop_flags = btf.drop_cflags()
                self.drops_reason = None
            except UnsupportedKernelError as e:
                self.drops_reason = e.message
        from bcc import BPF  # only the probe imports bcc

        with COMPILING, captured_stderr() as log:
            try:
                if owners:  # BCC takes programs from its main source only: join them
                    hooks = ["drops.c", "resets.c"] if drop_flags else []
                    files = ["flowscope.c", "owners.c", *hooks]
                    text = "".join((src / f).read_text() for f in files)
                    self._bpf = BPF(text=text.encode(), cflags=[*flags, "-DFS_OWNERS", *drop_flags])
                else:
                    self._bpf = BPF(src_file=str(src / "flowscope.c").encode(), cflags=flags)
            except Exception as e:
                raise compile_error(log(), "BCC could not compile bpf/flowscope.c") from e
            try:
                self._fn = self._bpf.load_func(XDP_FUNCTION.encode(), BPF.XDP)
            except Exception as e:
                text = log()
                if "Operation not permitted" in str(e) or "Operation not permitted" in text:
                    raise PrivilegeError(
                        "the kernel refused to load the XDP program",
                        "run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON",
                    ) from e
                raise compile_error(text, "the verifier refused the XDP program") from e
        self.prog_fd: int = self._fn.fd
        self._tc_fd: int | None = None
        self._maps = {
            abi.AF_INET: (self._bpf["flows4"].map_fd, abi.KEY4_DTYPE),
            abi.AF_INET6: (self._bpf["flows6"].map_fd, abi.KEY6_DTYPE),
        }
        self.map_bytes = sum(
            memory.memlock(fd)
            or memory.hash_bytes(
                flow_entries, self.ncpus, kdtype.itemsize, abi.VALUE_DTYPE.itemsize
            )
            for fd, kdtype in self._maps.values()
        )
        """Locked kernel memory of the two flow maps: the kernel's own report (fdinfo memlock),
        the model of kernel.memory where it gives none."""
        self._drains: dict[int, drain.MapDrain] = {}
        self._flood_buffers: _BatchBuffers | None = None
        self.ringbuf_bytes = ringbuf_pages * 4096
        self._events: ringbuf.RingBuffer | None = None
        self._event_callback: Callable[[FlowEvent], None] | None = None
        self._decode: Callable[[np.ndarray], Sequence[FlowEvent]] = events_from_array
        self._closed = False

    @property
    def drops(self) -> bool:
        """Whether bpf/drops.c and bpf/resets.c are compiled in (kernel.drops.DropHooks and
        kernel.resets.ResetHooks attach them)."""
        return self.drops_reason is None

    @property
    def module(self) -> Any:
        """The compiled BCC module, for programs built into it beside the flow programs
        (kernel.owners' socket hooks, with ``owners``)."""
        return self._bpf

    @property
    def tc_prog_fd(self) -> int:
        """The egress (SCHED_CLS) program's fd, loaded (verified) on first use."""
        if self._tc_fd is None:
            from bcc import BPF

            with COMPILING, captured_stderr() as log:
                try:
                    fn = self._bpf.load_func(TC_FUNCTION.encode(), BPF.SCHED_CLS)
                except Exception as e:
                    text = log()
                    if "Operation not permitted" in str(e) or "Operation not permitted" in text:
                        raise PrivilegeError(
                            "the kernel refused to load the TC program",
                            "run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON",
                        ) from e
                    raise compile_error(text, "the verifier refused the TC program") from e
            self._tc_fd = int(fn.fd)
        return self._tc_fd

    # -- flows ---------------------------------------------------------------------------

    def map_fd(self, family: int) -> int:
        """The fd of the flow map of one family (abi.AF_INET or abi.AF_INET6)."""
        return int(self._maps[family][0])

    def read_flows(self, family: int) -> FlowBatch:
        """Every flow of one family, per-CPU values summed, read by kernel.drain's threads.
        The arrays are fresh."""
        reader = self._drains.get(family)
        if reader is None:
            fd, kdtype = self._maps[family]
            reader = drain.MapDrain(int(fd), family, kdtype, self.flow_entries, self.ncpus)
            self._drains[family] = reader
        return reader.read()

    def read_all_flows(self) -> list[FlowBatch]:
        """IPv4 and IPv6 flows."""
        return [self.read_flows(abi.AF_INET), self.read_flows(abi.AF_INET6)]

    def take_flows(self, family: int, keys: np.ndarray) -> tuple[np.ndarray, FlowBatch]:
        """Remove flows from the kernel map and return their final counters, each with one
        lookup-and-delete, so no packet counted after the last read is lost. Returns which keys
        were found, and the final counters of those."""
        fd, kdtype = self._maps[family]
        kbuf = np.ascontiguousarray(keys, dtype=kdtype)
        vbuf = np.zeros((len(kbuf), self.ncpus), dtype=abi.VALUE_DTYPE)
        found = np.array(
            libbpf.map_lookup_and_delete_many(
                fd,
                kbuf.ctypes.data,
                kdtype.itemsize,
                vbuf.ctypes.data,
                self.ncpus * abi.VALUE_DTYPE.itemsize,
                len(kbuf),
            ),
            dtype=bool,
        )
        return found, FlowBatch.from_percpu(family, kbuf[found], vbuf[found])

    def put_flows(self, family: int, keys: np.ndarray, packets: int = 1) -> None:
        """Insert flows from user space (or set the counts of flows already there), with
        ``packets`` packets on the first CPU, by BPF_MAP_UPDATE_BATCH. For
        benchmarks that need a map holding many flows, or all of them active: this fills a
        million in about a second, where running a frame per flow through the program takes
        minutes. ``keys`` has the kernel key layout (abi.KEY4_DTYPE or KEY6_DTYPE)."""
        fd, kdtype = self._maps[family]
        kbuf = np.ascontiguousarray(keys, dtype=kdtype)
        chunk = 16384
        vbuf = np.zeros((min(chunk, len(kbuf)), self.ncpus), dtype=abi.VALUE_DTYPE)
        vbuf[:, 0]["packets"] = packets
        for start in range(0, len(kbuf), chunk):
            part = kbuf[start : start + chunk]
            libbpf.map_update_batch(fd, part.ctypes.data, vbuf.ctypes.data, len(part))

    def take_floods(self) -> tuple[np.ndarray, np.ndarray]:
        """Empty the flood table: its keys (abi.FLOOD_KEY_DTYPE) and their packets and bytes
        summed over CPUs (abi.FLOOD_VALUE_DTYPE), by lookup-and-delete batches, so each packet
        is in exactly one tick's read (up to one a CPU was adding while its entry was taken)."""
        if self._flood_buffers is None:
            cap = abi.DEFAULT_FLOOD_ENTRIES
            self._flood_buffers = _BatchBuffers(
                keys=np.zeros(cap, dtype=abi.FLOOD_KEY_DTYPE),
                values=np.zeros(cap * self.ncpus, dtype=abi.FLOOD_VALUE_DTYPE),
            )
        buf = self._flood_buffers
        n = libbpf.map_lookup_all(
            self._bpf["floods"].map_fd, buf.keys, buf.values, self.ncpus, buf.token, delete=True
        )
        values = buf.values[: n * self.ncpus].reshape(n, self.ncpus)
        out = np.zeros(n, dtype=abi.FLOOD_VALUE_DTYPE)
        out["packets"] = values["packets"].sum(axis=1)
        out["bytes"] = values["bytes"].sum(axis=1)
        return buf.keys[:n].copy(), out

    # -- counters ------------------------------------------------------------------------

    def read_counters_by_direction(self) -> dict[int, dict[abi.Counter, int]]:
        """The kernel counters of each direction (abi.DIR_INGRESS, abi.DIR_EGRESS), summed
        over CPUs. Read with libbpf into abi.CpuState: bcc's own decoding of the leaf type
        does not follow the two-dimensional counters array."""
        zero = ctypes.c_uint32(0)
        per_cpu = (abi.CpuState * self.ncpus)()
        libbpf.map_lookup(self._bpf["cpu_state"].map_fd, ctypes.byref(zero), ctypes.byref(per_cpu))
        return {
            d: {c: int(sum(cpu.counters[d][c] for cpu in per_cpu)) for c in abi.Counter}
            for d in range(abi.DIRECTIONS)
        }

    def read_counters(self) -> dict[abi.Counter, int]:
        """The kernel counters, summed over CPUs and both directions."""
        split = self.read_counters_by_direction()
        return {c: sum(split[d][c] for d in split) for c in abi.Counter}

    def clear(self) -> None:
        """Delete every flow and zero the counters (and the clock cache) on every CPU.

        For tests and benchmarks that run many cases through BPF_PROG_TEST_RUN: a fresh state
        without the seconds a recompile costs. Not for a live attachment, which would lose the
        packets counted between the read and the deletes."""
        for family in self._maps:
            self.take_flows(family, self.read_flows(family).keys)
        zero = ctypes.c_uint32(0)
        state = (abi.CpuState * self.ncpus)()
        libbpf.map_update(self._bpf["cpu_state"].map_fd, ctypes.byref(zero), ctypes.byref(state))

    # -- ring buffer ---------------------------------------------------------------------

    def open_events(
        self,
        callback: Callable[[FlowEvent], None],
        decode: Callable[[np.ndarray], Sequence[FlowEvent]] = events_from_array,
    ) -> None:
        """Deliver each ring buffer record, decoded, to ``callback`` during poll_events.

        The ring is read from its memory map (kernel.ringbuf), all waiting records in one
        array, and decoded together (``decode``: model.events_from_array); bcc's consumer
        would call into Python once per record. The benchmark swaps ``decode`` to measure the
        read alone."""
        if self._events is None:
            self._events = ringbuf.RingBuffer(
                self._bpf["events"].map_fd, self.ringbuf_bytes, abi.EVENT_DTYPE
            )
        self._event_callback = callback
        self._decode = decode

    def poll_events(self, timeout_ms: int = 0) -> None:
        """Wait up to timeout_ms for ring buffer records (0: take what is there)."""
        if self._events is None:
            return
        if timeout_ms > 0:
            self._events.wait(timeout_ms)
        records = self._events.read()
        callback = self._event_callback
        if callback is not None and len(records):
            for event in self._decode(records):
                callback(event)

    # -- running without an interface -----------------------------------------------------

    def test_run(
        self, frame: bytes, *, repeat: int = 1, ctx: libbpf.XdpMd | None = None
    ) -> libbpf.TestRunResult:
        """Run the program on one frame through BPF_PROG_TEST_RUN."""
        return libbpf.prog_test_run(self.prog_fd, frame, repeat=repeat, ctx=ctx)

    def test_run_egress(self, frame: bytes, *, repeat: int = 1) -> libbpf.TestRunResult:
        """Run the egress (TC) program on one frame through BPF_PROG_TEST_RUN: the kernel
        builds an skb from it, on the loopback device (ifindex 1)."""
        return libbpf.prog_test_run(self.tc_prog_fd, frame, repeat=repeat)

    def close(self) -> None:
        """Free the program and its maps (an attachment holds its own reference)."""
        if not self._closed:
            self._closed = True
            if self._events is not None:
                self._events.close()
            for reader in self._drains.values():
                reader.close()
            self._bpf.cleanup()

    def __enter__(self) -> FlowProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProgramBuild:
    """A FlowProgram compiled in a thread, started as early as a command knows it needs one.

    BCC's compiler runs in C through ctypes, which lets go of the GIL, so the seconds it takes
    overlap with what the command does meanwhile: importing and drawing the console, opening
    history. Nothing is attached until result() hands the program to its owner; close() frees
    a program nobody took (a run that failed before it needed it)."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._program: FlowProgram | None = None
        self._error: BaseException | None = None
        self._taken = False
        self._thread = threading.Thread(target=self._build, name="flowscope-compile", daemon=True)
        self._thread.start()

    def _build(self) -> None:
        try:
            self._program = FlowProgram(**self._kwargs)
        except BaseException as e:  # raised again in the thread that asks for the program
            self._error = e

    @property
    def done(self) -> bool:
        """The compile has ended (well or not)."""
        return not self._thread.is_alive()

    def result(self) -> FlowProgram:
        """The program, once compiled (waits for it); the build's error if it failed. The
        caller owns the program from here and closes it."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._program is not None
        self._taken = True
        return self._program

    def close(self) -> None:
        """Wait for the build and free its program unless someone took it."""
        self._thread.join()
        if self._program is not None and not self._taken:
            self._taken = True
            self._program.close()


BARE_KINDS = {
    "xdp": ("bare.c", "bare_xdp", ()),
    "tc": ("bare.c", "bare_tc", ()),
    "hash_floor": ("floor.c", "hash_floor_xdp", ()),
    "hash_floor32": ("floor.c", "hash_floor_xdp", ("-DFLOOR_VALUE32",)),
}
"""The reference programs of flowscope bench: their source file, function and cflags."""


class BareProgram:
    """A reference program for flowscope bench. ``xdp``: bpf/bare.c's XDP program that only
    returns XDP_PASS; ``tc``: its TC twin that only returns TC_ACT_UNSPEC. They are the floor
    that benchmarks are measured against, since BPF_PROG_TEST_RUN itself costs a few tens of
    nanoseconds per run. ``hash_floor``: bpf/floor.c, only the per-CPU hash lookup and update
    flowscope.c does for a known flow, with the key read from fixed offsets."""

    def __init__(self, kind: str = "xdp") -> None:
        require_bpf_privileges()
        src = bpf_dir()
        from bcc import BPF

        file, name, cflags = BARE_KINDS[kind]
        prog_type = BPF.SCHED_CLS if kind == "tc" else BPF.XDP
        with COMPILING, captured_stderr() as log:
            try:
                self._bpf = BPF(src_file=str(src / file).encode(), cflags=[f"-I{src}", *cflags])
                self.prog_fd: int = self._bpf.load_func(name.encode(), prog_type).fd
            except Exception as e:
                raise compile_error(log(), f"BCC could not load bpf/{file}") from e
        self._closed = False

    def test_run(self, frame: bytes, *, repeat: int = 1) -> libbpf.TestRunResult:
        """Run the program on one frame through BPF_PROG_TEST_RUN."""
        return libbpf.prog_test_run(self.prog_fd, frame, repeat=repeat)

    def close(self) -> None:
        """Free the program."""
        if not self._closed:
            self._closed = True
            self._bpf.cleanup()

    def __enter__(self) -> BareProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
