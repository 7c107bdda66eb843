"""flowscope/abi.py mirrors bpf/flowscope.h byte for byte.

Pinned three ways: the sizes and offsets written down here, the same numbers as the C compiler
sees them in the header itself, and a hand-annotated byte string decoded through the mirror."""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from flowscope import abi
from flowscope.model import FlowKey, event_from_bytes

HEADER = Path(__file__).parents[2] / "bpf" / "flowscope.h"

LAYOUT = {
    "flow_key4": (
        abi.FlowKey4,
        24,
        {
            "ifindex": 0,
            "saddr": 4,
            "daddr": 8,
            "sport": 12,
            "dport": 14,
            "vlan": 16,
            "proto": 18,
            "direction": 19,
            "pad": 20,
        },
    ),
    "flow_key6": (
        abi.FlowKey6,
        48,
        {
            "ifindex": 0,
            "saddr": 4,
            "daddr": 20,
            "sport": 36,
            "dport": 38,
            "vlan": 40,
            "proto": 42,
            "direction": 43,
            "pad": 44,
        },
    ),
    "flow_value": (
        abi.FlowValue,
        48,
        {
            "packets": 0,
            "bytes": 8,
            "ip_bytes": 16,
            "first_seen": 24,
            "last_seen": 32,
            "tcp_flags": 40,
            "block_gen": 44,
        },
    ),
    "flow_event": (
        abi.FlowEvent,
        64,
        {
            "timestamp": 0,
            "ifindex": 8,
            "length": 12,
            "saddr": 16,
            "daddr": 32,
            "sport": 48,
            "dport": 50,
            "vlan": 52,
            "proto": 54,
            "family": 55,
            "direction": 56,
            "flags": 57,
        },
    ),
    # counters[direction][counter]: ingress 0..79, egress 80..159
    "cpu_state": (
        abi.CpuState,
        216,
        {
            "counters": 0,
            "clock_jiffies": 160,
            "clock_ns": 168,
            "event_window": 176,
            "event_count": 184,
            "full_jiffies": 192,
        },
    ),
    "flood_key": (
        abi.FloodKey,
        24,
        {
            "prefix": 0,
            "ifindex": 8,
            "dport": 12,
            "proto": 14,
            "tcp_flags": 15,
            "family": 16,
            "direction": 17,
        },
    ),
    "flood_value": (abi.FloodValue, 16, {"packets": 0, "bytes": 8}),
    "drop_budget": (abi.DropBudget, 24, {"jiffies": 0, "count": 8, "unattributed": 16}),
    "drop_xdp_code": (abi.DropXdpCode, 32, {"start": 0, "end": 16}),
    "block_src4": (abi.BlockSrc4, 8, {"prefixlen": 0, "saddr": 4}),
    "block_src6": (abi.BlockSrc6, 20, {"prefixlen": 0, "saddr": 4}),
    "block_target4": (abi.BlockTarget4, 12, {"prefixlen": 0, "proto": 4, "dport": 5, "saddr": 7}),
    "block_target6": (abi.BlockTarget6, 24, {"prefixlen": 0, "proto": 4, "dport": 5, "saddr": 7}),
    "block_value": (abi.BlockValue, 8, {"matched": 0}),
    "block_rules": (
        abi.BlockRules,
        16 + 3 * 8 * abi.BLOCK_BITMAP_WORDS,
        {
            "src4": 0,
            "src6": 4,
            "target4": 8,
            "target6": 12,
            "src4_bits": 16,
            "src6_bits": 16 + 8 * abi.BLOCK_BITMAP_WORDS,
            "target_bits": 16 + 16 * abi.BLOCK_BITMAP_WORDS,
        },
    ),
    "replay_meta": (abi.ReplayMeta, 16, {"timestamp": 0, "wire_len": 8, "ifindex": 12}),
    "sock_owner": (abi.SockOwner, 32, {"cgroup_id": 0, "pid": 8, "uid": 12, "comm": 16}),
    "sock_event": (
        abi.SockEvent,
        96,
        {
            "timestamp": 0,
            "netns": 8,
            "cookie": 16,
            "owner": 24,
            "laddr": 56,
            "raddr": 72,
            "lport": 88,
            "rport": 90,
            "family": 92,
            "proto": 93,
            "kind": 94,
        },
    ),
    "tcp_health": (
        abi.TcpHealth,
        72,
        {
            "netns": 0,
            "laddr": 8,
            "raddr": 24,
            "lport": 40,
            "rport": 42,
            "family": 44,
            "retrans": 48,
            "srtt_us": 52,
            "rtt_min_us": 56,
            "retrans_fast": 60,
            "retrans_rto": 64,
            "retrans_probe": 68,
        },
    ),
    "reset_key": (
        abi.ResetKey,
        40,
        {"saddr": 0, "daddr": 16, "sport": 32, "dport": 34, "family": 36, "direction": 37},
    ),
    "drop_key": (
        abi.DropKey,
        48,
        {
            "saddr": 0,
            "daddr": 16,
            "ifindex": 32,
            "reason": 36,
            "sport": 40,
            "dport": 42,
            "proto": 44,
            "family": 45,
        },
    ),
}


