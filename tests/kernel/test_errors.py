"""Failures of the kernel side reach the user as one clear line, never a traceback."""

from __future__ import annotations

import os
import subprocess

import pytest

from flowscope.errors import CompileError, KernelHeadersError
from flowscope.kernel.program import FlowProgram
from tests.netns import PYTHON, veth_namespace


def test_missing_kernel_headers_name_the_fix() -> None:
    """BCC pointed at a header directory that does not exist (BCC_KERNEL_SOURCE) fails the
    way a kernel without headers does: the message says so and gives the fix."""
    with veth_namespace() as net:
        env = os.environ | {"BCC_KERNEL_SOURCE": "/nonexistent/flowscope-test"}
        proc = subprocess.run(
            [PYTHON, "-m", "flowscope", "dump", "-i", net.host_if, "--duration", "1"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "no kernel headers" in lines[0] and "make setup" in lines[0]


def test_missing_kernel_headers_error_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "/nonexistent/flowscope-test")
    with pytest.raises(KernelHeadersError):
        FlowProgram(flow_entries=16)


def test_compile_failure_quotes_the_compiler() -> None:
    """A broken build (here: a tunable that is not a number) is reported with clang's own
    error line, not BCC's bare 'Failed to compile'."""
    with pytest.raises(CompileError) as info:
        FlowProgram(flow_entries=16, cflags=("-DRINGBUF_PAGES=not_a_number",))
    assert "error:" in info.value.message
    assert "not_a_number" in info.value.message
