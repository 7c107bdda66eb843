"""What the running kernel's own type information (BTF, /sys/kernel/btf/vmlinux) says about
its structs and enums: member offsets and enumerator names.

The drop hook (bpf/drops.c) reads a few fields of struct sk_buff and struct net_device, and
names drops by enum skb_drop_reason. Both change between kernel versions, and the headers BCC
compiles against may be another version's (Debian's linux-headers here are 6.1 for a 6.18
kernel), so neither the offsets nor the names can come from headers or be written down: they
are read from the kernel at start and handed to the compiler as -D values.

Only what is needed is decoded: one pass over the type section records where each type
starts; structs, unions and enums are decoded when asked for.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from flowscope.errors import UnsupportedKernelError

VMLINUX = Path("/sys/kernel/btf/vmlinux")

_MAGIC = 0xEB9F
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM = 1, 2, 3, 4, 5, 6
_TYPEDEF, _VOLATILE, _CONST, _RESTRICT = 8, 9, 10, 11
_FUNC_PROTO, _VAR, _DATASEC, _DECL_TAG, _TYPE_TAG, _ENUM64 = 13, 14, 15, 17, 18, 19
_EXTRA = {_INT: 4, _ARRAY: 12, _VAR: 4, _DECL_TAG: 4}
"""Bytes after the 12-byte header of each kind with fixed extra data."""
_PER_ITEM = {_STRUCT: 12, _UNION: 12, _ENUM: 8, _FUNC_PROTO: 8, _DATASEC: 12, _ENUM64: 12}
"""Bytes per item (vlen of them) after the header, for kinds with a list."""
_MODIFIERS = {_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG}


@dataclass
class Btf:
    """The type section of one BTF blob, indexed by type id (1-based)."""

    data: bytes
    strings: int
    """Offset of the string section in ``data``."""
    starts: list[int] = field(default_factory=list)
    """Offset of each type's header in ``data``; starts[0] is unused (type 0 is void)."""
    by_name: dict[tuple[int, str], int] = field(default_factory=dict)
    """(kind, name) -> the first type id of that kind and name with a body."""

    @classmethod
    def parse(cls, data: bytes) -> Btf:
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, _str_len = (
            struct.unpack_from("<HBBIIIII", data)
        )
        if magic != _MAGIC:
            raise UnsupportedKernelError("the kernel's BTF is not readable (bad magic)")
        btf = cls(data, hdr_len + str_off, [0])
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack = struct.Struct("<III").unpack_from
        wanted = {_STRUCT, _UNION, _ENUM, _ENUM64}
        while pos < end:
            name_off, info, _size = unpack(data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            tid = len(btf.starts)
            btf.starts.append(pos)
            if kind in wanted and name_off and vlen:
                btf.by_name.setdefault((kind, btf.string(name_off)), tid)
            pos += 12 + _EXTRA.get(kind, 0) + _PER_ITEM.get(kind, 0) * vlen
        return btf

    def string(self, offset: int) -> str:
        start = self.strings + offset
        return self.data[start : self.data.index(b"\0", start)].decode()

    def _header(self, tid: int) -> tuple[str, int, int, int, int]:
        """(name, kind, vlen, kind_flag, size or type) of type ``tid``."""
        name_off, info, size = struct.unpack_from("<III", self.data, self.starts[tid])
        return self.string(name_off), (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size

    def _resolve(self, tid: int) -> int:
        """Through typedefs and qualifiers to the type they name."""
        while True:
            _, kind, _, _, ref = self._header(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = ref

    def _members(self, tid: int) -> list[tuple[str, int, int]]:
        """(name, type id, bit offset) of each member of struct or union ``tid``."""
        _, _, vlen, kind_flag, _ = self._header(tid)
        base = self.starts[tid] + 12
        out = []
        for i in range(vlen):
            name_off, mtype, offset = struct.unpack_from("<III", self.data, base + 12 * i)
            out.append((self.string(name_off), mtype, offset & 0xFFFFFF if kind_flag else offset))
        return out

    def _find(self, tid: int, name: str) -> tuple[int, int] | None:
        """(byte offset, type id) of member ``name`` of ``tid``, looking inside anonymous
        structs and unions as C does."""
        for mname, mtype, bits in self._members(tid):
            if mname == name:
                return bits // 8, mtype
            if not mname:
                inner = self._resolve(mtype)
                if self._header(inner)[1] in (_STRUCT, _UNION):
                    found = self._find(inner, name)
                    if found is not None:
                        return bits // 8 + found[0], found[1]
        return None

    def bit_offset(self, struct_name: str, name: str) -> int:
        """Bit offset of a member of a struct (a bitfield too), not inside a nested one."""
        tid = self.by_name.get((_STRUCT, struct_name))
        if tid is None:
            raise UnsupportedKernelError(f"the kernel's BTF has no struct {struct_name}")
        for mname, _, bits in self._members(self._resolve(tid)):
            if mname == name:
                return bits
        raise UnsupportedKernelError(f"the kernel's struct {struct_name} has no {name}")

    def offset(self, struct_name: str, path: str) -> int:
        """Byte offset of a member (``"dev"``, or a dotted path ``"ns.inum"``) in a struct."""
        tid = self.by_name.get((_STRUCT, struct_name))
        if tid is None:
            raise UnsupportedKernelError(f"the kernel's BTF has no struct {struct_name}")
        total = 0
        for part in path.split("."):
            found = self._find(self._resolve(tid), part)
            if found is None:
                raise UnsupportedKernelError(f"the kernel's struct {struct_name} has no {path}")
            total += found[0]
            tid = found[1]
        return total

    def enum(self, name: str) -> dict[int, str]:
        """Value -> enumerator name of enum ``name``."""
        tid = self.by_name.get((_ENUM, name))
        if tid is None:
            raise UnsupportedKernelError(f"the kernel's BTF has no enum {name}")
        _, _, vlen, _, _ = self._header(tid)
        base = self.starts[tid] + 12
        out = {}
        for i in range(vlen):
            name_off, value = struct.unpack_from("<Ii", self.data, base + 8 * i)
            out[value] = self.string(name_off)
        return out


@cache
def vmlinux() -> Btf:
    """The running kernel's BTF, parsed once per process."""
    try:
        data = VMLINUX.read_bytes()
    except OSError as e:
        raise UnsupportedKernelError(
            f"cannot read the kernel's type information ({VMLINUX}: {e.strerror})",
            "a kernel built with CONFIG_DEBUG_INFO_BTF has it",
        ) from e
    return checked(data)


def checked(data: bytes) -> Btf:
    """A BTF blob parsed, or UnsupportedKernelError when it is not one (cut short, or not
    what this reader knows): one line for the user, never a traceback."""
    try:
        return Btf.parse(data)
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as e:
        raise UnsupportedKernelError(f"the kernel's BTF is not readable ({e})") from e


def drop_cflags() -> list[str]:
    """The -D values bpf/drops.c and bpf/resets.c are compiled with: the running kernel's
    offsets of what they read of a packet, its device, a socket's addresses and ports, their
    network namespace, and that namespace; and for bpf/owners.c, where a socket keeps its
    congestion state (the kind of a retransmission)."""
    b = vmlinux()
    common = "__sk_common.skc_"
    ca_state = b.bit_offset("inet_connection_sock", "icsk_ca_state")
    return [
        *(
            f"-DSK_{name.upper()}={b.offset('sock', common + name)}"
            for name in ("family", "dport", "daddr", "rcv_saddr", "v6_daddr")
        ),
        f"-DINET_SPORT={b.offset('inet_sock', 'inet_sport')}",
        # icsk_ca_state is a 5-bit field; struct tcp_sock begins with its inet_connection_sock
        f"-DICSK_CA_STATE={ca_state // 8}",
        f"-DICSK_CA_STATE_SHIFT={ca_state % 8}",
        f"-DSK_V6_RCV_SADDR={b.offset('sock', common + 'v6_rcv_saddr')}",
        f"-DSKB_HEAD={b.offset('sk_buff', 'head')}",
        f"-DSKB_NETWORK_HEADER={b.offset('sk_buff', 'network_header')}",
        f"-DSKB_DEV={b.offset('sk_buff', 'dev')}",
        f"-DSKB_SK={b.offset('sk_buff', 'sk')}",
        f"-DDEV_IFINDEX={b.offset('net_device', 'ifindex')}",
        f"-DDEV_NET={b.offset('net_device', 'nd_net')}",
        f"-DSK_NET={b.offset('sock', '__sk_common.skc_net')}",
        f"-DNET_INUM={b.offset('net', 'ns.inum')}",
        f"-DFS_NETNS_INUM={os.stat('/proc/self/ns/net').st_ino}",
        *(f"-DDROP_REASON_{name}={_reason_value(name)}" for name in ("NOT_SPECIFIED", "XDP")),
    ]


def _reason_value(name: str) -> int:
    """A drop reason's value in the running kernel (drop_reason_names), 0 where it has no such
    reason (NOT_SPECIFIED is 2, never 0)."""
    try:
        names = drop_reason_names()
    except UnsupportedKernelError:
        return 0
    return next((value for value, known in names.items() if known == name), 0)


def drop_reason_names() -> dict[int, str]:
    """The running kernel's drop reasons by value, named as dropwatch and perf name them:
    ``SKB_DROP_REASON_NO_SOCKET`` is ``NO_SOCKET``."""
    return {
        value: name.removeprefix("SKB_DROP_REASON_").removeprefix("SKB_")
        for value, name in vmlinux().enum("skb_drop_reason").items()
        if value >= 0
    }


@cache
def known_drop_reasons() -> frozenset[str] | None:
    """The names of drop_reason_names, read once per process, for a filter's ``drop reason``
    term (query.filter.DropReasons); None where the kernel's BTF cannot be read, and then any
    name is taken."""
    try:
        return frozenset(drop_reason_names().values())
    except UnsupportedKernelError:
        return None
