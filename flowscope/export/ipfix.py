"""IPFIX export (RFC 7011) of the flow records history gets, to a collector a fleet already runs.

flowscope does not grow a collector of its own: nfdump's nfcapd, pmacct, goflow2 and the rest
take IPFIX, so every record is also sent there. The encoder is pure (records in, bytes out)
and pinned by byte-for-byte tests; the exporter sends from its own thread, so a collector that
is slow, down or unreachable costs collection nothing: records that cannot be sent are
counted in ``lost`` and dropped, and TCP reconnects with backoff.

What the RFC leaves to the exporter, and what flowscope does:

- four templates, with IANA information elements only: IPv4 (256) and IPv6 (257) for received
  flows, with the interface as ``ingressInterface``, and IPv4 (258) and IPv6 (259) for sent
  flows, with it as ``egressInterface``; ``flowDirection`` says which in both;
- the header's sequence number counts the data records sent before the message, per
  observation domain and per transport session, modulo 2^32 (a new TCP connection is a new
  session and starts again at 0; records that could not be sent are not counted);
- over UDP the templates go in the first message and again every ``template_interval``
  seconds and every ``template_messages`` messages (section 8.4), and after a failed send;
  over TCP once at the start of every connection (section 8.3);
- no message, with its IP and UDP headers (48 bytes over IPv6), exceeds the path MTU.
"""

from __future__ import annotations

import collections
import errno
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from flowscope.errors import FlowscopeError, UsageError
from flowscope.export.ipfix_records import DEFAULT_MTU, Encoder, Message
from flowscope.model import FlowRecord, NewFlow, PendingFlows, Sample

DEFAULT_PORT = 4739
PEER_CHECK_INTERVAL = 1.0

# --- where to send -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A collector address: transport, host and port."""

    transport: Literal["udp", "tcp"]
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"


def parse_target(text: str) -> Target:
    """``HOST:PORT`` (UDP), ``udp://HOST:PORT`` or ``tcp://HOST:PORT``; an IPv6 host goes in
    brackets. Raises UsageError (one line) for anything else."""
    usage = "give HOST:PORT, udp://HOST:PORT or tcp://HOST:PORT (IPv6 as [ADDR]:PORT)"
    transport: Literal["udp", "tcp"] = "udp"
    rest = text.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme.lower() not in ("udp", "tcp"):
            raise UsageError(f"--ipfix {text!r}: unknown transport {scheme!r}", usage)
        transport = "tcp" if scheme.lower() == "tcp" else "udp"
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
        if not sep:
            raise UsageError(f"--ipfix {text!r}: no port", usage)
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep or ":" in host:
            raise UsageError(f"--ipfix {text!r}: no port", usage)
    if not host:
        raise UsageError(f"--ipfix {text!r}: no host", usage)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"--ipfix {text!r}: port must be 1-65535", usage)
    return Target(transport, host, int(port_text))


# --- the exporter --------------------------------------------------------------------------------