@pytest.mark.parametrize("name", LAYOUT)
def test_python_mirror_has_the_pinned_layout(name: str) -> None:
    mirror, size, offsets = LAYOUT[name]
    assert ctypes.sizeof(mirror) == size
    for field, off in offsets.items():
        assert getattr(mirror, field).offset == off, field


def test_numpy_dtypes_follow_the_structs() -> None:
    assert abi.KEY4_DTYPE.itemsize == 24
    assert abi.KEY6_DTYPE.itemsize == 48
    assert abi.VALUE_DTYPE.itemsize == 48
    assert abi.KEY4_DTYPE.fields["dport"][1] == 14
    assert abi.KEY6_DTYPE.fields["vlan"][1] == 40


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_header_has_the_same_layout(tmp_path: Path) -> None:
    """Compile a probe against the real header and compare what the C compiler says."""
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <linux/types.h>",
        f'#include "{HEADER}"',
        "int main(void) {",
    ]
    for name, (_, _, offsets) in LAYOUT.items():
        lines.append(f'printf("{name} size %zu\\n", sizeof(struct {name}));')
        for field in offsets:
            lines.append(f'printf("{name} {field} %zu\\n", offsetof(struct {name}, {field}));')
    for c in abi.Counter:
        lines.append(f'printf("counter CNT_{c.name} %d\\n", CNT_{c.name});')
    lines.append('printf("counter CNT_MAX %d\\n", CNT_MAX);')
    for c in abi.SockCounter:
        lines.append(f'printf("counter SCNT_{c.name} %d\\n", SCNT_{c.name});')
    for kind in ("CONNECT", "LISTEN", "BIND"):
        lines.append(f'printf("counter FS_SOCK_{kind} %d\\n", FS_SOCK_{kind});')
    lines.append('printf("counter FS_DIRECTIONS %d\\n", FS_DIRECTIONS);')
    lines.append('printf("counter DROP_REASON_SLOTS %d\\n", DROP_REASON_SLOTS);')
    lines.append('printf("counter FS_DIR_EGRESS %d\\n", FS_DIR_EGRESS);')
    lines.append('printf("counter FLOOD_ENTRIES %d\\n", FLOOD_ENTRIES);')
    lines.append('printf("counter DROP_BUDGET %d\\n", DROP_BUDGET);')
    lines.append('printf("counter RESET_ENTRIES %d\\n", RESET_ENTRIES);')
    lines.append('printf("counter BLOCK_ENTRIES %d\\n", BLOCK_ENTRIES);')
    lines.append('printf("counter BLOCK_TARGET_BITS %d\\n", BLOCK_TARGET_BITS);')
    lines.append('printf("counter BLOCK_BITMAP_WORDS %d\\n", BLOCK_BITMAP_WORDS);')
    lines.append('printf("counter EVENT_WINDOW_NS %llu\\n", EVENT_WINDOW_NS);')
    lines.append(
        'printf("counter egress_packets %zu\\n", '
        "offsetof(struct cpu_state, counters[FS_DIR_EGRESS][CNT_PACKETS]));"
    )
    lines += ["return 0; }"]
    src = tmp_path / "probe.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "probe"
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True)
    seen = {}
    for line in subprocess.run(
        [str(exe)], check=True, capture_output=True, text=True
    ).stdout.splitlines():
        a, b, v = line.split()
        seen[(a, b)] = int(v)
    for name, (mirror, size, offsets) in LAYOUT.items():
        assert seen[(name, "size")] == ctypes.sizeof(mirror) == size
        for field, off in offsets.items():
            assert seen[(name, field)] == getattr(mirror, field).offset == off
    for c in abi.Counter:
        assert seen[("counter", f"CNT_{c.name}")] == int(c)
    assert seen[("counter", "CNT_MAX")] == abi.COUNTER_COUNT
    for sc in abi.SockCounter:
        assert seen[("counter", f"SCNT_{sc.name}")] == int(sc)
    assert seen[("counter", "FS_SOCK_CONNECT")] == abi.SOCK_CONNECT
    assert seen[("counter", "FS_SOCK_LISTEN")] == abi.SOCK_LISTEN
    assert seen[("counter", "FS_SOCK_BIND")] == abi.SOCK_BIND
    assert seen[("counter", "FS_DIRECTIONS")] == abi.DIRECTIONS
    assert seen[("counter", "DROP_REASON_SLOTS")] == abi.DROP_REASON_SLOTS
    assert seen[("counter", "FS_DIR_EGRESS")] == abi.DIR_EGRESS
    assert seen[("counter", "FLOOD_ENTRIES")] == abi.DEFAULT_FLOOD_ENTRIES
    assert seen[("counter", "DROP_BUDGET")] == abi.DROP_BUDGET
    assert seen[("counter", "RESET_ENTRIES")] == abi.RESET_ENTRIES
    assert seen[("counter", "BLOCK_ENTRIES")] == abi.BLOCK_ENTRIES
    assert seen[("counter", "BLOCK_TARGET_BITS")] == abi.BLOCK_TARGET_BITS
    assert seen[("counter", "BLOCK_BITMAP_WORDS")] == abi.BLOCK_BITMAP_WORDS
    assert seen[("counter", "EVENT_WINDOW_NS")] == abi.EVENT_WINDOW_NS
    assert seen[("counter", "egress_packets")] == 8 * abi.COUNTER_COUNT * abi.DIR_EGRESS


