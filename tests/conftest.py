"""Shared test set-up: kernel tests skip only where the machine truly cannot run them, and on CI
(CI=true) any skip fails the run, so a broken setup cannot pass as green."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

KERNEL_DIR = Path(__file__).parent / "kernel"


@cache
def bpf_unavailable() -> str | None:
    """Why this machine cannot run kernel tests, or None when it can."""
    from flowscope.kernel.privileges import missing_capabilities

    missing = missing_capabilities()
    if missing:
        return f"needs root or {', '.join(missing)}"
    if not Path("/sys/fs/bpf").exists() and not Path("/proc/sys/kernel/bpf_stats_enabled").exists():
        return "this kernel has no BPF"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc's Python bindings (Debian's python3-bpfcc) are not importable"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if KERNEL_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.kernel)
            reason = bpf_unavailable()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


_skipped: list[str] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    """Before any test: remove what an earlier run that crashed left behind (its veth pairs
    and namespaces), so a segfault once does not leave the machine worse for good."""
    if bpf_unavailable() is None:
        from tests.netns import remove_orphans

        for name in remove_orphans():
            print(f"removed namespace {name} of a test run that is gone")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") == "true" and _skipped:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(
                f"CI=true: {len(_skipped)} test(s) skipped, and on CI nothing may skip "
                f"(first: {_skipped[0]})",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def program_factory() -> Iterator[object]:
    """Compile FlowPrograms, closing them at the end of the session."""
    from flowscope.kernel.program import FlowProgram

    made: list[FlowProgram] = []

    def make(**kwargs: object) -> FlowProgram:
        p = FlowProgram(**kwargs)  # type: ignore[arg-type]
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()
