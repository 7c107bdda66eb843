"""The terminal the console draws on, kept apart from file descriptor 2.

Textual's Linux driver writes the screen to ``sys.__stderr__``, descriptor 2. BCC prints its
compiler's messages to descriptor 2 as well, so kernel.program points it at a file for the
seconds a compile takes, to quote them if the compile fails. A console drawn meanwhile -- it
starts before the compile ends, which is the point -- went into that file: the first screen
showed only once the compile was over, and what a key did meanwhile was never shown. The
console writes to its own duplicate of the terminal's descriptor instead, taken before
anything compiles. Importing this module does not import Textual.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from textual.driver import Driver


def keep_terminal() -> io.TextIOWrapper:
    """A file on a duplicate of descriptor 2 as it is now (the terminal), for the console;
    its caller closes it once the console has ended. Call before anything compiles."""
    return os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace")


def driver_for(terminal: io.TextIOWrapper) -> type[Driver]:
    """Textual's Linux driver, writing the screen to ``terminal`` rather than to whatever
    descriptor 2 is at the moment."""
    from textual.drivers.linux_driver import LinuxDriver

    class TerminalDriver(LinuxDriver):
        def __init__(self, app: Any, **kwargs: Any) -> None:
            super().__init__(app, **kwargs)
            self._file = terminal

    return TerminalDriver
