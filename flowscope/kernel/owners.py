"""Which process owns each local socket: bpf/owners.c on the cgroup v2 root, and a scan of the
sockets that were there before it.

bpf/owners.c is compiled into the flow programs' module (FlowProgram(owners=True): one BCC
compile); its programs are attached with bpf_link to the root of the cgroup v2 hierarchy, so
they see every process of every cgroup, and go away with flowscope (also after kill -9). They
run where kprobes and fentry cannot: this machine's kernel is locked down and refuses both,
while cgroup socket hooks only need CAP_BPF and CAP_NET_ADMIN. A socket that predates the
hooks has no creator in the kernel's map: ``scan_sockets`` finds its process through sock_diag
(pyroute2) and the ``socket:[inode]`` links under /proc, once, after the hooks are attached, so
that every socket is seen by one or the other.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from flowscope import abi
from flowscope.errors import FlowscopeError, UnsupportedKernelError
from flowscope.kernel import libbpf, ringbuf
from flowscope.kernel.program import FlowProgram, captured_stderr, compile_error
from flowscope.model import Owner, SocketEvent, socket_event_from_bytes

SOCK_EVENT_SIZE = ctypes.sizeof(abi.SockEvent)
"""One record of the sock_events ring buffer (struct sock_event)."""

# bpf_attach_type values (uapi/linux/bpf.h)
BPF_CGROUP_INET_SOCK_CREATE = 2
BPF_CGROUP_SOCK_OPS = 3
BPF_CGROUP_INET4_POST_BIND = 12
BPF_CGROUP_INET6_POST_BIND = 13
BPF_CGROUP_UDP4_SENDMSG = 14
BPF_CGROUP_UDP6_SENDMSG = 15
# bpf_prog_type values
_CGROUP_SOCK = 9
_SOCK_OPS = 13
_CGROUP_SOCK_ADDR = 18

HOOKS: tuple[tuple[str, int, int], ...] = (
    ("owners_create", _CGROUP_SOCK, BPF_CGROUP_INET_SOCK_CREATE),
    ("owners_sockops", _SOCK_OPS, BPF_CGROUP_SOCK_OPS),
    ("owners_post_bind4", _CGROUP_SOCK, BPF_CGROUP_INET4_POST_BIND),
    ("owners_post_bind6", _CGROUP_SOCK, BPF_CGROUP_INET6_POST_BIND),
    ("owners_sendmsg4", _CGROUP_SOCK_ADDR, BPF_CGROUP_UDP4_SENDMSG),
    ("owners_sendmsg6", _CGROUP_SOCK_ADDR, BPF_CGROUP_UDP6_SENDMSG),
)
"""Each program of bpf/owners.c with its program type and cgroup attach point."""

SO_NETNS_COOKIE = 71


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on
    hybrid systems), None when it is not."""
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        return None
    found = [line.split()[1] for line in mounts.splitlines() if line.split()[2:3] == ["cgroup2"]]
    if not found:
        return None
    return Path(min(found, key=len))


def netns_cookie() -> int:
    """The cookie of this process's network namespace (what bpf_get_netns_cookie gives)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def local_addresses() -> set[str]:
    """Every address of this network namespace's interfaces, as inet_ntop writes them."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr() if a.get_attr("IFA_ADDRESS")}


