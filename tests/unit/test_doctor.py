"""doctor's decisions and lines, without a kernel: versions, JIT, headers, native XDP from
driver names and kernel feature bits, what auto mode picks and why, queues, VLAN offload."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flowscope import doctor
from flowscope.cli import main
from flowscope.demo.net import names, owner_of
from flowscope.doctor import Check, Status
from flowscope.kernel.checks import InterfaceFacts


def facts(**kw: object) -> InterfaceFacts:
    base: dict[str, object] = dict(
        name="eth0",
        kind=None,
        driver="ixgbe",
        virtual=False,
        xdp_features=None,
        rx_queues=8,
        combined_queues=8,
        max_combined=16,
        vlan_offload=False,
        xdp_prog_id=0,
    )
    base.update(kw)
    return InterfaceFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("release", "status"),
    [
        ("6.18.44-fc-v669", Status.OK),
        ("5.9.0", Status.OK),
        ("5.8.18-arch1", Status.FAIL),
        ("4.19.0-25-amd64", Status.FAIL),
        ("weird", Status.WARN),
    ],
)
def test_kernel_version(release: str, status: Status) -> None:
    check = doctor.kernel_check(release)
    assert check.status is status
    if status is Status.FAIL:
        assert "5.9" in check.line()
        assert "fix:" in check.line()


def test_jit() -> None:
    assert doctor.jit_check("1\n").status is Status.OK
    off = doctor.jit_check("0\n")
    assert off.status is Status.WARN
    assert "sysctl -w net.core.bpf_jit_enable=1" in off.line()


def test_headers_linked_debian(tmp_path: Path) -> None:
    release = "6.18.44-fc-v669"
    target = tmp_path / "usr/src/linux-headers-6.1.0-56-amd64"
    (target / "include").mkdir(parents=True)
    (tmp_path / "lib" / release).mkdir(parents=True)
    (tmp_path / "lib" / release / "build").symlink_to(target)
    check = doctor.headers_check(release, tmp_path / "lib", tmp_path / "sys")
    assert check.status is Status.OK
    assert "Debian's linux-headers-6.1.0-56-amd64, linked in by make setup" in check.detail


def test_headers_own_and_missing(tmp_path: Path) -> None:
    release = "6.1.0-56-amd64"
    build = tmp_path / "lib" / release / "build"
    missing = doctor.headers_check(release, tmp_path / "lib", tmp_path / "sys")
    assert missing.status is Status.FAIL
    assert "make setup" in (missing.fix or "")
    (tmp_path / "sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/kernel/kheaders.tar.xz").touch()
    builtin = doctor.headers_check(release, tmp_path / "lib", tmp_path / "sys")
    assert builtin.status is Status.OK and "kheaders" in builtin.detail
    (build / "include").mkdir(parents=True)
    own = doctor.headers_check(release, tmp_path / "lib", tmp_path / "sys")
    assert own.status is Status.OK and "the kernel's own" in own.detail


def test_capabilities_and_sqlite() -> None:
    assert doctor.capabilities_check([]).status is Status.OK
    missing = doctor.capabilities_check(["CAP_BPF"])
    assert missing.status is Status.FAIL and "CAP_BPF" in missing.line()
    assert doctor.sqlite_check("3.40.1").status is Status.OK
    assert doctor.sqlite_check("3.22.0").status is Status.FAIL


@pytest.mark.parametrize(
    ("driver", "native"),
    [
        ("ixgbe", True),
        ("mlx5_core", True),
        ("virtio_net", True),
        ("ena", True),
        ("e1000", False),
        ("r8169", False),
        (None, False),
    ],
)
def test_native_xdp_from_driver_names(driver: str | None, native: bool) -> None:
    assert doctor.driver_has_native_xdp(driver) is native
    has, how = doctor.native_xdp(facts(driver=driver))
    assert has is native
    assert "list" in how or "known" in how


def test_native_xdp_from_kernel_features_wins_over_the_list() -> None:
    # e1000 is not on the list, but the kernel's word counts
    has, how = doctor.native_xdp(facts(driver="e1000", xdp_features=1 | 2))
    assert has and "basic,redirect" in how
    has, how = doctor.native_xdp(facts(driver="ixgbe", xdp_features=0))
    assert not has and "none" in how


def test_auto_mode_picks_generic_on_veth_and_says_why() -> None:
    mode, why = doctor.auto_mode(facts(name="v0", kind="veth", driver=None, virtual=True))
    assert mode == "generic"
    assert "NAPI" in why
    assert doctor.auto_mode(facts())[0] == "native"
    assert doctor.auto_mode(facts(driver="e1000"))[0] == "generic"
    assert doctor.auto_mode(facts(kind="bridge", driver=None, virtual=True))[0] == "generic"


def test_queues_and_rss() -> None:
    assert "RSS spreads flows over 8" in doctor.queues_check(facts()).detail
    one = doctor.queues_check(facts(combined_queues=1, max_combined=4, rx_queues=1))
    assert "no RSS" in one.detail and "ethtool -L eth0 combined 4" in one.detail
    sysfs = doctor.queues_check(facts(combined_queues=None, max_combined=None, rx_queues=2))
    assert "2 rx" in sysfs.detail


def test_vlan_offload_hides_tags() -> None:
    on = doctor.vlan_check(facts(vlan_offload=True))
    assert on.status is Status.WARN
    assert "ethtool -K eth0 rxvlan off" in on.line()
    assert doctor.vlan_check(facts(vlan_offload=False)).status is Status.OK


def test_interface_lines_and_foreign_program() -> None:
    lines = doctor.interface_checks(facts(xdp_prog_id=42))
    text = "\n".join(c.line() for c in lines)
    assert "eth0: driver" in text and "ixgbe" in text
    assert "eth0: native XDP" in text and "auto picks native" in text
    assert "id 42" in text and "--force" in text
    assert doctor.passed(lines)  # a warning is not a failure


def test_line_format_and_passed() -> None:
    good = Check("BTF", Status.OK, "/sys/kernel/btf/vmlinux", "never shown")
    bad = Check("bcc", Status.FAIL, "bcc does not import", "make setup")
    assert good.line().split() == ["ok", "BTF", "/sys/kernel/btf/vmlinux"]
    assert bad.line().startswith("FAIL  bcc ")
    assert bad.line().endswith("; fix: make setup")
    assert doctor.passed([good]) and not doctor.passed([good, bad])


def test_cli_exit_status(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(interfaces: tuple[str, ...], emit: object) -> bool:
        check = Check("x", Status.FAIL if interfaces else Status.OK, "detail")
        emit(check)  # type: ignore[operator]
        return check.status is Status.OK

    monkeypatch.setattr(doctor, "run", fake_run)
    runner = CliRunner()
    assert runner.invoke(main, ["doctor"]).exit_code == 0
    result = runner.invoke(main, ["doctor", "-i", "nope0"])
    assert result.exit_code == 1
    assert result.output.startswith("FAIL  x")


def test_demo_names_fit_and_map_back() -> None:
    ns, host, peer = names(4194304)
    assert max(len(ns), len(host), len(peer)) <= 15
    assert owner_of(ns) == owner_of(host) == owner_of(peer) == 4194304
    assert owner_of("fsns123") is None and owner_of("fsdemox") is None


def test_processes_need_a_cgroup_v2_hierarchy() -> None:
    from pathlib import Path

    from flowscope.doctor import Status, processes_check

    assert processes_check(Path("/sys/fs/cgroup")).status is Status.OK
    missing = processes_check(None)
    assert missing.status is Status.WARN and "no process" in missing.detail
    assert missing.fix and "cgroup2" in missing.fix
