"""A probe: the program compiled once and attached to one or more interfaces.

This is what the commands use; it owns the lifetime of every attachment, so leaving the
``with`` block (normally, by Ctrl-C, or by SIGTERM turned into SystemExit by the CLI) always
detaches. SIGKILL is covered by the kernel: the links die with the process.
"""

from __future__ import annotations

from flowscope import abi
from flowscope.probe.attach import XdpAttachment, interface_info
from flowscope.probe.program import FlowProgram


class Probe:
    """FlowProgram plus its XDP attachments."""

    def __init__(
        self,
        interfaces: list[str],
        *,
        mode: str = "auto",
        force: bool = False,
        flow_entries: int = abi.DEFAULT_FLOW_ENTRIES,
        cflags: tuple[str, ...] = (),
    ) -> None:
        for name in interfaces:  # a wrong name fails before the seconds of compiling
            interface_info(name)
        self.program = FlowProgram(flow_entries=flow_entries, cflags=cflags)
        self.attachments: list[XdpAttachment] = []
        try:
            for name in dict.fromkeys(interfaces):
                self.attachments.append(
                    XdpAttachment(self.program.prog_fd, name, mode=mode, force=force)
                )
        except BaseException:
            self.close()
            raise

    def interface_names(self) -> dict[int, str]:
        """ifindex -> name of every attached interface."""
        return {a.ifindex: a.ifname for a in self.attachments}

    def close(self) -> None:
        """Detach from every interface, then free the program."""
        for a in self.attachments:
            a.detach()
        self.program.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
