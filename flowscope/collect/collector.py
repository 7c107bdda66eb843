"""Turn kernel map snapshots and ring buffer events into ticks: rates, records, samples.

Every tick reads both flow maps (a batched read), matches each flow to the previous tick's
snapshot, and computes per-flow and total rates from the deltas. Expiry follows NetFlow/IPFIX
exporters: a flow idle longer than the idle timeout (shorter after FIN or RST) is removed from
the kernel map with lookup-and-delete, so packets counted between the read and the delete are
not lost, and becomes a finished record; a flow that lives longer than the active timeout is
written as a record every active timeout and stays; above the map's high-water mark the idlest
flows are evicted early.

All of it is vectorised with numpy, so a tick over a million flows creates Python objects only
for the records it writes. Flows are matched between ticks by a 64-bit fingerprint of the key:
a collision (about 1 in 10^7 ticks at a million flows) would only blur one tick's rate of two
flows; records always come from the kernel's own counters.

About 460 lines: one tick is one algorithm (read, match, rate, expire, record) over one
state; split, its invariants (every packet in exactly one record) would span modules.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np

from flowscope import abi
from flowscope.collect.drops import DropTable
from flowscope.collect.flood import FloodParts, FlowGroups
from flowscope.collect.health import HealthTable
from flowscope.collect.owners import OwnerTable
from flowscope.collect.resets import ResetTable
from flowscope.model import (
    NO_DROPS,
    NO_KINDS,
    NO_RESETS,
    NO_TCP,
    RETRANS_KINDS,
    FlowBatch,
    FlowEvent,
    FlowRecord,
    NewFlow,
    PendingFlows,
    PendingHealth,
    Sample,
    keys_from_rows,
    take_rows,
)
from flowscope.vocab import MAP_HIGH_WATER

TCP_FIN = 0x01
TCP_RST = 0x04
U64 = np.uint64
_MASK64 = (1 << 64) - 1


class FlowSource(Protocol):
    """What the collector needs from the probe (FlowProgram), so tests can give it snapshots."""

    flow_entries: int
    map_bytes: int
    """Locked kernel memory of the flow maps (kernel.memory), for the status lines."""

    def read_flows(self, family: int) -> FlowBatch: ...

    def take_flows(self, family: int, keys: np.ndarray) -> tuple[np.ndarray, FlowBatch]: ...

    def read_counters(self) -> dict[abi.Counter, int]: ...

    def take_floods(self) -> tuple[np.ndarray, np.ndarray]: ...

    def open_events(self, callback: Callable[[FlowEvent], None]) -> None: ...

    def poll_events(self, timeout_ms: int = 0) -> None: ...


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    """How the collector ticks and expires flows (NetFlow-like defaults)."""

    interval: float = 1.0
    """Seconds between ticks."""
    idle_timeout: float = 15.0
    """A flow with no packet for this long is finished."""
    fin_timeout: float = 2.0
    """Idle timeout after a FIN or RST was seen."""
    active_timeout: float = 60.0
    """A live flow is written as a record this often."""
    max_records: int = 32_768
    """Records a tick makes at most per family: flows that end (taken out of the kernel map one
    call each) and then active-timeout records, about 10 us a flow here. The rest wait for the
    next ticks, as flows that are idle (or due) a little longer, their records as exact: a
    flood of a million flows that stops then ends over 31 ticks well under the interval, not
    in one of ten seconds in which nothing else is read."""
    high_water: float = MAP_HIGH_WATER
    """Fill ratio of a kernel map above which the idlest flows are evicted early."""
    low_water: float = 0.8
    """Fill ratio eviction brings a map down to."""


def fingerprints(keys: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint of each key (FNV-style mixing of its 64-bit words: kernel keys are
    padded to whole words). Each round is a bijection, so keys that differ in one word never
    share a fingerprint."""
    words = np.ascontiguousarray(keys).view(U64).reshape(len(keys), keys.dtype.itemsize // 8)
    h = np.full(len(keys), 0xCBF29CE484222325, dtype=U64)
    with np.errstate(over="ignore"):
        for i in range(words.shape[1]):
            h ^= words[:, i]
            h *= U64(0x100000001B3)
            h ^= h >> U64(29)
    return h


def sort_order(fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The permutation that sorts the fingerprints ``fp`` (uint64), and ``fp`` in that order.

    numpy sorts plain uint64 values with SIMD several times faster than it argsorts them, so
    each fingerprint's row number replaces its lowest bits, the values are sorted, and the row
    numbers read back out: the rows then come in the order of their fingerprints' upper bits.
    Fingerprints that share those upper bits (a pair or so in a million flows) are then next to
    each other, maybe in the wrong order, and each such run is put in order on its own."""
    n = len(fp)
    bits = max(1, (n - 1).bit_length())
    if n < 2 or bits > 32:
        order = np.argsort(fp)
        return order, fp[order]
    low = U64((1 << bits) - 1)
    packed = (fp & ~low) | np.arange(n, dtype=U64)
    packed.sort()
    order = (packed & low).astype(np.intp)
    ranked = fp[order]
    for i in np.flatnonzero(ranked[1:] < ranked[:-1]):
        upper = ranked[i] & ~low
        start, end = int(i), int(i) + 2
        while start > 0 and ranked[start - 1] & ~low == upper:
            start -= 1
        while end < n and ranked[end] & ~low == upper:
            end += 1
        run = np.argsort(ranked[start:end], kind="stable")
        order[start:end] = order[start:end][run]
        ranked[start:end] = ranked[start:end][run]
    return order, ranked


def counter_delta(current: int, previous: int) -> int:
    """Delta of a 64-bit kernel counter, across a wrap."""
    return (current - previous) & _MASK64


@dataclass
class _FamilyState:
    """What the previous tick knew about one family's flows, sorted by fingerprint."""

    fp: np.ndarray = field(default_factory=lambda: np.zeros(0, U64))
    packets: np.ndarray = field(default_factory=lambda: np.zeros(0, U64))
    bytes: np.ndarray = field(default_factory=lambda: np.zeros(0, U64))
    # already written in active-timeout records:
    exp_packets: np.ndarray = field(default_factory=lambda: np.zeros(0, U64))
    exp_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0, U64))
    exp_ip_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0, U64))
    record_start: np.ndarray = field(default_factory=lambda: np.zeros(0, U64))
    owner: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    """Each flow's Owner or None (object array; all None without an OwnerTable)."""
    owner_generation: int = -1
    """OwnerTable.generation when the owners were last looked up."""
    group: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    """Each flow's row in its family's FlowGroups (the flood shape's prefix and target)."""


