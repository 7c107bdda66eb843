"""`flowscope demo`: flowscope on traffic it makes itself, in one command.

It cleans up what an earlier demo killed by SIGKILL left behind, makes a namespace and a veth
pair (flowscope.demo.net), starts listeners on the host end and a traffic generator inside the
namespace (flowscope.demo.traffic), attaches to the host end in generic mode and either opens
the console or, headless, records into a history database like `flowscope record`. However it
ends (the duration, q, Ctrl-C, SIGTERM, the generator crashing, an error), everything it made
is removed on the way out; SIGKILL is covered by the next run and by the children dying with
their parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from flowscope.demo import net as demo_net
from flowscope.demo.net import DemoError, DemoNet
from flowscope.errors import PrivilegeError

if TYPE_CHECKING:
    from flowscope.collect.collector import Tick
    from flowscope.collect.recorder import RecordSettings
    from flowscope.export.outputs import ExportSettings
    from flowscope.pipeline import Pipeline

LISTENER_TIMEOUT = 10.0
STOP_GRACE = 2.0


@dataclass(slots=True)
class _Child:
    """A process the demo started, and the file its stderr goes to."""

    name: str
    proc: subprocess.Popen[bytes]
    log: IO[bytes]

    def last_error(self) -> str:
        self.log.seek(0)
        lines = [ln for ln in self.log.read().decode(errors="replace").splitlines() if ln]
        return lines[-1] if lines else ""


@dataclass(slots=True)
class DemoRun:
    """A running demo: its network and processes. Use as a context manager: leaving it
    removes everything."""

    net: DemoNet
    children: list[_Child] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None
    """Why the demo stopped by itself (a child process exited), None otherwise."""
    on_failure: Callable[[], None] | None = None
    """Called (from the watching thread) after a child exited on its own; ``stop`` is set
    anyway, which ends a headless recording."""
    _stopping: bool = False

    def _spawn(self, name: str, argv: list[str], stdout: int | None = None) -> _Child:
        log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=stdout or subprocess.DEVNULL, stderr=log
        )
        child = _Child(name, proc, log)
        self.children.append(child)
        self.net.started(proc.pid)
        self.net.save()
        return child

    def start_traffic(self) -> dict[str, int]:
        """Listeners on the host end, then the generator in the namespace; returns the ports."""
        net, owner = self.net, str(os.getpid())
        module = [sys.executable, "-m", demo_net.TRAFFIC_MODULE]
        listener = self._spawn(
            "listeners",
            [*module, "serve", "--owner", owner, "--ip4", net.host_ip4, "--ip6", net.host_ip6],
            stdout=subprocess.PIPE,
        )
        ports = _read_ports(listener)
        self._spawn(
            "traffic generator",
            net.command(
                *module, "generate", "--owner", owner, "--ip4", net.host_ip4,
                "--ip6", net.host_ip6, "--src4", net.peer_ip4, "--src6", net.peer_ip6,
                "--iface", net.peer_if, "--host-mac", net.host_mac, "--peer-mac", net.peer_mac,
                "--ports", json.dumps(ports),
            ),
        )  # fmt: skip
        threading.Thread(target=self._watch, name="demo-watch", daemon=True).start()
        return ports

    def _watch(self) -> None:
        """Stop the demo when a child exits on its own (a crash of the generator)."""
        while not self.stop.is_set():
            for child in self.children:
                code = child.proc.poll()
                if code is not None and not self._stopping:
                    detail = child.last_error()
                    self.failure = f"the {child.name} exited with status {code}" + (
                        f" ({detail})" if detail else ""
                    )
                    self.stop.set()
                    if self.on_failure is not None:
                        self.on_failure()
                    return
            self.stop.wait(0.2)

    def close(self) -> None:
        """Stop the children (SIGTERM, then SIGKILL), delete the namespace and veth pair."""
        self._stopping = True
        self.stop.set()
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                child.proc.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for child in self.children:
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            if child.proc.stdout is not None:
                child.proc.stdout.close()
            child.log.close()
        demo_net.remove(self.net)
        demo_net.wait_gone(self.net)

    def __enter__(self) -> DemoRun:
        return self

    def __exit__(self, *exc: object) -> None:
        with _signals_deferred():
            self.close()


def _read_ports(listener: _Child) -> dict[str, int]:
    """The JSON line the listeners print once they are bound."""
    out = listener.proc.stdout
    assert out is not None
    ready, _, _ = select.select([out], [], [], LISTENER_TIMEOUT)
    line = out.readline() if ready else b""
    if not line:
        listener.proc.poll()
        raise DemoError(f"the demo's listeners did not start: {listener.last_error() or 'timeout'}")
    return {str(k): int(v) for k, v in json.loads(line).items()}


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while cleaning up, so a second Ctrl-C cannot leave half a
    demo behind; they are delivered (raised) afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in saved:
        signal.signal(s, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])


@contextlib.contextmanager
def demo_network(note: Callable[[str], None]) -> Iterator[DemoRun]:
    """Clean up leftovers, make the network and start the traffic; remove it all on exit."""
    from flowscope.kernel.privileges import missing_capabilities

    missing = missing_capabilities()
    if missing:
        raise PrivilegeError(
            f"the demo needs {', '.join(missing)} (it makes a namespace and attaches XDP)",
            "run it as root",
        )
    removed = demo_net.cleanup_leftovers()
    if removed:
        note(f"removed what an earlier demo left behind: {', '.join(removed)}")
    with _signals_deferred():
        net = demo_net.create()
    with DemoRun(net) as run:
        run.start_traffic()
        yield run


def settings_for(net: DemoNet, duration: float | None, direction: str = "both") -> RecordSettings:
    """What the demo records: the host end of its pair, generic XDP (veth: see attach.py), and
    by default what the host sends back too (TC egress)."""
    from flowscope.collect.recorder import RecordSettings

    return RecordSettings(
        interfaces=(net.host_if,), mode="generic", duration=duration, direction=direction
    )


@dataclass(slots=True)
class DemoSummary:
    """What a demo did, for the last line."""

    db: Path
    records: int
    interface: str


def run(
    *,
    headless: bool,
    duration: float | None,
    db: Path | None,
    note: Callable[[str], None],
    status: Callable[[str], None] | None = None,
    exports: ExportSettings | None = None,
    direction: str = "both",
) -> DemoSummary:
    """Run the demo until the duration ends, the console quits, or a signal; raise DemoError
    when the traffic generator or the listeners died, after cleaning up. ``exports`` (--ipfix,
    --metrics) are wired as for `record`."""
    from flowscope.export.outputs import ExportSettings as Settings
    from flowscope.pipeline import HistorySettings, Pipeline, PipelineSettings, demo_db_path

    db_path = db or demo_db_path()
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C always stops the demo, even when started where SIGINT was ignored (a
        # background job of a script): leaving the demo running would leave its network too.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with demo_network(note) as demo:
        settings = PipelineSettings(
            settings_for(demo.net, duration, direction),
            HistorySettings(db=db_path),
            exports or Settings(),
        )
        with Pipeline(settings, notice=note if headless else None) as pipeline:
            note(
                f"demo: {demo.net.host_if} ({demo.net.host_ip4}, {demo.net.host_ip6}) <-> "
                f"namespace {demo.net.ns}; recording into {db_path}"
            )
            if pipeline.recovered:
                note(
                    f"history: {pipeline.recovered} flow records of a run that ended without "
                    "shutting down were written with end reason 'crash'"
                )
            records = _collect(demo, pipeline, headless, status, note)
            pipeline.close()
            export_problem, problem = pipeline.problems()
        if export_problem is not None:
            note(f"warning: {export_problem}")
        if problem is not None:
            raise DemoError(problem)
        if demo.failure:
            raise DemoError(demo.failure + "; the demo stopped and removed everything it made")
    return DemoSummary(db=db_path, records=records, interface=demo.net.host_if)


def _collect(
    demo: DemoRun,
    pipeline: Pipeline,
    headless: bool,
    status: Callable[[str], None] | None,
    note: Callable[[str], None] | None = None,
) -> int:
    """Record in the console or headless until the demo ends (its traffic died: the console
    closes); returns the records written."""
    if not headless:
        from flowscope.ui.app import run_console  # --headless never loads Textual

        title = f"flowscope demo ({demo.net.host_if})"
        run_console(pipeline, title=title, stop=demo.stop)
        return pipeline.writer.written if pipeline.writer is not None else 0

    def on_tick(tick: Tick) -> None:
        if status is not None:
            status(pipeline.status_line(tick))

    return pipeline.run(on_tick=on_tick, stop=demo.stop, on_notice=note).records
