"""Attach the XDP program to interfaces with bpf_link, and never leave it behind.

A bpf_link belongs to the file descriptor that holds it: closing it, or the process dying (even
by SIGKILL), removes the program from the interface. bcc's attach_xdp uses netlink instead,
whose attachment outlives the process, so flowscope does not use it.

Mode "auto" picks generic (skb) XDP on virtual devices: on veth, native XDP switches the device
to its NAPI path, which costs about as much CPU as a whole libpcap flow tool, while generic mode
costs almost nothing (FACTS.md). On devices with a driver it tries native XDP first.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowscope.errors import AttachError, FlowscopeError, InterfaceError
from flowscope.kernel import libbpf

MODES = ("auto", "native", "generic")
_ATTACHED_MODES = {1: "native", 2: "generic", 3: "offload", 4: "multiple"}
# pyroute2 decodes IFLA_XDP_ATTACHED to these names (0.9), older versions give the number.
_ATTACHED_NAMES = {"xdp": 1, "xdpgeneric": 2, "xdpoffload": 3, "xdpmulti": 4}


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """What flowscope needs to know about an interface before attaching."""

    name: str
    index: int
    kind: str | None  # rtnetlink link kind (veth, bridge, ...); None for a device with a driver
    xdp_prog_id: int  # 0 when no XDP program is attached
    xdp_mode: str | None

    @property
    def virtual(self) -> bool:
        """True for software devices (veth, bridge, ...), which have no native XDP of note."""
        return self.kind is not None or not Path(f"/sys/class/net/{self.name}/device").exists()


def _attrs(msg: Any, name: str) -> dict[str, Any]:
    nested = msg.get_attr(name)
    if not nested:
        return {}
    return dict(nested.get("attrs", []))


def interface_info(name: str) -> InterfaceInfo:
    """Look an interface up by name; InterfaceError when there is none."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                raise _no_interface(name)
            link = ipr.get_links(idx[0])[0]
    except NetlinkError as e:
        raise InterfaceError(f"cannot read interface {name!r}: {e}") from e
    xdp = _attrs(link, "IFLA_XDP")
    linkinfo = _attrs(link, "IFLA_LINKINFO")
    raw = xdp.get("IFLA_XDP_ATTACHED") or 0
    attached = _ATTACHED_NAMES.get(raw, 0) if isinstance(raw, str) else int(raw)
    prog_id = int(xdp.get("IFLA_XDP_PROG_ID") or 0)
    if attached and not prog_id:
        prog_id = int(
            xdp.get("IFLA_XDP_DRV_PROG_ID")
            or xdp.get("IFLA_XDP_SKB_PROG_ID")
            or xdp.get("IFLA_XDP_HW_PROG_ID")
            or 0
        )
    return InterfaceInfo(
        name=name,
        index=idx[0],
        kind=linkinfo.get("IFLA_INFO_KIND"),
        xdp_prog_id=prog_id if attached else 0,
        xdp_mode=_ATTACHED_MODES.get(attached),
    )


def _detach_foreign(info: InterfaceInfo) -> None:
    """Remove another XDP program attached through netlink (only with --force)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    flags = {"native": libbpf.XDP_FLAGS_DRV_MODE, "generic": libbpf.XDP_FLAGS_SKB_MODE}.get(
        info.xdp_mode or "", 0
    )
    try:
        with IPRoute() as ipr:
            ipr.link(
                "set",
                index=info.index,
                xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", flags)]},
            )
    except NetlinkError as e:
        raise AttachError(
            f"cannot remove the XDP program (id {info.xdp_prog_id}) on {info.name}: {e}",
            "it may be held by a bpf_link of another process; stop that process first",
        ) from e


FLOWSCOPE_XDP = "flowscope_xdp"
"""The name the kernel reports for flowscope's XDP program (its function in bpf/flowscope.c;
the kernel keeps 15 characters)."""


@dataclass(frozen=True, slots=True)
class XdpProgram:
    """An attached XDP program as an operator should read it: flowscope's own (another
    flowscope is watching), or someone else's, by the name the kernel reports and its id."""

    id: int
    name: str | None

    @property
    def ours(self) -> bool:
        return self.name == FLOWSCOPE_XDP

    @property
    def label(self) -> str:
        """``the XDP program 'xdp_ddos'``, ``flowscope's XDP program``."""
        if self.ours:
            return "flowscope's XDP program"
        return f"the XDP program {self.name!r}" if self.name else "an XDP program"

    def __str__(self) -> str:
        whose = ": another flowscope record, live or demo" if self.ours else ""
        return f"{self.label} (id {self.id}{whose})"


