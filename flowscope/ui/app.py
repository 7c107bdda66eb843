"""The console application: one factory (make_app) for the CLI, the demo and the tests, and
run_console, which runs collection in a thread and the app in the foreground.

The app owns the state every screen reads (LiveState) and takes ticks only as messages; a
failing writer, a lost ring buffer record or a refused attach becomes a notification, never
an exception on the UI thread. Whatever ends the app (q, Ctrl-C, SIGTERM, SIGHUP, an
exception), run_console stops the collection thread, which detaches the program.
"""

from __future__ import annotations

import asyncio
import functools
import io
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import App, SystemCommand
from textual.await_complete import AwaitComplete
from textual.binding import Binding, BindingType
from textual.driver import Driver
from textual.screen import Screen

from flowscope.model import Owner
from flowscope.query.filter import DropReasons
from flowscope.query.view import COLUMNS, DESCENDING, GROUPS, ViewSpec
from flowscope.ui.cells import HEADERS
from flowscope.ui.context import ConsoleContext
from flowscope.ui.help import HelpScreen, filter_help
from flowscope.ui.history import HistoryScreen
from flowscope.ui.live import LiveScreen
from flowscope.ui.messages import (
    Attached,
    CollectionEnded,
    CollectorFailed,
    NameResolved,
    TickArrived,
    Trouble,
)
from flowscope.ui.names import Lookup, Resolver, gethostbyaddr
from flowscope.ui.source import RecorderSource, TickSource
from flowscope.ui.state import LiveState
from flowscope.ui.terminal import driver_for, keep_terminal
from flowscope.vocab import printable

if TYPE_CHECKING:
    from flowscope.pipeline import Pipeline

Clock = Callable[[], float]
CommandLine = Callable[[Owner], str | None]
Control = Callable[[dict[str, Any]], dict[str, Any]]
"""One request to the recorder's control socket (ConsoleContext.control)."""


def _no_command_line(_owner: Owner) -> str | None:
    return None


RINGBUF_NOTICE_TICKS = 30
"""At most one 'ring buffer full' notification per this many ticks."""


