"""The collector against a model of the kernel: random sequences of traffic, ticks, idle gaps,
FIN/RST, map-full bursts, early eviction and packets racing the delete, through the real
Collector with a fake kernel that counts exactly as bpf/flowscope.c does.

Invariants, checked on every step and at the end:
- per tick, the packets and bytes the tick gave to flows plus what the kernel could not give
  to a flow (map full, non-IP) equal the kernel's own counter deltas, and the sample's rates
  are those deltas over the interval;
- per flow, the records written for it sum to exactly what the kernel counted for it, and
  its records never overlap in time (a record that restarts at the flow's first packet means
  the flow was counted twice);
- per source prefix and target, the ticks' flood shapes sum to every packet sent, those the
  full map could not take included, except the ones the full flood table could not take
  either, which the shapes count as unplaced; the flows' share is what the flows got.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from flowscope import abi
from flowscope.collect.collector import Collector, CollectorSettings, Tick
from flowscope.collect.drops import DropTable
from flowscope.collect.health import HealthTable
from flowscope.collect.owners import OwnerTable
from flowscope.collect.resets import ResetTable
from flowscope.model import (
    FlowBatch,
    FlowEvent,
    FlowKey,
    FlowRecord,
    Owner,
    SocketEvent,
    pending_records,
)

SEC = 1_000_000_000
NCPU = 2
ENTRIES = 16
FLOWS = 40  # distinct 5-tuples the traffic is drawn from: more than the map holds
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


def _remote(i: int) -> str:
    """Flow i's remote address: even flows IPv4, odd ones IPv6, spread over three source
    prefixes of each family (so the flood shape has groups to tell apart)."""
    if i % 2 == 0:
        return f"198.18.{i % 3}.{i + 1}"
    return str(ipaddress.IPv6Address(f"2001:db8:0:{i % 3}::{i + 1:x}"))  # as FlowKey prints it


def _key(i: int, direction: int = abi.DIR_INGRESS) -> tuple[int, bytes]:
    """Flow i as (family, kernel key bytes): even flows IPv4, odd ones IPv6."""
    if i % 2 == 0:
        k = np.zeros(1, abi.KEY4_DTYPE)
        k[0]["saddr"] = np.frombuffer(ipaddress.ip_address(_remote(i)).packed, np.uint8)
        k[0]["daddr"] = np.frombuffer(ipaddress.ip_address("198.19.0.1").packed, np.uint8)
        family = abi.AF_INET
    else:
        k = np.zeros(1, abi.KEY6_DTYPE)
        k[0]["saddr"] = np.frombuffer(ipaddress.ip_address(_remote(i)).packed, np.uint8)
        k[0]["daddr"] = np.frombuffer(ipaddress.ip_address("2001:db8::ffff").packed, np.uint8)
        family = abi.AF_INET6
    k[0]["sport"], k[0]["dport"], k[0]["proto"], k[0]["ifindex"] = 1000 + i, 80, 6, 7
    k[0]["direction"] = direction
    return family, k.tobytes()


KEYS = [_key(i) for i in range(FLOWS)]
SENT_KEYS = [_key(i, abi.DIR_EGRESS) for i in range(FLOWS)]
"""The same flows as sent by this host (its TCP connections' sent flows)."""


def _machine_settings(examples: int) -> settings:
    """How each machine below runs: ``examples`` runs of up to 60 steps, no deadline."""
    return settings(
        max_examples=examples,
        stateful_step_count=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


def _pending(t: Tick) -> list[FlowRecord]:
    """The records a tick's pending flows stand for, as history would read them back."""
    return [
        r
        for p in t.pending
        for blob in (p.encode(),)
        for r in pending_records(
            p.batch.family, blob.data, {}, "live", blob.owners, blob.reasons, blob.resets
        )
    ]


class FakeKernel:
    """Per-CPU hash maps and counters that behave like bpf/flowscope.c's, with a clock."""

    def __init__(self, entries: int, keys: list[tuple[int, bytes]] = KEYS) -> None:
        self.keys = keys
        self.flow_entries = entries
        self.map_bytes = 0
        self.now = 1000 * SEC
        # family -> key bytes -> per-CPU rows [packets, bytes, ip_bytes, first, last, flags]
        self.maps: dict[int, dict[bytes, list[list[int]]]] = {abi.AF_INET: {}, abi.AF_INET6: {}}
        self.counters = dict.fromkeys(abi.Counter, 0)
        self.late: tuple[int, int] | None = None  # (packets, bytes) arriving during a take
        self.attributed: dict[bytes, list[int]] = defaultdict(lambda: [0, 0])
        # the flood table: (family, prefix, dport, proto, flags, direction) -> [packets, bytes]
        self.floods: dict[tuple[int, bytes, int, int, int, int], list[int]] = {}
        self.flood_entries = 3
        # the truth per (prefix, proto, dport, direction): [placed packets, of them in flows]
        self.by_prefix: dict[tuple[str, int, int, int], list[int]] = defaultdict(lambda: [0, 0])

    def group(self, family: int, key: bytes) -> tuple[str, int, int, int]:
        """A flow's source prefix and target, as collect.flood names them."""
        k = np.frombuffer(key, abi.KEY_DTYPES[family])[0]
        raw = bytes(k["saddr"])
        if family == abi.AF_INET:
            prefix = f"{ipaddress.IPv4Address(raw[:3] + bytes(1))}/24"
        else:
            prefix = f"{ipaddress.IPv6Address(raw[:8] + bytes(8))}/64"
        return prefix, int(k["proto"]), int(k["dport"]), int(k["direction"])

    def send(self, i: int, packets: int, size: int, cpu: int, flags: int) -> None:
        family, key = self.keys[i]
        m = self.maps[family]
        self.counters[abi.Counter.PACKETS] += packets
        self.counters[abi.Counter.BYTES] += packets * size
        if key not in m:
            if len(m) >= self.flow_entries:
                self.counters[abi.Counter.MAP_FULL] += packets
                prefix, proto, dport, direction = self.group(family, key)
                k = np.frombuffer(key, abi.KEY_DTYPES[family])[0]
                fkey = (family, bytes(k["saddr"])[: 3 if family == abi.AF_INET else 8], dport,
                        proto, flags, direction)  # fmt: skip
                if fkey in self.floods or len(self.floods) < self.flood_entries:
                    row = self.floods.setdefault(fkey, [0, 0])
                    row[0] += packets
                    row[1] += packets * size
                    self.by_prefix[prefix, proto, dport, direction][0] += packets
                else:
                    self.counters[abi.Counter.FLOOD_OTHER] += packets
                return
            m[key] = [[0, 0, 0, 0, 0, 0] for _ in range(NCPU)]
            self.counters[abi.Counter.FLOWS_CREATED] += 1
        row = m[key][cpu]
        if row[0] == 0:
            row[3] = self.now
        row[0] += packets
        row[1] += packets * size
        row[2] += packets * (size - 14)
        row[4] = self.now
        row[5] |= flags
        self.attributed[key][0] += packets
        self.attributed[key][1] += packets * size
        g = self.by_prefix[self.group(family, key)]
        g[0] += packets
        g[1] += packets

    def take_floods(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.zeros(len(self.floods), abi.FLOOD_KEY_DTYPE)
        values = np.zeros(len(self.floods), abi.FLOOD_VALUE_DTYPE)
        for r, ((family, prefix, dport, proto, flags, direction), (p, b)) in enumerate(
            self.floods.items()
        ):
            keys[r]["prefix"][: len(prefix)] = np.frombuffer(prefix, np.uint8)
            keys[r]["family"], keys[r]["dport"], keys[r]["proto"] = family, dport, proto
            keys[r]["tcp_flags"], keys[r]["direction"], keys[r]["ifindex"] = flags, direction, 7
            values[r] = (p, b)
        self.floods = {}
        return keys, values

    def send_non_ip(self, packets: int, size: int) -> None:
        self.counters[abi.Counter.PACKETS] += packets
        self.counters[abi.Counter.BYTES] += packets * size
        self.counters[abi.Counter.NON_IP] += packets

    def _batch(self, family: int, keys: list[bytes]) -> FlowBatch:
        kd = abi.KEY4_DTYPE if family == abi.AF_INET else abi.KEY6_DTYPE
        karr = np.frombuffer(b"".join(keys), kd).copy() if keys else np.zeros(0, kd)
        vals = np.zeros((len(keys), NCPU), abi.VALUE_DTYPE)
        for r, k in enumerate(keys):
            for c, row in enumerate(self.maps[family][k]):
                vals[r, c] = tuple(row)
        return FlowBatch.from_percpu(family, karr, vals)

    # -- the FlowSource protocol ----------------------------------------------------------

    def read_flows(self, family: int) -> FlowBatch:
        # the kernel's iteration order is not the insertion order: reverse it
        return self._batch(family, list(self.maps[family])[::-1])

    def take_flows(self, family: int, keys: np.ndarray) -> tuple[np.ndarray, FlowBatch]:
        m = self.maps[family]
        found = np.array([k.tobytes() in m for k in keys], bool)
        got = [k.tobytes() for k in keys if k.tobytes() in m]
        if self.late is not None and got:
            # packets that reach the first flow between the collector's read and its delete
            p, b = self.late
            row = m[got[0]][0]
            if row[0] == 0:
                row[3] = self.now
            row[0] += p
            row[1] += b
            row[4] = self.now
            self.counters[abi.Counter.PACKETS] += p
            self.counters[abi.Counter.BYTES] += b
            self.attributed[got[0]][0] += p
            self.attributed[got[0]][1] += b
            g = self.by_prefix[self.group(family, got[0])]
            g[0] += p
            g[1] += p
            self.late = None
        batch = self._batch(family, got)
        for k in got:
            del m[k]
        return found, batch

    def read_counters(self) -> dict[abi.Counter, int]:
        return dict(self.counters)

    def open_events(self, callback: Callable[[FlowEvent], None]) -> None:
        pass

    def poll_events(self, timeout_ms: int = 0) -> None:
        pass


def _raw(key: FlowKey, keys: list[tuple[int, bytes]] = KEYS) -> bytes:
    """The kernel key bytes of a record's key."""
    for family, raw in keys:
        if family != key.family:
            continue
        dtype = abi.KEY4_DTYPE if family == abi.AF_INET else abi.KEY6_DTYPE
        k = np.frombuffer(raw, dtype)[0]
        if int(k["sport"]) == key.sport:
            return raw
    raise AssertionError(f"record for an unknown flow {key}")


class CollectorMachine(RuleBasedStateMachine):
    """Traffic, ticks and clock steps in any order; the collector must stay exact."""

    MAX_RECORDS = CollectorSettings().max_records

    def __init__(self) -> None:
        super().__init__()
        self.kernel = FakeKernel(ENTRIES)
        self.collector = self.make_collector()
        self.written: dict[bytes, list[int]] = defaultdict(lambda: [0, 0])
        self.last_end: dict[bytes, float] = {}
        self.counters = self.kernel.read_counters()
        self.shaped: dict[tuple[str, int, int, int], list[int]] = defaultdict(lambda: [0, 0])
        self.unplaced = 0

    def make_collector(
        self,
        owners: OwnerTable | None = None,
        health: HealthTable | None = None,
        drops: DropTable | None = None,
        resets: ResetTable | None = None,
    ) -> Collector:
        """The real collector over the fake kernel, on its clock."""
        return Collector(
            self.kernel,
            CollectorSettings(
                idle_timeout=5.0,
                fin_timeout=1.0,
                active_timeout=3.0,
                max_records=self.MAX_RECORDS,
            ),
            iface_names={7: "veth7"},
            monotonic_ns=lambda: self.kernel.now,
            wall_time=lambda: 1_700_000_000.0 + self.kernel.now / SEC,
            owners=owners,
            health=health,
            drops=drops,
            resets=resets,
        )

    @rule(
        i=st.integers(0, FLOWS - 1),
        packets=st.integers(1, 50),
        size=st.integers(60, 1500),
        cpu=st.integers(0, NCPU - 1),
        flags=st.sampled_from([0, ACK, SYN, FIN | ACK, RST]),
    )
    def send(self, i: int, packets: int, size: int, cpu: int, flags: int) -> None:
        self.kernel.send(i, packets, size, cpu, flags)

    @rule(first=st.integers(0, FLOWS - 1), count=st.integers(1, FLOWS), cpu=st.integers(0, 1))
    def burst(self, first: int, count: int, cpu: int) -> None:
        """A flood: one packet to each of many flows, most of them new (the map fills)."""
        for j in range(count):
            self.kernel.send((first + j) % FLOWS, 1, 64, cpu, SYN)

    @rule(packets=st.integers(1, 20))
    def non_ip(self, packets: int) -> None:
        self.kernel.send_non_ip(packets, 60)

    @rule(packets=st.integers(1, 5))
    def race_the_delete(self, packets: int) -> None:
        self.kernel.late = (packets, packets * 100)

    @rule(seconds=st.sampled_from([0.2, 0.5, 1.0, 1.5, 3.0, 6.0]))
    def wait(self, seconds: float) -> None:
        self.kernel.now += int(seconds * SEC)

    @rule()
    def tick(self) -> None:
        self.kernel.now += SEC // 10
        t = self.last_tick = self.collector.tick()
        counters = self.kernel.read_counters()
        delta = {c: counters[c] - self.counters[c] for c in abi.Counter}
        self.counters = counters
        self._take(t.records)
        s = t.sample
        unattributed = delta[abi.Counter.MAP_FULL] + delta[abi.Counter.NON_IP]
        assert t.flow_packets + unattributed == delta[abi.Counter.PACKETS]
        assert round(s.pps * s.interval) == delta[abi.Counter.PACKETS]
        assert round(s.bps * s.interval / 8) == delta[abi.Counter.BYTES]
        assert s.counters["unattributed"] == unattributed
        self._shape(t)

    def _shape(self, t: Tick) -> None:
        """Add up the tick's flood shape: per prefix and target, every packet placed so far."""
        assert t.sample.flood.rest_packets == 0  # fewer groups than rows here
        # the flows the shape keeps (for a host rule's share) are what the rows' flows had
        flows = sum(int(f.packets.sum()) for f in t.sample.flood.flows)
        assert flows == sum(r.in_flows for r in t.sample.flood.rows)
        for r in t.sample.flood.rows:
            g = self.shaped[r.prefix, r.proto, r.dport, r.direction]
            g[0] += r.packets
            g[1] += r.in_flows
        self.unplaced += t.sample.flood.unplaced
        assert dict(self.shaped) == {k: v for k, v in self.kernel.by_prefix.items() if v[0]}
        assert self.unplaced == self.kernel.counters[abi.Counter.FLOOD_OTHER]

    def _take(self, records: list) -> None:  # type: ignore[type-arg]
        for r in records:
            raw = _raw(r.key, self.kernel.keys)
            # a record has packets, or is a flow's last and holds what it owed (_owing)
            assert r.packets > 0 or max(r.retrans, r.drops, r.resets) > 0, r
            assert r.first_seen <= r.last_seen
            # a record that begins before the previous one of its flow ended counts packets twice
            assert r.first_seen >= self.last_end.get(raw, 0.0) - 1e-6, r
            self.last_end[raw] = r.last_seen
            self.written[raw][0] += r.packets
            self.written[raw][1] += r.bytes

    @invariant()
    def never_more_than_counted(self) -> None:
        for raw, (p, b) in self.written.items():
            assert p <= self.kernel.attributed[raw][0]
            assert b <= self.kernel.attributed[raw][1]

    @precondition(lambda self: True)
    @rule()
    def shutdown_is_exact(self) -> None:
        """What shutdown() would write, with everything written so far, is every packet."""
        written = {k: list(v) for k, v in self.written.items()}
        for r in self.collector.shutdown():
            raw = _raw(r.key, self.kernel.keys)
            written.setdefault(raw, [0, 0])
            written[raw][0] += r.packets
            written[raw][1] += r.bytes
        for raw, (p, b) in self.kernel.attributed.items():
            assert written.get(raw, [0, 0]) == [p, b], (raw, written.get(raw), (p, b))


TestCollectorModel = CollectorMachine.TestCase
TestCollectorModel.settings = _machine_settings(300)


class CappedCollectorMachine(CollectorMachine):
    """The same with at most two records a tick per family: the flows that end and the
    active-timeout records past that wait for later ticks, and every count stays exact."""

    MAX_RECORDS = 2


TestCappedCollectorModel = CappedCollectorMachine.TestCase
TestCappedCollectorModel.settings = _machine_settings(200)


# --- which process: the owner each flow carries ---------------------------------------------

NETNS = 77
PROCS = [Owner(100 + i, f"p{i}", i) for i in range(3)]
LOCAL_ADDR = {abi.AF_INET: "198.19.0.1", abi.AF_INET6: "2001:db8::ffff"}


class _Announced:
    """The socket hooks as a list the test appends to (collect.owners.SocketSource)."""

    def __init__(self) -> None:
        self.queue: list[SocketEvent] = []

    def poll(self) -> list[SocketEvent]:
        out, self.queue = self.queue, []
        return out

    def lost(self) -> int:
        return 0


class OwnedCollectorMachine(CollectorMachine):
    """The same traffic, with sockets announced at any moment: a connection (its exact
    4-tuple) or a listener on the flows' local address. Model: each flow, from the tick the
    collector first reads it until it leaves the map, has the owner known at that tick (a
    connection's before a listener's, the latest of each), or, while it has none, the first
    owner known at a later tick; it then keeps it (a socket announced later on the same
    address is another socket's). Every record, the live flows and the pending blob carry it."""

    def __init__(self) -> None:
        super().__init__()
        self.source = _Announced()
        self.table = OwnerTable(NETNS, source=self.source, local_addresses=lambda: set())
        self.collector = self.make_collector(self.table)
        self.conn: dict[int, Owner] = {}
        self.listener: dict[int, Owner] = {}
        self.owner_of: dict[bytes, Owner | None] = {}  # flows in the map the collector has read
        self.pending_conn: list[tuple[int, Owner]] = []  # announced, not yet taken in
        self.pending_listen: list[tuple[int, Owner]] = []

    @rule(i=st.integers(0, FLOWS - 1), p=st.integers(0, len(PROCS) - 1))
    def connection(self, i: int, p: int) -> None:
        family = KEYS[i][0]
        self.source.queue.append(
            SocketEvent(abi.SOCK_CONNECT, family, 6, LOCAL_ADDR[family], 80, _remote(i), 1000 + i,
                        NETNS, PROCS[p])
        )  # fmt: skip
        self.pending_conn.append((i, PROCS[p]))

    @rule(family=st.sampled_from([abi.AF_INET, abi.AF_INET6]), p=st.integers(0, len(PROCS) - 1))
    def listener_socket(self, family: int, p: int) -> None:
        self.source.queue.append(
            SocketEvent(abi.SOCK_LISTEN, family, 6, LOCAL_ADDR[family], 80, "", 0, NETNS, PROCS[p])
        )
        self.pending_listen.append((family, PROCS[p]))

    def _lookup(self, i: int) -> Owner | None:
        return self.conn.get(i) or self.listener.get(KEYS[i][0])

    def _expected(self) -> dict[bytes, Owner | None]:
        """Each flow in the map as the collector will see it next: what the refresh takes in,
        then its carried owner or, without one, the lookup."""
        for i, o in self.pending_conn:
            self.conn[i] = o
        for family, o in self.pending_listen:
            self.listener[family] = o
        self.pending_conn, self.pending_listen = [], []
        index = {raw: i for i, (_, raw) in enumerate(KEYS)}
        out = {raw: self.owner_of.get(raw) for f in (abi.AF_INET, abi.AF_INET6)
               for raw in self.kernel.maps[f]}  # fmt: skip
        for raw in out:
            if out[raw] is None:
                out[raw] = self._lookup(index[raw])
        return out

    @rule()
    def tick(self) -> None:
        before = self._expected()
        self.kernel.now += SEC // 10
        t = self.collector.tick()
        counters = self.kernel.read_counters()
        self.counters = counters
        self._take(t.records)
        for r in t.records:
            assert r.owner == before[_raw(r.key)], r
        live: dict[bytes, Owner | None] = {}
        for lf in t.live:
            for j in range(len(lf.batch)):
                raw = lf.batch.keys[j].tobytes()
                live[raw] = lf.owner[j] if lf.owner is not None else None
                assert live[raw] == before[raw]
        for r in _pending(t):
            assert r.owner == live[_raw(r.key)], r
        self.owner_of = live

    @rule()
    def shutdown_is_exact(self) -> None:
        """shutdown() takes in the last sockets too, and changes nothing for the next tick."""
        expected = self._expected()
        for r in self.collector.shutdown():
            assert r.owner == expected[_raw(r.key)], r


TestOwnedCollectorModel = OwnedCollectorMachine.TestCase
TestOwnedCollectorModel.settings = _machine_settings(150)


# --- TCP health: the retransmissions each record carries -------------------------------------


class _Connections:
    """tcp_health as the kernel keeps it: one connection per flow (socket cookie i + 1), from
    the flow's sent side, whose total only grows."""

    def __init__(self) -> None:
        self.total = [0] * FLOWS

    def tcp_health(self) -> tuple[np.ndarray, np.ndarray]:
        rows = np.zeros(FLOWS, abi.HEALTH_DTYPE)
        for i, (family, raw) in enumerate(SENT_KEYS):
            k = np.frombuffer(raw, abi.KEY_DTYPES[family])[0]
            width = 4 if family == abi.AF_INET else 16
            rows[i]["laddr"][:width] = k["saddr"]
            rows[i]["raddr"][:width] = k["daddr"]
            rows[i]["lport"], rows[i]["rport"] = int(k["sport"]), int(k["dport"])
            rows[i]["family"], rows[i]["netns"] = family, NETNS
            rows[i]["retrans"], rows[i]["srtt_us"] = self.total[i], 1000 + i
        return np.arange(1, FLOWS + 1, dtype=np.uint64), rows


class HealthCollectorMachine(CollectorMachine):
    """The same traffic as sent flows of TCP connections that retransmit now and then (the
    retransmissions leave as packets of the flow). Model: the records of a connection never
    hold more retransmissions than it made, whatever its flow went through (idle expiry and
    a new flow for the same connection, eviction, a full map), and once its flow is in the map
    at shutdown they hold all of them."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = FakeKernel(ENTRIES, SENT_KEYS)
        self.conns = _Connections()
        self.health = HealthTable(NETNS, source=self.conns)
        self.collector = self.make_collector(health=self.health)
        self.counters = self.kernel.read_counters()
        self.retrans_written = [0] * FLOWS
        self.retrans_counted = 0

    @rule(i=st.integers(0, FLOWS - 1), n=st.integers(1, 5), cpu=st.integers(0, NCPU - 1))
    def retransmit(self, i: int, n: int, cpu: int) -> None:
        self.conns.total[i] += n
        self.kernel.send(i, n, 1500, cpu, ACK)

    @rule(i=st.integers(0, FLOWS - 1), n=st.integers(1, 5))
    def retransmit_unseen(self, i: int, n: int) -> None:
        """Retransmissions with no packet after them in the flow: the kernel counted them in
        total_retrans and failed to send (an error after the count), or their packets were
        in the flow when a tick read it and the hooks had not counted them yet."""
        self.conns.total[i] += n

    def _take(self, records: list) -> None:  # type: ignore[type-arg]
        super()._take(records)
        for r in records:
            self.retrans_written[r.key.sport - 1000] += r.retrans

    @invariant()
    def never_more_retransmissions_than_made(self) -> None:
        for i in range(FLOWS):
            assert self.retrans_written[i] <= self.conns.total[i], i

    @rule()
    def tick(self) -> None:
        """The ticks' retransmission counters (the host's rate, the metrics) add up to what
        the connections made, as of each tick."""
        super().tick()
        self.retrans_counted += self.collector.health.retrans_delta if self.collector.health else 0
        assert self.retrans_counted == sum(self.conns.total)
        # what history keeps of the live flows holds the retransmissions no record holds yet
        pending = [0] * FLOWS
        for r in _pending(self.last_tick):
            pending[r.key.sport - 1000] += max(r.retrans, 0)
        in_map = {raw for m in self.kernel.maps.values() for raw in m}
        for i, (_, raw) in enumerate(SENT_KEYS):
            assert self.retrans_written[i] + pending[i] <= self.conns.total[i], i
            if raw in in_map:
                assert self.retrans_written[i] + pending[i] == self.conns.total[i], i

    @rule()
    def shutdown_is_exact(self) -> None:
        """shutdown() is the end: what it writes is counted here, then the machine goes on as
        if it had not run (the connections' written counts put back)."""
        saved, seen = dict(self.health.written), self.health._seen
        written = list(self.retrans_written)
        in_map = {raw for m in self.kernel.maps.values() for raw in m}
        for r in self.collector.shutdown():
            written[r.key.sport - 1000] += r.retrans
        self.health.written, self.health._seen = saved, seen
        for i, (_, raw) in enumerate(SENT_KEYS):
            assert written[i] <= self.conns.total[i], i
            if raw in in_map:
                assert written[i] == self.conns.total[i], (i, written[i], self.conns.total[i])


def _hook_key(out: np.void, i: int) -> np.void:
    """Fill the addresses (16 bytes a side), ports and family of a kernel hook's key (drop_key,
    reset_key) with flow i's; returns flow i's own key row for the rest."""
    family, raw = _key(i)
    k = np.frombuffer(raw, abi.KEY_DTYPES[family])[0]
    width = 4 if family == abi.AF_INET else 16
    out["saddr"][:width] = np.frombuffer(k["saddr"].tobytes(), np.uint8)
    out["daddr"][:width] = np.frombuffer(k["daddr"].tobytes(), np.uint8)
    out["sport"], out["dport"], out["family"] = k["sport"], k["dport"], family
    return k


class _Drops:
    """bpf/drops.c's maps as the kernel keeps them: per (flow, reason) a total that only
    grows, until the LRU forgets the entry (then it counts from zero again)."""

    REASONS = (3, 77)

    def __init__(self) -> None:
        self.count: dict[tuple[int, int], int] = {}
        self.reasons: dict[int, int] = {}  # drop_totals: every drop, by reason
        self.past_budget = 0  # drop_budget.unattributed: in the totals, in no flow

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.zeros(len(self.count), abi.DROP_KEY_DTYPE)
        counts = np.zeros(len(self.count), np.int64)
        for j, ((i, reason), n) in enumerate(sorted(self.count.items())):
            k = _hook_key(keys[j], i)
            keys[j]["proto"], keys[j]["ifindex"] = k["proto"], k["ifindex"]
            keys[j]["reason"] = reason
            counts[j] = n
        return keys, counts

    def by_reason(self) -> dict[int, int]:
        return dict(self.reasons)

    def unattributed(self) -> int:
        return self.past_budget

    def missed(self) -> int:
        return 0

    def name(self, reason: int) -> str:
        return f"R{reason}"


class _CountedPerFlow(CollectorMachine):
    """What a kernel hook counts per flow beside the flow programs (drops, resets), read by a
    table that may forget an entry (LRU), and written into records as ``field``. Model: the
    records of a flow never hold more than it had, whatever its flow went through (idle expiry
    and a new flow, eviction, a full map); what history keeps of the live flows (the pending
    blob, as a crash would turn it into records) holds the rest; a flow whose entries were
    never forgotten and which is in the map at shutdown has all of it written."""

    field = ""
    table: Any

    def _counting(self, table: Any) -> None:
        self.table = table
        self.made = [0] * FLOWS
        self.written_counts = [0] * FLOWS
        self.forgot = [False] * FLOWS

    def _check(self, r: FlowRecord) -> None:
        """A record's other fields that go with the count."""

    def _take(self, records: list) -> None:  # type: ignore[type-arg]
        super()._take(records)
        for r in records:
            assert getattr(r, self.field) >= 0
            self.written_counts[r.key.sport - 1000] += getattr(r, self.field)
            self._check(r)

    @invariant()
    def never_more_than_made(self) -> None:
        for i in range(FLOWS):
            assert self.written_counts[i] <= self.made[i], i

    def _tick_pending(self) -> Tick:
        """A tick; what it wrote and what its pending flows hold add up to what was made."""
        self.kernel.now += SEC // 10
        t = self.collector.tick()
        self.counters = self.kernel.read_counters()
        self._take(t.records)
        pending = [0] * FLOWS
        for r in _pending(t):
            pending[r.key.sport - 1000] += getattr(r, self.field)
            self._check(r)
        in_map = {raw for m in self.kernel.maps.values() for raw in m}
        for i, (_, raw) in enumerate(KEYS):
            assert self.written_counts[i] + pending[i] <= self.made[i], i
            if raw in in_map and not self.forgot[i]:
                assert self.written_counts[i] + pending[i] == self.made[i], i
        return t

    @rule()
    def shutdown_is_exact(self) -> None:
        saved = dict(self.table.written)
        written = list(self.written_counts)
        in_map = {raw for m in self.kernel.maps.values() for raw in m}
        for r in self.collector.shutdown():
            written[r.key.sport - 1000] += getattr(r, self.field)
        self.table.written = saved
        for i, (_, raw) in enumerate(KEYS):
            assert written[i] <= self.made[i], i
            if raw in in_map and not self.forgot[i]:
                assert written[i] == self.made[i], (i, written[i], self.made[i])


class DropsCollectorMachine(_CountedPerFlow):
    """The same traffic, and the kernel drops some of each flow's received packets (after
    the flow program counted them), for one reason or another (_CountedPerFlow's model); each
    record's main reason is one its drops had."""

    field = "drops"

    def __init__(self) -> None:
        super().__init__()
        self.drops = _Drops()
        self._counting(DropTable(self.drops))
        self.collector = self.make_collector(drops=self.table)
        self.host: dict[str, int] = {}  # the ticks' drops per reason, added up
        self.host_unattributed = 0

    def _made(self, i: int | None, reason: int, n: int) -> None:
        """n drops of this reason: of flow i (in its key's count), or past the budget (None)."""
        self.drops.reasons[reason] = self.drops.reasons.get(reason, 0) + n
        if i is None:
            self.drops.past_budget += n
            return
        self.drops.count[(i, reason)] = self.drops.count.get((i, reason), 0) + n
        self.made[i] += n

    @rule(n=st.integers(1, 300), reason=st.sampled_from(_Drops.REASONS))
    def drop_past_the_budget(self, n: int, reason: int) -> None:
        """Drops past the hook's per-CPU budget in a jiffy: counted by reason, in no flow."""
        self._made(None, reason, n)

    @rule(
        i=st.integers(0, FLOWS - 1),
        n=st.integers(1, 5),
        reason=st.sampled_from(_Drops.REASONS),
        cpu=st.integers(0, NCPU - 1),
    )
    def drop(self, i: int, n: int, reason: int, cpu: int) -> None:
        self.kernel.send(i, n, 100, cpu, ACK)
        self._made(i, reason, n)

    @rule(i=st.integers(0, FLOWS - 1), reason=st.sampled_from(_Drops.REASONS))
    def drop_counted_before(self, i: int, reason: int) -> None:
        """A drop of a packet the flow already had when a tick read it (the flow program
        counts it, the drop comes a moment later), and nothing after it in the flow."""
        self._made(i, reason, 1)

    @rule(i=st.integers(0, FLOWS - 1), reason=st.sampled_from(_Drops.REASONS))
    def lru_forgets(self, i: int, reason: int) -> None:
        if self.drops.count.pop((i, reason), 0):
            self.forgot[i] = True

    def _check(self, r: FlowRecord) -> None:
        if r.drops:
            assert r.drop_reason in {f"R{x}" for x in _Drops.REASONS}, r
        else:
            assert r.drop_reason == "", r

    @rule()
    def tick(self) -> None:
        """Also: the ticks' drops per reason add up to every drop made, those past the budget
        included, and their unattributed count to those."""
        t = self._tick_pending()
        for name, n in t.drops.items():
            self.host[name] = self.host.get(name, 0) + n
        self.host_unattributed += t.sample.counters["drops_unattributed"]
        assert self.host == {f"R{r}": n for r, n in self.drops.reasons.items() if n}
        assert t.sample.counters["drops"] == sum(t.drops.values())
        assert self.host_unattributed == self.drops.past_budget


class _Resets:
    """bpf/resets.c's map as the kernel keeps it: per flow a total that only grows, until the
    LRU forgets the entry (then it counts from zero again)."""

    def __init__(self) -> None:
        self.count: dict[int, int] = {}

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.zeros(len(self.count), abi.RESET_KEY_DTYPE)
        counts = np.zeros(len(self.count), np.int64)
        for j, (i, n) in enumerate(sorted(self.count.items())):
            k = _hook_key(keys[j], i)
            keys[j]["direction"] = k["direction"]
            counts[j] = n
        return keys, counts


class ResetsCollectorMachine(_CountedPerFlow):
    """The same traffic, and some of it is TCP resets the kernel acted on (a reset counts in
    the flow it came in with; _CountedPerFlow's model); the host's totals are every reset."""

    field = "resets"

    def __init__(self) -> None:
        super().__init__()
        self.resets = _Resets()
        self._counting(ResetTable(self.resets))
        self.collector = self.make_collector(resets=self.table)
        self.host_total = 0

    @rule(i=st.integers(0, FLOWS - 1), n=st.integers(1, 3), cpu=st.integers(0, NCPU - 1))
    def reset(self, i: int, n: int, cpu: int) -> None:
        self.kernel.send(i, n, 60, cpu, RST)
        self.resets.count[i] = self.resets.count.get(i, 0) + n
        self.made[i] += n

    @rule(i=st.integers(0, FLOWS - 1))
    def lru_forgets(self, i: int) -> None:
        if self.resets.count.pop(i, 0):
            self.forgot[i] = True

    @rule()
    def tick(self) -> None:
        t = self._tick_pending()
        assert t.sample.counters["resets_sent"] == 0
        self.host_total += t.sample.counters["resets_received"]
        # every reset counted until now, as long as refreshes saw each before it was forgotten
        if not any(self.forgot):
            assert self.host_total == sum(self.made)


def test_retransmissions_after_the_last_packet_are_in_the_last_record() -> None:
    """The sequence CI's TCP loss test went through, as the machine's steps (hypothesis
    rarely draws it): a flow's active-timeout record, then retransmissions with no packet
    after them (failed to send, or counted by the hooks just after the tick read their
    packets), then the end: shutdown, or expiry, writes them in a record of no packets. Failed
    before (2 of 5 written at shutdown, and at expiry)."""
    m = HealthCollectorMachine()
    m.retransmit(0, 2, 0)
    m.wait(3.0)
    m.tick()
    m.retransmit_unseen(0, 3)
    m.shutdown_is_exact()
    m.wait(6.0)
    m.tick()  # idle: expired
    assert m.retrans_written[0] == m.conns.total[0] == 5


def test_drops_after_the_last_packet_are_in_the_last_record() -> None:
    """The same for a drop the hook counted after a tick had read its packet in the flow."""
    m = DropsCollectorMachine()
    m.drop(0, 2, 3, 0)
    m.wait(3.0)
    m.tick()
    m.drop_counted_before(0, 3)
    m.shutdown_is_exact()
    m.wait(6.0)
    m.tick()
    assert m.written_counts[0] == m.made[0] == 3


TestResetsCollectorModel = ResetsCollectorMachine.TestCase
TestResetsCollectorModel.settings = _machine_settings(150)

TestDropsCollectorModel = DropsCollectorMachine.TestCase
TestDropsCollectorModel.settings = _machine_settings(150)

TestHealthCollectorModel = HealthCollectorMachine.TestCase
TestHealthCollectorModel.settings = _machine_settings(150)
