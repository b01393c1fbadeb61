"""Operations on the audit log that are recorded in the log itself.

Exports, bundles, access reports and erasures run from the command line, and each
appends an `AdminEvent` to the same chain as the requests. The first three may run while
a gateway appends to the same store. Erasures need the gateway stopped. The gateway
records checkpoint key rotations and policy changes.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import Connection, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from gateway.audit.keys import CheckpointKey
from gateway.audit.postgres import PostgresAuditStore, open_reader
from gateway.audit.record import AdminEvent, AdminKind, DetailValue, utc_timestamp
from gateway.audit.schema import audit_checkpoint
from gateway.audit.sqlite import describe_error
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.store import GroupCommitStore
from gateway.audit.subject_keys import ForgetResult, forget_subject
from gateway.errors import AuditError


class ErasureIncomplete(AuditError):
    """An erasure that is done and recorded, while old copies of its rows may remain on disk.

    ``result`` is what the erasure removed and ``seq`` the seq of its record.
    """

    def __init__(self, message: str, result: ForgetResult, seq: int) -> None:
        super().__init__(message)
        self.result = result
        self.seq = seq


def admin_event(kind: AdminKind, actor: str, details: Mapping[str, DetailValue]) -> AdminEvent:
    """Build the record of an operation on the log, with a random request id."""
    return {
        "kind": kind,
        "time": utc_timestamp(),
        "request_id": f"admin-{secrets.token_hex(8)}",
        "actor": actor,
        "outcome": "success",
        "details": dict(details),
    }


async def record_admin_event(
    target: Path | str, event: AdminEvent, *, checkpoint_key: CheckpointKey | None = None
) -> int:
    """Append ``event`` to the store at ``target`` and return its seq.

    ``target`` is the path of an SQLite store or the URL of a PostgreSQL store. With
    ``checkpoint_key``, the store signs a checkpoint that covers the new record when it
    closes. Raises AuditError if the store cannot be opened or written.
    """
    store: GroupCommitStore
    if isinstance(target, Path):
        store = await SQLiteAuditStore.open(target, checkpoint_key=checkpoint_key)
    else:
        store = await PostgresAuditStore.open(target, checkpoint_key=checkpoint_key)
    try:
        return await store.append(event)
    finally:
        await store.close()


async def newest_checkpoint_key_name(target: Path | str) -> str | None:
    """Return the key name of the newest stored checkpoint, or None if there is none.

    ``target`` is the path of an SQLite store or the URL of a PostgreSQL store.
    """
    if isinstance(target, Path) and not target.is_file():
        return None
    engine, location = open_reader(target)
    try:
        async with engine.connect() as connection:
            if not await connection.run_sync(_has_checkpoint_table):
                return None
            statement = (
                select(audit_checkpoint.c.key_name)
                .order_by(audit_checkpoint.c.id.desc())
                .limit(1)
            )
            name = (await connection.execute(statement)).scalar()
    except (SQLAlchemyError, OSError) as exc:
        raise AuditError(f"cannot read audit store {location}: {describe_error(exc)}") from exc
    finally:
        await engine.dispose()
    return None if name is None else str(name)


def _has_checkpoint_table(connection: Connection) -> bool:
    # A new PostgreSQL database, or a store of the first release, has no checkpoints yet.
    return inspect(connection).has_table(audit_checkpoint.name)


async def forget(target: Path | str, ref: str, actor: str) -> tuple[ForgetResult, int]:
    """Erase the subject with pseudonym ``ref`` and record the erasure without it.

    Returns what was removed and the seq of the erasure record. The erasure is done
    before it is recorded: a crash between the two leaves an erasure without its
    record, never a record of an erasure that did not happen.

    Raises ErasureIncomplete after recording the erasure if SQLite's write-ahead log
    could not be checkpointed and truncated, because another process reads or writes
    the store. The store's files may then still hold old copies of the deleted rows,
    and the record's details contain ``"wal_truncated": false``. A second run, once
    that process stopped, checkpoints and truncates the log, and records that it found
    no key and no index row.
    """
    result = await forget_subject(target, ref)
    details: dict[str, DetailValue] = {
        "key_deleted": result.key_deleted,
        "records_unlinked": result.records_unlinked,
    }
    if not result.wal_truncated:
        # Only in this case, so that clean erasures keep their details and an auditor
        # can pair this record with the one of the run that completes it.
        details["wal_truncated"] = False
    seq = await record_admin_event(target, admin_event("forget", actor, details))
    if not result.wal_truncated:
        raise ErasureIncomplete(
            f"the write-ahead log of audit store {target} could not be checkpointed and "
            "truncated because another process reads or writes the store, so the store's "
            "files may still hold old copies of the deleted rows; stop that process and "
            "run forget again",
            result, seq,
        )
    return result, seq
