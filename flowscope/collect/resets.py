"""TCP resets per flow (bpf/resets.c's map), joined with the flows the flow programs counted
them in.

The kernel keys a reset as the flow programs key the flow it travelled in, less the interface
(a socket has none): a reset it sent by its own addresses and ports, in the egress direction;
one it received and acted on by the sender's, ingress. So the join is exact on (direction,
addresses, ports) for TCP flows. A reset whose flow the flow programs never saw (an interface
flowscope does not watch) joins none, and still counts in the host's totals.

The kernel's counts are totals since the hooks were attached; a record carries the resets of
its flow that no earlier record holds (``written``, per reset key), so a flow that expires and
comes back does not write the same resets twice. Counts of a key only grow, but an LRU map may
forget a key and count it again from zero: a count below what was written is all new.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from flowscope import abi
from flowscope.model import FlowBatch, opaque_rows, take_rows

TCP = 6


class ResetSource(Protocol):
    """Where the resets come from (kernel.resets.ResetHooks, or a test's)."""

    def read(self) -> tuple[np.ndarray, np.ndarray]: ...


def _join_dtype(width: int) -> np.dtype:
    return np.dtype(
        [
            ("dir", "u1"),
            ("s", np.uint8, (width,)),
            ("d", np.uint8, (width,)),
            ("sp", ">u2"),
            ("dp", ">u2"),
        ]
    )


_JOIN = {abi.AF_INET: _join_dtype(4), abi.AF_INET6: _join_dtype(16)}


def _new(now: int, done: int) -> int:
    """What a key counted since ``done`` were written (all of it when the LRU forgot it)."""
    return now - done if now >= done else now


class ResetTable:
    """The resets the kernel sent and received, per flow, as of the last refresh."""

    def __init__(self, source: ResetSource | None = None) -> None:
        self.source = source
        self.written: dict[bytes, int] = {}
        """Per reset key: resets records hold already."""
        # per family: the sorted join keys, the raw reset keys and counts in the same order
        self._sorted: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._totals = {abi.DIR_INGRESS: 0, abi.DIR_EGRESS: 0}
        self._counts: dict[bytes, int] = {}
        self.add(np.zeros(0, abi.RESET_KEY_DTYPE), np.zeros(0, np.int64))

    def refresh(self) -> None:
        """Read the kernel's numbers again."""
        if self.source is not None:
            self.add(*self.source.read())

    def add(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Replace what is known with ``keys`` (abi.RESET_KEY_DTYPE) and their counts."""
        raw = [bytes(k) for k in opaque_rows(keys)]
        counts = np.asarray(counts, np.int64)
        before = self._counts
        self._counts = dict(zip(raw, counts.tolist(), strict=True))
        # the host's resets: what each key added since the last refresh
        for i, key in enumerate(raw):
            added = _new(self._counts[key], before.get(key, 0))
            self._totals[int(keys["direction"][i])] += added
        if self.written:
            self.written = {k: w for k, w in self.written.items() if k in self._counts}
        for fam in (abi.AF_INET, abi.AF_INET6):
            sel = keys["family"] == fam
            k = keys[sel]
            void = self._rows(fam, k)
            order = np.argsort(void, kind="stable")
            self._sorted[fam] = (void[order], k[order], counts[sel][order])

    @staticmethod
    def _rows(family: int, k: np.ndarray) -> np.ndarray:
        """The join key of each flow key or reset key (a reset key's addresses are 16 bytes
        for either family, of which IPv4 uses the first 4)."""
        width = 4 if family == abi.AF_INET else 16
        join = np.zeros(len(k), _JOIN[family])
        join["dir"] = k["direction"]
        join["s"], join["d"] = k["saddr"][:, :width], k["daddr"][:, :width]
        join["sp"], join["dp"] = k["sport"], k["dport"]
        return opaque_rows(join)

    def _find(self, family: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each flow key's row among the family's reset keys, and whether it has one."""
        known = self._sorted[family][0]
        n = len(keys)
        if not n or not len(known):
            return np.zeros(n, np.intp), np.zeros(n, bool)
        rows = self._rows(family, keys)
        pos = np.minimum(np.searchsorted(known, rows), len(known) - 1)
        return pos, (known[pos] == rows) & (keys["proto"] == TCP)

    def join(self, batch: FlowBatch) -> np.ndarray:
        """Each flow's resets so far (int64; 0 for a flow without, TCP or not)."""
        pos, hit = self._find(batch.family, batch.keys)
        out = np.zeros(len(batch), np.int64)
        out[hit] = self._sorted[batch.family][2][pos[hit]]
        return out

    def take(self, batch: FlowBatch, rows: Sequence[int]) -> list[int]:
        """The resets of each flow of ``rows`` (in that order) that no record holds yet, now
        counted as written."""
        return self._unwritten(batch, rows, consume=True)

    def peek(self, batch: FlowBatch, rows: Sequence[int]) -> list[int]:
        """The same as ``take``, without counting them as written (what history keeps of the
        live flows)."""
        return self._unwritten(batch, rows, consume=False)

    def _unwritten(self, batch: FlowBatch, rows: Sequence[int], *, consume: bool) -> list[int]:
        """The reset keys of all ``rows`` are found at once (as DropTable's: a refused SYN
        flood gives every flow of it a reset)."""
        if not len(rows):
            return []
        pos, hit = self._find(batch.family, take_rows(batch.keys, np.asarray(rows, np.intp)))
        _, keys, counts = self._sorted[batch.family]
        raw = opaque_rows(keys)
        written = self.written
        out: list[int] = []
        for p, h in zip(pos.tolist(), hit.tolist(), strict=True):
            if not h:
                out.append(0)
                continue
            key = raw[p].tobytes()
            now = int(counts[p])
            out.append(_new(now, written.get(key, 0)))
            if consume:
                written[key] = now
        return out

    def deltas(self) -> tuple[int, int]:
        """(sent, received): the resets the kernel sent and acted on in flowscope's network
        namespace since the last call (the first: since the hooks were attached, as the
        resets of the flows are)."""
        out = (self._totals[abi.DIR_EGRESS], self._totals[abi.DIR_INGRESS])
        self._totals = {abi.DIR_INGRESS: 0, abi.DIR_EGRESS: 0}
        return out
