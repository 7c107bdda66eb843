"""The few libbpf calls bcc 0.26 does not wrap, through ctypes on Debian's libbpf.so.1.

bpf_link_create gives an XDP (or tcx egress) attachment the kernel removes when the process dies
(bcc's attach_xdp uses netlink, which outlives it); bpf_prog_query_opts lists what runs on a tcx
hook; bpf_prog_test_run_opts runs the program on crafted
frames; bpf_map_lookup_batch and bpf_map_lookup_and_delete_elem read and expire flows into
buffers we own and reuse. Every failure becomes a FlowscopeError here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass
from typing import Any

from flowscope.errors import BpfError, FlowscopeError, PrivilegeError, UnsupportedKernelError

BPF_XDP = 37
BPF_TCX_EGRESS = 47
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2


class _LinkCreateOpts(ctypes.Structure):
    # struct bpf_link_create_opts, only its leading fields: libbpf accepts a shorter sz.
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class _QueryOpts(ctypes.Structure):
    # struct bpf_prog_query_opts (libbpf >= 1.0; link_ids and revision since 1.3)
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_void_p),
        ("count", ctypes.c_uint32),
        ("prog_attach_flags", ctypes.c_void_p),
        ("link_ids", ctypes.c_void_p),
        ("link_attach_flags", ctypes.c_void_p),
        ("revision", ctypes.c_uint64),
    ]


class _ProgInfo(ctypes.Structure):
    # the leading fields of struct bpf_prog_info, up to run_cnt; the kernel takes a shorter
    # info_len and fills what fits
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
    ]


assert _ProgInfo.run_cnt.offset == 200  # as in uapi/linux/bpf.h


class _TestRunOpts(ctypes.Structure):
    # struct bpf_test_run_opts (libbpf >= 0.7)
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class _BatchOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class XdpMd(ctypes.Structure):
    """struct xdp_md, the context BPF_PROG_TEST_RUN takes for XDP."""

    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


_lib: ctypes.CDLL | None = None


def _libbpf() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            raise UnsupportedKernelError(
                "libbpf is not installed", "install Debian's libbpf1 (make setup does)"
            ) from e
        lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.bpf_map_lookup_batch.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 6
        lib.bpf_map_lookup_and_delete_batch.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 6
        lib.bpf_map_lookup_and_delete_elem.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.bpf_map_update_batch.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 4
        lib.bpf_map_update_elem.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_uint64,
        ]
        lib.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        lib.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
        lib.bpf_prog_query_opts.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        lib.bpf_enable_stats.argtypes = [ctypes.c_int]
        _lib = lib
    return _lib


def _errno(ret: int) -> int:
    return -ret if ret < 0 else ctypes.get_errno()


def _raise(what: str, err: int) -> FlowscopeError:
    if err in (errno.EPERM, errno.EACCES):
        return PrivilegeError(
            f"{what}: {os.strerror(err)}",
            "run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON",
            err,
        )
    return BpfError(f"{what}: {os.strerror(err)}", errno=err)


def num_possible_cpus() -> int:
    """How many per-CPU slots each per-CPU map value has."""
    n = int(_libbpf().libbpf_num_possible_cpus())
    if n <= 0:
        raise BpfError(f"cannot count possible CPUs: {os.strerror(-n)}")
    return n


def link_create(prog_fd: int, target: int, attach_type: int, flags: int = 0) -> int:
    """bpf_link_create: returns the link's fd; closing it (or dying) detaches the program.
    A failure raises a FlowscopeError whose ``errno`` the caller can turn into a better one."""
    opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts), flags=flags)
    fd = int(_libbpf().bpf_link_create(prog_fd, target, attach_type, ctypes.byref(opts)))
    if fd < 0:
        raise _raise("bpf_link_create", _errno(fd))
    return fd


def prog_query(target: int, attach_type: int, capacity: int = 64) -> list[int]:
    """The ids of the programs attached to ``target`` (an ifindex) at ``attach_type`` (for
    example BPF_TCX_EGRESS), in the order they run."""
    ids = (ctypes.c_uint32 * capacity)()
    opts = _QueryOpts(sz=ctypes.sizeof(_QueryOpts), count=capacity)
    opts.prog_ids = ctypes.cast(ids, ctypes.c_void_p)
    ret = int(_libbpf().bpf_prog_query_opts(target, attach_type, ctypes.byref(opts)))
    if ret < 0:
        raise _raise("BPF_PROG_QUERY", _errno(ret))
    return list(ids[: opts.count])


def prog_name(prog_id: int) -> str | None:
    """The name a loaded program has (at most 15 characters), None when it is gone."""
    fd = int(_libbpf().bpf_prog_get_fd_by_id(prog_id))
    if fd < 0:
        err = _errno(fd)
        if err == errno.ENOENT:
            return None
        raise _raise("BPF_PROG_GET_FD_BY_ID", err)
    try:
        return bytes(_prog_info(fd).name).decode(errors="replace")
    finally:
        os.close(fd)


class _XdpQueryOpts(ctypes.Structure):
    """struct bpf_xdp_query_opts (libbpf 1.x)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_id", ctypes.c_uint32),
        ("drv_prog_id", ctypes.c_uint32),
        ("hw_prog_id", ctypes.c_uint32),
        ("skb_prog_id", ctypes.c_uint32),
        ("attach_mode", ctypes.c_uint8),
        ("feature_flags", ctypes.c_uint64),
        ("xdp_zc_max_segs", ctypes.c_uint32),
    ]


