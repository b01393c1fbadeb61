"""The audit store: an append-only, hash-chained log of audit records in SQLite.

The gateway releases a response only after its audit record is committed, so `append`
returns only after the commit. Concurrent requests share commits (group commit). One
writer task takes every pending event, up to ``max_batch``, and inserts them in one
transaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    event,
    insert,
    select,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.audit.chain import GENESIS_HASH, chain_hash, is_chain_hash
from gateway.audit.record import AuditEvent, canonical_json, validate_event
from gateway.errors import AuditError, AuditIntegrityError

logger = logging.getLogger(__name__)

metadata = MetaData()

audit_record = Table(
    "audit_record",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("time", Text, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("purpose", Text, nullable=True),
    Column("outcome", Text, nullable=False),
    # Canonical JSON of the event plus "seq" and "prev_hash". The other columns copy
    # body values so that exports can filter in SQL, and verify checks that they match.
    Column("body", Text, nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
    Index("ix_audit_record_actor_time", "actor", "time"),
    Index("ix_audit_record_time", "time"),
)

audit_subject = Table(
    "audit_subject",
    metadata,
    Column("seq", Integer, ForeignKey("audit_record.seq"), nullable=False),
    Column("ref", Text, nullable=False),
    PrimaryKeyConstraint("ref", "seq"),
    Index("ix_audit_subject_seq", "seq"),
)


class AuditStore(Protocol):
    """Durable storage for audit records."""

    async def append(self, event: AuditEvent) -> int:
        """Store ``event`` as the next record and return its seq once it is durable.

        Raises AuditError if the record could not be stored.
        """
        ...

    async def healthy(self) -> bool:
        """Return False while the store cannot be expected to accept records."""
        ...

    async def close(self) -> None:
        """Store the pending records, then release the store's resources."""
        ...


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
    return f"{type(exc).__name__}: {exc}"


def _set_writer_pragmas(dbapi_connection: Any, _connection_record: Any) -> None:
    # WAL lets verify and export read while the gateway writes. synchronous=FULL
    # syncs the WAL on every commit, which the durability contract of append needs.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


async def _check_pragmas(connection: AsyncConnection, path: Path) -> None:
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


async def _read_head(connection: AsyncConnection, path: Path) -> tuple[int, str]:
    """Return the seq and hash of the last record, after checking that it verifies.

    Raises AuditIntegrityError if it does not, because appending to a damaged chain
    would hide the damage behind new records.
    """
    statement = (
        select(
            audit_record.c.seq,
            audit_record.c.body,
            audit_record.c.prev_hash,
            audit_record.c.hash,
        )
        .order_by(audit_record.c.seq.desc())
        .limit(1)
    )
    row = (await connection.execute(statement)).first()
    if row is None:
        return 0, GENESIS_HASH

    seq, body, prev_hash, stored_hash = row
    if not _head_verifies(seq, body, prev_hash, stored_hash):
        raise AuditIntegrityError(
            f"last audit record {seq} in {path} does not verify; run the audit verifier "
            "and investigate before appending"
        )
    return int(seq), str(stored_hash)


def _head_verifies(seq: int, body: str, prev_hash: str, stored_hash: str) -> bool:
    if not is_chain_hash(prev_hash) or not is_chain_hash(stored_hash):
        return False
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    if not isinstance(parsed, dict) or parsed.get("seq") != seq:
        return False
    return chain_hash(prev_hash, seq, body.encode("utf-8")) == stored_hash


@dataclass
class _Pending:
    event: dict[str, Any]
    future: asyncio.Future[int]


