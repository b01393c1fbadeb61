"""The audit store operations behind ``fonte audit migrate`` and ``fonte audit purge``, and
the gateway's own daily purge."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.audit.keys import load_public_keys
from gateway.audit.migrate import upgrade_schema
from gateway.audit.postgres import describe_url, postgres_url
from gateway.audit.record import utc_timestamp
from gateway.audit.retention import (
    PurgeResult,
    oldest_record_time,
    purge_records,
    retention_cutoff,
)
from gateway.audit.sqlite import describe_error, set_writer_pragmas, sqlite_url
from gateway.audit.verify import verify_store
from gateway.datadir import claim_data_dir
from gateway.errors import AuditError, AuditIntegrityError

logger = logging.getLogger(__name__)

# The gateway's first purge waits this long after start, in seconds, so that short runs
# such as tests and demos do not purge, and later purges follow once a day.
DEFAULT_FIRST_PURGE_DELAY = 600.0
DEFAULT_PURGE_INTERVAL = 86_400.0


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
    data dir is locked as a gateway locks it, so this fails while a gateway runs there;
    a running gateway purges by itself (see `RetentionSchedule`). Raises
    AuditIntegrityError if the log does not verify, and AuditError or ConfigError if
    the store or data dir cannot be used.
    """
    lock = claim_data_dir(data_dir) if isinstance(target, Path) else None
    try:
        public_keys = data_dir / "keys" / "audit-checkpoint-public"
        return await verify_and_purge(target, public_keys, retention_months, datetime.now(UTC))
    finally:
        if lock is not None:
            lock.close()


async def verify_and_purge(
    target: Path | str, public_keys: Path, retention_months: int, now: datetime
) -> PurgeResult:
    """Verify the store against the keys in the folder ``public_keys``, then purge the
    records older than ``retention_months`` before ``now``, with their purge record.

    Raises AuditIntegrityError if the log does not verify, so that a purge never
    deletes the evidence of tampering, and AuditError or ConfigError if the store or
    the keys cannot be used. A log whose first record is younger than the cutoff is
    left alone without the full verification, which reads every record.
    """
    cutoff = retention_cutoff(now, retention_months)
    oldest = await oldest_record_time(target)
    if oldest is None or oldest >= utc_timestamp(cutoff):
        return PurgeResult(utc_timestamp(cutoff), 0, 0, None)
    report = await verify_store(target, public_keys=load_public_keys(public_keys))
    if not report.ok:
        raise AuditIntegrityError(
            f"audit log {report.summary()}; nothing was purged, investigate first"
        )
    return await purge_records(target, cutoff, retention_months=retention_months, now=now)


class RetentionSchedule:
    """The gateway's own purge: `verify_and_purge` after ``first_delay`` seconds, then
    every ``interval`` seconds, until `close`.

    Each run happens in a worker thread with its own event loop and database
    connections, because verifying a large log takes seconds of CPU that would
    otherwise stall the gateway's requests. The purge takes the store's write lock
    (``BEGIN IMMEDIATE`` or the advisory lock), so the gateway's commits wait for it.
    NOTE: on SQLite a commit waits at most the driver's 5-second busy timeout, so the
    first purge of a large, long-unpurged log can fail some commits.

    ``clock`` returns the current time and ``sleep`` waits, both replaceable by tests.
    A failed run is logged and retried at the next interval.
    """

    def __init__(
        self,
        target: Path | str,
        public_keys: Path,
        retention_months: int,
        *,
        first_delay: float = DEFAULT_FIRST_PURGE_DELAY,
        interval: float = DEFAULT_PURGE_INTERVAL,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not first_delay >= 0 or not interval > 0:
            raise ValueError(
                f"first_delay must be at least 0 and interval positive, not {first_delay} "
                f"and {interval}"
            )
        self._target = target
        self._public_keys = public_keys
        self._retention_months = retention_months
        self._first_delay = first_delay
        self._interval = interval
        self._clock = clock
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._running: asyncio.Future[PurgeResult] | None = None

    def start(self) -> None:
        """Start the schedule in a task of the running event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit retention")

    async def run_once(self) -> PurgeResult | None:
        """Verify and purge now. Returns the result, or None after a logged failure."""
        now = self._clock()
        loop = asyncio.get_running_loop()
        self._running = loop.run_in_executor(
            None,
            asyncio.run,
            verify_and_purge(self._target, self._public_keys, self._retention_months, now),
        )
        try:
            # Shielded, so that close() cancelling the task still waits for the thread.
            result = await asyncio.shield(self._running)
        except Exception as exc:
            # Any error, a bug included, is logged and retried at the next interval,
            # because a stopped schedule would go unnoticed.
            logger.error("scheduled audit purge of %s failed: %s", _describe(self._target), exc)
            return None
        if result.through_seq:
            logger.info(
                "scheduled audit purge deleted %d records through seq %d, older than %s; "
                "purge record %d",
                result.records,
                result.through_seq,
                result.cutoff,
                result.record_seq,
            )
        return result

    async def close(self) -> None:
        """Stop the schedule, after the run in progress, if any, has finished."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._running is not None:
            await asyncio.gather(self._running, return_exceptions=True)

    async def _run(self) -> None:
        await self._sleep(self._first_delay)
        while True:
            await self.run_once()
            await self._sleep(self._interval)


def _describe(target: Path | str) -> str:
    return str(target) if isinstance(target, Path) else describe_url(postgres_url(target))
