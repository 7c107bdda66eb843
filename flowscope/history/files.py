"""The history database as a file: where it lives, who may read it, opening it read-only,
removing one that a failed run created, and sqlite3's errors said as ours (StoreError)."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

from flowscope.errors import FlowscopeError, UsageError


class StoreError(FlowscopeError):
    """The history database cannot be opened, read or written (disk full, locked, corrupt)."""


# --- user input: durations, sizes, times ---------------------------------------------------

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str, option: str = "--max-db-size") -> int:
    """Bytes from ``500MB``, ``1GB``, ``512MiB`` (kB/MB/GB are powers of 1000, KiB/MiB/GiB
    of 1024); anything else is a UsageError."""
    m = _SIZE_RE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS or float(m.group(1)) <= 0:
        raise UsageError(
            f"{option}: {text!r} is not a size",
            "a positive number and a unit: kB, MB, GB, KiB, MiB or GiB, as in 1GB",
        )
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


# --- paths and connections -----------------------------------------------------------------


def state_dir() -> Path:
    """``$XDG_STATE_HOME/flowscope``, else ``~/.local/state/flowscope``: history and logs."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "flowscope"


@contextlib.contextmanager
def translate_errors(action: str, path: Path | str) -> Iterator[None]:
    """Turn sqlite3 errors into StoreError at the store boundary, with a hint that helps."""
    try:
        yield
    except sqlite3.Error as e:
        text = str(e)
        hint = None
        if "full" in text:
            hint = "free disk space or lower --max-db-size / --retain"
        elif "locked" in text or "busy" in text:
            hint = "another process is writing to it"
        elif "not a database" in text or "malformed" in text:
            hint = "the file is not a flowscope database or is damaged"
        raise StoreError(f"{action} {path}: {text}", hint) from e


def remove_if_unused(path: Path) -> bool:
    """Delete a database this run created when it holds nothing: no flow, sample, event or
    pending row (a run that failed to attach must not leave an empty file behind). True when
    it was removed."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = ("flows", "samples", "events", "pending")
            present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            used = any(
                conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()
                for t in tables
                if t in present
            )
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    if used:
        return False
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    return True


def create_private_file(path: Path) -> None:
    """Create the database file 0600 (and its directory 0700) before SQLite opens it, so
    history is never readable by other users, not even for an instant. SQLite gives the -wal
    and -shm files the same permissions as the database.

    The path must be the file itself: a symbolic link is refused (a dangling one would create
    its target wherever it points, a live one write history into someone else's file), and
    an existing file must be ours; one that others could read is made private (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise StoreError(
                f"{path} belongs to uid {st.st_uid}, not to this user",
                "history is written only into a file of one's own: pass another --db",
            )
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
            for extra in (Path(f"{path}-wal"), Path(f"{path}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    extra.chmod(0o600)
    finally:
        os.close(fd)


def connect_readonly(path: Path | str) -> sqlite3.Connection:
    """A read-only connection (URI mode=ro) to an existing database; a missing file is a
    UsageError, never a new empty database."""
    p = Path(path)
    try:
        is_file = stat.S_ISREG(p.stat().st_mode)
    except FileNotFoundError:
        is_file = False
    except OSError as e:
        raise StoreError(f"cannot open {p}: {e.strerror}", "check its permissions") from e
    if not is_file:
        raise UsageError(f"no history database at {p}", "record first, or pass --db PATH")
    uri = p.resolve().as_uri()
    try:
        return _try_connect(f"{uri}?mode=ro")
    except sqlite3.OperationalError as e:
        # A WAL database needs its -shm file to be read; when no writer has it open, a
        # reader that may not write there (another user, a read-only file system) cannot
        # make one. With nobody writing, the file cannot change: read it as immutable.
        wal = Path(f"{p}-wal")
        if "readonly" not in str(e) and "unable to open" not in str(e):
            with translate_errors("cannot open", p):
                raise
        if wal.exists() and wal.stat().st_size > 0:
            with translate_errors("cannot open", p):
                raise
    with translate_errors("cannot open", p):
        return _try_connect(f"{uri}?mode=ro&immutable=1")


def _try_connect(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn
