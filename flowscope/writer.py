"""The background SQLite writer: collection hands ticks over and never waits for the disk.

Between the collector and SQLite sits a queue bounded by the number of records (and events)
it holds, not by ticks: a slow or full disk makes records wait in memory up to that bound;
past it, new records are dropped and counted, and the count is written in the next sample's
``records_dropped`` so history shows the gap. A failed write (disk full, database locked) is
kept as a status string for the user and retried with the backlog kept; nothing raises into
the collector.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flowscope.model import FlowRecord, NewFlow, Sample
from flowscope.store import Store, StoreError

DEFAULT_MAX_BACKLOG = 1_000_000


@dataclass(slots=True)
class _Tick:
    records: Sequence[FlowRecord]
    sample: Sample | None
    events: Sequence[NewFlow]

    @property
    def size(self) -> int:
        return len(self.records) + len(self.events)


class Writer:
    """Writes ticks to a Store from its own thread.

    ``submit()`` is all the collector calls per tick; ``close()`` flushes at the end. The
    attributes below are safe to read from any thread (for a status line)."""

    def __init__(
        self,
        store: Store | Path | str | None = None,
        *,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        retain_seconds: float | None = None,
        max_bytes: int | None = None,
        prune_interval: float = 60.0,
        rollup_interval: float = 60.0,
        retry_interval: float = 1.0,
    ) -> None:
        """Open (or take) the store now, so a bad path or a too-new file fails in the caller,
        and start the thread."""
        self.store = store if isinstance(store, Store) else Store(store)
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
        #: Ticks committed, and the seconds their transactions took in all (write latency).
        self.writes = 0
        self.write_seconds = 0.0
        self._unreported_drops = 0
        self._ticks: collections.deque[_Tick] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abandon = False
        self._thread = threading.Thread(target=self._run, name="flowscope-writer", daemon=True)
        self._thread.start()

    def submit(
        self,
        records: Sequence[FlowRecord],
        sample: Sample | None,
        events: Sequence[NewFlow],
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
            tick = _Tick(records, sample, events)
            self._ticks.append(tick)
            self.backlog += tick.size
            self._cond.notify()

    def close(self, timeout: float | None = None) -> bool:
        """Write everything queued, stop the thread and close the store. True when all was
        written; False if ``timeout`` passed first (what was left is lost, and ``status``
        says why)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                self._abandon = True
                self._cond.notify()
            self._thread.join(self.retry_interval + 5.0)
        flushed = not self._ticks
        if not self._thread.is_alive():
            try:
                self.store.close()
            except StoreError as e:
                self.status = str(e)
        return flushed

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
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
                self.status = f"{e}; {self.backlog} records waiting, retrying"
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
        started = time.perf_counter()
        self.store.write_tick(tick.records, tick.sample, tick.events, records_dropped=drops)
        elapsed = time.perf_counter() - started
        with self._cond:
            self.writes += 1
            self.write_seconds += elapsed
            self._ticks.popleft()
            self.backlog -= tick.size
            self._unreported_drops -= drops
            self.written += len(tick.records)
