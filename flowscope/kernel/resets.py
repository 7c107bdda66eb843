"""TCP resets per flow: bpf/resets.c on the raw tracepoints tcp:tcp_send_reset and
tcp:tcp_receive_reset.

The program is compiled into the flow programs' module with the drop hook (the same BTF
offsets: FlowProgram.drops); this attaches it and reads its map. Raw tracepoints need no
tracefs, and their attachments are fds: they go away with flowscope, after kill -9 too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flowscope import abi
from flowscope.errors import UnsupportedKernelError
from flowscope.kernel import libbpf
from flowscope.kernel.program import FlowProgram, captured_stderr

HOOKS = ((b"tcp_send_reset", b"resets_send"), (b"tcp_receive_reset", b"resets_receive"))
"""(tracepoint, function) of each hook."""


class ResetHooks:
    """The reset hooks of a FlowProgram built with ``owners`` (and the kernel's BTF),
    attached; ``read`` gives what they counted so far. The program owns the module; this owns
    the attachments."""

    def __init__(self, program: FlowProgram) -> None:
        if not program.drops:
            raise UnsupportedKernelError(f"TCP resets are not followed ({program.drops_reason})")
        self._bpf: Any = program.module
        self.ncpus = program.ncpus
        self._attached: list[bytes] = []
        with captured_stderr() as log:
            for tp, fn in HOOKS:
                try:
                    self._bpf.attach_raw_tracepoint(tp=tp, fn_name=fn)
                except Exception as e:
                    self.close()
                    raise UnsupportedKernelError(
                        f"the kernel refused the reset hook (raw tracepoint {tp.decode()})",
                        log().strip().splitlines()[-1] if log().strip() else str(e),
                    ) from e
                self._attached.append(tp)
        table = self._bpf[b"tcp_resets"]
        cap = int(table.max_entries)
        self._fd = int(table.map_fd)
        self._keys = np.zeros(cap, abi.RESET_KEY_DTYPE)
        self._values = np.zeros(cap * self.ncpus, np.uint64)

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """Every flow a reset travelled in: abi.RESET_KEY_DTYPE keys and their resets summed
        over CPUs (fresh copies; counts since the hooks were attached, until the LRU map
        forgets an entry)."""
        n, counts = libbpf.percpu_sums(self._fd, self._keys, self._values, self.ncpus)
        return self._keys[:n].copy(), counts.astype(np.int64)

    def close(self) -> None:
        """Detach the hooks; the FlowProgram frees them."""
        while self._attached:
            self._bpf.detach_raw_tracepoint(tp=self._attached.pop())

    def __enter__(self) -> ResetHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
