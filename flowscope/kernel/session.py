"""A probe: the programs compiled once and attached to one or more interfaces.

This is what the commands use; it owns the lifetime of every attachment, so leaving the
``with`` block (normally, by Ctrl-C, or by SIGTERM turned into SystemExit by the CLI) always
detaches. SIGKILL is covered by the kernel: the links (XDP, tcx) die with the process.

``direction`` picks the hooks: XDP for what the interfaces receive (ingress), TC for what they
send (egress), or both. With "both" an egress hook the kernel refuses is not fatal: the probe
watches ingress only and says why in ``notices``; asked for egress alone, it is an error.
"""

from __future__ import annotations

from flowscope import abi
from flowscope.errors import FlowscopeError, UsageError
from flowscope.kernel.attach import XdpAttachment, interface_info
from flowscope.kernel.egress import TcEgressAttachment
from flowscope.kernel.program import FlowProgram

DIRECTIONS = ("ingress", "egress", "both")


def warm_up() -> None:
    """Import what attaching needs ahead of the attach: pyroute2 alone takes a quarter of a
    second, which otherwise follows the compile instead of overlapping it."""
    import pyroute2.netlink.exceptions  # noqa: F401  (the package's import is the cost)


class Probe:
    """FlowProgram plus its XDP (ingress) and TC (egress) attachments."""

    def __init__(
        self,
        interfaces: list[str],
        *,
        mode: str = "auto",
        force: bool = False,
        flow_entries: int = abi.DEFAULT_FLOW_ENTRIES,
        cflags: tuple[str, ...] = (),
        direction: str = "both",
        owners: bool = False,
        program: FlowProgram | None = None,
    ) -> None:
        """``program``: one already compiled with these settings (kernel.program.ProgramBuild);
        the probe owns it from here."""
        try:
            self._check(interfaces, direction)
        except BaseException:
            if program is not None:
                program.close()
            raise
        # owners: the socket hooks (kernel.owners), compiled with the flow programs
        self.program = program or FlowProgram(
            flow_entries=flow_entries, cflags=cflags, owners=owners
        )
        self.attachments: list[XdpAttachment] = []
        self.egress: list[TcEgressAttachment] = []
        self.notices: list[str] = []
        """What the user should know about the attachments (egress refused, ...)."""
        try:
            names = list(dict.fromkeys(interfaces))
            # egress first: loading the TC program takes the verifier a while, and a caller
            # that sees the XDP program attached may start sending (the tests do)
            if direction in ("egress", "both"):
                self._attach_egress(names, optional=direction == "both")
            if direction in ("ingress", "both"):
                for name in names:
                    self.attachments.append(
                        XdpAttachment(self.program.prog_fd, name, mode=mode, force=force)
                    )
        except BaseException:
            self.close()
            raise

    def _attach_egress(self, names: list[str], *, optional: bool) -> None:
        try:
            fd = self.program.tc_prog_fd
            for name in names:
                self.egress.append(TcEgressAttachment(fd, name))
        except FlowscopeError as e:
            if not optional:
                raise
            for a in self.egress:
                a.detach()
            self.egress.clear()
            self.notices.append(f"egress is not watched ({e.message}); watching ingress only")

    @staticmethod
    def _check(interfaces: list[str], direction: str) -> None:
        if direction not in DIRECTIONS:
            raise UsageError(
                f"unknown direction {direction!r}", f"choose one of {', '.join(DIRECTIONS)}"
            )
        for name in interfaces:  # a wrong name fails before the seconds of compiling
            interface_info(name)

    @property
    def directions(self) -> tuple[str, ...]:
        """The directions actually watched: ("ingress",), ("egress",) or both."""
        out = ("ingress",) if self.attachments else ()
        return out + (("egress",) if self.egress else ())

    def interface_names(self) -> dict[int, str]:
        """ifindex -> name of every attached interface."""
        names = {a.ifindex: a.ifname for a in self.attachments}
        names.update({a.ifindex: a.ifname for a in self.egress})
        return names

    def describe(self) -> str:
        """Each interface with how it is watched: ``veth0 (generic XDP, tcx egress)``."""
        parts: dict[str, list[str]] = {}
        for a in self.attachments:
            parts.setdefault(a.ifname, []).append(f"{a.mode} XDP")
        for e in self.egress:
            parts.setdefault(e.ifname, []).append(f"{e.how} egress")
        return ", ".join(f"{name} ({', '.join(how)})" for name, how in parts.items())

    def close(self) -> None:
        """Detach from every interface, then free the programs."""
        for e in self.egress:
            e.detach()
        for a in self.attachments:
            a.detach()
        self.program.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
