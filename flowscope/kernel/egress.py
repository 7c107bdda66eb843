"""Attach the egress (TC) program to an interface, and never leave it behind.

On Linux 6.6 and later flowscope attaches through tcx with a bpf_link (BPF_TCX_EGRESS): like
its XDP link, closing the fd or the process dying (even by SIGKILL) removes the program, and
other programs on the same hook (tcx links, or tc filters of a clsact qdisc) keep running, in
their order, since flowscope's program gives no verdict (TC_ACT_UNSPEC, tcx's "next").

Older kernels have no tcx: link_create fails with EINVAL (unknown attach type) or EOPNOTSUPP.
There flowscope adds a clsact qdisc (unless one is there) and a cls_bpf filter of its own
(direct action, a fixed priority and handle) through pyroute2, and removes both again on exit.
A process killed by SIGKILL cannot do that: the filter then stays until the next flowscope
start on that interface removes it (by its priority, handle and name).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from flowscope.errors import AttachError, FlowscopeError
from flowscope.kernel import libbpf
from flowscope.kernel.attach import interface_info

TC_NAME = "flowscope_tc"
"""The program's name, as the kernel and ``tc filter show`` report it."""
CLSACT_EGRESS = 0xFFFFFFF3
"""The clsact qdisc's egress hook (parent ffff:fff3)."""
FILTER_PRIO = 0xF10E
"""Priority of flowscope's cls_bpf filter: high, so it runs after filters of usual priority."""
FILTER_HANDLE = 0xF10E
ETH_P_ALL = 0x0003


class TcEgressAttachment:
    """The egress program on one interface, for as long as this object (or process) lives.

    ``how`` is "tcx" (a bpf_link) or "clsact" (a cls_bpf filter, kernels before 6.6).
    ``tcx=False`` skips tcx, for testing the fallback on a kernel that has tcx."""

    def __init__(self, prog_fd: int, ifname: str, *, tcx: bool = True) -> None:
        info = interface_info(ifname)
        self.ifname = ifname
        self.ifindex = info.index
        self._fd = -1
        self._qdisc_added = False
        self.how = ""
        if tcx:
            try:
                self._fd = libbpf.link_create(prog_fd, info.index, libbpf.BPF_TCX_EGRESS)
                self.how = "tcx"
                return
            except FlowscopeError as e:
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise AttachError(
                        f"cannot attach the egress program to {ifname} (tcx): {e.message}"
                    ) from e
        self._attach_clsact(prog_fd)
        self.how = "clsact"

    # -- the fallback: clsact + cls_bpf ---------------------------------------------------

    def _attach_clsact(self, prog_fd: int) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with IPRoute() as ipr:
                if not _has_clsact(ipr, self.ifindex):
                    ipr.tc("add", "clsact", self.ifindex)
                    self._qdisc_added = True
                _remove_stale_filter(ipr, self.ifindex)
                ipr.tc(
                    "add-filter",
                    "bpf",
                    self.ifindex,
                    FILTER_HANDLE,
                    fd=prog_fd,
                    name=TC_NAME,
                    parent=CLSACT_EGRESS,
                    prio=FILTER_PRIO,
                    protocol=ETH_P_ALL,
                    direct_action=True,
                )
        except NetlinkError as e:
            self._remove_clsact()
            raise AttachError(
                f"cannot attach the egress program to {self.ifname} (clsact): {e}",
                "this kernel has neither tcx nor a working clsact qdisc; use --direction ingress",
            ) from e

    def _remove_clsact(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with IPRoute() as ipr:
                _remove_stale_filter(ipr, self.ifindex)
                if self._qdisc_added and not _egress_filters(ipr, self.ifindex):
                    ipr.tc("del", "clsact", self.ifindex)
        except NetlinkError:
            pass  # the interface is gone, and with it the qdisc and the filter
        self._qdisc_added = False

    # -- lifetime --------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        """False once detach() ran."""
        return bool(self.how)

    def detach(self) -> None:
        """Remove the program from the interface."""
        if self.how == "tcx" and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        elif self.how == "clsact":
            self._remove_clsact()
        self.how = ""

    def __enter__(self) -> TcEgressAttachment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


def _has_clsact(ipr: Any, ifindex: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex))


def _egress_filters(ipr: Any, ifindex: int) -> list[Any]:
    return [
        f
        for f in ipr.get_filters(index=ifindex, parent=CLSACT_EGRESS)
        if f.get_attr("TCA_KIND") is not None
    ]


def _remove_stale_filter(ipr: Any, ifindex: int) -> None:
    """Remove flowscope's own filter (its priority and name), left by a process that died."""
    from pyroute2.netlink.exceptions import NetlinkError

    for f in _egress_filters(ipr, ifindex):
        prio = (f["info"] >> 16) & 0xFFFF
        opts = f.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") if opts is not None else None
        if prio == FILTER_PRIO and name and str(name).startswith(TC_NAME):
            try:
                ipr.tc(
                    "del-filter",
                    "bpf",
                    ifindex,
                    f["handle"],
                    parent=CLSACT_EGRESS,
                    prio=FILTER_PRIO,
                    protocol=ETH_P_ALL,
                )
            except NetlinkError as e:
                if e.code != errno.ENOENT:
                    raise


def egress_attached(ifindex: int) -> bool:
    """Whether flowscope's egress program runs on the interface (tcx, or its clsact filter)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        if any(name == TC_NAME for _, name in tcx_egress_programs(ifindex)):
            return True
    except FlowscopeError:
        pass  # no tcx on this kernel: look for the clsact filter
    try:
        with IPRoute() as ipr:
            for f in _egress_filters(ipr, ifindex):
                opts = f.get_attr("TCA_OPTIONS")
                name = opts.get_attr("TCA_BPF_NAME") if opts is not None else None
                if name and str(name).startswith(TC_NAME):
                    return True
    except NetlinkError:
        pass
    return False


def tcx_egress_programs(ifindex: int) -> list[tuple[int, str | None]]:
    """(id, name) of every program on an interface's tcx egress hook, in the order they run."""
    return [(i, libbpf.prog_name(i)) for i in libbpf.prog_query(ifindex, libbpf.BPF_TCX_EGRESS)]
