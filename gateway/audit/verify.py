"""Verification of the audit hash chain.

The verifier reads records in seq order and stops at the first one that fails. The
report names that record's seq and one of these faults:

- ``content changed``: the body, prev_hash or hash of the record was edited.
- ``record N missing`` or ``records N-M missing``: records were deleted.
- ``out of order: body is for seq N``: the record was moved to another seq. A record
  inserted between others shows this too, at the first record renumbered to make room.
- ``chain broken: ...``: the record's own hash is consistent, but it does not link to
  the record before. This happens when someone edited the previous record and
  recomputed its hash.
- ``column NAME differs from body`` or ``subject index differs from body``: a copy
  that exports filter on (time, request_id, actor, purpose, outcome, subject refs)
  was edited. The index of a sealed subject must name a pseudonym whose key opens
  one of the record's sealed values. The sealed values of an erased subject have
  no index row and no key, and are not checked beyond the chain hash.

Stored checkpoints (see `gateway.audit.checkpoint`) add these faults, which name the
checkpoint:

- ``checkpoint N: ...``: the note does not parse, a column differs from it, or it has
  no valid signature of a known key.
- ``checkpoint N signed another hash for record S``: the chain up to S was rebuilt.
- ``log ends at record R but checkpoint N signed S``: records were removed from the end.
- ``checkpoint N ... is not in anchor file PATH``: the stored note was replaced.

A log purged for retention starts at a record N after 1. It verifies only if a signed
checkpoint of size N - 1 exists, record N links to that checkpoint's head hash, and a
later record of kind ``purge`` names that size and hash (``details.through_seq`` and
``details.head_hash``). Without the checkpoint the report is ``records 1-M missing``.
Without the purge record it is ``records 1-M missing: ... no purge record``, so
deleting the oldest records up to a stored checkpoint is detected as well.

NOTE: records appended after the newest checkpoint are verified by the chain only.
Until the next checkpoint, which the gateway signs within its checkpoint interval
(60 seconds by default) or at shutdown, they can be removed from the end, or edited
with the chain rebuilt from them, without a trace. A gateway that stops without
closing its store leaves them so until it restarts. Someone who has the checkpoint
private key can still forge every part.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Row, Select, func, literal, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.anchor import read_anchor_file
from gateway.audit.chain import GENESIS_HASH, chain_hash, is_chain_hash
from gateway.audit.migrate import require_head_revision
from gateway.audit.offline_verify import names_purge
from gateway.audit.postgres import open_reader
from gateway.audit.retention import PURGE_ACTOR
from gateway.audit.schema import SUBJECT_SPAN_RECORDS, audit_subject_span, hex_text, join_text
from gateway.audit.store import audit_record, audit_subject, audit_subject_key, describe_error
from gateway.audit.subject_keys import SealedSubjects
from gateway.audit.verify_checkpoints import (
    CheckpointFault,
    CheckpointMatcher,
    LabelledCheckpoint,
    check_anchor_notes,
    check_stored_checkpoints,
    read_stored_checkpoints,
)
from gateway.errors import AuditError

# Rows fetched per round trip. Memory use depends on this, not on the store size.
_FETCH_ROWS = 500
# Copied from the body into columns that exports filter on.
_FILTER_COLUMNS = ("time", "request_id", "actor", "purpose", "outcome")


@dataclass(frozen=True)
class StoredRow:
    """One row of ``audit_record``, as the verifier reads it.

    ``subject_refs`` is the set of refs that ``audit_subject`` lists for this seq, or None
    to skip the subject index check (an export file has no index). ``subject_keys``
    maps those of the refs that have a row in ``audit_subject_key`` to their key.
    """

    seq: int
    time: str
    request_id: str
    actor: str
    purpose: str | None
    outcome: str
    body: str
    prev_hash: str
    hash: str
    subject_refs: frozenset[str] | None = None
    subject_keys: Mapping[str, bytes] | None = None


@dataclass(frozen=True)
class VerifyReport:
    """The result of verifying a chain.

    ``records`` is the number of records that verified, which on failure are the ones
    before ``first_bad_seq``. ``reason`` names the fault, and is None when ``ok``.
    ``checkpoints`` is the number of signed checkpoints that verified, and ``covered``
    the size of the largest one: records after it are verified by the chain only.
    ``first_seq`` is the seq of the first stored record, after 1 once a purge removed
    the older records.
    """

    ok: bool
    records: int
    first_bad_seq: int | None
    reason: str | None
    checkpoints: int = 0
    covered: int = 0
    first_seq: int = 1

    def summary(self) -> str:
        """Describe the result in one line for people, naming what the chain alone covers."""
        if not self.ok:
            where = "a checkpoint"
            if self.first_bad_seq is not None:
                where = f"record {self.first_bad_seq}"
            verified = _count(self.records, "record")
            return f"broken at {where}: {self.reason} ({verified} verified before it)"

        text = (
            f"{_count(self.records, 'record')} and "
            f"{_count(self.checkpoints, 'checkpoint')} verified"
        )
        if self.first_seq > 1:
            text += f"; records 1-{self.first_seq - 1} were purged up to a signed checkpoint"
        last_seq = self.first_seq + self.records - 1
        if self.covered >= last_seq:
            return text
        if self.covered + 1 == last_seq:
            tail = f"record {last_seq} is"
        else:
            tail = f"records {self.covered + 1}-{last_seq} are"
        return f"{text}; {tail} after the newest checkpoint and verified by the hash chain only"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


class ChainVerifier:
    """Incremental chain check over rows in seq order, keeping only the previous hash.

    By default the chain starts at record 1. A purged log starts at ``first_seq``, whose
    record must link to ``prev_hash``, the hash that a signed checkpoint gives, and a
    later record must be the purge record that names that checkpoint.
    """

    def __init__(self, first_seq: int = 1, prev_hash: str = GENESIS_HASH) -> None:
        self._first_seq = first_seq
        self._expected_seq = first_seq
        self._prev_hash = prev_hash
        self._verified = 0
        self._purge_anchor = (first_seq - 1, prev_hash) if first_seq > 1 else None
        self._purge_recorded = first_seq <= 1
        # The subject type each pseudonym was last found under (see SealedSubjects).
        self._kind_hints: dict[str, str] = {}

    @property
    def last_seq(self) -> int:
        """The seq of the last verified record, or ``first_seq - 1`` before the first."""
        return self._expected_seq - 1

    def check(self, row: StoredRow) -> VerifyReport | None:
        """Check the next row. Returns the failure report, or None if the row verifies."""
        fault = self._find_fault(row)
        if fault is not None:
            bad_seq, reason = fault
            return VerifyReport(
                ok=False, records=self._verified, first_bad_seq=bad_seq, reason=reason
            )

        self._expected_seq = row.seq + 1
        self._prev_hash = row.hash
        self._verified += 1
        # The actor column matches the body, which _find_fault checked, so only the
        # purge records' bodies are parsed a second time.
        if not self._purge_recorded and row.actor == PURGE_ACTOR:
            body = _parse_body(row.body)
            self._purge_recorded = (
                body is not None
                and self._purge_anchor is not None
                and names_purge(body, self._purge_anchor)
            )
        return None

    def missing_purge_record(self) -> VerifyReport | None:
        """Return the failure for a purged log that has no purge record, once every row
        verified, or None."""
        if self._purge_recorded or self._purge_anchor is None:
            return None
        through = self._purge_anchor[0]
        span = "record 1" if through == 1 else f"records 1-{through}"
        return VerifyReport(
            ok=False,
            records=0,
            first_bad_seq=1,
            reason=(
                f"{span} missing: the log continues from a signed checkpoint of record "
                f"{through}, but no purge record names it; records were deleted from the start"
            ),
        )

    def report(self) -> VerifyReport:
        """Return the report for a chain whose rows all verified."""
        return VerifyReport(
            ok=True,
            records=self._verified,
            first_bad_seq=None,
            reason=None,
            first_seq=self._first_seq,
        )

    def _find_fault(self, row: StoredRow) -> tuple[int, str] | None:
        position_fault = self._find_position_fault(row.seq)
        if position_fault is not None:
            return position_fault

        body = _parse_body(row.body)
        if body is None:
            return row.seq, "body is not a JSON object"
        if body.get("seq") != row.seq:
            return row.seq, f"out of order: body is for seq {body.get('seq')!r}"
        if not _hash_matches(row, body):
            return row.seq, "content changed"
        if row.prev_hash != self._prev_hash:
            return row.seq, _chain_broken_reason(row.seq, self._first_seq)
        return _find_index_fault(row, body, self._kind_hints)

    def _find_position_fault(self, seq: int) -> tuple[int, str] | None:
        expected = self._expected_seq
        if seq < expected:
            return seq, f"out of order: seq {seq} follows seq {expected - 1}"
        if seq == expected + 1:
            return expected, f"record {expected} missing"
        if seq > expected:
            return expected, f"records {expected}-{seq - 1} missing"
        return None


def _parse_body(body: str) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body)
    except (TypeError, ValueError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _hash_matches(row: StoredRow, body: dict[str, Any]) -> bool:
    if body.get("prev_hash") != row.prev_hash:
        return False
    if not is_chain_hash(row.prev_hash) or not is_chain_hash(row.hash):
        return False
    return chain_hash(row.prev_hash, row.seq, row.body.encode("utf-8")) == row.hash


def _chain_broken_reason(seq: int, first_seq: int) -> str:
    if seq == 1:
        return "chain broken: prev_hash of the first record is not the genesis hash"
    if seq == first_seq:
        return (
            f"chain broken: prev_hash does not match the hash that the checkpoint of "
            f"record {seq - 1} signed"
        )
    return f"chain broken: prev_hash does not match the hash of record {seq - 1}"


def _find_index_fault(row: StoredRow, body: dict[str, Any],
                      kind_hints: dict[str, str]) -> tuple[int, str] | None:
    for name in _FILTER_COLUMNS:
        if body.get(name) != getattr(row, name):
            return row.seq, f"column {name} differs from body"
    if row.subject_refs is None:
        return None

    subjects = body.get("subjects", [])
    if not isinstance(subjects, list) or not all(isinstance(item, dict) for item in subjects):
        return row.seq, "subject index differs from body"
    if not _index_matches(row.seq, subjects, row.subject_refs, row.subject_keys or {},
                          kind_hints):
        return row.seq, "subject index differs from body"
    return None


def _index_matches(
    seq: int,
    subjects: list[dict[str, Any]],
    index_refs: frozenset[str],
    keys: Mapping[str, bytes],
    kind_hints: dict[str, str],
) -> bool:
    # Records written before sealing list the pseudonym itself under "ref", and
    # every one of those must be indexed.
    plain_refs = {subject.get("ref") for subject in subjects if "ref" in subject}
    if not plain_refs <= index_refs:
        return False
    sealed = SealedSubjects(subjects, seq, kind_hints)
    for ref in index_refs - plain_refs:
        key = keys.get(ref)
        if key is None or not sealed.opens(ref, key):
            return False
    return True


def verify_rows(rows: Iterable[StoredRow]) -> VerifyReport:
    """Verify ``rows``, which must be in seq order, and stop at the first bad one.

    Reads the rows one at a time, so a lazy iterable is verified in constant memory.
    """
    verifier = ChainVerifier()
    for row in rows:
        failure = verifier.check(row)
        if failure is not None:
            return failure
    return verifier.report()


async def verify_store(
    target: Path | str,
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    anchors: Sequence[Path] = (),
) -> VerifyReport:
    """Verify the chain, the subject index and the signed checkpoints of a store.

    ``target`` is the path of an SQLite store or the URL of a PostgreSQL store.

    Every stored checkpoint must be signed by a key in ``public_keys`` and match the
    recomputed chain, and the log must be at least as long as each. Every file in
    ``anchors`` must hold each stored checkpoint, and its own notes are checked the same
    way. Opens the store read-only and streams the rows, so memory use grows with the
    number of checkpoints but not of records. Works while a gateway is appending, and
    checks the records committed when the read started.

    Raises AuditError if the store or an anchor file is missing or cannot be read, and
    ValueError for a URL that is not PostgreSQL.
    """
    engine, location = open_reader(target)
    try:
        async with engine.connect() as connection:
            await require_head_revision(connection, location)
            # Checkpoints are read before the records, so a checkpoint written meanwhile
            # cannot cover records that this read does not see.
            stored = await read_stored_checkpoints(connection)
            checkpoints, fault = _check_checkpoints(stored, public_keys or {}, anchors)
            if fault is not None:
                return _checkpoint_failure(0, fault)
            matcher = CheckpointMatcher(checkpoints)
            first_seq = (await connection.execute(select(func.min(audit_record.c.seq)))).scalar()
            verifier, fault = _start_chain(first_seq, checkpoints, matcher)
            if fault is not None:
                return _checkpoint_failure(0, fault)
            return await _verify_records(connection, verifier, matcher)
    except (SQLAlchemyError, OSError) as exc:
        raise AuditError(f"cannot read audit store {location}: {describe_error(exc)}") from exc
    finally:
        await engine.dispose()


def _start_chain(
    first_seq: int | None,
    checkpoints: Sequence[LabelledCheckpoint],
    matcher: CheckpointMatcher,
) -> tuple[ChainVerifier, CheckpointFault | None]:
    """Return the verifier for a log whose first stored record is ``first_seq``.

    A log that starts after record 1 continues from a checkpoint of size
    ``first_seq - 1``. Without one, the verifier starts at 1 and reports the gap.
    """
    if first_seq is None or first_seq <= 1:
        return ChainVerifier(), None
    purged_through = int(first_seq) - 1
    anchors = [item for item in checkpoints if item.checkpoint.size == purged_through]
    if not anchors:
        return ChainVerifier(), None

    head_hashes = {item.checkpoint.head_hash for item in anchors}
    if len(head_hashes) > 1:
        labels = " and ".join(item.label for item in anchors)
        return ChainVerifier(), CheckpointFault(
            int(first_seq), f"{labels} signed different hashes for record {purged_through}"
        )
    start = anchors[0].checkpoint
    matcher.start_after(purged_through, start.origin)
    return ChainVerifier(int(first_seq), start.head_hash), None


def _check_checkpoints(
    stored_rows: Sequence[Any],
    public_keys: Mapping[str, Ed25519PublicKey],
    anchors: Sequence[Path],
) -> tuple[list[LabelledCheckpoint], CheckpointFault | None]:
    stored, fault = check_stored_checkpoints(stored_rows, public_keys)
    if fault is not None:
        return stored, fault

    checkpoints = list(stored)
    for anchor_path in anchors:
        notes = read_anchor_file(anchor_path)
        anchored, fault = check_anchor_notes(anchor_path, notes, stored, public_keys)
        if fault is not None:
            return checkpoints, fault
        known = {item.checkpoint.note for item in checkpoints}
        checkpoints.extend(item for item in anchored if item.checkpoint.note not in known)
    return checkpoints, None


async def _verify_records(
    connection: AsyncConnection, verifier: ChainVerifier, matcher: CheckpointMatcher
) -> VerifyReport:
    statement = _stored_rows_query(connection.dialect.name).execution_options(
        yield_per=_FETCH_ROWS
    )
    async with connection.stream(statement) as result:
        async for row in result:
            stored_row = _to_stored_row(row)
            failure = verifier.check(stored_row)
            if failure is not None:
                return failure
            fault = matcher.check_record(stored_row.seq, stored_row.hash)
            if fault is not None:
                return _checkpoint_failure(stored_row.seq - 1, fault)

    records = verifier.report().records
    fault = matcher.finish(verifier.last_seq)
    if fault is not None:
        return _checkpoint_failure(records, fault)
    unrecorded_purge = verifier.missing_purge_record()
    if unrecorded_purge is not None:
        return unrecorded_purge

    orphan_seq = (await connection.execute(_orphan_subject_query())).scalar()
    if orphan_seq is not None:
        return VerifyReport(
            ok=False,
            records=records,
            first_bad_seq=int(orphan_seq),
            reason=f"subject index lists record {orphan_seq}, which is not stored",
        )
    unspanned_seq = (await connection.execute(_unspanned_subject_query())).scalar()
    if unspanned_seq is not None:
        return VerifyReport(
            ok=False,
            records=records,
            first_bad_seq=int(unspanned_seq),
            reason=f"subject index row of record {unspanned_seq} has no row in "
            "audit_subject_span, so searches by subject skip the record",
        )
    return VerifyReport(
        ok=True,
        records=records,
        first_bad_seq=None,
        reason=None,
        checkpoints=matcher.count,
        covered=matcher.covered,
        first_seq=verifier.report().first_seq,
    )


def _checkpoint_failure(records: int, fault: CheckpointFault) -> VerifyReport:
    return VerifyReport(
        ok=False, records=records, first_bad_seq=fault.first_bad_seq, reason=fault.reason
    )


def _stored_rows_query(dialect_name: str) -> Select[Any]:
    # A correlated subquery keeps the scan in seq order without a GROUP BY, which
    # would make SQLite collect the rows before it returns the first.
    # Each item is "<ref>=<hex key>", with nothing after "=" when the ref has no key.
    key_hex = func.coalesce(hex_text(audit_subject_key.c.key, dialect_name), literal(""))
    joined_refs = join_text(audit_subject.c.ref + literal("=") + key_hex, dialect_name)
    refs = (
        select(joined_refs)
        .select_from(
            audit_subject.outerjoin(
                audit_subject_key, audit_subject_key.c.ref == audit_subject.c.ref
            )
        )
        .where(audit_subject.c.seq == audit_record.c.seq)
        .scalar_subquery()
    )
    # The count catches a row whose ref itself contains the separator.
    ref_rows = (
        select(func.count())
        .where(audit_subject.c.seq == audit_record.c.seq)
        .scalar_subquery()
    )
    return select(
        audit_record.c.seq,
        audit_record.c.time,
        audit_record.c.request_id,
        audit_record.c.actor,
        audit_record.c.purpose,
        audit_record.c.outcome,
        audit_record.c.body,
        audit_record.c.prev_hash,
        audit_record.c.hash,
        refs.label("subject_refs"),
        ref_rows.label("subject_rows"),
    ).order_by(audit_record.c.seq)


def _unspanned_subject_query() -> Select[Any]:
    """Return the smallest seq of an audit_subject row whose span row is missing."""
    spanned = select(audit_subject_span.c.ref).where(
        audit_subject_span.c.ref == audit_subject.c.ref,
        audit_subject_span.c.span == audit_subject.c.seq // SUBJECT_SPAN_RECORDS,
    )
    return select(func.min(audit_subject.c.seq)).where(~spanned.exists())


def _orphan_subject_query() -> Select[Any]:
    # NOT EXISTS plans as an anti-join on both databases. PostgreSQL runs ``NOT IN
    # (subquery)`` as a subplan per row once the subquery outgrows work_mem, which took
    # minutes on a log of 100,000 records.
    stored = select(audit_record.c.seq).where(audit_record.c.seq == audit_subject.c.seq)
    return select(func.min(audit_subject.c.seq)).where(~stored.exists())


def _to_stored_row(row: Row[Any]) -> StoredRow:
    # The columns are NOT NULL unless someone changed the schema. A None is turned into
    # the text "None", which fails the checks instead of raising here.
    refs_text = row.subject_refs
    parts = refs_text.split(" ") if refs_text else []
    keys: dict[str, bytes] = {}
    names = []
    malformed = False
    for part in parts:
        ref, separator, key_hex = part.rpartition("=")
        names.append(ref if separator else part)
        try:
            if key_hex and separator:
                keys[ref] = bytes.fromhex(key_hex)
        except ValueError:
            malformed = True
    refs = frozenset(names)
    if malformed or len(parts) != int(row.subject_rows) or len(refs) != len(parts):
        # A ref with a space inside, or a repeated ref, is not what append writes.
        refs = frozenset({*refs, "<malformed subject index>"})
    return StoredRow(
        seq=int(row.seq),
        time=str(row.time),
        request_id=str(row.request_id),
        actor=str(row.actor),
        purpose=row.purpose,
        outcome=str(row.outcome),
        body=str(row.body),
        prev_hash=str(row.prev_hash),
        hash=str(row.hash),
        subject_refs=refs,
        subject_keys=keys,
    )
