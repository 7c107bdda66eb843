"""The collection loop shared by `record`, `live` and `demo`: probe, collector, writer.

Between ticks it keeps draining the ring buffer, so a burst of new flows (a scan, a SYN flood)
does not overflow it while the loop sleeps. Leaving the loop for any reason (the duration ran
out, the caller's stop event, Ctrl-C or SIGTERM, which set that event while the loop runs on
the main thread) writes every live flow with end reason 'shutdown', flushes the writer, and
detaches the program.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from flowscope import abi
from flowscope.collect.collector import Collector, CollectorSettings, Tick
from flowscope.collect.owners import ProcessWatch, watch_processes
from flowscope.model import FlowRecord, NewFlow, PendingFlows, Sample

if TYPE_CHECKING:
    from flowscope.collect.block import BlockNote, BlockService
    from flowscope.kernel.links import LinkWatch
    from flowscope.kernel.program import ProgramBuild
    from flowscope.kernel.session import Probe

POLL_MS = 100
FIRST_TICK = 0.25
"""Seconds from attaching to the first tick (at most the interval): the first flows show a
quarter of a second after the programs are attached, not a whole interval later; that tick's
rates are over the quarter second it covers."""


class Sink(Protocol):
    """Where ticks go: the SQLite writer, or nothing (--no-db).

    ``pending`` is what the live flows hold that no record holds yet (None: unchanged; an
    empty list: nothing, as after shutdown). ``check()`` raises, as a FlowscopeError, what
    went wrong for good in the sink's own thread, so the loop stops instead of going on
    without it."""

    def submit(
        self,
        records: list[FlowRecord],
        sample: Sample | None,
        events: list[NewFlow],
        pending: Sequence[PendingFlows] | None = None,
    ) -> None: ...

    def check(self) -> None: ...

    def close(self) -> object: ...


class NullSink:
    """Keeps nothing."""

    def submit(
        self,
        records: list[FlowRecord],
        sample: Sample | None,
        events: list[NewFlow],
        pending: Sequence[PendingFlows] | None = None,
    ) -> None:
        pass

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class RecordSettings:
    """Everything `flowscope record` is told (flags > FLOWSCOPE_* environment > defaults)."""

    interfaces: tuple[str, ...]
    """Interfaces to attach to."""
    mode: str = "auto"
    """XDP mode: auto, native or generic."""
    force: bool = False
    """Replace an XDP program already on an interface."""
    direction: str = "both"
    """What to watch: ingress (XDP), egress (TC) or both (ingress only when egress is refused)."""
    flow_entries: int = abi.DEFAULT_FLOW_ENTRIES
    """Size of each kernel flow map."""
    duration: float | None = None
    """Seconds to record; None: until stopped."""
    collector: CollectorSettings = field(default_factory=CollectorSettings)
    """Tick interval and expiry timeouts."""
    processes: bool = True
    """Attribute each local flow to its process (cgroup socket hooks, collect.owners)."""
    allow_block: bool = False
    """Build the XDP program with its drop path and take block rules on the control socket
    (collect.control; `flowscope block`)."""
    block_share: float = 0.5
    """A rule that would drop more than this share of the last tick's received packets needs a
    second confirmation (--block-share)."""


@dataclass(slots=True)
class RecordSummary:
    """What a recording did, for the last status line."""

    ticks: int = 0
    records: int = 0
    events: int = 0
    packets: int = 0
    interrupted: bool = False
    """Stopped by Ctrl-C or SIGTERM rather than by the duration or the caller."""


def prepare(settings: RecordSettings) -> ProgramBuild:
    """Start compiling the program ``settings`` need, in a thread; run() takes it from there.
    The caller closes it if run() never comes."""
    from flowscope.kernel.program import ProgramBuild as Build

    return Build(
        flow_entries=settings.flow_entries,
        cflags=_block_cflags(settings),
        owners=settings.processes,
    )


def run(
    settings: RecordSettings,
    sink: Sink,
    *,
    on_tick: Callable[[Tick], None] | None = None,
    stop: threading.Event | None = None,
    on_notice: Callable[[str], None] | None = None,
    on_block: Callable[[BlockNote], None] | None = None,
    on_attached: Callable[[], None] | None = None,
    prepared: ProgramBuild | None = None,
) -> RecordSummary:
    """Collect until the duration ends or ``stop`` is set; every tick goes to ``sink``.
    ``on_notice`` hears what the user should know about the attachments (egress refused);
    ``on_block`` each change of the block rules (--allow-block: for history);
    ``on_attached`` that the programs are attached, before the first tick; ``prepared``: the
    program prepare() started compiling."""
    from flowscope.kernel.session import Probe, warm_up

    stop = stop or threading.Event()
    try:
        if prepared is not None and not prepared.done:
            warm_up()  # while the compile runs
        return _run(
            settings, sink, on_tick, stop, Probe, on_notice, on_block, on_attached, prepared
        )
    finally:
        sink.close()
        if prepared is not None:  # a program nobody took (Ctrl-C during the compile) is freed
            prepared.close()


def _run(
    settings: RecordSettings,
    sink: Sink,
    on_tick: Callable[[Tick], None] | None,
    stop: threading.Event,
    probe_class: type[Probe],
    on_notice: Callable[[str], None] | None = None,
    on_block: Callable[[BlockNote], None] | None = None,
    on_attached: Callable[[], None] | None = None,
    prepared: ProgramBuild | None = None,
) -> RecordSummary:
    summary = RecordSummary()
    # Ctrl-C and SIGTERM stop collection from the moment the program may be attached: one
    # that came while the socket hooks were being set up (their start-up scan reads sock_diag
    # through pyroute2) was raised there and lost, and the run went on.
    with (
        _signals_stop(stop, summary),
        probe_class(
            list(settings.interfaces),
            mode=settings.mode,
            force=settings.force,
            flow_entries=settings.flow_entries,
            direction=settings.direction,
            owners=settings.processes,
            cflags=_block_cflags(settings),
            program=prepared.result() if prepared is not None else None,
        ) as probe,
        contextlib.ExitStack() as stack,
    ):
        table, processes = watch_processes(probe.program) if settings.processes else (None, None)
        if processes is not None:
            stack.callback(processes.close)
        if on_notice is not None:
            for text in probe.notices:
                on_notice(text)
        collector = Collector(
            probe.program,
            settings.collector,
            iface_names=probe.interface_names(),
            owners=table,
            health=processes.health if processes is not None else None,
            drops=processes.drops if processes is not None else None,
            resets=processes.resets if processes is not None else None,
        )
        blocks = _blocking(probe, settings, stack, on_block, on_notice)
        from flowscope.kernel.links import LinkWatch

        names = probe.interface_names()
        watch = LinkWatch({name: index for index, name in names.items()})
        if on_attached is not None:
            on_attached()
        try:
            _loop(
                collector,
                probe,
                sink,
                settings,
                stop,
                on_tick,
                summary,
                watch,
                on_notice,
                processes,
                blocks,
            )
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C, or SIGTERM turned into SystemExit by the CLI: a normal way to stop
            summary.interrupted = True
        finally:
            # the last partial tick, then every live flow, then the writer's backlog
            tick = collector.tick()
            sink.submit(tick.records, tick.sample, tick.events, tick.pending)
            last = collector.shutdown()
            sink.submit(last, None, [], [])
            summary.records += len(tick.records) + len(last)
            summary.events += len(tick.events)
            summary.packets += tick.sample.counters.get("packets", 0)
            if on_tick is not None:
                # last, once everything is submitted: the hook (metrics, a status line) sees
                # the final partial tick and the shutdown records too, so what it sums over
                # the ticks is what the sink got
                on_tick(dataclasses.replace(tick, records=[*tick.records, *last]))
    return summary


def _block_cflags(settings: RecordSettings) -> tuple[str, ...]:
    """The build with the drop path, only when asked for (without it there is none)."""
    if not settings.allow_block:
        return ()
    from flowscope.kernel.block import BLOCK_CFLAGS

    return BLOCK_CFLAGS


def _blocking(
    probe: Probe,
    settings: RecordSettings,
    stack: contextlib.ExitStack,
    on_block: Callable[[BlockNote], None] | None,
    on_notice: Callable[[str], None] | None,
) -> BlockService | None:
    """With --allow-block: the block rules and the control socket that takes them, closed with
    the recording (and the rules go with the program's maps in any case)."""
    if not settings.allow_block:
        return None
    from flowscope.collect.block import BlockService, Safety, ssh_session
    from flowscope.collect.control import ControlServer, control_path
    from flowscope.kernel.block import BlockMaps
    from flowscope.kernel.owners import local_addresses

    client, port = ssh_session(os.environ)
    safety = Safety(
        ssh_client=client,
        ssh_port=port,
        local=frozenset(local_addresses()),
        max_share=settings.block_share,
    )
    service = BlockService(BlockMaps(probe.program), safety, on_block)
    stack.callback(service.close)
    server = ControlServer(control_path(), service.handle)
    stack.callback(server.close)
    if on_notice is not None:
        on_notice(
            f"blocking is on: `flowscope block RULE` drops what RULE matches (control socket "
            f"{server.path}); every rule ends with this process"
        )
    return service


@contextlib.contextmanager
def _signals_stop(stop: threading.Event, summary: RecordSummary) -> Iterator[None]:
    """While the loop runs on the main thread, Ctrl-C and SIGTERM set ``stop`` instead of
    raising. Raised, they could land in a ctypes callback (bcc's ring buffer consumer called
    one per record, before kernel.ringbuf), where Python handles a pending signal, and ctypes
    swallows whatever a callback raises: the signal was lost and collection went on; raised
    in the middle of a tick they would cut it short. A handler that only sets an event cannot
    be lost. Handlers set to
    ignore the signal (a background job's SIGINT) are left alone; all are restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # the console's collection thread: the app handles the signals
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        summary.interrupted = True
        stop.set()

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, old in saved.items():
        if old is not signal.SIG_IGN:
            signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in saved.items():
            if old is not None:  # None: a handler set outside Python, not ours to restore
                signal.signal(s, old)


def _loop(
    collector: Collector,
    probe: Probe,
    sink: Sink,
    settings: RecordSettings,
    stop: threading.Event,
    on_tick: Callable[[Tick], None] | None,
    summary: RecordSummary,
    watch: LinkWatch | None = None,
    on_notice: Callable[[str], None] | None = None,
    processes: ProcessWatch | None = None,
    blocks: BlockService | None = None,
) -> None:
    """Tick every interval until the duration ends or ``stop`` is set, draining the ring
    buffer in between; after each tick, say when a watched interface went down, came back or
    disappeared (collection goes on with the others)."""
    interval = settings.collector.interval
    start = time.monotonic()
    end = start + settings.duration if settings.duration is not None else None
    next_tick = start + min(interval, FIRST_TICK)
    problem_said = False
    while not stop.is_set():
        now = time.monotonic()
        if end is not None and now >= end:
            break
        wake = min(next_tick, end) if end is not None else next_tick
        if now < wake:
            probe.program.poll_events(max(1, min(POLL_MS, int((wake - now) * 1000))))
            if collector.owners is not None:  # the socket ring buffer too, between ticks
                collector.owners.refresh()
            continue
        tick = collector.tick()
        if blocks is not None:  # the rules whose time is up end with this tick
            blocks.tick(tick.sample.flood)
        sink.submit(tick.records, tick.sample, tick.events, tick.pending)
        sink.check()
        summary.ticks += 1
        summary.records += len(tick.records)
        summary.events += len(tick.events)
        summary.packets += tick.sample.counters.get("packets", 0)
        changes = watch.changes() if watch is not None else []
        if on_tick is not None:
            if watch is not None:  # a lasting state for status lines; the notice says it once
                tick = dataclasses.replace(tick, links=dict(watch.states))
            on_tick(tick)
        if processes is not None and not problem_said:
            changes += [p for p in (processes.problem, processes.drops_problem) if p]
            problem_said = True
        if on_notice is not None:
            for text in changes:
                on_notice(text)
        next_tick += interval
        if next_tick < time.monotonic():  # fell behind: do not try to catch up
            next_tick = time.monotonic() + interval
