"""What the console keeps of a shown row over time (ui.state.LiveState.row_history), for the
detail view's graphs: the bit rate, and a TCP connection's RTT, retransmissions and drops."""

from __future__ import annotations

import dataclasses

from flowscope.query.view import Row
from flowscope.ui.state import SERIES_DROPS, SERIES_RETRANS, SERIES_RTT, LiveState

ROW = Row(
    ident=("flow", 4), family=4, src="198.18.0.1", dst="198.18.0.2", sport=443, dport=50000,
    proto=6, vlan=0, ifindex=3, direction=1, bps=0.0, pps=0.0, bytes=0, packets=0, age=0.0,
    tcp_flags=0, flows=1,
)  # fmt: skip


def test_rtt_and_the_growth_of_retransmissions_and_drops_over_the_shown_ticks() -> None:
    state = LiveState(clock_start=0.0)
    shown = [  # (tick, rtt us, retransmissions so far, drops so far); tick 3 not shown
        (1, 20_000, 5, -1),
        (2, 30_000, 7, -1),
        (4, 25_000, 12, -1),
    ]
    for tick, rtt, retrans, drops in shown:
        state.ticks = tick
        state.record_rows(
            [dataclasses.replace(ROW, bps=8.0 * tick, rtt_us=rtt, retrans=retrans, drops=drops)]
        )
    assert state.row_series(ROW.key) == [8.0, 16.0, 0.0, 32.0]
    assert state.row_series(ROW.key, column=SERIES_RTT) == [20_000.0, 30_000.0, 0.0, 25_000.0]
    assert state.row_growth(ROW.key, SERIES_RETRANS) == 12 - 5
    assert state.row_growth(ROW.key, SERIES_RETRANS, width=2) == 0  # tick 4 alone: no growth
    assert state.row_growth(ROW.key, SERIES_RETRANS, width=3) == 12 - 7
    assert state.row_growth(ROW.key, SERIES_DROPS) is None  # not followed