class CgroupPaths:
    """cgroup v2 ids (the directory's inode) to paths below the root, as ``/a/b``. Unknown
    ids cause a new walk of the hierarchy, at most once a second."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._paths: dict[int, str] = {}
        self._walked = 0.0

    def path(self, cgroup_id: int) -> str:
        """The path of a cgroup id, "" if it is not (or no longer) there."""
        found = self._paths.get(cgroup_id)
        if found is None and self.root is not None and time.monotonic() - self._walked > 1.0:
            self._walk()
            found = self._paths.get(cgroup_id)
        return found or ""

    def _walk(self) -> None:
        self._walked = time.monotonic()
        root = self.root
        if root is None:
            return
        for dirpath, _dirs, _files in os.walk(root):
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue
            rel = os.path.relpath(dirpath, root)
            self._paths[ino] = "/" if rel == "." else "/" + rel


class OwnerHooks:
    """The socket hooks of a FlowProgram built with ``owners`` (bpf/owners.c is compiled
    into it), attached to the cgroup v2 root; ``poll`` returns the sockets announced since the
    last call, owners' cgroups resolved to paths. The program owns the module; this owns the
    attachments."""

    def __init__(self, program: FlowProgram) -> None:
        root = cgroup2_root()
        if root is None:
            raise UnsupportedKernelError(
                "no cgroup v2 hierarchy is mounted",
                "mount -t cgroup2 none /sys/fs/cgroup/unified; under ip netns exec, which"
                " mounts a /sys of its own, use nsenter --net instead",
            )
        self._bpf: Any = program.module
        self.root = root
        self.cgroups = CgroupPaths(root)
        self._links: list[int] = []
        self._fds: list[int] = []
        self._health: tuple[np.ndarray, np.ndarray] | None = None
        for name, prog_type, attach_type in HOOKS:
            with captured_stderr() as log:
                try:
                    fn = self._bpf.load_func(name.encode(), prog_type, attach_type=attach_type)
                except Exception as e:
                    raise compile_error(log(), f"the kernel refused {name}") from e
            self._fds.append(int(fn.fd))
        ring = self._bpf[b"sock_events"]
        # read from its memory map, as the flow events are (kernel.ringbuf): no Python call
        # per record from inside libbpf
        self._events = ringbuf.RingBuffer(
            int(ring.map_fd), int(ring.max_entries), np.dtype((np.void, SOCK_EVENT_SIZE))
        )
        self.attach()

    def attach(self) -> None:
        """Link every hook to the cgroup v2 root (again, after close())."""
        if self._links:
            return
        try:
            cg = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for fd, (_name, _type, attach_type) in zip(self._fds, HOOKS, strict=True):
                    self._links.append(libbpf.link_create(fd, cg, attach_type))
            finally:
                os.close(cg)
        except BaseException:
            self.close()
            raise

    def poll(self) -> list[SocketEvent]:
        """The sockets announced since the last call."""
        return [self._resolved(socket_event_from_bytes(r.tobytes())) for r in self._events.read()]

    def _resolved(self, ev: SocketEvent) -> SocketEvent:
        if ev.owner is None:
            return ev
        owner = dataclasses.replace(ev.owner, cgroup=self.cgroups.path(ev.cgroup_id))
        return dataclasses.replace(ev, owner=owner)

    def counters(self) -> dict[abi.SockCounter, int]:
        """The programs' counters (events written, lost, without an owner), summed over CPUs."""
        table = self._bpf[b"sock_counters"]
        out = {}
        for c in abi.SockCounter:
            values = table[ctypes.c_int(int(c))]
            out[c] = int(sum(values))
        return out

    def tcp_health(self) -> tuple[np.ndarray, np.ndarray]:
        """Every followed TCP connection: socket cookies and their health (abi.HEALTH_DTYPE
        rows), fresh copies read with batched lookups: the kernel's numbers as of now."""
        table = self._bpf[b"tcp_health"]
        if self._health is None:
            cap = int(table.max_entries)
            self._health = (np.zeros(cap, np.uint64), np.zeros(cap, abi.HEALTH_DTYPE))
        keys, values = self._health
        token = ctypes.create_string_buffer(8)
        n = libbpf.map_lookup_all(int(table.map_fd), keys, values, 1, token, chunk=4096)
        return keys[:n].copy(), values[:n].copy()

    def run_stats(self) -> tuple[int, int]:
        """(nanoseconds, runs) of all the hooks together, as the kernel timed them while run
        stats were enabled (libbpf.enable_run_stats)."""
        stats = [libbpf.prog_run_stats(fd) for fd in self._fds]
        return sum(ns for ns, _ in stats), sum(n for _, n in stats)

    def lost(self) -> int:
        """Announcements the ring buffer had no room for, since the programs were loaded."""
        return self.counters()[abi.SockCounter.RINGBUF_FULL]

    def close(self) -> None:
        """Detach every program (closing its link); the FlowProgram frees them. attach()
        links them again."""
        for fd in self._links:
            os.close(fd)
        self._links.clear()

    def __enter__(self) -> OwnerHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- sockets that predate the hooks ------------------------------------------------------------

