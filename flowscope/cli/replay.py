"""`replay`: a pcap or pcapng capture through the real program (BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from flowscope.cli.main import main, say_problems
from flowscope.cli.options import (
    collector_options,
    entries_option,
    export_options,
)
from flowscope.errors import FlowscopeError
from flowscope.vocab import printable

if TYPE_CHECKING:
    from flowscope.collect.collector import CollectorSettings
    from flowscope.export.outputs import ExportSettings

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
@click.option(
    "--workers",
    type=click.IntRange(1, 8),  # collect.split.MAX_HELPERS + 1, without importing it
    default=None,
    help="Processes that run the frames, each on its own CPU, the frames between two hosts "
    "always in one (default: one per CPU for a capture of 8 MiB or more, else one).",
)
@collector_options()
@entries_option
@export_options
def replay(
    capture: Path,
    as_json: bool,
    db: Path | None,
    workers: int | None,
    collector: CollectorSettings,
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

    from flowscope.collect.replay import MAX_WRITER_BACKLOG, JsonSink, ReplaySettings, summary_json
    from flowscope.pipeline import HistorySettings, Pipeline, PipelineSettings

    settings = ReplaySettings(
        path=capture,
        flow_entries=flow_entries,
        collector=collector,
        workers=workers,
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
        say_problems(pipeline)
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
