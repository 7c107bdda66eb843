"""Sinks made of other sinks, so one recording can feed history and an export at once.

The recorder hands every tick to exactly one sink; ``Tee(writer, exporter)`` is how it reaches
the SQLite writer and an IPFIX exporter (and whatever comes later) without knowing of either.
"""

from __future__ import annotations

from collections.abc import Sequence

from flowscope.collect.recorder import Sink
from flowscope.model import FlowRecord, NewFlow, PendingFlows, Sample


class Tee:
    """Hands every tick to each sink in order; ``close()`` closes them all and returns what the
    first one returned (the writer's "all written" flag, when it comes first)."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks

    def submit(
        self,
        records: list[FlowRecord],
        sample: Sample | None,
        events: list[NewFlow],
        pending: Sequence[PendingFlows] | None = None,
    ) -> None:
        for sink in self.sinks:
            sink.submit(records, sample, events, pending)

    def check(self) -> None:
        for sink in self.sinks:
            sink.check()

    def close(self) -> object:
        """Close every sink, even when one of them raises (the first error is re-raised once
        all are closed)."""
        results: list[object] = []
        error: BaseException | None = None
        for sink in self.sinks:
            try:
                results.append(sink.close())
            except BaseException as e:  # close the others before letting it out
                error = error or e
        if error is not None:
            raise error
        return results[0] if results else None


def tee(first: Sink, *others: Sink | None) -> Sink:
    """``first`` alone when there is nothing else to feed, else a Tee of it and the others."""
    rest: Sequence[Sink] = [s for s in others if s is not None]
    return Tee(first, *rest) if rest else first
