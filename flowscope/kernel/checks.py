"""The kernel-touching questions `flowscope doctor` asks, each a small function.

They live in the probe because only the probe may import bcc and pyroute2. Each returns plain
data or raises a FlowscopeError whose message says what is wrong; doctor turns both into lines.
Nothing here touches the machine's own interfaces beyond reading them: the attach tests run on
a throwaway veth pair made for the purpose and always deleted again.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowscope.errors import AttachError, BpfError, FlowscopeError, InterfaceError
from flowscope.kernel import libbpf

BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_XDP = 6

# NETDEV_A_DEV_XDP_FEATURES bits (include/uapi/linux/netdev.h)
XDP_FEATURE_NAMES = {
    1: "basic",
    2: "redirect",
    4: "ndo-xmit",
    8: "xsk-zerocopy",
    16: "hw-offload",
    32: "rx-sg",
    64: "ndo-xmit-sg",
}
NETDEV_XDP_ACT_BASIC = 1

# mov64 r0, 2 (XDP_PASS); exit
_PASS_INSNS = struct.pack("<BBhi", 0xB7, 0, 0, 2) + struct.pack("<BBhi", 0x95, 0, 0, 0)


def _lib() -> Any:
    lib = libbpf._libbpf()
    lib.bpf_map_create.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_void_p,
    ]
    lib.bpf_prog_load.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
    ]
    return lib


def _map_create(map_type: int, name: bytes, key: int, value: int, entries: int) -> int:
    fd = int(_lib().bpf_map_create(map_type, name, key, value, entries, None))
    if fd < 0:
        err = -fd if fd < 0 else ctypes.get_errno()
        raise libbpf._raise(f"bpf(BPF_MAP_CREATE) of a {name.decode()} map", err)
    return fd


def percpu_hash_memlock(key_size: int, value_size: int, entries: int) -> int:
    """Create (and free) a preallocated per-CPU hash and return the kernel's own figure for
    its locked memory (fdinfo memlock): what a map of that layout costs on this machine."""
    from flowscope.kernel.memory import memlock

    fd = percpu_hash(key_size, value_size, entries, b"fs_memory")
    try:
        reported = memlock(fd)
    finally:
        os.close(fd)
    if reported is None:
        raise BpfError("this kernel does not report a map's memory (fdinfo memlock)")
    return reported


def percpu_hash(key_size: int, value_size: int, entries: int, name: bytes = b"fs_bench") -> int:
    """A new preallocated per-CPU hash map's fd (the caller closes it): for benchmarks that
    need one of a layout no program has."""
    return _map_create(BPF_MAP_TYPE_PERCPU_HASH, name, key_size, value_size, entries)


def bpf_syscall() -> None:
    """Create (and free) a one-entry array map: the bpf() syscall works for this process."""
    os.close(_map_create(BPF_MAP_TYPE_ARRAY, b"fs_doctor", 4, 4, 1))


def ring_buffer() -> None:
    """Create (and free) a BPF ring buffer map (Linux 5.8+), which flowscope announces new
    flows on."""
    try:
        fd = _map_create(BPF_MAP_TYPE_RINGBUF, b"fs_doctor_rb", 0, 0, 4096 * 4)
    except BpfError as e:
        if e.errno == errno.EINVAL:
            raise BpfError("this kernel has no BPF ring buffer (Linux 5.8 or later has)") from e
        raise
    os.close(fd)


def load_pass_program() -> int:
    """Load a two-instruction XDP_PASS program with libbpf (no compiler, no headers); the
    caller closes the fd."""
    insns = ctypes.create_string_buffer(_PASS_INSNS, len(_PASS_INSNS))
    fd = int(_lib().bpf_prog_load(BPF_PROG_TYPE_XDP, b"fs_doctor", b"GPL", insns, 2, None))
    if fd < 0:
        raise libbpf._raise("bpf(BPF_PROG_LOAD) of an XDP_PASS program", -fd)
    return fd


def bcc_version() -> str:
    """bcc's version; FlowscopeError when its Python bindings do not import."""
    try:
        import bcc
    except Exception as e:  # ImportError, or a broken libbcc (OSError)
        raise FlowscopeError(f"bcc does not import: {e}") from e
    return str(getattr(bcc, "__version__", "unknown version"))


