"""Where the console's ticks come from: the real collection loop, or a replay for tests.

The app only knows the ``TickSource`` protocol: ``start(post)`` begins delivering messages
(``post`` is the app's thread-safe ``post_message``) and ``stop()`` ends it. In production
``RecorderSource`` runs ``recorder.run`` (probe, collector, writer) in a thread of its own; the
UI thread never polls, drains or writes. ``ReplaySource`` hands over prepared ticks with their
own times, so tests and screenshots need neither the kernel nor the machine's clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from textual.message import Message

from flowscope.collector import Tick
from flowscope.errors import FlowscopeError
from flowscope.recorder import NullSink, RecordSettings, Sink
from flowscope.ui.messages import Attached, CollectorFailed, TickArrived, Trouble
from flowscope.ui.sample import IFINDEX
from flowscope.ui.state import WriterState

if TYPE_CHECKING:
    from flowscope.exports import Exports

Post = Callable[[Message], object]


class TickSource(Protocol):
    """What the console consumes."""

    interfaces: tuple[str, ...]
    has_db: bool

    def start(self, post: Post) -> None: ...

    def stop(self) -> object: ...


class ReplaySource:
    """Prepared ticks, delivered on demand: ``preload`` of them at start, then one per
    ``step()``. Each entry is (tick, now_ns) or a ready TickArrived."""

    def __init__(
        self,
        ticks: Sequence[TickArrived],
        *,
        interfaces: tuple[tuple[str, str], ...] = (("eth0", "native"),),
        preload: int | None = None,
        has_db: bool = True,
    ) -> None:
        self.ticks = list(ticks)
        self.attached = interfaces
        self.interfaces = tuple(name for name, _ in interfaces)
        self.has_db = has_db
        self.preload = len(self.ticks) if preload is None else preload
        self.position = 0
        self.stopped = False
        self._post: Post | None = None

    def start(self, post: Post) -> None:
        self._post = post
        post(Attached(self.attached, {IFINDEX: self.attached[0][0]} if self.attached else {}))
        self.step(self.preload)

    def step(self, count: int = 1) -> int:
        """Deliver the next ``count`` ticks; returns how many were left to deliver."""
        assert self._post is not None, "start() first"
        for _ in range(count):
            if self.position >= len(self.ticks):
                break
            msg = self.ticks[self.position]
            self._post(TickArrived(msg.tick, msg.now_ns, msg.writer))
            self.position += 1
        return len(self.ticks) - self.position

    def stop(self) -> None:
        self.stopped = True


class RecorderSource:
    """The collection loop (recorder.run) in a thread; each tick is posted to the app.

    ``stop()`` sets the loop's stop event and waits for it: the loop then writes the live flows
    as 'shutdown' records, flushes the writer and detaches the program. With ``exports`` the
    records also go to its IPFIX exporter and each tick feeds its metrics, in that thread too."""

    def __init__(
        self, settings: RecordSettings, sink: Sink | None, *, exports: Exports | None = None
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.exports = exports
        self.has_db = sink is not None
        self.interfaces = settings.interfaces
        self.error: FlowscopeError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._post: Post | None = None
        self._attached = False

    def start(self, post: Post) -> None:
        self._post = post
        self._thread = threading.Thread(target=self._run, name="flowscope-collect", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop collecting and wait (up to ``timeout``) for the program to be detached.
        True when the thread ended."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        """True while the collection thread lives."""
        return self._thread is not None and self._thread.is_alive()

    def _writer_state(self) -> WriterState | None:
        w = self.sink
        if w is None:
            return None
        return WriterState(
            backlog=int(getattr(w, "backlog", 0)),
            dropped=int(getattr(w, "dropped", 0)),
            status=getattr(w, "status", None),
        )

    def _on_tick(self, tick: Tick) -> None:
        now_ns = time.monotonic_ns()
        assert self._post is not None
        if not self._attached:
            self._attached = True
            self._post(_attached(self.settings.interfaces))
        self._post(TickArrived(tick, now_ns, self._writer_state()))

    def _notice(self, text: str) -> None:
        """What the collection loop wants the operator to know (an interface down or gone,
        egress refused): a notification."""
        if self._post is not None:
            self._post(Trouble(text))

    def _run(self) -> None:
        from flowscope import recorder

        assert self._post is not None
        sink: Sink = self.sink or NullSink()
        on_tick: Callable[[Tick], None] | None = self._on_tick
        if self.exports is not None:
            self.exports.notice = self._notice
            sink, on_tick = self.exports.sink(sink), self.exports.on_tick(on_tick)
        try:
            recorder.run(
                self.settings, sink, on_tick=on_tick, stop=self._stop, on_notice=self._notice
            )
        except FlowscopeError as e:
            self.error = e
            self._post(CollectorFailed(str(e)))
        except Exception as e:  # the console must not die with the thread: say what happened
            self.error = FlowscopeError(f"collection stopped: {type(e).__name__}: {e}")
            self._post(CollectorFailed(str(self.error)))


def _attached(names: Sequence[str]) -> Attached:
    """(name, XDP mode) of each interface as the kernel reports it now, and their indexes."""
    from flowscope.probe.attach import interface_info
    from flowscope.probe.egress import egress_attached

    modes, indexes = [], {}
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
    return Attached(tuple(modes), indexes)