class SQLiteAuditStore:
    """An `AuditStore` in one SQLite file, with group commit.

    Use one store object per file. A second writer, in this process or another, cannot
    fork the chain because ``seq`` is the primary key, but the two writers make each
    other's commits fail.

    ``commits`` counts the successful commits since open. It is smaller than the number
    of appends whenever appends share a commit.
    """

    def __init__(
        self, engine: AsyncEngine, path: Path, head: tuple[int, str], max_batch: int
    ) -> None:
        """Wrap an opened engine. Use `open`, which creates the schema and reads the head."""
        self.commits = 0
        self._engine = engine
        self._path = path
        self._head_seq, self._head_hash = head
        self._head_stale = False
        self._max_batch = max_batch
        self._healthy = True
        self._closed = False
        self._engine_disposed = False
        # None is the stop signal that close() sends after the last event.
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._run_writer(), name=f"audit-writer {path}")

    @classmethod
    async def open(cls, path: Path, *, max_batch: int = 256) -> SQLiteAuditStore:
        """Open or create the store at ``path`` and start its writer task.

        Creates the tables if they are missing and continues the chain after the last
        stored record. The directory must exist. Raises AuditError if the file cannot be
        opened or set to WAL, and AuditIntegrityError if the last record does not verify.
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if not path.parent.is_dir():
            raise AuditError(f"directory {path.parent} of audit store {path} not found; create it")

        engine = create_async_engine(sqlite_url(path), hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _set_writer_pragmas)
        try:
            async with engine.begin() as connection:
                await _check_pragmas(connection, path)
                await connection.run_sync(metadata.create_all)
                head = await _read_head(connection, path)
        except SQLAlchemyError as exc:
            await engine.dispose()
            raise AuditError(f"cannot open audit store {path}: {describe_error(exc)}") from exc
        except AuditError:
            await engine.dispose()
            raise

        logger.info("opened audit store %s at seq %d", path, head[0])
        return cls(engine, path, head, max_batch)

    async def append(self, event: AuditEvent) -> int:
        """Store ``event`` as the next record and return its seq once the commit is durable.

        Raises AuditError if the event is invalid, the store is closed or the commit
        failed. The caller must then treat the record as not stored. If the caller is
        cancelled while it waits, the record may still be committed.
        """
        if self._closed:
            raise AuditError(f"audit store {self._path} is closed; open it again to append")
        try:
            validate_event(event)
            # A decoded copy, so that a caller changing the event later cannot change
            # the record.
            snapshot = json.loads(canonical_json(event))
        except (TypeError, ValueError) as exc:
            raise AuditError(f"invalid audit event: {exc}") from exc

        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(snapshot, future))
        return await future

    async def healthy(self) -> bool:
        """Return False after a failed commit until a later commit succeeds, or once closed.

        This reads no file, so a disk that failed after the last commit shows only at
        the next append.
        """
        return self._healthy and not self._closed and not self._writer.done()

    async def close(self) -> None:
        """Commit the events appended before this call, stop the writer and dispose the engine."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)
        try:
            await self._writer
        finally:
            if not self._engine_disposed:
                self._engine_disposed = True
                await self._engine.dispose()
                logger.info("closed audit store %s at seq %d", self._path, self._head_seq)

    async def _run_writer(self) -> None:
        batch: list[_Pending] = []
        try:
            stopping = False
            while not stopping:
                batch, stopping = await self._next_batch()
                if batch:
                    await self._commit_batch(batch)
                batch = []
        finally:
            # Reached with pending futures only if the task was cancelled, for example
            # when the event loop shut down without close().
            self._fail_pending(batch)

    async def _next_batch(self) -> tuple[list[_Pending], bool]:
        """Wait for one event, then take the others already queued, up to max_batch.

        Returns the batch and whether close() asked the writer to stop.
        """
        batch: list[_Pending] = []
        item = await self._queue.get()
        while True:
            if item is None:
                return batch, True
            batch.append(item)
            if len(batch) >= self._max_batch or self._queue.empty():
                return batch, False
            item = self._queue.get_nowait()

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            if self._head_stale:
                await self._reload_head()
            records, subjects, last_hash = self._build_rows(batch)
            async with self._engine.begin() as connection:
                await connection.execute(insert(audit_record), records)
                if subjects:
                    await connection.execute(insert(audit_subject), subjects)
        except Exception as exc:
            # Catch every error, a bug included, so that only this batch fails. If the
            # writer task died, every later append would wait forever.
            await self._fail_batch(batch, exc)
            return

        first_seq = self._head_seq + 1
        self._head_seq += len(batch)
        self._head_hash = last_hash
        self.commits += 1
        if not self._healthy:
            logger.info("audit store %s commits again from seq %d", self._path, first_seq)
        self._healthy = True
        for offset, pending in enumerate(batch):
            if not pending.future.done():
                pending.future.set_result(first_seq + offset)

    def _build_rows(
        self, batch: list[_Pending]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
        """Chain the batch onto the head. Returns record rows, subject rows and the last hash."""
        records: list[dict[str, Any]] = []
        subjects: list[dict[str, Any]] = []
        seq = self._head_seq
        prev_hash = self._head_hash
        for pending in batch:
            seq += 1
            event_copy = pending.event
            body = canonical_json({**event_copy, "seq": seq, "prev_hash": prev_hash})
            record_hash = chain_hash(prev_hash, seq, body)
            records.append(
                {
                    "seq": seq,
                    "time": event_copy["time"],
                    "request_id": event_copy["request_id"],
                    "actor": event_copy["actor"],
                    "purpose": event_copy["purpose"],
                    "outcome": event_copy["outcome"],
                    "body": body.decode("utf-8"),
                    "prev_hash": prev_hash,
                    "hash": record_hash,
                }
            )
            refs = sorted({subject["ref"] for subject in event_copy["subjects"]})
            subjects.extend({"seq": seq, "ref": ref} for ref in refs)
            prev_hash = record_hash
        return records, subjects, prev_hash

    async def _fail_batch(self, batch: list[_Pending], exc: Exception) -> None:
        self._healthy = False
        first_seq = self._head_seq + 1
        last_seq = self._head_seq + len(batch)
        reason = describe_error(exc)
        logger.error(
            "audit commit of seq %d-%d in %s failed: %s",
            first_seq,
            last_seq,
            self._path,
            reason,
        )
        for pending in batch:
            if pending.future.done():
                continue
            error = AuditError(f"audit commit to {self._path} failed: {reason}")
            error.__cause__ = exc
            pending.future.set_exception(error)

        # The commit may have reached the file even though it reported an error, or
        # another writer may have appended, so the head in memory cannot be trusted.
        try:
            await self._reload_head()
        except AuditError as reload_error:
            self._head_stale = True
            logger.error("audit store %s head reload failed: %s", self._path, reload_error)

    async def _reload_head(self) -> None:
        try:
            async with self._engine.connect() as connection:
                self._head_seq, self._head_hash = await _read_head(connection, self._path)
        except SQLAlchemyError as exc:
            message = f"cannot read audit store {self._path}: {describe_error(exc)}"
            raise AuditError(message) from exc
        self._head_stale = False

    def _fail_pending(self, batch: list[_Pending]) -> None:
        pending_items = list(batch)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                pending_items.append(item)
        for pending in pending_items:
            if not pending.future.done():
                pending.future.set_exception(
                    AuditError(f"audit writer of {self._path} stopped; the record was not stored")
                )
