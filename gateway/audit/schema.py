"""The tables of the audit store, for queries.

The Alembic revisions in ``gateway/audit/migrations`` create and change these tables,
and must match them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Select,
    Table,
    Text,
    and_,
    func,
    literal,
    select,
)

metadata = MetaData()

# BIGINT on PostgreSQL, where INTEGER stops at 2**31 - 1. SQLite keeps INTEGER, so that
# seq stays the rowid.
_SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")

audit_record = Table(
    "audit_record",
    metadata,
    Column("seq", _SEQ_TYPE, primary_key=True, autoincrement=False),
    Column("time", Text, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("purpose", Text, nullable=True),
    Column("outcome", Text, nullable=False),
    # Canonical JSON of the event plus "seq" and "prev_hash". The other columns copy
    # body values so that exports can filter in SQL, and verify checks that they match.
    Column("body", Text, nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
    Index("ix_audit_record_actor_time", "actor", "time"),
    Index("ix_audit_record_time", "time"),
)

# The subject index: which records name the subject with this pseudonym. The key
# starts with seq, so the rows of one commit land on the last pages of the table. A
# key that started with ref touched about one page per subject on every commit.
# Lookups by pseudonym go through audit_subject_span first (see subject_seqs).
# `forget` deletes a subject's rows here, in audit_subject_span and in
# audit_subject_key.
audit_subject = Table(
    "audit_subject",
    metadata,
    Column("seq", _SEQ_TYPE, ForeignKey("audit_record.seq"), nullable=False),
    Column("ref", Text, nullable=False),
    PrimaryKeyConstraint("seq", "ref", name="pk_audit_subject"),
    sqlite_with_rowid=False,
)

# Records per span of the coarse index below.
SUBJECT_SPAN_RECORDS = 1024

# The coarse index: a row (ref, span) means that at least one record with
# seq // SUBJECT_SPAN_RECORDS == span names the subject ref. A subject that appears
# in many records of a span gets one row, so a busy gateway that names the same
# customers again and again writes few of them.
audit_subject_span = Table(
    "audit_subject_span",
    metadata,
    Column("ref", Text, nullable=False),
    Column("span", _SEQ_TYPE, nullable=False),
    PrimaryKeyConstraint("ref", "span", name="pk_audit_subject_span"),
    sqlite_with_rowid=False,
)

# One random AES-256-GCM key per subject pseudonym, which seals the pseudonym in the
# bodies of the subject's records (see gateway.audit.subject_keys).
audit_subject_key = Table(
    "audit_subject_key",
    metadata,
    Column("ref", Text, primary_key=True),
    Column("key", LargeBinary, nullable=False),
)

audit_checkpoint = Table(
    "audit_checkpoint",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # The other columns copy fields of the signed note, and verify checks that they match.
    Column("size", _SEQ_TYPE, nullable=False),
    Column("head_hash", Text, nullable=False),
    Column("time", Text, nullable=False),
    Column("key_name", Text, nullable=False),
    Column("note", Text, nullable=False),
    Index("ix_audit_checkpoint_size", "size"),
)


def subject_span(seq: int) -> int:
    """Return the span of record ``seq`` in ``audit_subject_span``."""
    return seq // SUBJECT_SPAN_RECORDS


def subject_seqs(ref: str) -> Select[tuple[int]]:
    """Return a query for the seqs of the records whose subject index names ``ref``.

    It reads the subject's spans from ``audit_subject_span``, then only those ranges
    of ``audit_subject``. The rows come in no particular order.
    """
    span = audit_subject_span.c.span
    return (
        select(audit_subject.c.seq)
        .select_from(audit_subject_span)
        .join(
            audit_subject,
            and_(
                audit_subject.c.ref == audit_subject_span.c.ref,
                audit_subject.c.seq >= span * SUBJECT_SPAN_RECORDS,
                audit_subject.c.seq < (span + 1) * SUBJECT_SPAN_RECORDS,
            ),
        )
        .where(audit_subject_span.c.ref == ref)
    )


def join_text(expression: ColumnElement[str], dialect_name: str) -> ColumnElement[str]:
    """Return the aggregate that joins ``expression`` over a group with single spaces.

    SQLite calls it ``group_concat`` and PostgreSQL ``string_agg``. Neither orders the
    items unless an ORDER BY is given, so callers must not rely on their order.
    """
    if dialect_name == "postgresql":
        return func.string_agg(expression, literal(" "))
    return func.group_concat(expression, literal(" "))


def hex_text(expression: ColumnElement[bytes], dialect_name: str) -> ColumnElement[str]:
    """Return ``expression`` in hexadecimal: upper case on SQLite, lower case on PostgreSQL."""
    if dialect_name == "postgresql":
        return func.encode(expression, literal("hex"))
    return func.hex(expression)
