"""Join flows with the processes that own their local sockets.

The kernel announces sockets (kernel.owners.OwnerHooks), the start-up scan adds the older ones;
this table keeps them and answers, for a flow, which process owns its local end:

- which end is local follows from where the packets were seen: a flow received (ingress) is
  for the socket of its destination, a flow sent (egress) is from the socket of its source;
- a connection announced with its 4-tuple matches exactly; otherwise the socket bound to the
  local port (a TCP listener, a UDP socket): on that address, or on the wildcard address when
  the flow's local address is one of this host's. IPv4 flows also match an IPv6 wildcard
  socket (dual stack);
- only sockets of flowscope's own network namespace count: a flow the host only forwards,
  between two other namespaces or hosts, has no local end and no owner (None, never a guess).

Lookups cost a dictionary probe per new flow, after a vectorised check that its local port is
one any known socket uses, so a flood of flows to ports nobody listens on costs one numpy pass.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from socket import AF_INET, AF_INET6, inet_ntop
from typing import TYPE_CHECKING, Protocol

import numpy as np

from flowscope import abi
from flowscope.collect.drops import DropTable
from flowscope.collect.health import HealthTable
from flowscope.collect.resets import ResetTable
from flowscope.errors import FlowscopeError
from flowscope.model import FlowBatch, Owner, SocketEvent

if TYPE_CHECKING:
    from flowscope.kernel.drops import DropHooks
    from flowscope.kernel.program import FlowProgram
    from flowscope.kernel.resets import ResetHooks

WILDCARD = {abi.AF_INET: "0.0.0.0", abi.AF_INET6: "::"}
ICMP = (1, 58)
"""ICMP and ICMPv6: a flow's "ports" are the message's type and code, which differ between a
request and its reply, so their sockets are matched on the two addresses alone."""
LOCAL_REFRESH = 5.0
"""Seconds between two reads of this host's addresses (for wildcard sockets)."""


class SocketSource(Protocol):
    """Where announced sockets come from (kernel.owners.OwnerHooks, or a test's list)."""

    def poll(self) -> list[SocketEvent]: ...

    def lost(self) -> int:
        """Announcements lost so far (the ring buffer was full): sockets without an owner."""
        ...


