"""Options that several commands share: interfaces, XDP mode, direction, map size, the history
database, the tick interval, expiry timeouts and the exports (--ipfix, --metrics)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from flowscope.cli.main import InterfaceName, Seconds
from flowscope.errors import UsageError
from flowscope.vocab import size_text

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
_allow_block = click.option(
    "--allow-block",
    is_flag=True,
    help="Build the XDP program with a drop path and take block rules from `flowscope block` "
    "(off by default; every rule ends with this process).",
)
_block_share = click.option(
    "--block-share",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="With --allow-block: a rule that would drop more than this share of the received "
    "packets needs a second confirmation.",
)


def block_option(f: Any) -> Any:
    """--allow-block and --block-share."""
    return _allow_block(_block_share(f))


def _map_memory(ctx: click.Context, param: click.Parameter, value: str) -> int:
    from flowscope.history.files import parse_size

    return parse_size(value, "--map-memory")


_flow_entries = click.option(
    "--flow-entries",
    type=click.IntRange(1, 1 << 26),
    default=None,
    help="Entries of each kernel flow map (IPv4 and IPv6), whatever they cost: overrides "
    "--map-memory.",
)
_map_memory_option = click.option(
    "--map-memory",
    callback=_map_memory,
    default="256MiB",
    show_default=True,
    metavar="SIZE",
    help="Locked kernel memory the two flow maps may take. Each entry holds a value per "
    "possible CPU, so the entries follow from the CPU count: 65,536 each up to 40 CPUs, "
    "21,248 on 128.",
)


def flow_entries_for(flow_entries: int | None, map_memory: int, ncpus: int) -> int:
    """--flow-entries when given, else what --map-memory buys on ``ncpus`` possible CPUs (at
    most the default 65,536); a budget too small for 256 entries is a UsageError."""
    from flowscope.kernel import memory

    if flow_entries is not None:
        return flow_entries
    entries = memory.entries_for(map_memory, ncpus)
    if entries == 0:
        need = memory.flow_maps_bytes(memory.ENTRY_STEP, ncpus)
        raise UsageError(
            f"--map-memory: {size_text(map_memory)} does not hold {memory.ENTRY_STEP} flows "
            f"per map on {ncpus} possible CPUs",
            f"give at least {size_text(need)}, or --flow-entries",
        )
    return entries


def entries_option(f: Any) -> Any:
    """--flow-entries and --map-memory, resolved into one ``flow_entries`` argument."""

    @functools.wraps(f)
    def wrapper(*args: Any, flow_entries: int | None, map_memory: int, **kwargs: Any) -> Any:
        from flowscope.kernel.libbpf import num_possible_cpus

        entries = flow_entries_for(flow_entries, map_memory, num_possible_cpus())
        return f(*args, flow_entries=entries, **kwargs)

    return _flow_entries(_map_memory_option(wrapper))


def _ipfix_target(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
    if not value:
        return None
    from flowscope.export.ipfix import parse_target

    return parse_target(value)


def _metrics_listen(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
    if not value:  # prometheus_client takes a tenth of a second to import: only when asked
        return None
    from flowscope.export.prometheus import parse_listen

    return parse_listen(value)


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
_INTERVAL = click.option(
    "--interval",
    type=Seconds(0.05, 3600.0, low_open=False),
    envvar="FLOWSCOPE_INTERVAL",
    default=1.0,
    show_default=True,
    help="Seconds between ticks (env FLOWSCOPE_INTERVAL; replay: seconds of capture time).",
)
_EXPIRY = (
    ("--idle-timeout", 15.0, "A flow with no packet for this long is finished and written."),
    ("--fin-timeout", 2.0, "The idle timeout after a FIN or RST was seen."),
    ("--active-timeout", 60.0, "A long-lived flow is written as a record this often."),
)
"""When flows become records (NetFlow semantics): option, default, help."""


def collector_options(*, expiry: bool = True) -> Callable[[Any], Any]:
    """--interval and, with ``expiry``, --idle-timeout, --fin-timeout and --active-timeout: the
    command receives them as one ``collector: CollectorSettings`` argument."""

    def decorate(f: Any) -> Any:
        @functools.wraps(f)
        def wrapper(*args: Any, interval: float, **kwargs: Any) -> Any:
            from flowscope.collect.collector import CollectorSettings

            names = [name[2:].replace("-", "_") for name, _, _ in _EXPIRY] if expiry else []
            timeouts = {n: kwargs.pop(n) for n in names}
            return f(*args, collector=CollectorSettings(interval=interval, **timeouts), **kwargs)

        options = [_INTERVAL]
        if expiry:
            options += [
                click.option(
                    name, type=Seconds(0, 30 * 86400.0), default=default, show_default=True,
                    help=text,
                )
                for name, default, text in _EXPIRY
            ]  # fmt: skip
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


def export_options(f: Any) -> Any:
    """Adds --ipfix, --ipfix-domain, --ipfix-mtu and --metrics to a collecting command, which
    receives them as one ``exports: ExportSettings`` argument (see flowscope.export.outputs)."""

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


def as_record_settings(f: Any) -> Any:
    """Gathers what the attach options said (-i, --mode, --direction, --force, --flow-entries,
    --duration where there is one, and collector_options) into one ``source: RecordSettings``
    argument. Put it right above the command's function, under its options."""

    @functools.wraps(f)
    def wrapper(
        *args: Any,
        interfaces: tuple[str, ...],
        mode: str,
        direction: str,
        force: bool,
        flow_entries: int,
        collector: Any,
        **kwargs: Any,
    ) -> Any:
        from flowscope.collect.recorder import RecordSettings

        source = RecordSettings(
            interfaces=interfaces,
            mode=mode,
            direction=direction,
            force=force,
            flow_entries=flow_entries,
            duration=kwargs.pop("duration", None),
            collector=collector,
            allow_block=kwargs.pop("allow_block", False),
            block_share=kwargs.pop("block_share", 0.5),
        )
        return f(*args, source=source, **kwargs)

    return wrapper
