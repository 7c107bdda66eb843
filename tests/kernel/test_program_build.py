"""kernel.program.ProgramBuild, the compile a command starts on a thread before it needs the
program: it hands over a working program, raises the build's error where the program is asked
for, frees a program nobody took, and several at once do not crash (two BCC compiles at once
crashed LLVM with SIGSEGV before compiles were serialised)."""

from __future__ import annotations

import os

import pytest

from flowscope.errors import CompileError
from flowscope.kernel.program import ProgramBuild
from flowscope.packets import ipv4_tcp_frame

FRAME = ipv4_tcp_frame("198.18.0.2", "198.18.0.1", 40000, 443)


def test_builds_at_once_each_give_a_program_that_counts() -> None:
    builds = [ProgramBuild(flow_entries=64) for _ in range(3)]
    programs = [b.result() for b in builds]
    try:
        for p in programs:
            p.test_run(FRAME)
            (batch,) = [b for b in p.read_all_flows() if len(b)]
            assert int(batch.packets[0]) == 1
    finally:
        for p in programs:
            p.close()
    for b in builds:
        b.close()  # taken: the owner closed it, close() does not again


def test_a_program_nobody_took_is_freed_and_an_error_comes_where_it_is_asked_for() -> None:
    build = ProgramBuild(flow_entries=64)
    build._thread.join()
    fd = build._program.prog_fd if build._program is not None else -1
    os.fstat(fd)  # open while the build holds it
    build.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    failed = ProgramBuild(flow_entries=0)
    with pytest.raises(CompileError, match="--flow-entries must be at least 1"):
        failed.result()
    failed.close()
