"""Writing signed checkpoints of the audit store's committed head.

A checkpoint reaches every anchor before its row is saved in ``audit_checkpoint``, so
each stored checkpoint has a copy outside the database unless an anchor file was
edited. If an anchor fails, the checkpoint is not saved and the next one is tried at
the next interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.anchor import CheckpointAnchor
from gateway.audit.checkpoint import Checkpoint, log_origin, sign_checkpoint
from gateway.audit.keys import CheckpointKey
from gateway.audit.record import utc_timestamp
from gateway.audit.schema import audit_checkpoint, audit_record
from gateway.errors import AuditError, AuditIntegrityError

logger = logging.getLogger(__name__)


async def check_newest_checkpoint(
    connection: AsyncConnection, head_seq: int, location: str
) -> int:
    """Return the size of the newest stored checkpoint, or 0 if there is none.

    Raises AuditIntegrityError if the log is shorter than that checkpoint or its record
    at that size has another hash, because new records would hide the truncation or
    the rewrite. Only the columns are compared here; the full check is the verifier's.
    """
    newest = (
        await connection.execute(
            select(audit_checkpoint.c.id, audit_checkpoint.c.size, audit_checkpoint.c.head_hash)
            .order_by(audit_checkpoint.c.size.desc(), audit_checkpoint.c.id.desc())
            .limit(1)
        )
    ).first()
    if newest is None:
        return 0

    checkpoint_id, size, head_hash = int(newest.id), int(newest.size), str(newest.head_hash)
    if size > head_seq:
        raise AuditIntegrityError(
            f"audit store {location} has {head_seq} records but checkpoint {checkpoint_id} "
            f"signed {size}; run the audit verifier and investigate before appending"
        )
    stored_hash = (
        await connection.execute(select(audit_record.c.hash).where(audit_record.c.seq == size))
    ).scalar()
    if stored_hash != head_hash:
        raise AuditIntegrityError(
            f"record {size} in audit store {location} does not have the hash that checkpoint "
            f"{checkpoint_id} signed; run the audit verifier and investigate before appending"
        )
    return size


class CheckpointWriter:
    """Signs, anchors and saves checkpoints for one store. Not safe for concurrent use.

    ``size`` is the number of records that the newest saved checkpoint covers.
    """

    def __init__(
        self,
        key: CheckpointKey,
        anchors: Sequence[CheckpointAnchor],
        clock: Callable[[], datetime] | None,
        size: int,
    ) -> None:
        self.size = size
        self._key = key
        self._anchors = tuple(anchors)
        self._clock = clock
        self._origin: str | None = None

    async def write(self, engine: AsyncEngine, head_seq: int, head_hash: str) -> Checkpoint | None:
        """Checkpoint the committed head ``head_seq``, or return None if it is checkpointed.

        Raises AuditError if an anchor rejects the note, and SQLAlchemyError if the
        database cannot be read or written.
        """
        if head_seq <= self.size:
            return None
        if self._origin is None:
            async with engine.connect() as connection:
                self._origin = await read_origin(connection)
        checkpoint = await self._sign_and_publish(self._origin, head_seq, head_hash)
        async with engine.begin() as connection:
            await self._save(connection, checkpoint)
        return checkpoint

    async def write_in(
        self, connection: AsyncConnection, head_seq: int, head_hash: str
    ) -> Checkpoint | None:
        """Checkpoint ``head_seq`` in the caller's transaction, unless a saved one covers it.

        For a store that several processes write. The caller must hold the store's lock
        and have read the head in this transaction. The size of the newest saved
        checkpoint, whichever process saved it, is read here. Raises as `write` does.
        """
        newest = (await connection.execute(select(func.max(audit_checkpoint.c.size)))).scalar()
        self.size = max(self.size, int(newest or 0))
        if head_seq <= self.size:
            return None
        if self._origin is None:
            self._origin = await read_origin(connection)
        checkpoint = await self._sign_and_publish(self._origin, head_seq, head_hash)
        await self._save(connection, checkpoint)
        return checkpoint

    async def _sign_and_publish(self, origin: str, head_seq: int, head_hash: str) -> Checkpoint:
        moment = self._clock() if self._clock is not None else None
        checkpoint = sign_checkpoint(
            self._key.private_key,
            self._key.name,
            origin=origin,
            size=head_seq,
            head_hash=head_hash,
            time=utc_timestamp(moment),
        )

        for anchor in self._anchors:
            try:
                await asyncio.to_thread(anchor.publish, checkpoint.note)
            except OSError as exc:
                raise AuditError(
                    f"cannot write the checkpoint of seq {head_seq} to {anchor.description}: "
                    f"{exc.strerror or exc}; check that it is writable"
                ) from exc
        return checkpoint

    async def _save(self, connection: AsyncConnection, checkpoint: Checkpoint) -> None:
        result = await connection.execute(
            insert(audit_checkpoint).values(
                size=checkpoint.size,
                head_hash=checkpoint.head_hash,
                time=checkpoint.time,
                key_name=self._key.name,
                note=checkpoint.note,
            )
        )
        self.size = checkpoint.size
        checkpoint_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
        logger.info(
            "audit checkpoint %s signed seq %d with key %s",
            checkpoint_id,
            checkpoint.size,
            self._key.name,
        )


async def read_origin(connection: AsyncConnection) -> str:
    """Return the origin line of the store's log.

    It comes from record 1, or from a stored checkpoint once a purge removed record 1.
    Raises AuditIntegrityError if neither exists.
    """
    first_hash = (
        await connection.execute(select(audit_record.c.hash).where(audit_record.c.seq == 1))
    ).scalar()
    if first_hash is not None:
        return log_origin(str(first_hash))
    note = (
        await connection.execute(
            select(audit_checkpoint.c.note).order_by(audit_checkpoint.c.size.desc()).limit(1)
        )
    ).scalar()
    if note is None:
        raise AuditIntegrityError(
            "neither audit record 1 nor a checkpoint found; run the audit verifier"
        )
    return str(note).split("\n", 1)[0]
