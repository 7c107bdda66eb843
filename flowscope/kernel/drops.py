"""Packets the kernel dropped: bpf/drops.c on the raw tracepoint skb:kfree_skb, and the names of
the running kernel's drop reasons.

The program is compiled into the flow programs' module (FlowProgram(owners=True)) when the
kernel's BTF gives the struct offsets it needs; this attaches it and reads its two maps. A raw
tracepoint needs no tracefs (not mounted here), and its attachment is an fd: it goes away with
flowscope, after kill -9 too.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from flowscope import abi
from flowscope.errors import UnsupportedKernelError
from flowscope.kernel import btf, libbpf
from flowscope.kernel.program import FlowProgram, captured_stderr

TRACEPOINT = b"kfree_skb"
FUNCTION = b"drops_kfree_skb"
KALLSYMS = Path("/proc/kallsyms")
GENERIC_XDP = (b"do_xdp_generic", b"netif_receive_generic_xdp")
"""The kernel functions that free what an XDP program dropped in generic mode (the second is
inlined into the first on some kernels, and then not in kallsyms)."""


def code_ranges(names: tuple[bytes, ...], path: Path = KALLSYMS) -> dict[bytes, tuple[int, int]]:
    """[start, end) of each of these kernel functions in ``path`` (the end is the next
    symbol's address), for those found with an address (kallsyms shows 0 to a reader without
    CAP_SYSLOG). Reading the file costs about 0.1 s (the kernel makes its MBs as it is read),
    once, when the drop hook is attached."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    found: dict[bytes, tuple[int, int]] = {}
    for name in names:
        at = data.find(b" " + name + b"\n")
        if at < 0:
            continue
        line = data.rfind(b"\n", 0, at) + 1
        after = data.find(b"\n", at + 1) + 1
        try:
            start = int(data[line : data.index(b" ", line)], 16)
            end = int(data[after : data.index(b" ", after)], 16)
        except ValueError:
            continue
        if 0 < start < end:
            found[name] = (start, end)
    return found


class DropHooks:
    """The drop hook of a FlowProgram built with ``owners`` (and the kernel's BTF), attached;
    ``read`` gives what it counted so far. The program owns the module; this owns the
    attachment."""

    def __init__(self, program: FlowProgram) -> None:
        if not program.drops:
            raise UnsupportedKernelError(f"kernel drops are not followed ({program.drops_reason})")
        self._bpf: Any = program.module
        self.ncpus = program.ncpus
        self.reasons = btf.drop_reason_names()
        """The running kernel's drop reasons by value (enum skb_drop_reason)."""
        with captured_stderr() as log:
            try:
                self._bpf.attach_raw_tracepoint(tp=TRACEPOINT, fn_name=FUNCTION)
            except Exception as e:
                raise UnsupportedKernelError(
                    "the kernel refused the drop hook (raw tracepoint kfree_skb)",
                    log().strip().splitlines()[-1] if log().strip() else str(e),
                ) from e
        self._attached = True
        table = self._bpf[b"drops"]
        cap = int(table.max_entries)
        self._fd = int(table.map_fd)
        self._keys = np.zeros(cap, abi.DROP_KEY_DTYPE)
        self._values = np.zeros(cap * self.ncpus, np.uint64)
        slots = self._bpf[b"drop_totals"]
        self._slots_fd = int(slots.map_fd)
        self._slot_keys = np.zeros(abi.DROP_REASON_SLOTS, np.uint32)
        self._slot_values = np.zeros(abi.DROP_REASON_SLOTS * self.ncpus, np.uint64)
        self._budget_fd = int(self._bpf[b"drop_budget"].map_fd)
        self.xdp_code = code_ranges(GENERIC_XDP)
        """Where generic XDP frees what an XDP program dropped (struct drop_xdp_code)."""
        code = abi.DropXdpCode()
        for i, (start, end) in enumerate(self.xdp_code.values()):
            code.start[i], code.end[i] = start, end
        zero = ctypes.c_uint32(0)
        libbpf.map_update(
            int(self._bpf[b"drop_xdp_code"].map_fd), ctypes.byref(zero), ctypes.byref(code)
        )

    @property
    def prog_fd(self) -> int:
        """The program's fd (for its run statistics)."""
        return int(self._bpf.funcs[FUNCTION].fd)

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (flow, reason) the kernel dropped packets of: abi.DROP_KEY_DTYPE keys and
        their packet counts summed over CPUs (fresh copies; counts since the hook was loaded,
        until the LRU map forgets an entry)."""
        n, counts = libbpf.percpu_sums(self._fd, self._keys, self._values, self.ncpus)
        return self._keys[:n].copy(), counts.astype(np.int64)

    def by_reason(self) -> dict[int, int]:
        """Packets dropped in flowscope's network namespace since the hook was loaded, per
        reason (IP or not; reasons past abi.DROP_REASON_SLOTS - 1 add up in that slot)."""
        n, totals = libbpf.percpu_sums(
            self._slots_fd, self._slot_keys, self._slot_values, self.ncpus
        )
        return {int(k): int(v) for k, v in zip(self._slot_keys[:n], totals, strict=True) if v}

    def unattributed(self) -> int:
        """Drops since the hook was loaded that went past its per-flow budget (struct
        drop_budget): counted by reason, in no flow."""
        zero = ctypes.c_uint32(0)
        per_cpu = (abi.DropBudget * self.ncpus)()
        libbpf.map_lookup(self._budget_fd, ctypes.byref(zero), ctypes.byref(per_cpu))
        return sum(int(cpu.unattributed) for cpu in per_cpu)

    def missed(self) -> int:
        """Drops the hook did not see since it was loaded: the kernel skips a tracepoint's
        program when it fires while that program already runs on the CPU (a drop in an
        interrupt during another drop's hook). In no count: not per reason, not per flow."""
        return libbpf.prog_misses(self.prog_fd)

    def name(self, reason: int) -> str:
        """A drop reason's name (its number when this kernel has no such reason)."""
        return self.reasons.get(reason, str(reason))

    def close(self) -> None:
        """Detach the hook; the FlowProgram frees it."""
        if self._attached:
            self._bpf.detach_raw_tracepoint(tp=TRACEPOINT)
            self._attached = False

    def __enter__(self) -> DropHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
