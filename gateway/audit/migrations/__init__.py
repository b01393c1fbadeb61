"""Alembic migrations of the audit store's schema, for SQLite and PostgreSQL.

`gateway.audit.migrate` runs them when a store opens and for ``fonte audit migrate``.
"""
