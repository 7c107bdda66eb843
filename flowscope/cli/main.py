"""The `flowscope` group: the only place that turns errors into exit codes and messages.

Every FlowscopeError becomes one line on stderr and its exit code; SIGTERM becomes SystemExit
so that ``with`` blocks detach the program on the way out, as Ctrl-C does.
"""

from __future__ import annotations

import math
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

import click

from flowscope.errors import FlowscopeError
from flowscope.vocab import printable

if TYPE_CHECKING:
    from flowscope.pipeline import Pipeline

EXIT_INTERRUPTED = 130

if TYPE_CHECKING:  # click's ParamType is generic from 8.2; pyproject allows 8.1
    _FloatParam = click.ParamType[float]
    _StrParam = click.ParamType[str]
else:
    _FloatParam = _StrParam = click.ParamType


class _Group(click.Group):
    """Translates FlowscopeError (and Ctrl-C) raised by any command into a one-line error."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlowscopeError as e:
            click.echo(f"flowscope: error: {printable(str(e))}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            ctx.exit(EXIT_INTERRUPTED)
        except click.UsageError as e:
            # click prints Usage/Try/Error on three lines; an operator's script wants one
            where = f" ({e.ctx.command_path} --help)" if e.ctx is not None else ""
            click.echo(f"flowscope: error: {printable(e.format_message())}{where}", err=True)
            ctx.exit(e.exit_code)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:  # a bug: one line for the user, the traceback in a file
            log = _write_crash_log()
            click.echo(
                f"flowscope: internal error: {type(e).__name__}: {printable(str(e))} "
                f"(traceback in {log})",
                err=True,
            )
            ctx.exit(1)


def _write_crash_log() -> str:
    """Write the exception being handled to a new file (the state directory, else /tmp) and
    return its path."""
    import os
    import tempfile
    import traceback

    from flowscope.history.files import state_dir

    text = f"flowscope {' '.join(sys.argv[1:])!r}\n{traceback.format_exc()}"
    for directory in (state_dir(), Path(tempfile.gettempdir())):
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, path = tempfile.mkstemp(prefix="flowscope-crash-", suffix=".log", dir=directory)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return "(nowhere: no directory could be written)"


class Seconds(_FloatParam):
    """A number of seconds: finite (nan and inf are refused: a tick every nan seconds is a busy
    loop, a duration of inf never ends), above ``low`` (or at it, unless ``low_open``) and at
    most ``high``. A bad value is click's usage error: one line naming the option, exit 2."""

    name = "seconds"

    def __init__(
        self, low: float = 0.0, high: float = 10 * 365 * 86400.0, *, low_open: bool = True
    ):
        self.low, self.high, self.low_open = low, high, low_open

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            seconds = value
        else:
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        low_ok = seconds > self.low if self.low_open else seconds >= self.low
        if not math.isfinite(seconds) or not low_ok or seconds > self.high:
            above = "above" if self.low_open else "at least"
            self.fail(
                f"{value!r} is not {above} {self.low:.10g} and at most {self.high:.10g} seconds",
                param,
                ctx,
            )
        return seconds


class InterfaceName(_StrParam):
    """A network interface name as the kernel takes it: 1 to 15 bytes of UTF-8, no slash,
    no white space (a name that is not UTF-8 cannot be one of the machine's)."""

    name = "iface"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(f"{text.encode('utf-8', 'surrogateescape')!r} is not UTF-8", param, ctx)
        if not 1 <= len(raw) <= 15 or "/" in text or any(c.isspace() for c in text):
            self.fail(
                f"{text!r} is not an interface name (1-15 bytes, no '/' or spaces)", param, ctx
            )
        return text


MAX_ROWS = 1_000_000_000
"""The largest --top: more than any history holds, and a number SQLite takes."""


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that ``with`` blocks detach on the way out."""


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated(128 + signum)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flowscope")
def main() -> None:
    """flowscope: who is talking to this server, live and in history.

    An XDP program counts every packet the interfaces receive, per flow; flowscope reads
    the counts, shows them, and keeps them in SQLite."""
    signal.signal(signal.SIGTERM, _sigterm)


# --- what a collecting run says on stderr ---------------------------------------------------


def say_problems(pipeline: Pipeline) -> str | None:
    """After a run: one warning when records did not reach the IPFIX collector; returns what
    history lacks (an error for the caller to raise), or None."""
    export_problem, history_problem = pipeline.problems()
    if export_problem is not None:
        click.echo(f"flowscope: warning: {printable(export_problem)}", err=True)
    return history_problem


def notice(text: str) -> None:
    """A notice during a run (stderr, one line)."""
    click.echo(f"flowscope: {printable(text)}", err=True)


def say_recovered(pipeline: Pipeline, terminal: TextIO | None = None) -> None:
    """One line when the history database held what a killed run had not written: on
    ``terminal`` (a copy of the terminal made before a compile took descriptor 2), else on
    stderr."""
    if pipeline.recovered:
        click.echo(
            f"flowscope: history: {pipeline.recovered} flow records of a run that ended without "
            "shutting down were written with end reason 'crash'",
            file=terminal,
            err=terminal is None,
        )
