"""Where the console's ticks come from: the real collection loop, or a replay for tests.

The app only knows the ``TickSource`` protocol: ``start(post)`` begins delivering messages
(``post`` is the app's thread-safe ``post_message``) and ``stop()`` ends it. In production
``RecorderSource`` runs a pipeline (probe, collector, writer, exports) in a thread of its own; the
UI thread never polls, drains or writes. ``ScriptedSource`` hands over prepared ticks with their
own times, so tests and screenshots need neither the kernel nor the machine's clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from textual.message import Message

from flowscope.collect.collector import Tick
from flowscope.collect.recorder import RecordSettings
from flowscope.errors import FlowscopeError
from flowscope.pipeline import Pipeline, attached
from flowscope.ui.messages import (
    Attached,
    CollectionEnded,
    CollectorFailed,
    TickArrived,
    Trouble,
)

Post = Callable[[Message], object]
FIRST_DRAW_WAIT = 1.0
"""Seconds the collection thread waits for the console's first draw at most."""


class TickSource(Protocol):
    """What the console consumes."""

    interfaces: tuple[str, ...]
    has_db: bool

    def start(self, post: Post) -> None: ...

    def drawn(self) -> None:
        """The console has been drawn once (the app calls this after its first refresh)."""

    def stop(self) -> object: ...


class ScriptedSource:
    """Prepared ticks, delivered on demand: ``preload`` of them at start, then one per
    ``step()``. Each entry is (tick, now_ns) or a ready TickArrived."""

    def __init__(
        self,
        ticks: Sequence[TickArrived],
        *,
        interfaces: tuple[tuple[str, str], ...] = (("eth0", "native"),),
        preload: int | None = None,
        has_db: bool = True,
        ifindex: int = 2,
    ) -> None:
        self.ticks = list(ticks)
        self.ifindex = ifindex  # the interface index the prepared flows carry
        self.attached = interfaces
        self.interfaces = tuple(name for name, _ in interfaces)
        self.has_db = has_db
        self.preload = len(self.ticks) if preload is None else preload
        self.position = 0
        self.stopped = False
        self._post: Post | None = None

    def start(self, post: Post) -> None:
        self._post = post
        post(Attached(self.attached, {self.ifindex: self.attached[0][0]} if self.attached else {}))
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

    def drawn(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True


class RecorderSource:
    """A pipeline's collection loop in a thread; each tick is posted to the app.

    ``stop()`` sets the loop's stop event and waits for it: the loop then writes the live flows
    as 'shutdown' records, flushes the writer and detaches the program. The records also go to
    the pipeline's IPFIX exporter and each tick feeds its metrics, in that thread too."""

    def __init__(self, pipeline: Pipeline, stop: threading.Event | None = None) -> None:
        """``stop``, when given, is set by someone else too (the demo, when its traffic
        generator dies): collection then ends and the console closes."""
        self.pipeline = pipeline
        self.has_db = pipeline.writer is not None
        source = pipeline.settings.source
        assert isinstance(source, RecordSettings), "the console shows interfaces, live"
        self.interfaces = source.interfaces
        self.error: FlowscopeError | None = None
        self._stop = stop or threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._post: Post | None = None
        self._attached = False
        self._drawn = threading.Event()

    def start(self, post: Post) -> None:
        self._post = post
        self._thread = threading.Thread(target=self._run, name="flowscope-collect", daemon=True)
        self._thread.start()

    def drawn(self) -> None:
        self._drawn.set()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop collecting and wait (up to ``timeout``) for the program to be detached.
        True when the thread ended."""
        self._stopping = True
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        """True while the collection thread lives."""
        return self._thread is not None and self._thread.is_alive()

    def _on_attached(self) -> None:
        """The programs are attached: the console shows the interfaces, not "compiling"."""
        if not self._attached and self._post is not None:
            self._attached = True
            self._post(Attached(*attached(self.interfaces)))

    def _on_tick(self, tick: Tick) -> None:
        now_ns = time.monotonic_ns()
        assert self._post is not None
        self._on_attached()
        self._post(TickArrived(tick, now_ns, self.pipeline.writer_state()))

    def _notice(self, text: str) -> None:
        """What the collection loop wants the operator to know (an interface down or gone,
        egress refused, the export failing): a notification."""
        if self._post is not None:
            self._post(Trouble(text))

    def _run(self) -> None:
        assert self._post is not None
        self.pipeline.exports.notice = self._notice
        # the run's first steps import what attaching needs while BCC compiles (GIL-bound
        # Python): after the console is first drawn, so they do not hold that up
        self._drawn.wait(FIRST_DRAW_WAIT)
        try:
            self.pipeline.run(
                stop=self._stop,
                on_tick=self._on_tick,
                on_notice=self._notice,
                on_attached=self._on_attached,
            )
            if self._stop.is_set() and not self._stopping:
                self._post(CollectionEnded())
        except FlowscopeError as e:
            self.error = e
            self._post(CollectorFailed(str(e)))
        except Exception as e:  # the console must not die with the thread: say what happened
            self.error = FlowscopeError(f"collection stopped: {type(e).__name__}: {e}")
            self._post(CollectorFailed(str(self.error)))
