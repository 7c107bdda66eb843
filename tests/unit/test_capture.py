"""collect/capture.py reads pcap and pcapng files into Ethernet frames with their metadata.

Captures come from scapy (wrpcap, PcapNgWriter) where scapy can write them, and from a few
lines of struct where a test needs what scapy will not write (a big-endian file, a damaged one,
records longer than the snap length). Each test checks what the replay would hand the kernel:
the frame, its time in ns, its original length and its interface."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinuxV2
from scapy.utils import PcapNgWriter, wrpcap

from flowscope.collect.capture import Capture, CaptureError, read_all
from tests.pcaps import (
    T0,
    ng_block,
    ng_epb,
    ng_idb,
    ng_shb,
    pcap_header,
    pcap_record,
    udp_frame,
    write,
)

# -- what a good file gives ---------------------------------------------------------------------


def test_scapy_pcap_ethernet_frames_times_and_lengths(tmp_path: Path) -> None:
    pkts = [udp_frame(i, payload=i) for i in range(3)]
    for i, p in enumerate(pkts):
        p.time = T0 + i * 0.25 + 0.000001
    path = tmp_path / "a.pcap"
    wrpcap(str(path), pkts)
    frames, cap = read_all(path)
    assert [f.frame for f in frames] == [bytes(p) for p in pkts]
    assert [f.time_ns for f in frames] == [
        T0 * 10**9 + 1000,
        T0 * 10**9 + 250_001_000,
        T0 * 10**9 + 500_001_000,
    ]
    assert [f.wire_len for f in frames] == [len(bytes(p)) for p in pkts]
    assert {f.ifindex for f in frames} == {1}
    assert cap.interface_names == {1: "if0"}
    assert cap.damage is None and cap.frames_read == 3


def test_nanosecond_and_big_endian_pcap(tmp_path: Path) -> None:
    frame = bytes(udp_frame())
    path = write(
        tmp_path,
        "be.pcap",
        pcap_header(order=">", nano=True) + pcap_record(frame, T0, 123_456_789, order=">"),
    )
    (f,), _ = read_all(path)
    assert f.time_ns == T0 * 10**9 + 123_456_789 and f.frame == frame


def test_snap_length_cut_keeps_the_original_length(tmp_path: Path) -> None:
    frame = bytes(udp_frame(payload=1000))
    path = write(
        tmp_path, "cut.pcap", pcap_header(snaplen=64) + pcap_record(frame[:64], wire=len(frame))
    )
    (f,), _ = read_all(path)
    assert f.frame == frame[:64] and f.wire_len == len(frame) == 1042


def test_pcapng_interfaces_stay_apart_with_their_names(tmp_path: Path) -> None:
    path = tmp_path / "two.pcapng"
    w = PcapNgWriter(str(path))
    for i, ifname in enumerate(["eth0", "eth1", "eth0"]):
        p = udp_frame(i)
        p.time = T0 + i
        p.sniffed_on = ifname
        w.write(p)
    w.close()
    frames, cap = read_all(path)
    names = [cap.interface_names[f.ifindex] for f in frames]
    assert names == ["eth0", "eth1", "eth0"]
    assert len({f.ifindex for f in frames}) == 2
    assert [f.time_ns for f in frames] == [(T0 + i) * 10**9 for i in range(3)]


def test_pcapng_time_resolution_and_duplicate_names(tmp_path: Path) -> None:
    frame = bytes(udp_frame())
    data = (
        ng_shb()
        + ng_idb(name="eth0", tsresol=9)  # nanoseconds
        + ng_idb(name="eth0", tsresol=0x80 | 10)  # 2^-10 s
        + ng_epb(0, T0 * 10**9 + 7, frame)
        + ng_epb(1, T0 * 1024 + 512, frame)
    )
    frames, cap = read_all(write(tmp_path, "res.pcapng", data))
    assert [f.time_ns for f in frames] == [T0 * 10**9 + 7, T0 * 10**9 + 500_000_000]
    assert [cap.interface_names[f.ifindex] for f in frames] == ["eth0", "eth0#2"]


def test_sll2_becomes_ethernet(tmp_path: Path) -> None:
    ip = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=6)
    path = tmp_path / "sll2.pcap"
    wrpcap(str(path), [CookedLinuxV2(proto=0x0800, ifindex=7) / ip])
    (f,), _ = read_all(path)
    assert f.frame == bytes(12) + b"\x08\x00" + bytes(ip)
    assert f.wire_len == 20 + len(bytes(ip))  # the cooked length as the capture recorded it


def test_sll_becomes_ethernet(tmp_path: Path) -> None:
    ip6 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5, dport=6))
    sll = struct.pack(">HHH8sH", 0, 1, 6, bytes(8), 0x86DD)
    path = write(tmp_path, "sll.pcap", pcap_header(linktype=113) + pcap_record(sll + ip6))
    (f,), _ = read_all(path)
    assert f.frame == bytes(12) + b"\x86\xdd" + ip6


@pytest.mark.parametrize("linktype", [101, 228, 229])
def test_raw_ip_becomes_ethernet(tmp_path: Path, linktype: int) -> None:
    pkt = (
        IPv6(src="2001:db8::1", dst="2001:db8::2") if linktype == 229 else IP(src="10.0.0.1")
    ) / UDP()
    raw = bytes(pkt)
    path = write(tmp_path, "raw.pcap", pcap_header(linktype=linktype) + pcap_record(raw))
    (f,), _ = read_all(path)
    ethertype = b"\x86\xdd" if linktype == 229 else b"\x08\x00"
    assert f.frame == bytes(12) + ethertype + raw and f.wire_len == len(raw)


def test_raw_version_nibble_picks_ipv6(tmp_path: Path) -> None:
    raw = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP())
    path = write(tmp_path, "raw6.pcap", pcap_header(linktype=101) + pcap_record(raw))
    (f,), _ = read_all(path)
    assert f.frame[12:14] == b"\x86\xdd"


def test_bsd_loopback_becomes_ethernet(tmp_path: Path) -> None:
    raw = bytes(IP(src="127.0.0.1", dst="127.0.0.1") / UDP())
    path = write(tmp_path, "lo.pcap", pcap_header(linktype=0) + pcap_record(b"\x02\0\0\0" + raw))
    (f,), _ = read_all(path)
    assert f.frame == bytes(12) + b"\x08\x00" + raw


def test_unsupported_link_type_names_it(tmp_path: Path) -> None:
    path = write(tmp_path, "wifi.pcap", pcap_header(linktype=127) + pcap_record(b"x" * 40))
    with pytest.raises(
        CaptureError, match=r"link type 127 \(IEEE802_11_RADIOTAP\) is not supported"
    ):
        Capture(path)
    path = write(tmp_path, "usb.pcapng", ng_shb() + ng_idb(linktype=220))
    with pytest.raises(CaptureError, match=r"link type 220 \(USB_LINUX_MMAPPED\)"):
        list(Capture(path).frames())


# -- damaged files ------------------------------------------------------------------------------


def test_wrong_magic(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="not a pcap or pcapng file"):
        Capture(write(tmp_path, "x.pcap", b"hello world, this is text\n"))


def test_gzip_says_decompress(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="gzip"):
        Capture(write(tmp_path, "x.pcap.gz", gzip.compress(pcap_header())))


@pytest.mark.parametrize("size", [0, 3, 10, 23])
def test_cut_off_file_header(tmp_path: Path, size: int) -> None:
    with pytest.raises(CaptureError, match=r"too short|cut off"):
        Capture(write(tmp_path, "x.pcap", pcap_header()[:size]))


def good_and(tail: bytes) -> bytes:
    return pcap_header(snaplen=200) + pcap_record(bytes(udp_frame(0))) + tail


def test_cut_off_record_header_keeps_what_came_before(tmp_path: Path) -> None:
    frames, cap = read_all(write(tmp_path, "x.pcap", good_and(b"\x01\x02\x03")))
    assert len(frames) == 1 and cap.cut_off
    assert "ends inside the header of frame 2" in str(cap.damage)
    assert "the 1 frame before it were replayed" in str(cap.damage)


def test_cut_off_record_data(tmp_path: Path) -> None:
    rec = pcap_record(bytes(udp_frame(1)))
    frames, cap = read_all(write(tmp_path, "x.pcap", good_and(rec[:-5])))
    assert len(frames) == 1 and cap.cut_off and "ends inside frame 2" in str(cap.damage)


def test_record_longer_than_snap_length_is_skipped_and_counted(tmp_path: Path) -> None:
    long = pcap_record(b"y" * 300)
    frames, cap = read_all(
        write(tmp_path, "x.pcap", good_and(long + pcap_record(bytes(udp_frame(2)))))
    )
    assert len(frames) == 2 and cap.damage is None
    assert cap.skipped.over_snaplen == 1


def test_record_claiming_an_impossible_length_stops(tmp_path: Path) -> None:
    bogus = struct.pack("<IIII", T0, 0, 0x7FFFFFFF, 0x7FFFFFFF) + b"z" * 64
    frames, cap = read_all(write(tmp_path, "x.pcap", good_and(bogus)))
    assert len(frames) == 1 and not cap.cut_off
    assert "claims 2147483647 bytes" in str(cap.damage)


def test_zero_length_record_is_skipped_and_counted(tmp_path: Path) -> None:
    empty = struct.pack("<IIII", T0, 0, 0, 60)
    frames, cap = read_all(
        write(tmp_path, "x.pcap", good_and(empty + pcap_record(bytes(udp_frame(3)))))
    )
    assert len(frames) == 2 and cap.skipped.empty == 1 and cap.damage is None


def test_pcapng_damage(tmp_path: Path) -> None:
    frame = bytes(udp_frame())
    head = ng_shb() + ng_idb() + ng_epb(0, T0 * 10**6, frame)
    frames, cap = read_all(write(tmp_path, "a.pcapng", head + ng_epb(0, T0 * 10**6, frame)[:-9]))
    assert len(frames) == 1 and cap.cut_off and "ends inside frame 2" in str(cap.damage)
    bad = bytearray(ng_epb(0, T0 * 10**6, frame))
    bad[4:8] = struct.pack("<I", 13)
    frames, cap = read_all(write(tmp_path, "b.pcapng", head + bytes(bad)))
    assert len(frames) == 1 and "impossible length (13)" in str(cap.damage)
    frames, cap = read_all(write(tmp_path, "c.pcapng", head + ng_epb(5, 0, frame)))
    assert len(frames) == 1 and cap.skipped.unknown_interface == 1 and cap.damage is None
    frames, cap = read_all(write(tmp_path, "d.pcapng", head + ng_epb(0, 0, b"")))
    assert len(frames) == 1 and cap.skipped.empty == 1


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300), cut=st.integers(min_value=0, max_value=400))
def test_any_bytes_after_a_header_never_raise_anything_but_capture_error(
    tmp_path: Path, data: bytes, cut: int
) -> None:
    """Whatever follows a valid header, reading ends with frames and perhaps a damage note."""
    for name, head in (("p.pcap", pcap_header()), ("p.pcapng", ng_shb() + ng_idb())):
        path = write(tmp_path, name, (head + data)[: len(head) + cut])
        try:
            frames, cap = read_all(path)
        except CaptureError:
            continue
        assert cap.frames_read == len(frames)


# -- hostile block structures (issue #14) -------------------------------------------------------

U64 = 2**64 - 1


@pytest.mark.parametrize(
    ("idb", "ts_units"),
    [
        (ng_idb(), U64),  # an EPB time near 2^64 microseconds
        (ng_idb(tsoffset=10**10), T0 * 10**6),
        (ng_idb(tsoffset=-(10**10)), T0 * 10**6),
        (ng_idb(tsoffset=2**62), 0),
        (ng_idb(tsoffset=-(2**62)), 0),
        (ng_idb(tsresol=0), 2**60),  # seconds: 2^60 of them
    ],
    ids=["time-2^64", "offset+1e10", "offset-1e10", "offset+2^62", "offset-2^62", "tsresol0"],
)
def test_a_time_out_of_range_is_damage_with_the_frame_number(
    tmp_path: Path, idb: bytes, ts_units: int
) -> None:
    frame = bytes(udp_frame())
    good = ng_epb(0, T0 * 10**6, frame) if b"\x0e\x00\x08\x00" not in idb else b""
    data = ng_shb() + idb + good + ng_epb(0, ts_units, frame)
    frames, cap = read_all(write(tmp_path, "t.pcapng", data))
    assert cap.damage is not None and not cap.cut_off
    assert f"frame {len(frames) + 1} " in str(cap.damage) and "outside 1970..2262" in str(
        cap.damage
    )


def test_a_block_claiming_4_gib_is_damage_not_a_cut_off_capture(tmp_path: Path) -> None:
    frame = bytes(udp_frame())
    huge = struct.pack("<II", 6, 0xFFFFFFF0) + bytes(40)
    frames, cap = read_all(
        write(tmp_path, "h.pcapng", ng_shb() + ng_idb() + ng_epb(0, T0 * 10**6, frame) + huge)
    )
    assert len(frames) == 1 and not cap.cut_off
    assert "impossible length (4294967280)" in str(cap.damage)


EDGE_U32 = st.sampled_from([0, 1, 12, 13, 16, 20, 0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFF])
EDGE_S64 = st.sampled_from([0, 1, -1, 10**10, -(10**10), 2**62, -(2**62), 2**63 - 1, -(2**63)])


@st.composite
def blocks(draw: st.DrawFn) -> bytes:
    """One pcapng block with fields drawn from edge values and arbitrary ones: interface
    blocks with any if_tsresol and if_tsoffset, packet blocks with any time, lengths and
    interface id, simple packet blocks, and blocks whose length fields lie."""
    kind = draw(st.sampled_from(["idb", "epb", "pb", "spb", "other", "lying"]))
    if kind == "idb":
        return ng_idb(
            linktype=draw(st.sampled_from([0, 1, 101, 108, 113, 228, 229, 276])),
            snaplen=draw(st.one_of(EDGE_U32, st.integers(0, 70000))),
            name=draw(st.none() | st.text(max_size=20)),
            tsresol=draw(st.none() | st.integers(0, 255)),
            tsoffset=draw(st.none() | EDGE_S64),
        )
    data = draw(st.binary(max_size=80))
    if kind == "epb":
        iface = draw(st.integers(0, 3) | EDGE_U32)
        ts = draw(st.integers(0, 2**64 - 1))
        wire = draw(st.none() | EDGE_U32)
        block = bytearray(ng_epb(iface, ts, data, wire))
        if draw(st.booleans()):  # a captured length that lies
            block[20:24] = struct.pack("<I", draw(EDGE_U32))
        return bytes(block)
    if kind == "pb":
        body = struct.pack("<HHIIII", draw(st.integers(0, 3)), 0, 0, 0, len(data), len(data))
        return ng_block(2, body + data)
    if kind == "spb":
        return ng_block(3, struct.pack("<I", draw(EDGE_U32)) + data)
    if kind == "other":
        return ng_block(draw(st.integers(4, 0x40000000)), data)
    total = draw(EDGE_U32)
    return struct.pack("<II", draw(st.sampled_from([1, 3, 6])), total) + data


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(blocks(), max_size=6))
def test_any_pcapng_block_structure_reads_or_is_damage_never_a_crash(
    tmp_path: Path, parts: list[bytes]
) -> None:
    """Whatever the blocks say, reading gives frames with times in range and lengths inside
    the file, or stops with a damage note that names a frame or a byte: never another
    exception (issue #14: struct.error on times near 2^64, offsets of +-1e10 or 2^62)."""
    path = write(tmp_path, "f.pcapng", ng_shb() + ng_idb() + b"".join(parts))
    try:
        frames, cap = read_all(path)
    except CaptureError:
        return
    assert cap.frames_read == len(frames)
    size = path.stat().st_size
    for f in frames:
        assert 0 <= f.time_ns <= 2**63 - 1
        assert len(f.frame) <= size
    if cap.damage is not None:
        assert "byte " in str(cap.damage) or "frame " in str(cap.damage)
