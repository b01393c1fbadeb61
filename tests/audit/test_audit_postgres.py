"""Tests of PostgresAuditStore on the local server: several writers, checkpoints, purge."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import cast

import pytest
from checkpoint_support import PSEUDONYMS, make_event, new_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from services import postgres_url
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.audit.export import ExportFilter, export_records
from gateway.audit.keys import CheckpointKey
from gateway.audit.migrate import downgrade_schema, head_revision
from gateway.audit.operations import forget
from gateway.audit.postgres import PostgresAuditStore
from gateway.audit.record import AuditEvent
from gateway.audit.retention import purge_records
from gateway.audit.subject_keys import open_subject
from gateway.audit.verify import verify_store
from gateway.errors import AuditError

WRITERS = 3
TASKS_PER_WRITER = 4
APPENDS_PER_TASK = 50


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with postgres_url() as url:
        yield url


async def fetch_all(url: str, statement: str) -> list[tuple[object, ...]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return [tuple(row) for row in (await connection.execute(text(statement))).all()]
    finally:
        await engine.dispose()


async def append_many(store: PostgresAuditStore, task: int) -> list[int]:
    seqs = []
    for index in range(APPENDS_PER_TASK):
        event = make_event(index % 60)
        event["request_id"] = f"task-{task}-{index}"
        seqs.append(await store.append(event))
    return seqs


def public_keys(key: CheckpointKey) -> dict[str, Ed25519PublicKey]:
    return {key.name: key.private_key.public_key()}


async def test_writers_share_one_gap_free_chain(database: str) -> None:
    key = new_key()
    stores = await asyncio.gather(*(
        PostgresAuditStore.open(database, checkpoint_key=key, checkpoint_interval=0.01)
        for _ in range(WRITERS)
    ))
    tasks = [
        append_many(store, writer * TASKS_PER_WRITER + task)
        for writer, store in enumerate(stores)
        for task in range(TASKS_PER_WRITER)
    ]
    results = await asyncio.gather(*tasks)
    for store in stores:
        await store.close()

    total = WRITERS * TASKS_PER_WRITER * APPENDS_PER_TASK
    seqs = sorted(seq for result in results for seq in result)
    assert seqs == list(range(1, total + 1))
    request_ids = await fetch_all(database, "SELECT request_id FROM audit_record")
    assert len({row[0] for row in request_ids}) == total

    report = await verify_store(database, public_keys=public_keys(key))
    assert report.ok, report.reason
    assert report.records == total
    assert report.covered == total


async def test_checkpoints_grow_with_several_signers(database: str) -> None:
    key = new_key()
    stores = await asyncio.gather(*(
        PostgresAuditStore.open(database, checkpoint_key=key, checkpoint_interval=0.01)
        for _ in range(WRITERS)
    ))
    await asyncio.gather(*(append_many(store, number) for number, store in enumerate(stores)))
    await asyncio.gather(*(store.checkpoint() for store in stores))
    for store in stores:
        await store.close()

    rows = await fetch_all(database, "SELECT size FROM audit_checkpoint ORDER BY id")
    sizes = [int(str(row[0])) for row in rows]
    assert sizes == sorted(set(sizes))
    assert sizes[-1] == WRITERS * APPENDS_PER_TASK


async def test_concurrent_opens_migrate_once(database: str) -> None:
    stores = await asyncio.gather(*(PostgresAuditStore.open(database) for _ in range(4)))
    for store in stores:
        await store.close()

    assert await fetch_all(database, "SELECT version_num FROM alembic_version") == [
        (head_revision(),)
    ]
    columns = await fetch_all(
        database,
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_name = 'audit_record' AND column_name = 'seq'",
    )
    assert columns == [("bigint",)]


async def test_store_rejects_unflushed_commits(database: str) -> None:
    name = database.rsplit("/", 1)[1]
    admin = create_async_engine(database, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f"ALTER DATABASE {name} SET synchronous_commit = off"))
    await admin.dispose()

    with pytest.raises(AuditError) as caught:
        await PostgresAuditStore.open(database)

    assert "runs with synchronous_commit = off" in str(caught.value)
    assert "set it to on for the audit database or its role" in str(caught.value)


async def test_open_rejects_other_url() -> None:
    with pytest.raises(ValueError) as caught:
        await PostgresAuditStore.open("sqlite+aiosqlite:///audit.db")

    assert str(caught.value) == (
        "audit store URL sqlite+aiosqlite:///audit.db is not a PostgreSQL URL; use "
        "postgresql+asyncpg://USER@HOST:PORT/DATABASE"
    )


async def test_purged_postgres_log_verifies(database: str) -> None:
    key = new_key()
    store = await PostgresAuditStore.open(database, checkpoint_key=key)
    for index in range(1, 6):
        await store.append(make_event(index))
    await store.checkpoint()
    for index in range(6, 9):
        await store.append(make_event(index))
    await store.close()

    # make_event dates every record 2026-12-04T20:17, so a later cutoff covers them all.
    result = await purge_records(database, datetime(2027, 1, 1, tzinfo=UTC))
    report = await verify_store(database, public_keys=public_keys(key))

    assert result.through_seq == 5
    assert result.records == 5
    assert report.ok, report.reason
    assert report.first_seq == 6
    # Records 6-8 and the purge record 9.
    assert report.records == 4


async def execute(url: str, statement: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def test_failed_commit_fails_batch_then_recovers(database: str) -> None:
    store = await PostgresAuditStore.open(database)
    assert await store.append(make_event(1)) == 1
    await execute(database, "ALTER TABLE audit_record ADD CONSTRAINT stop_at_one "
                  "CHECK (seq < 2) NOT VALID")

    with pytest.raises(AuditError) as caught:
        await store.append(make_event(2))
    healthy_after_failure = await store.healthy()
    await execute(database, "ALTER TABLE audit_record DROP CONSTRAINT stop_at_one")
    seq = await store.append(make_event(3))
    healthy_after_recovery = await store.healthy()
    await store.close()

    assert str(caught.value).startswith("audit commit to postgresql+asyncpg://")
    assert "stop_at_one" in str(caught.value)
    # The server's DETAIL quotes the failing row, which the message must leave out.
    assert "Failing row" not in str(caught.value)
    assert "req-2" not in str(caught.value)
    assert healthy_after_failure is False
    assert seq == 2
    assert healthy_after_recovery is True


async def test_forget_in_postgres(database: str) -> None:
    key = new_key()
    store = await PostgresAuditStore.open(database, checkpoint_key=key)
    for index in (1, 2, 1):
        await store.append(make_event(index))
    await store.close()
    forgotten = PSEUDONYMS.token("customer", "C-1")
    kept = PSEUDONYMS.token("customer", "C-2")

    result, seq = await forget(database, forgotten, "dpo-1")

    assert result.key_deleted is True
    assert result.records_unlinked == 2
    assert seq == 4
    assert await fetch_all(database, "SELECT ref FROM audit_subject_key") == [(kept,)]
    assert await fetch_all(database, "SELECT ref, seq FROM audit_subject") == [(kept, 2)]
    bodies = [str(body) for (body,) in await fetch_all(
        database, "SELECT body FROM audit_record ORDER BY seq")]
    assert all(forgotten not in body for body in bodies)
    assert json.loads(bodies[3])["kind"] == "forget"
    report = await verify_store(database, public_keys=public_keys(key))
    assert report.ok, report.reason
    assert report.records == 4


async def test_forget_while_store_appends(database: str) -> None:
    store = await PostgresAuditStore.open(database)
    assert await store.append(make_event(1)) == 1
    forgotten = PSEUDONYMS.token("customer", "C-1")
    [(old_key,)] = await fetch_all(database, "SELECT key FROM audit_subject_key")
    assert isinstance(old_key, bytes)

    # forget commits between two batches of the open store, with appends in flight.
    appends = [asyncio.create_task(store.append(make_event(1))) for _ in range(20)]
    result, forget_seq = await forget(database, forgotten, "dpo-1")
    seqs = await asyncio.gather(*appends, store.append(make_event(1)))
    await store.close()

    assert result.key_deleted is True
    assert sorted([*seqs, forget_seq]) == list(range(2, 24))
    [(new_key,)] = await fetch_all(database, "SELECT key FROM audit_subject_key")
    assert isinstance(new_key, bytes)
    assert new_key != old_key
    indexed = await fetch_all(database, "SELECT seq FROM audit_subject ORDER BY seq")
    after_forget = [seq for seq in seqs if seq > forget_seq]
    # Every record after the erasure is sealed with the new key and indexed again.
    assert [seq for (seq,) in indexed] == after_forget
    bodies = {seq: str(body) for seq, body in await fetch_all(
        database, "SELECT seq, body FROM audit_record")}
    for seq in after_forget:
        entry = json.loads(bodies[seq])["subjects"][0]
        assert open_subject(new_key, entry, seq=seq) == forgotten
    report = await verify_store(database)
    assert report.ok, report.reason
    assert report.records == 23


async def test_export_from_postgres(database: str) -> None:
    store = await PostgresAuditStore.open(database)
    for index in (1, 2):
        await store.append(make_event(index))
    await store.close()
    out = io.StringIO()

    count = await export_records(database, out, fmt="csv", filters=ExportFilter(
        subject_ref=PSEUDONYMS.token("customer", "C-2")))

    rows = out.getvalue().splitlines()
    assert count == 1
    assert rows[1].startswith("2,access,")
    assert PSEUDONYMS.token("customer", "C-2") in rows[1].split(",")


async def test_store_before_subject_keys_upgrades(database: str) -> None:
    store = await PostgresAuditStore.open(database)
    await store.close()
    engine = create_async_engine(database)
    async with engine.begin() as connection:
        await connection.run_sync(downgrade_schema, "0002")
    await engine.dispose()

    reopened = await PostgresAuditStore.open(database)
    seq = await reopened.append(make_event(1))
    await reopened.close()

    assert seq == 1
    assert await fetch_all(database, "SELECT version_num FROM alembic_version") == [
        (head_revision(),)]
    keys = await fetch_all(database, "SELECT ref, length(key) FROM audit_subject_key")
    assert keys == [(PSEUDONYMS.token("customer", "C-1"), 32)]
    report = await verify_store(database, public_keys={})
    assert report.ok, report.reason


async def test_span_rows_once_per_span(database: str) -> None:
    shared = PSEUDONYMS.token("customer", "C-shared")

    def naming_shared(index: int) -> AuditEvent:
        return cast(AuditEvent, {**make_event(index), "subjects": [
            {"type": "customer", "ref": shared},
            {"type": "customer", "ref": PSEUDONYMS.token("customer", f"C-{index}")},
        ]})

    store = await PostgresAuditStore.open(database)
    # One commit, then three more: the later ones meet the existing (shared, 0) row.
    await asyncio.gather(*(store.append(naming_shared(index)) for index in range(1, 5)))
    for index in range(5, 8):
        await store.append(naming_shared(index))
    await store.close()

    spans = await fetch_all(database, "SELECT ref, span FROM audit_subject_span ORDER BY ref")
    assert sorted(spans) == sorted(
        [(shared, 0)] + [(PSEUDONYMS.token("customer", f"C-{index}"), 0) for index in range(1, 8)]
    )
    out = io.StringIO()
    await export_records(database, out, fmt="jsonl", filters=ExportFilter(subject_ref=shared))
    assert [json.loads(line)["seq"] for line in out.getvalue().splitlines()] == list(range(1, 8))
    report = await verify_store(database, public_keys={})
    assert report.ok, report.reason