def xdp_program(prog_id: int) -> XdpProgram:
    """The program of this id, named as the kernel names it (None when it cannot say)."""
    try:
        return XdpProgram(prog_id, libbpf.prog_name(prog_id))
    except FlowscopeError:
        return XdpProgram(prog_id, None)


def check_can_attach(ifname: str, force: bool) -> None:
    """Refuse an interface flowscope may not attach to: there is none of that name, or it runs
    another XDP program (unless ``force``). Commands call this before anything else, so that a
    console or a database is never opened for an attach that cannot happen; it asks libbpf,
    not pyroute2, whose import would cost the console a tenth of a second before its first
    draw."""
    try:
        index = socket.if_nametoindex(ifname)
    except OSError:
        raise _no_interface(ifname) from None
    prog_id, attached = libbpf.xdp_query(index)
    _refuse_foreign(ifname, prog_id if attached else 0, _ATTACHED_MODES.get(attached), force)


def _no_interface(name: str) -> InterfaceError:
    return InterfaceError(
        f"no interface named {name!r}", "'ip link' lists this machine's interfaces"
    )


def _refuse_foreign(ifname: str, prog_id: int, mode: str | None, force: bool) -> None:
    if prog_id and not force:
        prog = xdp_program(prog_id)
        raise AttachError(
            f"{ifname} already runs {prog}, in {mode} mode",
            f"--force would remove {prog.label} and whatever it does (a DDoS filter, a "
            f"load balancer): look first with 'bpftool prog show id {prog_id}'",
        )


class XdpAttachment:
    """The program attached to one interface, for as long as this object (or process) lives."""

    def __init__(self, prog_fd: int, ifname: str, *, mode: str = "auto", force: bool = False):
        if mode not in MODES:
            raise AttachError(f"unknown XDP mode {mode!r}", f"choose one of {', '.join(MODES)}")
        info = interface_info(ifname)
        _refuse_foreign(ifname, info.xdp_prog_id, info.xdp_mode, force)
        if info.xdp_prog_id:
            _detach_foreign(info)
        self.ifname = ifname
        self.ifindex = info.index
        if mode == "auto":
            tries = ["generic"] if info.virtual else ["native", "generic"]
        else:
            tries = [mode]
        last: FlowscopeError | None = None
        for m in tries:
            try:
                self._fd = libbpf.link_create(prog_fd, info.index, libbpf.BPF_XDP, _mode_flags(m))
                self.mode = m
                return
            except FlowscopeError as e:
                last = e
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL) or m == tries[-1]:
                    break
        raise _attach_error(ifname, tries[-1], last)

    @property
    def attached(self) -> bool:
        """False once detach() ran."""
        return self._fd >= 0

    def detach(self) -> None:
        """Remove the program from the interface (closing the link does it)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> XdpAttachment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


def _mode_flags(mode: str) -> int:
    return libbpf.XDP_FLAGS_SKB_MODE if mode == "generic" else libbpf.XDP_FLAGS_DRV_MODE


def _attach_error(ifname: str, mode: str, e: FlowscopeError | None) -> FlowscopeError:
    err = e.errno if e else None
    if err in (errno.EBUSY, errno.EEXIST):
        return AttachError(
            f"{ifname} already runs another XDP program",
            "--force would remove it, and whatever it does (a DDoS filter, a load balancer)",
        )
    if err == errno.EOPNOTSUPP and mode == "native":
        return AttachError(
            f"the driver of {ifname} has no native XDP", "use --mode generic (or auto)"
        )
    if e is not None and not isinstance(e, AttachError) and err not in (errno.EPERM, errno.EACCES):
        return AttachError(f"cannot attach XDP to {ifname} in {mode} mode: {e.message}")
    return e or AttachError(f"cannot attach XDP to {ifname}")
