"""The demo's own little network: a namespace joined to the root namespace by a veth pair.

Everything the demo makes is named ``fsdemo<pid>...`` after the process that made it, and is
listed in a state file under /run/flowscope-demo/, so that a demo killed with SIGKILL (which
runs no clean-up) is cleaned up by the next one: a leftover is anything with the prefix whose
demo process is gone. Addresses come from 198.19.0.0/16 (inside the benchmarking range
198.18.0.0/15, which the tests use the lower half of) and 2001:db8::/32, so nothing is ever
routed anywhere real. Both ends get permanent neighbour entries and the namespace is quiet
(no router solicitations, no duplicate address detection), so the flows are the generator's.

Interfaces and namespaces are made with the ``ip`` command (iproute2), not pyroute2, which
only flowscope.kernel may import.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flowscope.errors import FlowscopeError

PREFIX = "fsdemo"
STATE_DIR = Path("/run/flowscope-demo")
TRAFFIC_MODULE = "flowscope.demo.traffic"


class DemoError(FlowscopeError):
    """The demo could not make, run or remove its network."""


@dataclass(slots=True)
class DemoNet:
    """The namespace ``ns`` holds ``peer_if``; ``host_if`` is in the root namespace, where
    flowscope attaches. Addresses without prefix length (/24 and /64)."""

    owner: int
    ns: str
    host_if: str
    peer_if: str
    host_mac: str = ""
    peer_mac: str = ""
    host_ip4: str = ""
    peer_ip4: str = ""
    host_ip6: str = ""
    peer_ip6: str = ""
    pids: list[list[int]] = field(default_factory=list)
    """[pid, start time] of each process the demo started (listeners, generator), for the
    next run to kill: a pid alone may have been recycled by then."""

    def started(self, pid: int) -> None:
        """Remember a process the demo started, with its start time (its identity)."""
        self.pids.append([pid, start_time(pid) or 0])

    @property
    def state_file(self) -> Path:
        return STATE_DIR / f"{self.owner}.json"

    def save(self) -> None:
        """Write (or rewrite) the state file, 0600, atomically."""
        STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        os.replace(tmp, self.state_file)

    def command(self, *args: str) -> list[str]:
        """The argv that runs ``args`` inside the namespace."""
        return ["ip", "netns", "exec", self.ns, *args]


def names(owner: int) -> tuple[str, str, str]:
    """(namespace, host interface, namespace interface) of the demo run by ``owner``; at
    most 14 characters, within the 15 an interface name may have."""
    return f"{PREFIX}{owner}", f"{PREFIX}{owner}h", f"{PREFIX}{owner}p"


_GENERATED = re.compile(rf"{PREFIX}([1-9][0-9]{{0,7}})[hp]?")


def owner_of(name: str) -> int | None:
    """The demo pid a ``fsdemo<pid>[hp]`` name belongs to, None for any other name: clean-up
    only ever touches names this module generates."""
    m = _GENERATED.fullmatch(name)
    return int(m.group(1)) if m else None


def load_state(path: Path) -> DemoNet | None:
    """The demo described by a state file, or None when the file is not one this module
    wrote: the owner must be the file's own name, and the namespace and interfaces exactly the
    names generated for that owner, so that a crafted file can name nothing else (another
    namespace, an interface, a path outside the directory)."""
    try:
        raw = json.loads(path.read_text())
        net = DemoNet(**raw)
    except (OSError, ValueError, TypeError):
        return None
    owner = net.owner
    if type(owner) is not int or path.name != f"{owner}.json":
        return None
    if owner_of(f"{PREFIX}{owner}") != owner:
        return None
    if (net.ns, net.host_if, net.peer_if) != names(owner):
        return None
    if not isinstance(net.pids, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(type(v) is int for v in p) for p in net.pids
    ):
        return None
    return net


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, /proc/<pid>/stat field 22): with
    the pid, an identity that a recycled pid does not share."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    except FileNotFoundError as e:
        raise DemoError(f"{args[0]} is not installed", "install iproute2 (make setup does)") from e
    except subprocess.TimeoutExpired as e:
        raise DemoError(f"{' '.join(args)} did not finish in 30 s") from e
    if check and proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        raise DemoError(f"{' '.join(args)}: {detail}")
    return proc


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def _free_subnet() -> int:
    """n such that 198.19.n.0/24 is on no interface of the root namespace."""
    used = _ip("-4", "-o", "addr", "show").stdout
    start = os.getpid() % 256
    for i in range(256):
        n = (start + i) % 256
        if f" 198.19.{n}." not in used:
            return n
    raise DemoError("every 198.19.n.0/24 is in use in the root namespace")


def create(owner: int | None = None) -> DemoNet:
    """Make the namespace and the veth pair, addressed and up. On failure nothing is left."""
    owner = os.getpid() if owner is None else owner
    ns, host_if, peer_if = names(owner)
    net = DemoNet(owner=owner, ns=ns, host_if=host_if, peer_if=peer_if)
    net.save()  # first, so that even a half-made demo is found by the next run
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if, "netns", ns)
        for scope in ("all", "default", peer_if):
            for key, value in (("router_solicitations", "0"), ("accept_ra", "0")):
                _sysctl(ns, f"net.ipv6.conf.{scope}.{key}", value)
            _sysctl(ns, f"net.ipv6.conf.{scope}.accept_dad", "0")
        n = _free_subnet()
        net.host_ip4, net.peer_ip4 = f"198.19.{n}.1", f"198.19.{n}.2"
        net.host_ip6, net.peer_ip6 = f"2001:db8:f5:{n:x}::1", f"2001:db8:f5:{n:x}::2"
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", peer_if, "up")
        _ip("addr", "add", f"{net.host_ip4}/24", "dev", host_if)
        _ip("addr", "add", f"{net.host_ip6}/64", "dev", host_if, "nodad")
        _ip("-n", ns, "addr", "add", f"{net.peer_ip4}/24", "dev", peer_if)
        _ip("-n", ns, "addr", "add", f"{net.peer_ip6}/64", "dev", peer_if, "nodad")
        net.host_mac = Path(f"/sys/class/net/{host_if}/address").read_text().strip()
        net.peer_mac = _run(net.command("cat", f"/sys/class/net/{peer_if}/address")).stdout.strip()
        for addr in (net.peer_ip4, net.peer_ip6):
            _ip(
                "neigh", "replace", addr, "lladdr", net.peer_mac, "dev", host_if, "nud", "permanent"
            )
        for addr in (net.host_ip4, net.host_ip6):
            _ip(
                "-n", ns, "neigh", "replace", addr, "lladdr", net.host_mac,
                "dev", peer_if, "nud", "permanent",
            )  # fmt: skip
        net.save()
    except BaseException:
        remove(net)
        raise
    return net


def _sysctl(ns: str, name: str, value: str) -> None:
    _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{name}={value}"], check=False)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def is_live_demo(pid: int) -> bool:
    """True when ``pid`` is a running `flowscope demo` (not a recycled pid)."""
    if pid == os.getpid():
        return True
    args = _cmdline(pid)
    return any("flowscope" in a for a in args) and "demo" in args


def is_traffic_process(pid: int, owner: int) -> bool:
    """True when ``pid`` runs the listeners or generator of the demo of ``owner``."""
    args = _cmdline(pid)
    return TRAFFIC_MODULE in args and _owner_arg(args) == owner


def _owner_arg(args: list[str]) -> int | None:
    if "--owner" not in args:
        return None
    i = args.index("--owner")
    return int(args[i + 1]) if i + 1 < len(args) and args[i + 1].isdigit() else None


def remove(net: DemoNet) -> None:
    """Kill the demo's processes and delete its veth pair, namespace and state file. Safe to
    call on a half-made or already removed demo."""
    for pid, started in net.pids:
        # the same process the demo started (pid and start time), running its traffic
        if start_time(pid) == started and is_traffic_process(pid, net.owner):
            _kill(pid)
    _remove_names(net.ns, net.host_if)
    with contextlib.suppress(OSError):
        net.state_file.unlink()


def _remove_names(ns: str, host_if: str) -> None:
    if owner_of(ns) is None or owner_of(host_if) is None:
        return  # not a name this module made: never touched
    if ns in namespaces():
        for pid in _ip("netns", "pids", ns, check=False).stdout.split():
            if pid.isdigit():
                _kill(int(pid))
    # Deleting one end deletes both; the namespace delete would too, but the host end may be
    # alone if the move into the namespace failed.
    if Path(f"/sys/class/net/{host_if}").exists():
        _ip("link", "del", host_if, check=False)
    if ns in namespaces():
        _ip("netns", "del", ns, check=False)


def namespaces() -> list[str]:
    """Names of the network namespaces `ip netns` knows."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _links() -> list[str]:
    with contextlib.suppress(OSError):
        return os.listdir("/sys/class/net")
    return []