def test_hand_annotated_event_decodes() -> None:
    raw = bytes.fromhex(
        "0010a5d4e8000000"  # timestamp 1_000_000_000_000 ns, little endian
        "07000000"  # ifindex 7
        "62000000"  # length 98
        "c6120001"
        + "00" * 12  # saddr 198.18.0.1, rest zero (IPv4)
        + "c6120002"
        + "00" * 12  # daddr 198.18.0.2
        + "0000"  # sport 0 (network order)
        "0800"  # dport: ICMP echo request, type 8 code 0 = 0x0800
        "2a00"  # vlan 42, host order
        "01"  # proto ICMP
        "04"  # family AF_INET
        "00"  # direction ingress
        "01"  # flags: map full
         + "00" * 6  # pad
    )
    assert len(raw) == 64
    ev = event_from_bytes(raw)
    assert ev.timestamp == 1_000_000_000_000
    assert ev.length == 98
    assert ev.map_full is True
    assert ev.key == FlowKey(4, "198.18.0.1", "198.18.0.2", 0, 0x0800, 1, 42, 7, 0)
    assert ev.key.icmp_type_code == (8, 0)


def test_hand_annotated_ipv6_key_decodes_through_numpy() -> None:
    raw = bytes.fromhex(
        "03000000"  # ifindex 3
        "20010db8000000000000000000000001"  # saddr 2001:db8::1
        "20010db8000000000000000000000002"  # daddr 2001:db8::2
        "d431"  # sport 54321 (network order)
        "01bb"  # dport 443
        "0000"  # vlan 0
        "06"  # TCP
        "01"  # egress
        "00000000"  # pad
    )
    import numpy as np

    from flowscope.model import FlowBatch

    keys = np.frombuffer(raw, dtype=abi.KEY6_DTYPE).copy()
    values = np.zeros((1, 2), abi.VALUE_DTYPE)
    values[0, 1] = (3, 300, 240, 5, 9, 0x18)
    batch = FlowBatch.from_percpu(abi.AF_INET6, keys, values)
    assert batch.key(0) == FlowKey(6, "2001:db8::1", "2001:db8::2", 54321, 443, 6, 0, 3, 1)
    s = batch.stats(0)
    assert (s.packets, s.bytes, s.ip_bytes, s.first_seen, s.last_seen, s.tcp_flags) == (
        3,
        300,
        240,
        5,
        9,
        0x18,
    )


def test_hand_annotated_replay_meta_decodes() -> None:
    raw = bytes.fromhex(
        "00ca9a3b00000000"  # timestamp 1_000_000_000 ns, little endian
        "dc050000"  # wire_len 1500
        "02000000"  # ifindex 2 (the capture's second interface)
    )
    meta = abi.ReplayMeta.from_buffer_copy(raw)
    assert (meta.timestamp, meta.wire_len, meta.ifindex) == (1_000_000_000, 1500, 2)
    assert struct.pack(abi.REPLAY_META_FORMAT, 1_000_000_000, 1500, 2) == raw
    assert abi.REPLAY_META_SIZE % 4 == 0 and abi.REPLAY_META_SIZE <= 32  # the kernel's rule


@pytest.mark.parametrize("dtype", [abi.KEY4_DTYPE, abi.KEY6_DTYPE], ids=["key4", "key6"])
def test_a_selection_of_keys_keeps_every_byte(dtype: object) -> None:
    """take_flows sends selected keys back to the kernel, which compares every byte of them:
    a copy or a fancy-indexed selection must keep the padding bytes too."""
    import numpy as np

    keys = np.frombuffer(bytes(range(2 * dtype.itemsize)), dtype=dtype)  # type: ignore[attr-defined]
    assert keys[[1, 0]].tobytes() == keys[1:].tobytes() + keys[:1].tobytes()
    assert keys.copy().tobytes() == keys.tobytes()
