"""Tests of the audit schema migrations: fresh stores, stores of older releases, drift."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from checkpoint_support import make_event, new_key
from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table, Text, create_engine, insert

from gateway.audit.chain import GENESIS_HASH
from gateway.audit.migrate import head_revision
from gateway.audit.schema import metadata
from gateway.audit.store import SQLiteAuditStore, build_rows, prepare_event
from gateway.audit.verify import verify_store


def stored_revision(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(revision)


def table_names(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {str(name) for (name,) in rows}


def first_release_tables() -> MetaData:
    """The two tables that the first release created with create_all, as it wrote them."""
    old = MetaData()
    Table(
        "audit_record",
        old,
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("time", Text, nullable=False),
        Column("request_id", Text, nullable=False),
        Column("actor", Text, nullable=False),
        Column("purpose", Text, nullable=True),
        Column("outcome", Text, nullable=False),
        Column("body", Text, nullable=False),
        Column("prev_hash", Text, nullable=False),
        Column("hash", Text, nullable=False),
    )
    Table(
        "audit_subject",
        old,
        Column("seq", Integer, ForeignKey("audit_record.seq"), nullable=False),
        Column("ref", Text, nullable=False),
    )
    return old


def write_first_release_store(path: Path, count: int) -> None:
    """Create a store as the first release did: create_all, then chained rows."""
    old = first_release_tables()
    engine = create_engine(f"sqlite:///{path}")
    old.create_all(engine)
    events = [make_event(index) for index in range(1, count + 1)]
    records, subjects, _ = build_rows([prepare_event(e) for e in events], 0, GENESIS_HASH)
    with engine.begin() as connection:
        connection.execute(insert(old.tables["audit_record"]), records)
        connection.execute(insert(old.tables["audit_subject"]), subjects)
    engine.dispose()


async def test_new_store_is_at_head_revision(tmp_path: Path) -> None:
    store = await SQLiteAuditStore.open(tmp_path / "audit.db")
    await store.close()

    assert stored_revision(tmp_path / "audit.db") == head_revision()
    assert table_names(tmp_path / "audit.db") == {
        "alembic_version",
        "audit_checkpoint",
        "audit_record",
        "audit_subject",
    }


async def test_migrations_match_schema_module(tmp_path: Path) -> None:
    store = await SQLiteAuditStore.open(tmp_path / "audit.db")
    await store.close()

    engine = create_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    engine.dispose()
    assert differences == []


async def test_first_release_store_migrates_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_first_release_store(path, 5)
    key = new_key()

    store = await SQLiteAuditStore.open(path, checkpoint_key=key)
    seq = await store.append(make_event(6))
    await store.close()

    assert seq == 6
    assert stored_revision(path) == head_revision()
    assert "audit_checkpoint" in table_names(path)
    report = await verify_store(path, public_keys={key.name: key.private_key.public_key()})
    assert report.ok, report.reason
    assert report.records == 6
    assert report.checkpoints == 1


async def test_store_without_version_table_is_stamped(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    key = new_key()
    store = await SQLiteAuditStore.open(path, checkpoint_key=key)
    await store.append(make_event(1))
    await store.close()
    # A store of the release before migrations: every table but alembic_version.
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE alembic_version")

    reopened = await SQLiteAuditStore.open(path, checkpoint_key=key)
    await reopened.append(make_event(2))
    await reopened.close()

    assert stored_revision(path) == head_revision()
    report = await verify_store(path, public_keys={key.name: key.private_key.public_key()})
    assert report.ok, report.reason
    assert report.records == 2
    assert report.checkpoints == 2
