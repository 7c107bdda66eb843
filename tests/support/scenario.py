"""A made-up but plausible minute and a half of traffic, as collector ticks, for the console's
tests and screenshots (and anything else that wants the console without a kernel).

Everything is computed from the tick number: no randomness and no clock, so the same call gives
the same ticks, byte for byte. The story: a web server (198.18.0.10) serving HTTPS downloads, a
database conversation, SSH, DNS, some IPv6 and a VLAN-tagged backup; at tick 70 a SYN scan from
198.19.66.6 opens dozens of flows per tick for five ticks, the burst the new-flows feed must
show at a glance. With ``flood``, from tick 90 (past the first 90), a SYN flood from
198.19.77.0/24 (and a little from 2001:db8:77::/64) to port 443 fills the flow map: its packets
are in the kernel's flood table, not in flows (the flood view's story).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowscope import abi
from flowscope.collect.collector import LiveFlows, Tick
from flowscope.collect.flood import FloodParts, FlowGroups
from flowscope.kernel.memory import flow_maps_bytes
from flowscope.model import NO_KINDS, NO_TCP, FlowBatch, FlowKey, FlowRecord, NewFlow, Owner, Sample
from flowscope.query.frame import addr_bytes
from flowscope.ui.messages import TickArrived

T0 = 1_795_000_000.0
"""Wall time of tick 0 (2026-11-18, UTC)."""
MONO0 = 50_000 * 10**9
"""Monotonic time of tick 0, in ns."""
IFINDEX = 2
IFACE = "eth0"
LOCAL = frozenset({"198.18.0.10", "2001:db8:1::10"})
"""The watched server's own addresses: what they send is egress, the rest ingress."""
SCAN_TICK = 70
FLOOD_TICK = 90
FLOOD_PREFIX = "198.19.77.0/24"
FLOOD_PPS = {abi.AF_INET: 150_000, abi.AF_INET6: 20_000}
SERVER = "198.18.0.10"
SCANNER = "198.19.66.6"


@dataclass(frozen=True, slots=True)
class _Flow:
    src: str
    dst: str
    sport: int
    dport: int
    proto: int
    bps: float  # mean bits per second
    size: int  # bytes per packet
    start: int  # first tick
    flags: int = 0
    vlan: int = 0
    end: int = 10**9  # last tick with traffic