class OwnerTable:
    """Sockets and their owners, and the join of flows with them."""

    def __init__(
        self,
        netns: int,
        *,
        source: SocketSource | None = None,
        local_addresses: Callable[[], set[str]] = set,
        capacity: int = 1 << 18,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.netns = netns
        self.source = source
        self._local_addresses = local_addresses
        self._local: set[str] = set()
        self._local_at = -LOCAL_REFRESH
        self._clock = clock
        self.capacity = capacity
        self._conn: dict[tuple[int, int, str, int, str, int], Owner] = {}
        self._bound: dict[tuple[int, int, int], dict[str, Owner]] = {}
        self._ports = np.zeros(0, np.uint16)
        self._icmp = False
        self.generation = 0
        """Bumped whenever a socket is added: flows without an owner are worth a new look."""
        self.lost = 0
        """Socket announcements the kernel could not deliver, as of the last refresh."""

    # -- what is known -----------------------------------------------------------------------

    def refresh(self) -> None:
        """Take what the source announced since the last call."""
        if self.source is not None:
            self.add(self.source.poll())
            self.lost = self.source.lost()

    def add(self, events: Iterable[SocketEvent]) -> None:
        """Remember sockets; a later socket on the same address replaces an earlier one."""
        added = False
        for ev in events:
            # other namespaces' sockets, and those made before the hooks (the scan has them)
            if ev.netns != self.netns or ev.owner is None:
                continue
            if ev.kind == abi.SOCK_CONNECT:
                lport, rport = (0, 0) if ev.proto in ICMP else (ev.lport, ev.rport)
                key = (ev.family, ev.proto, ev.laddr, lport, ev.raddr, rport)
                self._conn.pop(key, None)  # re-insert: the newest is the last to be dropped
                self._conn[key] = ev.owner
            else:
                self._bound.setdefault((ev.family, ev.proto, ev.lport), {})[ev.laddr] = ev.owner
            added = True
        if added:
            self.generation += 1
            self._trim()
            ports = {k[3] for k in self._conn} | {k[2] for k in self._bound}
            self._ports = np.array(sorted(ports), np.uint16)
            self._icmp = any(k[1] in ICMP for k in self._conn)

    def _trim(self) -> None:
        """Forget the oldest connections beyond the capacity (their flows ended long ago)."""
        excess = len(self._conn) - self.capacity
        if excess > 0:
            for key in list(self._conn)[: excess + self.capacity // 4]:
                del self._conn[key]

    # -- lookups -----------------------------------------------------------------------------

    def local_addresses(self) -> set[str]:
        """This host's addresses, read again every LOCAL_REFRESH seconds."""
        now = self._clock()
        if now - self._local_at >= LOCAL_REFRESH:
            self._local = self._local_addresses()
            self._local_at = now
        return self._local

    def lookup(
        self, family: int, proto: int, laddr: str, lport: int, raddr: str, rport: int
    ) -> Owner | None:
        """The owner of the local socket of a flow, seen from its local end."""
        if proto in ICMP:
            return self._conn.get((family, proto, laddr, 0, raddr, 0))
        found = self._conn.get((family, proto, laddr, lport, raddr, rport))
        if found is not None:
            return found
        tries = [(family, proto, lport)]
        if family == abi.AF_INET:
            tries.append((abi.AF_INET6, proto, lport))
        local: set[str] | None = None
        for key in tries:
            bound = self._bound.get(key)
            if not bound:
                continue
            if key[0] == family and laddr in bound:
                return bound[laddr]
            wildcard = bound.get(WILDCARD[key[0]])
            if wildcard is not None:
                if local is None:
                    local = self.local_addresses()
                if laddr in local:
                    return wildcard
        return None

    def join(self, batch: FlowBatch, rows: np.ndarray) -> np.ndarray:
        """The owner of each flow of ``batch`` at ``rows`` (indexes), None where there is none,
        as an object array of len(rows)."""
        out = np.full(len(rows), None, dtype=object)
        if not len(rows) or not len(self._ports):
            return out
        keys = batch.keys[rows]
        egress = keys["direction"] == abi.DIR_EGRESS
        lport = np.where(egress, keys["sport"], keys["dport"]).astype(np.uint16)
        wanted = np.isin(lport, self._ports)
        if self._icmp:
            wanted |= np.isin(keys["proto"], ICMP)
        candidates = np.flatnonzero(wanted)
        if not len(candidates):
            return out
        family = batch.family
        af = AF_INET if family == abi.AF_INET else AF_INET6
        size = 4 if family == abi.AF_INET else 16
        saddr = keys["saddr"].tobytes()
        daddr = keys["daddr"].tobytes()
        sport, dport, proto = keys["sport"], keys["dport"], keys["proto"]
        for j in candidates.tolist():
            s = inet_ntop(af, saddr[j * size : (j + 1) * size])
            d = inet_ntop(af, daddr[j * size : (j + 1) * size])
            if egress[j]:
                owner = self.lookup(family, int(proto[j]), s, int(sport[j]), d, int(dport[j]))
            else:
                owner = self.lookup(family, int(proto[j]), d, int(dport[j]), s, int(sport[j]))
            out[j] = owner
        return out


class ProcessWatch:
    """The kernel hooks that announce sockets (kernel.owners), attached from a FlowProgram
    built with them, then the sockets older than the hooks, from the start-up scan (in that
    order, so that no socket falls between the two). ``problem`` says why processes are not
    attributed when the hooks cannot run here (None while all is well)."""

    def __init__(self, table: OwnerTable, program: FlowProgram) -> None:
        from flowscope.kernel.drops import DropHooks
        from flowscope.kernel.owners import OwnerHooks, scan_sockets
        from flowscope.kernel.resets import ResetHooks
        from flowscope.kernel.sockdiag import tcp_connections

        self.table = table
        self.problem: str | None = None
        self.health: HealthTable | None = None
        """The TCP health of local connections, from the same hooks (None when they cannot
        run)."""
        self.drops: DropTable | None = None
        """What the kernel drops, per flow and reason, from the drop hook compiled into the
        same program (None when it cannot run; ``drops_problem`` says why)."""
        self.drops_problem: str | None = None
        self.resets: ResetTable | None = None
        """The TCP resets the kernel sends and receives, per flow, from the reset hooks
        compiled with the drop hook (None when they cannot run; ``drops_problem`` says why)."""
        self._drop_hooks: DropHooks | None = None
        self._reset_hooks: ResetHooks | None = None
        self._hooks: OwnerHooks | None = None
        try:
            self._drop_hooks = DropHooks(program)
            self.drops = DropTable(self._drop_hooks)
        except FlowscopeError as e:
            self.drops_problem = f"kernel drops are not counted: {e}"
        try:
            self._reset_hooks = ResetHooks(program)
            self.resets = ResetTable(self._reset_hooks)
        except FlowscopeError as e:
            self.drops_problem = self.drops_problem or f"TCP resets are not counted: {e}"
        try:
            self._hooks = OwnerHooks(program)
        except FlowscopeError as e:
            self.problem = f"processes are not attributed: {e}"
            return
        try:
            older = scan_sockets(table.netns)
        except FlowscopeError as e:
            older = []
            self.problem = f"sockets opened before start have no process: {e.message}"
        table.source = self._hooks
        table.add(older)
        self.health = HealthTable(
            table.netns,
            source=self._hooks,
            older=functools.partial(tcp_connections, table.netns),
            kinds=program.drops,  # compiled with the BTF offsets the kinds need, as drops
        )

    def close(self) -> None:
        """Detach the hooks."""
        for kernel in (self._drop_hooks, self._reset_hooks):
            if kernel is not None:
                kernel.close()
        self._drop_hooks = self._reset_hooks = None
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.close()


def watch_processes(program: FlowProgram) -> tuple[OwnerTable, ProcessWatch]:
    """An OwnerTable for this network namespace, and the watch that feeds it from
    ``program``'s socket hooks (a FlowProgram built with them: Probe(owners=True))."""
    from flowscope.kernel.owners import local_addresses, netns_cookie

    table = OwnerTable(netns_cookie(), local_addresses=local_addresses)
    return table, ProcessWatch(table, program)
