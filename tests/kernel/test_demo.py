"""`flowscope demo` and `flowscope doctor` as an operator runs them: real namespaces, real
traffic, real XDP, and nothing left behind however the demo ends."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.netns import PYTHON

FLOWSCOPE = [PYTHON, "-m", "flowscope"]


def netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def links() -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-d", "-j", "link"], capture_output=True, text=True).stdout
    return list(json.loads(out))


def traffic_pids(owner: int) -> list[int]:
    """Processes of the demo's listeners and generator that belong to demo ``owner``."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"flowscope.demo.traffic" in args and str(owner).encode() in args:
            found.append(int(d.name))
    return found


def assert_cleaned(owner: int) -> None:
    """No namespace, veth, XDP program, process or state file of demo ``owner`` is left."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and traffic_pids(owner):
        time.sleep(0.1)
    ns = f"fsdemo{owner}"
    assert ns not in netns_names()
    names = [str(link["ifname"]) for link in links()]
    assert not [n for n in names if n.startswith(ns)], names
    assert traffic_pids(owner) == []
    assert not Path(f"/run/flowscope-demo/{owner}.json").exists()
    for link in links():
        if str(link["ifname"]).startswith("fsdemo"):
            assert not link.get("xdp"), link


def start_demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*FLOWSCOPE, "demo", "--headless", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_running(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Until the demo's XDP program is on its host end and both traffic processes run."""
    host = f"fsdemo{proc.pid}h"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"demo exited early: {proc.communicate()}")
        attached = any(link["ifname"] == host and link.get("xdp") for link in links())
        if attached and len(traffic_pids(proc.pid)) == 2:
            return
        time.sleep(0.1)
    raise AssertionError("the demo did not start in time")


