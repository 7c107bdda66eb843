"""The composition root: what a collecting command (`record`, `live`, `demo`, `replay`) asks
for, built and wired in one place, and closed in one order.

    kernel (Probe) -> collector -> sink: history writer + IPFIX exporter
                                -> tick hook: Prometheus metrics, the caller's status line

A command describes what it wants in a ``PipelineSettings``; ``Pipeline`` makes the writer and
the exports from it (a port in use or an unwritable database fails here, before anything is
attached), runs the collection loop, and on the way out closes the exports, then the writer,
and removes a database that a failed start created but never used. Defaults that several
commands share (the database path, the status line) are computed here and nowhere else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowscope.collect.collector import Tick
from flowscope.collect.drops import main_reason
from flowscope.collect.flood import overflow_top, target_text
from flowscope.collect.recorder import NullSink, RecordSettings, RecordSummary, Sink
from flowscope.collect.replay import ReplaySettings, ReplaySummary
from flowscope.errors import FlowscopeError
from flowscope.export.outputs import Exports, ExportSettings
from flowscope.history.files import remove_if_unused, state_dir
from flowscope.history.writer import Writer, WriterState
from flowscope.kernel.btf import known_drop_reasons
from flowscope.kernel.owners import running_command
from flowscope.model import Owner
from flowscope.vocab import human_rate, size_text

if TYPE_CHECKING:
    from flowscope.kernel.program import ProgramBuild

Notice = Callable[[str], None]


def default_db_path() -> Path:
    """Where history is kept unless --db (or its $FLOWSCOPE_DB) says otherwise: ``flows.db``
    in the state directory ($XDG_STATE_HOME/flowscope, else ~/.local/state/flowscope)."""
    return state_dir() / "flows.db"


def demo_db_path() -> Path:
    """demo.db next to the default history database, so the demo never mixes its made-up
    flows into the real history."""
    return default_db_path().with_name("demo.db")


def db_path(db: Path | None) -> Path:
    """The database a command reads or writes: ``db`` if given, else the default."""
    return db if db is not None else default_db_path()


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """Where and how much history a collecting command keeps."""

    db: Path | None = None
    """The database; None: default_db_path()."""
    retain_seconds: float | None = None
    """Prune records older than this (--retain); None: keep all."""
    max_bytes: int | None = None
    """Prune the oldest records when the database grows past this (--max-db-size)."""

    @property
    def path(self) -> Path:
        return db_path(self.db)


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """Everything a collecting command asked for."""

    source: RecordSettings | ReplaySettings
    """Where flows come from: interfaces to attach to (record, live, demo), or a capture
    run through the program (replay)."""
    history: HistorySettings | None = field(default_factory=HistorySettings)
    """Where to keep history; None: keep none (live --no-db, replay --json)."""
    exports: ExportSettings = field(default_factory=ExportSettings)
    """IPFIX and Prometheus (--ipfix, --metrics)."""


class Pipeline:
    """The writer and the exports of one run, wired to the collection loop.

    Use as a context manager: leaving it closes the exports (their server and socket) and,
    when the run failed with a FlowscopeError, removes a database it created and never used.
    The writer itself is closed by the collection loop when it closes its sink."""

    def __init__(
        self,
        settings: PipelineSettings,
        *,
        notice: Notice | None = None,
        fallback: Sink | None = None,
        max_queue: int | None = None,
    ) -> None:
        """``notice`` hears when the export starts or stops failing; ``fallback`` takes the
        records when no history is kept (replay's JSON lines); ``max_queue`` lets a replay,
        which waits for its exporter, queue more."""
        self.settings = settings
        self.writer: Writer | None = None
        self._prepared: ProgramBuild | None = None
        history = settings.history
        if history is not None:
            self.writer = Writer(
                history.path, retain_seconds=history.retain_seconds, max_bytes=history.max_bytes
            )
        try:
            self.exports = Exports(
                settings.exports,
                flow_entries=settings.source.flow_entries,
                writer=self.writer,
                notice=notice,
                max_queue=max_queue,
            )
        except BaseException:
            if self.writer is not None:
                self.writer.close()
            raise
        self.sink: Sink = self.exports.sink(self.writer or fallback or NullSink())
        """Where each tick's records go: the writer (or ``fallback``) and the IPFIX exporter."""

    @property
    def db_path(self) -> Path | None:
        """The history database, None when no history is kept."""
        return self.writer.store.path if self.writer is not None else None

    @property
    def recovered(self) -> int:
        """Records of a killed run that this start wrote with end reason 'crash'."""
        return self.writer.recovered if self.writer is not None else 0

    def tick_hook(
        self, other: Callable[[Tick], None] | None = None
    ) -> Callable[[Tick], None] | None:
        """The hook each tick calls: metrics, export trouble notices, then ``other``."""
        return self.exports.on_tick(other)

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        on_tick: Callable[[Tick], None] | None = None,
        on_notice: Notice | None = None,
        on_attached: Callable[[], None] | None = None,
    ) -> RecordSummary:
        """Collect until the duration ends or ``stop`` is set (in the calling thread).
        ``on_attached``: the programs are attached; the first tick follows within a quarter
        of a second (recorder.FIRST_TICK)."""
        from flowscope.collect import recorder

        assert isinstance(self.settings.source, RecordSettings), "a capture is replay()ed"
        prepared, self._prepared = self._prepared, None
        return recorder.run(
            self.settings.source,
            self.sink,
            on_tick=self.tick_hook(on_tick),
            stop=stop,
            on_notice=on_notice,
            on_block=self.writer.note_block if self.writer is not None else None,
            on_attached=on_attached,
            prepared=prepared,
        )

    def prepare(self, build: ProgramBuild | None = None) -> None:
        """Start compiling the programs now, in a thread, so that the seconds BCC takes
        overlap with what comes before run() (the console's imports and first draw); or take
        ``build``, the compile recorder.prepare started for these settings even earlier."""
        from flowscope.collect import recorder

        assert isinstance(self.settings.source, RecordSettings), "a capture is replay()ed"
        if self._prepared is None:
            self._prepared = build if build is not None else recorder.prepare(self.settings.source)

    def replay(self, progress: Callable[[int, int], None] | None = None) -> ReplaySummary:
        """Run the capture through the program into the sink, waiting for the writer and the
        exporter whenever they fall behind (a replay is faster than they are)."""
        from flowscope.collect.replay import replay

        assert isinstance(self.settings.source, ReplaySettings), "interfaces are run()"
        try:
            return replay(
                self.settings.source,
                self.sink,
                progress=progress,
                backlog=self.backlog,
                on_tick=self.tick_hook(),
            )
        finally:
            self.sink.close()

    @staticmethod
    def command_line(owner: Owner) -> str | None:
        """A flow's process's full command line while it runs, for the console's detail view
        (read from /proc only when asked)."""
        return running_command(owner)

    @staticmethod
    def drop_reasons() -> Collection[str] | None:
        """The drop reason names the console's filters may use: the running kernel's."""
        return known_drop_reasons()

    def control(self) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """The console's way to the control socket of this run (--allow-block), else None."""
        source = self.settings.source
        if not isinstance(source, RecordSettings) or not source.allow_block:
            return None
        from flowscope.collect.control import control_path, request

        path = control_path()
        return lambda message: request(path, message)

    def writer_state(self) -> WriterState | None:
        """What the writer reports now (None without history)."""
        return self.writer.state() if self.writer is not None else None

    def backlog(self) -> int:
        """Records waiting in the writer and the exporter."""
        return (self.writer.backlog if self.writer is not None else 0) + self.exports.backlog()

    def status_line(self, tick: Tick) -> str:
        """The one-line status of a headless run (`record` on a terminal, `demo --headless`):
        rates are the kernel's totals; MAP FULL when packets found no room for their flow."""
        s = tick.sample
        line = f"{human_rate(s.bps)}  {s.pps:.0f} pkt/s  {s.active_flows} flows"
        if s.map_bytes:  # the fuller flow map, and the kernel memory the two lock
            line += f" (map {s.map_fill:.0%} of {size_text(s.map_bytes)})"
        line += f"  {s.new_flows} new"
        w = self.writer
        if w is not None:
            line += f"  {w.written} written"
        unattributed = s.counters.get("map_full", 0)
        if unattributed:  # the totals above include them; no flow record will
            line += f"  MAP FULL {unattributed / s.interval:.0f} pkt/s"
            if s.flood.rows:  # who fills it
                first = overflow_top(s.flood)
                line += f" (top {first.prefix} {target_text(first)})"
        if s.counters.get("sockets_lost", 0):  # their flows will have no process
            line += f"  {s.counters['sockets_lost']} SOCKETS LOST"
        if tick.drops:  # what the kernel dropped, and why mostly
            top = main_reason(tick.drops)
            line += f"  drops {sum(tick.drops.values()) / s.interval:.0f}/s {top}"
        if w is not None:
            if w.backlog:
                line += f"  {w.backlog} waiting"
            if w.dropped:
                line += f"  {w.dropped} DROPPED"
            if w.status:
                line += f"  [{w.status}]"
        line += self.exports.status()
        for name, link in tick.links.items():  # as long as it lasts, not only when it changes
            if link != "up":
                line += f"  {name} {link.upper()}"
        return line

    def problems(self) -> tuple[str | None, str | None]:
        """After the run: (a warning about records the IPFIX collector did not get, an error
        about records history did not get), each None when there is none."""
        return self.exports.report(), self.writer.report() if self.writer is not None else None

    def close(self) -> None:
        prepared, self._prepared = self._prepared, None
        if prepared is not None:  # compiled for a run that never came
            prepared.close()
        self.exports.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.close()
        if exc_type is not None and issubclass(exc_type, FlowscopeError):
            self.discard_unused()

    def discard_unused(self) -> None:
        """After a run that failed (an attach the kernel refused, a compile error): the
        database it created goes again when nothing reached it."""
        w = self.writer
        if w is not None and w.store.created:
            w.close()
            remove_if_unused(w.store.path)


def attached(names: Sequence[str]) -> tuple[tuple[tuple[str, str], ...], dict[int, str]]:
    """(name, how it is watched) of each interface as the kernel reports it now ("native",
    "generic, egress", "?" when it is gone), and the interface indexes by name."""
    from flowscope.kernel.attach import interface_info
    from flowscope.kernel.egress import egress_attached

    modes: list[tuple[str, str]] = []
    indexes: dict[int, str] = {}
    for name in dict.fromkeys(names):
        try:
            info = interface_info(name)
        except FlowscopeError:
            modes.append((name, "?"))
            continue
        how = [info.xdp_mode] if info.xdp_mode else []
        if egress_attached(info.index):
            how.append("egress")  # the status line shows what is watched: "eth0 (native, egress)"
        modes.append((name, ", ".join(how) or "?"))
        indexes[info.index] = name
    return tuple(modes), indexes
