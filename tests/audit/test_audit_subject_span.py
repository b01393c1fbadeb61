"""Tests of the subject index keyed by seq and its coarse index audit_subject_span."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
from checkpoint_support import PSEUDONYMS, make_event, new_key
from sqlalchemy import create_engine
from sqlalchemy.dialects import sqlite
from sqlalchemy.event import listen

from gateway.audit.access_report import read_consultations
from gateway.audit.export import ExportFilter, export_records
from gateway.audit.keys import CheckpointKey
from gateway.audit.migrate import downgrade_schema, head_revision, upgrade_schema
from gateway.audit.operations import forget
from gateway.audit.record import AuditEvent
from gateway.audit.retention import purge_records
from gateway.audit.schema import SUBJECT_SPAN_RECORDS, subject_seqs
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.verify import verify_store
from gateway.errors import AuditError

SHARED = PSEUDONYMS.token("customer", "C-shared")
# Records that name SHARED besides their own customer: one in each of the first three
# spans of 1,024 records.
SHARED_SEQS = (5, 1500, 2100)
LAST_SEQ = 2100


def event(seq: int, time: str | None = None) -> AuditEvent:
    """The event that becomes record ``seq``: customer C-seq, and SHARED in SHARED_SEQS."""
    base = make_event(seq)
    subjects = [{"type": "customer", "ref": PSEUDONYMS.token("customer", f"C-{seq}")}]
    if seq in SHARED_SEQS:
        subjects.append({"type": "customer", "ref": SHARED})
    clock = f"2026-12-04T{10 + seq // 3600:02d}:{seq // 60 % 60:02d}:{seq % 60:02d}.000Z"
    return cast(AuditEvent, {**base, "time": time or clock, "request_id": f"req-{seq}",
                             "subjects": subjects})


async def append_in_order(store: SQLiteAuditStore, first: int, last: int,
                          time: str | None = None) -> None:
    """Append records first..last, 256 at a time so that they share commits."""
    for start in range(first, last + 1, 256):
        seqs = range(start, min(start + 256, last + 1))
        appended = await asyncio.gather(*(store.append(event(seq, time)) for seq in seqs))
        assert appended == list(seqs)


async def write_store(path: Path, key: CheckpointKey | None = None) -> None:
    store = await SQLiteAuditStore.open(path, checkpoint_key=key)
    await append_in_order(store, 1, LAST_SEQ)
    await store.close()


def downgrade_store(path: Path, revision: str) -> None:
    """Take the store at ``path`` back to the tables of ``revision``, keeping its rows."""
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        downgrade_schema(connection, revision)
    engine.dispose()


def rows(path: Path, statement: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as connection:
        return [tuple(row) for row in connection.execute(statement)]


def expected_spans() -> set[tuple[str, int]]:
    spans = {(PSEUDONYMS.token("customer", f"C-{seq}"), seq // SUBJECT_SPAN_RECORDS)
             for seq in range(1, LAST_SEQ + 1)}
    return spans | {(SHARED, seq // SUBJECT_SPAN_RECORDS) for seq in SHARED_SEQS}


async def exported_seqs(path: Path, ref: str) -> list[int]:
    out = io.StringIO()
    await export_records(path, out, fmt="jsonl", filters=ExportFilter(subject_ref=ref))
    return [json.loads(line)["seq"] for line in out.getvalue().splitlines()]


async def test_commit_writes_rows_and_spans(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    await write_store(path)

    subject_rows = rows(path, "SELECT seq, ref FROM audit_subject")
    span_rows = rows(path, "SELECT ref, span FROM audit_subject_span")
    assert len(subject_rows) == LAST_SEQ + len(SHARED_SEQS)
    assert set(span_rows) == expected_spans()
    assert len(span_rows) == len(expected_spans())


async def test_reopened_store_skips_existing_spans(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    await write_store(path)

    # The new store does not know the span rows of the last one, and the row
    # (SHARED, 2) exists: the insert must skip it, not fail.
    reopened = await SQLiteAuditStore.open(path)
    shared_again = cast(AuditEvent, {**event(LAST_SEQ + 1),
                                     "subjects": [{"type": "customer", "ref": SHARED}]})
    seq = await reopened.append(shared_again)
    await reopened.close()

    assert seq == LAST_SEQ + 1
    assert rows(path, f"SELECT span FROM audit_subject_span WHERE ref = '{SHARED}' "
                      "ORDER BY span") == [(0,), (1,), (2,)]
    assert await exported_seqs(path, SHARED) == [*SHARED_SEQS, LAST_SEQ + 1]


async def test_search_finds_every_span(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    await write_store(path)

    consultations = await read_consultations(path, SHARED)

    assert [item.time for item in consultations] == [event(seq)["time"] for seq in SHARED_SEQS]
    assert await exported_seqs(path, SHARED) == list(SHARED_SEQS)
    own = PSEUDONYMS.token("customer", "C-1500")
    assert await exported_seqs(path, own) == [1500]


def test_search_plan_reads_spans_only() -> None:
    statement = subject_seqs(SHARED).compile(
        dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
    engine = create_engine("sqlite://")
    with engine.begin() as connection:
        upgrade_schema(connection)
        plan = [row[3] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}")]
    engine.dispose()

    assert plan == [
        "SEARCH audit_subject_span USING PRIMARY KEY (ref=?)",
        "SEARCH audit_subject USING PRIMARY KEY (seq>? AND seq<?)",
    ]


async def test_verify_detects_deleted_span(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    await write_store(path)
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM audit_subject_span WHERE ref = ? AND span = 1", (SHARED,))

    report = await verify_store(path)

    assert report.ok is False
    assert report.first_bad_seq == 1500
    assert report.reason == (
        "subject index row of record 1500 has no row in audit_subject_span, so searches "
        "by subject skip the record"
    )


async def test_forget_deletes_rows_and_spans(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    await write_store(path)

    result, seq = await forget(path, SHARED, "dpo-1")

    assert (result.key_deleted, result.records_unlinked, seq) == (True, 3, LAST_SEQ + 1)
    assert rows(path, f"SELECT count(*) FROM audit_subject WHERE ref = '{SHARED}'") == [(0,)]
    assert rows(path, f"SELECT count(*) FROM audit_subject_span WHERE ref = '{SHARED}'") == [(0,)]
    assert await read_consultations(path, SHARED) == []
    report = await verify_store(path)
    assert report.ok, report.reason
    assert report.records == LAST_SEQ + 1


async def test_purge_keeps_cut_spans(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    key = new_key()
    store = await SQLiteAuditStore.open(path, checkpoint_key=key)
    await append_in_order(store, 1, 1500, time="2025-01-01T00:00:00.000Z")
    await store.checkpoint()
    await append_in_order(store, 1501, LAST_SEQ, time="2026-06-01T00:00:00.000Z")
    await store.close()

    result = await purge_records(path, datetime(2026, 1, 1, tzinfo=UTC))

    assert result.through_seq == 1500
    # Span 0 (records 1-1023) is gone; span 1 (1024-2047) lost only its first records.
    assert rows(path, "SELECT min(span), max(span) FROM audit_subject_span") == [(1, 2)]
    assert rows(path, "SELECT min(seq) FROM audit_subject") == [(1501,)]
    assert await exported_seqs(path, SHARED) == [2100]
    report = await verify_store(path, public_keys={key.name: key.private_key.public_key()})
    assert report.ok, report.reason


async def test_revision_0004_store_gets_spans(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    await write_store(path)
    downgrade_store(path, "0004")
    assert "audit_subject_span" not in {
        name for (name,) in rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}

    reopened = await SQLiteAuditStore.open(path)
    await reopened.close()

    assert rows(path, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    assert set(rows(path, "SELECT ref, span FROM audit_subject_span")) == expected_spans()
    assert len(rows(path, "SELECT seq, ref FROM audit_subject")) == LAST_SEQ + len(SHARED_SEQS)
    assert await exported_seqs(path, SHARED) == list(SHARED_SEQS)
    report = await verify_store(path)
    assert report.ok, report.reason


async def test_older_store_names_migrate(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = await SQLiteAuditStore.open(path)
    await store.append(event(1))
    await store.close()
    downgrade_store(path, "0004")
    expected = (f"audit store {path} is at schema revision 0004, not {head_revision()}; "
                "run `fonte audit migrate` first")

    with pytest.raises(AuditError) as verified:
        await verify_store(path)
    with pytest.raises(AuditError) as read:
        await read_consultations(path, SHARED)
    with pytest.raises(AuditError) as forgotten:
        await forget(path, SHARED, "dpo-1")

    assert str(verified.value) == expected
    assert str(read.value) == expected
    assert str(forgotten.value).endswith(expected)


def turn_off_secure_delete(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    dbapi_connection.execute("PRAGMA secure_delete=OFF")


async def test_forget_after_migration_leaves_no_bytes(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    await write_store(path)
    downgrade_store(path, "0004")
    # VACUUM leaves a store as revision 0004 wrote it, with no free pages.
    with sqlite3.connect(path) as connection:
        connection.execute("VACUUM")
    # Upstream SQLite builds leave secure_delete off, but some distributions compile
    # it on, so the test turns it off for the migration.
    engine = create_engine(f"sqlite:///{path}")
    listen(engine, "connect", turn_off_secure_delete)
    with engine.begin() as connection:
        upgrade_schema(connection)
    engine.dispose()

    result, _ = await forget(path, SHARED, "dpo-1")

    token = SHARED.encode("ascii").removeprefix(b"v1:")
    copies = path.read_bytes().count(token)
    assert result.key_deleted is True
    assert result.records_unlinked == 3
    assert copies == 0
