"""Keep PostgreSQL from storing sample subject keys and pseudonyms in its statistics.

ANALYZE, which autovacuum runs by itself, copies sample column values into the
``pg_statistic`` catalog as histogram bounds, and for ``audit_subject_key.key`` that
sample holds subject keys. A key left there after ``fonte audit forget`` would still
open the subject's sealed values. Statistics target 0 makes ANALYZE skip the columns.
Changing a column to its own type drops the statistics already collected for it,
without rewriting the table (PostgreSQL 15 documentation of ALTER TABLE). SQLite
collects no sample values unless built with SQLITE_ENABLE_STAT4 and analyzed, and the
gateway runs no ANALYZE, so this revision changes nothing there.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, type) of every column that contains a subject key or pseudonym.
_SUBJECT_COLUMNS = (
    ("audit_subject_key", "key", "bytea"),
    ("audit_subject_key", "ref", "text"),
    ("audit_subject", "ref", "text"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, column_type in _SUBJECT_COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {column_type}")
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS 0")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, _ in _SUBJECT_COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS -1")
