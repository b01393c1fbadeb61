"""The audit store operations behind ``fonte audit migrate`` and ``fonte audit purge``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.audit.keys import load_public_keys
from gateway.audit.migrate import upgrade_schema
from gateway.audit.postgres import describe_url, postgres_url
from gateway.audit.retention import PurgeResult, purge_records, retention_cutoff
from gateway.audit.sqlite import describe_error, set_writer_pragmas, sqlite_url
from gateway.audit.verify import verify_store
from gateway.datadir import claim_data_dir
from gateway.errors import AuditError, AuditIntegrityError


async def migrate_store(target: Path | str) -> tuple[str | None, str]:
    """Create or upgrade the store's tables. Returns the revision before and after.

    ``target`` is the path of an SQLite store, created if missing in an existing
    folder, or the URL of a PostgreSQL store. Raises AuditError if it cannot be
    written, and ValueError for a URL that is not PostgreSQL.
    """
    if isinstance(target, Path):
        if not target.parent.is_dir():
            raise AuditError(f"directory {target.parent} of audit store {target} not found")
        engine = create_async_engine(sqlite_url(target), hide_parameters=True)
        event.listen(engine.sync_engine, "connect", set_writer_pragmas)
        location = str(target)
    else:
        url = postgres_url(target)
        engine = create_async_engine(url, hide_parameters=True)
        location = describe_url(url)
    try:
        async with engine.begin() as connection:
            return await connection.run_sync(upgrade_schema)
    except (SQLAlchemyError, OSError) as exc:
        raise AuditError(f"cannot migrate audit store {location}: {describe_error(exc)}") from exc
    finally:
        await engine.dispose()


async def purge_store(target: Path | str, data_dir: Path, retention_months: int) -> PurgeResult:
    """Verify the store, then purge the records older than the retention with their record.

    The public keys of the checkpoints come from ``data_dir``. For an SQLite store the
    data dir is locked as a gateway locks it, so a running gateway makes this fail
    instead of losing its commits. Raises AuditIntegrityError if the log does not
    verify, and AuditError or ConfigError if the store or data dir cannot be used.
    """
    lock = claim_data_dir(data_dir) if isinstance(target, Path) else None
    try:
        public_keys = load_public_keys(data_dir / "keys" / "audit-checkpoint-public")
        report = await verify_store(target, public_keys=public_keys)
        if not report.ok:
            raise AuditIntegrityError(
                f"audit log {report.summary()}; nothing was purged, investigate first"
            )
        now = datetime.now(UTC)
        cutoff = retention_cutoff(now, retention_months)
        return await purge_records(
            target, cutoff, retention_months=retention_months, now=now
        )
    finally:
        if lock is not None:
            lock.close()