_TCP_LISTEN = 10


def _socket_inodes() -> dict[int, int]:
    """socket inode -> pid, from every process's /proc/PID/fd (the lowest pid of a shared one,
    usually the parent that created it)."""
    owners: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fds = os.scandir(f"/proc/{pid}/fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    ino = int(target[8:-1])
                    if ino not in owners or pid < owners[ino]:
                        owners[ino] = pid
    return owners


def process_owner(pid: int) -> Owner | None:
    """A running process as an Owner (command, real uid, cgroup v2 path), None if it is gone."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        uid = os.stat(f"/proc/{pid}").st_uid
        cgroup = ""
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                cgroup = line[3:]
    except OSError:
        return None
    return Owner(pid, comm, uid, cgroup)


def running_command(owner: Owner) -> str | None:
    """The full command line of a flow's process while it still runs (``ps -o args``; a
    kernel thread's as ``[comm]``), read from /proc when the console asks, never while flows
    are collected. None when the pid is gone or now names another command: a reused pid
    is not the flow's process."""
    try:
        comm = Path(f"/proc/{owner.pid}/comm").read_text().strip()
        raw = Path(f"/proc/{owner.pid}/cmdline").read_bytes()
    except OSError:
        return None
    if comm != owner.comm:
        return None
    args = [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0") if a]
    return " ".join(args) if args else f"[{comm}]"


def _diag_sockets() -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(family, proto, sock_diag message) of every TCP and UDP socket of this namespace."""
    from pyroute2 import DiagSocket

    with DiagSocket() as ds:
        ds.bind()
        for family, fs_family in ((socket.AF_INET, abi.AF_INET), (socket.AF_INET6, abi.AF_INET6)):
            for proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
                for msg in ds.get_sock_stats(family=family, protocol=proto):
                    yield fs_family, proto, msg


def scan_sockets(netns: int) -> list[SocketEvent]:
    """Every TCP and UDP socket of this network namespace with the process holding it, as
    the events the hooks would have sent had they seen it made: listeners and UDP sockets as
    bound ports, connected TCP sockets with their 4-tuple. A socket no process holds (a
    connection in TIME_WAIT) is left out."""
    try:
        diag = list(_diag_sockets())
    except Exception as e:  # a kernel without sock_diag: the hooks still work
        raise FlowscopeError(f"cannot list the sockets open before start: {e}") from e
    inodes = _socket_inodes()
    owners: dict[int, Owner | None] = {}
    out = []
    for family, proto, msg in diag:
        pid = inodes.get(int(msg["idiag_inode"]))
        if pid is None:
            continue
        if pid not in owners:
            owners[pid] = process_owner(pid)
        owner = owners[pid]
        if owner is None:
            continue
        src, dst = str(msg["idiag_src"]), str(msg["idiag_dst"])
        fam = family
        if family == abi.AF_INET6 and src.startswith("::ffff:") and "." in src:
            fam, src, dst = abi.AF_INET, src[7:], dst.removeprefix("::ffff:")
        connected = proto == socket.IPPROTO_TCP and msg["idiag_state"] != _TCP_LISTEN
        if proto == socket.IPPROTO_TCP and not connected:
            kind = abi.SOCK_LISTEN
        elif connected:
            kind = abi.SOCK_CONNECT
        else:
            kind = abi.SOCK_BIND
        out.append(
            SocketEvent(
                kind=kind,
                family=fam,
                proto=proto,
                laddr=src,
                lport=int(msg["idiag_sport"]),
                raddr=dst if connected else "",
                rport=int(msg["idiag_dport"]) if connected else 0,
                netns=netns,
                owner=owner,
            )
        )
    return out
