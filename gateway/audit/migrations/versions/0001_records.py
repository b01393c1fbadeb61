"""Create audit_record and audit_subject, the tables of the first release.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# BIGINT on PostgreSQL, where INTEGER stops at 2**31 - 1. SQLite keeps INTEGER, so
# that seq stays the rowid, as in the stores that the first release created.
SEQ_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_record",
        sa.Column("seq", SEQ_TYPE, primary_key=True, autoincrement=False),
        sa.Column("time", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.Text(), nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
    )
    op.create_index("ix_audit_record_actor_time", "audit_record", ["actor", "time"])
    op.create_index("ix_audit_record_time", "audit_record", ["time"])
    op.create_table(
        "audit_subject",
        sa.Column("seq", SEQ_TYPE, sa.ForeignKey("audit_record.seq"), nullable=False),
        sa.Column("ref", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("ref", "seq"),
    )
    op.create_index("ix_audit_subject_seq", "audit_subject", ["seq"])


def downgrade() -> None:
    op.drop_table("audit_subject")
    op.drop_table("audit_record")