@dataclass(frozen=True, slots=True)
class LiveFlows:
    """One family's live flows after a tick, with per-flow rates (arrays, for the console)."""

    batch: FlowBatch
    bps: np.ndarray
    pps: np.ndarray
    owner: np.ndarray | None = None
    """Each flow's Owner or None (an object array), None when processes are not watched."""
    retrans: np.ndarray | None = None
    """Each flow's connection's retransmitted segments so far (NO_TCP where none; the received
    flow 0), None when TCP health is not followed."""
    rtt_us: np.ndarray | None = None
    """Each flow's connection's smoothed RTT in microseconds (NO_TCP where none)."""
    drops: np.ndarray | None = None
    """Each flow's packets the kernel dropped since flowscope started, None when drops are
    not followed."""
    drop_reason: np.ndarray | None = None
    """Each flow's drops' main reason (an object array: str, or None without drops)."""
    resets: np.ndarray | None = None
    """Each TCP flow's resets since flowscope started (sent in a sent flow, received in a
    received one), None when resets are not followed."""
    retrans_kinds: np.ndarray | None = None
    """Each flow's connection's retransmissions so far by kind (n x 3, model.RETRANS_KINDS;
    NO_TCP where not told), None when TCP health is not followed."""


@dataclass(frozen=True, slots=True)
class Tick:
    """Everything one tick produced."""

    sample: Sample
    records: list[FlowRecord]
    events: list[NewFlow]
    live: list[LiveFlows]
    evicted: int
    interfaces: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    """(packets, bytes) counted this tick per (interface name, direction): the per-interface
    share of the sample's totals, for counters that must add up exactly (the metrics)."""
    duration: float = 0.0
    """Seconds the tick took (reading the maps, expiry, counters)."""
    flow_packets: int = 0
    """Packets this tick added to flows (live and finished): with the sample's unattributed
    counter, the kernel's packet delta, up to packets that arrived while the tick read."""
    flow_bytes: int = 0
    pending: list[PendingFlows] = field(default_factory=list)
    """Per family, what the live flows hold that no record holds yet (what history keeps so
    that a crash loses at most one tick)."""
    links: dict[str, str] = field(default_factory=dict)
    """Each watched interface's state after the tick, 'up', 'down' or 'gone' (the recorder
    fills it from its probe.links.LinkWatch; empty when nothing watches them)."""
    drops: dict[str, int] = field(default_factory=dict)
    """Packets the kernel dropped in flowscope's network namespace this tick, per reason
    (empty when drops are not followed)."""


