"""The audit store: an append-only, hash-chained log of audit records.

The gateway releases a response only after its audit record is committed, so `append`
returns only after the commit. Concurrent requests share commits (group commit). One
writer task takes every pending event, up to ``max_batch``, and inserts them in one
transaction. Opened with a checkpoint key, the same task also signs a checkpoint of the
committed head every ``checkpoint_interval`` seconds while new records exist, and at
`close`. Each subject's pseudonym is sealed in the record body with that subject's key,
which is created in the same transaction as its first record (see
`gateway.audit.subject_keys`).

`GroupCommitStore` is that machinery. Both stores read the chain head inside the write
transaction on every commit, under the database's write lock: ``BEGIN IMMEDIATE`` on
SQLite and an advisory lock on PostgreSQL. So another process can append between two
commits, as the CLI does when it records an export while a gateway runs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.chain import GENESIS_HASH, chain_hash, is_chain_hash, next_chain_hash
from gateway.audit.checkpoint import Checkpoint
from gateway.audit.checkpoint_writer import CheckpointWriter
from gateway.audit.migrate import lock_postgres
from gateway.audit.record import (
    AdminEvent,
    AuditEvent,
    canonical_json,
    check_subject_types,
    validate_event,
)
from gateway.audit.schema import (
    audit_checkpoint,
    audit_record,
    audit_subject,
    audit_subject_key,
    audit_subject_span,
    metadata,
    subject_span,
)
from gateway.audit.sqlite import (
    describe_error,
    open_reader_engine,
    sqlite_url,
)
from gateway.audit.subject_keys import SubjectSealer, load_subject_keys
from gateway.errors import AuditError, AuditIntegrityError

logger = logging.getLogger(__name__)

# Re-exported: verify, export and the tests import these names from this module.
__all__ = [
    "AuditStore",
    "audit_checkpoint",
    "audit_record",
    "audit_subject",
    "audit_subject_key",
    "audit_subject_span",
    "describe_error",
    "metadata",
    "open_reader_engine",
    "sqlite_url",
]

DEFAULT_CHECKPOINT_INTERVAL = 60.0
# Event loop turns that the writer waits for more events before a commit (see
# GroupCommitStore._next_batch).
_GATHER_TURNS = 4
# The maximum commit delay that set_commit_delay accepts, in seconds, which is also
# PostgreSQL's maximum for its commit_delay. Every audited response may wait this long.
MAX_COMMIT_DELAY = 0.1
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

    async def append_prepared(
        self, prepared: PreparedEvent, expected: ExpectedAppend | None = None
    ) -> int:
        """Store an event that was validated and encoded before, as `append` does.

        ``expected`` is the handle that `expect_append` gave the caller, if any.
        """
        ...

    def expect_append(self) -> ExpectedAppend:
        """Count the caller as about to append, until it appends or withdraws."""
        ...

    @property
    def expected_appends(self) -> int:
        """The callers counted by `expect_append` that have neither appended nor withdrawn."""
        ...

    async def healthy(self) -> bool:
        """Return False while the store cannot be expected to accept records."""
        ...

    async def close(self) -> None:
        """Store the pending records, then release the store's resources."""
        ...


async def read_head(connection: AsyncConnection, location: str) -> tuple[int, str]:
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
    return check_head(seq, body, prev_hash, stored_hash, location)


