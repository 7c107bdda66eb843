"""The console draws on its own copy of the terminal (ui.terminal), so the seconds in which
BCC's messages are captured (kernel.program.captured_stderr points descriptor 2 at a file)
cannot swallow the screen. A Textual app runs in a real pty inside that capture: with
Textual's own driver its screen lands in the compiler's log, with ui.terminal's on the pty."""

from __future__ import annotations

import os
import pty
import select
import sys
import time

import pytest

CHILD = """
import sys
from textual.app import App
from textual.widgets import Static
from flowscope.kernel.program import captured_stderr
from flowscope.ui.terminal import driver_for, keep_terminal

class Hello(App[None]):
    def compose(self):
        yield Static("HELLO-CONSOLE")

    def on_mount(self):
        self.set_timer(0.3, self.exit)

terminal = keep_terminal()
with captured_stderr() as log:
    driver = driver_for(terminal) if sys.argv[1] == "own" else None
    Hello(driver_class=driver).run()
    swallowed = "HELLO-CONSOLE" in log()
print("SWALLOWED" if swallowed else "CLEAN", flush=True)
"""


def run_in_pty(how: str) -> str:
    """The child's whole output on the pty (80x24), as text."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm-256color"
        os.execv(sys.executable, [sys.executable, "-c", CHILD, how])
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 1 << 16)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
    finally:
        os.waitpid(pid, 0)
        os.close(fd)
    return seen.decode(errors="replace")


@pytest.mark.parametrize(("how", "on_screen", "verdict"),
                         [("own", True, "CLEAN"), ("textual", False, "SWALLOWED")])  # fmt: skip
def test_the_console_reaches_the_terminal_while_the_compiler_log_is_captured(
    how: str, on_screen: bool, verdict: str
) -> None:
    out = run_in_pty(how)
    assert ("HELLO-CONSOLE" in out) is on_screen, out[-500:]
    assert verdict in out, out[-500:]