class Exporter:
    """Sends every record it is given to one collector, from its own thread.

    A recorder sink (``submit``/``close``; combine it with the writer through sinks.Tee).
    ``submit`` only queues; the queue is bounded, and whatever does not fit, or arrives while a
    TCP collector is unreachable, or fails to send, is counted in ``lost``. The counters are
    safe to read from any thread (for a status line and the metrics)."""

    def __init__(
        self,
        target: Target,
        *,
        domain_id: int = 0,
        mtu: int = DEFAULT_MTU,
        template_interval: float = 60.0,
        template_messages: int = 100,
        max_queue: int = 100_000,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        send_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = target
        self.encoder = Encoder(domain_id, mtu)
        self.template_interval = template_interval
        self.template_messages = template_messages
        self.max_queue = max_queue
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.send_timeout = send_timeout
        self.clock = clock
        #: Data records sent to the collector.
        self.sent = 0
        #: Data records not exported: queue full, collector unreachable, or a failed send.
        self.lost = 0
        #: IPFIX messages sent.
        self.messages = 0
        #: Connections made (TCP; UDP counts its one socket).
        self.connections = 0
        #: What is wrong with exporting, for the user (None while all is well).
        self.status: str | None = None
        self._sock: socket.socket | None = None
        self._delay = backoff
        self._next_attempt = 0.0
        self._templates_at: float | None = None
        self._since_templates = 0
        self._queue: collections.deque[FlowRecord] = collections.deque()
        self._busy = 0
        self._cond = threading.Condition()
        self._closing = False
        #: The error that ended the thread, when it was not the network's.
        self.failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="flowscope-ipfix", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        """Whether a socket to the collector is open (for UDP: always, once made)."""
        return self._sock is not None

    @property
    def backlog(self) -> int:
        """Records queued or being sent (a replay waits for them rather than lose any)."""
        with self._cond:
            return len(self._queue) + self._busy

    def submit(
        self,
        records: Sequence[FlowRecord],
        sample: Sample | None,
        events: Sequence[NewFlow],
        pending: Sequence[PendingFlows] | None = None,
    ) -> None:
        """Queue a tick's records; never blocks. Samples and events are not exported."""
        if not records:
            return
        with self._cond:
            room = max(self.max_queue - len(self._queue), 0)
            if len(records) > room:
                self.lost += len(records) - room
                records = records[:room]
            self._queue.extend(records)
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued record was sent or counted lost. True if that happened
        before ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float | None = 10.0) -> bool:
        """Send what is queued (what cannot go is counted lost), then stop. True when the
        thread finished within ``timeout``."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the thread ------------------------------------------------------------------------

    def check(self) -> None:
        """Raise, as a FlowscopeError, the error that ended the export thread, if one did."""
        if self.failed is not None:
            raise FlowscopeError(
                f"IPFIX export stopped: {type(self.failed).__name__}: {self.failed}"
            )

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # not a network error (those are retried): stop and say so
            self.failed = e
            self.status = f"stopped: {type(e).__name__}: {e}"

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self._queue and not self._closing and not self._reconnect_due():
                        self._cond.wait(self._wait_time())
                    if self._closing and not self._queue:
                        break
                    batch = list(self._queue)
                    self._queue.clear()
                    self._busy = len(batch)
                try:
                    if self._sock is not None and self._peer_closed():
                        self._disconnect(f"IPFIX collector {self.target}: connection closed")
                    if self._sock is None and (self._reconnect_due() or self._closing):
                        self._connect()
                    if batch:
                        self._send(batch)
                finally:
                    with self._cond:
                        self._busy = 0
                        self._cond.notify_all()
        finally:
            self._disconnect(None)

    def _reconnect_due(self) -> bool:
        return self._sock is None and time.monotonic() >= self._next_attempt

    def _wait_time(self) -> float | None:
        if self._sock is None:
            return max(self._next_attempt - time.monotonic(), 0.0)
        # a TCP connection is looked at every second, so a collector that left is noticed
        # (and reconnected to) before the next records come
        return PEER_CHECK_INTERVAL if self.target.transport == "tcp" else None

    def _connect(self) -> None:
        t = self.target
        kind = socket.SOCK_STREAM if t.transport == "tcp" else socket.SOCK_DGRAM
        try:
            infos = socket.getaddrinfo(t.host, t.port, type=kind)
            family, _, proto, _, addr = infos[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(self.send_timeout)
                sock.connect(addr)
            except OSError:
                sock.close()
                raise
        except OSError as e:
            self._failed(f"IPFIX collector {t}: {_reason(e)}")
            return
        self._sock = sock
        self.connections += 1
        self._delay = self.backoff
        self.status = None
        self._templates_at = None
        if t.transport == "tcp":
            # a new connection is a new transport session: sequence numbers start again, and
            # the templates go first, once
            self.encoder.sequence = 0
            self._send_raw(self.encoder.message([], 0, int(self.clock()), templates=True))

    def _failed(self, status: str) -> None:
        self.status = status
        self._next_attempt = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.max_backoff)

    def _disconnect(self, status: str | None) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if status is not None:
            self._failed(status)

    def _templates_due(self, now: float) -> bool:
        if self.target.transport == "tcp":
            return False  # sent once when the connection was made
        return (
            self._templates_at is None
            or now - self._templates_at >= self.template_interval
            or self._since_templates >= self.template_messages
        )

    def _peer_closed(self) -> bool:
        """A TCP collector never sends anything, so a readable socket means it closed (or
        reset) the connection: found before sending, no record goes into a dead socket."""
        assert self._sock is not None
        if self.target.transport != "tcp":
            return False
        readable, _, _ = select.select([self._sock], [], [], 0)
        if not readable:
            return False
        try:
            return self._sock.recv(4096, socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _send(self, batch: list[FlowRecord]) -> None:
        # IPv4 first, then IPv6: fewer sets per message
        batch.sort(key=lambda r: r.key.family)
        i = 0
        while i < len(batch):
            if self._sock is None or self._peer_closed():
                if self._sock is not None:
                    self._disconnect(f"IPFIX collector {self.target}: connection closed")
                self.lost += len(batch) - i
                return
            now = self.clock()
            templates = self._templates_due(now)
            msg = self.encoder.message(batch, i, int(now), templates)
            if not self._send_raw(msg):
                self.lost += len(batch) - i
                return
            if templates:
                self._templates_at, self._since_templates = now, 0
            self._since_templates += 1
            self.sent += msg.records
            i += msg.records

    def _send_raw(self, msg: Message) -> bool:
        assert self._sock is not None
        try:
            self._sock.sendall(msg.data)
        except OSError as e:
            # not sent: the sequence number counts sent records only
            self.encoder.sequence = msg.sequence
            if self.target.transport == "tcp":
                self._disconnect(f"IPFIX collector {self.target}: {_reason(e)}")
            else:
                self.status = f"IPFIX collector {self.target}: {_reason(e)}"
                self._templates_at = None  # it may have restarted: templates again
            return False
        self.messages += 1
        if self.target.transport == "udp":
            self.status = None
        return True


def _reason(e: OSError) -> str:
    if isinstance(e, socket.gaierror):
        return f"cannot resolve ({e.strerror})"
    if isinstance(e, TimeoutError):
        return "timed out"
    if e.errno is not None:
        return f"{e.strerror or errno.errorcode.get(e.errno, e.errno)}"
    return str(e)
