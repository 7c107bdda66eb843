"""The ring buffer read from its memory map (kernel.ringbuf), against what was sent.

A one-page ring holds 56 records of 72 bytes with 64 bytes to spare, so records straddle its
end as the positions advance: the double mapping must make them whole. The model is what the
kernel promises: a new flow is announced while fewer than 56 records wait unread, otherwise it
counts ringbuf_full; a read gives what waits, oldest first, exactly once."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from flowscope import abi, packets
from flowscope.errors import BpfError
from flowscope.kernel.program import FlowProgram
from flowscope.kernel.ringbuf import RingBuffer, record_span
from flowscope.model import FlowEvent, FlowKey

DST4, DST6 = "198.18.0.1", "2001:db8::1"
LO = 1  # BPF_PROG_TEST_RUN runs XDP on the loopback device
CAPACITY = 4096 // record_span(abi.EVENT_DTYPE.itemsize)


def new_flow(n: int, v6: bool) -> tuple[bytes, FlowKey]:
    """The frame of the n-th new flow (a distinct source per n) and the key it must give."""
    sport = 1024 + n % 60000
    if v6:
        src = str(IPv6Address("2001:db8:1::") + n)
        frame = packets.ethernet(
            packets.ETH_P_IPV6,
            packets.ipv6(src, DST6, 17, packets.udp(src, DST6, sport, 53)),
        )
        return frame, FlowKey(abi.AF_INET6, src, DST6, sport, 53, 17, 0, LO)
    src = str(IPv4Address("198.19.0.0") + n % 65536)
    return packets.ipv4_tcp_frame(src, DST4, sport, 443), FlowKey(
        abi.AF_INET, src, DST4, sport, 443, 6, 0, LO
    )


def test_records_that_wrap_past_the_end_of_the_ring_come_out_whole_and_in_order(
    program_factory: Callable[..., FlowProgram],
) -> None:
    prog = program_factory(flow_entries=65536, ringbuf_pages=1, event_budget=0)
    events: list[FlowEvent] = []
    prog.open_events(events.append)
    counter = itertools.count()

    class Ring(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            prog.poll_events(0)
            prog.clear()
            events.clear()
            self.waiting: list[FlowKey] = []
            self.full = 0
            self.full_before = prog.read_counters()[abi.Counter.RINGBUF_FULL]

        @rule(count=st.integers(1, 80), v6=st.booleans())
        def send(self, count: int, v6: bool) -> None:
            for _ in range(count):
                frame, key = new_flow(next(counter), v6)
                prog.test_run(frame)
                if len(self.waiting) < CAPACITY:
                    self.waiting.append(key)
                else:
                    self.full += 1

        @rule()
        def read(self) -> None:
            prog.poll_events(0)
            assert [e.key for e in events] == self.waiting
            assert not any(e.map_full for e in events)
            events.clear()
            self.waiting = []

        @invariant()
        def lost_is_counted(self) -> None:
            full = prog.read_counters()[abi.Counter.RINGBUF_FULL] - self.full_before
            assert full == self.full

    run_state_machine_as_test(
        Ring,
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_a_ring_of_the_wrong_size_is_refused_and_an_empty_one_reads_nothing(
    program_factory: Callable[..., FlowProgram],
) -> None:
    prog = program_factory(flow_entries=64, ringbuf_pages=1, event_budget=0)
    fd = prog.module["events"].map_fd
    with pytest.raises(BpfError, match="not a power of two"):
        RingBuffer(fd, 3 * 4096, abi.EVENT_DTYPE)
    ring = RingBuffer(fd, 4096, abi.EVENT_DTYPE)
    try:
        assert ring.pending() == 0
        assert len(ring.read()) == 0
        assert not ring.wait(1)
        frame, key = new_flow(7, False)
        prog.test_run(frame)
        assert ring.wait(1000)
        (got,) = ring.read()
        assert int(got["sport"]) == key.sport
        assert bytes(np.asarray(got["saddr"])[:4]) == IPv4Address(key.src).packed
        assert ring.pending() == 0
    finally:
        ring.close()
