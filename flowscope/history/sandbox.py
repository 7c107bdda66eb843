"""`flowscope sql`: one read-only statement on the history database, in a sandbox.

A read-only connection (URI mode=ro) with an authorizer that denies every write, ATTACH and
DETACH and every pragma that would change something; a time limit (SQLite's progress handler,
which is also where Ctrl-C is raised); a row limit; and a memory bound, on SQLite's heap and on
the rows handed back. Everything refused or stopped is a UsageError: one line, exit status 2.
Kept apart from the store: it shares only the connection and the filter's SQL functions.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowscope.errors import UsageError
from flowscope.history.files import connect_readonly
from flowscope.query.nodes import register_sql_functions

_READ_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}
# Pragmas that only report, and may name a table or index to report on.
_PRAGMAS_WITH_ARGUMENT = {
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
}
# Pragmas that report when asked without a value (with a value they would write).
_PRAGMAS_QUERY_ONLY = {
    "application_id",
    "auto_vacuum",
    "cache_size",
    "collation_list",
    "compile_options",
    "data_version",
    "database_list",
    "encoding",
    "foreign_keys",
    "freelist_count",
    "function_list",
    "journal_mode",
    "module_list",
    "page_count",
    "page_size",
    "pragma_list",
    "schema_version",
    "synchronous",
    "user_version",
}
_ACTION_WORDS = {
    sqlite3.SQLITE_INSERT: "INSERT",
    sqlite3.SQLITE_UPDATE: "UPDATE",
    sqlite3.SQLITE_DELETE: "DELETE",
    sqlite3.SQLITE_ATTACH: "ATTACH",
    sqlite3.SQLITE_DETACH: "DETACH",
    sqlite3.SQLITE_ALTER_TABLE: "ALTER TABLE",
    sqlite3.SQLITE_ANALYZE: "ANALYZE",
    sqlite3.SQLITE_REINDEX: "REINDEX",
    sqlite3.SQLITE_TRANSACTION: "a transaction",
    sqlite3.SQLITE_SAVEPOINT: "SAVEPOINT",
}

_CREATE_DROP = {
    getattr(sqlite3, f"SQLITE_{verb}_{what}"): verb
    for verb in ("CREATE", "DROP")
    for what in (
        "INDEX",
        "TABLE",
        "TEMP_INDEX",
        "TEMP_TABLE",
        "TEMP_TRIGGER",
        "TEMP_VIEW",
        "TRIGGER",
        "VIEW",
        "VTABLE",
    )
}


def _authorizer(
    refused: list[str],
) -> Callable[[int, str | None, str | None, str | None, str | None], int]:
    """An sqlite3 authorizer that allows reading only, and notes what it refused."""

    def authorize(
        action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None
    ) -> int:
        if action in _READ_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in _PRAGMAS_WITH_ARGUMENT or (name in _PRAGMAS_QUERY_ONLY and arg2 is None):
                return sqlite3.SQLITE_OK
            refused.append(f"PRAGMA {name}" + ("" if arg2 is None else f"={arg2}"))
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master" and source is None:
            # SQLite itself asks this while it sets up pragma table-valued functions
            # (pragma_table_info). A user's UPDATE of sqlite_master is refused by SQLite
            # anyway (writable_schema is denied above), and the connection is read-only.
            return sqlite3.SQLITE_OK
        word = _ACTION_WORDS.get(action) or _CREATE_DROP.get(action, f"action {action}")
        refused.append(word)
        return sqlite3.SQLITE_DENY

    return authorize


SQL_TIMEOUT = 10.0
"""Seconds `flowscope sql` lets a statement run (--timeout)."""
SQL_MAX_ROWS = 100_000
"""Rows `flowscope sql` returns at most (--max-rows)."""
SQL_MAX_MEMORY = 256
"""MiB `flowscope sql` may use (--max-memory): SQLite's heap, and again the rows it returns."""
_MIB = 1 << 20


def _fetch_bounded(cur: sqlite3.Cursor, max_rows: int, max_bytes: int) -> list[tuple[Any, ...]]:
    """The cursor's rows, refused with a UsageError past ``max_rows`` rows or past about
    ``max_bytes`` of Python objects (a few wide rows can weigh more than many narrow ones)."""
    rows: list[tuple[Any, ...]] = []
    weight = 0
    while batch := cur.fetchmany(min(1000, max_rows + 1 - len(rows))):
        rows.extend(batch)
        if len(rows) > max_rows:
            raise UsageError(
                f"sql: more than {max_rows} rows", "add a LIMIT or a WHERE, or raise --max-rows"
            )
        weight += sum(sys.getsizeof(row) + sum(map(sys.getsizeof, row)) for row in batch)
        if weight > max_bytes:
            raise UsageError(
                f"sql: the result needs more than {max_bytes // _MIB} MiB",
                "select fewer or narrower columns, or raise --max-memory",
            )
    return rows


def read_sql(
    path: Path | str,
    query: str,
    *,
    timeout: float = SQL_TIMEOUT,
    max_rows: int = SQL_MAX_ROWS,
    max_memory: int = SQL_MAX_MEMORY,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one statement on a read-only connection (URI mode=ro) with an authorizer that
    denies every write, ATTACH/DETACH and any pragma that would change something: the
    column names and the rows. Refusals and SQL errors are UsageErrors (one line).

    A statement that runs longer than ``timeout`` seconds, or returns more than ``max_rows``
    rows, is stopped with a UsageError saying so; Ctrl-C stops it too (SQLite's progress
    handler runs Python every few thousand steps, which is where the signal is raised).

    Memory is bounded twice by ``max_memory`` MiB: SQLite's heap (``PRAGMA hard_heap_limit``,
    so a huge string or an in-memory sort fails with SQLITE_NOMEM instead of growing until
    the machine swaps), and the rows handed back. SQLite's heap limit is for the whole
    process and can only be lowered: `flowscope sql` is a process of its own."""
    conn = connect_readonly(path)
    conn.execute(f"PRAGMA hard_heap_limit = {int(max_memory) * _MIB}")
    refused: list[str] = []
    deadline = time.monotonic() + timeout
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        register_sql_functions(conn)
        conn.set_authorizer(_authorizer(refused))
        try:
            cur = conn.execute(query)
            rows = _fetch_bounded(cur, max_rows, max_memory * _MIB)
        except MemoryError as e:  # SQLITE_NOMEM: the heap limit was reached
            raise UsageError(
                f"sql: the statement needs more than {max_memory} MiB",
                "narrow the query, or raise --max-memory",
            ) from e
        except sqlite3.Warning as e:  # more than one statement
            raise UsageError(f"sql: {e}", "run one statement at a time") from e
        except sqlite3.Error as e:
            if "interrupted" in str(e):
                if time.monotonic() > deadline:
                    raise UsageError(
                        f"sql: stopped after {timeout:g} s",
                        "narrow the query, or raise --timeout",
                    ) from e
                raise KeyboardInterrupt from e  # Ctrl-C, raised in the progress handler
            if refused:
                # Name the statement (DROP, not the DELETE from sqlite_master it starts with),
                # or for PRAGMA and WITH, the first thing refused.
                first = (query.split() or [""])[0].upper().rstrip(";")
                what = refused[0] if first in ("PRAGMA", "WITH", "SELECT", "") else first
                raise UsageError(f"sql: only reading is allowed ({what} refused)") from e
            raise UsageError(f"sql: {e}") from e
        columns = [d[0] for d in cur.description] if cur.description else []
        return columns, rows
    finally:
        conn.close()
