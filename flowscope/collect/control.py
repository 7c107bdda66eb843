"""The control socket of a recording started with --allow-block: `flowscope block`, `unblock`
and `blocks` talk to the running `record` or `live` through it.

A Unix stream socket (FLOWSCOPE_CONTROL, default /run/flowscope/control.sock) in a directory
only its owner may enter, itself mode 0600, and each peer's credentials checked (SO_PEERCRED:
root or the recorder's own user): blocking traffic is for whoever could have started it. One
JSON object per line each way, one request per connection; the handler (collect.blocking's
BlockService) answers with a JSON object too.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowscope.errors import FlowscopeError, UsageError

DEFAULT_PATH = Path("/run/flowscope/control.sock")
MAX_REQUEST = 65536


def control_path(environ: dict[str, str] | None = None) -> Path:
    """Where the control socket is: FLOWSCOPE_CONTROL, else DEFAULT_PATH."""
    env = os.environ if environ is None else environ
    value = env.get("FLOWSCOPE_CONTROL")
    return Path(value) if value else DEFAULT_PATH


class ControlServer:
    """Answers requests on the control socket from a thread of its own until close()."""

    def __init__(self, path: Path, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.path = path
        self.handler = handler
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if _answers(path):
                raise UsageError(
                    f"another flowscope with --allow-block is running ({path})",
                    "stop it, or give this one another FLOWSCOPE_CONTROL",
                )
            path.unlink()  # left by a process that is gone (kill -9)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self._sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="flowscope-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError, ValueError):
                    self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid not in (0, os.getuid()):
            _send(conn, {"error": "only root may change what flowscope blocks"})
            return
        try:
            request = json.loads(_read_line(conn).decode())
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as e:
            _send(conn, {"error": f"not a request: {e}"})
            return
        try:
            answer = self.handler(request)
        except FlowscopeError as e:
            answer = {"error": e.message, "hint": e.hint}
        _send(conn, answer)

    def close(self) -> None:
        """Stop answering and remove the socket."""
        self._closing.set()
        self._sock.close()
        self._thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _read_line(conn: socket.socket) -> bytes:
    """One message: bytes up to a newline, the end of the stream, or MAX_REQUEST."""
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _answers(path: Path) -> bool:
    """Whether a process listens on the socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def request(path: Path, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the running recorder and return its answer; a FlowscopeError when
    none is running or it answers with an error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise FlowscopeError(
                f"no flowscope with --allow-block is running (no control socket at {path})",
                "start `flowscope record` or `flowscope live` with --allow-block",
            ) from None
        except PermissionError:
            raise FlowscopeError(
                f"not allowed to use {path}", "run as root, as the recorder does"
            ) from None
        s.sendall(json.dumps(message).encode() + b"\n")
        data = _read_line(s)
    try:
        answer = json.loads(data.decode())
    except ValueError:
        raise FlowscopeError(f"the recorder gave no answer on {path}") from None
    if "error" in answer:
        raise FlowscopeError(str(answer["error"]), answer.get("hint"))
    return dict(answer)
