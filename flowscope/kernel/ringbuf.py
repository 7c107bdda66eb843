"""A BPF ring buffer read straight from its memory map into numpy, without a call per record.

bcc (through libbpf's ring_buffer__consume) calls back into Python once per record, and that
call is the ceiling: about a million records a second before anything is decoded, well under
what a flood of new flows announces. The kernel lets user space map the ring itself (the
layout of kernel/bpf/ringbuf.c): one read-write page holding the consumer position, then,
read-only, a page holding the producer position and the data area mapped twice in a row, so
a record that wraps past the end is still contiguous. Every record is an 8-byte header (length,
with a busy bit while the producer still writes it and a discard bit) and the data, rounded up
to 8 bytes. flowscope's programs only write records of one size (struct flow_event), so the
records between the two positions are a strided block of bytes that numpy views as an array
of them in one copy; anything else falls back to walking the headers one by one.

Positions are read and written with plain loads and stores: on x86 they are ordered as the
kernel's smp_load_acquire/smp_store_release need (the only architecture this is tested on).
"""

from __future__ import annotations

import mmap
import select

import numpy as np

from flowscope.errors import BpfError
from flowscope.kernel.memory import round8

HEADER_SIZE = 8
BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
LENGTH_MASK = ~(BUSY_BIT | DISCARD_BIT) & 0xFFFFFFFF


def record_span(length: int) -> int:
    """Bytes one record of ``length`` data bytes takes in the ring: header, data, padding."""
    return round8(length + HEADER_SIZE)


class RingBuffer:
    """The consumer side of one BPF_MAP_TYPE_RINGBUF map, reading records of ``dtype``."""

    def __init__(self, map_fd: int, size: int, dtype: np.dtype) -> None:
        if size <= 0 or size & (size - 1) or size % mmap.PAGESIZE:
            raise BpfError(f"a ring buffer of {size} bytes is not a power of two of pages")
        self.size = size
        self.dtype = dtype
        self.span = record_span(dtype.itemsize)
        page = mmap.PAGESIZE
        try:
            self._consumer_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, offset=0)
            self._data_map = mmap.mmap(
                map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except OSError as e:
            raise BpfError(f"could not map the ring buffer: {e.strerror}") from e
        self._consumer = np.frombuffer(self._consumer_map, dtype=np.uint64, count=1)
        self._producer = np.frombuffer(self._data_map, dtype=np.uint64, count=1)
        self._data = np.frombuffer(self._data_map, dtype=np.uint8, offset=page)
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)
        self.fd = map_fd

    def wait(self, timeout_ms: int) -> bool:
        """Sleep until the kernel says records are waiting or timeout_ms passes."""
        if self.pending():
            return True
        return bool(self._epoll.poll(max(timeout_ms, 0) / 1000))

    def pending(self) -> int:
        """Bytes written by the producer and not yet consumed (busy records included)."""
        return int(self._producer[0]) - int(self._consumer[0])

    def read(self) -> np.ndarray:
        """Take every complete record waiting, oldest first, as one array of ``dtype``, and
        give their space back to the kernel."""
        cons = int(self._consumer[0])
        prod = int(self._producer[0])
        avail = prod - cons
        if avail <= 0:
            return np.empty(0, dtype=self.dtype)
        start = cons & (self.size - 1)
        if avail % self.span == 0:
            block = self._data[start : start + avail].reshape(-1, self.span)
            lengths = block[:, :4].copy().view("<u4").ravel()
            busy = np.flatnonzero(lengths & BUSY_BIT)
            n = int(busy[0]) if busy.size else len(lengths)
            if np.all((lengths[:n] & LENGTH_MASK) == self.dtype.itemsize):
                body = block[:n, HEADER_SIZE : HEADER_SIZE + self.dtype.itemsize]
                # a copy, always: one record is contiguous already, and a view of the ring
                # would change under the caller once its space is given back
                out = body.copy().view(self.dtype).ravel()
                keep = (lengths[:n] & DISCARD_BIT) == 0
                self._consumer[0] = cons + n * self.span
                return out if keep.all() else out[keep]
        return self._walk(cons, prod)

    def _walk(self, cons: int, prod: int) -> np.ndarray:
        """Records one at a time, for a ring that holds more than one record size."""
        parts: list[bytes] = []
        item = self.dtype.itemsize
        while cons < prod:
            at = cons & (self.size - 1)
            header = int(self._data[at : at + 4].view("<u4")[0])
            if header & BUSY_BIT:
                break
            length = header & LENGTH_MASK
            if not header & DISCARD_BIT and length >= item:
                parts.append(self._data[at + HEADER_SIZE : at + HEADER_SIZE + item].tobytes())
            cons += record_span(length)
        self._consumer[0] = cons
        return np.frombuffer(b"".join(parts), dtype=self.dtype).copy()

    def close(self) -> None:
        """Unmap the ring (the map itself belongs to the program that made it)."""
        self._epoll.close()
        del self._consumer, self._producer, self._data
        self._consumer_map.close()
        self._data_map.close()
