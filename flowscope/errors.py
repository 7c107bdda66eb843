"""The one error hierarchy of flowscope.

Library exceptions (bcc's bare ``Exception``, pyroute2's ``NetlinkError``, ``OSError`` from
libbpf calls, sqlite3 errors) are caught where they enter and re-raised as one of these with
``from e``; the CLI turns them into a one-line message and an exit code, the UI into a
notification. No traceback reaches a user.
"""

from __future__ import annotations


class FlowscopeError(Exception):
    """Something the user can act on: a message, and a hint that says how."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.errno = errno

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class PrivilegeError(FlowscopeError):
    """Not root, or missing CAP_BPF / CAP_NET_ADMIN / CAP_PERFMON."""

    exit_code = 77


class InterfaceError(FlowscopeError):
    """An interface that does not exist or cannot take the program."""

    exit_code = 2


class UsageError(FlowscopeError):
    """A flag, filter or file the user gave is not usable."""

    exit_code = 2


class KernelHeadersError(FlowscopeError):
    """BCC cannot find kernel headers to compile against."""


class CompileError(FlowscopeError):
    """BCC failed to compile or the verifier refused the program."""


class AttachError(FlowscopeError):
    """The kernel refused to attach, or another XDP program is already there."""


class UnsupportedKernelError(FlowscopeError):
    """The kernel lacks a feature flowscope needs (BPF ring buffer, bpf_link for XDP)."""


class BpfError(FlowscopeError):
    """A bpf() call failed in a way that has no better name."""


class BenchError(FlowscopeError):
    """A benchmark's frame did not take the path it is meant to measure."""
