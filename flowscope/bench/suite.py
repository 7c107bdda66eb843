"""``flowscope bench``: what the XDP program (and its TC egress twin) costs per packet, next to a
program that does nothing.

Every number comes from BPF_PROG_TEST_RUN, the kernel running the program on a crafted frame and
reporting its mean duration per run. That mean is noisy (about ±15% from one call to the next)
and includes the test harness itself (about 25 ns here), so each measurement is taken next to
bpf/bare.c, a bare ``return XDP_PASS`` program run the same way: the two are interleaved for a
number of rounds and the minimum of each is kept, the least disturbed run of each. One load of
a program (its maps, its JIT image) can also cost a few ns more or less than the next load of
the same code, for the whole time it is loaded: so the per-packet benchmarks load each program
(and the bare one) several times and report the median over the loads. The ratio of the two
is what the issue's targets are about; absolute nanoseconds depend on the machine.

The frames are built here with struct, not scapy, so the command works without the dev extras.
Each benchmark checks afterwards that its frame really landed in the flow it meant to exercise,
so a parser change cannot turn a benchmark into a measurement of the drop-out path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from flowscope.bench.harness import BARE_NAME, BARE_TC_NAME, DEFAULT, Lab, Result, Settings
from flowscope.bench.health import health_bulk
from flowscope.bench.memory import drain_model, map_memory, no_prealloc, packed_value
from flowscope.bench.owners import owner_churn, owner_hooks
from flowscope.bench.record_flood import record_syn_flood
from flowscope.bench.stages import (
    collector_tick,
    console,
    detect_flood,
    history_top20,
    replay_frames,
    ringbuf_events,
    store_insert,
)
from flowscope.bench.start import compile_program, console_start
from flowscope.bench.xdp import (
    block_path,
    hash_floor,
    hot_ipv4_tcp,
    hot_ipv4_tcp_100k,
    insert_100k,
    ipv6_tcp_ext,
    map_full,
    precise_clock,
    processes_hot,
    tc_hot_ipv4_tcp,
    vlan_ipv4_udp,
)
from flowscope.errors import UsageError

if TYPE_CHECKING:
    pass


# -- frames ------------------------------------------------------------------------------------


BENCHMARKS: dict[str, Callable[[Lab], Iterator[Result]]] = {
    "xdp_hot_ipv4_tcp": hot_ipv4_tcp,
    "xdp_hot_ipv4_tcp_100k": hot_ipv4_tcp_100k,
    "tc_hot_ipv4_tcp": tc_hot_ipv4_tcp,
    "xdp_ipv6_tcp_ext": ipv6_tcp_ext,
    "xdp_vlan_ipv4_udp": vlan_ipv4_udp,
    "xdp_insert_100k": insert_100k,
    "xdp_map_full": map_full,
    "xdp_block": block_path,
    "xdp_hot_ipv4_tcp_precise_clock": precise_clock,
    "hot_ipv4_tcp_processes": processes_hot,
    "xdp_hash_floor": hash_floor,
    "map_memory": map_memory,
    "no_prealloc": no_prealloc,
    "packed_value": packed_value,
    "drain_model": drain_model,
    "collector_tick": collector_tick,
    "store_insert": store_insert,
    "history_top20_10m": history_top20,
    "ringbuf_events": ringbuf_events,
    "detect_flood": detect_flood,
    "console": console,
    "compile_flow_program": compile_program,
    "console_start": console_start,
    "replay_frames": replay_frames,
    "owner_hooks_connection": owner_hooks,
    "owner_churn": owner_churn,
    "record_syn_flood": record_syn_flood,
    "health_hooks_bulk": health_bulk,
}
NAMES = tuple(BENCHMARKS)


def select(only: Sequence[str]) -> list[str]:
    """The benchmarks to run, in the usual order; names may also come comma-separated."""
    wanted = [n.strip() for item in only for n in item.split(",")]
    if only and not any(wanted):
        raise UsageError("--only: no benchmark named", f"choose from {', '.join(NAMES)}")
    wanted = [n for n in wanted if n]
    unknown = [n for n in wanted if n not in BENCHMARKS]
    if unknown:
        raise UsageError(
            f"no benchmark named {', '.join(map(repr, unknown))}", f"choose from {', '.join(NAMES)}"
        )
    return [n for n in NAMES if not wanted or n in wanted]


def run(names: Sequence[str], settings: Settings = DEFAULT) -> Iterator[Result]:
    """Run the named benchmarks, yielding each result as soon as it is measured."""
    lab = Lab(settings)
    try:
        for name in names:
            yield from BENCHMARKS[name](lab)
    finally:
        lab.close()


# -- output ------------------------------------------------------------------------------------

_WIDTH = max(len(n) for n in (*NAMES, BARE_NAME, BARE_TC_NAME))


def table_header() -> str:
    """The first line of the readable table."""
    return (
        f"{'benchmark':<{_WIDTH}}  {'value':>9}  {'unit':<9}  {'baseline':<{_WIDTH}}  "
        f"{'value':>9}  {'ratio':>6}"
    )


def table_row(r: Result) -> str:
    """One aligned line of the readable table; the widths do not depend on the other rows,
    so rows can be printed as they are measured."""
    return (
        f"{r.name:<{_WIDTH}}  {r.value:>9.1f}  {r.unit:<9}  {r.baseline_name:<{_WIDTH}}  "
        f"{r.baseline:>9.1f}  {r.ratio:>6.2f}"
    )


def info_line(r: Result) -> str:
    """The sentence under an informative row: what the design choice it measures saves."""
    if r.unit == "ns/packet":
        return (
            f"  (informative, not a target) {r.name}: {r.value - r.baseline:+.1f} ns per packet "
            f"over {r.baseline_name}, x{r.ratio:.2f}"
        )
    return (
        f"  (informative, not a target) {r.name}: {r.value:.1f} {r.unit} beside "
        f"{r.baseline_name}'s {r.baseline:.1f}, x{r.ratio:.2f}"
    )


def table_note(settings: Settings) -> str:
    """What the numbers are, printed under the table."""
    return (
        f"value and baseline: the minimum over {settings.rounds} interleaved rounds of the "
        f"kernel's mean duration per run (BPF_PROG_TEST_RUN, {settings.repeat:,} runs), "
        f"median over {settings.loads} load{'s' if settings.loads != 1 else ''} of each program;\n"
        f"xdp_insert_100k: {settings.flows:,} single runs of new flows, summed / {settings.flows:,}"
        f"; ratio = value / baseline"
    )
