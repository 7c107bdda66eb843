"""Read pcap and pcapng captures for ``flowscope replay``, frame by frame, without copying.

Parsed here with struct rather than through a library: the replay loop runs a million frames
a second through BPF_PROG_TEST_RUN, and what it needs from the reader is unusual: each frame as
an address in memory with 16 writable bytes in front of it, where the reader writes the
frame's struct replay_meta (capture time, original length, interface; see bpf/flowscope.h). The
file is mapped copy-on-write, so those bytes are the record's own header, already parsed, and
the file itself is never changed. Frames of Linux cooked captures (SLL, SLL2) get their
Ethernet header written the same way over the cooked header; raw IP and BSD loopback frames,
which have no room in front, are copied into a scratch buffer behind a made-up Ethernet header.

A damaged file stops the reading where the damage is, with a message that says where; whatever
came before it has been handed out already. Damage that leaves the framing intact (an empty
record, one longer than the snap length, a packet of an unknown interface) is skipped and
counted instead.

About 580 lines, most of them one class: pcap and pcapng share the buffer, the damage rules
and the interface table, so one reader keeps them consistent.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import stat
import struct
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

from flowscope import abi
from flowscope.errors import FlowscopeError

META = abi.REPLAY_META_SIZE
ETH_HLEN = 14
MAX_RECORD = 262144
"""libpcap's largest snap length: a record claiming more means the framing is lost."""
SCRATCH_FRAME = 3072
"""Bytes of a copied (raw IP, loopback) frame kept; the parser never looks further."""
MAX_BLOCK = 16 << 20
"""The largest pcapng block taken as one (a packet of MAX_RECORD with room for any options):
a block claiming more means its length is damaged, not that the file was cut off."""
MAX_TS = 2**63 - 1
"""The latest capture time in ns (2262): a later (or negative) one is a damaged time field,
a time resolution or offset, and would not fit the kernel's u64 or history."""
RELEASE_EVERY = 64 << 20
"""How often (in bytes of the file) a reader should call Capture.release()."""

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

LINKTYPE_NAMES = {
    0: "NULL (BSD loopback)",
    1: "ETHERNET",
    6: "IEEE802_5",
    9: "PPP",
    10: "FDDI",
    50: "PPP_HDLC",
    51: "PPP_ETHER",
    101: "RAW",
    104: "C_HDLC",
    105: "IEEE802_11",
    108: "LOOP",
    113: "LINUX_SLL",
    119: "IEEE802_11_PRISM",
    127: "IEEE802_11_RADIOTAP",
    147: "USER0",
    187: "BLUETOOTH_HCI_H4",
    189: "USB_LINUX",
    192: "PPI",
    195: "IEEE802_15_4_WITHFCS",
    201: "BLUETOOTH_HCI_H4_WITH_PHDR",
    220: "USB_LINUX_MMAPPED",
    228: "IPV4",
    229: "IPV6",
    253: "NETLINK",
    276: "LINUX_SLL2",
}
SUPPORTED = "Ethernet, Linux cooked (SLL, SLL2), raw IP (RAW, IPV4, IPV6) and BSD loopback"

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ARPHRD_NETLINK = 824

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
BLOCK_IDB = 1
BLOCK_PB = 2
BLOCK_SPB = 3
BLOCK_EPB = 6
OPT_IF_NAME = 2
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14


class CaptureError(FlowscopeError):
    """The file is not a capture flowscope can replay, or is damaged at some point."""

    exit_code = 2


@dataclass(slots=True)
class Skipped:
    """Records passed over without stopping, by reason."""

    empty: int = 0
    """Records of zero captured bytes."""
    over_snaplen: int = 0
    """Records longer than their interface's snap length (their data is not trusted)."""
    unknown_interface: int = 0
    """pcapng packets naming an interface the file never described."""

    def as_dict(self) -> dict[str, int]:
        return {
            "empty": self.empty,
            "over_snaplen": self.over_snaplen,
            "unknown_interface": self.unknown_interface,
        }


@dataclass(frozen=True, slots=True)
class _Iface:
    """One capture interface: how to turn its frames into Ethernet and its times into ns."""

    ifindex: int
    linktype: int
    snaplen: int
    ts_mul: int
    ts_div: int
    ts_offset_ns: int


def linktype_name(linktype: int) -> str:
    """'105 (IEEE802_11)': the number and, when known, the name tcpdump uses."""
    name = LINKTYPE_NAMES.get(linktype)
    return f"{linktype} ({name})" if name else str(linktype)