def check_head(
    seq: int, body: str, prev_hash: str, stored_hash: str, location: str
) -> tuple[int, str]:
    """Return the seq and hash of the last record read from ``location``, if it verifies.

    Raises AuditIntegrityError if it does not.
    """
    if not _head_verifies(seq, body, prev_hash, stored_hash):
        raise AuditIntegrityError(
            f"last audit record {seq} in {location} does not verify; run the audit verifier "
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
class PendingAppend:
    """An event in the writer's queue and the future that receives its seq."""

    event: PreparedEvent
    future: asyncio.Future[int]


class ExpectedAppend:
    """A request counted as about to append a record, from `expect_append`.

    The request passes it to `append_prepared`, which stops the count. A request that
    will not append after all calls `withdraw`. Both may happen; the count drops once.
    """

    __slots__ = ("_store",)

    def __init__(self, store: GroupCommitStore) -> None:
        self._store: GroupCommitStore | None = store

    def withdraw(self) -> None:
        """Stop counting this request. Does nothing the second time."""
        store, self._store = self._store, None
        if store is not None:
            store._expected_done()


@dataclass
class _CheckpointRequest:
    future: asyncio.Future[Checkpoint | None]


def _subject_refs(batch: list[PendingAppend]) -> set[str]:
    return {ref for pending in batch for ref in pending.event.refs}


class _Signal:
    """A queue item that only wakes the writer task."""

    def __init__(self, name: str) -> None:
        self.name = name


# close() sends _STOP after the last event. The checkpoint timer sends _TICK.
_STOP = _Signal("stop")
_TICK = _Signal("tick")
_Control = _CheckpointRequest | _Signal


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def check_commit_delay(seconds: float, siblings: int) -> None:
    """Raise ValueError for arguments that `GroupCommitStore.set_commit_delay` rejects."""
    if not 0 <= seconds <= MAX_COMMIT_DELAY:
        raise ValueError(
            f"commit delay must be from 0 to {MAX_COMMIT_DELAY} seconds, not {seconds!r}")
    if siblings < 1:
        raise ValueError(f"commit siblings must be at least 1, not {siblings!r}")


def check_open_arguments(max_batch: int, checkpoint_interval: float) -> None:
    """Raise ValueError for a batch size or checkpoint interval that a store cannot use."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, not {max_batch}")
    if not checkpoint_interval > 0:
        raise ValueError(f"checkpoint_interval must be positive, not {checkpoint_interval}")


class GroupCommitStore:
    """An `AuditStore` with group commit and signed checkpoints, over an SQLAlchemy engine.

    Subclasses open the engine and may override `_insert_batch` and `_write_checkpoint`.
    ``commits`` counts the successful commits since open. It is smaller than the number
    of appends whenever appends share a commit.

    With `set_commit_delay`, a commit may wait a little for the records of requests
    that are still running, so that more records share it (see `_next_batch`).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        location: str,
        head: tuple[int, str],
        max_batch: int,
        checkpoints: CheckpointWriter | None = None,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
    ) -> None:
        """Wrap an opened engine. Use a subclass's `open`, which migrates and reads the head."""
        self.commits = 0
        self._engine = engine
        self._location = location
        self._head_seq, self._head_hash = head
        self._head_stale = False
        self._max_batch = max_batch
        # Off until set_commit_delay. _expected counts the requests that announced a
        # record with expect_append and have neither appended nor withdrawn.
        self._commit_delay = 0.0
        self._commit_siblings = 1
        self._expected = 0
        self._delay_waiter: asyncio.Future[None] | None = None
        self._healthy = True
        self._closed = False
        self._engine_disposed = False
        self._queue: asyncio.Queue[PendingAppend | _Control] = asyncio.Queue()
        self._checkpoints = checkpoints
        self._checkpoint_interval = checkpoint_interval
        # Only committed keys enter the cache. A key changes only when forget deletes it,
        # and forget runs only while no gateway holds the data folder's lock. The
        # PostgreSQL store does not use this cache.
        self._subject_keys: dict[str, bytes] = {}
        self._sealer = SubjectSealer(_SUBJECT_KEY_CACHE_SIZE)
        self._loop = asyncio.get_running_loop()
        self._last_checkpoint_at = self._loop.time()
        self._tick: asyncio.TimerHandle | None = None
        self._writer = asyncio.create_task(self._run_writer(), name=f"audit-writer {location}")
        # Records left unchecked by a previous run get their checkpoint after one interval.
        self._schedule_tick()

    @property
    def expected_appends(self) -> int:
        """The requests that announced a record with `expect_append` and not yet appended it."""
        return self._expected

    @property
    def location(self) -> str:
        """The file path or URL of the store, with any password hidden."""
        return self._location

    async def append(self, event: AuditEvent | AdminEvent) -> int:
        """Store ``event`` as the next record and return its seq once the commit is durable.

        Raises AuditError if the event is invalid, the store is closed or the commit
        failed. The caller must then treat the record as not stored. If the caller is
        cancelled while it waits, the record may still be committed.
        """
        if self._closed:
            raise AuditError(f"audit store {self._location} is closed; open it again to append")
        try:
            validate_event(event)
            # Encoded now, so that a caller changing the event later cannot change the
            # record.
            prepared = prepare_event(event)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"invalid audit event: {exc}") from exc
        return await self.append_prepared(prepared)

    async def append_prepared(
        self, prepared: PreparedEvent, expected: ExpectedAppend | None = None
    ) -> int:
        """Store an event that `prepare_event` or `prepare_request` encoded, as `append` does.

        The caller vouches that the event was valid, because nothing here checks it again.
        ``expected`` is the caller's handle from `expect_append`, which this withdraws.
        """
        if expected is not None:
            expected.withdraw()
        if self._closed:
            raise AuditError(f"audit store {self._location} is closed; open it again to append")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(PendingAppend(prepared, future))
        return await future

    def set_commit_delay(self, seconds: float, siblings: int) -> None:
        """Let a commit wait up to ``seconds`` for records that running requests announced.

        The writer waits only while at least ``siblings`` requests have announced a
        record with `expect_append` and not yet appended it, and stops waiting as soon
        as none is left. A busy gateway then commits more records per transaction,
        each paying a smaller share of the commit's fixed cost (the write lock, the
        head, the sync to disk), while one with fewer than ``siblings`` such requests
        never waits. PostgreSQL delays its WAL flush on the same condition, by
        ``commit_delay`` (at most 100 ms) when at least ``commit_siblings`` other
        transactions are active, but always for the whole delay (PostgreSQL
        documentation, "Write Ahead Log" settings). 0 seconds turns the delay off, as
        it is when a store opens.

        Raises ValueError for a delay outside 0 to `MAX_COMMIT_DELAY` seconds or fewer
        than 1 sibling.
        """
        check_commit_delay(seconds, siblings)
        self._commit_delay = float(seconds)
        self._commit_siblings = siblings

    def expect_append(self) -> ExpectedAppend:
        """Count the caller as a request that will append a record soon.

        Pass the handle to `append_prepared`, or call its `withdraw` if the request ends
        without a record. Only the commit delay reads the count.
        """
        self._expected += 1
        return ExpectedAppend(self)

    def _expected_done(self) -> None:
        self._expected -= 1
        if self._expected == 0 and self._delay_waiter is not None:
            _wake(self._delay_waiter)

    async def checkpoint(self) -> Checkpoint | None:
        """Sign a checkpoint now, after committing the events appended before this call.

        Returns None if no record was committed since the newest checkpoint. Raises
        AuditError if the store has no checkpoint key, is closed, or the checkpoint could
        not be anchored or saved.
        """
        if self._checkpoints is None:
            raise AuditError(
                f"audit store {self._location} was opened without a checkpoint key; "
                "pass checkpoint_key to open"
            )
        if self._closed:
            raise AuditError(f"audit store {self._location} is closed; open it again to checkpoint")
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
            if self._delay_waiter is not None:
                _wake(self._delay_waiter)
        try:
            await self._writer
        finally:
            self._cancel_tick()
            if not self._engine_disposed:
                self._engine_disposed = True
                await self._release()
                logger.info("closed audit store %s at seq %d", self._location, self._head_seq)

    async def _release(self) -> None:
        """Release the connections, once the writer task has ended."""
        await self._engine.dispose()

    async def _run_writer(self) -> None:
        batch: list[PendingAppend] = []
        try:
            while True:
                control = await self._next_batch(batch)
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

    async def _next_batch(self, batch: list[PendingAppend]) -> _Control | None:
        """Wait for one item, then add the events queued meanwhile to ``batch``, up to max_batch.

        When the queue is empty, the writer lets the event loop run up to
        `_GATHER_TURNS` more times, and takes what those turns appended, stopping at
        the first turn that appended nothing. Requests that are about to append then
        share this commit instead of paying for one of their own, and an idle gateway
        waits only one turn. With a commit delay set, and enough requests that
        announced a record, the writer then waits once more, up to the delay or until
        none of them is left (see `set_commit_delay`). Returns the control item that
        ended the batch, if any. ``batch`` belongs to the caller, so that the events in
        it fail, rather than wait forever, if the writer is cancelled during the delay.
        """
        turns = 0
        delayed = False
        item = await self._queue.get()
        while True:
            if not isinstance(item, PendingAppend):
                return item
            batch.append(item)
            if len(batch) >= self._max_batch:
                return None
            if self._queue.empty() and turns < _GATHER_TURNS:
                turns += 1
                await asyncio.sleep(0)
            if self._queue.empty():
                if delayed or not self._should_delay():
                    return None
                delayed = True
                await self._wait_for_expected()
                if self._queue.empty():
                    return None
            item = self._queue.get_nowait()

    def _should_delay(self) -> bool:
        return self._commit_delay > 0 and self._expected >= self._commit_siblings

    async def _wait_for_expected(self) -> None:
        """Wait until the commit delay has passed or no announced record is left."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        timer = self._loop.call_later(self._commit_delay, _wake, waiter)
        self._delay_waiter = waiter
        try:
            await waiter
        finally:
            timer.cancel()
            self._delay_waiter = None

    async def _commit_batch(self, batch: list[PendingAppend]) -> None:
        try:
            if self._head_stale:
                await self._reload_head()
            first_seq, last_hash, keys = await self._insert_batch(batch)
        except Exception as exc:
            # Catch every error, a bug included, so that only this batch fails. If the
            # writer task died, every later append would wait forever.
            await self._fail_batch(batch, exc)
            return

        self._head_seq = first_seq + len(batch) - 1
        self._head_hash = last_hash
        self.commits += 1
        self._cache_subject_keys(batch, keys)
        if not self._healthy:
            logger.info("audit store %s commits again from seq %d", self._location, first_seq)
        self._healthy = True
        for offset, pending in enumerate(batch):
            if not pending.future.done():
                pending.future.set_result(first_seq + offset)
        self._schedule_tick()

    async def _insert_batch(
        self, batch: list[PendingAppend]
    ) -> tuple[int, str, dict[str, bytes]]:
        """Chain ``batch`` onto the head that the database holds, in one write transaction.

        Returns the first seq, the last hash and subject keys for the key cache: every
        key that sealed the batch and that the cache lacked, or more (the PostgreSQL
        store, which does not read the cache, returns none). The head is read
        inside the transaction instead of taken from memory, so that another process
        may append between two commits of this store without forking the chain. The
        engine must make the transaction take the write lock at its start (``BEGIN
        IMMEDIATE`` on SQLite).
        """
        async with self._engine.begin() as connection:
            head_seq, head_hash = await read_head(connection, self._location)
            keys = await load_subject_keys(
                connection, _subject_refs(batch), self._subject_keys
            )
            records, subjects, last_hash = build_rows(
                [pending.event for pending in batch], head_seq, head_hash, keys, self._sealer
            )
            await insert_rows(connection, records, subjects)
        return head_seq + 1, last_hash, keys

    def _cache_subject_keys(self, batch: list[PendingAppend], keys: dict[str, bytes]) -> None:
        """Add the committed ``keys`` to the cache, so that the next batches need no query.

        ``keys`` are those that `_insert_batch` returned. A cache that would grow past
        its size starts again from the keys of ``batch``, the subjects named last.
        """
        cache = self._subject_keys
        if len(cache) + len(keys) > _SUBJECT_KEY_CACHE_SIZE:
            batch_keys = {ref: cache[ref] for ref in _subject_refs(batch) if ref in cache}
            cache.clear()
            cache.update(batch_keys)
        cache.update(keys)

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
        """Sign the head that the database holds, under the write lock, unless it is covered."""
        if self._checkpoints is None:
            return None
        self._last_checkpoint_at = self._loop.time()
        try:
            async with self._engine.begin() as connection:
                await connection.run_sync(lock_postgres)
                head_seq, head_hash = await read_head(connection, self._location)
                if head_seq == 0:
                    return None
                return await self._checkpoints.write_in(connection, head_seq, head_hash)
        except (SQLAlchemyError, OSError) as exc:
            reason = describe_error(exc)
            message = f"cannot save a checkpoint in audit store {self._location}: {reason}"
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
                self._location,
                describe_error(exc),
            )
        self._schedule_tick()

    async def _answer_checkpoint_request(self, request: _CheckpointRequest) -> None:
        try:
            result = await self._write_checkpoint()
        except Exception as exc:
            # A bug must fail this request, not stop the writer task.
            error = exc if isinstance(exc, AuditError) else AuditError(
                f"audit checkpoint in {self._location} failed: {describe_error(exc)}"
            )
            if not request.future.done():
                request.future.set_exception(error)
        else:
            if not request.future.done():
                request.future.set_result(result)
        self._schedule_tick()

    async def _fail_batch(self, batch: list[PendingAppend], exc: Exception) -> None:
        self._healthy = False
        first_seq = self._head_seq + 1
        last_seq = self._head_seq + len(batch)
        reason = describe_error(exc)
        logger.error(
            "audit commit of seq %d-%d in %s failed: %s",
            first_seq,
            last_seq,
            self._location,
            reason,
        )
        for pending in batch:
            if pending.future.done():
                continue
            error = AuditError(f"audit commit to {self._location} failed: {reason}")
            error.__cause__ = exc
            pending.future.set_exception(error)

        # The commit may have reached the file even though it reported an error, or
        # another writer may have appended, so the head in memory cannot be trusted.
        try:
            await self._reload_head()
        except AuditError as reload_error:
            self._head_stale = True
            logger.error("audit store %s head reload failed: %s", self._location, reload_error)

    async def _reload_head(self) -> None:
        try:
            async with self._engine.connect() as connection:
                self._head_seq, self._head_hash = await read_head(connection, self._location)
        except SQLAlchemyError as exc:
            message = f"cannot read audit store {self._location}: {describe_error(exc)}"
            raise AuditError(message) from exc
        self._head_stale = False

    def _fail_pending(self, batch: list[PendingAppend]) -> None:
        pending_items = list(batch)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, PendingAppend):
                pending_items.append(item)
            elif isinstance(item, _CheckpointRequest) and not item.future.done():
                item.future.set_exception(AuditError(
                    f"audit writer of {self._location} stopped; no checkpoint was written"
                ))
        for pending in pending_items:
            if not pending.future.done():
                pending.future.set_exception(AuditError(
                    f"audit writer of {self._location} stopped; the record was not stored"
                ))


@dataclass(frozen=True)
class PreparedEvent:
    """A validated event, encoded once, with the values that the other columns copy.

    The record body is the canonical JSON of the event plus ``prev_hash`` and ``seq``,
    with each subject's pseudonym sealed. `prepare_event` encodes the event outside the
    writer's commit (and outside the PostgreSQL lock) into ``template``: the bytes
    between the values that are known only at commit. Those are ``prev_hash``, ``seq``
    and, for an `AuditEvent`, the sealed subjects, whose nonce depends on the seq.
    """

    columns: tuple[Any, ...]
    # (ref, type, JSON of the type) of each subject; None for an AdminEvent.
    subjects: tuple[tuple[str, str, bytes], ...] | None
    refs: tuple[str, ...]
    template: tuple[bytes, ...]

    def body(
        self, seq: int, prev_hash: str, keys: Mapping[str, bytes], sealer: SubjectSealer
    ) -> bytes:
        """Return the canonical JSON of the event with ``seq``, ``prev_hash`` and sealed subjects.

        ``keys`` maps each pseudonym in ``refs`` to its subject key.
        """
        template = self.template
        seq_text = b"%d" % seq
        if self.subjects is None:
            return template[0] + prev_hash.encode("ascii") + template[1] + seq_text + template[2]
        return (
            template[0] + prev_hash.encode("ascii") + template[1] + seq_text + template[2]
            + sealer.seal_subjects_json(self.subjects, keys, seq) + template[3]
        )


def prepare_event(event: AuditEvent | AdminEvent) -> PreparedEvent:
    """Encode a validated event for `link_events`.

    Raises ValueError if the event has a ``seq`` or ``prev_hash`` key of its own or lists
    a pseudonym under two types, and TypeError or ValueError if JSON cannot represent a
    value.
    """
    if "seq" in event or "prev_hash" in event:
        raise ValueError("audit event must not contain seq or prev_hash; the store sets them")
    columns = tuple(event.get(name) for name in _COPIED_COLUMNS)
    if "kind" in event:
        return PreparedEvent(columns, None, (), _template(event, with_subjects=False))

    check_subject_types([(subject["type"], subject["ref"]) for subject in event["subjects"]])
    subjects = tuple(
        (subject["ref"], subject["type"], _json_string(subject["type"]))
        for subject in event["subjects"]
    )
    refs = tuple(sorted({ref for ref, _kind, _kind_json in subjects}))
    return PreparedEvent(columns, subjects, refs, _template(event, with_subjects=True))


def _template(event: Mapping[str, Any], *, with_subjects: bool) -> tuple[bytes, ...]:
    template = _marked_template(event, with_subjects)
    if template is None:
        template = _body_template(event, with_subjects)
    return template


@functools.lru_cache(maxsize=64)
def _json_string(value: str) -> bytes:
    # A handful of subject types repeat in every event.
    return canonical_json(value)


# Marks for the values set at commit, for _marked_template. The random part makes a
# collision with a value of an event unlikely, and _marked_template checks that each
# mark occurs once, so a collision only costs the slower _body_template.
_MARK = "\x00" + secrets.token_hex(16)
_MARKS = {"prev_hash": _MARK + "p", "seq": _MARK + "s", "subjects": _MARK + "j"}
_ENCODED_MARKS = {name: json.dumps(mark) for name, mark in _MARKS.items()}


def _marked_template(event: Mapping[str, Any], with_subjects: bool) -> tuple[bytes, ...] | None:
    """Return the template of `_body_template` from one encoding of the whole event.

    The event is encoded with a mark in place of each value set at commit, and the
    text is split at the marks. With it, `prepare_event` took 14.7 us of CPU per
    event of bench/audit_throughput.py, against 17.4 us with the four encodings of
    `_body_template` (CPython 3.11.7). Returns None unless each mark it placed occurs
    exactly once in the text and the others do not occur.
    """
    names = ("prev_hash", "seq", "subjects") if with_subjects else ("prev_hash", "seq")
    marked = {**event, **{name: _MARKS[name] for name in names}}
    text = canonical_json(marked).decode("utf-8")
    for name, encoded in _ENCODED_MARKS.items():
        if text.count(encoded) != (1 if name in names else 0):
            return None

    pieces = []
    for name in names:
        before, _mark, text = text.partition(_ENCODED_MARKS[name])
        pieces.append(before)
    pieces.append(text)
    # The template keeps the quotes around the prev_hash value.
    pieces[0] += '"'
    pieces[1] = '"' + pieces[1]
    return tuple(piece.encode("utf-8") for piece in pieces)


def _body_template(event: Mapping[str, Any], with_subjects: bool) -> tuple[bytes, ...]:
    """Return the bytes of the body between the values set at commit.

    With sorted keys, the event's other keys fall into four runs: before
    ``prev_hash``, between it and ``seq``, between ``seq`` and ``subjects``, and after
    ``subjects``. The result has one more item than there are values: prev_hash, seq
    and, with subjects, the sealed subject list. Empty runs get no comma.
    """
    groups: list[dict[str, Any]] = [{}, {}, {}, {}]
    for key, value in event.items():
        if key == "subjects":
            continue
        if key < "prev_hash":
            groups[0][key] = value
        elif key < "seq":
            groups[1][key] = value
        elif key < "subjects":
            groups[2][key] = value
        else:
            groups[3][key] = value
    # canonical_json of each run without its braces; an empty run gives b"".
    runs = [canonical_json(group)[1:-1] for group in groups]

    pieces: list[bytes] = []
    current = b"{"
    first = True

    def add(text: bytes, *, ends_piece: bool) -> None:
        nonlocal current, first
        if not text:
            return
        current += text if first else b"," + text
        first = False
        if ends_piece:
            pieces.append(current)
            current = b""

    add(runs[0], ends_piece=False)
    add(b'"prev_hash":"', ends_piece=True)
    current = b'"'
    add(runs[1], ends_piece=False)
    add(b'"seq":', ends_piece=True)
    add(runs[2], ends_piece=False)
    if with_subjects:
        add(b'"subjects":', ends_piece=True)
    add(runs[3], ends_piece=False)
    pieces.append(current + b"}")
    return tuple(pieces)


# Columns of audit_record that copy body values, so that exports can filter in SQL.
# An AdminEvent has no purpose, so its purpose column is NULL.
_COPIED_COLUMNS = ("time", "request_id", "actor", "purpose", "outcome")


@dataclass
class LinkedRecord:
    """One record chained onto the head, with the values of every audit_record column."""

    seq: int
    columns: tuple[Any, ...]
    body: str
    prev_hash: str
    hash: str
    refs: tuple[str, ...]


def link_events(
    events: Sequence[PreparedEvent],
    head_seq: int,
    head_hash: str,
    keys: Mapping[str, bytes],
    sealer: SubjectSealer,
) -> list[LinkedRecord]:
    """Chain ``events`` onto the head, sealing subjects with ``keys``.

    The first record gets seq ``head_seq + 1`` and links to ``head_hash``, which must be
    a hash that `read_head` verified.
    """
    records: list[LinkedRecord] = []
    seq = head_seq
    prev_hash = head_hash
    for prepared in events:
        seq += 1
        body = prepared.body(seq, prev_hash, keys, sealer)
        record_hash = next_chain_hash(prev_hash, seq, body)
        records.append(LinkedRecord(
            seq, prepared.columns, body.decode("utf-8"), prev_hash, record_hash, prepared.refs
        ))
        prev_hash = record_hash
    return records


def build_rows(
    events: Sequence[PreparedEvent],
    head_seq: int,
    head_hash: str,
    keys: Mapping[str, bytes],
    sealer: SubjectSealer | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Chain ``events`` onto the head, as `link_events` does, and return insertable rows.

    Returns the record rows, the subject rows and the hash of the last record. The
    subject rows index the pseudonyms themselves, for search and for `forget`;
    `insert_rows` derives the rows of ``audit_subject_span`` from them.
    """
    linked = link_events(events, head_seq, head_hash, keys, sealer or SubjectSealer())
    records = [
        {
            "seq": record.seq,
            **dict(zip(_COPIED_COLUMNS, record.columns, strict=True)),
            "body": record.body,
            "prev_hash": record.prev_hash,
            "hash": record.hash,
        }
        for record in linked
    ]
    subjects = [{"seq": record.seq, "ref": ref} for record in linked for ref in record.refs]
    last_hash = linked[-1].hash if linked else head_hash
    return records, subjects, last_hash


async def insert_rows(
    connection: AsyncConnection, records: list[dict[str, Any]], subjects: list[dict[str, Any]]
) -> None:
    """Insert the rows that `build_rows` returned, in the caller's transaction.

    Also inserts the (ref, span) rows of ``audit_subject_span`` that do not exist yet.
    """
    await connection.execute(insert(audit_record), records)
    if not subjects:
        return
    await connection.execute(insert(audit_subject), subjects)
    spans = sorted({(row["ref"], subject_span(row["seq"])) for row in subjects})
    dialect = postgresql_dialect if connection.dialect.name == "postgresql" else sqlite_dialect
    await connection.execute(
        dialect.insert(audit_subject_span).on_conflict_do_nothing(),
        [{"ref": ref, "span": span} for ref, span in spans],
    )
