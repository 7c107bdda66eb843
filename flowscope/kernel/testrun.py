"""Run captured frames through the replay build of the XDP program, one BPF_PROG_TEST_RUN each.

The replay build (-DFS_REPLAY) reads a struct replay_meta placed in front of each frame as XDP
metadata: BPF_PROG_TEST_RUN takes ``data_in`` = metadata + frame and an xdp_md context with
``data`` = the metadata's size, ``data_end`` = data + frame length, ``data_meta`` = 0. A syscall
per frame is the cost floor (about a microsecond), so everything else per frame is kept to a
few byte writes into buffers built once: no ctypes object, no Python object per frame.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable

from flowscope import abi
from flowscope.kernel import libbpf
from flowscope.kernel.program import BareProgram, FlowProgram

REPLAY_CFLAGS = ("-DFS_REPLAY",)
MIN_FRAME = 14
"""BPF_PROG_TEST_RUN refuses XDP frames shorter than an Ethernet header (the metadata does not
count): the caller counts those itself, as the live program would count them as malformed."""
MAX_FRAME = 3072
"""Captured bytes handed to the kernel per frame. Beyond about 3.5 KiB the kernel would build a
multi-buffer frame (a page allocated per fragment); the parser never reads that far, and the
length counted comes from the metadata, so the rest of a jumbo frame is left out."""

_OPTS = libbpf._TestRunOpts
_CTX_SIZE = ctypes.sizeof(libbpf.XdpMd)
_PER_FRAME = struct.Struct("<I16xQQ8xI4x")
"""What changes per frame, written in ONE pack: the context (xdp_md, at offset 0 of the
control buffer) and the options (bpf_test_run_opts, right behind it) are laid out so that
xdp_md.data_end, opts.sz, opts.data_in and opts.data_size_in are covered by one format from
offset 4 (data_meta, ingress and queue stay 0, data_out stays NULL: nothing is copied back).
It also zeroes opts.data_size_out, which libbpf sets to the last frame's size after each run:
left there, the kernel would refuse a longer frame next (ENOSPC)."""
_PER_FRAME_OFFSET = libbpf.XdpMd.data_end.offset
assert _CTX_SIZE + _OPTS.data_in.offset == _PER_FRAME_OFFSET + 4 + 16 + 8
assert _CTX_SIZE + _OPTS.data_size_in.offset == _PER_FRAME_OFFSET + 4 + 16 + 8 + 8 + 8


class ReplayRunner:
    """Feeds frames to a FlowProgram compiled with REPLAY_CFLAGS.

    ``feed(addr, length)`` runs the frame of ``length`` bytes at address ``addr``; the
    abi.REPLAY_META_SIZE bytes in front of it must already hold its struct replay_meta
    (flowscope.collect.capture writes them there). Frames shorter than MIN_FRAME must not be fed.
    The replay loop inlines feed's two statements through ``per_frame()``."""

    def __init__(self, program: FlowProgram | BareProgram) -> None:
        self.program = program
        meta = abi.REPLAY_META_SIZE
        self._control = ctypes.create_string_buffer(_CTX_SIZE + ctypes.sizeof(_OPTS))
        ctx = libbpf.XdpMd.from_buffer(self._control)
        ctx.data = meta
        opts = _OPTS.from_buffer(self._control, _CTX_SIZE)
        opts.sz = ctypes.sizeof(_OPTS)
        opts.ctx_in = ctypes.addressof(ctx)
        opts.ctx_size_in = _CTX_SIZE
        opts.repeat = 1
        self._opts_ref = ctypes.byref(opts)
        self._opts_size = ctypes.sizeof(_OPTS)
        fn = libbpf._libbpf().bpf_prog_test_run_opts
        self._fn = fn

    def per_frame(self) -> tuple[Callable[..., None], Callable[..., int], int, object, int]:
        """(pack, call, prog_fd, opts, opts size): a frame runs as
        ``pack(control, 4, META + n, opts_size, addr - META, META + n)`` then
        ``call(prog_fd, opts)``, which returns a negative errno on failure (``check``)."""
        pack = _PER_FRAME.pack_into
        return pack, self._fn, self.program.prog_fd, self._opts_ref, self._opts_size

    @property
    def control(self) -> ctypes.Array[ctypes.c_char]:
        """The buffer ``pack`` writes into."""
        return self._control

    def feed(self, addr: int, length: int) -> None:
        """Run one frame (the metadata in front of ``addr`` already written)."""
        n = abi.REPLAY_META_SIZE + min(length, MAX_FRAME)
        _PER_FRAME.pack_into(
            self._control, _PER_FRAME_OFFSET, n, self._opts_size, addr - abi.REPLAY_META_SIZE, n
        )
        check(self._fn(self.program.prog_fd, self._opts_ref))


def check(ret: int) -> None:
    """Raise the FlowscopeError of a failed BPF_PROG_TEST_RUN."""
    if ret < 0:
        raise libbpf._raise("BPF_PROG_TEST_RUN", libbpf._errno(ret))


def compile_replay_program(
    *, flow_entries: int = abi.DEFAULT_FLOW_ENTRIES, ringbuf_pages: int = 2048
) -> FlowProgram:
    """The replay build. Its ring buffer is larger than live (8 MiB) because a replay can
    announce a whole capture-second's new flows between two drains."""
    return FlowProgram(flow_entries=flow_entries, ringbuf_pages=ringbuf_pages, cflags=REPLAY_CFLAGS)
