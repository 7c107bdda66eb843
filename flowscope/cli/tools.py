"""`dump`, `bench`, `doctor` and `demo`: one-shot commands around the collection."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from flowscope import abi
from flowscope.cli.main import Seconds, Terminated, main
from flowscope.cli.options import (
    direction_option,
    entries_option,
    export_options,
    force_option,
    interfaces_option,
    mode_option,
)
from flowscope.vocab import endpoint, proto_text

if TYPE_CHECKING:
    from flowscope.export.outputs import ExportSettings


@main.command()
@interfaces_option
@mode_option
@force_option
@entries_option
@click.option(
    "--duration",
    type=Seconds(0, low_open=False),
    default=None,
    help="Seconds to count before printing (default: until Ctrl-C).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per flow, then counters.")
def dump(
    interfaces: tuple[str, ...],
    mode: str,
    force: bool,
    flow_entries: int,
    duration: float | None,
    as_json: bool,
) -> None:
    """Attach, count, then print every flow in the kernel maps and the counters.

    The program is detached when the command ends, also on Ctrl-C, SIGTERM and SIGKILL."""
    from flowscope.kernel.session import Probe
    from flowscope.model import proto_name, tcp_flags_text

    with Probe(list(interfaces), mode=mode, force=force, flow_entries=flow_entries) as probe:
        names = probe.interface_names()
        # Ctrl-C and SIGTERM end the count early: what was counted is still printed. The
        # notice is inside the try so that a signal sent as soon as it appears is caught too.
        try:
            if not as_json:
                modes = ", ".join(f"{a.ifname} ({a.mode})" for a in probe.attachments)
                click.echo(f"counting on {modes}; Ctrl-C to stop", err=True)
            if duration is None:
                while True:
                    time.sleep(3600)
            else:
                time.sleep(duration)
        except (KeyboardInterrupt, Terminated):
            pass
        batches = probe.program.read_all_flows()
        counters = probe.program.read_counters()
    rows = [(k, s) for b in batches for k, s in b.records()]
    rows.sort(key=lambda r: r[1].bytes, reverse=True)
    out = sys.stdout
    for k, s in rows:
        if as_json:
            obj = {
                "iface": names.get(k.ifindex, str(k.ifindex)),
                "direction": abi.DIRECTION_NAMES.get(k.direction, str(k.direction)),
                "vlan": k.vlan,
                "src": k.src,
                "dst": k.dst,
                "sport": k.sport,
                "dport": k.dport,
                "proto": proto_name(k.proto),
                "packets": s.packets,
                "bytes": s.bytes,
                "ip_bytes": s.ip_bytes,
                "tcp_flags": tcp_flags_text(s.tcp_flags),
            }
            out.write(json.dumps(obj) + "\n")
        else:
            out.write(
                f"{proto_text(k.proto, k.direction):>7} {endpoint(k.src, k.sport, k.proto)} -> "
                f"{endpoint(k.dst, k.dport, k.proto)} vlan {k.vlan}  {s.packets} pkts "
                f"{s.bytes} bytes\n"
            )
    summary = {"counters": {c.name.lower(): v for c, v in counters.items()}}
    if as_json:
        out.write(json.dumps(summary) + "\n")
    else:
        out.write("counters: " + "  ".join(f"{k} {v}" for k, v in summary["counters"].items()))
        out.write("\n")


@main.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per line: name, value, unit, baseline_name, baseline, ratio.",
)
@click.option(
    "--only",
    multiple=True,
    metavar="NAME",
    help="Run only this benchmark (repeat, or separate with commas); names as in the output.",
)
@click.option(
    "--quick",
    is_flag=True,
    help="A smoke test: 100,000 runs per call, 3 rounds, one load, 10,000 flows; rougher numbers.",
)
def bench(as_json: bool, only: tuple[str, ...], quick: bool) -> None:
    """Measure the XDP program per packet against a bare XDP_PASS program.

    Runs crafted frames through BPF_PROG_TEST_RUN (nothing is attached): a hot IPv4 TCP flow,
    the same with 100,000 other flows in the map, IPv6 behind two extension headers, a
    VLAN-tagged UDP frame, and the insert of 100,000 new flows. The kernel reports a mean
    duration per run that is noisy (about ±15%), so the program and the bare baseline are
    interleaved for 15 rounds and the MINIMUM of each is kept; one load of a program can cost a
    few ns more than the next load of the same code, so each is loaded 5 times and the MEDIAN
    over the loads is reported, with the ratio. Informative lines compare the FS_PRECISE_CLOCK
    build with the default jiffies clock cache, and the bare program with bpf/floor.c, the
    per-CPU hash lookup and update alone."""
    from flowscope.bench import harness
    from flowscope.bench import suite as bm

    names = bm.select(only)
    settings = harness.QUICK if quick else harness.DEFAULT
    if not as_json:
        click.echo(bm.table_header())
    for result in bm.run(names, settings):
        if as_json:
            click.echo(json.dumps(result.as_dict()))
        else:
            click.echo(bm.table_row(result))
        if result.informative:
            click.echo(bm.info_line(result), err=as_json)
    if not as_json:
        click.echo(bm.table_note(settings))


def _human_rate(bps: float) -> str:
    for unit, div in (("Gb/s", 1e9), ("Mb/s", 1e6), ("kb/s", 1e3)):
        if bps >= div:
            return f"{bps / div:.1f} {unit}"
    return f"{bps:.0f} b/s"


# --- doctor and demo ---------------------------------------------------------------------------


@main.command()
@click.option(
    "-i",
    "--interface",
    "interfaces",
    multiple=True,
    metavar="IFACE",
    help="Interface to report on (repeat; default: every interface that is up, except lo).",
)
def doctor(interfaces: tuple[str, ...]) -> None:
    """Check that this machine can run flowscope, and what it will see on each interface.

    One line per check, ok or what to do. Nothing is attached to this machine's interfaces:
    the attach checks use a throwaway veth pair. Exit status 0 only when everything
    flowscope needs is there."""
    from flowscope import doctor as doc

    def emit(check: doc.Check) -> None:
        click.echo(check.line())

    if not doc.run(interfaces, emit):
        raise click.exceptions.Exit(1)


@main.command()
@click.option("--headless", is_flag=True, help="Record without the console (tests use this).")
@click.option(
    "--duration",
    type=Seconds(0),
    default=None,
    help="Seconds to run (default: until q, Ctrl-C or SIGTERM).",
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="History database (default: demo.db next to the default history database).",
)
@direction_option
@export_options
def demo(
    headless: bool, duration: float | None, db: Path | None, direction: str, exports: ExportSettings
) -> None:
    """Watch flowscope on traffic it makes itself, in a namespace of its own.

    Makes a network namespace and a veth pair (fsdemo*, 198.19.0.0/16 and 2001:db8::/32),
    attaches to the host end, and runs TCP transfers, UDP, pings, short connections, a
    VLAN-tagged stream and a port scan every half minute from inside the namespace. Quitting
    removes everything; a demo killed with kill -9 is cleaned up by the next one."""
    from flowscope.demo import run as demo_mod

    tty = sys.stderr.isatty()

    def note(text: str) -> None:
        click.echo(text, err=True)

    def status(text: str) -> None:
        sys.stderr.write("\r\033[K" + text)
        sys.stderr.flush()

    try:
        summary = demo_mod.run(
            headless=headless,
            duration=duration,
            db=db,
            note=note,
            status=status if tty else None,
            exports=exports,
            direction=direction,
        )
    except (KeyboardInterrupt, Terminated):
        summary = None
    if tty:
        sys.stderr.write("\n")
    if summary is not None:
        click.echo(f"demo: {summary.records} flow records in {summary.db}", err=True)
    click.echo("demo: namespace, veth pair and processes removed", err=True)
