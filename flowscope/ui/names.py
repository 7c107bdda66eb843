"""Names for numbers: reverse DNS for addresses (in the background) and service names for ports.

Reverse DNS can take seconds per address, so lookups run in a small thread pool and each
answer (a name, or None for no name) is cached for the session and announced with a message;
the table shows the address until then. Service names come from the local services database
(``socket.getservbyport``), cached too.
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from flowscope.model import proto_name

Lookup = Callable[[str], str | None]


def gethostbyaddr(address: str) -> str | None:
    """The system resolver's name for an address, or None."""
    try:
        return socket.gethostbyaddr(address)[0]
    except (OSError, UnicodeError):
        return None


class Resolver:
    """Cached reverse DNS; ``name()`` never blocks: it answers from the cache or starts a
    lookup whose result goes to ``on_resolved(address, name)``."""

    def __init__(
        self,
        on_resolved: Callable[[str, str | None], object],
        lookup: Lookup = gethostbyaddr,
        workers: int = 4,
    ) -> None:
        self._lookup = lookup
        self._on_resolved = on_resolved
        self._cache: dict[str, str | None] = {}
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flowscope-dns")

    def name(self, address: str) -> str | None:
        """The cached name (None if unknown or not resolved yet)."""
        with self._lock:
            if address in self._cache:
                return self._cache[address]
            if address in self._pending:
                return None
            self._pending.add(address)
        self._pool.submit(self._resolve, address)
        return None

    def _resolve(self, address: str) -> None:
        name = self._lookup(address)
        with self._lock:
            self._cache[address] = name
            self._pending.discard(address)
        self._on_resolved(address, name)

    def close(self) -> None:
        """Stop taking work; lookups in flight finish on their own."""
        self._pool.shutdown(wait=False, cancel_futures=True)


@functools.lru_cache(maxsize=4096)
def service(port: int, proto: int) -> str | None:
    """The service name of a port (https, domain, ...) from /etc/services, or None."""
    name = proto_name(proto)
    if name not in ("tcp", "udp", "sctp", "dccp", "udplite") or not 0 < port < 65536:
        return None
    try:
        return socket.getservbyport(port, "udp" if name == "udplite" else name)
    except OSError:
        try:  # many files list a well-known port only under tcp
            return socket.getservbyport(port, "tcp")
        except OSError:
            return None
