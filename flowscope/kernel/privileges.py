"""Check, before touching the kernel, that this process may load and attach BPF programs.

A bpf() call that fails for lack of privilege says only "Operation not permitted"; checking the
effective capabilities first lets flowscope name exactly which ones are missing.
"""

from __future__ import annotations

from flowscope.errors import PrivilegeError

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

_NEEDED = {"CAP_BPF": CAP_BPF, "CAP_NET_ADMIN": CAP_NET_ADMIN, "CAP_PERFMON": CAP_PERFMON}


def effective_capabilities() -> int:
    """The CapEff bit mask of this process."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_capabilities(caps: int | None = None) -> list[str]:
    """Names of the capabilities flowscope needs that this process lacks. CAP_SYS_ADMIN stands
    in for CAP_BPF and CAP_PERFMON, as it does on kernels before 5.8."""
    caps = effective_capabilities() if caps is None else caps
    missing = []
    for name, bit in _NEEDED.items():
        has = bool(caps & (1 << bit))
        if not has and name != "CAP_NET_ADMIN" and caps & (1 << CAP_SYS_ADMIN):
            has = True
        if not has:
            missing.append(name)
    return missing


def require_bpf_privileges() -> None:
    """Raise PrivilegeError naming the missing capabilities."""
    missing = missing_capabilities()
    if missing:
        raise PrivilegeError(
            f"flowscope needs {', '.join(missing)} to load its XDP program",
            "run it as root, or give the process those capabilities, e.g. systemd's "
            "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
        )
