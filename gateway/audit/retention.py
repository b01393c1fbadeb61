"""Retention of the audit log: deleting records older than the retention period.

A purge deletes the oldest records only up to a stored checkpoint. The first record
that remains then links to that checkpoint's signed head hash. In the same transaction
the purge appends a ``purge`` record whose details name that checkpoint's size and
head hash. `gateway.audit.verify` and the bundle's offline verifier accept a log that
starts after record 1 only with both: the signed checkpoint and the purge record that
names it. Records younger than the cutoff and the last record are always kept, so the
log never becomes empty.
"""

from __future__ import annotations

import calendar
import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, event, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.audit.migrate import lock_postgres, require_head_revision
from gateway.audit.postgres import describe_url, open_reader, postgres_url
from gateway.audit.record import AdminEvent, utc_timestamp
from gateway.audit.schema import (
    audit_checkpoint,
    audit_record,
    audit_subject,
    audit_subject_span,
    subject_span,
)
from gateway.audit.sqlite import begin_immediate, describe_error, set_writer_pragmas, sqlite_url
from gateway.audit.store import build_rows, insert_rows, prepare_event, read_head
from gateway.errors import AuditError, AuditIntegrityError

logger = logging.getLogger(__name__)

PURGE_ACTOR = "fonte-audit-purge"


@dataclass(frozen=True)
class PurgeResult:
    """The outcome of a purge: records up to ``through_seq`` deleted up to a checkpoint.

    ``head_hash`` is the hash that the checkpoint signed for record ``through_seq``,
    and ``record_seq`` the seq of the purge record. ``through_seq``, ``records`` and
    ``record_seq`` are 0, and ``checkpoint_id`` is None, when nothing was deleted.
    """

    cutoff: str
    through_seq: int
    records: int
    checkpoint_id: int | None
    head_hash: str = ""
    record_seq: int = 0


def retention_cutoff(now: datetime, months: int) -> datetime:
    """Return ``now`` minus ``months`` calendar months, on the last day of a shorter month.

    For example 2026-08-31 minus 6 months is 2026-02-28. Raises ValueError for a
    negative ``months`` or a naive ``now``.
    """
    if months < 0:
        raise ValueError(f"months must not be negative, not {months}")
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    month_index = now.year * 12 + (now.month - 1) - months
    year, month = divmod(month_index, 12)
    day = min(now.day, calendar.monthrange(year, month + 1)[1])
    return now.replace(year=year, month=month + 1, day=day)


def purge_event(
    result: PurgeResult, retention_months: int | None, moment: datetime
) -> AdminEvent:
    """Build the record of a purge: the checkpoint it continues from, but no caller or subject.

    ``through_seq`` and ``head_hash`` are what the verifiers match against the signed
    checkpoint that the remaining log starts from.
    """
    return {
        "kind": "purge",
        "time": utc_timestamp(moment),
        "request_id": f"audit-purge-{uuid.uuid4().hex}",
        "actor": PURGE_ACTOR,
        "outcome": "success",
        "details": {
            "through_seq": result.through_seq,
            "head_hash": result.head_hash,
            "records": result.records,
            "cutoff": result.cutoff,
            "retention_months": retention_months,
        },
    }


async def oldest_record_time(target: Path | str) -> str | None:
    """Return the time of the store's first record, or None for an empty store.

    ``target`` is the path of an SQLite store or the URL of a PostgreSQL store. Raises
    AuditError if the store cannot be read.
    """
    engine, location = open_reader(target)
    try:
        async with engine.connect() as connection:
            first_seq = select(func.min(audit_record.c.seq)).scalar_subquery()
            statement = select(audit_record.c.time).where(audit_record.c.seq == first_seq)
            time = (await connection.execute(statement)).scalar()
    except (SQLAlchemyError, OSError) as exc:
        raise AuditError(f"cannot read audit store {location}: {describe_error(exc)}") from exc
    finally:
        await engine.dispose()
    return None if time is None else str(time)


def _open_writer(target: Path | str) -> tuple[AsyncEngine, str]:
    if isinstance(target, Path):
        if not target.is_file():
            raise AuditError(f"audit store {target} not found; check the path")
        engine = create_async_engine(sqlite_url(target), hide_parameters=True)
        event.listen(engine.sync_engine, "connect", set_writer_pragmas)
        # A running gateway may append meanwhile, so the purge takes the write lock
        # before it reads the head, as every commit of the store does.
        begin_immediate(engine)
        return engine, str(target)
    url = postgres_url(target)
    return create_async_engine(url, hide_parameters=True), describe_url(url)


