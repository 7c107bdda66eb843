"""`flowscope live` stopped by a signal in a real terminal: it exits by itself, prints no
traceback, and leaves no XDP program on the interface (the collection thread is stopped and
the program detached, not merely abandoned to the kernel's clean-up at process exit)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import PYTHON, VethNamespace, veth_namespace, xdp_prog_id

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (make setup)")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def net() -> Iterator[VethNamespace]:
    with veth_namespace() as n:
        yield n


def wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(what)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_live_stopped_by_signal_exits_cleanly_and_detaches(
    net: VethNamespace, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM (kill, systemd) and SIGHUP (the SSH session dropped) end the console."""
    session = f"fssig{uuid.uuid4().hex[:8]}"
    pidfile = tmp_path / "pid"
    status = tmp_path / "status"
    # the shell records the console's pid and its exit status for the test; what it prints
    # on leaving stays on the pane (Textual draws on stderr, so that cannot go to a file)
    cmd = (
        f"sh -c 'echo $$ > {pidfile}; exec {PYTHON} -m flowscope live -i {net.host_if} "
        f"--no-db'; echo $? > {status}; sleep 30"
    )
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "32", cmd)
    try:
        wait(lambda: xdp_prog_id(net.host_if) != 0, 40, "flowscope live did not attach")
        wait(
            lambda: f"{net.host_if} (generic" in tmux("capture-pane", "-p", "-t", session),
            20,
            "no console on screen",
        )
        os.kill(int(pidfile.read_text()), sig)
        wait(status.exists, 20, f"flowscope live did not exit on {sig.name}")
        assert xdp_prog_id(net.host_if) == 0
        assert "Traceback" not in tmux("capture-pane", "-p", "-S", "-200", "-t", session)
        assert int(status.read_text()) in (0, 128 + sig)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
