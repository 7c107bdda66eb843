"""The block rules in the kernel: the LPM tries and the rule counts of bpf/flowscope.c built
with -DFS_BLOCK (`--allow-block`). Implements collect.block.RuleMaps: a rule becomes one key in
the source trie (a prefix) or the target trie (a target, from a prefix or anywhere; a target
from anywhere goes in both families' tries); the counts and bits tell the program which tries
to look in, and the generation, written last, which flows' remembered verdicts are out of
date."""

from __future__ import annotations

import collections
import ctypes
import ipaddress
from typing import Any

import numpy as np

from flowscope import abi
from flowscope.errors import UsageError
from flowscope.kernel import libbpf
from flowscope.kernel.program import FlowProgram
from flowscope.model import BlockRule as Rule

BLOCK_CFLAGS = ("-DFS_BLOCK",)
"""The build with the drop path (without it the program has none)."""


class BlockMaps:
    """The rule maps of a FlowProgram built with BLOCK_CFLAGS."""

    def __init__(self, program: FlowProgram) -> None:
        bpf: Any = program.module
        try:
            self._fds = {
                name: int(bpf[name.encode()].map_fd)
                for name in ("block_src4", "block_src6", "block_target4", "block_target6")
            }
            self._rules_fd = int(bpf[b"block_rules"].map_fd)
            self._gen_fd = int(bpf[b"block_gen"].map_fd)
        except KeyError as e:
            raise UsageError(
                "this program was built without the drop path", "start it with --allow-block"
            ) from e
        self.counts = abi.BlockRules()
        self._rules: set[Rule] = set()
        # per trie, the keys of the rules in force; per bit of the three bitmaps, how many of
        # those rules set it: what the program is told is worked out of these on each change,
        # O(1) in the number of rules (the model of both is bitmaps(), which the tests use)
        self._held: collections.Counter[str] = collections.Counter()
        self._refs = np.zeros((len(BITMAP_FIELDS), BITS), np.int32)

    def _keys(self, rule: Rule) -> list[tuple[str, ctypes.Structure]]:
        """The (trie, key) pairs that stand for a rule."""
        net = rule.net
        if rule.proto is None:
            assert net is not None, "a rule without a target has a source"
            if net.version == 4:
                return [("block_src4", abi.BlockSrc4(net.prefixlen, (ctypes.c_uint8 * 4)(
                    *net.network_address.packed)))]  # fmt: skip
            return [("block_src6", abi.BlockSrc6(net.prefixlen, (ctypes.c_uint8 * 16)(
                *net.network_address.packed)))]  # fmt: skip
        port = (ctypes.c_uint8 * 2)(*int(rule.dport or 0).to_bytes(2, "big"))
        nets = [net] if net is not None else [
            ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")
        ]  # fmt: skip
        out: list[tuple[str, ctypes.Structure]] = []
        for n in nets:
            bits = abi.BLOCK_TARGET_BITS + n.prefixlen
            if n.version == 4:
                addr4 = (ctypes.c_uint8 * 4)(*n.network_address.packed)
                out.append(("block_target4", abi.BlockTarget4(bits, rule.proto, port, addr4)))
            else:
                addr6 = (ctypes.c_uint8 * 16)(*n.network_address.packed)
                out.append(("block_target6", abi.BlockTarget6(bits, rule.proto, port, addr6)))
        return out

    def put(self, rule: Rule) -> None:
        """Put a rule in force (its count of dropped packets from zero): in its trie first,
        then in the counts and bits that send packets there."""
        keys = self._keys(rule)
        for trie, key in keys:
            libbpf.map_update(self._fds[trie], ctypes.byref(key), ctypes.byref(abi.BlockValue()))
        if rule not in self._rules:
            self._rules.add(rule)
            self._count(rule, keys, 1)
        self._store()

    def delete(self, rule: Rule) -> None:
        """Take a rule out of force."""
        keys = self._keys(rule)
        for trie, key in keys:
            libbpf.map_delete(self._fds[trie], ctypes.byref(key))
        if rule in self._rules:
            self._rules.discard(rule)
            self._count(rule, keys, -1)
        self._store()

    def _count(self, rule: Rule, keys: list[tuple[str, ctypes.Structure]], step: int) -> None:
        """A rule's keys and bits in (step 1) or out (-1) of the rules in force."""
        self._held.update({trie: step for trie, _ in keys})
        which, start, stop = bit_range(rule)
        self._refs[which, start:stop] += step

    def matched(self, rule: Rule) -> int:
        """Packets the rule dropped so far."""
        total = 0
        for trie, key in self._keys(rule):
            value = abi.BlockValue()
            if libbpf.map_lookup(self._fds[trie], ctypes.byref(key), ctypes.byref(value)):
                total += int(value.matched)
        return total

    def _store(self) -> None:
        """The counts and the bits of the rules in force, into the program's block_rules."""
        for trie in self._fds:
            setattr(self.counts, trie.removeprefix("block_"), self._held[trie])
        for field, refs in zip(BITMAP_FIELDS, self._refs, strict=True):
            words = _pack(refs > 0)
            ctypes.memmove(getattr(self.counts, field), words.ctypes.data, words.nbytes)
        zero = ctypes.c_uint32(0)
        libbpf.map_update(self._rules_fd, ctypes.byref(zero), ctypes.byref(self.counts))
        self._next_generation()

    def _next_generation(self) -> None:
        """Tell the program the rules changed, after the change: a flow that passed under an
        older generation is checked again (bpf/flowscope.h, block_gen). The next generation
        follows the program's current one, not a count of this object's own, since another
        BlockMaps may have changed the rules of the same program before."""
        zero = ctypes.c_uint32(0)
        gen = ctypes.c_uint32(0)
        libbpf.map_lookup(self._gen_fd, ctypes.byref(zero), ctypes.byref(gen))
        # 2**32 changes of the rules would wrap it: more than a session makes
        gen.value = (gen.value + 1) & 0xFFFFFFFF or 1
        libbpf.map_update(self._gen_fd, ctypes.byref(zero), ctypes.byref(gen))


