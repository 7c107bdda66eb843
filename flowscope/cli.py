"""The flowscope command line (click). The only place that turns errors into exit codes.

Every FlowscopeError becomes one line on stderr and its exit code; SIGTERM becomes SystemExit
so that ``with`` blocks detach the program on the way out, as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from flowscope import abi
from flowscope.errors import FlowscopeError
from flowscope.vocab import endpoint, printable, proto_text

if TYPE_CHECKING:
    from flowscope.collect.collector import Tick
    from flowscope.export.outputs import ExportSettings
    from flowscope.pipeline import Pipeline
    from flowscope.query.view import ViewSpec

EXIT_INTERRUPTED = 130

if TYPE_CHECKING:  # click's ParamType is generic from 8.2; pyproject allows 8.1
    _FloatParam = click.ParamType[float]
    _StrParam = click.ParamType[str]
else:
    _FloatParam = _StrParam = click.ParamType


class _Group(click.Group):
    """Translates FlowscopeError (and Ctrl-C) raised by any command into a one-line error."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlowscopeError as e:
            click.echo(f"flowscope: error: {printable(str(e))}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            ctx.exit(EXIT_INTERRUPTED)
        except click.UsageError as e:
            # click prints Usage/Try/Error on three lines; an operator's script wants one
            where = f" ({e.ctx.command_path} --help)" if e.ctx is not None else ""
            click.echo(f"flowscope: error: {printable(e.format_message())}{where}", err=True)
            ctx.exit(e.exit_code)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:  # a bug: one line for the user, the traceback in a file
            log = _write_crash_log()
            click.echo(
                f"flowscope: internal error: {type(e).__name__}: {printable(str(e))} "
                f"(traceback in {log})",
                err=True,
            )
            ctx.exit(1)


def _write_crash_log() -> str:
    """Write the exception being handled to a new file (the state directory, else /tmp) and
    return its path."""
    import os
    import tempfile
    import traceback

    from flowscope.history.files import state_dir

    text = f"flowscope {' '.join(sys.argv[1:])!r}\n{traceback.format_exc()}"
    for directory in (state_dir(), Path(tempfile.gettempdir())):
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, path = tempfile.mkstemp(prefix="flowscope-crash-", suffix=".log", dir=directory)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return "(nowhere: no directory could be written)"


class Seconds(_FloatParam):
    """A number of seconds: finite (nan and inf are refused: a tick every nan seconds is a busy
    loop, a duration of inf never ends), above ``low`` (or at it, unless ``low_open``) and at
    most ``high``. A bad value is click's usage error: one line naming the option, exit 2."""

    name = "seconds"

    def __init__(
        self, low: float = 0.0, high: float = 10 * 365 * 86400.0, *, low_open: bool = True
    ):
        self.low, self.high, self.low_open = low, high, low_open

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            seconds = value
        else:
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        low_ok = seconds > self.low if self.low_open else seconds >= self.low
        if not math.isfinite(seconds) or not low_ok or seconds > self.high:
            above = "above" if self.low_open else "at least"
            self.fail(
                f"{value!r} is not {above} {self.low:.10g} and at most {self.high:.10g} seconds",
                param,
                ctx,
            )
        return seconds


class InterfaceName(_StrParam):
    """A network interface name as the kernel takes it: 1 to 15 bytes of UTF-8, no slash,
    no white space (a name that is not UTF-8 cannot be one of the machine's)."""

    name = "iface"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(f"{text.encode('utf-8', 'surrogateescape')!r} is not UTF-8", param, ctx)
        if not 1 <= len(raw) <= 15 or "/" in text or any(c.isspace() for c in text):
            self.fail(
                f"{text!r} is not an interface name (1-15 bytes, no '/' or spaces)", param, ctx
            )
        return text


MAX_ROWS = 1_000_000_000
"""The largest --top: more than any history holds, and a number SQLite takes."""


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that ``with`` blocks detach on the way out."""


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated(128 + signum)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flowscope")
def main() -> None:
    """flowscope: who is talking to this server, live and in history.

    An XDP program counts every packet the interfaces receive, per flow; flowscope reads
    the counts, shows them, and keeps them in SQLite."""
    signal.signal(signal.SIGTERM, _sigterm)


interfaces_option = click.option(
    "-i",
    "--interface",
    "interfaces",
    type=InterfaceName(),
    multiple=True,
    required=True,
    metavar="IFACE",
    help="Interface to watch (repeat for several).",
)
mode_option = click.option(
    "--mode",
    type=click.Choice(["auto", "native", "generic"]),
    default="auto",
    show_default=True,
    help="XDP mode; auto picks generic on virtual devices and native where a driver has it.",
)
direction_option = click.option(
    "--direction",
    type=click.Choice(["ingress", "egress", "both"]),
    envvar="FLOWSCOPE_DIRECTION",
    default="both",
    show_default=True,
    help="Received (XDP), sent (TC egress) or both; both falls back to ingress, with a notice, "
    "where the kernel refuses egress (env FLOWSCOPE_DIRECTION).",
)
force_option = click.option(
    "--force", is_flag=True, help="Replace an XDP program that is already on the interface."
)
entries_option = click.option(
    "--flow-entries",
    type=click.IntRange(1, 1 << 26),
    default=abi.DEFAULT_FLOW_ENTRIES,
    show_default=True,
    help="Size of each kernel flow map (IPv4 and IPv6).",
)


def _ipfix_target(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
    from flowscope.export.ipfix import parse_target

    return parse_target(value) if value else None


def _metrics_listen(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
    from flowscope.export.prometheus import parse_listen

    return parse_listen(value) if value else None


_EXPORT_OPTIONS = (
    click.option(
        "--ipfix",
        callback=_ipfix_target,
        envvar="FLOWSCOPE_IPFIX",
        metavar="[tcp://]HOST:PORT",
        help="Also export every flow record as IPFIX to this collector (UDP; tcp:// for TCP; "
        "env FLOWSCOPE_IPFIX).",
    ),
    click.option(
        "--ipfix-domain",
        type=click.IntRange(0, 2**32 - 1),
        default=0,
        show_default=True,
        help="IPFIX observation domain id.",
    ),
    click.option(
        "--ipfix-mtu",
        type=click.IntRange(min=576),
        default=1400,
        show_default=True,
        help="Path MTU to the collector: no IPFIX message is larger.",
    ),
    click.option(
        "--metrics",
        callback=_metrics_listen,
        envvar="FLOWSCOPE_METRICS",
        metavar="[ADDR:]PORT",
        help="Serve Prometheus metrics on http://ADDR:PORT/metrics (env FLOWSCOPE_METRICS).",
    ),
)


history_db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FLOWSCOPE_DB",
    default=None,
    help="History database (default: $XDG_STATE_HOME/flowscope/flows.db; env FLOWSCOPE_DB).",
)
interval_option = click.option(
    "--interval",
    type=Seconds(0.05, 3600.0, low_open=False),
    envvar="FLOWSCOPE_INTERVAL",
    default=1.0,
    show_default=True,
    help="Seconds between ticks (env FLOWSCOPE_INTERVAL; replay: seconds of capture time).",
)


def expiry_options(f: Any) -> Any:
    """--idle-timeout, --fin-timeout and --active-timeout: when flows become records (NetFlow
    semantics), for the commands that collect."""
    for opt in reversed(
        [
            click.option(
                "--idle-timeout",
                type=Seconds(0, 30 * 86400.0),
                default=15.0,
                show_default=True,
                help="A flow with no packet for this long is finished and written.",
            ),
            click.option(
                "--fin-timeout",
                type=Seconds(0, 30 * 86400.0),
                default=2.0,
                show_default=True,
                help="The idle timeout after a FIN or RST was seen.",
            ),
            click.option(
                "--active-timeout",
                type=Seconds(0, 30 * 86400.0),
                default=60.0,
                show_default=True,
                help="A long-lived flow is written as a record this often.",
            ),
        ]
    ):
        f = opt(f)
    return f


def export_options(f: Any) -> Any:
    """Adds --ipfix, --ipfix-domain, --ipfix-mtu and --metrics to a collecting command, which
    receives them as one ``exports: ExportSettings`` argument (see flowscope.export.outputs)."""
    import functools

    @functools.wraps(f)
    def wrapper(
        *args: Any,
        ipfix: Any,
        ipfix_domain: int,
        ipfix_mtu: int,
        metrics: Any,
        **kwargs: Any,
    ) -> Any:
        from flowscope.export.outputs import ExportSettings

        exports = ExportSettings(
            ipfix=ipfix, ipfix_domain=ipfix_domain, ipfix_mtu=ipfix_mtu, metrics=metrics
        )
        return f(*args, exports=exports, **kwargs)

    for option in reversed(_EXPORT_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


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
    from flowscope.bench import suite as bm

    names = bm.select(only)
    settings = bm.QUICK if quick else bm.DEFAULT
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


@main.command()
@interfaces_option
@history_db_option
@click.option(
    "--duration",
    type=Seconds(0),
    default=None,
    help="Seconds to record (default: until Ctrl-C or SIGTERM).",
)
@interval_option
@expiry_options
@click.option("--retain", default=None, metavar="AGE", help="Prune history older than AGE (7d).")
@click.option(
    "--max-db-size", default=None, metavar="SIZE", help="Prune the oldest history above SIZE (1GB)."
)
@mode_option
@direction_option
@force_option
@entries_option
@export_options
def record(
    interfaces: tuple[str, ...],
    db: Path | None,
    duration: float | None,
    interval: float,
    idle_timeout: float,
    fin_timeout: float,
    active_timeout: float,
    retain: str | None,
    max_db_size: str | None,
    mode: str,
    direction: str,
    force: bool,
    flow_entries: int,
    exports: ExportSettings,
) -> None:
    """Collect flows into the history database.

    Every tick reads the kernel's flow maps; finished flows (idle, FIN/RST, evicted) and
    long-lived ones (every active timeout) are written as records, with a sample of the totals
    and the new-flow events. On Ctrl-C and SIGTERM every live flow is written with end reason
    'shutdown'; after kill -9 or a crash the next start writes what the last tick had counted
    with end reason 'crash'. If the database cannot be written, stopping still ends within
    seconds and says how many records were lost. On a terminal a one-line status shows what
    is happening (rates are the kernel's totals; MAP FULL when flows found no room). With
    --ipfix every record also goes to an IPFIX collector; --metrics serves Prometheus
    metrics."""
    from flowscope.collect.collector import CollectorSettings
    from flowscope.collect.recorder import RecordSettings
    from flowscope.history.files import parse_size
    from flowscope.kernel.attach import check_can_attach
    from flowscope.pipeline import HistorySettings, Pipeline, PipelineSettings
    from flowscope.when import parse_duration

    history = HistorySettings(
        db=db,
        retain_seconds=parse_duration(retain, "--retain") if retain else None,
        max_bytes=parse_size(max_db_size, "--max-db-size") if max_db_size else None,
    )
    record_settings = RecordSettings(
        interfaces=interfaces,
        mode=mode,
        direction=direction,
        force=force,
        flow_entries=flow_entries,
        duration=duration,
        collector=CollectorSettings(
            interval=interval,
            idle_timeout=idle_timeout,
            fin_timeout=fin_timeout,
            active_timeout=active_timeout,
        ),
    )
    for name in interfaces:  # a wrong name or a taken interface fails before a database exists
        check_can_attach(name, force)
    settings = PipelineSettings(record_settings, history, exports)
    tty = sys.stderr.isatty()
    with Pipeline(settings, notice=_notice) as pipeline:
        _say_recovered(pipeline)

        def status(tick: Tick) -> None:
            sys.stderr.write("\r\033[K" + pipeline.status_line(tick))
            sys.stderr.flush()

        try:
            summary = pipeline.run(on_tick=status if tty else None, on_notice=_notice)
        finally:
            if tty:
                sys.stderr.write("\n")
            pipeline.close()
            problem = _say_problems(pipeline)
            if problem is not None and sys.exc_info()[0] is not None:
                # a second Ctrl-C or SIGTERM, or an error: say what history lacks on the way out
                click.echo(f"flowscope: error: {problem}", err=True)
    if problem is not None:
        raise FlowscopeError(problem)
    if tty:
        click.echo(
            f"recorded {summary.records} flow records and {summary.events} new-flow events "
            f"into {pipeline.db_path}",
            err=True,
        )


LIVE_GROUPS = ("flow", "src", "dst", "pair", "dport", "proto")
"""The console's groupings (ui.view.GROUPS, which a test keeps equal: the CLI does not import
numpy to print its help)."""


def _view_spec(filter_text: str | None, group: str, sort: str) -> ViewSpec:
    """The console's opening view from live's options; a bad one is a usage error naming what
    is accepted."""
    from flowscope.query.filter import parse
    from flowscope.query.view import COLUMNS, ViewSpec

    if group not in COLUMNS:
        raise click.BadParameter(
            f"{group!r} is not a grouping (one of {', '.join(COLUMNS)})", param_hint="--group-by"
        )
    if sort not in COLUMNS[group]:
        raise click.BadParameter(
            f"{sort!r} is not a column of the {group} grouping (one of "
            f"{', '.join(COLUMNS[group])})",
            param_hint="--sort",
        )
    flt = parse(filter_text or "")
    return ViewSpec(group=group, sort=sort, filter=None if flt.matches_all else flt)


def _say_problems(pipeline: Pipeline) -> str | None:
    """After a run: one warning when records did not reach the IPFIX collector; returns what
    history lacks (an error for the caller to raise), or None."""
    export_problem, history_problem = pipeline.problems()
    if export_problem is not None:
        click.echo(f"flowscope: warning: {printable(export_problem)}", err=True)
    return history_problem


def _notice(text: str) -> None:
    """A notice during a run (stderr, one line)."""
    click.echo(f"flowscope: {printable(text)}", err=True)


def _say_recovered(pipeline: Pipeline) -> None:
    """One line when the history database held what a killed run had not written."""
    if pipeline.recovered:
        click.echo(
            f"flowscope: history: {pipeline.recovered} flow records of a run that ended without "
            "shutting down were written with end reason 'crash'",
            err=True,
        )


# --- live: the console ------------------------------------------------------------------------


@main.command()
@interfaces_option
@history_db_option
@click.option("--no-db", is_flag=True, help="Keep no history: show live flows only.")
@interval_option
@mode_option
@direction_option
@force_option
@entries_option
@export_options
@click.option(
    "--filter", "filter_text", default=None, metavar="EXPR", help="Open with this filter ('/')."
)
@click.option(
    "--group-by",
    "group",
    default="flow",
    show_default=True,
    metavar="G",
    help=f"Open grouped ('g'): {', '.join(LIVE_GROUPS)}.",
)
@click.option(
    "--sort",
    default="bps",
    show_default=True,
    metavar="COL",
    help="Open sorted by this column of the grouping ('s'): bps, pps, bytes, packets, flows, "
    "age, src, dst, sport, dport, proto, ...",
)
def live(
    interfaces: tuple[str, ...],
    db: Path | None,
    no_db: bool,
    interval: float,
    mode: str,
    direction: str,
    force: bool,
    flow_entries: int,
    exports: ExportSettings,
    filter_text: str | None,
    group: str,
    sort: str,
) -> None:
    """The live console: top flows, new flows, rates, by keyboard (? for keys).

    It keeps recording history while it is open (--no-db: nothing is kept). Quitting (q,
    Ctrl-C, SIGTERM) writes the live flows and detaches the program."""
    from flowscope.collect.collector import CollectorSettings
    from flowscope.collect.recorder import RecordSettings
    from flowscope.kernel.attach import check_can_attach
    from flowscope.pipeline import HistorySettings, Pipeline, PipelineSettings

    if db is not None and no_db:
        raise click.UsageError("--db and --no-db exclude each other")
    spec = _view_spec(filter_text, group, sort)
    for name in interfaces:  # fails at once, not in a console stuck at "starting"
        check_can_attach(name, force)
    record_settings = RecordSettings(
        interfaces=interfaces,
        mode=mode,
        direction=direction,
        force=force,
        flow_entries=flow_entries,
        collector=CollectorSettings(interval=interval),
    )
    history = None if no_db else HistorySettings(db=db)
    with Pipeline(PipelineSettings(record_settings, history, exports)) as pipeline:
        _say_recovered(pipeline)
        from flowscope.ui.app import run_console  # the only command that imports textual

        run_console(pipeline, spec=spec)
        pipeline.close()
        problem = _say_problems(pipeline)
    if problem is not None:
        raise FlowscopeError(problem)


# --- history and sql: headless reads of the history database ----------------------------------

_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="An aligned table, one JSON object per line, or CSV with a header.",
)


def _history_cells(
    row: dict[str, Any], group_by: str, iface: bool, days: bool = False
) -> dict[str, str]:
    """The table cells of one history row: host:port pairs, the protocol after its
    direction's mark, first and last seen in the range (UTC; with the day when ``days``), human
    units; the interface only when the rows span several."""
    from flowscope.history.browse import key_cells
    from flowscope.vocab import human, human_bytes, human_rate, time_of_day

    cells = key_cells(row, group_by)
    if group_by == "flow":  # the protocol first, as ss and nfdump have it
        cells = {"proto": cells.pop("proto"), **cells}
        if iface:
            cells["iface"] = f"{row['iface']}" + (f".{row['vlan']}" if row["vlan"] else "")
    cells["first"] = time_of_day(row["first_seen"], days)
    cells["last"] = time_of_day(row["last_seen"], days)
    # the history screen's names: the IPv4 rows of a flow table then fit in 80 columns
    cells["pkts"] = human(row["packets"])
    cells["bytes"] = human_bytes(row["bytes"])
    cells["rate"] = human_rate(row["bps"])
    cells["recs"] = str(row["records"])
    return cells


_since_option = click.option(
    "--since",
    default=None,
    metavar="WHEN",
    help="Start: 10m, 2h, 7d ago; 13:30, yesterday 03:00, 2026-11-22 03:10 (local time, TZ) or "
    "ISO 8601 with a zone.",
)
_until_option = click.option(
    "--until", default=None, metavar="WHEN", help="End: as --since (default: now)."
)
_utc_option = click.option(
    "--utc", is_flag=True, help="Read times without a zone as UTC, not local time."
)


def _range(
    since: str | None, until: str | None, utc: bool, now: float
) -> tuple[float | None, float | None]:
    """--since and --until as Unix seconds (None where not given)."""
    from flowscope.when import parse_when

    t_since = parse_when(since, "--since", now, utc=utc) if since is not None else None
    t_until = parse_when(until, "--until", now, utc=utc) if until is not None else None
    return t_since, t_until


@main.command()
@history_db_option
@_since_option
@_until_option
@_utc_option
@click.option(
    "--top",
    type=click.IntRange(0, MAX_ROWS),
    default=20,
    show_default=True,
    help="Rows (0: all).",
)
@click.option(
    "--by",
    type=click.Choice(["bytes", "packets", "flows", "bps"]),
    default="bytes",
    show_default=True,
    help="What to rank by (flows: flow records; bps: the rate while active).",
)
@click.option(
    "--group-by",
    type=click.Choice(["flow", "src", "dst", "pair", "sport", "dport", "proto", "iface", "vlan"]),
    default="flow",
    show_default=True,
    help="Sum per flow, host, host pair (both directions), port (received and sent apart: "
    "↓tcp 443 is a service of ours, ↑tcp 50412 a peer's port), protocol, interface, VLAN.",
)
@click.option("--filter", "filter_text", default=None, metavar="EXPR", help="'dport 443 and tcp'")
@_format_option
@click.option(
    "--exact",
    is_flag=True,
    help="Read every record even for ranges of 3 h or more (else whole hours come from hourly "
    "sums: the same totals, faster).",
)
def history(
    db: Path | None,
    since: str | None,
    until: str | None,
    utc: bool,
    top: int,
    by: str,
    group_by: str,
    filter_text: str | None,
    fmt: str,
    exact: bool,
) -> None:
    """Top flows (or hosts, ports...) of a time range, from the history database.

    Each record's packets and bytes are spread evenly over its first..last seen, and only
    the share inside [since, until) counts (a 60 s record in a 10 s window counts a sixth);
    first and last seen are clipped to the range, and bps is the rate over the time a row was
    active in the range (its first to last packet there, at least 1 s), not over the whole
    range. Times typed without a zone are local (TZ; --utc: UTC); times printed are UTC, with
    their Z."""
    from flowscope import vocab as output
    from flowscope.history import files, queries, schema
    from flowscope.model import proto_name
    from flowscope.pipeline import db_path

    now = time.time()
    t_since, t_until = _range(since, until, utc, now)
    where: str | None = None
    params: list[object] = []
    conn = files.connect_readonly(db_path(db))
    try:
        if filter_text:
            from flowscope.query.filter import parse, register_sql_functions

            flt = parse(filter_text)
            if not flt.matches_all:
                where, params = flt.to_sql()
            register_sql_functions(conn)
        query = queries.HistoryQuery(
            since=t_since,
            until=t_until,
            top=top or None,
            by=by,
            group_by=group_by,
            where=where,
            params=params,
            exact=exact,
        )
        result = queries.history(conn, query, now=now)
    finally:
        conn.close()
    rows = result.rows
    for row in rows:
        row.pop("family", None)
    if fmt in ("json", "csv"):  # names for machines too; the table formats them itself
        rows = [{**r, "proto": proto_name(r["proto"])} if "proto" in r else r for r in rows]
    if fmt == "json":
        output.write_json_lines(rows)
        return
    if fmt == "csv":
        columns = list(rows[0]) if rows else ["packets", "bytes", "records"]
        output.write_csv(columns, [[r[c] for c in columns] for r in rows])
        return
    title = (
        f"{schema.iso_time(result.since)} to {schema.iso_time(result.until)}; "
        "times UTC; rate: while active in the range"
    )
    if not rows:
        click.echo(f"no flows from {title}")
        return
    several = len({(r.get("iface"), r.get("vlan"), r.get("direction")) for r in rows}) > 1
    days = result.until - result.since > 86400
    cells = [_history_cells(r, group_by, several, days) for r in rows]
    columns = list(cells[0])
    output.write_table(
        columns,
        [[c[k] for k in columns] for c in cells],
        right=("pkts", "bytes", "rate", "recs", "sport", "dport", "vlan"),
        title=title,
        droppable=("recs", "first", "last"),
    )


@main.command()
@history_db_option
@_since_option
@_until_option
@_utc_option
@_format_option
def alerts(db: Path | None, since: str | None, until: str | None, utc: bool, fmt: str) -> None:
    """Scans and SYN floods detected while recording, from the history database.

    Every recording (record, live, replay --db, demo) watches its new connections: one source
    reaching many ports or hosts within seconds is a scan, many sources opening connections
    to one port is a SYN flood. Each alert is one row, kept up to date while it goes on:
    source, target, its first and last new flow, the new flows counted and their rate, and
    the filter that shows its flows (`flowscope history --filter ...`). Lists the alerts
    going on at some time in [--since, --until] (default: all). Times printed are UTC, with
    their Z."""
    from flowscope import vocab as output
    from flowscope.collect.detect import COLUMNS, rate
    from flowscope.history import files, queries, schema
    from flowscope.pipeline import db_path

    now = time.time()
    t_since, t_until = _range(since, until, utc, now)
    conn = files.connect_readonly(db_path(db))
    try:
        rows = queries.alerts(conn, t_since, now if t_until is None else t_until)
    finally:
        conn.close()
    for row in rows:
        start, last = schema.parse_iso(row["start"]), schema.parse_iso(row["last"])
        row["rate"] = round(rate(row["flows"], start, last), 1)
    if fmt == "json":
        output.write_json_lines(rows)
    elif fmt == "csv":
        columns = [*queries.ALERT_COLUMNS, "rate"]
        output.write_csv(columns, [[r[c] for c in columns] for r in rows])
    elif not rows:
        since_text = f" since {schema.iso_time(t_since)}" if t_since is not None else ""
        until_text = f" until {schema.iso_time(t_until)}" if t_until is not None else ""
        click.echo(f"no alerts{since_text}{until_text}")
    else:
        days = len({r["start"][:10] for r in rows} | {r["last"][:10] for r in rows}) > 1
        output.write_table(
            [*COLUMNS, "filter"],  # as the console's alerts screen has them
            [
                [
                    r["kind"],
                    r["source"],
                    r["target"],
                    output.time_of_day(r["start"], days),
                    output.time_of_day(r["last"], days),
                    str(r["flows"]),
                    output.human(r["rate"]),
                    r["filter"],
                ]
                for r in rows
            ],
            right=("flows", "per s"),
            title="alerts; times UTC; per s: new flows per second while it went on",
            droppable=("filter", "last"),
        )


@main.command()
@history_db_option
@_format_option
@click.option(
    "--timeout",
    type=Seconds(0, 86400.0),
    default=10.0,
    show_default=True,
    help="Stop the statement after this many seconds (Ctrl-C stops it too).",
)
@click.option(
    "--max-rows",
    type=click.IntRange(1, MAX_ROWS),
    default=100_000,
    show_default=True,
    help="Refuse a result longer than this (use LIMIT).",
)
@click.option(
    "--max-memory",
    type=click.IntRange(16, 1 << 20),
    default=256,
    show_default=True,
    metavar="MIB",
    help="Stop a statement, or refuse a result, that needs more memory than this.",
)
@click.argument("query")
def sql(
    db: Path | None, fmt: str, timeout: float, max_rows: int, max_memory: int, query: str
) -> None:
    """Run one read-only SQL statement on the history database.

    Tables: flows, samples, events, flows_hourly (see README). Writes, ATTACH and pragmas
    that change anything are refused; a statement runs at most --timeout seconds, uses at
    most --max-memory MiB and returns at most --max-rows rows."""
    from flowscope import vocab as output
    from flowscope.history.sandbox import read_sql
    from flowscope.pipeline import db_path

    columns, rows = read_sql(
        db_path(db), query, timeout=timeout, max_rows=max_rows, max_memory=max_memory
    )
    if fmt == "json":
        output.write_json_lines([dict(zip(columns, r, strict=True)) for r in rows])
    elif fmt == "csv":
        output.write_csv(columns, rows)
    elif columns:
        output.write_table(columns, rows)


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


# --- replay: a capture file through the real program -------------------------------------------

PROGRESS_MIN_BYTES = 8 << 20
"""Captures smaller than this replay in well under a second: no progress bar."""


def _stdout_is_terminal() -> bool:
    """Whether the console can open (a function, so tests can say yes)."""
    return sys.stdout.isatty()


def _history_span(first: float, last: float) -> str:
    """The console's history span that shows a whole capture (at most its last day)."""
    for span, seconds in (("5m", 300), ("1h", 3600)):
        if last - first <= seconds:
            return span
    return "24h"


@contextlib.contextmanager
def _replay_progress(path: Path) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr for a large capture on a terminal; None otherwise."""
    if not sys.stderr.isatty() or path.stat().st_size < PROGRESS_MIN_BYTES:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with Progress(
        "replaying",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("replay", total=path.stat().st_size)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@main.command()
@click.argument("capture", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per flow, then a summary.")
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write flows, samples and new-flow events into this history database.",
)
@interval_option
@expiry_options
@entries_option
@export_options
def replay(
    capture: Path,
    as_json: bool,
    db: Path | None,
    interval: float,
    idle_timeout: float,
    fin_timeout: float,
    active_timeout: float,
    flow_entries: int,
    exports: ExportSettings,
) -> None:
    """Replay a pcap or pcapng capture through the XDP program (nothing is attached).

    Every frame runs through the same program as live, with BPF_PROG_TEST_RUN, on the
    capture's clock: first and last seen are capture times, bytes the original lengths, and
    flows expire as they would have live. --json prints the flows; --db writes history; with
    neither, on a terminal, the console's history screen opens on the result (piped, the
    flows are printed as with --json). --ipfix exports every record as the replay makes it
    (flow times are the capture's); --metrics serves the replay's numbers while it runs."""
    import tempfile

    from flowscope.collect.collector import CollectorSettings
    from flowscope.collect.replay import MAX_WRITER_BACKLOG, JsonSink, ReplaySettings, summary_json
    from flowscope.pipeline import HistorySettings, Pipeline, PipelineSettings

    settings = ReplaySettings(
        path=capture,
        flow_entries=flow_entries,
        collector=CollectorSettings(
            interval=interval,
            idle_timeout=idle_timeout,
            fin_timeout=fin_timeout,
            active_timeout=active_timeout,
        ),
    )
    browse = not as_json and db is None and _stdout_is_terminal()
    if not as_json and db is None and not browse:
        as_json = True
    with contextlib.ExitStack() as stack:
        if browse:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="flowscope-replay-"))
            db = Path(tmp) / "replay.db"
        history = HistorySettings(db=db) if db is not None else None
        # the replay waits for the exporter as for the writer, so its queue may hold more
        pipeline = Pipeline(
            PipelineSettings(settings, history, exports),
            fallback=JsonSink(sys.stdout.write),
            max_queue=2 * MAX_WRITER_BACKLOG,
        )
        with pipeline, _replay_progress(capture) as progress:
            summary = pipeline.replay(progress)
        _say_problems(pipeline)
        writer = pipeline.writer
        if as_json:
            sys.stdout.write(json.dumps(summary_json(summary, capture)) + "\n")
            sys.stdout.flush()
        if writer is not None and writer.status:
            raise FlowscopeError(f"history: {writer.status}")
        if summary.damage is not None and summary.cut_off:
            # an interrupted capture (tcpdump killed mid-write): what it holds was replayed
            click.echo(f"flowscope: warning: {printable(str(summary.damage))}", err=True)
        elif summary.damage is not None:
            raise summary.damage
        if summary.interrupted:
            raise KeyboardInterrupt
        if db is not None and not browse:
            rate = summary.frames / summary.seconds if summary.seconds > 0 else 0.0
            click.echo(
                f"replayed {summary.frames} frames ({rate:,.0f}/s): {summary.records} flow "
                f"records and {summary.events} new-flow events into {db}",
                err=True,
            )
        if browse and db is not None:
            _browse_replay(db, summary.first_ns, summary.last_ns, summary.records)


def _browse_replay(db: Path, first_ns: int | None, last_ns: int | None, records: int) -> None:
    """The console's history screen on the replay's database, around the capture's time."""
    if first_ns is None or last_ns is None:
        click.echo("the capture holds no frames")
        return
    first, last = first_ns / 1e9, last_ns / 1e9
    from flowscope.ui.history import HistoryApp

    HistoryApp(db, now=lambda: last + 1, span=_history_span(first, last)).run()
