"""The SQLite audit store: group commits in a writer thread with its own connection.

`SQLiteAuditStore` is the store of a single gateway process, in one file of its data
folder. It runs each group commit as one function in a `WriterThread`, and it keeps
in memory the subject keys and the span rows that it committed, so that most commits
need no query for them. `gateway.audit.store` has the machinery that it shares with
the PostgreSQL store.
"""

from __future__ import annotations

import functools
import logging
import secrets
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.audit.anchor import CheckpointAnchor
from gateway.audit.chain import GENESIS_HASH
from gateway.audit.checkpoint_writer import CheckpointWriter, check_newest_checkpoint
from gateway.audit.keys import CheckpointKey
from gateway.audit.migrate import upgrade_schema
from gateway.audit.schema import (
    audit_record,
    audit_subject,
    audit_subject_key,
    audit_subject_span,
    subject_span,
)
from gateway.audit.sqlite import (
    WriterThread,
    begin_immediate,
    check_pragmas,
    describe_error,
    set_writer_pragmas,
    sqlite_url,
)
from gateway.audit.store import (
    DEFAULT_CHECKPOINT_INTERVAL,
    GroupCommitStore,
    LinkedRecord,
    PendingAppend,
    PreparedEvent,
    check_commit_delay,
    check_head,
    check_open_arguments,
    link_events,
    read_head,
)
from gateway.audit.subject_keys import SUBJECT_KEY_BYTES
from gateway.errors import AuditError

logger = logging.getLogger(__name__)

_READ_HEAD = (
    f"SELECT seq, body, prev_hash, hash FROM {audit_record.name} ORDER BY seq DESC LIMIT 1"
)
_INSERT_RECORD = (
    f"INSERT INTO {audit_record.name} "
    "(seq, time, request_id, actor, purpose, outcome, body, prev_hash, hash) VALUES "
)
_INSERT_SUBJECT = f"INSERT INTO {audit_subject.name} (seq, ref) VALUES "
_INSERT_SPAN = f"INSERT OR IGNORE INTO {audit_subject_span.name} (ref, span) VALUES "
# Maximum rows in one INSERT: a power of two, at most 999 parameters (the limit of SQLite
# before 3.32) for 9 columns.
_ROWS_PER_INSERT = 64
# Maximum number of refs that a store remembers as committed for the newest span.
# Past it, the store empties that set and lets INSERT OR IGNORE skip the rows that exist.
_KNOWN_SPANS_SIZE = 65_536
_INSERT_SUBJECT_KEY = f"INSERT INTO {audit_subject_key.name} (ref, key) VALUES (?, ?)"
# SQLite before 3.32 allows at most 999 parameters in one statement.
_REFS_PER_QUERY = 500


