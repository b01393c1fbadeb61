"""SQLite access shared by the audit store, the verifier and the export: URLs, read-only
engines, the writer's pragmas and driver error messages."""

from __future__ import annotations

import asyncio
import sqlite3
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.errors import AuditError

_Result = TypeVar("_Result")
# How long a writer waits for another connection's write lock. It is the default of
# Python's sqlite3 driver, which the engines' aiosqlite connections use as well.
BUSY_TIMEOUT_SECONDS = 5.0


def sqlite_url(path: Path) -> str:
    """Return the SQLAlchemy URL for the SQLite file at ``path`` with the aiosqlite driver.

    The path is made absolute, and characters that URLs reserve (``?``, ``#``, ``%``) are
    quoted so that they stay part of the file name.
    """
    url = URL.create("sqlite+aiosqlite", database=str(path.absolute()))
    return url.render_as_string(hide_password=False)


def open_reader_engine(path: Path) -> AsyncEngine:
    """Create an engine that opens the existing store at ``path`` read-only.

    Raises AuditError if the file does not exist, because SQLite would otherwise create
    an empty database and a verify or export of a mistyped path would report nothing.
    """
    if not path.is_file():
        raise AuditError(f"audit store {path} not found; check the path")

    uri_path = urllib.parse.quote(str(path.absolute()))
    url = URL.create(
        "sqlite+aiosqlite",
        database=f"file:{uri_path}",
        query={"mode": "ro", "uri": "true"},
    )
    return create_async_engine(url, hide_parameters=True)


def describe_error(exc: BaseException) -> str:
    """Return SQLite's own message for a driver error, or the exception's type and text.

    SQLAlchemy's wrapper text is skipped because it repeats the SQL statement. SQLite's
    messages do not quote bound values, and the engines hide them from SQLAlchemy's text.
    """
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig)
    if isinstance(exc, sqlite3.Error):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def set_writer_pragmas(dbapi_connection: Any, _connection_record: Any) -> None:
    # WAL lets verify and export read while the gateway writes. synchronous=FULL
    # syncs the WAL on every commit, which the durability contract of append needs.
    # secure_delete overwrites deleted content with zeros (SQLite documentation of
    # PRAGMA secure_delete), so that forget leaves no old copy of a pseudonym in the
    # file. Builds compiled with SQLITE_SECURE_DELETE have it on already; others not.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA secure_delete=ON")
    finally:
        cursor.close()


def begin_immediate(engine: AsyncEngine) -> None:
    """Make every transaction of ``engine`` start with ``BEGIN IMMEDIATE``.

    The Python sqlite3 driver starts a transaction only at the first write, so a read
    of the chain head would run before the write lock. ``BEGIN IMMEDIATE`` takes the
    lock first, and a second writer waits for it (the driver's 5 s busy timeout) instead
    of reading a head that is about to change. This follows SQLAlchemy's recipe for
    SQLite transactions (documentation of the pysqlite dialect, "Serializable isolation").
    """

    def disable_driver_transactions(dbapi_connection: Any, _connection_record: Any) -> None:
        dbapi_connection.isolation_level = None

    def begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine.sync_engine, "connect", disable_driver_transactions)
    event.listen(engine.sync_engine, "begin", begin)


async def check_pragmas(connection: AsyncConnection, path: Path) -> None:
    # Where WAL is not possible, PRAGMA journal_mode=WAL keeps the old mode without an
    # error (SQLite documentation of PRAGMA journal_mode).
    journal_mode = (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar()
    synchronous = (await connection.exec_driver_sql("PRAGMA synchronous")).scalar()
    if str(journal_mode).lower() != "wal":
        raise AuditError(
            f"audit store {path} uses journal mode {journal_mode!r}, not WAL; "
            "put it on a local file system"
        )
    if synchronous != 2:
        raise AuditError(f"audit store {path} has synchronous={synchronous!r}, expected 2 (FULL)")


class WriterThread:
    """One sqlite3 connection in a thread of its own, which runs whole transactions.

    aiosqlite passes each statement to its thread and the result back through the event
    loop, so one group commit (BEGIN, the head, the inserts, COMMIT) took at least five
    such round trips. `run` makes one, with the whole transaction in one function. The connection
    opens at the first `run` with the writer's pragmas and no driver transactions, so
    the function must send BEGIN and COMMIT itself.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        self._connection: sqlite3.Connection | None = None

    async def run(self, function: Callable[[sqlite3.Connection], _Result]) -> _Result:
        """Call ``function`` with the connection in the writer thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, function)

    async def close(self) -> None:
        """Close the connection and stop the thread after the functions already queued."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    def _call(self, function: Callable[[sqlite3.Connection], _Result]) -> _Result:
        if self._connection is None:
            self._connection = self._connect()
        return function(self._connection)

    def _connect(self) -> sqlite3.Connection:
        # The executor's one thread creates, uses and closes the connection.
        connection = sqlite3.connect(
            self._path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None
        )
        try:
            set_writer_pragmas(connection, None)
        except sqlite3.Error:
            connection.close()
            raise
        return connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
