"""The audit store: an append-only, hash-chained log of audit records in SQLite.

The gateway releases a response only after its audit record is committed, so `append`
returns only after the commit. Concurrent requests share commits (group commit). One
writer task takes every pending event, up to ``max_batch``, and inserts them in one
transaction. Opened with a checkpoint key, the same task also signs a checkpoint of the
committed head every ``checkpoint_interval`` seconds while new records exist, and at
`close`. Each subject's pseudonym is sealed in the record body with that subject's key,
which is created in the same transaction as its first record (see
`gateway.audit.subject_keys`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import event, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.audit.anchor import CheckpointAnchor
from gateway.audit.chain import GENESIS_HASH, chain_hash, is_chain_hash
from gateway.audit.checkpoint import Checkpoint
from gateway.audit.checkpoint_writer import CheckpointWriter, check_newest_checkpoint
from gateway.audit.keys import CheckpointKey
from gateway.audit.record import AdminEvent, AuditEvent, canonical_json, validate_event
from gateway.audit.schema import (
    audit_checkpoint,
    audit_record,
    audit_subject,
    audit_subject_key,
    metadata,
)
from gateway.audit.sqlite import (
    check_pragmas,
    describe_error,
    open_reader_engine,
    set_writer_pragmas,
    sqlite_url,
)
from gateway.audit.subject_keys import load_subject_keys, seal_subjects
from gateway.errors import AuditError, AuditIntegrityError

logger = logging.getLogger(__name__)

# Re-exported: verify, export and the tests import these names from this module.
__all__ = [
    "AuditStore",
    "SQLiteAuditStore",
    "audit_checkpoint",
    "audit_record",
    "audit_subject",
    "audit_subject_key",
    "describe_error",
    "metadata",
    "open_reader_engine",
    "sqlite_url",
]

DEFAULT_CHECKPOINT_INTERVAL = 60.0
# Subject keys kept in memory to save a query per commit. The cache is emptied when it
# grows past this, about 100 bytes an entry.
_SUBJECT_KEY_CACHE_SIZE = 50_000


class AuditStore(Protocol):
    """Durable storage for audit records."""

    async def append(self, event: AuditEvent | AdminEvent) -> int:
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


@dataclass
class _CheckpointRequest:
    future: asyncio.Future[Checkpoint | None]


def _subject_refs(batch: list[_Pending]) -> set[str]:
    return {
        subject["ref"] for pending in batch for subject in pending.event.get("subjects", [])
    }


class _Signal:
    """A queue item that only wakes the writer task."""

    def __init__(self, name: str) -> None:
        self.name = name


# close() sends _STOP after the last event. The checkpoint timer sends _TICK.
_STOP = _Signal("stop")
_TICK = _Signal("tick")
_Control = _CheckpointRequest | _Signal


class SQLiteAuditStore:
    """An `AuditStore` in one SQLite file, with group commit and signed checkpoints.

    Use one store object per file. A second writer, in this process or another, cannot
    fork the chain because ``seq`` is the primary key, but the two writers make each
    other's commits fail.

    ``commits`` counts the successful commits since open. It is smaller than the number
    of appends whenever appends share a commit.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        path: Path,
        head: tuple[int, str],
        max_batch: int,
        checkpoints: CheckpointWriter | None = None,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
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
        self._queue: asyncio.Queue[_Pending | _Control] = asyncio.Queue()
        self._checkpoints = checkpoints
        self._checkpoint_interval = checkpoint_interval
        # Only committed keys enter the cache. Safe while this store is the only writer,
        # because forget runs only while no gateway has locked the data folder.
        self._subject_keys: dict[str, bytes] = {}
        self._loop = asyncio.get_running_loop()
        self._last_checkpoint_at = self._loop.time()
        self._tick: asyncio.TimerHandle | None = None
        self._writer = asyncio.create_task(self._run_writer(), name=f"audit-writer {path}")
        # Records left unchecked by a previous run get their checkpoint after one interval.
        self._schedule_tick()

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        max_batch: int = 256,
        checkpoint_key: CheckpointKey | None = None,
        anchors: Sequence[CheckpointAnchor] = (),
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        clock: Callable[[], datetime] | None = None,
    ) -> SQLiteAuditStore:
        """Open or create the store at ``path`` and start its writer task.

        Creates the tables if they are missing and continues the chain after the last
        stored record. The directory must exist. With ``checkpoint_key``, the writer signs
        a checkpoint every ``checkpoint_interval`` seconds while new records exist and at
        `close`, and publishes each to ``anchors`` before it saves it. ``clock`` returns
        the time written into checkpoints (default: now).

        Raises AuditError if the file cannot be opened or set to WAL, and
        AuditIntegrityError if the last record does not verify or the log is shorter than,
        or differs from, its newest checkpoint.
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if not checkpoint_interval > 0:
            raise ValueError(f"checkpoint_interval must be positive, not {checkpoint_interval}")
        if not path.parent.is_dir():
            raise AuditError(f"directory {path.parent} of audit store {path} not found; create it")

        engine = create_async_engine(sqlite_url(path), hide_parameters=True)
        event.listen(engine.sync_engine, "connect", set_writer_pragmas)
        try:
            async with engine.begin() as connection:
                await check_pragmas(connection, path)
                await connection.run_sync(metadata.create_all)
                head = await _read_head(connection, path)
                checkpointed = await check_newest_checkpoint(connection, head[0], path)
        except SQLAlchemyError as exc:
            await engine.dispose()
            raise AuditError(f"cannot open audit store {path}: {describe_error(exc)}") from exc
        except AuditError:
            await engine.dispose()
            raise

        writer = None
        if checkpoint_key is not None:
            writer = CheckpointWriter(checkpoint_key, anchors, clock, checkpointed)
        logger.info("opened audit store %s at seq %d", path, head[0])
        return cls(engine, path, head, max_batch, writer, checkpoint_interval)

    async def append(self, event: AuditEvent | AdminEvent) -> int:
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

    async def checkpoint(self) -> Checkpoint | None:
        """Sign a checkpoint now, after committing the events appended before this call.

        Returns None if no record was committed since the newest checkpoint. Raises
        AuditError if the store has no checkpoint key, is closed, or the checkpoint could
        not be anchored or saved.
        """
        if self._checkpoints is None:
            raise AuditError(
                f"audit store {self._path} was opened without a checkpoint key; "
                "pass checkpoint_key to open"
            )
        if self._closed:
            raise AuditError(f"audit store {self._path} is closed; open it again to checkpoint")
        future: asyncio.Future[Checkpoint | None] = self._loop.create_future()
        self._queue.put_nowait(_CheckpointRequest(future))
        return await future

    async def healthy(self) -> bool:
        """Return False after a failed commit until a later commit succeeds, or once closed.

        This reads no file, so a disk that failed after the last commit shows only at
        the next append. A failed checkpoint does not count: it is logged and retried.
        """
        return self._healthy and not self._closed and not self._writer.done()

    async def close(self) -> None:
        """Commit the events appended before this call, write a final checkpoint if the
        store has a checkpoint key, stop the writer and dispose the engine."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_STOP)
        try:
            await self._writer
        finally:
            self._cancel_tick()
            if not self._engine_disposed:
                self._engine_disposed = True
                await self._engine.dispose()
                logger.info("closed audit store %s at seq %d", self._path, self._head_seq)

    async def _run_writer(self) -> None:
        batch: list[_Pending] = []
        try:
            while True:
                batch, control = await self._next_batch()
                if batch:
                    await self._commit_batch(batch)
                batch = []
                if control is _STOP:
                    await self._write_checkpoint_logged("at close")
                    return
                if control is _TICK:
                    self._tick = None
                    await self._write_checkpoint_logged("on interval")
                elif isinstance(control, _CheckpointRequest):
                    await self._answer_checkpoint_request(control)
        finally:
            # Reached with pending futures only if the task was cancelled, for example
            # when the event loop shut down without close().
            self._fail_pending(batch)

    async def _next_batch(self) -> tuple[list[_Pending], _Control | None]:
        """Wait for one item, then take the events already queued, up to max_batch.

        Returns the batch and the control item that ended it, if any.
        """
        batch: list[_Pending] = []
        item = await self._queue.get()
        while True:
            if not isinstance(item, _Pending):
                return batch, item
            batch.append(item)
            if len(batch) >= self._max_batch or self._queue.empty():
                return batch, None
            item = self._queue.get_nowait()

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            if self._head_stale:
                await self._reload_head()
            async with self._engine.begin() as connection:
                keys = await load_subject_keys(
                    connection, _subject_refs(batch), self._subject_keys
                )
                records, subjects, last_hash = self._build_rows(batch, keys)
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
        if len(self._subject_keys) + len(keys) > _SUBJECT_KEY_CACHE_SIZE:
            self._subject_keys.clear()
        self._subject_keys.update(keys)
        if not self._healthy:
            logger.info("audit store %s commits again from seq %d", self._path, first_seq)
        self._healthy = True
        for offset, pending in enumerate(batch):
            if not pending.future.done():
                pending.future.set_result(first_seq + offset)
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        """Start the checkpoint timer unless it runs or every committed record is covered."""
        if self._checkpoints is None or self._tick is not None or self._closed:
            return
        if self._head_seq <= self._checkpoints.size:
            return
        delay = max(0.0, self._last_checkpoint_at + self._checkpoint_interval - self._loop.time())
        self._tick = self._loop.call_later(delay, self._queue.put_nowait, _TICK)

    def _cancel_tick(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None

    async def _write_checkpoint(self) -> Checkpoint | None:
        if self._checkpoints is None:
            return None
        if self._head_stale:
            await self._reload_head()
        self._last_checkpoint_at = self._loop.time()
        try:
            return await self._checkpoints.write(self._engine, self._head_seq, self._head_hash)
        except SQLAlchemyError as exc:
            message = f"cannot save a checkpoint in audit store {self._path}: {describe_error(exc)}"
            raise AuditError(message) from exc

    async def _write_checkpoint_logged(self, when: str) -> None:
        try:
            await self._write_checkpoint()
        except Exception as exc:
            # Any error, a bug included, must not stop the writer task. The records stay
            # committed, and the next interval or close tries again.
            logger.error(
                "audit checkpoint %s of seq %d in %s failed: %s",
                when,
                self._head_seq,
                self._path,
                describe_error(exc),
            )
        self._schedule_tick()

    async def _answer_checkpoint_request(self, request: _CheckpointRequest) -> None:
        try:
            result = await self._write_checkpoint()
        except Exception as exc:
            # A bug must fail this request, not stop the writer task.
            error = exc if isinstance(exc, AuditError) else AuditError(
                f"audit checkpoint in {self._path} failed: {describe_error(exc)}"
            )
            if not request.future.done():
                request.future.set_exception(error)
        else:
            if not request.future.done():
                request.future.set_result(result)
        self._schedule_tick()

    def _build_rows(
        self, batch: list[_Pending], keys: dict[str, bytes]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
        """Chain the batch onto the head. Returns record rows, subject rows and the last hash.

        The body contains each subject's pseudonym sealed with the subject's key from
        ``keys``, and the subject rows index the pseudonym itself.
        """
        records: list[dict[str, Any]] = []
        subjects: list[dict[str, Any]] = []
        seq = self._head_seq
        prev_hash = self._head_hash
        for pending in batch:
            seq += 1
            event_copy = pending.event
            event_subjects = event_copy.get("subjects", [])
            sealed = {}
            if "subjects" in event_copy:
                sealed = {"subjects": seal_subjects(event_subjects, keys, seq)}
            body = canonical_json({**event_copy, **sealed, "seq": seq, "prev_hash": prev_hash})
            record_hash = chain_hash(prev_hash, seq, body)
            records.append(
                {
                    "seq": seq,
                    "time": event_copy["time"],
                    "request_id": event_copy["request_id"],
                    "actor": event_copy["actor"],
                    "purpose": event_copy.get("purpose"),
                    "outcome": event_copy["outcome"],
                    "body": body.decode("utf-8"),
                    "prev_hash": prev_hash,
                    "hash": record_hash,
                }
            )
            refs = sorted({subject["ref"] for subject in event_subjects})
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
            if isinstance(item, _Pending):
                pending_items.append(item)
            elif isinstance(item, _CheckpointRequest) and not item.future.done():
                item.future.set_exception(
                    AuditError(f"audit writer of {self._path} stopped; no checkpoint was written")
                )
        for pending in pending_items:
            if not pending.future.done():
                pending.future.set_exception(
                    AuditError(f"audit writer of {self._path} stopped; the record was not stored")
                )