@contextlib.contextmanager
def throwaway_veth(prefix: str = "fsdoc") -> Iterator[tuple[str, str]]:
    """A veth pair with a name unique to this process, in the root namespace, no addresses,
    deleted on the way out whatever happens. Yields the two names."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    tag = f"{os.getpid() % 1000000}"
    a, b = f"{prefix}{tag}a", f"{prefix}{tag}b"
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=a, kind="veth", peer=b)
        except NetlinkError as e:
            raise InterfaceError(f"cannot create a veth pair: {e}") from e
        try:
            for name in (a, b):
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
            yield a, b
        finally:
            with contextlib.suppress(NetlinkError, IndexError):
                idx = ipr.link_lookup(ifname=a)
                if idx:
                    ipr.link("del", index=idx[0])


def link_xdp(ifname: str) -> None:
    """Attach an XDP_PASS program to ``ifname`` with bpf_link in generic mode, and detach it:
    the kernel supports bpf_link for XDP (Linux 5.9+)."""
    from flowscope.kernel.attach import interface_info

    prog = load_pass_program()
    try:
        try:
            link = libbpf.link_create(
                prog, interface_info(ifname).index, libbpf.BPF_XDP, libbpf.XDP_FLAGS_SKB_MODE
            )
        except FlowscopeError as e:
            if e.errno == errno.EINVAL:
                raise AttachError(
                    "this kernel cannot attach XDP with bpf_link (Linux 5.9 or later can)"
                ) from e
            raise
        os.close(link)
    finally:
        os.close(prog)


def attach_real_program(ifname: str) -> int:
    """Compile flowscope's program, attach it to ``ifname`` in generic mode with bpf_link, see
    the kernel report it on the interface, detach, and see it gone. Returns the program id."""
    from flowscope.kernel.attach import XdpAttachment, interface_info
    from flowscope.kernel.program import FlowProgram

    with (
        FlowProgram(flow_entries=1024) as program,
        XdpAttachment(program.prog_fd, ifname, mode="generic") as att,
    ):
        prog_id = interface_info(ifname).xdp_prog_id
        if not prog_id:
            raise AttachError(f"attached to {ifname}, but the kernel shows no program there")
        att.detach()
        if interface_info(ifname).xdp_prog_id:
            raise AttachError(f"detached from {ifname}, but the program is still there")
    return prog_id


# -- interfaces ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InterfaceFacts:
    """What doctor reports about one interface."""

    name: str
    kind: str | None
    """rtnetlink link kind (veth, bridge, ...), None for a device with a driver."""
    driver: str | None
    """The driver's name (ethtool's driver info), None when the device has none."""
    virtual: bool
    xdp_features: int | None
    """NETDEV_A_DEV_XDP_FEATURES bits, None when the kernel does not say (before 6.3)."""
    rx_queues: int | None
    combined_queues: int | None
    max_combined: int | None
    vlan_offload: bool | None
    """rx-vlan-hw-parse (ethtool's rxvlan) is on: the NIC strips 802.1Q tags before XDP."""
    xdp_prog_id: int


def up_interfaces() -> list[str]:
    """Every interface of this namespace that is up, except loopback."""
    from pyroute2 import IPRoute

    IFF_UP, IFF_LOOPBACK = 0x1, 0x8
    with IPRoute() as ipr:
        names = []
        for link in ipr.get_links():
            flags = int(link["flags"])
            if flags & IFF_UP and not flags & IFF_LOOPBACK:
                names.append(str(link.get_attr("IFLA_IFNAME")))
    return names


def xdp_features(ifindex: int) -> int | None:
    """The device's XDP feature bits from the netdev generic netlink family (Linux 6.3+);
    None when the kernel has no such family."""
    from pyroute2.netlink import NLM_F_REQUEST, genlmsg
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.generic import GenericNetlinkSocket

    class netdevmsg(genlmsg):  # type: ignore[misc]
        prefix = "NETDEV_A_DEV_"
        nla_map = (
            ("NETDEV_A_DEV_UNSPEC", "none"),
            ("NETDEV_A_DEV_IFINDEX", "uint32"),
            ("NETDEV_A_DEV_PAD", "none"),
            ("NETDEV_A_DEV_XDP_FEATURES", "uint64"),
        )

    try:
        sock = GenericNetlinkSocket()
    except Exception:
        return None
    try:
        sock.bind("netdev", netdevmsg)
        msg = netdevmsg()
        msg["cmd"] = 1  # NETDEV_CMD_DEV_GET
        msg["version"] = 1
        msg["attrs"] = [("NETDEV_A_DEV_IFINDEX", ifindex)]
        for reply in sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST):
            value = reply.get_attr("NETDEV_A_DEV_XDP_FEATURES")
            return None if value is None else int(value)
    except (NetlinkError, OSError, AttributeError):
        return None
    finally:
        sock.close()
    return None


def _driver(name: str) -> str | None:
    link = Path(f"/sys/class/net/{name}/device/driver")
    with contextlib.suppress(OSError):
        return os.path.basename(os.readlink(link))
    return None


def interface_facts(name: str) -> InterfaceFacts:
    """Driver, XDP features, queues and VLAN offload of one interface (read only).
    InterfaceError when there is no such interface."""
    from pyroute2 import Ethtool

    from flowscope.kernel.attach import interface_info

    info = interface_info(name)
    rx_queues = combined = max_combined = None
    vlan_offload = None
    with contextlib.suppress(OSError):
        rx_queues = sum(
            1 for q in os.listdir(f"/sys/class/net/{name}/queues") if q.startswith("rx-")
        )
    try:
        eth = Ethtool()
    except Exception:
        eth = None
    if eth is not None:
        try:
            with contextlib.suppress(Exception):
                ch = eth.get_channels(name)
                combined, max_combined = int(ch.combined_count), int(ch.max_combined)
            with contextlib.suppress(Exception):
                feature = eth.get_features(name).features.get("rx-vlan-hw-parse")
                if feature is not None:
                    vlan_offload = bool(feature.enable)
        finally:
            eth.close()
    return InterfaceFacts(
        name=name,
        kind=info.kind,
        driver=_driver(name),
        virtual=info.virtual,
        xdp_features=xdp_features(info.index),
        rx_queues=rx_queues,
        combined_queues=combined or None,
        max_combined=max_combined or None,
        vlan_offload=vlan_offload,
        xdp_prog_id=info.xdp_prog_id,
    )
