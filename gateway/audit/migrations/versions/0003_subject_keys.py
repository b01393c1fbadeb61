"""Create audit_subject_key, the per-subject keys that seal pseudonyms in record bodies.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # LargeBinary is BLOB on SQLite and BYTEA on PostgreSQL.
    op.create_table(
        "audit_subject_key",
        sa.Column("ref", sa.Text(), primary_key=True),
        sa.Column("key", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_subject_key")