def _event_time(event: FlowEvent) -> int:
    return event.timestamp


class Collector:
    """Reads a FlowSource every tick and keeps the state rates and expiry need."""

    def __init__(
        self,
        source: FlowSource,
        settings: CollectorSettings | None = None,
        *,
        iface_names: dict[int, str] | None = None,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        wall_time: Callable[[], float] = time.time,
        owners: OwnerTable | None = None,
        health: HealthTable | None = None,
        drops: DropTable | None = None,
        resets: ResetTable | None = None,
    ) -> None:
        self.source = source
        self.owners = owners
        """Which process owns each flow's local socket (None: not watched)."""
        self.health = health
        """The retransmissions and RTT of each local TCP connection (None: not followed)."""
        self.drops = drops
        """What the kernel dropped, per flow and reason (None: not followed)."""
        self.resets = resets
        """The TCP resets the kernel sent and received, per flow (None: not followed)."""
        self.settings = settings or CollectorSettings()
        self.iface_names = iface_names or {}
        self._mono = monotonic_ns
        self._wall = wall_time
        # kernel times are CLOCK_MONOTONIC ns, as time.monotonic_ns(); this maps them to Unix time
        self._wall_offset = wall_time() - monotonic_ns() / 1e9
        self._state = {abi.AF_INET: _FamilyState(), abi.AF_INET6: _FamilyState()}
        self._groups = {family: FlowGroups(family) for family in self._state}
        # The kernel's counters, like its maps, count from the program's load: the first
        # tick's deltas are all of it, as the flows it reads are. (A baseline read here once
        # left out the packets that came between attaching and this moment, which the flows
        # and their records had: the samples of a recording then said fewer than its flows.)
        self._counters: dict[abi.Counter, int] = {}
        self._sockets_lost = owners.lost if owners is not None else 0
        self._last_tick_ns = monotonic_ns()
        self._events: list[FlowEvent] = []
        source.open_events(self._events.append)

    def wall(self, mono_ns: int) -> float:
        """Unix time of a kernel timestamp."""
        return mono_ns / 1e9 + self._wall_offset

    def iface(self, ifindex: int) -> str:
        """The name of an interface, or its index when unknown."""
        return self.iface_names.get(ifindex, str(ifindex))

    # -- one tick ------------------------------------------------------------------------

    def tick(self) -> Tick:
        """Read the maps, compute rates, expire flows; returns what happened."""
        started = time.perf_counter()
        self.source.poll_events(0)
        if self.owners is not None:
            self.owners.refresh()
        if self.health is not None:
            self.health.refresh()
        if self.drops is not None:
            self.drops.refresh()
        if self.resets is not None:
            self.resets.refresh()
        now = self._mono()
        elapsed = max((now - self._last_tick_ns) / 1e9, 1e-9)
        self._last_tick_ns = now
        records: list[FlowRecord] = []
        live: list[LiveFlows] = []
        pending: list[PendingFlows] = []
        total_bytes = 0
        total_packets = 0
        evicted = 0
        interfaces: dict[tuple[str, int], tuple[int, int]] = {}
        shape = FloodParts()
        for family in (abi.AF_INET, abi.AF_INET6):
            out = self._tick_family(family, now, elapsed, records, shape)
            live.append(out.live)
            pending.append(out.pending)
            total_bytes += out.delta_bytes
            total_packets += out.delta_packets
            evicted += out.evicted
            for (ifindex, direction), (p, b) in out.interfaces.items():
                key = (self.iface(ifindex), direction)
                p0, b0 = interfaces.get(key, (0, 0))
                interfaces[key] = (p0 + p, b0 + b)
        shape.add_table(*self.source.take_floods())
        counters = self.source.read_counters()
        deltas = {
            c.name.lower(): counter_delta(counters[c], self._counters.get(c, 0))
            for c in abi.Counter
        }
        self._counters = counters
        if self.owners is not None:
            # sockets whose announcement the kernel lost: their flows have no process
            deltas["sockets_lost"] = counter_delta(self.owners.lost, self._sockets_lost)
            self._sockets_lost = self.owners.lost
        if self.health is not None:  # the host's retransmissions this tick, and by kind
            deltas["retrans"] = self.health.retrans_delta
            if self.health.kinds:
                for kind, n in zip(RETRANS_KINDS, self.health.kind_deltas.tolist(), strict=True):
                    deltas[f"retrans_{kind}"] = n
        dropped: dict[str, int] = {}
        if self.drops is not None:
            dropped = self.drops.reason_deltas()
            deltas["drops"] = sum(dropped.values())
            deltas["drops_unattributed"] = self.drops.unattributed_delta()
            deltas["drops_missed"] = self.drops.missed_delta()
        if self.resets is not None:  # the host's resets this tick
            deltas["resets_sent"], deltas["resets_received"] = self.resets.deltas()
        # in time order: records of several CPUs (or replay processes) interleave in the ring
        self._events.sort(key=_event_time)
        events = [
            NewFlow(
                time=self.wall(e.timestamp),
                key=e.key,
                iface=self.iface(e.key.ifindex),
                length=e.length,
                map_full=e.map_full,
            )
            for e in self._events
        ]
        self._events.clear()
        # The totals are the kernel's own: every packet the interfaces gave the programs, also
        # those no flow could take (a full map, not IP, unusable) -- in a flood that is most
        # of them, and a rate from the flows alone would hide the flood.
        unattributed = deltas["map_full"] + deltas["non_ip"] + deltas["malformed"]
        sample = Sample(
            time=self.wall(now),
            interval=elapsed,
            bps=deltas["bytes"] * 8 / elapsed,
            pps=deltas["packets"] / elapsed,
            active_flows=sum(len(lf.batch) for lf in live),
            new_flows=deltas["flows_created"],
            counters=deltas | {"evicted": evicted, "unattributed": unattributed},
            flood=shape.shape(deltas["flood_other"], elapsed),
            map_fill=max((len(lf.batch) for lf in live), default=0) / self.source.flow_entries,
            map_bytes=self.source.map_bytes,
        )
        return Tick(
            sample=sample,
            records=records,
            events=events,
            live=live,
            evicted=evicted,
            interfaces=interfaces,
            duration=time.perf_counter() - started,
            flow_packets=total_packets,
            flow_bytes=total_bytes,
            pending=pending,
            drops=dropped,
        )

    def shutdown(self) -> list[FlowRecord]:
        """Every live flow as a record with end reason 'shutdown' (the maps are left as they
        are: detaching the program frees them)."""
        records: list[FlowRecord] = []
        if self.owners is not None:  # sockets of the last moments: their flows are here too
            self.owners.refresh()
        if self.health is not None:
            self.health.refresh()
        if self.drops is not None:
            self.drops.refresh()
        if self.resets is not None:
            self.resets.refresh()
        for family in (abi.AF_INET, abi.AF_INET6):
            batch = self.source.read_flows(family)
            st = self._state[family]
            pos, found = self._match(st, fingerprints(batch.keys))
            exp_p, exp_b, exp_ip, start = self._carry(st, batch, pos, found)
            owner = self._owners(st, batch, pos, found)
            tcp = self._tcp(batch)
            dropped = self.drops.join(batch)[0] if self.drops is not None else None
            reset = self.resets.join(batch) if self.resets is not None else None
            every = np.arange(len(batch))
            idx = np.flatnonzero(
                (batch.packets > exp_p) | self._owing(batch, every, exp_p, tcp, dropped, reset)
            )
            records.extend(
                self._records(
                    batch, idx, idx, ["shutdown"] * len(idx), batch, exp_p, exp_b, exp_ip,
                    start, owner, tcp, dropped, reset,
                )
            )  # fmt: skip
        return records

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _match(st: _FamilyState, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each current fingerprint: its row in the previous state, and whether it was
        there at all."""
        if not len(st.fp) or not len(fp):
            return np.zeros(len(fp), np.intp), np.zeros(len(fp), bool)
        pos = np.minimum(np.searchsorted(st.fp, fp), len(st.fp) - 1)
        return pos, st.fp[pos] == fp

    def _carry(
        self, st: _FamilyState, batch: FlowBatch, pos: np.ndarray, found: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per current flow: what was already exported, and when its current record began."""
        if not found.any():
            zero = np.zeros(len(batch), U64)
            return zero, zero.copy(), zero.copy(), batch.first_seen.copy()
        # a flow the kernel counts from zero again (it was deleted and re-created) owes
        # nothing to what an earlier incarnation exported
        known = found & (batch.packets >= st.exp_packets[pos])
        nothing = U64(0)
        return (
            np.where(known, st.exp_packets[pos], nothing),
            np.where(known, st.exp_bytes[pos], nothing),
            np.where(known, st.exp_ip_bytes[pos], nothing),
            np.where(known, np.maximum(st.record_start[pos], batch.first_seen), batch.first_seen),
        )

    def _owners(
        self, st: _FamilyState, batch: FlowBatch, pos: np.ndarray, found: np.ndarray
    ) -> np.ndarray:
        """Each current flow's owner: carried from the previous tick, looked up for new flows,
        and looked up again for flows without one when sockets were added since (a server
        accepts, or a client's socket is announced, a moment after its first packet)."""
        table = self.owners
        if table is None:
            return cast(np.ndarray, _NO_OWNERS)
        owner = np.full(len(batch), None, dtype=object)
        if len(st.owner) and found.any():
            owner[found] = st.owner[pos[found]]
        need = ~found
        if table.generation != st.owner_generation:
            # elementwise in C: a Python loop over every live flow cost the tick per flow
            need = need | np.asarray(owner == None, dtype=bool)  # noqa: E711
        idx = np.flatnonzero(need)
        if len(idx):
            owner[idx] = table.join(batch, idx)
        return owner

    def _owing(
        self,
        batch: FlowBatch,
        rows: np.ndarray,
        exp_p: np.ndarray,
        tcp: TcpArrays | None,
        dropped: np.ndarray | None,
        reset: np.ndarray | None,
    ) -> np.ndarray:
        """Per flow (of ``rows``; False for the others): whether it has no packets since its
        last record but retransmissions, drops or resets no record holds yet. A flow that ends
        (expires, is evicted, or flowscope stops) owes them a last record then, with no
        packets: a retransmission the kernel counted and failed to send, or a drop or
        retransmission its hook counted just after a tick had read the flow with that packet,
        comes with no packet after it, and nothing would write it otherwise. A Python step
        only for flows that have any."""
        idle = np.zeros(len(batch), bool)
        idle[rows] = batch.packets[rows] <= exp_p[rows]
        owed = self._pending_health(batch, tcp, dropped, reset, only=idle)
        if owed is None:  # nothing but packets is followed: nothing is owed
            return np.zeros(len(batch), bool)
        return np.asarray(idle & owed.owed(), bool)

    def _tcp(self, batch: FlowBatch) -> TcpArrays | None:
        """Each current flow's connection: retransmissions so far, RTT, minimum RTT, socket
        cookie (None when TCP health is not followed)."""
        return None if self.health is None else self.health.join(batch)

    def _tcp_of(self, tcp: TcpArrays | None, i: int | np.integer[Any]) -> TcpOf:
        """Flow i's (retransmissions no record holds yet, RTT, minimum RTT) for a record it
        gets now. What is written is counted per connection (HealthTable.take), not per flow:
        a connection idle past the timeout loses its flow, and the flow that comes back with
        its next packets must not write the same retransmissions again."""
        if tcp is None or self.health is None:
            return (NO_TCP, NO_TCP, NO_TCP, NO_KINDS)
        retrans, srtt, rtt_min, cookie, kinds = tcp
        total = int(retrans[i])
        if total < 0:
            return (NO_TCP, int(srtt[i]), int(rtt_min[i]), NO_KINDS)
        c = int(cookie[i])
        new = self.health.take(c, total)
        return (new, int(srtt[i]), int(rtt_min[i]), self.health.take_kinds(c, kinds[i]))

    def _records(
        self,
        src: FlowBatch,
        rows: np.ndarray,
        at: np.ndarray,
        ends: list[str],
        batch: FlowBatch,
        exp_p: np.ndarray,
        exp_b: np.ndarray,
        exp_ip: np.ndarray,
        start: np.ndarray,
        owner: np.ndarray,
        tcp: TcpArrays | None,
        dropped: np.ndarray | None,
        reset: np.ndarray | None,
    ) -> list[FlowRecord]:
        """Records of what was not yet written for ``rows`` of ``src`` (the read, or the
        final counters of the flows taken), in that order, ending for ``ends``; ``at`` gives the
        same flows' rows in ``batch`` and in the arrays carried with it (what was written:
        ``exp_*``, record start, owner, TCP health, and the drops and resets so far that
        DropTable.join and ResetTable.join gave).

        Made from whole columns (the keys by model.keys_from_rows, the times in one numpy
        expression, as wall() gives them): a flood that stops, a mass disconnect or a shutdown
        ends hundreds of thousands of flows in one tick, and a record at a time took 36 us a
        flow. What no record holds yet of the TCP health, drops and resets is taken from
        their tables (which count what each record holds) only where they are followed, and
        only for the flows that have any: the TCP connections, the flows with drops, those
        with resets (asking for every flow cost 20 us a flow, most of an ending tick in
        `record`)."""
        if not len(rows):
            return []
        keys = keys_from_rows(src.family, take_rows(src.keys, rows))
        iface = {i: self.iface(i) for i in np.unique(src.keys["ifindex"][rows]).tolist()}
        signed = np.int64
        packets = src.packets[rows].astype(signed) - exp_p[at].astype(signed)
        nbytes = src.bytes[rows].astype(signed) - exp_b[at].astype(signed)
        ip_bytes = src.ip_bytes[rows].astype(signed) - exp_ip[at].astype(signed)
        first = start[at].astype(np.float64) / 1e9 + self._wall_offset
        last = src.last_seen[rows].astype(np.float64) / 1e9 + self._wall_offset
        where = at.tolist()
        owners = owner[at].tolist() if self.owners is not None else [None] * len(where)
        tcps: list[TcpOf] = [(NO_TCP, NO_TCP, NO_TCP, NO_KINDS)] * len(where)
        if tcp is not None and self.health is not None:
            # what _tcp_of gives a flow that is no TCP connection followed, without a call each
            srtt, rtt_min = tcp[1][at].tolist(), tcp[2][at].tolist()
            tcps = [(NO_TCP, s, m, NO_KINDS) for s, m in zip(srtt, rtt_min, strict=True)]
            for n in np.flatnonzero(tcp[0][at] >= 0).tolist():
                tcps[n] = self._tcp_of(tcp, where[n])
        drops: list[tuple[int, str]] = [(NO_DROPS, "")] * len(where)
        if self.drops is not None and dropped is not None:
            drops = [(0, "")] * len(where)
            some = np.flatnonzero(dropped[at] > 0)
            taken = self.drops.take(batch, at[some].tolist())
            for n, d in zip(some.tolist(), taken, strict=True):
                drops[n] = d
        resets: list[int] = [NO_RESETS] * len(where)
        if self.resets is not None and reset is not None:
            resets = [0] * len(where)
            some = np.flatnonzero(reset[at] > 0)
            taken_resets = self.resets.take(batch, at[some].tolist())
            for n, count in zip(some.tolist(), taken_resets, strict=True):
                resets[n] = count
        columns = zip(
            keys,
            packets.tolist(),
            nbytes.tolist(),
            ip_bytes.tolist(),
            first.tolist(),
            last.tolist(),
            src.tcp_flags[rows].tolist(),
            ends,
            owners,
            tcps,
            drops,
            resets,
            strict=True,
        )
        # t: (retransmissions, RTT, minimum RTT, kinds) as _tcp_of gives them; d: (drops, reason)
        return [
            FlowRecord(
                key, iface[key.ifindex], p, b, ip, f, la, flags, end, o, t[0], t[3], t[1], t[2],
                d[0], d[1], r,
            )
            for key, p, b, ip, f, la, flags, end, o, t, d, r in columns
        ]  # fmt: skip

    def _tick_family(
        self,
        family: int,
        now: int,
        elapsed: float,
        records: list[FlowRecord],
        shape: FloodParts,
    ) -> _FamilyTick:
        s = self.settings
        st = self._state[family]
        read = self.source.read_flows(family)
        # The flows in fingerprint order (their order in a read means nothing): the previous
        # state is in that order too, so the match searches sorted needles, every lookup in
        # the previous state below goes forward through memory instead of jumping, and the
        # next state is the surviving rows as they are.
        order, fp = sort_order(fingerprints(read.keys))
        batch = _select(read, order)
        n = len(batch)
        pos, found = self._match(st, fp)

        # deltas against the previous tick (a flow not seen before: all of it is new)
        if found.any():
            known = found & (batch.packets >= st.packets[pos])
            d_packets = batch.packets - np.where(known, st.packets[pos], U64(0))
            d_bytes = batch.bytes - np.where(known, st.bytes[pos], U64(0))
        else:
            d_packets, d_bytes = batch.packets, batch.bytes
        exp_p, exp_b, exp_ip, start = self._carry(st, batch, pos, found)
        owner = self._owners(st, batch, pos, found)
        groups = self._groups[family]
        group = groups.assign(batch.keys, st.group[pos] if found.any() else None, found)
        tcp = self._tcp(batch)
        dropped, reasons = self.drops.join(batch) if self.drops is not None else (None, None)
        reset = self.resets.join(batch) if self.resets is not None else None

        # expiry decisions, on kernel (monotonic) times
        age = now - batch.last_seen.view(np.int64)
        idle = age > int(s.idle_timeout * 1e9)
        fin_or_rst = (batch.tcp_flags & (TCP_FIN | TCP_RST)) != 0
        idle |= fin_or_rst & (age > int(s.fin_timeout * 1e9))
        evict = np.zeros(n, bool)
        high = int(s.high_water * self.source.flow_entries)
        if n > high:
            low = int(s.low_water * self.source.flow_entries)
            remaining = np.nonzero(~idle)[0]
            excess = n - int(idle.sum()) - low
            if excess > 0:
                idlest = remaining[np.argsort(batch.last_seen[remaining], kind="stable")]
                evict[idlest[:excess]] = True
        take = idle | evict
        if int(take.sum()) > s.max_records:
            # evictions first (the map is above its high-water mark), then idle flows
            first = np.concatenate((np.flatnonzero(evict), np.flatnonzero(idle & ~evict)))
            take = np.zeros(n, bool)
            take[first[: s.max_records]] = True
            evict &= take
        active = (
            ~take
            & (batch.packets > exp_p)
            & ((now - start.view(np.int64)) >= int(s.active_timeout * 1e9))
        )
        room = s.max_records - int(take.sum())
        if int(active.sum()) > room:
            active[np.flatnonzero(active)[room:]] = False

        # remove finished flows from the kernel; the final counters include any packet that
        # arrived after the read
        keep = ~take
        extra_p = extra_b = 0
        taken = np.nonzero(take)[0]
        # per-interface deltas, with what arrived between the read and the take (below)
        d_packets_all, d_bytes_all = d_packets, d_bytes
        if len(taken):
            d_packets_all, d_bytes_all = d_packets.copy(), d_bytes.copy()
            found, final = self.source.take_flows(family, batch.keys[taken])
            got = taken[found]
            extra_p = int((final.packets - batch.packets[got]).sum())
            extra_b = int((final.bytes - batch.bytes[got]).sum())
            d_packets_all[got] += final.packets - batch.packets[got]
            d_bytes_all[got] += final.bytes - batch.bytes[got]
            owing = self._owing(batch, taken, exp_p, tcp, dropped, reset)
            due = np.flatnonzero((final.packets > exp_p[got]) | owing[got])
            ends = np.where(
                evict[got[due]],
                "evicted",
                np.where(
                    (final.tcp_flags[due] & TCP_RST) != 0,
                    "rst",
                    np.where((final.tcp_flags[due] & TCP_FIN) != 0, "fin", "idle"),
                ),
            )
            records.extend(
                self._records(
                    final, due, got[due], ends.tolist(), batch, exp_p, exp_b, exp_ip, start,
                    owner, tcp, dropped, reset,
                )
            )  # fmt: skip

        shape.add_flows(
            family, batch.keys, d_packets_all, d_bytes_all, batch.tcp_flags, groups, group
        )

        # active-timeout records for long-lived flows
        due = np.flatnonzero(active)
        records.extend(
            self._records(
                batch, due, due, ["active"] * len(due), batch, exp_p, exp_b, exp_ip, start,
                owner, tcp, dropped, reset,
            )
        )  # fmt: skip
        exp_p[active] = batch.packets[active]
        exp_b[active] = batch.bytes[active]
        exp_ip[active] = batch.ip_bytes[active]
        start[active] = batch.last_seen[active]

        # the state the next tick matches against: surviving flows, still sorted by fingerprint
        survivors: np.ndarray | slice = keep if len(taken) else slice(None)
        st.fp = fp[survivors]
        st.packets = batch.packets[survivors]
        st.bytes = batch.bytes[survivors]
        st.exp_packets = exp_p[survivors]
        st.exp_bytes = exp_b[survivors]
        st.exp_ip_bytes = exp_ip[survivors]
        st.record_start = start[survivors]
        st.group = groups.prune(group[survivors])
        if self.owners is not None:
            st.owner = owner[survivors]
            st.owner_generation = self.owners.generation

        rows: np.ndarray | slice = keep if len(taken) else slice(None)  # no copies if all stay
        return _FamilyTick(
            live=LiveFlows(
                batch=_select(batch, keep) if len(taken) else batch,
                bps=d_bytes[rows].astype(np.float64) * 8 / elapsed,
                pps=d_packets[rows].astype(np.float64) / elapsed,
                owner=owner[rows] if self.owners is not None else None,
                retrans=tcp[0][rows] if tcp is not None else None,
                rtt_us=tcp[1][rows] if tcp is not None else None,
                drops=dropped[rows] if dropped is not None else None,
                drop_reason=reasons[rows] if reasons is not None else None,
                resets=reset[rows] if reset is not None else None,
                retrans_kinds=tcp[4][rows] if tcp is not None else None,
            ),
            delta_bytes=int(d_bytes.sum()) + extra_b,
            delta_packets=int(d_packets.sum()) + extra_p,
            evicted=int(evict.sum()),
            interfaces=_per_interface(batch.keys, d_packets_all, d_bytes_all),
            pending=PendingFlows(
                batch,
                rows,
                exp_p,
                exp_b,
                exp_ip,
                start,
                self._wall_offset,
                self.iface_names,
                owner if self.owners is not None else None,
                self._pending_health(batch, tcp, dropped, reset),
            ),
        )

    def _pending_health(
        self,
        batch: FlowBatch,
        tcp: TcpArrays | None,
        dropped: np.ndarray | None,
        reset: np.ndarray | None = None,
        only: np.ndarray | None = None,
    ) -> PendingHealth | None:
        """Each flow's TCP health and drops that no record holds yet (after this tick's
        records took theirs), for history's pending rows: a crash or a live query then has
        them too. A Python step only for flows with retransmissions or drops (and, with
        ``only``, a mask, only for those rows: the others keep their totals)."""
        if self.health is None and self.drops is None and self.resets is None:
            return None
        n = len(batch)
        rows = np.ones(n, bool) if only is None else only
        none = np.full(n, NO_TCP, np.int64)
        retrans, rtt, rtt_min = none, none, none
        if tcp is not None and self.health is not None:
            retrans, rtt, rtt_min = tcp[0].copy(), tcp[1], tcp[2]
            for i in np.flatnonzero(rows & (retrans > 0)).tolist():
                retrans[i] = self.health.unwritten(int(tcp[3][i]), int(retrans[i]))
        drops = np.full(n, NO_DROPS, np.int64)
        names = np.full(n, None, object)
        if dropped is not None and self.drops is not None:
            drops = dropped.copy()
            some = np.flatnonzero(rows & (dropped > 0)).tolist()
            for i, (count, reason) in zip(some, self.drops.peek(batch, some), strict=True):
                drops[i], names[i] = count, reason or None
        resets = None
        if reset is not None and self.resets is not None:
            resets = reset.copy()
            some = np.flatnonzero(rows & (reset > 0)).tolist()
            resets[some] = self.resets.peek(batch, some)
        return PendingHealth(retrans, rtt, rtt_min, drops, names, resets)


TcpArrays = tuple[np.ndarray, ...]
"""Per flow: its connection's retransmissions so far (its sent flow; 0 on the received one),
RTT, minimum RTT (NO_TCP where none), the connection's socket cookie, and its retransmissions
so far by kind (n x 3, HealthTable.join)."""
TcpOf = tuple[int, int, int, tuple[int, int, int]]
"""One flow's retransmissions no record holds yet, RTT, minimum RTT, and those
retransmissions by kind (model.RETRANS_KINDS; NO_KINDS where not told)."""


class _NoOwners:
    """The owners of every flow when processes are not watched: None, at no cost per flow."""

    def __getitem__(self, _index: object) -> None:
        return None


_NO_OWNERS: Any = _NoOwners()


@dataclass(frozen=True, slots=True)
class _FamilyTick:
    live: LiveFlows
    delta_bytes: int
    delta_packets: int
    evicted: int
    interfaces: dict[tuple[int, int], tuple[int, int]]
    pending: PendingFlows


def _per_interface(
    keys: np.ndarray, packets: np.ndarray, nbytes: np.ndarray
) -> dict[tuple[int, int], tuple[int, int]]:
    """Sum per-flow deltas per (ifindex, direction); a handful of groups, one pass each."""
    if not len(keys):
        return {}
    group = keys["ifindex"].astype(np.int64) * 256 + keys["direction"]
    top = int(group.max())
    # which groups there are: counting is one pass where np.unique hashes or sorts
    present = np.flatnonzero(np.bincount(group)) if top < 1 << 22 else np.unique(group)
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for g in present.tolist():
        mask = group == g
        out[(g // 256, g % 256)] = (int(packets[mask].sum()), int(nbytes[mask].sum()))
    return out


def _select(batch: FlowBatch, mask: np.ndarray) -> FlowBatch:
    """The rows of batch picked by a boolean mask or an index array (np.take: a gather of a
    million rows costs half what indexing does)."""
    index = np.flatnonzero(mask) if mask.dtype == np.bool_ else mask
    keys, *values = batch.columns
    return FlowBatch.from_columns(
        batch.family, [take_rows(keys, index), *(np.take(v, index) for v in values)]
    )