async def purge_records(
    target: Path | str,
    cutoff: datetime,
    *,
    retention_months: int | None = None,
    now: datetime | None = None,
) -> PurgeResult:
    """Delete the records older than ``cutoff`` up to the newest checkpoint that allows it.

    ``target`` is the path of an SQLite store or the URL of a PostgreSQL store, which
    must be at the current schema revision. The purge record (see `purge_event`), with
    ``retention_months`` and the time ``now`` (default: the current time), is appended
    in the transaction of the delete, so a crash cannot leave a purged log without it.
    The store's write lock (``BEGIN IMMEDIATE`` on SQLite, the advisory lock on
    PostgreSQL) keeps appends and checkpoints waiting meanwhile. Raises AuditError if the
    store cannot be written or needs a migration, and AuditIntegrityError if the
    record at the checkpoint does not have the hash that the checkpoint signed.
    """
    engine, location = _open_writer(target)
    cutoff_text = utc_timestamp(cutoff)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lock_postgres)
            await require_head_revision(connection, location)
            result = await _purge(connection, location, cutoff_text)
            if result.through_seq:
                moment = now if now is not None else datetime.now(UTC)
                record = purge_event(result, retention_months, moment)
                result = await _append_purge_record(connection, location, result, record)
            return result
    except (SQLAlchemyError, OSError) as exc:
        raise AuditError(f"cannot purge audit store {location}: {describe_error(exc)}") from exc
    finally:
        await engine.dispose()


async def _purge(connection: AsyncConnection, location: str, cutoff: str) -> PurgeResult:
    nothing = PurgeResult(cutoff, 0, 0, None)
    last_seq = (await connection.execute(select(func.max(audit_record.c.seq)))).scalar()
    if last_seq is None:
        return nothing
    first_young = (
        await connection.execute(
            select(func.min(audit_record.c.seq)).where(audit_record.c.time >= cutoff)
        )
    ).scalar()
    # Every record up to this seq is older than the cutoff. The last record stays.
    limit = int(last_seq) - 1 if first_young is None else int(first_young) - 1
    limit = min(limit, int(last_seq) - 1)

    checkpoint = (
        await connection.execute(
            select(audit_checkpoint.c.id, audit_checkpoint.c.size, audit_checkpoint.c.head_hash)
            .where(audit_checkpoint.c.size <= limit)
            .order_by(audit_checkpoint.c.size.desc(), audit_checkpoint.c.id)
            .limit(1)
        )
    ).first()
    if checkpoint is None:
        return nothing
    size = int(checkpoint.size)
    stored_hash = (
        await connection.execute(select(audit_record.c.hash).where(audit_record.c.seq == size))
    ).scalar()
    if stored_hash is None:
        # An earlier purge deleted the records up to this checkpoint.
        return nothing
    if stored_hash != checkpoint.head_hash:
        raise AuditIntegrityError(
            f"record {size} in audit store {location} does not have the hash that "
            f"checkpoint {checkpoint.id} signed; run `fonte audit verify` and investigate "
            "before purging"
        )

    await connection.execute(delete(audit_subject).where(audit_subject.c.seq <= size))
    # A span row goes only when every record of its span is purged. A span that the
    # purge cuts keeps its rows, which then lead only to the records that remain.
    await connection.execute(
        delete(audit_subject_span).where(
            audit_subject_span.c.span < subject_span(size + 1)
        )
    )
    deleted = await connection.execute(delete(audit_record).where(audit_record.c.seq <= size))
    count = deleted.rowcount
    logger.info(
        "purged %d audit records through seq %d of %s, older than %s, up to checkpoint %s",
        count,
        size,
        location,
        cutoff,
        checkpoint.id,
    )
    return PurgeResult(cutoff, size, count, int(checkpoint.id), str(checkpoint.head_hash))


async def _append_purge_record(
    connection: AsyncConnection, location: str, result: PurgeResult, event: AdminEvent
) -> PurgeResult:
    head_seq, head_hash = await read_head(connection, location)
    records, _, _ = build_rows([prepare_event(event)], head_seq, head_hash, {})
    await insert_rows(connection, records, [])
    return replace(result, record_seq=head_seq + 1)
