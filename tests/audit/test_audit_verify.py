"""Tests of chain verification, with the stored records tampered through plain sqlite3."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.access_report import read_consultations
from gateway.audit.chain import GENESIS_HASH, chain_hash
from gateway.audit.keys import CheckpointKey
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import AuditEvent, canonical_json
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.verify import StoredRow, VerifyReport, verify_rows, verify_store
from gateway.errors import AuditError, AuditIntegrityError

PSEUDONYMS = Pseudonymizer(b"verify-test-key".ljust(32, b"."))
RECORD_COLUMNS = "time, request_id, actor, purpose, outcome, body, prev_hash, hash"


def make_event(index: int) -> AuditEvent:
    return cast(
        AuditEvent,
        {
            "time": f"2026-12-04T20:17:{index:02d}.000Z",
            "request_id": f"req-{index}",
            "actor": "emp-17",
            "roles": ["support"],
            "purpose": "support",
            "client": None,
            "operation_name": "CustomerCard",
            "operation_hash": hashlib.sha256(b"query CustomerCard").hexdigest(),
            "subjects": [{"type": "customer", "ref": PSEUDONYMS.token("customer", f"C-{index}")}],
            "fields": [
                {
                    "field": "Customer.phone",
                    "category": "contact.phone",
                    "decision": "mask",
                    "rule": "support-masked-phone",
                    "mask": "last4",
                }
            ],
            "systems": ["crm"],
            "records": 1,
            "outcome": "success",
            "policy_version": "2026-12-01",
        },
    )


@pytest.fixture
async def store_path(tmp_path: Path) -> Path:
    """A closed store with five valid records."""
    path = tmp_path / "audit.db"
    store = await SQLiteAuditStore.open(path)
    try:
        for index in range(1, 6):
            await store.append(make_event(index))
    finally:
        await store.close()
    return path


def run_sql(path: Path, *statements: str) -> None:
    connection = sqlite3.connect(path)
    try:
        for statement in statements:
            connection.execute(statement)
        connection.commit()
    finally:
        connection.close()


def read_hash(path: Path, seq: int) -> str:
    with sqlite3.connect(path) as connection:
        (value,) = connection.execute(
            "SELECT hash FROM audit_record WHERE seq = ?", (seq,)
        ).fetchone()
    return str(value)


def failure(records: int, first_bad_seq: int, reason: str) -> VerifyReport:
    return VerifyReport(ok=False, records=records, first_bad_seq=first_bad_seq, reason=reason)


async def test_untouched_store_verifies(store_path: Path) -> None:
    report = await verify_store(store_path)

    assert report == VerifyReport(ok=True, records=5, first_bad_seq=None, reason=None)


async def test_empty_store_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = await SQLiteAuditStore.open(path)
    await store.close()

    report = await verify_store(path)

    assert report == VerifyReport(ok=True, records=0, first_bad_seq=None, reason=None)


async def test_missing_store_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"

    with pytest.raises(AuditError, match=r"audit store .*absent\.db not found; check the path"):
        await verify_store(path)

    assert not path.exists()


async def test_verify_while_store_is_open(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = await SQLiteAuditStore.open(path)
    try:
        await store.append(make_event(1))
        await store.append(make_event(2))

        report = await verify_store(path)
    finally:
        await store.close()

    assert report == VerifyReport(ok=True, records=2, first_bad_seq=None, reason=None)


async def test_edited_body_is_detected(store_path: Path) -> None:
    run_sql(
        store_path,
        "UPDATE audit_record SET body = replace(body, '\"records\":1', '\"records\":0') "
        "WHERE seq = 3",
    )

    assert await verify_store(store_path) == failure(2, 3, "content changed")


async def test_edited_hash_is_detected(store_path: Path) -> None:
    run_sql(store_path, f"UPDATE audit_record SET hash = '{'f' * 64}' WHERE seq = 3")

    assert await verify_store(store_path) == failure(2, 3, "content changed")


async def test_malformed_hash_is_detected(store_path: Path) -> None:
    run_sql(store_path, "UPDATE audit_record SET hash = 'not a hash' WHERE seq = 2")

    assert await verify_store(store_path) == failure(1, 2, "content changed")


async def test_edited_prev_hash_column_is_detected(store_path: Path) -> None:
    run_sql(store_path, f"UPDATE audit_record SET prev_hash = '{'e' * 64}' WHERE seq = 4")

    assert await verify_store(store_path) == failure(3, 4, "content changed")


async def test_rehashed_edit_breaks_next_link(store_path: Path) -> None:
    # Edit record 3 and recompute its own hash, as an attacker with write access can.
    with sqlite3.connect(store_path) as connection:
        body, prev_hash = connection.execute(
            "SELECT body, prev_hash FROM audit_record WHERE seq = 3"
        ).fetchone()
    edited_body = body.replace('"records":1', '"records":0')
    edited_hash = chain_hash(prev_hash, 3, edited_body.encode("utf-8"))
    run_sql(
        store_path,
        f"UPDATE audit_record SET body = '{edited_body}', hash = '{edited_hash}' WHERE seq = 3",
    )

    report = await verify_store(store_path)

    assert report == failure(3, 4, "chain broken: prev_hash does not match the hash of record 3")


async def test_deleted_middle_record_is_detected(store_path: Path) -> None:
    run_sql(
        store_path,
        "DELETE FROM audit_subject WHERE seq = 3",
        "DELETE FROM audit_record WHERE seq = 3",
    )

    assert await verify_store(store_path) == failure(2, 3, "record 3 missing")


async def test_deleted_records_range_is_named(store_path: Path) -> None:
    run_sql(
        store_path,
        "DELETE FROM audit_subject WHERE seq IN (2, 3)",
        "DELETE FROM audit_record WHERE seq IN (2, 3)",
    )

    assert await verify_store(store_path) == failure(1, 2, "records 2-3 missing")


async def test_deleted_first_record_is_detected(store_path: Path) -> None:
    run_sql(
        store_path,
        "DELETE FROM audit_subject WHERE seq = 1",
        "DELETE FROM audit_record WHERE seq = 1",
    )

    assert await verify_store(store_path) == failure(0, 1, "record 1 missing")


async def test_swapped_records_are_detected(store_path: Path) -> None:
    # Every column except seq moves, so each row is internally consistent but misplaced.
    with sqlite3.connect(store_path) as connection:
        rows = {
            seq: connection.execute(
                f"SELECT {RECORD_COLUMNS} FROM audit_record WHERE seq = ?", (seq,)
            ).fetchone()
            for seq in (2, 4)
        }
    assignments = ", ".join(f"{name.strip()} = ?" for name in RECORD_COLUMNS.split(","))
    connection = sqlite3.connect(store_path)
    try:
        connection.execute(f"UPDATE audit_record SET {assignments} WHERE seq = 2", rows[4])
        connection.execute(f"UPDATE audit_record SET {assignments} WHERE seq = 4", rows[2])
        connection.commit()
    finally:
        connection.close()

    assert await verify_store(store_path) == failure(1, 2, "out of order: body is for seq 4")


async def test_inserted_record_is_detected(store_path: Path) -> None:
    # Renumber records 3-5 to 4-6, then insert a forged record 3 whose own hash and
    # link to record 2 are correct. The first renumbered record gives it away.
    statements = []
    for seq in (5, 4, 3):
        statements.append(f"UPDATE audit_subject SET seq = {seq + 1} WHERE seq = {seq}")
        statements.append(f"UPDATE audit_record SET seq = {seq + 1} WHERE seq = {seq}")
    run_sql(store_path, *statements)

    forged_event = make_event(99)
    prev_hash = read_hash(store_path, 2)
    body = canonical_json({**forged_event, "seq": 3, "prev_hash": prev_hash})
    connection = sqlite3.connect(store_path)
    try:
        connection.execute(
            f"INSERT INTO audit_record (seq, {RECORD_COLUMNS}) VALUES (3, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                forged_event["time"],
                forged_event["request_id"],
                forged_event["actor"],
                forged_event["purpose"],
                forged_event["outcome"],
                body.decode("utf-8"),
                prev_hash,
                chain_hash(prev_hash, 3, body),
            ),
        )
        connection.execute(
            "INSERT INTO audit_subject (seq, ref) VALUES (3, ?)",
            (forged_event["subjects"][0]["ref"],),
        )
        connection.commit()
    finally:
        connection.close()

    assert await verify_store(store_path) == failure(3, 4, "out of order: body is for seq 3")


async def test_edited_filter_column_is_detected(store_path: Path) -> None:
    run_sql(store_path, "UPDATE audit_record SET actor = 'emp-99' WHERE seq = 2")

    assert await verify_store(store_path) == failure(1, 2, "column actor differs from body")


async def test_removed_subject_key_is_detected(store_path: Path) -> None:
    ref = PSEUDONYMS.token("customer", "C-4")
    run_sql(store_path, f"DELETE FROM audit_subject_key WHERE ref = '{ref}'")

    assert await verify_store(store_path) == failure(3, 4, "subject index differs from body")


async def test_subject_index_moved_to_other_record_is_detected(store_path: Path) -> None:
    run_sql(store_path, "UPDATE audit_subject SET seq = 5 WHERE seq = 4")

    # Record 4 now looks like a record of an erased subject, but the key of that
    # subject opens no sealed value of record 5.
    assert await verify_store(store_path) == failure(4, 5, "subject index differs from body")


async def test_swapped_subject_keys_are_detected(store_path: Path) -> None:
    first = PSEUDONYMS.token("customer", "C-1")
    second = PSEUDONYMS.token("customer", "C-2")
    run_sql(
        store_path,
        f"UPDATE audit_subject_key SET ref = 'swap' WHERE ref = '{first}'",
        f"UPDATE audit_subject_key SET ref = '{first}' WHERE ref = '{second}'",
        f"UPDATE audit_subject_key SET ref = '{second}' WHERE ref = 'swap'",
    )

    assert await verify_store(store_path) == failure(0, 1, "subject index differs from body")


async def test_orphan_subject_index_row_is_detected(store_path: Path) -> None:
    run_sql(store_path, "INSERT INTO audit_subject (seq, ref) VALUES (99, 'v1:orphan')")

    report = await verify_store(store_path)

    assert report == failure(5, 99, "subject index lists record 99, which is not stored")


async def test_truncated_tail_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    key = CheckpointKey("fonte-audit-1", Ed25519PrivateKey.generate())
    store = await SQLiteAuditStore.open(path, checkpoint_key=key)
    for index in range(1, 6):
        await store.append(make_event(index))
    await store.close()
    run_sql(
        path,
        "DELETE FROM audit_subject WHERE seq = 5",
        "DELETE FROM audit_record WHERE seq = 5",
    )

    report = await verify_store(path, public_keys={key.name: key.public_key()})

    assert report == failure(
        4, 5, "log ends at record 4 but checkpoint 1 signed 5; records were removed from the end"
    )


def make_rows(count: int) -> list[StoredRow]:
    rows = []
    prev_hash = GENESIS_HASH
    for seq in range(1, count + 1):
        event = make_event(seq)
        body = canonical_json({**event, "seq": seq, "prev_hash": prev_hash})
        record_hash = chain_hash(prev_hash, seq, body)
        rows.append(
            StoredRow(
                seq=seq,
                time=event["time"],
                request_id=event["request_id"],
                actor=event["actor"],
                purpose=event["purpose"],
                outcome=event["outcome"],
                body=body.decode("utf-8"),
                prev_hash=prev_hash,
                hash=record_hash,
            )
        )
        prev_hash = record_hash
    return rows


def test_verify_rows_accepts_valid_chain() -> None:
    report = verify_rows(iter(make_rows(4)))

    assert report == VerifyReport(ok=True, records=4, first_bad_seq=None, reason=None)


def test_verify_rows_rejects_repeated_seq() -> None:
    rows = make_rows(3)

    report = verify_rows([rows[0], rows[1], rows[1], rows[2]])

    assert report == failure(2, 2, "out of order: seq 2 follows seq 2")


def test_verify_rows_rejects_moved_body() -> None:
    rows = make_rows(2)
    moved = dataclasses.replace(rows[1], seq=1)

    report = verify_rows([moved])

    assert report == failure(0, 1, "out of order: body is for seq 2")


def test_verify_rows_rejects_body_that_is_not_json() -> None:
    rows = make_rows(1)
    broken = dataclasses.replace(rows[0], body="[1, 2")

    report = verify_rows([broken])

    assert report == failure(0, 1, "body is not a JSON object")


def test_verify_rows_rejects_wrong_genesis_link() -> None:
    event = make_event(1)
    prev_hash = "1" * 64
    body = canonical_json({**event, "seq": 1, "prev_hash": prev_hash})
    row = StoredRow(
        seq=1,
        time=event["time"],
        request_id=event["request_id"],
        actor=event["actor"],
        purpose=event["purpose"],
        outcome=event["outcome"],
        body=body.decode("utf-8"),
        prev_hash=prev_hash,
        hash=chain_hash(prev_hash, 1, body),
    )

    report = verify_rows([row])

    assert report == failure(
        0, 1, "chain broken: prev_hash of the first record is not the genesis hash"
    )


def test_verify_rows_skips_index_check_without_refs() -> None:
    rows = make_rows(1)

    report = verify_rows(rows)

    assert rows[0].subject_refs is None
    assert report.ok


async def test_merged_subject_rows_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    store = await SQLiteAuditStore.open(path)
    event = make_event(0)
    event["subjects"] = [{"type": "customer", "ref": "v1:" + "a" * 32},
                         {"type": "customer", "ref": "v1:" + "b" * 32}]
    await store.append(event)
    await store.close()
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM audit_subject WHERE seq = 1")
        connection.execute("INSERT INTO audit_subject (seq, ref) VALUES (1, ?)",
                           ("v1:" + "a" * 32 + " v1:" + "b" * 32,))

    report = await verify_store(path)

    assert report.ok is False
    assert report.first_bad_seq == 1
    assert report.reason == "subject index differs from body"


async def two_subject_store(tmp_path: Path) -> tuple[Path, str, str]:
    """A store of one record naming two customers."""
    path = tmp_path / "audit.db"
    first, second = PSEUDONYMS.token("customer", "C-1"), PSEUDONYMS.token("customer", "C-2")
    event = make_event(1)
    event["subjects"] = [{"type": "customer", "ref": first}, {"type": "customer", "ref": second}]
    store = await SQLiteAuditStore.open(path)
    try:
        await store.append(event)
    finally:
        await store.close()
    return path, first, second


def rewrite_subject(path: Path, position: int, **changes: object) -> None:
    """Change one subject entry of record 1 and give the record a matching hash again."""
    with sqlite3.connect(path) as connection:
        (body,) = connection.execute("SELECT body FROM audit_record WHERE seq = 1").fetchone()
        record = json.loads(body)
        record["subjects"][position].update(changes)
        new_body = canonical_json(record)
        connection.execute("UPDATE audit_record SET body = ?, hash = ? WHERE seq = 1",
                           (new_body.decode(), chain_hash(GENESIS_HASH, 1, new_body)))


async def test_changed_subject_type_detected(tmp_path: Path) -> None:
    path, first, _ = await two_subject_store(tmp_path)
    # The other entry keeps the type the first value was sealed under.
    rewrite_subject(path, 0, type="contact")

    assert await verify_store(path) == failure(0, 1, "subject index differs from body")
    with pytest.raises(AuditIntegrityError):
        await read_consultations(path, first)


async def test_short_subject_key_detected(tmp_path: Path) -> None:
    path, first, _ = await two_subject_store(tmp_path)
    run_sql(path, f"UPDATE audit_subject_key SET key = substr(key, 1, 31) WHERE ref = '{first}'")

    assert await verify_store(path) == failure(0, 1, "subject index differs from body")
    with pytest.raises(AuditIntegrityError):
        await read_consultations(path, first)


async def test_non_text_sealed_value_detected(tmp_path: Path) -> None:
    path, _, second = await two_subject_store(tmp_path)
    rewrite_subject(path, 1, seq_sealed=["not", "text"])

    assert await verify_store(path) == failure(0, 1, "subject index differs from body")
    with pytest.raises(AuditIntegrityError):
        await read_consultations(path, second)