def xdp_query(ifindex: int) -> tuple[int, int]:
    """(XDP program id, attach mode: XDP_ATTACHED_NONE 0, DRV 1, SKB 2, HW 3, MULTI 4) of an
    interface, by libbpf's bpf_xdp_query (one netlink request, nothing to import)."""
    opts = _XdpQueryOpts(sz=ctypes.sizeof(_XdpQueryOpts))
    ret = int(_libbpf().bpf_xdp_query(ifindex, 0, ctypes.byref(opts)))
    if ret < 0:
        raise _raise("bpf_xdp_query", _errno(ret))
    prog_id = opts.prog_id or opts.drv_prog_id or opts.skb_prog_id or opts.hw_prog_id
    return int(prog_id), int(opts.attach_mode)


def _prog_info(fd: int) -> _ProgInfo:
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    ret = int(_libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)))
    if ret < 0:
        raise _raise("BPF_OBJ_GET_INFO_BY_FD", _errno(ret))
    return info


def enable_run_stats() -> int:
    """An fd that keeps the kernel timing every BPF program run (BPF_ENABLE_STATS) until it
    is closed: the sysctl kernel.bpf_stats_enabled is left as it was."""
    fd = int(_libbpf().bpf_enable_stats(0))  # BPF_STATS_RUN_TIME
    if fd < 0:
        raise _raise("BPF_ENABLE_STATS", _errno(fd))
    return fd


def prog_run_stats(prog_fd: int) -> tuple[int, int]:
    """(nanoseconds, runs) the kernel timed a program for while run stats were enabled."""
    info = _prog_info(prog_fd)
    return int(info.run_time_ns), int(info.run_cnt)


def prog_misses(prog_fd: int) -> int:
    """How often the kernel did not run a tracing program because it was already running on
    that CPU (bpf_prog_info.recursion_misses: a hook that fires again from an interrupt while
    its program runs is skipped, not queued)."""
    return int(_prog_info(prog_fd).recursion_misses)


@dataclass(frozen=True, slots=True)
class TestRunResult:
    """What BPF_PROG_TEST_RUN returned: the verdict, the kernel's mean ns per run, the frame."""

    retval: int
    duration_ns: int
    data_out: bytes


def prog_test_run(
    prog_fd: int,
    frame: bytes,
    *,
    repeat: int = 1,
    ctx: XdpMd | None = None,
) -> TestRunResult:
    """Run an XDP program on one frame through BPF_PROG_TEST_RUN (no interface involved)."""
    data_in = ctypes.create_string_buffer(bytes(frame), len(frame))
    out_size = len(frame) + 512
    data_out = ctypes.create_string_buffer(out_size)
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.cast(data_in, ctypes.c_void_p),
        data_out=ctypes.cast(data_out, ctypes.c_void_p),
        data_size_in=len(frame),
        data_size_out=out_size,
        repeat=repeat,
    )
    if ctx is not None:
        opts.ctx_in = ctypes.cast(ctypes.pointer(ctx), ctypes.c_void_p)
        opts.ctx_size_in = ctypes.sizeof(ctx)
    ret = int(_libbpf().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)))
    if ret < 0:
        raise _raise("BPF_PROG_TEST_RUN", _errno(ret))
    return TestRunResult(opts.retval, opts.duration, data_out.raw[: opts.data_size_out])


def map_lookup_batch(
    map_fd: int,
    keys: Any,
    values: Any,
    capacity: int,
    token: Any,
    first: bool,
    delete: bool = False,
) -> tuple[int, bool]:
    """One BPF_MAP_LOOKUP_BATCH call into caller-owned buffers (BPF_MAP_LOOKUP_AND_DELETE_BATCH
    with ``delete``: each entry is removed as it is copied, under its bucket's lock).

    Returns (entries read, done). ``token`` is a 4-byte buffer the kernel uses to resume."""
    count = ctypes.c_uint32(capacity)
    opts = _BatchOpts(sz=ctypes.sizeof(_BatchOpts))
    lib = _libbpf()
    fn = lib.bpf_map_lookup_and_delete_batch if delete else lib.bpf_map_lookup_batch
    ret = int(
        fn(
            map_fd,
            None if first else ctypes.byref(token),
            ctypes.byref(token),
            keys,
            values,
            ctypes.byref(count),
            ctypes.byref(opts),
        )
    )
    if ret < 0:
        err = _errno(ret)
        if err == errno.ENOENT:
            return count.value, True
        raise _raise("BPF_MAP_LOOKUP_AND_DELETE_BATCH" if delete else "BPF_MAP_LOOKUP_BATCH", err)
    return count.value, False