class FlowscopeApp(App[None]):
    """flowscope's Textual app."""

    TITLE = "flowscope"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "help"),
        Binding("space", "pause", "pause"),
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
        Binding("h", "history", "history", show=False),
        Binding("a", "alerts", "alerts", show=False),
        Binding("F", "flood", "flood view", show=False),
        Binding("b", "block", "block", show=False),
        Binding("B", "blocks", "block rules", show=False),
        Binding("f1", "filter_help", "filter language", show=False, priority=True),
    ]

    def __init__(
        self,
        source: TickSource,
        *,
        clock: Clock = time.time,
        lookup: Lookup = gethostbyaddr,
        command_line: CommandLine = _no_command_line,
        db_path: Path | None = None,
        title: str | None = None,
        handle_signals: bool = False,
        spec: ViewSpec | None = None,
        control: Control | None = None,
        drop_reasons: DropReasons | None = None,
        driver_class: type[Driver] | None = None,
    ) -> None:
        super().__init__(driver_class=driver_class)
        if title:
            self.title = title
        self.source = source
        self.context = ConsoleContext(
            LiveState(clock_start=clock()),
            name_of=self.name_of,
            command_line=command_line,
            control=control,
            drop_reasons=drop_reasons,
        )
        """What the screens share (they get it, never the app)."""
        self.db_path = db_path
        self.notices: list[tuple[str, str]] = []
        """Every notification shown (severity, message): for tests and for the log."""
        self._lookup = lookup
        self._resolver: Resolver | None = None
        self._names_dirty = False
        self._handle_signals = handle_signals
        self._last_status: str | None = None
        self._last_dropped = 0
        self._last_ringbuf_notice = -RINGBUF_NOTICE_TICKS
        self.live = LiveScreen(self.context, spec)
        self.context.show_filter = self.live.apply_filter
        self.context.redraw_live = self.live.redraw
        self.crashed: BaseException | None = None
        """The exception that ended the app, if one did (run_console raises it again)."""

    # The context's fields, as the app's own (tests read them here).
    @property
    def state(self) -> LiveState:
        return self.context.state

    @property
    def iface_names(self) -> dict[int, str]:
        return self.context.iface_names

    @property
    def paused(self) -> bool:
        return self.context.paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self.context.paused = value

    @property
    def show_names(self) -> bool:
        return self.context.show_names

    @show_names.setter
    def show_names(self, value: bool) -> None:
        self.context.show_names = value

    # --- life cycle -----------------------------------------------------------------------------

    def get_default_screen(self) -> Screen[Any]:
        """The live screen is the bottom of the stack, drawn first: not pushed over Textual's
        empty default screen once that has been laid out and drawn (a whole extra layout
        before the first draw)."""
        return self.live

    def pop_screen(self) -> AwaitComplete:
        """Back from a view to the one under it; never off the live screen, which is the
        bottom of the stack: a pop with nothing above it (a view's key and its table's both
        closing it) does nothing, where Textual would raise and end the console."""
        if len(self.screen_stack) <= 1:
            return AwaitComplete(asyncio.sleep(0)).call_next(self)
        return super().pop_screen()

    def on_mount(self) -> None:
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(sig, self.exit)
        self.set_interval(0.3, self._redraw_names)
        self.source.start(self.post_message)
        self.call_after_refresh(self.source.drawn)

    def on_unmount(self) -> None:
        self.source.stop()
        if self._resolver is not None:
            self._resolver.close()

    def _handle_exception(self, error: Exception) -> None:
        """Textual's own handling (the app exits, Pilot re-raises it in tests) without the
        full-screen traceback it prints on the way out: run_console raises the exception
        again once the collection thread has written the live flows and detached, and the
        CLI's last-resort handler prints one line and writes the traceback to a log."""
        if self.crashed is None:
            self.crashed = error
        super()._handle_exception(error)
        self._exit_renderables.clear()

    def notify(self, message: str, *, severity: str = "information", **kwargs: object) -> None:
        self.notices.append((severity, message))
        super().notify(message, severity=severity, **kwargs)  # type: ignore[arg-type]

    # --- messages from the collection thread ---------------------------------------------------

    def on_tick_arrived(self, msg: TickArrived) -> None:
        tick = self.state.ingest(msg.tick, msg.now_ns, msg.writer)
        self._report_trouble(msg)
        for alert in self.state.raised:
            self.notify(
                f"{alert.kind} from {alert.source} to {alert.target} (a: alerts)",
                title="alert",
                severity="error",
                timeout=10,
            )
        view = self.live.compute()
        del view, tick
        if not self.paused:
            self._redraw()

    def on_attached(self, msg: Attached) -> None:
        self.state.interfaces = msg.interfaces
        self.iface_names.update(msg.indexes)
        if not self.paused:
            self._redraw()

    def on_collection_ended(self, msg: CollectionEnded) -> None:
        self.exit()

    def on_collector_failed(self, msg: CollectorFailed) -> None:
        self.notify(msg.error, title="collection stopped", severity="error", timeout=3600)

    def on_trouble(self, msg: Trouble) -> None:
        self.notify(printable(msg.text), severity="warning", timeout=10)

    def on_name_resolved(self, msg: NameResolved) -> None:
        self._names_dirty = True

    def _report_trouble(self, msg: TickArrived) -> None:
        counters = msg.tick.sample.counters
        lost = counters.get("ringbuf_full", 0)
        if lost and self.state.ticks - self._last_ringbuf_notice >= RINGBUF_NOTICE_TICKS:
            self._last_ringbuf_notice = self.state.ticks
            self.notify(
                f"ring buffer full: {lost} new-flow events lost (the flows are still counted)",
                severity="warning",
            )
        if counters.get("map_full", 0):
            self.notify(
                f"flow map full: {counters['map_full']} packets of new flows in the totals "
                "but in no flow (--flow-entries)",
                severity="warning",
            )
        w = msg.writer
        if w is None:
            return
        if w.status and w.status != self._last_status:
            self.notify(f"history: {w.status}", severity="error", timeout=10)
        elif self._last_status and not w.status:
            self.notify("history: writing again")
        self._last_status = w.status
        if w.dropped > self._last_dropped:
            self.notify(
                f"history: {w.dropped - self._last_dropped:,} records dropped (disk too slow "
                "or full)",
                severity="error",
            )
            self._last_dropped = w.dropped

    # --- drawing --------------------------------------------------------------------------------

    def _redraw(self) -> None:
        for screen in self.screen_stack:
            redraw = getattr(screen, "redraw", None)
            if redraw is not None and screen.is_mounted:
                redraw()

    def _redraw_names(self) -> None:
        if self._names_dirty and self.show_names and not self.paused:
            self._names_dirty = False
            self._redraw()

    def name_of(self, address: str) -> str | None:
        """The reverse DNS name of an address when known (a lookup starts otherwise)."""
        if self._resolver is None:
            self._resolver = Resolver(
                lambda a, n: self.post_message(NameResolved(a, n)), self._lookup
            )
        return self._resolver.name(address)

    # --- actions --------------------------------------------------------------------------------

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        keys = getattr(self.screen, "KEYS_HELP", None)
        self.push_screen(HelpScreen(*keys) if keys is not None else HelpScreen())

    def action_filter_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(filter_help())

    def action_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self.live.compute()
        self._redraw()

    def action_alerts(self) -> None:
        from flowscope.ui.alerts import AlertsScreen

        if not isinstance(self.screen, AlertsScreen):
            self.push_screen(AlertsScreen(self.context))

    def action_flood(self) -> None:
        from flowscope.ui.flood import FloodScreen

        if not isinstance(self.screen, FloodScreen):
            self.push_screen(FloodScreen(self.context))

    def action_block(self, src: str | None = None, proto: int | None = None,
                     dport: int | None = None) -> None:  # fmt: skip
        """Block what the selected row names (the live table's, or the flood view's)."""
        from flowscope.ui.blocks import BlockConfirm

        if self.context.control is None:
            self.notify(
                "blocking is off: start live with --allow-block to drop traffic",
                severity="warning",
            )
            return
        if src is None:
            row = self.live.selected_row()
            if row is None or not row.src or row.direction not in (None, 0):
                self.notify("select a received flow (↓) to block its source", severity="warning")
                return
            src, proto, dport = row.src, row.proto, row.dport
        self.push_screen(BlockConfirm(self.context, src, proto, dport))

    def action_blocks(self) -> None:
        from flowscope.ui.blocks import BlocksScreen

        if self.context.control is None:
            self.notify("blocking is off: start live with --allow-block", severity="warning")
        elif not isinstance(self.screen, BlocksScreen):
            self.push_screen(BlocksScreen(self.context))

    def action_history(self) -> None:
        if self.db_path is None or not self.source.has_db:
            self.notify(
                "history needs a database (this console runs with --no-db)", severity="warning"
            )
            return
        self.push_screen(
            HistoryScreen(
                self.db_path,
                self._filter_text(),
                self.live.spec.group,
                drop_reasons=self.context.drop_reasons,
            )
        )

    def _filter_text(self) -> str:
        f = self.live.spec.filter
        return f.text if f is not None else ""

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        live = self.live
        yield SystemCommand(
            "Pause / resume", "Freeze the display; collection goes on (space)", self.action_pause
        )
        yield SystemCommand(
            "Filter", "Show only the flows an expression matches (/)", live.action_open_filter
        )
        yield SystemCommand(
            "Filter language", "The filter expressions, in short (F1)", self.action_filter_help
        )
        yield SystemCommand("Reverse sort", "Flip the sort order (r)", live.action_reverse)
        yield SystemCommand(
            "Freeze order", "Rows keep their places; new ones go to the end (f)", live.action_freeze
        )
        yield SystemCommand(
            "Reverse DNS", "Names instead of addresses, looked up in the background (n)",
            live.action_names,
        )  # fmt: skip
        yield SystemCommand(
            "History", "Top flows of a past range from the database (h)", self.action_history
        )
        yield SystemCommand("Keys", "Every key of this screen (?)", self.action_help)
        yield SystemCommand(
            "Alerts", "Scans and SYN floods, listed until acknowledged (a)", self.action_alerts
        )
        for key, label in GROUPS.items():
            what = "one row per flow" if key == "flow" else f"sum the flows per {label}"
            yield SystemCommand(
                f"Group by {label}", f"The table: {what} (g)", functools.partial(live.group_by, key)
            )
        for column in COLUMNS[live.spec.group]:
            order = "largest first" if column in DESCENDING else "smallest first"
            yield SystemCommand(
                f"Sort by {HEADERS[column]}",
                f"Order the table by {HEADERS[column]}, {order} (s, 1-0)",
                functools.partial(live.sort_by, column),
            )