BITS = 1 << 16
"""Bits of each of block_rules' bitmaps."""


BITMAP_FIELDS = ("src4_bits", "src6_bits", "target_bits")
"""struct block_rules' bitmaps, in the order of bit_range's first number."""


def bit_range(rule: Rule) -> tuple[int, int, int]:
    """The bits a rule sets in struct block_rules, as (bitmap: an index of BITMAP_FIELDS,
    first bit, bit after the last): the IPv4 sources' /16s (address bits 0-15), the IPv6
    sources' bits 16-31, or the target's port. A bit is set wherever a packet could match the
    rule (a superset: the trie decides)."""
    if rule.proto is not None:
        port = int(rule.dport or 0)
        return 2, port, port + 1
    net = rule.net
    assert net is not None, "a rule without a target has a source"
    value = int.from_bytes(net.network_address.packed[:4], "big")
    if net.version == 4:
        which, index, free = 0, value >> 16, max(16 - net.prefixlen, 0)
    else:
        which, index, free = 1, value & 0xFFFF, min(max(32 - net.prefixlen, 0), 16)
    start = (index >> free) << free
    return which, start, start + (1 << free)


def _pack(bits: np.ndarray) -> np.ndarray:
    """A bool array of BITS as the u64 words of a bitmap (bit i: word i/64, bit i%64)."""
    return np.packbits(bits, bitorder="little").view("<u8")


def bitmaps(rules: set[Rule] | list[Rule]) -> tuple[np.ndarray, ...]:
    """The bitmaps of struct block_rules for these rules, as u64 words, in the order of
    BITMAP_FIELDS, all at once (BlockMaps keeps them rule by rule)."""
    bits = np.zeros((len(BITMAP_FIELDS), BITS), bool)
    for rule in rules:
        which, start, stop = bit_range(rule)
        bits[which, start:stop] = True
    return tuple(_pack(b) for b in bits)