def map_lookup_all(
    map_fd: int,
    keys: Any,
    values: Any,
    per_key: int,
    token: Any,
    chunk: int = 16384,
    *,
    delete: bool = False,
) -> int:
    """Every entry of a hash map into caller-owned numpy buffers (``keys``, and ``values``
    with ``per_key`` values for each key: the possible CPUs of a per-CPU map, else 1), by
    BPF_MAP_LOOKUP_BATCH calls of at most ``chunk`` entries; how many entries were read. A
    hash batch returns whole buckets: each call asks for what is left of the buffers."""
    cap = len(keys)
    n = 0
    first = True
    while n < cap:
        got, done = map_lookup_batch(
            map_fd,
            keys[n:].ctypes.data,
            values[n * per_key :].ctypes.data,
            min(chunk, cap - n),
            token,
            first,
            delete,
        )
        first = False
        n += got
        if done:
            break
    return n


def percpu_sums(map_fd: int, keys: Any, values: Any, ncpus: int) -> tuple[int, Any]:
    """Every entry of a per-CPU hash map with one u64 per CPU into ``keys`` and ``values``
    (numpy buffers): how many, and each one's values summed over the ``ncpus`` CPUs."""
    token = ctypes.create_string_buffer(8)
    n = map_lookup_all(map_fd, keys, values, ncpus, token)
    return n, values[: n * ncpus].reshape(n, ncpus).sum(axis=1)


def map_lookup_and_delete_many(
    map_fd: int, keys: int, key_size: int, values: int, value_size: int, count: int
) -> list[bool]:
    """lookup-and-delete for ``count`` keys laid out back to back at address ``keys``; the
    values go to ``values`` (``value_size`` bytes each). One syscall per key, as the kernel has
    no batch form that takes chosen keys, but no Python object per key beyond the result."""
    fn = _libbpf().bpf_map_lookup_and_delete_elem
    found = []
    for i in range(count):
        ret = int(fn(map_fd, keys + i * key_size, values + i * value_size))
        if ret < 0:
            err = _errno(ret)
            if err != errno.ENOENT:
                raise _raise("BPF_MAP_LOOKUP_AND_DELETE_ELEM", err)
            found.append(False)
        else:
            found.append(True)
    return found


def map_lookup(map_fd: int, key: Any, value: Any) -> bool:
    """bpf_map_lookup_elem into a caller-owned buffer; False when there is no such key."""
    ret = int(_libbpf().bpf_map_lookup_elem(map_fd, key, value))
    if ret < 0:
        err = _errno(ret)
        if err == errno.ENOENT:
            return False
        raise _raise("BPF_MAP_LOOKUP_ELEM", err)
    return True


def map_update(map_fd: int, key: Any, value: Any, flags: int = 0) -> None:
    """bpf_map_update_elem, for tests and benchmarks that pre-fill a map."""
    ret = int(_libbpf().bpf_map_update_elem(map_fd, key, value, flags))
    if ret < 0:
        raise _raise("BPF_MAP_UPDATE_ELEM", _errno(ret))


def map_update_batch(map_fd: int, keys: int, values: int, count: int) -> None:
    """BPF_MAP_UPDATE_BATCH of ``count`` keys and values laid out back to back at the two
    addresses, for benchmarks that fill or bump a large map (a million entries in a second,
    where one update call each takes several)."""
    n = ctypes.c_uint32(count)
    opts = _BatchOpts(sz=ctypes.sizeof(_BatchOpts))
    ret = int(
        _libbpf().bpf_map_update_batch(map_fd, keys, values, ctypes.byref(n), ctypes.byref(opts))
    )
    if ret < 0:
        raise _raise("BPF_MAP_UPDATE_BATCH", _errno(ret))


def map_delete(map_fd: int, key: Any) -> bool:
    """bpf_map_delete_elem; False when there was no such key."""
    ret = int(_libbpf().bpf_map_delete_elem(map_fd, key))
    if ret < 0:
        err = _errno(ret)
        if err == errno.ENOENT:
            return False
        raise _raise("BPF_MAP_DELETE_ELEM", err)
    return True