@functools.lru_cache(maxsize=64)
def _multi_row_insert(prefix: str, width: int, rows: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return prefix + ", ".join([row] * rows)


def _insert_rows(
    connection: sqlite3.Connection, prefix: str, rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert ``rows`` with the INSERT that starts with ``prefix``, many rows a statement.

    executemany steps and resets its statement once per row, where one multi-row INSERT
    binds all values and steps once. Statements carry `_ROWS_PER_INSERT` rows and the
    rest in powers of two, so at most 7 statement texts per prefix reach the driver's
    statement cache.
    """
    start = 0
    while start < len(rows):
        left = len(rows) - start
        count = _ROWS_PER_INSERT if left >= _ROWS_PER_INSERT else 1 << (left.bit_length() - 1)
        chunk = rows[start:start + count]
        connection.execute(_multi_row_insert(prefix, len(chunk[0]), count),
                           [value for row in chunk for value in row])
        start += count


def _load_subject_keys(
    connection: sqlite3.Connection, refs: set[str], known: Mapping[str, bytes]
) -> tuple[Mapping[str, bytes], dict[str, bytes]]:
    """Do what `load_subject_keys` does, on a sqlite3 connection inside its transaction.

    Returns a mapping with the key of every ref in ``refs``, and the keys that
    ``known`` lacks (read or created here), which the caller may add to ``known``.
    When ``known`` has every key, as on a gateway that names the same subjects again,
    the mapping is ``known`` itself and nothing is copied.
    """
    if known.keys() >= refs:
        return known, {}
    missing = sorted(refs - known.keys())
    new: dict[str, bytes] = {}
    for start in range(0, len(missing), _REFS_PER_QUERY):
        chunk = missing[start:start + _REFS_PER_QUERY]
        placeholders = ", ".join("?" * len(chunk))
        rows = connection.execute(
            f"SELECT ref, key FROM {audit_subject_key.name} WHERE ref IN ({placeholders})",
            chunk,
        )
        new.update((str(ref), bytes(key)) for ref, key in rows)

    created = [(ref, secrets.token_bytes(SUBJECT_KEY_BYTES)) for ref in missing if ref not in new]
    if created:
        connection.executemany(_INSERT_SUBJECT_KEY, created)
        new.update(created)
    keys = {ref: known[ref] for ref in refs if ref in known}
    keys.update(new)
    return keys, new


class SQLiteAuditStore(GroupCommitStore):
    """An `AuditStore` in one SQLite file.

    Several store objects, in this process or others, may append to one file: each
    commit reads the head inside ``BEGIN IMMEDIATE``, and a writer waits up to the
    driver's 5 s busy timeout for another's commit. Only one gateway serves a data
    folder, so the others are short-lived CLI commands that record their own operation.

    Group commits run on a connection of their own in a `WriterThread`, one thread
    round trip per commit. Checkpoints and head reloads use the engine.
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
        """Wrap an opened engine. Use `open`, which migrates and reads the head."""
        # Set before the base class starts the writer task, which uses it.
        self._thread = WriterThread(path)
        # (seq, body, prev_hash, hash) of the last record that this store committed.
        self._last_written: tuple[int, str, str, str] | None = None
        # The refs that this store committed to audit_subject_span for span
        # _known_span. Seqs only grow, so an older span gets no rows from this store
        # again. Only the writer thread reads and changes these two.
        self._known_span = -1
        self._known_refs: set[str] = set()
        super().__init__(engine, str(path), head, max_batch, checkpoints, checkpoint_interval)

    async def _insert_batch(
        self, batch: list[PendingAppend]
    ) -> tuple[int, str, dict[str, bytes]]:
        """Chain ``batch`` onto the head that the file holds, in one call in the writer thread.

        Of the subject keys, it returns only those that the key cache lacked.
        """
        events = [pending.event for pending in batch]
        return await self._thread.run(functools.partial(self._commit_in_thread, events))

    def _commit_in_thread(
        self, events: list[PreparedEvent], connection: sqlite3.Connection
    ) -> tuple[int, str, dict[str, bytes]]:
        """Do what `GroupCommitStore._insert_batch` does, with the sqlite3 driver directly.

        Runs in the writer thread while the writer task waits for it, so it may read the
        key cache and use the sealer, which only that task touches otherwise.
        """
        connection.execute("BEGIN IMMEDIATE")
        try:
            head_seq, head_hash = 0, GENESIS_HASH
            row = connection.execute(_READ_HEAD).fetchone()
            if row is not None:
                seq, body, prev_hash, stored_hash = row
                head_seq, head_hash = seq, stored_hash
                # check_head depends only on these four values, and this store computed
                # the hash of its own last record from them, so only other values are
                # checked. That skips decoding and hashing the head's body per commit.
                if row != self._last_written:
                    check_head(seq, body, prev_hash, stored_hash, self._location)
            keys, new_keys = _load_subject_keys(
                connection, set().union(*[prepared.refs for prepared in events]),
                self._subject_keys,
            )
            linked = link_events(events, head_seq, head_hash, keys, self._sealer)
            _insert_rows(connection, _INSERT_RECORD, [
                (record.seq, *record.columns, record.body, record.prev_hash, record.hash)
                for record in linked
            ])
            _insert_rows(connection, _INSERT_SUBJECT,
                         [(record.seq, ref) for record in linked for ref in record.refs])
            spans = self._new_spans(linked)
            _insert_rows(connection, _INSERT_SPAN,
                         [(ref, span) for span, refs in spans.items() for ref in refs])
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

        self._remember_spans(spans, subject_span(linked[-1].seq))
        last = linked[-1]
        self._last_written = (last.seq, last.body, last.prev_hash, last.hash)
        return head_seq + 1, last.hash, new_keys

    def _new_spans(self, linked: list[LinkedRecord]) -> dict[int, set[str]]:
        """Return, per span, the refs that ``linked`` names and this store has not committed."""
        spans: dict[int, set[str]] = {}
        for record in linked:
            if record.refs:
                spans.setdefault(subject_span(record.seq), set()).update(record.refs)
        known = spans.get(self._known_span)
        if known is not None:
            known -= self._known_refs
        return spans

    def _remember_spans(self, committed: dict[int, set[str]], newest: int) -> None:
        """Add the refs committed for span ``newest`` to those that need no insert."""
        if newest != self._known_span or len(self._known_refs) >= _KNOWN_SPANS_SIZE:
            self._known_span = newest
            self._known_refs = set()
        self._known_refs.update(committed.get(newest, ()))

    async def _release(self) -> None:
        try:
            await self._thread.close()
        finally:
            await super()._release()

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
        commit_delay: float = 0.0,
        commit_siblings: int = 1,
    ) -> SQLiteAuditStore:
        """Open or create the store at ``path`` and start its writer task.

        Creates or migrates the tables (`gateway.audit.migrate`) and continues the chain
        after the last stored record. The directory must exist. With ``checkpoint_key``,
        the writer signs a checkpoint every ``checkpoint_interval`` seconds while new
        records exist and at `close`, and publishes each to ``anchors`` before it saves
        it. ``clock`` returns the time written into checkpoints (default: now).
        ``commit_delay`` and ``commit_siblings`` go to `set_commit_delay` (default: off).

        Raises AuditError if the file cannot be opened or set to WAL, and
        AuditIntegrityError if the last record does not verify or the log is shorter than,
        or differs from, its newest checkpoint.
        """
        check_open_arguments(max_batch, checkpoint_interval)
        check_commit_delay(commit_delay, commit_siblings)
        if not path.parent.is_dir():
            raise AuditError(f"directory {path.parent} of audit store {path} not found; create it")

        engine = create_async_engine(sqlite_url(path), hide_parameters=True)
        event.listen(engine.sync_engine, "connect", set_writer_pragmas)
        begin_immediate(engine)
        try:
            async with engine.begin() as connection:
                await check_pragmas(connection, path)
                await connection.run_sync(upgrade_schema)
                head = await read_head(connection, str(path))
                checkpointed = await check_newest_checkpoint(connection, head[0], str(path))
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
        store = cls(engine, path, head, max_batch, writer, checkpoint_interval)
        store.set_commit_delay(commit_delay, commit_siblings)
        return store
