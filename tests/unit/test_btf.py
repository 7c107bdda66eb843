"""kernel/btf.py against a BTF blob built here by hand (struct offsets through anonymous
unions, enum names, what a broken blob gives) and against the running kernel's own."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from flowscope.errors import UnsupportedKernelError
from flowscope.kernel import btf, drops


def _blob() -> bytes:
    """struct outer { int a; union { int b; struct { char c; int d; }; }; } and
    enum e { E_ZERO = 0, E_NEG = -1 }, as the kernel lays BTF out."""
    strings = b"\0int\0outer\0a\0b\0c\0d\0e\0E_ZERO\0E_NEG\0"

    def name(text: str) -> int:
        return strings.index(text.encode() + b"\0")

    def header(name_off: int, kind: int, vlen: int, size: int) -> bytes:
        return struct.pack("<III", name_off, (kind << 24) | vlen, size)

    def member(name_off: int, tid: int, bits: int) -> bytes:
        return struct.pack("<III", name_off, tid, bits)

    types = b"".join(
        [
            header(name("int"), 1, 0, 4) + struct.pack("<I", 32),  # 1: int
            header(0, 4, 2, 8) + member(name("c"), 1, 0) + member(name("d"), 1, 32),  # 2
            header(0, 5, 2, 8) + member(name("b"), 1, 0) + member(0, 2, 0),  # 3: union
            header(name("outer"), 4, 2, 12) + member(name("a"), 1, 0) + member(0, 3, 32),  # 4
            header(name("e"), 6, 2, 4)
            + struct.pack("<Ii", name("E_ZERO"), 0)
            + struct.pack("<Ii", name("E_NEG"), -1),  # 5: enum
        ]
    )
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_offsets_follow_anonymous_members_and_enums_have_their_names() -> None:
    b = btf.checked(_blob())
    assert b.offset("outer", "a") == 0
    assert b.offset("outer", "b") == 4  # in the anonymous union at 4
    assert b.offset("outer", "d") == 8  # in its anonymous struct, 4 bytes further
    assert b.enum("e") == {0: "E_ZERO", -1: "E_NEG"}
    with pytest.raises(UnsupportedKernelError, match="no struct nope"):
        b.offset("nope", "a")
    with pytest.raises(UnsupportedKernelError, match="has no z"):
        b.offset("outer", "z")


@pytest.mark.parametrize("cut", [0, 10, 30, 60])
def test_a_broken_blob_is_one_clear_error(cut: int) -> None:
    with pytest.raises(UnsupportedKernelError, match="BTF is not readable"):
        btf.checked(_blob()[:cut] if cut else b"\x00" * 40)


@pytest.mark.skipif(not btf.VMLINUX.exists(), reason="a kernel without BTF")
def test_the_running_kernels_drop_reasons_and_offsets() -> None:
    names = btf.drop_reason_names()
    assert names[2] == "NOT_SPECIFIED" and "NO_SOCKET" in names.values()
    assert "TC_INGRESS" in names.values()
    assert btf.known_drop_reasons() == frozenset(names.values())
    flags = dict(f[2:].split("=") for f in btf.drop_cflags())
    assert set(flags) >= {"SKB_HEAD", "SKB_NETWORK_HEADER", "SKB_DEV", "DEV_IFINDEX", "NET_INUM"}
    assert int(flags["FS_NETNS_INUM"]) == Path("/proc/self/ns/net").stat().st_ino


def test_code_ranges_reads_where_functions_start_and_the_next_begins(tmp_path: Path) -> None:
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_bytes(
        b"ffffffff81eb75e0 T generic_xdp_tx\n"
        b"ffffffff81eb77a0 t __pfx_do_xdp_generic\n"
        b"ffffffff81eb77b0 T do_xdp_generic\n"
        b"ffffffff81eb7b70 t __pfx___netif_receive_skb_core.constprop.0\n"
        b"ffffffffc0001000 t do_xdp_generic_helper\t[some_module]\n"
    )
    names = (b"do_xdp_generic", b"netif_receive_generic_xdp")
    assert drops.code_ranges(names, kallsyms) == {
        b"do_xdp_generic": (0xFFFFFFFF81EB77B0, 0xFFFFFFFF81EB7B70)
    }
    # what a reader without CAP_SYSLOG sees: no addresses, so nothing
    kallsyms.write_bytes(b"0000000000000000 T do_xdp_generic\n0000000000000000 T next\n")
    assert drops.code_ranges(names, kallsyms) == {}
    assert drops.code_ranges(names, tmp_path / "missing") == {}


@pytest.mark.skipif(not btf.VMLINUX.exists(), reason="a kernel without BTF")
def test_the_running_kernel_has_generic_xdp_where_kallsyms_says() -> None:
    ranges = drops.code_ranges(drops.GENERIC_XDP)
    assert b"do_xdp_generic" in ranges
    start, end = ranges[b"do_xdp_generic"]
    assert 0 < end - start < 1 << 16
