"""Retention of the audit log: deleting records older than the retention period.

A purge deletes the oldest records only up to a stored checkpoint. The first record
that remains then links to that checkpoint's signed head hash, which is how
`gateway.audit.verify` checks a purged log. Records younger than the cutoff and the
last record are always kept, so the log never becomes empty.
"""

from __future__ import annotations

import calendar
import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, event, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.audit.migrate import current_revision, head_revision, lock_postgres
from gateway.audit.postgres import describe_url, postgres_url
from gateway.audit.record import AuditEvent, utc_timestamp
from gateway.audit.schema import audit_checkpoint, audit_record, audit_subject
from gateway.audit.sqlite import describe_error, set_writer_pragmas, sqlite_url
from gateway.errors import AuditError, AuditIntegrityError

logger = logging.getLogger(__name__)

PURGE_ACTOR = "fonte-audit-purge"
PURGE_OPERATION = "AuditPurge"


@dataclass(frozen=True)
class PurgeResult:
    """The outcome of a purge: records 1 to ``through_seq`` deleted up to a checkpoint.

    ``through_seq`` and ``records`` are 0, and ``checkpoint_id`` is None, when nothing
    was deleted.
    """

    cutoff: str
    through_seq: int
    records: int
    checkpoint_id: int | None


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


def purge_event(result: PurgeResult, retention_months: int, moment: datetime) -> AuditEvent:
    """Build the audit event that records a purge. It names no caller and no subject."""
    description = f"audit purge through seq {result.through_seq} before {result.cutoff}"
    return {
        "time": utc_timestamp(moment),
        "request_id": f"audit-purge-{uuid.uuid4().hex}",
        "actor": PURGE_ACTOR,
        "roles": [],
        "purpose": "retention",
        "client": None,
        "operation_name": PURGE_OPERATION,
        "operation_hash": hashlib.sha256(description.encode("utf-8")).hexdigest(),
        "subjects": [],
        "fields": [],
        "systems": [],
        "records": result.records,
        "outcome": "success",
        "policy_version": f"retention-{retention_months}-months",
    }


def _open_writer(target: Path | str) -> tuple[AsyncEngine, str]:
    if isinstance(target, Path):
        if not target.is_file():
            raise AuditError(f"audit store {target} not found; check the path")
        engine = create_async_engine(sqlite_url(target), hide_parameters=True)
        event.listen(engine.sync_engine, "connect", set_writer_pragmas)
        return engine, str(target)
    url = postgres_url(target)
    return create_async_engine(url, hide_parameters=True), describe_url(url)


async def purge_records(target: Path | str, cutoff: datetime) -> PurgeResult:
    """Delete the records older than ``cutoff`` up to the newest checkpoint that allows it.

    ``target`` is the path of an SQLite store or the URL of a PostgreSQL store, which
    must be at the current schema revision. On PostgreSQL the store's advisory lock
    keeps appends and checkpoints waiting during the delete. Raises AuditError if the
    store cannot be written or needs a migration, and AuditIntegrityError if the
    record at the checkpoint does not have the hash that the checkpoint signed.
    """
    engine, location = _open_writer(target)
    cutoff_text = utc_timestamp(cutoff)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lock_postgres)
            revision = await connection.run_sync(current_revision)
            if revision != head_revision():
                raise AuditError(
                    f"audit store {location} is at schema revision {revision}, not "
                    f"{head_revision()}; run `fonte audit migrate` first"
                )
            return await _purge(connection, location, cutoff_text)
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
    return PurgeResult(cutoff, size, count, int(checkpoint.id))