def make_app(
    source: TickSource,
    *,
    clock: Clock = time.time,
    lookup: Lookup = gethostbyaddr,
    command_line: CommandLine = _no_command_line,
    db_path: Path | None = None,
    title: str | None = None,
    handle_signals: bool = False,
    spec: ViewSpec | None = None,
    control: Control | None = None,
    drop_reasons: DropReasons | None = None,
    driver_class: type[Driver] | None = None,
) -> FlowscopeApp:
    """The console over a tick source. ``clock`` gives the wall time the console starts at
    (uptime is measured on the ticks' own times from there); ``lookup`` does reverse DNS;
    ``command_line`` gives a process's command line for the detail view;
    ``spec`` is the view it opens with (live --filter, --group-by, --sort);
    ``drop_reasons`` the names a filter's ``drop reason`` may take (any, without it)."""
    return FlowscopeApp(
        source,
        clock=clock,
        lookup=lookup,
        command_line=command_line,
        db_path=db_path,
        title=title,
        handle_signals=handle_signals,
        spec=spec,
        control=control,
        drop_reasons=drop_reasons,
        driver_class=driver_class,
    )


def run_console(
    pipeline: Pipeline,
    *,
    title: str | None = None,
    spec: ViewSpec | None = None,
    stop: threading.Event | None = None,
    terminal: io.TextIOWrapper | None = None,
) -> None:
    """Collect (the pipeline's loop in a thread: records into its writer and IPFIX exporter,
    ticks to its metrics) and show the console until the user quits. The collection thread is
    always stopped on the way out, which writes the live flows and detaches the program. An
    error that stopped collection is raised again after the console closed, for the CLI to
    report; so is an exception that ended the console itself (a bug), which the CLI writes to
    its crash log. ``stop`` set by the caller ends collection and closes the console.
    ``terminal``: where to draw (ui.terminal.keep_terminal), taken before a compile started;
    without one, taken here, before the collection thread compiles."""
    own_terminal = terminal is None
    screen = terminal if terminal is not None else keep_terminal()
    source = RecorderSource(pipeline, stop)
    app = make_app(
        source,
        command_line=pipeline.command_line,
        db_path=pipeline.db_path,
        title=title,
        handle_signals=True,
        spec=spec,
        control=pipeline.control(),
        drop_reasons=pipeline.drop_reasons,
        driver_class=driver_for(screen),
    )
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        app.run()
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        if not source.stop(timeout=1.0):
            sys.stderr.write("flowscope: writing the live flows and detaching…\n")
            source.stop(timeout=60.0)
        if own_terminal:
            screen.close()
    if app.crashed is not None:
        raise app.crashed
    if source.error is not None:
        raise source.error
