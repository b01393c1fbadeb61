"""Checks of signed checkpoints against the recomputed audit chain.

A checkpoint to check comes from the ``audit_checkpoint`` table ("checkpoint 3", by
id) or from an anchor file ("anchor file PATH entry 2", by position). Each must carry
a valid signature of a known key. While the verifier streams the records,
`CheckpointMatcher` compares each checkpoint's head hash with the recomputed hash at
its size. At the end it checks that the log is as long as every checkpoint and that
each checkpoint names this log's origin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    find_signature_fault,
    log_origin,
    parse_checkpoint,
)
from gateway.audit.schema import audit_checkpoint

# A checkpoint row's columns and the note fields they copy.
_COPIED_FIELDS = ("size", "head_hash", "time")


@dataclass(frozen=True)
class CheckpointFault:
    """A failed check. ``first_bad_seq`` is None when no record can be named."""

    first_bad_seq: int | None
    reason: str


@dataclass(frozen=True)
class LabelledCheckpoint:
    """A checkpoint with the label that a failure report uses for it."""

    label: str
    checkpoint: Checkpoint


async def read_stored_checkpoints(connection: AsyncConnection) -> list[Any]:
    """Read every row of ``audit_checkpoint`` in id order."""
    statement = select(audit_checkpoint).order_by(audit_checkpoint.c.id)
    return list((await connection.execute(statement)).all())


def check_stored_checkpoints(
    rows: Sequence[Any], public_keys: Mapping[str, Ed25519PublicKey]
) -> tuple[list[LabelledCheckpoint], CheckpointFault | None]:
    """Parse and check the signature of each stored checkpoint, stopping at the first fault."""
    checked: list[LabelledCheckpoint] = []
    for row in rows:
        label = f"checkpoint {row.id}"
        try:
            checkpoint = parse_checkpoint(str(row.note))
        except CheckpointError as exc:
            return checked, CheckpointFault(None, f"{label}: {exc}")
        for name in _COPIED_FIELDS:
            if getattr(row, name) != getattr(checkpoint, name):
                return checked, CheckpointFault(None, f"{label}: column {name} differs from note")
        if row.key_name not in checkpoint.key_names:
            return checked, CheckpointFault(None, f"{label}: column key_name differs from note")

        fault = find_signature_fault(checkpoint, public_keys)
        if fault is not None:
            return checked, CheckpointFault(None, f"{label}: {fault}")
        checked.append(LabelledCheckpoint(label, checkpoint))
    return checked, None


def check_anchor_notes(
    path: Path,
    notes: Sequence[str],
    stored: Sequence[LabelledCheckpoint],
    public_keys: Mapping[str, Ed25519PublicKey],
) -> tuple[list[LabelledCheckpoint], CheckpointFault | None]:
    """Check the notes of one anchor file, and that it contains every stored checkpoint.

    Returns the anchored checkpoints that are not stored, for the chain checks.
    """
    anchored: list[LabelledCheckpoint] = []
    for position, note in enumerate(notes, start=1):
        label = f"anchor file {path} entry {position}"
        try:
            checkpoint = parse_checkpoint(note)
        except CheckpointError as exc:
            return anchored, CheckpointFault(None, f"{label}: {exc}")
        fault = find_signature_fault(checkpoint, public_keys)
        if fault is not None:
            return anchored, CheckpointFault(None, f"{label}: {fault}")
        anchored.append(LabelledCheckpoint(label, checkpoint))

    anchored_notes = {item.checkpoint.note for item in anchored}
    for item in stored:
        if item.checkpoint.note not in anchored_notes:
            reason = (
                f"{item.label} (size {item.checkpoint.size}) is not in anchor file {path}; "
                "the stored note was replaced, or the anchor file lost it"
            )
            return anchored, CheckpointFault(None, reason)

    stored_notes = {item.checkpoint.note for item in stored}
    return [item for item in anchored if item.checkpoint.note not in stored_notes], None


class CheckpointMatcher:
    """Compares checkpoints with the chain as the verifier recomputes it, record by record.

    ``covered`` is the largest checkpoint size that matched so far.
    """

    def __init__(self, checkpoints: Sequence[LabelledCheckpoint]) -> None:
        self.covered = 0
        self._count = len(checkpoints)
        self._checkpoints = list(checkpoints)
        self._by_size: dict[int, list[LabelledCheckpoint]] = {}
        for item in checkpoints:
            self._by_size.setdefault(item.checkpoint.size, []).append(item)
        self._first_hash: str | None = None
        self._start_origin: str | None = None

    @property
    def count(self) -> int:
        return self._count

    def start_after(self, seq: int, origin: str) -> None:
        """Start from the checkpoint of size ``seq`` that a purged log continues from.

        Records up to ``seq`` were deleted, so their checkpoints count as covered, and
        ``origin`` replaces the one that record 1 would give.
        """
        self.covered = seq
        self._start_origin = origin

    def check_record(self, seq: int, record_hash: str) -> CheckpointFault | None:
        """Compare the checkpoints of size ``seq`` with the verified record ``seq``."""
        if seq == 1:
            self._first_hash = record_hash
        for item in self._by_size.get(seq, ()):
            if item.checkpoint.head_hash != record_hash:
                first = self.covered + 1
                span = f"record {seq}" if first == seq else f"records {first}-{seq}"
                return CheckpointFault(
                    first,
                    f"{item.label} signed another hash for record {seq}: {span} were changed "
                    "and the chain rebuilt after them",
                )
        if seq in self._by_size:
            self.covered = seq
        return None

    def finish(self, last_seq: int) -> CheckpointFault | None:
        """Check, once every record verified, the log length and the origin.

        ``last_seq`` is the seq of the last record, which is the number of records
        unless a purge removed the oldest.
        """
        longest = max(self._checkpoints, key=lambda item: item.checkpoint.size, default=None)
        if longest is not None and longest.checkpoint.size > last_seq:
            return CheckpointFault(
                last_seq + 1,
                f"log ends at record {last_seq} but {longest.label} signed "
                f"{longest.checkpoint.size}; records were removed from the end",
            )
        if self._first_hash is not None:
            origin = log_origin(self._first_hash)
            source = "record 1 gives"
        elif self._start_origin is not None:
            origin = self._start_origin
            source = "the checkpoint that the purged log continues from names"
        else:
            return None

        for item in self._checkpoints:
            if item.checkpoint.origin != origin:
                return CheckpointFault(
                    1,
                    f"{item.label} is for log {item.checkpoint.origin}, but {source} "
                    f"{origin}; the chain was rebuilt from record 1 or the checkpoint is "
                    "of another log",
                )
        return None
