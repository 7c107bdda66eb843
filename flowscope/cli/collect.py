"""`record` and `live`: collect from interfaces into history, headless or in the console.
The pipeline (flowscope.pipeline) builds and closes what they use; these say what they want and
report how it went."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from flowscope.cli.main import Seconds, main, notice, say_problems, say_recovered
from flowscope.cli.options import (
    as_record_settings,
    block_option,
    collector_options,
    direction_option,
    entries_option,
    export_options,
    force_option,
    history_db_option,
    interfaces_option,
    mode_option,
)
from flowscope.errors import FlowscopeError
from flowscope.vocab import GROUPINGS

if TYPE_CHECKING:
    from flowscope.collect.collector import Tick
    from flowscope.collect.recorder import RecordSettings
    from flowscope.export.outputs import ExportSettings
    from flowscope.query.view import ViewSpec


@main.command()
@interfaces_option
@history_db_option
@click.option(
    "--duration",
    type=Seconds(0),
    default=None,
    help="Seconds to record (default: until Ctrl-C or SIGTERM).",
)
@collector_options()
@click.option("--retain", default=None, metavar="AGE", help="Prune history older than AGE (7d).")
@click.option(
    "--max-db-size", default=None, metavar="SIZE", help="Prune the oldest history above SIZE (1GB)."
)
@mode_option
@direction_option
@force_option
@entries_option
@block_option
@export_options
@as_record_settings
def record(
    source: RecordSettings,
    db: Path | None,
    retain: str | None,
    max_db_size: str | None,
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
    from flowscope.history.files import parse_size
    from flowscope.kernel.attach import check_can_attach
    from flowscope.pipeline import HistorySettings, Pipeline, PipelineSettings
    from flowscope.when import parse_duration

    history = HistorySettings(
        db=db,
        retain_seconds=parse_duration(retain, "--retain") if retain else None,
        max_bytes=parse_size(max_db_size, "--max-db-size") if max_db_size else None,
    )
    for name in source.interfaces:  # a wrong name or a taken one fails before a database exists
        check_can_attach(name, source.force)
    settings = PipelineSettings(source, history, exports)
    tty = sys.stderr.isatty()
    with Pipeline(settings, notice=notice) as pipeline:
        say_recovered(pipeline)  # first: while BCC compiles, descriptor 2 is its log
        pipeline.prepare()

        def status(tick: Tick) -> None:
            sys.stderr.write("\r\033[K" + pipeline.status_line(tick))
            sys.stderr.flush()

        try:
            summary = pipeline.run(on_tick=status if tty else None, on_notice=notice)
        finally:
            if tty:
                sys.stderr.write("\n")
            pipeline.close()
            problem = say_problems(pipeline)
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


LIVE_GROUPS = tuple(GROUPINGS)
"""The console's groupings, for --help without importing numpy."""


def _view_spec(filter_text: str | None, group: str, sort: str) -> ViewSpec:
    """The console's opening view from live's options; a bad one is a usage error naming what
    is accepted."""
    from flowscope.kernel.btf import known_drop_reasons
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
    flt = parse(filter_text or "", known_drop_reasons)
    return ViewSpec(group=group, sort=sort, filter=None if flt.matches_all else flt)


# --- live: the console ------------------------------------------------------------------------


@main.command()
@interfaces_option
@history_db_option
@click.option("--no-db", is_flag=True, help="Keep no history: show live flows only.")
@collector_options(expiry=False)
@mode_option
@direction_option
@force_option
@entries_option
@block_option
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
    "age, retrans, rtt, drops, src, dst, sport, dport, proto, ...",
)
@as_record_settings
def live(
    source: RecordSettings,
    db: Path | None,
    no_db: bool,
    exports: ExportSettings,
    filter_text: str | None,
    group: str,
    sort: str,
) -> None:
    """The live console: top flows, new flows, rates, by keyboard (? for keys).

    It keeps recording history while it is open (--no-db: nothing is kept). Quitting (q,
    Ctrl-C, SIGTERM) writes the live flows and detaches the program."""
    from flowscope.collect.recorder import prepare
    from flowscope.kernel.attach import check_can_attach
    from flowscope.ui.terminal import keep_terminal

    if db is not None and no_db:
        raise click.UsageError("--db and --no-db exclude each other")
    spec = _view_spec(filter_text, group, sort)
    for name in source.interfaces:  # fails at once, not in a console stuck at "starting"
        check_can_attach(name, source.force)
    # BCC compiles from here, while the rest is imported, history opened and the console
    # drawn: the console draws on its own copy of the terminal, since descriptor 2 is the
    # compiler's log until it is done (ui.terminal says why)
    with keep_terminal() as tty:
        build = prepare(source)
        try:
            from flowscope.pipeline import HistorySettings, Pipeline, PipelineSettings

            history = None if no_db else HistorySettings(db=db)
            with Pipeline(PipelineSettings(source, history, exports)) as pipeline:
                pipeline.prepare(build)
                say_recovered(pipeline, tty)
                from flowscope.ui.app import run_console  # the only command that imports textual

                run_console(pipeline, spec=spec, terminal=tty)
                pipeline.close()
                problem = say_problems(pipeline)
        finally:
            build.close()  # waited for, so that an error is said on the terminal, not the log
    if problem is not None:
        raise FlowscopeError(problem)
