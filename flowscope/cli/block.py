"""`block`, `unblock` and `blocks`: change and list what a running `record` or `live` started
with --allow-block drops, through its control socket (collect.control)."""

from __future__ import annotations

import sys

import click

from flowscope.cli.main import main
from flowscope.errors import FlowscopeError


def _ask(message: dict[str, object]) -> dict[str, object]:
    from flowscope.collect.control import control_path, request

    return request(control_path(), message)


@main.command()
@click.argument("rule", nargs=-1, required=True)
@click.option("--ttl", default="10m", show_default=True, help="How long the rule lives (30s, 2h).")
@click.option(
    "--yes", is_flag=True, help="Confirm a rule that needs a second confirmation, unasked."
)
def block(rule: tuple[str, ...], ttl: str, yes: bool) -> None:
    """Drop what RULE matches in the running recorder's XDP program.

    RULE is a source (198.19.77.0/24, 198.19.77.5, 2001:db8::/64), a target (udp/9,
    tcp/443), or a source then a target. A rule that would drop packets of your own SSH
    client, of an address of this host, or more than the recorder's --block-share (half) of
    the last tick's received packets needs a second confirmation (asked on a terminal, else
    --yes). Every block is written to history; the rule ends after --ttl, on `flowscope
    unblock`, or with the recorder."""
    from flowscope.collect.block import parse_rule
    from flowscope.when import parse_duration

    text = parse_rule(" ".join(rule)).text  # a mistake is said here, before asking anyone
    seconds = parse_duration(ttl, "--ttl")
    answer = _ask({"op": "block", "rule": text, "ttl": seconds, "confirmed": yes})
    if "confirm" in answer:
        reasons = "; ".join(str(r) for r in answer["confirm"])  # type: ignore[attr-defined]
        if not sys.stdin.isatty():
            raise FlowscopeError(
                f"{answer['rule']} needs a second confirmation: {reasons}",
                "check the rule, then give --yes",
            )
        click.confirm(f"{answer['rule']}: {reasons}. Block it all the same?", abort=True)
        answer = _ask({"op": "block", "rule": text, "ttl": seconds, "confirmed": True})
    click.echo(
        f"blocking {answer['rule']} for {ttl} (its flows: --filter '{answer['filter']}')",
        err=True,
    )


@main.command()
@click.argument("rule", nargs=-1, required=True)
def unblock(rule: tuple[str, ...]) -> None:
    """Take a block rule out of the running recorder (as `flowscope blocks` shows it)."""
    from flowscope.collect.block import parse_rule

    answer = _ask({"op": "unblock", "rule": parse_rule(" ".join(rule)).text})
    click.echo(f"unblocked {answer['rule']}: it dropped {answer['matched']:,} packets", err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def blocks(as_json: bool) -> None:
    """The block rules in force in the running recorder: each with the packets it dropped and
    the seconds it has left."""
    from flowscope.cli.output import write_json_lines, write_table

    rules = _ask({"op": "list"})["rules"]
    rows: list[dict[str, object]] = list(rules)  # type: ignore[call-overload]
    if as_json:
        write_json_lines(rows)
        return
    write_table(
        ("rule", "dropped", "left"),
        [(r["rule"], f"{r['matched']:,}", f"{float(r['remaining']):.0f}s") for r in rows],  # type: ignore[arg-type]
        right=("dropped", "left"),
        title=f"{len(rows)} block rule{'s' if len(rows) != 1 else ''}",
    )
