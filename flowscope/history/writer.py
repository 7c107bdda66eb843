"""The background SQLite writer: collection hands ticks over and never waits for the disk.

Between the collector and SQLite sits a queue bounded by the number of records (and events)
it holds, not by ticks: a slow or full disk makes records wait in memory up to that bound;
past it, new records are dropped and counted, and the count is written in the next sample's
``records_dropped`` so history shows the gap. A failed write (disk full, database locked) is
kept as a status string for the user and retried with the backlog kept; nothing raises into
the collector.

Each tick also carries what the live flows hold that no record holds yet (PendingFlows); it is
written in the tick's own transaction, so after a kill -9 the next writer turns it into
``crash`` records and history has lost at most the last tick. Every tick's pending state is
written with its own records, even when a newer one waits: records of one tick with the
pending state of another would count a flow twice after a crash.

The writer also watches for scans and SYN floods (detect.Watch) in the new-flow events it
writes, on its own thread, and writes each alert raised or updated in the tick's transaction:
history keeps the alerts of every recording, console or not. It sees the events it keeps: past
the backlog bound, dropped events are not counted in alerts either.

Two ways out are bounded, so that stopping always ends: ``close()`` gives up once writes have
failed for ``CLOSE_STALL`` seconds in a row (or on a second Ctrl-C) and says in ``lost`` how
many records did not make it; and an error that is not the database's (a bug, a bad setting)
ends the thread and is raised by ``check()`` in the collection loop, which then stops.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from flowscope.collect.block import BlockNote
from flowscope.collect.detect import Alert, Watch
from flowscope.errors import FlowscopeError
from flowscope.history.files import StoreError
from flowscope.history.store import Store
from flowscope.model import FlowRecord, NewFlow, PendingFlows, Sample

DEFAULT_MAX_BACKLOG = 1_000_000
CLOSE_STALL = 3.0
"""Seconds close() waits for a write to succeed before it gives up on the rest."""


@dataclasses.dataclass(slots=True)
class _Tick:
    records: Sequence[FlowRecord]
    sample: Sample | None
    events: Sequence[NewFlow]
    pending: Sequence[PendingFlows] | None
    alerts: Sequence[Alert] | None = None
    """What the tick raised or changed, as written (None until the detector has seen it:
    a write that fails and is retried must not feed the same events twice)."""

    @property
    def size(self) -> int:
        return len(self.records) + len(self.events)


@dataclasses.dataclass(frozen=True, slots=True)
class WriterState:
    """What the history writer reports, read in the collection thread after each tick."""

    backlog: int = 0
    """Records waiting to be written."""
    dropped: int = 0
    """Records dropped since start because the backlog was full."""
    status: str | None = None
    """What is wrong with writing (None while all is well)."""


class Writer:
    """Writes ticks to a Store from its own thread.

    ``submit()`` is all the collector calls per tick; ``close()`` flushes at the end. The
    attributes below are safe to read from any thread (for a status line)."""

    def __init__(
        self,
        store: Store | Path | str,
        *,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        retain_seconds: float | None = None,
        max_bytes: int | None = None,
        prune_interval: float = 60.0,
        rollup_interval: float = 60.0,
        retry_interval: float = 1.0,
    ) -> None:
        """Open (or take) the store now, so a bad path or a too-new file fails in the caller,
        turn what a dead writer left pending into ``crash`` records, and start the thread."""
        self.store = store if isinstance(store, Store) else Store(store)
        try:
            #: Records recovered from writers that died (end reason 'crash').
            self.recovered = self.store.recover()
        except BaseException:
            self.store.close()
            raise
        self.max_backlog = max_backlog
        self.retain_seconds = retain_seconds
        self.max_bytes = max_bytes
        self.prune_interval = prune_interval
        self.rollup_interval = rollup_interval
        self.retry_interval = retry_interval
        #: Records (and events) waiting to be written.
        self.backlog = 0
        #: Records dropped because the backlog was full, since the writer started.
        self.dropped = 0
        #: Events dropped because the backlog was full, since the writer started.
        self.events_dropped = 0
        #: Records written so far.
        self.written = 0
        #: What is wrong with writing, for the user (None while all is well).
        self.status: str | None = None
        #: Records that were never written: what close() gave up on (0 while all is well).
        self.lost = 0
        #: The last write error, kept after ``status`` clears (for the final report).
        self.last_error: str | None = None
        #: The error that ended the thread, when it was not the database's.
        self.failed: BaseException | None = None
        #: Ticks committed, and the seconds their transactions took in all (write latency).
        self.writes = 0
        self.write_seconds = 0.0
        self._unreported_drops = 0
        self.watch = Watch()
        """Scans and SYN floods in the events written (fed on the writer's thread)."""
        self._ticks: collections.deque[_Tick] = collections.deque()
        self._blocks: list[BlockNote] = []
        """Changes of the block rules, written with the next tick."""
        self._cond = threading.Condition()
        self._closing = False
        self._abandon = False
        self._last_success = time.monotonic()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="flowscope-writer", daemon=True)
        self._thread.start()

    def submit(
        self,
        records: Sequence[FlowRecord],
        sample: Sample | None,
        events: Sequence[NewFlow],
        pending: Sequence[PendingFlows] | None = None,
    ) -> None:
        """Queue one tick; never blocks on the disk. Whatever does not fit in the backlog
        bound is dropped and counted (the sample is always kept: it is one row)."""
        with self._cond:
            room = max(self.max_backlog - self.backlog, 0)
            if len(records) > room:
                self.dropped += len(records) - room
                self._unreported_drops += len(records) - room
                records = records[:room]
            room -= len(records)
            if len(events) > room:
                self.events_dropped += len(events) - room
                events = events[:room]
            tick = _Tick(records, sample, events, pending)
            self._ticks.append(tick)
            self.backlog += tick.size
            self._cond.notify()

    def note_block(self, note: BlockNote) -> None:
        """A block, unblock or expiry of a rule (any thread): written with the next tick."""
        with self._cond:
            self._blocks.append(note)

    def check(self) -> None:
        """Raise, as a FlowscopeError, the error that ended the thread (None: all is well)."""
        if self.failed is not None:
            raise FlowscopeError(
                f"history writer stopped: {type(self.failed).__name__}: {self.failed}",
                f"{self.backlog} records were waiting; everything before them is in "
                f"{self.store.path}",
            )

    def close(self, timeout: float | None = None) -> bool:
        """Write everything queued, stop the thread and close the store. True when all was
        written. It waits as long as writes succeed (a write that merely takes long, a
        flood's backlog, is progress), but gives up once they have failed for CLOSE_STALL
        seconds in a row, or ``timeout`` passed, or a second Ctrl-C came: what was left is
        then counted in ``lost``, and ``report()`` says why."""
        with self._cond:
            self._closing = True
            self._last_success = time.monotonic()
            self._cond.notify()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self._thread.is_alive():
                self._thread.join(0.1)
                now = time.monotonic()
                # a long write (a flood's backlog) is progress; only failing writes stall
                stalled = self._failing and now - self._last_success > CLOSE_STALL
                if stalled or (deadline is not None and now > deadline):
                    break
        finally:
            # also on a second Ctrl-C: count what is lost before the exception goes on
            if self._thread.is_alive():
                with self._cond:
                    self._abandon = True
                    self._cond.notify()
                self._thread.join(1.0)
            with self._cond:
                self.lost = sum(len(t.records) for t in self._ticks)
            if not self._thread.is_alive():
                try:
                    self.store.close()
                except StoreError as e:
                    self.status = self.status or str(e)
        return not self._ticks

    def state(self) -> WriterState:
        """What a status line shows of the writer, read at once."""
        return WriterState(backlog=self.backlog, dropped=self.dropped, status=self.status)

    def report(self) -> str | None:
        """One line for the user when something was not written, else None."""
        if self.failed is not None:
            return f"history writer stopped: {type(self.failed).__name__}: {self.failed}"
        if self.lost:
            why = self.last_error or "the writer was stopped"
            return f"history: {self.lost} records could not be written ({why})"
        if self.status:
            return f"history: {self.status}"
        return None

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # anything else: stop, and let check() tell the loop
            self.failed = e
            self.status = f"{type(e).__name__}: {e}"

    def _loop(self) -> None:
        last_prune = last_rollup = time.monotonic()
        while True:
            with self._cond:
                while not self._ticks and not self._closing:
                    self._cond.wait(timeout=min(self.prune_interval, self.rollup_interval))
                    if time.monotonic() - last_rollup >= self.rollup_interval:
                        break
                if self._abandon or (self._closing and not self._ticks):
                    break
                tick = self._ticks[0] if self._ticks else None
            try:
                if tick is not None:
                    self._write(tick)
                now = time.monotonic()
                if now - last_rollup >= self.rollup_interval:
                    self.store.rollup()
                    last_rollup = now
                if (
                    self.retain_seconds is not None or self.max_bytes is not None
                ) and now - last_prune >= self.prune_interval:
                    self.store.prune(self.retain_seconds, self.max_bytes)
                    last_prune = now
                self.status = None
            except StoreError as e:
                self._failing = True
                self.last_error = str(e)
                self.status = f"{e}; {self.backlog} records waiting, retrying"
                if self._closing and not self._ticks:
                    break  # only the rollup or prune failed: nothing is lost
                with self._cond:
                    if not self._abandon:
                        self._cond.wait(timeout=self.retry_interval)
        if not self._abandon:
            try:
                self.store.rollup()
            except StoreError as e:
                self.status = str(e)

    def _write(self, tick: _Tick) -> None:
        """Write the oldest tick; it leaves the queue only once committed."""
        drops = self._unreported_drops if tick.sample is not None else 0
        if tick.alerts is None:
            # copies: the detector goes on changing them while this tick waits for a retry
            tick.alerts = [
                dataclasses.replace(a) for a in self.watch.feed(tick.events, tick.sample)
            ]
        with self._cond:
            blocks = list(self._blocks)
        started = time.perf_counter()
        self.store.write_tick(
            tick.records,
            tick.sample,
            tick.events,
            records_dropped=drops,
            pending=tick.pending,
            alerts=tick.alerts,
            blocks=blocks,
        )
        elapsed = time.perf_counter() - started
        with self._cond:
            self._last_success = time.monotonic()
            self._failing = False
            self.writes += 1
            self.write_seconds += elapsed
            self._ticks.popleft()
            del self._blocks[: len(blocks)]
            self.backlog -= tick.size
            self._unreported_drops -= drops
            self.written += len(tick.records)