def _flows() -> list[_Flow]:
    tcp, udp = 6, 17
    fl = [
        _Flow("198.18.0.10", "198.18.7.21", 443, 50412, tcp, 48e6, 1514, 0, 0x18),
        _Flow("198.18.7.21", "198.18.0.10", 50412, 443, tcp, 1.1e6, 66, 0, 0x12),
        _Flow("198.18.0.10", "198.18.9.4", 443, 61220, tcp, 12e6, 1514, 3, 0x18),
        _Flow("198.18.9.4", "198.18.0.10", 61220, 443, tcp, 0.4e6, 66, 3, 0x12),
        _Flow("198.18.0.10", "198.18.0.30", 41822, 5432, tcp, 3.2e6, 400, 0, 0x18),
        _Flow("198.18.0.30", "198.18.0.10", 5432, 41822, tcp, 9.5e6, 1200, 0, 0x18),
        _Flow("198.18.3.3", "198.18.0.10", 52110, 22, tcp, 64e3, 120, 0, 0x18),
        _Flow("198.18.0.10", "198.18.3.3", 22, 52110, tcp, 210e3, 180, 0, 0x18),
        _Flow("198.18.0.10", "198.18.0.53", 39001, 53, udp, 20e3, 80, 0),
        _Flow("198.18.0.53", "198.18.0.10", 53, 39001, udp, 35e3, 140, 0),
        _Flow("2001:db8:1::10", "2001:db8:7::21", 443, 40110, tcp, 6.5e6, 1294, 10, 0x18),
        _Flow("2001:db8:7::21", "2001:db8:1::10", 40110, 443, tcp, 0.2e6, 86, 10, 0x12),
        _Flow("198.18.0.10", "198.18.200.5", 873, 47000, tcp, 22e6, 1514, 20, 0x18, vlan=100),
        _Flow("198.18.200.5", "198.18.0.10", 47000, 873, tcp, 0.6e6, 66, 20, 0x12, vlan=100),
        _Flow("198.18.0.10", "198.18.0.123", 123, 123, udp, 1e3, 90, 0),
        _Flow("198.18.5.77", "198.18.0.10", 0, 8 * 256, 1, 1.5e3, 98, 30),
        _Flow("198.18.0.10", "198.18.5.77", 0, 0, 1, 1.5e3, 98, 30),
        _Flow("198.18.0.10", "198.18.0.25", 44321, 25, tcp, 90e3, 600, 40, 0x1B, end=55),
    ]
    for i in range(5 * 40):  # the scan: 40 new flows per tick from SCAN_TICK, one SYN each
        fl.append(
            _Flow(SCANNER, SERVER, 40000 + i % 7, 1 + i, tcp, 0.0, 60, SCAN_TICK + i // 40, 0x02)
        )
    return fl


_NGINX = Owner(812, "nginx", 33, "/system.slice/nginx.service")
_API = Owner(2210, "api-worker", 2100, "/system.slice/docker-4f1c2a9be07d" + "0" * 52 + ".scope")
_SSHD = Owner(640, "sshd", 0, "/system.slice/ssh.service")
_RESOLVED = Owner(401, "systemd-resolve", 2101, "/system.slice/systemd-resolved.service")
_RSYNC = Owner(3120, "rsync", 0, "/user.slice/user-0.slice/session-4.scope")
_CHRONY = Owner(520, "chronyd", 2102, "/system.slice/chrony.service")
_POSTFIX = Owner(1480, "smtp", 2103, "/system.slice/postfix.service")
COMMAND_LINES = {
    812: "nginx: worker process",
    2210: "/usr/local/bin/api-worker --listen :8080 --upstream 198.18.0.10:443",
    640: "sshd: root@pts/0",
    3120: "rsync -az /srv/backup/ backup@198.18.7.21::daily",
}
"""What the scenario's processes would show in /proc while they run (the others are gone)."""


def command_line(owner: Owner) -> str | None:
    """The console's command_line for the scenario: no /proc."""
    return COMMAND_LINES.get(owner.pid)


_OWNERS_BY_PORT = {
    (6, 443): _NGINX,
    (6, 41822): _API,
    (6, 22): _SSHD,
    (17, 39001): _RESOLVED,
    (6, 873): _RSYNC,
    (17, 123): _CHRONY,
    (6, 44321): _POSTFIX,
}
"""Who owns the server's sockets: by the local end's protocol and port. Users are root and
www-data (every Debian has them) or uids no system account has, so that screenshots do not
depend on the machine's /etc/passwd. The scan's SYNs go to
ports nobody listens on, and ICMP has no socket: those flows have no process."""


def _owner(f: _Flow) -> Owner | None:
    """The process of the flow's local socket, as collect.owners would find it."""
    local_port = f.sport if f.src in LOCAL else f.dport
    return _OWNERS_BY_PORT.get((f.proto, local_port))


def _drops(f: _Flow, packets: int) -> tuple[int, str | None]:
    """(packets dropped so far, main reason), as collect.drops would give them: what is
    received for a port nobody listens on (the scan's SYNs) is dropped, every packet
    (NO_SOCKET)."""
    if f.proto in (6, 17) and f.dst in LOCAL and _owner(f) is None:
        return packets, "NO_SOCKET"
    return 0, None


def _health(f: _Flow, t: int) -> tuple[int, int]:
    """(retransmissions so far, RTT us) of a local TCP connection's flow, as collect.health
    would give them; NO_TCP for the rest. A few retransmissions on the busiest sent flows."""
    if f.proto != 6 or _owner(f) is None or f.flags == 0x02:  # a scan's SYN: no connection
        return NO_TCP, NO_TCP
    sent = f.src in LOCAL
    low, high = sorted((f.sport, f.dport))  # one connection, one RTT: both directions
    rtt = 180 + (low * 37 + high * 11) % 42_000
    retrans = (max(t - f.start, 0) * int(f.bps // 10**7)) // 9 if sent else 0
    return retrans, rtt


def _kinds(retrans: int) -> tuple[int, int, int]:
    """A flow's retransmissions by kind (fast, after a timeout, probe), as the hooks would
    count them: mostly fast, an eighth after timeouts, one probe."""
    if retrans < 0:
        return NO_KINDS
    probe = min(retrans, 1)
    return (retrans - retrans // 8 - probe, retrans // 8, probe)


def _rate(f: _Flow, t: int, i: int) -> float:
    """Deterministic wobble around the mean: slow waves, different per flow."""
    if t < f.start or t > f.end or f.bps == 0:
        return 0.0
    wave = 1.0 + 0.45 * math.sin(t / 6.0 + i) + 0.2 * math.sin(t / 1.7 + 2 * i)
    return max(f.bps * wave, 0.0)


def _batch(family: int, rows: list[tuple[_Flow, int, int, int, int]]) -> FlowBatch:
    dtype = abi.KEY_DTYPES[family]
    width = 4 if family == abi.AF_INET else 16
    keys = np.zeros(len(rows), dtype)
    for j, (f, *_rest) in enumerate(rows):
        keys[j]["ifindex"] = IFINDEX
        keys[j]["saddr"] = addr_bytes(f.src)[1][:width]
        keys[j]["daddr"] = addr_bytes(f.dst)[1][:width]
        keys[j]["sport"] = f.sport
        keys[j]["dport"] = f.dport
        keys[j]["vlan"] = f.vlan
        keys[j]["proto"] = f.proto
        keys[j]["direction"] = abi.DIR_EGRESS if f.src in LOCAL else abi.DIR_INGRESS
    col = np.array([r[1:] for r in rows], np.uint64).reshape(len(rows), 4)
    return FlowBatch(
        family=family,
        keys=keys,
        packets=col[:, 0].copy(),
        bytes=col[:, 1].copy(),
        ip_bytes=col[:, 1].copy(),
        first_seen=col[:, 2].copy(),
        last_seen=col[:, 3].copy(),
        tcp_flags=np.array([r[0].flags for r in rows], np.uint8),
    )


def _key(f: _Flow) -> FlowKey:
    return FlowKey(
        family=abi.AF_INET6 if ":" in f.src else abi.AF_INET,
        src=f.src,
        dst=f.dst,
        sport=f.sport,
        dport=f.dport,
        proto=f.proto,
        vlan=f.vlan,
        ifindex=IFINDEX,
        direction=abi.DIR_EGRESS if f.src in LOCAL else abi.DIR_INGRESS,
    )


ENTRIES = abi.DEFAULT_FLOW_ENTRIES
MAP_BYTES = flow_maps_bytes(ENTRIES, 2)
"""What the kernel reports the two flow maps of a 2-CPU machine lock by default (25.5 MiB)."""


def scenario(
    count: int = 90, *, writer_trouble_at: int | None = None, flood: bool = False
) -> list[TickArrived]:
    """``count`` one-second ticks of the story above. ``writer_trouble_at``: from that tick on,
    the writer reports a full disk and dropped records (for the notification tests);
    ``flood``: the SYN flood from FLOOD_TICK on."""
    from flowscope.ui.state import WriterState

    flows = _flows()
    packets = [0] * len(flows)
    nbytes = [0] * len(flows)
    last = [0] * len(flows)
    out: list[TickArrived] = []
    for t in range(count):
        now_ns = MONO0 + t * 10**9
        rates: list[tuple[float, float]] = []
        events: list[NewFlow] = []
        dropped = 0
        for i, f in enumerate(flows):
            if t < f.start:
                rates.append((0.0, 0.0))
                continue
            bps = _rate(f, t, i)
            dbytes = int(bps / 8) if f.bps else (f.size if t == f.start else 0)
            dpk = max(dbytes // f.size, 1) if dbytes else 0
            dbytes = dpk * f.size
            if t == f.start:
                events.append(
                    NewFlow(
                        time=T0 + t - 0.5 + (i % 40) / 100,
                        key=_key(f),
                        iface=IFACE,
                        length=f.size,
                        map_full=False,
                    )
                )
            packets[i] += dpk
            nbytes[i] += dbytes
            dropped += _drops(f, dpk)[0]
            if dpk:
                last[i] = now_ns - 10**8
            rates.append((dbytes * 8.0, float(dpk)))
        live = []
        parts = FloodParts()
        for family in (abi.AF_INET, abi.AF_INET6):
            idx = [
                i
                for i, f in enumerate(flows)
                if t >= f.start and (":" in f.src) == (family == abi.AF_INET6)
            ]
            rows = [
                (
                    flows[i],
                    packets[i],
                    nbytes[i],
                    MONO0 + flows[i].start * 10**9 - 5 * 10**8,
                    last[i],
                )
                for i in idx
            ]
            batch = _batch(family, rows)
            groups = FlowGroups(family)
            parts.add_flows(
                family,
                batch.keys,
                np.array([int(rates[i][1]) for i in idx], np.uint64),
                np.array([int(rates[i][0] / 8) for i in idx], np.uint64),
                batch.tcp_flags,
                groups,
                groups.assign(batch.keys),
            )
            live.append(
                LiveFlows(
                    batch=batch,
                    bps=np.array([rates[i][0] for i in idx], np.float64),
                    pps=np.array([rates[i][1] for i in idx], np.float64),
                    owner=np.array([_owner(flows[i]) for i in idx] or [], object),
                    retrans=np.array([_health(flows[i], t)[0] for i in idx], np.int64),
                    rtt_us=np.array([_health(flows[i], t)[1] for i in idx], np.int64),
                    retrans_kinds=np.array(
                        [_kinds(_health(flows[i], t)[0]) for i in idx], np.int64
                    ).reshape(len(idx), 3),
                    drops=np.array([_drops(flows[i], int(packets[i]))[0] for i in idx], np.int64),
                    drop_reason=np.array(
                        [_drops(flows[i], int(packets[i]))[1] for i in idx] or [], object
                    ),
                )
            )
        total_bps = sum(r[0] for r in rates)
        total_pps = sum(r[1] for r in rates)
        trouble = writer_trouble_at is not None and t >= writer_trouble_at
        counters = {c.name.lower(): 0 for c in abi.Counter}
        counters["packets"] = int(total_pps)
        counters["flows_created"] = len(events)
        if SCAN_TICK <= t < SCAN_TICK + 2:
            counters["ringbuf_full"] = 3  # the burst overran the ring buffer a little
        if flood and t >= FLOOD_TICK:
            parts.add_table(*_flood_table())
            flooded = sum(FLOOD_PPS.values())
            counters["map_full"] = flooded
            counters["packets"] += flooded
            total_pps += flooded
            total_bps += flooded * 60 * 8
        sample = Sample(
            time=T0 + t,
            interval=1.0,
            bps=total_bps,
            pps=total_pps,
            active_flows=sum(len(lf.batch) for lf in live),
            new_flows=len(events),
            counters=counters | {"evicted": 0},
            flood=parts.shape(0, 1.0),
            # a 2-CPU machine's default maps (65,536 entries each); full while flooded
            map_fill=1.0 if counters["map_full"] else max(len(lf.batch) for lf in live) / ENTRIES,
            map_bytes=MAP_BYTES,
        )
        tick = Tick(
            sample=sample,
            records=[],
            events=events,
            live=live,
            evicted=0,
            drops={"NO_SOCKET": dropped} if dropped else {},
        )
        writer = WriterState(
            backlog=1200 if trouble else 0,
            dropped=(t - writer_trouble_at) * 50
            if trouble and writer_trouble_at is not None
            else 0,
            status="database or disk is full; 1200 records waiting, retrying" if trouble else None,
        )
        out.append(TickArrived(tick, now_ns, writer))
    return out


def _flood_table() -> tuple[np.ndarray, np.ndarray]:
    """One second of the flood's packets as the kernel's flood table holds them."""
    keys = np.zeros(2, abi.FLOOD_KEY_DTYPE)
    values = np.zeros(2, abi.FLOOD_VALUE_DTYPE)
    prefixes = {abi.AF_INET: bytes([198, 19, 77]), abi.AF_INET6: bytes.fromhex("20010db800770000")}
    for r, family in enumerate((abi.AF_INET, abi.AF_INET6)):
        raw = prefixes[family]
        keys[r]["prefix"][: len(raw)] = np.frombuffer(raw, np.uint8)
        keys[r]["family"], keys[r]["proto"], keys[r]["dport"] = family, 6, 443
        keys[r]["tcp_flags"], keys[r]["ifindex"] = 0x02, IFINDEX
        values[r] = (FLOOD_PPS[family], FLOOD_PPS[family] * (60 if family == abi.AF_INET else 80))
    return keys, values


HISTORY_NOW = T0 + 3600.0
"""The "now" of the sample history database: an hour after the live scenario starts."""


def _hkey(src: str, dst: str, sport: int, dport: int, proto: int) -> FlowKey:
    family = abi.AF_INET6 if ":" in src else abi.AF_INET
    return FlowKey(family, src, dst, sport, dport, proto, 0, IFINDEX)


def history_db(path: Path) -> Path:
    """A history database for screenshots of the history screen: the live scenario's kind of
    traffic over the day before HISTORY_NOW, one record per flow per minute (active timeouts),
    with a busy half hour in the last hour so the graph has a shape."""
    from flowscope.history.store import Store

    rng = np.random.default_rng(5)
    talkers = [
        (_hkey("198.18.7.21", "198.18.0.10", 50412, 443, 6), 8e6),
        (_hkey("198.18.0.30", "198.18.0.10", 41822, 5432, 6), 2e6),
        (_hkey("198.18.9.4", "198.18.0.10", 61220, 443, 6), 6e5),
        (_hkey("2001:db8:7::21", "2001:db8:1::10", 40110, 443, 6), 4e5),
        (_hkey("198.18.0.53", "198.18.0.10", 39001, 53, 17), 2e4),
        (_hkey("198.18.200.5", "198.18.0.10", 47000, 873, 6), 3e6),
    ]
    with Store(path) as store:
        for minute in range(24 * 60, 0, -1):
            end = HISTORY_NOW - minute * 60
            busy = 3.0 if 20 <= minute <= 50 else 1.0
            records = []
            for key, bps in talkers:
                nbytes = int(bps / 8 * 60 * busy * rng.uniform(0.6, 1.4))
                packets = max(1, nbytes // 1200)
                records.append(
                    FlowRecord(key, IFACE, packets, nbytes, nbytes - 14 * packets,
                               end - 60, end, 0x18, "active")
                )  # fmt: skip
            store.write_tick(records, None, [])
        store.rollup()
    return path
