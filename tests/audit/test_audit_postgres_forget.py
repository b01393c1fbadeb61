"""Erasure in a PostgreSQL store, checked byte by byte in the table and index pages.

The pages are read with the pageinspect extension's ``get_raw_page``, which returns
row versions that a DELETE left behind and SQL queries no longer return.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from checkpoint_support import PSEUDONYMS, make_event, new_key
from services import postgres_url
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from gateway.audit.migrate import downgrade_schema, head_revision
from gateway.audit.operations import forget
from gateway.audit.postgres import PostgresAuditStore
from gateway.audit.verify import verify_store

SUBJECT_TABLES = ("audit_subject", "audit_subject_key")


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with postgres_url() as url:
        yield url


async def relation_pages(connection: AsyncConnection) -> dict[str, list[bytes]]:
    """Return the raw pages of every table, index and TOAST table in the database's
    public schema, by relation name."""
    relations = (await connection.execute(text(
        "SELECT c.oid::regclass::text FROM pg_class c "
        "WHERE c.relkind IN ('r', 'i', 't') AND (c.relnamespace = 'public'::regnamespace "
        "OR c.oid IN (SELECT reltoastrelid FROM pg_class "
        "WHERE relnamespace = 'public'::regnamespace))"
    ))).scalars().all()
    pages: dict[str, list[bytes]] = {}
    for relation in relations:
        blocks = (await connection.execute(text(
            "SELECT pg_relation_size(CAST(:name AS regclass)) / "
            "current_setting('block_size')::int"), {"name": relation})).scalar_one()
        pages[relation] = [
            bytes((await connection.execute(
                text("SELECT get_raw_page(:name, :block)"),
                {"name": relation, "block": block},
            )).scalar_one())
            for block in range(int(blocks))
        ]
    return pages


async def find_bytes(url: str, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """Return, per needle name, the relations whose pages contain it."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            try:
                await connection.execute(text("CREATE EXTENSION IF NOT EXISTS pageinspect"))
            except DBAPIError as exc:
                pytest.skip(f"the pageinspect extension cannot be created: {exc.orig}")
            pages = await relation_pages(connection)
            await connection.commit()
    finally:
        await engine.dispose()
    found: dict[str, list[str]] = {}
    for name, needle in needles.items():
        for relation, blocks in sorted(pages.items()):
            if any(needle in page for page in blocks):
                found.setdefault(name, []).append(relation)
    return found


async def run(url: str, statement: str) -> list[tuple[object, ...]]:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            result = await connection.execute(text(statement))
            return [tuple(row) for row in result.all()] if result.returns_rows else []
    finally:
        await engine.dispose()


async def test_forget_leaves_no_bytes_in_pages(database: str) -> None:
    key = new_key()
    store = await PostgresAuditStore.open(database, checkpoint_key=key)
    for index in (1, 2, 1, 3, 1):
        await store.append(make_event(index))
    await store.close()
    # As autovacuum would; ANALYZE copies sample values of analyzed columns.
    await run(database, "ANALYZE audit_subject, audit_subject_key, audit_subject_span")
    ref = PSEUDONYMS.token("customer", "C-1")
    subject_key = (await run(
        database, f"SELECT key FROM audit_subject_key WHERE ref = '{ref}'"))[0][0]
    assert isinstance(subject_key, bytes)
    needles = {"pseudonym": ref.encode("ascii"), "key": subject_key}
    before = await find_bytes(database, needles)

    result, seq = await forget(database, ref, "dpo-1")

    after = await find_bytes(database, needles)
    assert before == {
        "pseudonym": ["audit_subject", "audit_subject_key", "audit_subject_key_pkey",
                      "audit_subject_span", "pk_audit_subject", "pk_audit_subject_span"],
        "key": ["audit_subject_key"],
    }
    assert (result.key_deleted, result.records_unlinked, seq) == (True, 3, 6)
    assert after == {}
    report = await verify_store(database, public_keys={key.name: key.private_key.public_key()})
    assert report.ok, report.reason
    assert report.records == 6


async def test_subject_columns_have_no_statistics(database: str) -> None:
    store = await PostgresAuditStore.open(database)
    for index in range(1, 60):
        await store.append(make_event(index))
    await store.close()

    await run(database, "ANALYZE audit_subject, audit_subject_key, audit_subject_span")
    analyzed = await run(
        database,
        "SELECT tablename, attname FROM pg_stats WHERE schemaname = 'public' "
        "AND tablename IN ('audit_subject', 'audit_subject_key', 'audit_subject_span') "
        "ORDER BY 1, 2",
    )

    # Only the seqs and spans are analyzed: the key and pseudonym columns are not sampled.
    assert analyzed == [("audit_subject", "seq"), ("audit_subject_span", "span")]


async def test_upgrade_drops_subject_statistics(database: str) -> None:
    store = await PostgresAuditStore.open(database)
    for index in range(1, 60):
        await store.append(make_event(index))
    await store.close()
    # Back to the tables of revision 0003, whose pseudonym and key columns had statistics.
    engine = create_async_engine(database)
    async with engine.begin() as connection:
        await connection.run_sync(downgrade_schema, "0003")
    await engine.dispose()
    await run(database, "ANALYZE audit_subject, audit_subject_key")
    sampled = await run(database, "SELECT count(*) FROM pg_stats WHERE attname IN ('key', 'ref')")

    reopened = await PostgresAuditStore.open(database)
    await reopened.close()

    remaining = await run(database, "SELECT count(*) FROM pg_stats WHERE attname IN ('key', 'ref')")
    assert sampled == [(3,)]
    assert remaining == [(0,)]
    assert await run(database, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