def cleanup_leftovers() -> list[str]:
    """Remove what demos that are no longer running left behind (after SIGKILL): their
    processes, namespaces, veth pairs and state files. Returns what was removed."""
    removed: list[str] = []
    if STATE_DIR.is_dir():
        for path in STATE_DIR.glob("*.json"):
            net = load_state(path)
            if net is None:  # not ours, or damaged: only the file itself goes
                if path.is_file() and not path.is_symlink():
                    path.unlink(missing_ok=True)
                continue
            if is_live_demo(net.owner):
                continue
            remove(net)
            removed.append(net.ns)
        for path in STATE_DIR.glob("*.tmp"):
            path.unlink(missing_ok=True)
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        args = _cmdline(int(pid_dir.name))
        if TRAFFIC_MODULE in args:
            owner = _owner_arg(args)
            if owner is not None and not is_live_demo(owner):
                _kill(int(pid_dir.name))
                removed.append(f"process {pid_dir.name}")
    for ns in namespaces():
        owner = owner_of(ns)
        if owner is not None and not is_live_demo(owner):
            _remove_names(ns, names(owner)[1])
            removed.append(ns)
    for link in _links():
        owner = owner_of(link)
        if owner is not None and not is_live_demo(owner):
            _ip("link", "del", link, check=False)
            removed.append(link)
    return sorted(set(removed))


def wait_gone(net: DemoNet, timeout: float = 5.0) -> None:
    """Wait until the kernel has really let go of the namespace and the veth pair."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if net.ns not in namespaces() and not Path(f"/sys/class/net/{net.host_if}").exists():
            return
        time.sleep(0.05)
