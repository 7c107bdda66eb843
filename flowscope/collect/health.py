"""TCP health per flow: the retransmissions and round-trip times the kernel keeps for each
local TCP connection (bpf/owners.c's tcp_health map, the numbers `ss -ti` shows), joined with
the connection's two flows by 4-tuple.

- which end is local follows from where the packets were seen, as for processes: a sent flow
  is from its source, a received flow for its destination;
- the connection's retransmissions are segments it sent again: they belong to its sent flow
  (the received flow has none), so the retransmits of a host's flows add up to its sockets';
- its retransmissions by kind (model.RETRANS_KINDS: fast, after a timeout, tail loss probe)
  come from the same hooks, which count each resend by the socket's congestion state; a
  connection read from sock_diag has none (NONE): tcp_info does not tell them apart;
- both flows carry the connection's smoothed and minimum RTT;
- the hooks follow a connection from its established callback on; a connection that was open
  before they were attached is read from sock_diag instead (``older``: kernel.sockdiag, what
  `ss -ti` shows), every OLDER_REFRESH seconds, and only its retransmissions after it was
  first seen count in records and in the host's total (those before are not flowscope's to
  report as news);
- only connections of flowscope's network namespace count; other flows (UDP, forwarded) have
  none (-1).

The join is vectorised: each family's connections become fixed-width byte keys, sorted once per
tick, and the flows' keys are looked up with one searchsorted, so a tick with 100,000 TCP flows
costs a few numpy passes, not a Python loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from flowscope import abi
from flowscope.errors import FlowscopeError
from flowscope.model import NO_KINDS, NO_TCP, RETRANS_KINDS, FlowBatch, opaque_rows

NONE = NO_TCP
"""A flow without a followed connection (not TCP, not local, or older than flowscope)."""
_MAPPED = np.array([0] * 10 + [0xFF, 0xFF], np.uint8)
OLDER_REFRESH = 2.0
"""Seconds between two reads of the connections the hooks do not follow, at least."""
OLDER_SHARE = 0.05
"""The most of the collector's time those reads may take: a sock_diag dump costs about 9 us a
connection (26 ms for 3,000), so on a host with 100,000 connections the reads space out to
one every 18 s rather than take 45 % of every tick."""
Connections = tuple[np.ndarray, np.ndarray]
"""Socket cookies and abi.HEALTH_DTYPE rows, in the same order."""


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

    def __init__(
        self,
        netns: int,
        source: HealthSource | None = None,
        older: Callable[[], Connections] | None = None,
        clock: Callable[[], float] = time.monotonic,
        kinds: bool = True,
    ) -> None:
        self.netns = netns
        self.source = source
        self.older = older
        """Every connection of the namespace from sock_diag (kernel.sockdiag), for those the
        hooks do not follow; None: not read (or sock_diag failed: ``older_problem``)."""
        self.older_problem: str | None = None
        self.kinds = kinds
        """Whether the hooks tell retransmissions apart by kind (the kernel's BTF gave where a
        socket keeps its congestion state); else every kind is NONE."""
        self._clock = clock
        self._older_due = 0.0
        self._older: Connections = (np.zeros(0, np.uint64), np.zeros(0, abi.HEALTH_DTYPE))
        # per family: sorted byte keys, and retrans, srtt, rtt_min, cookie in the same order
        self._sorted: dict[int, tuple[np.ndarray, ...]] = {}
        self.written: dict[int, int] = {}
        """Per connection (socket cookie): retransmissions records hold already."""
        self.written_kinds: dict[int, np.ndarray] = {}
        """Per connection: the retransmissions of each kind records hold already."""
        self.kind_deltas = np.zeros(len(NO_KINDS), np.int64)
        """What the followed connections resent between the last two refreshes, by kind."""
        self._seen_kinds = (np.zeros(0, np.uint64), np.zeros((0, len(NO_KINDS)), np.int64))
        self.retrans_delta = 0
        """Retransmissions the connections made between the last two refreshes (all of a
        connection's the first time it is seen: it is followed from its start)."""
        self._seen = (np.zeros(0, np.uint64), np.zeros(0, np.int64))
        self.add(np.zeros(0, abi.HEALTH_DTYPE))

    def refresh(self) -> None:
        """Read the kernel's numbers again (the connections the hooks do not follow at most
        every OLDER_REFRESH seconds)."""
        cookies, rows = np.zeros(0, np.uint64), np.zeros(0, abi.HEALTH_DTYPE)
        if self.source is not None:
            cookies, rows = self.source.tcp_health()
        if self.older is not None and self._clock() >= self._older_due:
            started = time.perf_counter()
            try:
                self._older = self.older()
            except FlowscopeError as e:
                self.older, self.older_problem = None, e.message
                self._older = (np.zeros(0, np.uint64), np.zeros(0, abi.HEALTH_DTYPE))
            took = time.perf_counter() - started
            self._older_due = self._clock() + max(OLDER_REFRESH, took / OLDER_SHARE)
        if self.source is None and self.older is None and not len(self._older[0]):
            return
        o_cookies, o_rows = self._older
        extra = ~np.isin(o_cookies, cookies)
        older = np.concatenate((np.zeros(len(cookies), bool), np.ones(int(extra.sum()), bool)))
        self.add(
            np.concatenate((rows, o_rows[extra])),
            np.concatenate((cookies, o_cookies[extra])),
            older,
        )

    def unwritten(self, cookie: int, total: int) -> int:
        """The retransmissions of a connection (``total`` so far) that no record holds yet."""
        return max(total - self.written.get(cookie, 0), 0)

    def take(self, cookie: int, total: int) -> int:
        """The retransmissions of a connection (``total`` so far) that no record holds yet,
        now counted as written."""
        new = self.unwritten(cookie, total)
        self.written[cookie] = max(total, self.written.get(cookie, 0))
        return new

    def take_kinds(self, cookie: int, kinds: np.ndarray) -> tuple[int, int, int]:
        """The retransmissions of each kind of a connection (``kinds`` so far) that no record
        holds yet, now counted as written; NO_KINDS for a connection without kinds."""
        if kinds[0] < 0:
            return NO_KINDS
        done = self.written_kinds.get(cookie)
        new = kinds if done is None else np.maximum(kinds - done, 0)
        self.written_kinds[cookie] = kinds if done is None else np.maximum(kinds, done)
        return (int(new[0]), int(new[1]), int(new[2]))

    def add(
        self, rows: np.ndarray, cookies: np.ndarray | None = None, older: np.ndarray | None = None
    ) -> None:
        """Replace what is known with ``rows`` (abi.HEALTH_DTYPE) and their socket cookies
        (by default 1, 2, ...). Connections the kernel no longer reports are forgotten.
        ``older`` marks the rows of connections that were open before they were followed: the
        retransmissions such a connection had when first seen are taken as written."""
        if cookies is None:
            cookies = np.arange(1, len(rows) + 1, dtype=np.uint64)
        if older is None:
            older = np.zeros(len(rows), bool)
        if self.written or self.written_kinds:
            alive = set(cookies.tolist())
            self.written = {c: w for c, w in self.written.items() if c in alive}
            self.written_kinds = {c: w for c, w in self.written_kinds.items() if c in alive}
        mine = rows["netns"] == self.netns
        rows, cookies, older = rows[mine], cookies[mine], older[mine]
        retrans = rows["retrans"].astype(np.int64)
        kinds = np.stack([rows[f"retrans_{k}"].astype(np.int64) for k in RETRANS_KINDS], axis=1)
        kinds[older if self.kinds else slice(None)] = NONE  # sock_diag has no kinds
        self._count_kinds(cookies, kinds)
        new_older = older & ~np.isin(cookies, self._seen[0])
        for c, r in zip(cookies[new_older].tolist(), retrans[new_older].tolist(), strict=True):
            self.written[c] = max(self.written.get(c, 0), r)
        self._count_delta(cookies, retrans, new_older)
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
                kinds[sel][order],
            )

    def _count_delta(self, cookies: np.ndarray, retrans: np.ndarray, baseline: np.ndarray) -> None:
        """retrans_delta: what each connection added since the last refresh (nothing for one
        first seen with ``baseline``: an older connection's past is not this tick's)."""
        prior = np.where(baseline, retrans, _prior(self._seen, cookies))
        self.retrans_delta = int(np.maximum(retrans - prior, 0).sum())
        self._seen = _by_cookie(cookies, retrans)

    def _count_kinds(self, cookies: np.ndarray, kinds: np.ndarray) -> None:
        """kind_deltas: what each followed connection resent since the last refresh, by kind
        (all of it the first time: the hooks count kinds from the connection's start)."""
        prior = np.maximum(_prior(self._seen_kinds, cookies), 0)
        self.kind_deltas = np.maximum(kinds - prior, 0).sum(axis=0)
        self._seen_kinds = _by_cookie(cookies, kinds)

    def join(self, batch: FlowBatch) -> tuple[np.ndarray, ...]:
        """(retransmitted segments, smoothed RTT us, minimum RTT us, socket cookie, and the
        retransmissions by kind: an n x 3 array) of each flow's connection (int64 arrays; NONE,
        and cookie 0, where there is none). Retransmissions only on the sent flow."""
        n = len(batch)
        retrans, srtt, rtt_min = (np.full(n, NONE, np.int64) for _ in range(3))
        cookie = np.zeros(n, np.uint64)
        kinds = np.full((n, len(NO_KINDS)), NONE, np.int64)
        known, k_retrans, k_srtt, k_min, k_cookie, k_kinds = self._sorted[batch.family]
        if not n or not len(known):
            return retrans, srtt, rtt_min, cookie, kinds
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
        found = k_kinds[pos[hit]]  # a connection without kinds has none on either flow
        kinds[hit] = np.where(egress[hit][:, None] | (found[:, :1] < 0), found, 0)
        return retrans, srtt, rtt_min, cookie, kinds


def _prior(seen: tuple[np.ndarray, np.ndarray], cookies: np.ndarray) -> np.ndarray:
    """What the last refresh held for each of ``cookies`` (``seen``: cookies sorted, and their
    values, one row each), 0 for a connection it did not hold."""
    before_cookies, before = seen
    if not len(before):
        return np.zeros((len(cookies), *before.shape[1:]), before.dtype)
    pos = np.minimum(np.searchsorted(before_cookies, cookies), len(before) - 1)
    known = (before_cookies[pos] == cookies).reshape(-1, *([1] * (before.ndim - 1)))
    return np.where(known, before[pos], 0)


def _by_cookie(cookies: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cookies sorted, their values in that order): what the next refresh's _prior reads."""
    order = np.argsort(cookies)
    return cookies[order].astype(np.uint64), values[order]
