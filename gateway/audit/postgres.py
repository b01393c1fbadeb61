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
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from gateway.audit.anchor import CheckpointAnchor
from gateway.audit.checkpoint_writer import CheckpointWriter, check_newest_checkpoint
from gateway.audit.keys import CheckpointKey
from gateway.audit.migrate import lock_postgres, upgrade_schema
from gateway.audit.schema import audit_record, audit_subject
from gateway.audit.sqlite import describe_error, open_reader_engine
from gateway.audit.store import (
    DEFAULT_CHECKPOINT_INTERVAL,
    GroupCommitStore,
    PendingAppend,
    build_rows,
    check_open_arguments,
    read_head,
)
from gateway.audit.subject_keys import load_subject_keys
from gateway.errors import AuditError

logger = logging.getLogger(__name__)

# Larger than the SQLite default, because each commit here also waits for the lock and
# a round trip to read the head.
DEFAULT_MAX_BATCH = 1024
_DRIVER = "postgresql+asyncpg"
_RECORD_COLUMNS = tuple(column.name for column in audit_record.columns)


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


async def copy_rows(
    connection: AsyncConnection, records: list[dict[str, Any]], subjects: list[dict[str, Any]]
) -> None:
    """Insert the rows that `build_rows` returned with COPY, in the caller's transaction.

    Every writer waits for the lock while another inserts, so the insert time limits
    all writers together. For a batch of 512 records, COPY took about 30 ms where
    INSERT through SQLAlchemy's executemany took about 80 ms (PostgreSQL 15 on the
    loaded 2-vCPU machine that bench/README.md describes).
    """
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if driver is None:
        raise AuditError("the PostgreSQL connection of the audit store is closed")
    await driver.copy_records_to_table(
        audit_record.name,
        records=[tuple(row[name] for name in _RECORD_COLUMNS) for row in records],
        columns=_RECORD_COLUMNS,
    )
    if subjects:
        await driver.copy_records_to_table(
            audit_subject.name,
            records=[(row["seq"], row["ref"]) for row in subjects],
            columns=("seq", "ref"),
        )


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
    ) -> PostgresAuditStore:
        """Connect to the database at ``url``, migrate it and start the writer task.

        The database must exist. The other arguments are those of
        `SQLiteAuditStore.open`. Raises ValueError for a URL that is not PostgreSQL,
        and AuditError if the database cannot be reached or does not flush commits.
        Raises AuditIntegrityError if the last record does not verify, or if the log is
        shorter than, or differs from, its newest checkpoint.
        """
        check_open_arguments(max_batch, checkpoint_interval)
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
        return cls(engine, location, head, max_batch, writer, checkpoint_interval)

    async def _insert_batch(
        self, batch: list[PendingAppend]
    ) -> tuple[int, str, dict[str, bytes]]:
        """Chain ``batch`` onto the head that the database holds, under the lock.

        Subject keys are read under the lock on every commit, not from a cache, because
        another process may have created or forgotten a subject's key meanwhile.
        """
        refs = {ref for pending in batch for ref in pending.event.refs}
        async with self._engine.begin() as connection:
            await connection.run_sync(lock_postgres)
            head_seq, head_hash = await read_head(connection, self._location)
            keys = await load_subject_keys(connection, refs)
            records, subjects, last_hash = build_rows(
                [pending.event for pending in batch], head_seq, head_hash, keys
            )
            await copy_rows(connection, records, subjects)
        return head_seq + 1, last_hash, {}


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
