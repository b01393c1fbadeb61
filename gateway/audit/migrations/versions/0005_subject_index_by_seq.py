"""Key audit_subject by (seq, ref) and add the coarse index audit_subject_span.

With the key (ref, seq), every commit wrote into about one index page per subject
that its records name: 100 pages for a list of 100 customers. Keyed by (seq, ref),
the rows of a commit land on the last pages of the table. Lookups by pseudonym read
audit_subject_span first, which has one row per subject and span of
SUBJECT_SPAN_RECORDS records (see gateway.audit.schema).

The revision copies the rows into a new table in seq order and derives the spans from
them. On SQLite the new tables are WITHOUT ROWID: the key is the row. On PostgreSQL
the pseudonym columns get statistics target 0, as revision 0004 set for the old table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQ_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# gateway.audit.schema.SUBJECT_SPAN_RECORDS when this revision was written. A revision
# must not change with later code, so the value is copied here.
SPAN_RECORDS = 1024


def _zero_dropped_pages() -> None:
    """Make SQLite overwrite the pages of the tables that the revision drops with zeros.

    Without secure_delete, which SQLite builds leave off unless compiled with
    SQLITE_SECURE_DELETE, a dropped table's pages keep their content on the freelist.
    `fonte audit forget` zeroes only the rows that it deletes, so the pseudonyms in
    the old copy of audit_subject would stay in the file. The setting stays on for
    the rest of the migrating connection.
    """
    if op.get_bind().dialect.name == "sqlite":
        op.execute("PRAGMA secure_delete=ON")


def _create_subject_table(
    name: str, key: tuple[str, str], key_name: str, **options: bool
) -> None:
    """Create a copy of audit_subject called ``name``, with primary key ``key``.

    The constraints get the names they would have in a table created as
    audit_subject, because the copy is renamed to that once the old table is dropped.
    """
    op.create_table(
        name,
        sa.Column(
            "seq",
            SEQ_TYPE,
            sa.ForeignKey("audit_record.seq", name="audit_subject_seq_fkey"),
            nullable=False,
        ),
        sa.Column("ref", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(*key, name=key_name),
        **options,
    )


def upgrade() -> None:
    _create_subject_table("audit_subject_new", ("seq", "ref"), "pk_audit_subject",
                          sqlite_with_rowid=False)
    op.execute(
        "INSERT INTO audit_subject_new (seq, ref) "
        "SELECT seq, ref FROM audit_subject ORDER BY seq, ref"
    )
    op.create_table(
        "audit_subject_span",
        sa.Column("ref", sa.Text(), nullable=False),
        sa.Column("span", SEQ_TYPE, nullable=False),
        sa.PrimaryKeyConstraint("ref", "span", name="pk_audit_subject_span"),
        sqlite_with_rowid=False,
    )
    # seq and SPAN_RECORDS are integers, so / is integer division on both databases.
    op.execute(
        "INSERT INTO audit_subject_span (ref, span) "
        f"SELECT DISTINCT ref, seq / {SPAN_RECORDS} FROM audit_subject_new"
    )
    _zero_dropped_pages()
    # Dropping the table drops its index ix_audit_subject_seq, where it exists: stores
    # of the first release, stamped 0001, never had it.
    op.drop_table("audit_subject")
    op.rename_table("audit_subject_new", "audit_subject")
    if op.get_bind().dialect.name == "postgresql":
        for table in ("audit_subject", "audit_subject_span"):
            op.execute(f"ALTER TABLE {table} ALTER COLUMN ref SET STATISTICS 0")


def downgrade() -> None:
    _create_subject_table("audit_subject_old", ("ref", "seq"), "audit_subject_pkey")
    op.execute("INSERT INTO audit_subject_old (seq, ref) SELECT seq, ref FROM audit_subject")
    _zero_dropped_pages()
    op.drop_table("audit_subject")
    op.drop_table("audit_subject_span")
    op.rename_table("audit_subject_old", "audit_subject")
    op.create_index("ix_audit_subject_seq", "audit_subject", ["seq"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE audit_subject ALTER COLUMN ref SET STATISTICS 0")