def test_headless_demo_records_every_kind_and_leaves_nothing(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    proc = subprocess.run(
        [*FLOWSCOPE, "demo", "--headless", "--duration", "10", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT family, proto, vlan, sum(packets), sum(bytes), count(*) FROM flows "
        "GROUP BY family, proto, vlan"
    ).fetchall()
    kinds = {(f, p, v): (pk, by, n) for f, p, v, pk, by, n in rows}
    wanted = {
        "TCP over IPv4": (4, 6, 0),
        "TCP over IPv6": (6, 6, 0),
        "UDP over IPv4": (4, 17, 0),
        "UDP over IPv6": (6, 17, 0),
        "ICMP": (4, 1, 0),
        "ICMPv6": (6, 58, 0),
        "VLAN 100": (4, 17, 100),
        "VLAN 200": (4, 17, 200),
    }
    for what, key in wanted.items():
        assert key in kinds, f"no {what} flow in {sorted(kinds)}"
        packets, nbytes, _ = kinds[key]
        assert packets > 0 and nbytes > 0, what
    # the fast transfer alone sends 2 MB/s; short connections make many flows
    assert kinds[(4, 6, 0)][1] > 5_000_000
    assert kinds[(4, 6, 0)][2] >= 20
    assert conn.execute("SELECT count(*) FROM samples").fetchone()[0] >= 8
    conn.close()
    assert_cleaned(proc_pid_from(proc.stderr))


def proc_pid_from(stderr: str) -> int:
    """The demo's pid, from its '<-> namespace fsdemo<pid>' line."""
    m = re.search(r"namespace fsdemo(\d+)", stderr)
    assert m, f"no namespace named in {stderr!r}"
    return int(m.group(1))


def test_demo_killed_by_sigkill_is_cleaned_by_the_next(tmp_path: Path) -> None:
    first = start_demo("--db", str(tmp_path / "a.db"))
    try:
        wait_running(first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # the children die with the demo; its namespace and veth pair stay for the next run
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and traffic_pids(first.pid):
        time.sleep(0.1)
    assert traffic_pids(first.pid) == []
    assert f"fsdemo{first.pid}" in netns_names()
    host = f"fsdemo{first.pid}h"
    leftover = [link for link in links() if link["ifname"] == host]
    assert leftover and not leftover[0].get("xdp"), "the kernel removes the bpf_link's program"

    second = subprocess.run(
        [*FLOWSCOPE, "demo", "--headless", "--duration", "3", "--db", str(tmp_path / "b.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stderr
    assert "removed what an earlier demo left behind" in second.stderr
    assert f"fsdemo{first.pid}" in second.stderr
    assert_cleaned(first.pid)
    assert_cleaned(proc_pid_from(second.stderr))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_demo_stopped_by_signal_cleans_up(tmp_path: Path, sig: signal.Signals) -> None:
    proc = start_demo("--db", str(tmp_path / "demo.db"))
    wait_running(proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "removed" in err
    assert_cleaned(proc.pid)


def test_generator_crash_stops_the_demo_and_cleans_up(tmp_path: Path) -> None:
    proc = start_demo("--db", str(tmp_path / "demo.db"))
    wait_running(proc)
    for pid in traffic_pids(proc.pid):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"generate" in args:
            os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "traffic generator exited" in err
    assert "Traceback" not in err
    assert_cleaned(proc.pid)


def test_doctor_passes_here() -> None:
    proc = subprocess.run([*FLOWSCOPE, "doctor"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for name in (
        "kernel version",
        "bpf syscall",
        "BPF JIT",
        "BTF",
        "BPF ring buffer",
        "bpf_link for XDP",
        "capabilities",
        "bcc",
        "kernel headers",
        "attach (throwaway veth)",
        "SQLite",
    ):
        assert any(line.split("  ", 1)[-1].lstrip().startswith(name) for line in lines), name
    assert all(line.split()[0] in ("ok", "warn") for line in lines), proc.stdout
    # every interface that is up, except lo, has its lines
    up = [
        str(link["ifname"])
        for link in links()
        if "UP" in link.get("flags", []) and not str(link["ifname"]).startswith(("lo", "fs"))  # type: ignore[operator]
    ]
    for name in up[:1]:
        assert f"{name}: driver" in proc.stdout
        assert f"{name}: native XDP" in proc.stdout
        assert f"{name}: queues" in proc.stdout
        assert f"{name}: VLAN tags" in proc.stdout
    assert " lo:" not in proc.stdout
    # the throwaway pair is gone
    assert not [link for link in links() if str(link["ifname"]).startswith("fsdoc")]


def test_doctor_fails_on_a_missing_interface() -> None:
    proc = subprocess.run(
        [*FLOWSCOPE, "doctor", "-i", "fsnosuch0"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "FAIL  fsnosuch0" in proc.stdout
    assert "no interface named 'fsnosuch0'" in proc.stdout
    assert "Traceback" not in proc.stderr


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (make setup)")
def test_interactive_demo_shows_flows_and_q_cleans_up(tmp_path: Path) -> None:
    session = f"fsdemotest{uuid.uuid4().hex[:8]}"
    cmd = f"{PYTHON} -m flowscope demo --db {tmp_path / 'demo.db'}"
    started = time.monotonic()
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "32", cmd)
    try:
        screen = ""
        owner = None
        while time.monotonic() - started < 10:
            screen = tmux("capture-pane", "-p", "-t", session)
            m = re.search(r"fsdemo(\d+)h \(generic, egress\)", screen)
            rows = [line for line in screen.splitlines() if re.search(r"198\.19\.\d+\.2 ", line)]
            # a transfer with a rate: bit/s is the first number after the protocol
            if m and any(re.search(r"tcp\s+[1-9][\d.]*[kMG]?\s", row) for row in rows):
                owner = int(m.group(1))
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"no flows on screen within 10 s:\n{screen}")
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sessions = subprocess.run(["tmux", "ls"], capture_output=True, text=True).stdout
            if session not in sessions:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("flowscope demo did not exit on q")
        assert_cleaned(owner)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_headless_demo_serves_metrics_that_history_confirms(tmp_path: Path) -> None:
    """--metrics on the demo, end to end: a Prometheus scrape while it runs counts the demo's
    own traffic in both directions on its interface, and never more than the history holds
    once the demo has stopped and written its last records."""
    from tests.kernel.test_export import free_port, scrape, wait_for

    db, port = tmp_path / "demo.db", free_port()
    proc = start_demo("--duration", "12", "--db", str(db), "--metrics", f"127.0.0.1:{port}")
    host = f"fsdemo{proc.pid}h"

    def packets(direction: str) -> float:
        try:
            samples = scrape(port)
        except OSError:  # not listening yet
            return 0
        return samples.get(
            ("flowscope_packets_total", (("direction", direction), ("interface", host))), 0
        )

    try:
        wait_running(proc)
        wait_for(lambda: packets("ingress") > 0 and packets("egress") > 0, "both directions")
        seen = {d: packets(d) for d in ("ingress", "egress")}
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    conn = sqlite3.connect(db)
    query = "SELECT direction, sum(packets) FROM flows WHERE iface = ? GROUP BY direction"
    history = dict(conn.execute(query, (host,)))
    conn.close()
    for direction, scraped in seen.items():
        assert 0 < scraped <= history[direction], (direction, scraped, history)
    assert_cleaned(proc.pid)


# -- crafted state files (issue #14) -------------------------------------------------------------


def test_clean_up_touches_only_what_a_demo_made(tmp_path: Path) -> None:
    """State files naming someone else's namespace, interface, processes or a path outside
    the state directory are removed as files and nothing they name is touched."""
    from flowscope.demo import net as demo_net
    from tests.netns import veth_namespace

    outside = tmp_path / "victim.json"
    outside.write_text("keep me")
    with veth_namespace() as net:
        victim = subprocess.Popen(["ip", "netns", "exec", net.ns, "sleep", "60"])
        bystander = subprocess.Popen(["sleep", "60"])
        try:
            time.sleep(0.3)
            stranger = 999_999_0  # a demo pid that runs no demo, with generated names
            crafted = {
                "999999.json": {  # someone else's namespace and interface
                    "owner": 999999,
                    "ns": net.ns,
                    "host_if": net.host_if,
                    "peer_if": net.peer_if,
                    "pids": [[victim.pid, 0]],
                },
                "x.json": {  # an owner that is a path
                    "owner": str(outside.with_suffix("")),
                    "ns": net.ns,
                    "host_if": net.host_if,
                    "peer_if": net.peer_if,
                },
                f"{stranger}.json": {  # our names, but a pid that is not the process started
                    "owner": stranger,
                    "ns": f"fsdemo{stranger}",
                    "host_if": f"fsdemo{stranger}h",
                    "peer_if": f"fsdemo{stranger}p",
                    "pids": [[bystander.pid, 1], [victim.pid, 1]],
                },
            }
            demo_net.STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
            for name, content in crafted.items():
                (demo_net.STATE_DIR / name).write_text(json.dumps(content))
            demo_net.cleanup_leftovers()
            assert victim.poll() is None and bystander.poll() is None
            assert net.ns in netns_names()
            assert any(link["ifname"] == net.host_if for link in links())
            assert outside.read_text() == "keep me"
            assert not any((demo_net.STATE_DIR / name).exists() for name in crafted)
        finally:
            for p in (victim, bystander):
                p.kill()
                p.wait()
