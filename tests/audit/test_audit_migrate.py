"""Tests of the audit schema migrations: fresh stores, stores of older releases, drift."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from checkpoint_support import make_event, new_key
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    insert,
    text,
)

from gateway.audit.chain import GENESIS_HASH, chain_hash
from gateway.audit.migrate import downgrade_schema, head_revision
from gateway.audit.record import canonical_json
from gateway.audit.schema import metadata
from gateway.audit.sqlite_store import SQLiteAuditStore
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


def unsealed_rows(
    count: int, head_seq: int = 0, head_hash: str = GENESIS_HASH
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Chain events as releases before subject keys did: the pseudonym in the body."""
    records: list[dict[str, Any]] = []
    subjects: list[dict[str, Any]] = []
    prev_hash = head_hash
    for seq in range(head_seq + 1, head_seq + count + 1):
        event = make_event(seq)
        body = canonical_json({**event, "seq": seq, "prev_hash": prev_hash})
        record_hash = chain_hash(prev_hash, seq, body)
        records.append({
            "seq": seq, "time": event["time"], "request_id": event["request_id"],
            "actor": event["actor"], "purpose": event["purpose"], "outcome": event["outcome"],
            "body": body.decode("utf-8"), "prev_hash": prev_hash, "hash": record_hash,
        })
        subjects.extend({"seq": seq, "ref": ref}
                        for ref in sorted({subject["ref"] for subject in event["subjects"]}))
        prev_hash = record_hash
    return records, subjects


def write_first_release_store(path: Path, count: int) -> None:
    """Create a store as the first release did: create_all, then chained rows."""
    old = first_release_tables()
    engine = create_engine(f"sqlite:///{path}")
    old.create_all(engine)
    records, subjects = unsealed_rows(count)
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
        "audit_subject_key",
        "audit_subject_span",
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


async def test_store_before_subject_keys_migrates(tmp_path: Path) -> None:
    # A store at revision 0002 contains pseudonyms in its bodies and has no key table.
    path = tmp_path / "audit.db"
    key = new_key()
    store = await SQLiteAuditStore.open(path, checkpoint_key=key)
    await store.close()
    engine = create_engine(f"sqlite:///{path}")
    records, subjects = unsealed_rows(3)
    with engine.begin() as connection:
        downgrade_schema(connection, "0002")
        connection.execute(insert(metadata.tables["audit_record"]), records)
        connection.execute(insert(metadata.tables["audit_subject"]), subjects)
    engine.dispose()

    reopened = await SQLiteAuditStore.open(path, checkpoint_key=key)
    seq = await reopened.append(make_event(4))
    await reopened.close()

    assert seq == 4
    assert stored_revision(path) == head_revision()
    assert "audit_subject_key" in table_names(path)
    with sqlite3.connect(path) as connection:
        body = connection.execute("SELECT body FROM audit_record WHERE seq = 4").fetchone()[0]
        key_rows = connection.execute("SELECT count(*) FROM audit_subject_key").fetchone()[0]
    assert '"seq_sealed":' in body
    assert key_rows == 1
    report = await verify_store(path, public_keys={key.name: key.private_key.public_key()})
    assert report.ok, report.reason
    assert report.records == 4


async def test_unversioned_store_with_subject_keys_is_stamped(tmp_path: Path) -> None:
    # The release that sealed subjects created its tables with create_all.
    path = tmp_path / "audit.db"
    store = await SQLiteAuditStore.open(path)
    await store.append(make_event(1))
    await store.close()
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        downgrade_schema(connection, "0003")
        connection.execute(text("DROP TABLE alembic_version"))
    engine.dispose()

    reopened = await SQLiteAuditStore.open(path)
    await reopened.append(make_event(2))
    await reopened.close()

    assert stored_revision(path) == head_revision()
    report = await verify_store(path, public_keys={})
    assert report.ok, report.reason
    assert report.records == 2
