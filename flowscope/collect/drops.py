"""Packets the kernel dropped, per flow and per reason (bpf/drops.c's maps), joined with the
flows the flow programs counted them in.

A dropped packet is keyed by its own addresses, ports and device, as it travelled; the flow
programs key it the same way (a received packet in its received flow on the device it came
in on, a sent one in its sent flow), so the join is exact on (device, addresses, ports,
protocol). A drop the flow programs never saw (a device flowscope does not watch, a packet
dropped before XDP) joins no flow and counts in the per-reason totals only.

The kernel's counts are totals since the hook was loaded; a record carries the drops of its
flow that no earlier record holds, counted per (flow, reason) key as retransmissions are per
connection, so a flow that expires and comes back does not write its drops twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from flowscope import abi
from flowscope.model import FlowBatch, opaque_rows, take_rows


class DropSource(Protocol):
    """Where the drops come from (kernel.drops.DropHooks, or a test's)."""

    def read(self) -> tuple[np.ndarray, np.ndarray]: ...

    def by_reason(self) -> dict[int, int]: ...

    def unattributed(self) -> int: ...

    def missed(self) -> int: ...

    def name(self, reason: int) -> str: ...


def main_reason(by_reason: Mapping[str, int]) -> str:
    """The reason with the most drops (a tie: the first name in order), '' without drops:
    what a status line names beside the drops per second."""
    return max(sorted(by_reason), key=by_reason.__getitem__, default="")


def _join_dtype(width: int) -> np.dtype:
    return np.dtype(
        [
            ("ifindex", "<u4"),
            ("s", np.uint8, (width,)),
            ("d", np.uint8, (width,)),
            ("sp", ">u2"),
            ("dp", ">u2"),
            ("p", "u1"),
        ]
    )


_JOIN = {abi.AF_INET: _join_dtype(4), abi.AF_INET6: _join_dtype(16)}


class DropTable:
    """What the kernel dropped, as of the last refresh, per flow and per reason."""

    def __init__(self, source: DropSource | None = None) -> None:
        self.source = source
        self.written: dict[bytes, int] = {}
        """Per (flow, reason) drop key: packets records hold already."""
        self._by_reason: dict[int, int] = {}
        self._last_by_reason: dict[int, int] = {}
        self._unattributed = 0
        self._last_unattributed = 0
        self._missed = 0
        self._last_missed = 0
        # per family: sorted join keys of each (flow, reason), their drop keys, reasons, counts
        self._sorted: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self.add(np.zeros(0, abi.DROP_KEY_DTYPE), np.zeros(0, np.int64))

    def name(self, reason: int) -> str:
        return self.source.name(reason) if self.source is not None else str(reason)

    def refresh(self) -> None:
        """Read the kernel's numbers again."""
        if self.source is not None:
            keys, counts = self.source.read()
            self.add(keys, counts)
            self._by_reason = self.source.by_reason()
            self._unattributed = self.source.unattributed()
            self._missed = self.source.missed()

    def add(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Replace what is known with ``keys`` (abi.DROP_KEY_DTYPE) and their counts."""
        raw = [bytes(k) for k in opaque_rows(keys)] if self.written else []
        if raw:
            alive = set(raw)
            self.written = {k: w for k, w in self.written.items() if k in alive}
        for fam in (abi.AF_INET, abi.AF_INET6):
            sel = keys["family"] == fam
            k = keys[sel]
            void = self._rows(fam, k)
            order = np.argsort(void, kind="stable")
            self._sorted[fam] = (
                void[order],
                k[order],
                k["reason"][order].astype(np.int64),
                counts[sel][order].astype(np.int64),
            )

    @staticmethod
    def _rows(family: int, k: np.ndarray) -> np.ndarray:
        """The join key of each flow key or drop key (both have the fields; a drop key's
        addresses are 16 bytes for either family, of which IPv4 uses the first 4)."""
        width = 4 if family == abi.AF_INET else 16
        join = np.zeros(len(k), _JOIN[family])
        join["ifindex"] = k["ifindex"]
        join["s"], join["d"] = k["saddr"][:, :width], k["daddr"][:, :width]
        join["sp"], join["dp"], join["p"] = k["sport"], k["dport"], k["proto"]
        return opaque_rows(join)

    def join(self, batch: FlowBatch) -> tuple[np.ndarray, np.ndarray]:
        """Each flow's packets the kernel dropped so far (all reasons; int64), and the reason
        most of them had (an object array: the name, None without drops). Vectorised but for
        the reasons of flows that have drops (few, as drops go)."""
        known, _, reasons, counts = self._sorted[batch.family]
        out = np.zeros(len(batch), np.int64)
        names = np.full(len(batch), None, object)
        if not len(batch) or not len(known):
            return out, names
        rows = self._rows(batch.family, batch.keys)
        lo = np.searchsorted(known, rows, side="left")
        hi = np.searchsorted(known, rows, side="right")
        cum = np.concatenate(([0], np.cumsum(counts)))
        out = cum[hi] - cum[lo]
        for i in np.flatnonzero(out > 0).tolist():
            j = int(lo[i]) + int(np.argmax(counts[lo[i] : hi[i]]))
            names[i] = self.name(int(reasons[j]))
        return out, names

    def take(self, batch: FlowBatch, rows: Sequence[int]) -> list[tuple[int, str]]:
        """The drops of each flow of ``rows`` (in that order) that no record holds yet, now
        counted as written, and the reason most of them had ('' without drops)."""
        return self._unwritten(batch, rows, consume=True)

    def peek(self, batch: FlowBatch, rows: Sequence[int]) -> list[tuple[int, str]]:
        """The same as ``take``, without counting them as written (what history keeps of the
        live flows)."""
        return self._unwritten(batch, rows, consume=False)

    def _unwritten(
        self, batch: FlowBatch, rows: Sequence[int], *, consume: bool
    ) -> list[tuple[int, str]]:
        """The join keys of all ``rows`` are made and searched at once; a step each in Python
        only for the drop keys they have. A flow at a time cost 20 us, and in a flood most
        flows have drops: every tick asks for those of every live flow (the pending rows)."""
        known, dkeys, reasons, counts = self._sorted[batch.family]
        if not len(known) or not len(rows):
            return [(0, "")] * len(rows)
        wanted = self._rows(batch.family, take_rows(batch.keys, np.asarray(rows, np.intp)))
        first = np.searchsorted(known, wanted, side="left").tolist()
        ends = np.searchsorted(known, wanted, side="right").tolist()
        raw = opaque_rows(dkeys)
        written = self.written
        out: list[tuple[int, str]] = []
        for lo, hi in zip(first, ends, strict=True):
            total, best, best_n = 0, "", 0
            for j in range(lo, hi):
                key = raw[j].tobytes()
                done = written.get(key, 0)
                now = int(counts[j])
                new = now - done if now >= done else now  # the LRU forgot and counts again
                if consume:
                    written[key] = now
                total += new
                if new > best_n:
                    best, best_n = self.name(int(reasons[j])), new
            out.append((total, best))
        return out

    def missed_delta(self) -> int:
        """Drops the hook missed since the last call (DropSource.missed; the first call:
        since it was loaded): in no count at all, so said as a number."""
        d = self._missed - self._last_missed
        self._last_missed = self._missed
        return d

    def unattributed_delta(self) -> int:
        """Drops past the hook's per-flow budget since the last call (the first call: since
        the hook was loaded): in the per-reason counts, in no flow."""
        d = self._unattributed - self._last_unattributed
        self._last_unattributed = self._unattributed
        return d

    def reason_deltas(self) -> dict[str, int]:
        """Packets dropped in this namespace per reason name since the last call (the first
        call: since the hook was loaded, as the drops of the flows are)."""
        now = self._by_reason
        before = self._last_by_reason
        self._last_by_reason = dict(now)
        out: dict[str, int] = {}
        for reason, n in now.items():
            d = n - before.get(reason, 0)
            if d > 0:
                out[self.name(reason)] = out.get(self.name(reason), 0) + d
        return out
