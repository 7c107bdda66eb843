"""Start-up: how long `flowscope live` takes to draw its console and to show its first flows,
and what the BCC compile in between costs.

The console is started the way an operator starts it, in a terminal (a pty of 80x24 here), on
a veth pair the benchmark makes, with a sender in the namespace; the clock runs from the fork
to the first bytes of the status line on the terminal, and to the sender's address in the
flows table. Each figure is the median over ``settings.starts`` starts."""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import os
import pty
import select
import signal
import statistics
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import flowscope
from flowscope.bench.harness import Lab, Result
from flowscope.bench.netlab import server_in, veth_lab
from flowscope.errors import BenchError

KERNEL_HEADERS = ("linux/if_ether.h", "linux/ip.h", "linux/ipv6.h", "linux/in.h", "linux/pkt_cls.h",
                  "linux/socket.h")  # fmt: skip
"""What bpf/flowscope.c and owners.c included until they took only uapi headers."""
HOST, PEER = "198.18.77.1", "198.18.77.2"
SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("ready", flush=True)
while True:
    s.sendto(b"x" * 64, (sys.argv[1], 9))
    time.sleep(0.02)
"""
GIVE_UP = 30.0


def compile_seconds(cflags: tuple[str, ...] = ()) -> float:
    """One BCC compile (and load) of the programs record and live use, in seconds."""
    from flowscope.kernel.program import FlowProgram

    t = time.perf_counter()
    FlowProgram(owners=True, cflags=cflags).close()
    return time.perf_counter() - t


def compile_program(lab: Lab) -> Iterator[Result]:
    """``compile_flow_program``: the BCC compile of the programs record and live load (the
    socket hooks included), beside the same sources with the kernel-internal headers they
    used to include, which parsing made most of the start-up."""
    headers = tuple(arg for h in KERNEL_HEADERS for arg in ("-include", h))
    now, before = [], []
    for _ in range(lab.settings.starts):
        now.append(compile_seconds())
        before.append(compile_seconds(headers))
    yield Result(
        "compile_flow_program",
        statistics.median(now),
        "s",
        "compile_with_kernel_headers",
        statistics.median(before),
    )


def _start_once(host_if: str) -> tuple[float, float]:
    """One `flowscope live` in a pty: seconds to the first draw and to the first flow."""
    t0 = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command as typed
        os.environ["TERM"] = "xterm-256color"
        argv = [sys.executable, "-m", "flowscope", "live", "-i", host_if, "--no-db"]
        os.execv(sys.executable, argv)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    seen = b""
    drawn = flows = None
    try:
        while flows is None and time.monotonic() - t0 < GIVE_UP:
            ready, _, _ = select.select([fd], [], [], 0.02)
            if not ready:
                continue
            try:
                seen += os.read(fd, 1 << 16)
            except OSError:
                break  # the console ended
            now = time.monotonic() - t0
            if drawn is None and (b"compiling" in seen or host_if.encode() in seen):
                drawn = now
            if PEER.encode() in seen:
                flows = now
        if drawn is None or flows is None:
            tail = seen[-400:].decode(errors="replace")
            raise BenchError(f"console_start: no {'flows' if drawn else 'console'}: {tail!r}")
        return drawn, flows
    finally:
        with contextlib.suppress(OSError):
            os.write(fd, b"q")
        deadline = time.monotonic() + 20
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            with contextlib.suppress(OSError):
                os.read(fd, 1 << 16)  # a console that cannot write would not quit
            time.sleep(0.05)
        os.close(fd)


def console_start(lab: Lab) -> Iterator[Result]:
    """``console_first_draw``: `flowscope live` to its status line on the terminal, beside
    the interpreter starting the command line (`flowscope --version`); ``console_first_flows``:
    to the first flow on screen, beside the compile alone (compile_program's figure, measured
    again here).

    flowscope's bytecode is compiled first, as an installed package has it (pip compiles it
    on install, and Python writes it on a first run): an editable install run with
    PYTHONDONTWRITEBYTECODE (as on the machines flowscope is built on) would otherwise compile
    every module of flowscope from source on every start, a quarter of a second here that no
    operator pays."""
    compileall.compile_dir(str(Path(flowscope.__file__).parent), quiet=1)
    cli, compiles, draws, firsts = [], [], [], []
    with (
        veth_lab("start", HOST, PEER, prefix=30) as net,
        server_in(net, SENDER, HOST, what="console_start"),
    ):
        for _ in range(lab.settings.starts):
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "flowscope", "--version"], check=True, capture_output=True
            )
            cli.append(time.perf_counter() - t)
            compiles.append(compile_seconds())
            drawn, flows = _start_once(net.host_if)
            draws.append(drawn)
            firsts.append(flows)
    yield Result(
        "console_first_draw",
        statistics.median(draws),
        "s",
        "cli_start",
        statistics.median(cli),
    )
    yield Result(
        "console_first_flows",
        statistics.median(firsts),
        "s",
        "compile_flow_program",
        statistics.median(compiles),
    )
