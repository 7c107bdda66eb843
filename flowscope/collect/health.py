"""TCP health per flow: the retransmissions and round-trip times the kernel keeps for each
local TCP connection (bpf/owners.c's tcp_health map, the numbers `ss -ti` shows), joined with
the connection's two flows by 4-tuple.

- which end is local follows from where the packets were seen, as for processes: a sent flow
  is from its source, a received flow for its destination;
- the connection's retransmissions are segments it sent again: they belong to its sent flow
  (the received flow has none), so the retransmits of a host's flows add up to its sockets';
- both flows carry the connection's smoothed and minimum RTT;
- only connections established after flowscope attached are followed (the kernel starts
  following a socket at its established callback), and only those of flowscope's network
  namespace; other flows (UDP, forwarded, older connections) have none (-1).

The join is vectorised: each family's connections become fixed-width byte keys, sorted once per
tick, and the flows' keys are looked up with one searchsorted, so a tick with 100,000 TCP flows
costs a few numpy passes, not a Python loop.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from flowscope import abi
from flowscope.model import NO_TCP, FlowBatch, opaque_rows

NONE = NO_TCP
"""A flow without a followed connection (not TCP, not local, or older than flowscope)."""
_MAPPED = np.array([0] * 10 + [0xFF, 0xFF], np.uint8)


class HealthSource(Protocol):
    """Where the connections' health comes from (kernel.owners.OwnerHooks, or a test's):
    socket cookies and abi.HEALTH_DTYPE rows, in the same order."""

    def tcp_health(self) -> tuple[np.ndarray, np.ndarray]: ...


def _key_dtype(width: int) -> np.dtype:
    return np.dtype(
        [("l", np.uint8, (width,)), ("lp", ">u2"), ("r", np.uint8, (width,)), ("rp", ">u2")]
    )


_KEY = {abi.AF_INET: _key_dtype(4), abi.AF_INET6: _key_dtype(16)}


class HealthTable:
    """The health of this namespace's followed TCP connections, as of the last refresh."""

    def __init__(self, netns: int, source: HealthSource | None = None) -> None:
        self.netns = netns
        self.source = source
        # per family: sorted byte keys, and retrans, srtt, rtt_min, cookie in the same order
        self._sorted: dict[int, tuple[np.ndarray, ...]] = {}
        self.written: dict[int, int] = {}
        """Per connection (socket cookie): retransmissions records hold already."""
        self.retrans_delta = 0
        """Retransmissions the connections made between the last two refreshes (all of a
        connection's the first time it is seen: it is followed from its start)."""
        self._seen = (np.zeros(0, np.uint64), np.zeros(0, np.int64))
        self.add(np.zeros(0, abi.HEALTH_DTYPE))

    def refresh(self) -> None:
        """Read the kernel's numbers again."""
        if self.source is not None:
            cookies, rows = self.source.tcp_health()
            self.add(rows, cookies)

    def unwritten(self, cookie: int, total: int) -> int:
        """The retransmissions of a connection (``total`` so far) that no record holds yet."""
        return max(total - self.written.get(cookie, 0), 0)

    def take(self, cookie: int, total: int) -> int:
        """The retransmissions of a connection (``total`` so far) that no record holds yet,
        now counted as written."""
        new = self.unwritten(cookie, total)
        self.written[cookie] = max(total, self.written.get(cookie, 0))
        return new

    def add(self, rows: np.ndarray, cookies: np.ndarray | None = None) -> None:
        """Replace what is known with ``rows`` (abi.HEALTH_DTYPE) and their socket cookies
        (by default 1, 2, ...). Connections the kernel no longer reports are forgotten."""
        if cookies is None:
            cookies = np.arange(1, len(rows) + 1, dtype=np.uint64)
        if self.written:
            alive = set(cookies.tolist())
            self.written = {c: w for c, w in self.written.items() if c in alive}
        mine = rows["netns"] == self.netns
        rows, cookies = rows[mine], cookies[mine]
        self._count_delta(cookies, rows["retrans"].astype(np.int64))
        family = rows["family"].copy()
        laddr, raddr = rows["laddr"].copy(), rows["raddr"].copy()
        # an IPv6 socket talking IPv4 (dual stack) carries IPv4-mapped addresses: its flows
        # are IPv4 flows
        mapped = (family == abi.AF_INET6) & (laddr[:, :12] == _MAPPED).all(axis=1)
        family[mapped] = abi.AF_INET
        laddr[mapped, :4] = laddr[mapped, 12:]
        raddr[mapped, :4] = raddr[mapped, 12:]
        for fam, width in ((abi.AF_INET, 4), (abi.AF_INET6, 16)):
            sel = family == fam
            keys = np.zeros(int(sel.sum()), _KEY[fam])
            keys["l"], keys["lp"] = laddr[sel, :width], rows["lport"][sel]
            keys["r"], keys["rp"] = raddr[sel, :width], rows["rport"][sel]
            void = opaque_rows(keys)
            order = np.argsort(void, kind="stable")
            self._sorted[fam] = (
                void[order],
                rows["retrans"][sel][order].astype(np.int64),
                rows["srtt_us"][sel][order].astype(np.int64),
                rows["rtt_min_us"][sel][order].astype(np.int64),
                cookies[sel][order].astype(np.uint64),
            )

    def _count_delta(self, cookies: np.ndarray, retrans: np.ndarray) -> None:
        """retrans_delta: what each connection added since the last refresh."""
        before_cookies, before = self._seen
        pos = np.minimum(np.searchsorted(before_cookies, cookies), max(len(before) - 1, 0))
        known = (before_cookies[pos] == cookies) if len(before) else np.zeros(len(cookies), bool)
        prior = np.where(known, before[pos] if len(before) else 0, 0)
        self.retrans_delta = int(np.maximum(retrans - prior, 0).sum())
        order = np.argsort(cookies)
        self._seen = (cookies[order].astype(np.uint64), retrans[order])

    def join(self, batch: FlowBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(retransmitted segments, smoothed RTT us, minimum RTT us, socket cookie) of each
        flow's connection (int64 arrays; NONE, and cookie 0, where there is none).
        Retransmissions only on the sent flow."""
        n = len(batch)
        retrans, srtt, rtt_min = (np.full(n, NONE, np.int64) for _ in range(3))
        cookie = np.zeros(n, np.uint64)
        known, k_retrans, k_srtt, k_min, k_cookie = self._sorted[batch.family]
        if not n or not len(known):
            return retrans, srtt, rtt_min, cookie
        k = batch.keys
        egress = k["direction"] == abi.DIR_EGRESS
        keys = np.zeros(n, _KEY[batch.family])
        e2 = egress[:, None]
        keys["l"] = np.where(e2, k["saddr"], k["daddr"])
        keys["lp"] = np.where(egress, k["sport"], k["dport"])
        keys["r"] = np.where(e2, k["daddr"], k["saddr"])
        keys["rp"] = np.where(egress, k["dport"], k["sport"])
        void = opaque_rows(keys)
        pos = np.minimum(np.searchsorted(known, void), len(known) - 1)
        hit = (known[pos] == void) & (k["proto"] == 6)
        retrans[hit] = np.where(egress[hit], k_retrans[pos[hit]], 0)
        srtt[hit] = k_srtt[pos[hit]]
        rtt_min[hit] = k_min[pos[hit]]
        cookie[hit] = k_cookie[pos[hit]]
        return retrans, srtt, rtt_min, cookie
