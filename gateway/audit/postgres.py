"""The audit store in PostgreSQL, for several gateway processes and hosts at once.

Every process runs its own group-commit writer. A commit takes the transaction-level
advisory lock ``pg_advisory_xact_lock(POSTGRES_LOCK_KEY)``, reads the head, chains the
batch onto it, inserts the rows and commits, which releases the lock. So the chain has
one head at a time: no two processes give out the same seq or link to the same
record. The seq primary key rejects a fork even if something bypassed the lock.
Checkpoints take the same lock, so one process signs at a time, and none signs a size
that a saved checkpoint covers already.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from gateway.audit.anchor import CheckpointAnchor
from gateway.audit.chain import GENESIS_HASH
from gateway.audit.checkpoint_writer import CheckpointWriter, check_newest_checkpoint
from gateway.audit.keys import CheckpointKey
from gateway.audit.migrate import POSTGRES_LOCK_KEY, upgrade_schema
from gateway.audit.schema import (
    SUBJECT_SPAN_RECORDS,
    audit_record,
    audit_subject,
    audit_subject_key,
    audit_subject_span,
)
from gateway.audit.sqlite import describe_error, open_reader_engine
from gateway.audit.store import (
    DEFAULT_CHECKPOINT_INTERVAL,
    GroupCommitStore,
    LinkedRecord,
    PendingAppend,
    check_commit_delay,
    check_head,
    check_open_arguments,
    link_events,
    read_head,
)
from gateway.audit.subject_keys import SUBJECT_KEY_BYTES
from gateway.errors import AuditError

logger = logging.getLogger(__name__)

# Larger than the SQLite default, because each commit here also waits for the lock and
# a round trip to read the head.
DEFAULT_MAX_BATCH = 1024
_DRIVER = "postgresql+asyncpg"


def postgres_url(value: str) -> URL:
    """Parse a PostgreSQL URL for the audit store and select the asyncpg driver.

    ``postgresql://`` and ``postgresql+asyncpg://`` are accepted. Raises ValueError
    naming the URL, with its password hidden, for anything else.
    """
    try:
        url = make_url(value)
    except ArgumentError as exc:
        raise ValueError(
            "audit store URL is not a database URL; use "
            "postgresql+asyncpg://USER@HOST:PORT/DATABASE"
        ) from exc
    if url.drivername not in ("postgresql", _DRIVER):
        masked_url = url.render_as_string(hide_password=True)
        raise ValueError(
            f"audit store URL {masked_url} is not a PostgreSQL URL; use "
            "postgresql+asyncpg://USER@HOST:PORT/DATABASE"
        )
    if not url.database:
        masked_url = url.render_as_string(hide_password=True)
        raise ValueError(f"audit store URL {masked_url} names no database; add /DATABASE")
    return url.set(drivername=_DRIVER)


def describe_url(url: URL) -> str:
    """Return ``url`` as text with its password hidden, for messages and logs."""
    return url.render_as_string(hide_password=True)


async def check_durable_commits(connection: AsyncConnection, location: str) -> None:
    """Raise AuditError if the server acknowledges commits before they are flushed.

    With ``synchronous_commit = off``, PostgreSQL reports a commit before its WAL is
    on disk, so a crash can lose records whose responses were sent.
    """
    setting = (await connection.exec_driver_sql("SHOW synchronous_commit")).scalar()
    if str(setting).lower() == "off":
        raise AuditError(
            f"audit store {location} runs with synchronous_commit = off, so a commit can "
            "be lost in a crash; set it to on for the audit database or its role"
        )


# Run after the lock is taken, so its snapshot shows the commits of every other writer.
# One statement gives the head and the batch's subject keys in one round trip.
_READ_HEAD_AND_KEYS = f"""
SELECT seq, body, prev_hash, hash, NULL::text AS ref, NULL::bytea AS key
FROM (
    SELECT seq, body, prev_hash, hash FROM {audit_record.name} ORDER BY seq DESC LIMIT 1
) AS head
UNION ALL
SELECT NULL, NULL, NULL, NULL, ref, key FROM {audit_subject_key.name} WHERE ref = ANY($1::text[])
"""
_INSERT_KEYS = f"""
INSERT INTO {audit_subject_key.name} (ref, key) SELECT * FROM unnest($1::text[], $2::bytea[])
"""
# Inserts the batch's records, subject index rows and new span rows in one statement,
# so in one round trip. The foreign key from audit_subject to audit_record is checked
# at the end of the statement, when the records are inserted.
_INSERT_BATCH = f"""
WITH inserted AS (
    INSERT INTO {audit_record.name}
        (seq, time, request_id, actor, purpose, outcome, body, prev_hash, hash)
    SELECT * FROM unnest(
        $1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::text[], $8::text[], $9::text[]
    )
),
spans AS (
    INSERT INTO {audit_subject_span.name} (ref, span)
    SELECT DISTINCT ref, seq / {SUBJECT_SPAN_RECORDS} FROM unnest($10::bigint[], $11::text[])
        AS subject (seq, ref)
    ON CONFLICT DO NOTHING
)
INSERT INTO {audit_subject.name} (seq, ref) SELECT * FROM unnest($10::bigint[], $11::text[])
"""


def _record_arrays(records: list[LinkedRecord]) -> list[list[Any]]:
    """Return one list per column of _INSERT_BATCH, in its parameter order."""
    arrays: list[list[Any]] = [[] for _ in range(11)]
    seqs, times, request_ids, actors, purposes, outcomes, bodies, prev_hashes, hashes = (
        arrays[:9]
    )
    subject_seqs, subject_refs = arrays[9:]
    for record in records:
        seqs.append(record.seq)
        time, request_id, actor, purpose, outcome = record.columns
        times.append(time)
        request_ids.append(request_id)
        actors.append(actor)
        purposes.append(purpose)
        outcomes.append(outcome)
        bodies.append(record.body)
        prev_hashes.append(record.prev_hash)
        hashes.append(record.hash)
        for ref in record.refs:
            subject_seqs.append(record.seq)
            subject_refs.append(ref)
    return arrays


class PostgresAuditStore(GroupCommitStore):
    """An `AuditStore` in a PostgreSQL database that several processes append to."""

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        checkpoint_key: CheckpointKey | None = None,
        anchors: Sequence[CheckpointAnchor] = (),
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        clock: Callable[[], datetime] | None = None,
        commit_delay: float = 0.0,
        commit_siblings: int = 1,
    ) -> PostgresAuditStore:
        """Connect to the database at ``url``, migrate it and start the writer task.

        The database must exist. The other arguments are those of
        `SQLiteAuditStore.open`. Raises ValueError for a URL that is not PostgreSQL,
        and AuditError if the database cannot be reached or does not flush commits.
        Raises AuditIntegrityError if the last record does not verify, or if the log is
        shorter than, or differs from, its newest checkpoint.
        """
        check_open_arguments(max_batch, checkpoint_interval)
        check_commit_delay(commit_delay, commit_siblings)
        parsed = postgres_url(url)
        location = describe_url(parsed)
        engine = create_async_engine(parsed, hide_parameters=True, pool_size=2)
        try:
            async with engine.begin() as connection:
                await check_durable_commits(connection, location)
                await connection.run_sync(upgrade_schema)
                head = await read_head(connection, location)
                checkpointed = await check_newest_checkpoint(connection, head[0], location)
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            raise AuditError(f"cannot open audit store {location}: {describe_error(exc)}") from exc
        except AuditError:
            await engine.dispose()
            raise

        writer = None
        if checkpoint_key is not None:
            writer = CheckpointWriter(checkpoint_key, anchors, clock, checkpointed)
        logger.info("opened audit store %s at seq %d", location, head[0])
        store = cls(engine, location, head, max_batch, writer, checkpoint_interval)
        store.set_commit_delay(commit_delay, commit_siblings)
        return store

    async def _insert_batch(
        self, batch: list[PendingAppend]
    ) -> tuple[int, str, dict[str, bytes]]:
        """Chain ``batch`` onto the head that the database holds, under the lock.

        The events were encoded in `append`, before the lock. Under the lock, this
        reads the head and the subject keys in one statement, creates the keys of new
        subjects, seals and hashes the batch, inserts it in one statement and commits.
        Subject keys are read under the lock on every commit, not from a cache, because
        another process may have created or forgotten a subject's key meanwhile.

        The statements go to asyncpg directly, which saves round trips under the lock:
        BEGIN travels with the lock, and the head with the keys and the two inserts
        take one statement each.
        NOTE: asyncpg raises InvalidCachedStatementError inside a transaction when a
        schema change altered a cached statement's result, so after a migration by
        another process one batch can fail. Its connection is dropped, and the next
        batch prepares the statements again.
        """
        events = [pending.event for pending in batch]
        refs = sorted({ref for prepared in events for ref in prepared.refs})
        async with self._engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
            if driver is None:
                raise AuditError("the PostgreSQL connection of the audit store is closed")
            try:
                # BEGIN and the lock in one round trip. Each later statement takes a
                # new snapshot (READ COMMITTED), so it reads the commits made before
                # the lock was granted.
                await driver.execute(f"BEGIN; SELECT pg_advisory_xact_lock({POSTGRES_LOCK_KEY})")
                rows = await driver.fetch(_READ_HEAD_AND_KEYS, refs)
                head_seq, head_hash, keys = self._head_and_keys(rows)
                missing = [ref for ref in refs if ref not in keys]
                if missing:
                    created = [secrets.token_bytes(SUBJECT_KEY_BYTES) for _ in missing]
                    await driver.execute(_INSERT_KEYS, missing, created)
                    keys.update(zip(missing, created, strict=True))
                records = link_events(events, head_seq, head_hash, keys, self._sealer)
                await driver.execute(_INSERT_BATCH, *_record_arrays(records))
                status = await driver.execute("COMMIT")
            except BaseException as exc:
                # The transaction may still be open on the server, so the connection
                # must not return to the pool.
                await connection.invalidate()
                if isinstance(exc, asyncpg.PostgresError):
                    # Without its DETAIL, which can quote the values of a failing row.
                    raise AuditError(f"{type(exc).__name__}: {exc.args[0]}") from exc
                raise
        if status != "COMMIT":
            raise AuditError(
                f"the commit of an audit batch ended with {status} instead of COMMIT, "
                "so the batch was not stored"
            )
        return head_seq + 1, records[-1].hash, {}

    def _head_and_keys(
        self, rows: Sequence[Any]
    ) -> tuple[int, str, dict[str, bytes]]:
        """Split the rows of _READ_HEAD_AND_KEYS into the verified head and the keys."""
        head: tuple[int, str] = (0, GENESIS_HASH)
        keys: dict[str, bytes] = {}
        for row in rows:
            if row["ref"] is None:
                head = check_head(
                    row["seq"], row["body"], row["prev_hash"], row["hash"], self._location
                )
            else:
                keys[row["ref"]] = bytes(row["key"])
        return head[0], head[1], keys


def open_reader(target: Path | str) -> tuple[AsyncEngine, str]:
    """Create a read-only engine on the store at ``target``, and describe it for messages.

    ``target`` is the path of an SQLite store or the URL of a PostgreSQL store. A
    PostgreSQL transaction reads one snapshot (REPEATABLE READ), so an append or a
    purge that commits meanwhile does not show halfway. Raises AuditError for a
    missing SQLite file, and ValueError for a URL that is not PostgreSQL.
    """
    if isinstance(target, Path):
        return open_reader_engine(target), str(target)
    parsed = postgres_url(target)
    engine = create_async_engine(
        parsed,
        hide_parameters=True,
        poolclass=NullPool,
        isolation_level="REPEATABLE READ",
        execution_options={"postgresql_readonly": True},
    )
    return engine, describe_url(parsed)