def _check_linktype(path: Path, linktype: int) -> None:
    if linktype not in (
        LINKTYPE_ETHERNET,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_LINUX_SLL2,
        LINKTYPE_RAW,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_NULL,
        LINKTYPE_LOOP,
    ):
        raise CaptureError(
            f"{path}: link type {linktype_name(linktype)} is not supported",
            f"flowscope replays {SUPPORTED} captures",
        )


class Capture:
    """An open pcap or pcapng file. ``frames()`` hands out its frames once, in file order.

    Opening checks the file header (wrong magic, cut-off header and an unsupported link type
    fail here, before anything is replayed). While frames are read, ``interface_names`` fills
    with ifindex -> name (pcapng if_name, else ``if<N>``), and damage found later ends the
    frames and sets ``damage``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            # a FIFO or a device would block open() or never end: only regular files
            if not stat.S_ISREG(os.stat(self.path).st_mode):
                raise CaptureError(f"{self.path} is not a regular file", "save the capture first")
            with open(self.path, "rb") as f:
                self.size = os.fstat(f.fileno()).st_size
                head = f.read(24)
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if self.size else None
        except OSError as e:
            raise CaptureError(f"cannot read {self.path}: {e.strerror}") from e
        self.interface_names: dict[int, str] = {}
        self.skipped = Skipped()
        self.frames_read = 0
        self.base = 0
        self._base_obj: ctypes.c_char | None = None
        self._offset = 0
        self.damage: CaptureError | None = None
        """Why reading stopped before the end of the file, when it did."""
        self.cut_off = False
        """The damage is the file ending inside a record (a capture that was interrupted)."""
        self._scratch = ctypes.create_string_buffer(META + ETH_HLEN + SCRATCH_FRAME)
        self._scratch_frame = ctypes.addressof(self._scratch) + META
        self._format = self._sniff(head)

    # -- the file header ------------------------------------------------------------------

    def _sniff(self, head: bytes) -> str:
        if len(head) < 4:
            raise CaptureError(f"{self.path}: too short to be a capture ({self.size} bytes)")
        magic_le = struct.unpack_from("<I", head)[0]
        magic_be = struct.unpack_from(">I", head)[0]
        if magic_le == PCAPNG_SHB:
            return "pcapng"
        for order in ("<", ">"):
            magic = magic_le if order == "<" else magic_be
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                if len(head) < 24:
                    raise CaptureError(
                        f"{self.path}: the pcap file header is cut off ({self.size} of 24 bytes)"
                    )
                _, _, _, _, _, snaplen, network = struct.unpack_from(order + "IHHiIII", head)
                linktype = network & 0xFFFF
                _check_linktype(self.path, linktype)
                self._order = order
                self._pcap_iface = _Iface(
                    1, linktype, snaplen, 1 if magic == PCAP_MAGIC_NS else 1000, 1, 0
                )
                self.interface_names[1] = "if0"
                return "pcap"
        if head[:2] == b"\x1f\x8b":
            raise CaptureError(
                f"{self.path}: is gzip-compressed", "decompress it first (gunzip -k FILE)"
            )
        raise CaptureError(
            f"{self.path}: not a pcap or pcapng file (it starts with {head[:4].hex()})",
            "give a capture written by tcpdump, tshark, dumpcap or Wireshark",
        )

    # -- frames ---------------------------------------------------------------------------

    def frames(self) -> Generator[tuple[int, int, int], None, None]:
        """Each frame as (capture time in ns since the epoch, address of its Ethernet frame,
        captured length), with its struct replay_meta already written in the 16 bytes in front
        of the address. The address is valid until the next frame is asked for."""
        if self._mm is None:
            return _no_frames()
        self._base_obj = ctypes.c_char.from_buffer(self._mm)
        self.base = ctypes.addressof(self._base_obj)
        if self._format == "pcap":
            return self._pcap_frames(self.base)
        return self._pcapng_frames(self.base)

    @property
    def mapping(self) -> mmap.mmap | None:
        """The file's private mapping (None for an empty file): the bytes of the frames that
        frames() hands out at ``base`` + offset, for a reader that looks into them."""
        return self._mm

    def offset(self, addr: int) -> int:
        """How far into the file the frame at ``addr`` (from frames()) is: for progress."""
        off = addr - self.base
        if 0 <= off < self.size:
            self._offset = off
        return self._offset

    def release(self, upto: int) -> None:
        """Drop the private copies of the mapping's pages before ``upto``: the metadata written
        into them made them copies, which would otherwise add up to the whole file in memory.
        Only for pages whose frames have all been replayed."""
        start = upto - upto % mmap.PAGESIZE
        if start > 0 and hasattr(mmap, "MADV_DONTNEED") and self._mm is not None:
            with contextlib.suppress(OSError, ValueError):
                self._mm.madvise(mmap.MADV_DONTNEED, 0, start)

    def close(self) -> None:
        """Unmap the file (only once frames() has finished or been closed)."""
        self._base_obj = None
        if self._mm is not None:
            with contextlib.suppress(BufferError):
                self._mm.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stop(self, done: int, message: str, *, cut_off: bool = False) -> None:
        self.frames_read = done
        self.damage = CaptureError(
            f"{self.path}: {message}; the {done} frame{'s' if done != 1 else ''} before it "
            "were replayed"
        )
        self.cut_off = cut_off

    def _to_ethernet(self, base: int, linktype: int, data: int, caplen: int) -> tuple[int, int]:
        """The Ethernet form of a cooked, raw or loopback frame: (address, length). Written in
        place over the link header when there is room for it and the metadata, else copied."""
        mm = self._mm
        assert mm is not None
        if linktype in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2):
            hlen = 16 if linktype == LINKTYPE_LINUX_SLL else 20
            if caplen < hlen:
                return base + data, 0  # not even a cooked header: an empty frame
            if linktype == LINKTYPE_LINUX_SLL:
                arphrd, ethertype = struct.unpack_from(">2xH10xH", mm, data)
            else:
                ethertype, arphrd = struct.unpack_from(">H6xH", mm, data)
            if arphrd == ARPHRD_NETLINK:
                ethertype = 0  # the protocol field is a netlink family: not IP
            payload = data + hlen
            # the cooked header plus the record header ahead of it leave room for both
            mm[payload - ETH_HLEN : payload] = bytes(12) + ethertype.to_bytes(2, "big")
            return base + payload - ETH_HLEN, caplen - hlen + ETH_HLEN
        if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if caplen < 4:
                return base + data, 0
            order = "<" if linktype == LINKTYPE_NULL and mm[data] else ">"
            family = struct.unpack_from(order + "I", mm, data)[0]
            if family == 2:
                ethertype = ETH_P_IP
            elif family in (10, 24, 28, 30):  # AF_INET6 on Linux and the BSDs
                ethertype = ETH_P_IPV6
            else:
                ethertype = 0
            data, caplen = data + 4, caplen - 4
        elif linktype == LINKTYPE_IPV4:
            ethertype = ETH_P_IP
        elif linktype == LINKTYPE_IPV6:
            ethertype = ETH_P_IPV6
        else:  # LINKTYPE_RAW: the version nibble says which
            ethertype = ETH_P_IPV6 if caplen and mm[data] >> 4 == 6 else ETH_P_IP
        n = min(caplen, SCRATCH_FRAME)
        frame = self._scratch_frame
        ctypes.memset(frame, 0, 12)
        struct.pack_into(">H", self._scratch, META + 12, ethertype)
        ctypes.memmove(frame + ETH_HLEN, base + data, n)
        return frame, n + ETH_HLEN

    def _pcap_frames(self, base: int) -> Generator[tuple[int, int, int], None, None]:
        mm = self._mm
        assert mm is not None
        iface = self._pcap_iface
        size = self.size
        unpack = struct.Struct(self._order + "IIII").unpack_from
        pack_meta = struct.Struct(abi.REPLAY_META_FORMAT).pack_into
        linktype, snaplen, mul = iface.linktype, iface.snaplen, iface.ts_mul
        ethernet = linktype == LINKTYPE_ETHERNET
        good = snaplen or MAX_RECORD  # a record of 1..good bytes is taken as it is
        scratch, scratch_frame = self._scratch, self._scratch_frame
        skipped = self.skipped
        n = 0
        off = 24
        # The loop is the replay's hot path: the common record passes ONE chained comparison;
        # everything unusual is sorted out inside it.
        while off < size:
            try:
                sec, frac, caplen, wire = unpack(mm, off)
            except struct.error:
                self._stop(n, f"the file ends inside the header of frame {n + 1}", cut_off=True)
                return
            end = off + 16 + caplen
            if not (0 < caplen <= good and end <= size and wire >= caplen):
                if caplen > max(snaplen, MAX_RECORD):
                    self._stop(
                        n,
                        f"frame {n + 1} (byte {off}) claims {caplen} bytes, more than any "
                        "capture record holds: the file is damaged there",
                    )
                    return
                if end > size:
                    self._stop(n, f"the file ends inside frame {n + 1}", cut_off=True)
                    return
                if caplen == 0 or caplen > good:
                    if caplen == 0:
                        skipped.empty += 1
                    else:
                        skipped.over_snaplen += 1
                    off = end
                    continue
                wire = caplen  # an original length below the captured one: keep what is there
            ts = sec * 1_000_000_000 + frac * mul
            n += 1
            if ethernet:
                pack_meta(mm, off, ts, wire, 1)  # over the record header, already read
                yield ts, base + off + 16, caplen
            else:
                addr, length = self._to_ethernet(base, linktype, off + 16, caplen)
                if addr == scratch_frame:
                    pack_meta(scratch, 0, ts, wire, 1)
                else:
                    pack_meta(mm, addr - base - META, ts, wire, 1)
                yield ts, addr, length
            off = end
        self.frames_read = n

    # -- pcapng ---------------------------------------------------------------------------

    def _pcapng_frames(self, base: int) -> Generator[tuple[int, int, int], None, None]:
        mm = self._mm
        assert mm is not None
        size = self.size
        pack_meta = struct.Struct(abi.REPLAY_META_FORMAT).pack_into
        scratch = self._scratch
        skipped = self.skipped
        order = "<"
        ifaces: list[_Iface] = []
        next_ifindex = 1
        last_ts = 0
        n = 0
        off = 0
        while off < size:
            if off + 12 > size:
                self._stop(n, f"the file ends inside a block header (byte {off})", cut_off=True)
                return
            btype = struct.unpack_from(order + "I", mm, off)[0]
            if btype == PCAPNG_SHB:
                if off + 12 > size:
                    self._stop(
                        n, f"the file ends inside a section header (byte {off})", cut_off=True
                    )
                    return
                bom = struct.unpack_from("<I", mm, off + 8)[0]
                if bom == PCAPNG_BOM:
                    order = "<"
                elif bom == 0x4D3C2B1A:
                    order = ">"
                else:
                    self._stop(n, f"a section header at byte {off} has no byte-order magic")
                    return
                ifaces = []  # interface ids start again in each section
            total = struct.unpack_from(order + "I", mm, off + 4)[0]
            if total < 12 or total % 4 or total > MAX_BLOCK:
                self._stop(n, f"the block at byte {off} has an impossible length ({total})")
                return
            end = off + total
            if end > size:
                what = f"frame {n + 1}" if btype in (BLOCK_EPB, BLOCK_PB, BLOCK_SPB) else "a block"
                self._stop(n, f"the file ends inside {what} (byte {off})", cut_off=True)
                return
            if struct.unpack_from(order + "I", mm, end - 4)[0] != total:
                self._stop(n, f"the block at byte {off} does not end with its length")
                return
            body = off + 8
            blen = total - 12
            block_off = off
            off = end
            if btype == BLOCK_IDB:
                if blen < 8:
                    self._stop(n, f"the interface block at byte {block_off} is too short")
                    return
                linktype, _, snaplen = struct.unpack_from(order + "HHI", mm, body)
                _check_linktype(self.path, linktype)
                name, ts_mul, ts_div, ts_off = self._idb_options(order, body + 8, body + blen)
                iface = _Iface(next_ifindex, linktype, snaplen, ts_mul, ts_div, ts_off)
                self.interface_names[next_ifindex] = self._unique(name or f"if{len(ifaces)}")
                ifaces.append(iface)
                next_ifindex += 1
                continue
            if btype in (BLOCK_EPB, BLOCK_PB):
                if blen < 20:
                    self._stop(n, f"the packet block at byte {block_off} is too short")
                    return
                if btype == BLOCK_EPB:
                    iface_id, hi, lo, caplen, wire = struct.unpack_from(order + "IIIII", mm, body)
                else:
                    iface_id, _, hi, lo, caplen, wire = struct.unpack_from(
                        order + "HHIIII", mm, body
                    )
                data = body + 20
                if caplen > blen - 20:
                    self._stop(
                        n,
                        f"frame {n + 1} (byte {block_off}) claims {caplen} bytes, more than "
                        "its block holds: the file is damaged there",
                    )
                    return
                if iface_id >= len(ifaces):
                    skipped.unknown_interface += 1
                    continue
                iface = ifaces[iface_id]
                ts = ((hi << 32) | lo) * iface.ts_mul // iface.ts_div + iface.ts_offset_ns
                if not 0 <= ts <= MAX_TS:
                    self._stop(
                        n,
                        f"frame {n + 1} (byte {block_off}) has a time outside 1970..2262 (its "
                        "time, or its interface's if_tsresol or if_tsoffset, is damaged)",
                    )
                    return
            elif btype == BLOCK_SPB:
                if not ifaces:
                    skipped.unknown_interface += 1
                    continue
                iface = ifaces[0]
                wire = struct.unpack_from(order + "I", mm, body)[0]
                data = body + 4
                caplen = min(wire, blen - 4)
                if iface.snaplen:
                    caplen = min(caplen, iface.snaplen)
                ts = last_ts  # a simple packet block has no time: the one before it
            else:
                continue
            if caplen == 0:
                skipped.empty += 1
                continue
            if iface.snaplen and caplen > iface.snaplen:
                skipped.over_snaplen += 1
                continue
            if wire < caplen:
                wire = caplen
            last_ts = ts
            n += 1
            if iface.linktype == LINKTYPE_ETHERNET:
                pack_meta(mm, data - META, ts, wire, iface.ifindex)
                yield ts, base + data, caplen
            else:
                addr, length = self._to_ethernet(base, iface.linktype, data, caplen)
                if addr == self._scratch_frame:
                    pack_meta(scratch, 0, ts, wire, iface.ifindex)
                else:
                    pack_meta(mm, addr - base - META, ts, wire, iface.ifindex)
                yield ts, addr, length
        self.frames_read = n

    def _unique(self, name: str) -> str:
        """Interface names as keys of history: two interfaces of one name stay apart."""
        taken = set(self.interface_names.values())
        if name not in taken:
            return name
        i = 2
        while f"{name}#{i}" in taken:
            i += 1
        return f"{name}#{i}"

    def _idb_options(self, order: str, pos: int, end: int) -> tuple[str | None, int, int, int]:
        """if_name, and the time unit (as ns = units * mul // div) and offset (ns)."""
        mm = self._mm
        assert mm is not None
        name: str | None = None
        mul, div, offset = 1000, 1, 0  # default resolution: microseconds
        while pos + 4 <= end:
            code, length = struct.unpack_from(order + "HH", mm, pos)
            value = pos + 4
            if code == 0 or value + length > end:
                break
            if code == OPT_IF_NAME:
                name = bytes(mm[value : value + length]).split(b"\0")[0].decode(errors="replace")
            elif code == OPT_IF_TSRESOL and length >= 1:
                r = mm[value]
                if r & 0x80:
                    mul, div = 1_000_000_000, 1 << (r & 0x7F)
                elif r <= 9:
                    mul, div = 10 ** (9 - r), 1
                else:
                    mul, div = 1, 10 ** (r - 9)
            elif code == OPT_IF_TSOFFSET and length >= 8:
                offset = struct.unpack_from(order + "q", mm, value)[0] * 1_000_000_000
            pos = value + (length + 3) // 4 * 4
        return name, mul, div, offset


def _no_frames() -> Generator[tuple[int, int, int], None, None]:
    """The frames of an empty file."""
    yield from ()


@dataclass(slots=True)
class FrameView:
    """One frame as the tests see it (copied out of the reader's memory)."""

    time_ns: int
    ifindex: int
    wire_len: int
    frame: bytes
    meta: bytes = field(repr=False, default=b"")


def read_all(path: Path | str) -> tuple[list[FrameView], Capture]:
    """Every frame of a capture, copied, with its metadata decoded: for tests and tools, not
    for the replay loop (which never copies)."""
    cap = Capture(path)
    out: list[FrameView] = []
    try:
        for _ts, addr, length in cap.frames():
            meta = ctypes.string_at(addr - META, META)
            t, wire, ifindex = struct.unpack(abi.REPLAY_META_FORMAT, meta)
            out.append(FrameView(t, ifindex, wire, ctypes.string_at(addr, length), meta))
    finally:
        cap.close()
    return out, cap
