"""`flowscope live` in a real terminal (tmux) on a veth pair with traffic: the flows show with
non-zero rates, its --metrics endpoint counts them, and `q` exits and leaves no XDP program on
the interface."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.kernel.test_export import free_port, scrape
from tests.netns import PYTHON, VethNamespace, veth_namespace, xdp_prog_id

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (make setup)")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def tmux_alive(session: str) -> bool:
    """The tmux session (and so the command in it) still runs."""
    return (
        subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0
    )


@pytest.fixture
def net() -> Iterator[VethNamespace]:
    """A veth pair for one test; afterwards, once the session is killed (a hangup) and the
    interface deleted, no flowscope started on it may still run (one once did, and ignored
    SIGTERM: a console that outlives its terminal must never linger on a server)."""
    with veth_namespace() as n:
        yield n
    pattern = f"flowscope live -i {n.host_if}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
        if not pids.split():
            return
        time.sleep(0.2)
    stuck = []
    for pid in pids.split():
        with contextlib.suppress(OSError):
            stuck.append(f"{pid}: {Path(f'/proc/{pid}/wchan').read_text()}")
        subprocess.run(["kill", "-KILL", pid], capture_output=True)
    pytest.fail(f"flowscope still ran 15 s after its terminal and interface went: {stuck}")


def frames(net: VethNamespace, n: int) -> list[bytes]:
    return [
        bytes(
            Ether(src=net.peer_mac, dst=net.host_mac)
            / IP(src=net.peer_ip4, dst=net.host_ip4)
            / UDP(sport=40000 + i % 3, dport=5353)
            / (b"x" * 200)
        )
        for i in range(n)
    ]


class Traffic:
    """``batch`` sent from the namespace every ``every`` seconds, in a thread, from start()
    until stop()."""

    def __init__(self, net: VethNamespace, batch: list[bytes], every: float) -> None:
        self._stop = threading.Event()

        def send() -> None:
            while not self._stop.is_set():
                net.send_frames(batch)
                time.sleep(every)

        self._thread = threading.Thread(target=send, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


def test_live_console_shows_rates_and_q_detaches(net: VethNamespace) -> None:
    session = f"fslive{uuid.uuid4().hex[:8]}"
    sender = Traffic(net, frames(net, 60), 0.1)
    port = free_port()
    cmd = f"{PYTHON} -m flowscope live -i {net.host_if} --no-db --metrics 127.0.0.1:{port}"
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "32", cmd)
    try:
        sender.start()
        screen = ""
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            screen = tmux("capture-pane", "-p", "-t", session)
            row = next((line for line in screen.splitlines() if net.peer_ip4 in line), None)
            # bit/s is the first number after the protocol: it must not be 0
            if row and re.search(r"udp\s+[1-9][\d.]*[kMG]?\s", row):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"no flow with a rate on screen:\n{screen}")
        assert f"{net.host_if} (generic, egress)" in screen  # XDP mode; sent traffic too
        assert xdp_prog_id(net.host_if) != 0
        # a tick has counted at least one batch of 60 frames, and Prometheus sees it too
        received = (("direction", "ingress"), ("interface", net.host_if))
        assert scrape(port)[("flowscope_packets_total", received)] >= 60
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if session not in subprocess.run(["tmux", "ls"], capture_output=True, text=True).stdout:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("flowscope live did not exit on q")
        assert xdp_prog_id(net.host_if) == 0
    finally:
        sender.stop()
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def _wait_for(session: str, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", session)
        if text in screen:
            return screen
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never on screen:\n{screen}")


def _filter(session: str, text: str) -> None:
    """Type `/`, the filter and Enter at once, without waiting for the bar to appear: as an
    operator types (or pastes), every key after `/` must land in the bar. (The bar opens with
    the filter in force selected, so typing replaces it.)"""
    tmux("send-keys", "-t", session, "-l", f"/{text}")
    tmux("send-keys", "-t", session, "Enter")


def test_at_80x24_group_filter_to_nothing_filter_again_resize_and_quit(
    net: VethNamespace, tmp_path: Path
) -> None:
    """Issue #13's sequence in a real terminal: the console must not crash on an empty grouped
    view, must keep the filter in force on screen at 80x24, and must exit 0 on q."""
    session = f"fslive{uuid.uuid4().hex[:8]}"
    status = tmp_path / "status"
    cmd = f"{PYTHON} -m flowscope live -i {net.host_if} --no-db; echo $? > {status}"
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", "sh", "-c", cmd)
    sender = Traffic(net, frames(net, 30), 0.2)
    try:
        _wait_for(session, "(generic")
        sender.start()
        _wait_for(session, net.peer_ip4)
        tmux("send-keys", "-t", session, "g")
        _wait_for(session, "source host by")
        _filter(session, "port 1")
        screen = _wait_for(session, "/port 1  0 match")
        assert net.peer_ip4 not in screen  # the table is empty, the console alive
        time.sleep(2.5)  # ticks over an empty grouped view
        _filter(session, "udp")
        _wait_for(session, "/udp  3 match")
        tmux("resize-window", "-t", session, "-x", "120", "-y", "40")
        _wait_for(session, "/udp  3 match")
        tmux("resize-window", "-t", session, "-x", "80", "-y", "24")
        screen = _wait_for(session, "/udp  3 match")
        assert "source host by bit/s" in screen
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 20
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status.read_text().strip() == "0"
        assert xdp_prog_id(net.host_if) == 0
    finally:
        sender.stop()
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_a_syn_scan_from_the_namespace_is_one_alert_still_listed_a_minute_later(
    net: VethNamespace, tmp_path: Path
) -> None:
    """Issue #13: a SYN scan of 200 ports from the namespace, through the real program and
    ring buffer, raises exactly one scan alert naming its source, listed 60 s later; and
    history holds that one alert (`flowscope alerts`) once the console has quit."""
    from scapy.layers.inet import TCP

    session = f"fslive{uuid.uuid4().hex[:8]}"
    db = tmp_path / "flows.db"
    cmd = f"{PYTHON} -m flowscope live -i {net.host_if} --db {db}"
    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd)
    try:
        _wait_for(session, "(generic")
        probes = [
            bytes(
                Ether(src=net.peer_mac, dst=net.host_mac)
                / IP(src=net.peer_ip4, dst=net.host_ip4)
                / TCP(sport=41000, dport=port, flags="S")
            )
            for port in range(1, 201)
        ]
        net.send_frames(probes)
        _wait_for(session, "1 ALERT (a)")
        time.sleep(60)
        screen = _wait_for(session, "1 ALERT (a)")
        assert "2 ALERTS" not in screen
        tmux("send-keys", "-t", session, "a")
        screen = _wait_for(session, "port scan")
        row = next(line for line in screen.splitlines() if "port scan" in line)
        assert net.peer_ip4 in row and net.host_ip4 in row and " 200 " in f"{row} "
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 20
        while tmux_alive(session) and time.monotonic() < deadline:
            time.sleep(0.2)
        out = subprocess.run(
            [PYTHON, "-m", "flowscope", "alerts", "--db", str(db), "--format", "json"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        (alert,) = [json.loads(line) for line in out.splitlines()]
        assert (alert["kind"], alert["source"], alert["target"], alert["flows"]) == (
            "port scan", net.peer_ip4, net.host_ip4, 200
        )  # fmt: skip
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_an_interface_that_goes_down_is_on_the_status_line_while_it_is_down(
    net: VethNamespace,
) -> None:
    """Issue #14: the console says an interface went down in a notification, and keeps
    saying it on the status line for as long as it is down; up again, the mark goes."""
    session = f"fslive{uuid.uuid4().hex[:8]}"
    cmd = f"{PYTHON} -m flowscope live -i {net.host_if} --no-db"
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd)
    try:
        _wait_for(session, "(generic")
        subprocess.run(["ip", "link", "set", net.host_if, "down"], check=True)
        _wait_for(session, f"{net.host_if} went down")
        time.sleep(12)  # the notification has gone by now; the mark stays
        screen = _wait_for(session, "(generic, egress)  DOWN")
        assert "went down" not in screen
        subprocess.run(["ip", "link", "set", net.host_if, "up"], check=True)
        _wait_for(session, "is up again")
        first = tmux("capture-pane", "-p", "-t", session).splitlines()[0]
        assert "DOWN" not in first, first
        tmux("send-keys", "-t", session, "q")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_block_from_the_console_then_q_leaves_no_rule_and_no_program(
    net: VethNamespace, tmp_path: Path
) -> None:
    """Issue #18, as an operator does it at 80x24: live --allow-block, b on the flood's row,
    h (its source host), y, and y again (the rule would take all the traffic: a second
    confirmation); the listener then gets nothing from that host; q ends the console, and
    with it the program, the rules and the control socket."""
    from tests.kernel.test_block import Listener, _udp

    listener = Listener()
    sock = tmp_path / "control" / "c.sock"
    session = f"fslive{uuid.uuid4().hex[:8]}"
    sender = Traffic(net, _udp(net, net.peer_ip4, listener.port, 50), 0.1)
    cmd = (
        f"env FLOWSCOPE_CONTROL={sock} {PYTHON} -m flowscope live -i {net.host_if} --no-db "
        "--allow-block --direction ingress"
    )
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd)
    try:
        sender.start()
        _wait_for(session, net.peer_ip4, timeout=40)
        assert listener.take().get(net.peer_ip4, 0) > 0
        tmux("send-keys", "-t", session, "b")
        _wait_for(session, "Drop every packet received on")
        tmux("send-keys", "-t", session, "h")
        _wait_for(session, f"    {net.peer_ip4}/32")
        tmux("send-keys", "-t", session, "y")
        _wait_for(session, "SECOND CONFIRMATION")
        tmux("send-keys", "-t", session, "y")
        deadline = time.monotonic() + 10
        while "Drop every packet" in tmux("capture-pane", "-p", "-t", session):
            assert time.monotonic() < deadline, "the confirmation never closed"
            time.sleep(0.2)
        time.sleep(0.5)
        listener.take()  # what was on its way before the rule
        time.sleep(1.0)
        assert listener.take().get(net.peer_ip4, 0) == 0
        assert sock.exists()
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 20
        while tmux_alive(session):
            assert time.monotonic() < deadline, "flowscope live did not exit on q"
            time.sleep(0.2)
        assert xdp_prog_id(net.host_if) == 0
        assert not sock.exists()
        time.sleep(0.5)
        listener.take()
        time.sleep(1.0)
        assert listener.take().get(net.peer_ip4, 0) > 0  # no rule left: it gets through again
    finally:
        sender.stop()
        listener.close()
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
