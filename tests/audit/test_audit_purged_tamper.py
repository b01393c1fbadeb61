"""Tampering with a purged store, caught by `verify_store` and by offline_verify.py.

The fixture writes records 1-4 dated 2025 and checkpoint 1 at size 4, then records 5-8
dated 2026-07 and checkpoint 2 at size 8. A purge with a cutoff of 2026-06-01 deletes
records 1-4 and appends purge record 9. Records 10-11 follow, and checkpoint 3 covers
them. Every checkpoint is also in an anchor file, which the offline verifier reads.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
from checkpoint_support import (
    anchor_for,
    delete_records,
    export_jsonl,
    make_event,
    new_key,
    publish,
    run_sql,
)

from gateway.audit import offline_verify
from gateway.audit.chain import chain_hash
from gateway.audit.checkpoint import parse_checkpoint, sign_checkpoint, split_notes
from gateway.audit.keys import CheckpointKey, load_public_keys
from gateway.audit.record import AuditEvent, canonical_json
from gateway.audit.retention import purge_records
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.verify import VerifyReport, verify_store

CUTOFF = datetime(2026, 6, 1, tzinfo=UTC)
COLUMNS = ("time", "request_id", "actor", "purpose", "outcome", "body", "prev_hash", "hash")


@dataclass(frozen=True)
class Fixture:
    store: Path
    anchor: Path
    public_keys: Path
    key: CheckpointKey
    tmp: Path


def event_at(index: int, time: str) -> AuditEvent:
    return cast(AuditEvent, {**make_event(index), "time": time})


@pytest.fixture
async def purged_store(tmp_path: Path) -> Fixture:
    key = new_key()
    path = tmp_path / "audit.db"
    anchor = tmp_path / "anchor.txt"
    anchors = [anchor_for(anchor)]

    store = await SQLiteAuditStore.open(path, checkpoint_key=key, anchors=anchors)
    for index in range(1, 5):
        await store.append(event_at(index, "2025-01-01T00:00:00.000Z"))
    await store.checkpoint()
    for index in range(5, 9):
        await store.append(event_at(index, "2026-07-01T00:00:00.000Z"))
    await store.close()

    result = await purge_records(path, CUTOFF, retention_months=6)
    assert (result.through_seq, result.record_seq) == (4, 9)

    store = await SQLiteAuditStore.open(path, checkpoint_key=key, anchors=anchors)
    for index in (10, 11):
        await store.append(event_at(index, "2026-07-02T00:00:00.000Z"))
    await store.close()
    return Fixture(path, anchor, publish(tmp_path / "public", key), key, tmp_path)


async def verify(fixture: Fixture) -> VerifyReport:
    return await verify_store(fixture.store, public_keys=load_public_keys(fixture.public_keys))


async def run_offline(fixture: Fixture, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    export = await export_jsonl(fixture.store, fixture.tmp / "export.jsonl")
    capsys.readouterr()
    status = offline_verify.main([str(export), str(fixture.anchor), str(fixture.public_keys)])
    captured = capsys.readouterr()
    return status, (captured.out + captured.err).strip()


def read_row(path: Path, seq: int) -> tuple[object, ...]:
    with sqlite3.connect(path) as connection:
        row = connection.execute(
            f"SELECT {', '.join(COLUMNS)} FROM audit_record WHERE seq = ?", (seq,)
        ).fetchone()
    return tuple(row)


def write_row(path: Path, seq: int, values: tuple[object, ...]) -> None:
    assignments = ", ".join(f"{name} = ?" for name in COLUMNS)
    run_sql(path, f"UPDATE audit_record SET {assignments} WHERE seq = ?",
            parameters=(*values, seq))


def replace_first_checkpoint(fixture: Fixture, key: CheckpointKey, head_hash: str) -> None:
    """Replace checkpoint 1, the one the purged log continues from, in the table and anchor."""
    with sqlite3.connect(fixture.store) as connection:
        (note,) = connection.execute("SELECT note FROM audit_checkpoint WHERE id = 1").fetchone()
    original = parse_checkpoint(note)
    forged = sign_checkpoint(
        key.private_key, key.name, origin=original.origin, size=original.size,
        head_hash=head_hash, time=original.time,
    )
    run_sql(fixture.store, "UPDATE audit_checkpoint SET note = ?, head_hash = ? WHERE id = 1",
            parameters=(forged.note, forged.head_hash))
    notes = split_notes(fixture.anchor.read_text(encoding="utf-8"))
    notes[0] = forged.note
    fixture.anchor.write_text("".join(item + "\n" for item in notes), encoding="utf-8")


def edit_record(fixture: Fixture) -> None:
    run_sql(fixture.store, "UPDATE audit_record SET body = replace(body, "
            "'\"records\":1', '\"records\":0') WHERE seq = 6")


def delete_record(fixture: Fixture) -> None:
    delete_records(fixture.store, 6)


def insert_record(fixture: Fixture) -> None:
    # Renumber records 7-11 to 8-12 and insert a forged record 7 linked to record 6.
    for seq in range(11, 6, -1):
        run_sql(fixture.store, f"UPDATE audit_subject SET seq = {seq + 1} WHERE seq = {seq}",
                f"UPDATE audit_record SET seq = {seq + 1} WHERE seq = {seq}")
    forged = make_event(99)
    prev_hash = str(read_row(fixture.store, 6)[-1])
    body = canonical_json({**forged, "seq": 7, "prev_hash": prev_hash})
    run_sql(
        fixture.store,
        "INSERT INTO audit_record (seq, time, request_id, actor, purpose, outcome, body, "
        "prev_hash, hash) VALUES (7, ?, ?, ?, ?, ?, ?, ?, ?)",
        parameters=(forged["time"], forged["request_id"], forged["actor"], forged["purpose"],
                    forged["outcome"], body.decode(), prev_hash, chain_hash(prev_hash, 7, body)),
    )
    run_sql(fixture.store, "INSERT INTO audit_subject (seq, ref) VALUES (7, ?)",
            parameters=(forged["subjects"][0]["ref"],))


def reorder_records(fixture: Fixture) -> None:
    sixth, seventh = read_row(fixture.store, 6), read_row(fixture.store, 7)
    write_row(fixture.store, 6, seventh)
    write_row(fixture.store, 7, sixth)


def truncate_records(fixture: Fixture) -> None:
    delete_records(fixture.store, 10, 11)


def edit_purge_record(fixture: Fixture) -> None:
    run_sql(fixture.store, "UPDATE audit_record SET body = replace(body, "
            "'\"through_seq\":4', '\"through_seq\":3') WHERE seq = 9")


def cut_to_checkpoint(fixture: Fixture) -> None:
    # Checkpoint 2 signed record 8, but the purge record names checkpoint 1.
    delete_records(fixture.store, 5, 6, 7, 8)


def cut_without_checkpoint(fixture: Fixture) -> None:
    delete_records(fixture.store, 5, 6)


def forge_anchor_key(fixture: Fixture) -> None:
    head_hash = parse_checkpoint(split_notes(fixture.anchor.read_text("utf-8"))[0]).head_hash
    replace_first_checkpoint(fixture, new_key(fixture.key.name), head_hash)


def forge_anchor_hash(fixture: Fixture) -> None:
    # Signed with the real key, as after a key leak, over another hash for record 4.
    replace_first_checkpoint(fixture, fixture.key, "ab" * 32)


MISSING_PURGE = (
    "records 1-8 missing: the log continues from a signed checkpoint of record 8, but no "
    "purge record names it; records were deleted from the start"
)
RELINKED = "chain broken: prev_hash does not match the hash that the checkpoint of record 4 signed"
UNKNOWN_KEY = "checkpoint 1: signed by unknown key 'fonte-audit-1'"

# Each case: tamper, then (first bad seq, reason) from verify_store and the offline output.
CASES: list[tuple[str, Callable[[Fixture], None], tuple[int | None, str], str]] = [
    ("edited", edit_record, (6, "content changed"),
     "FAILED: record 6 (export line 2): content changed"),
    ("deleted", delete_record, (6, "record 6 missing"),
     "FAILED: record 6 (export line 2): expected record 6, found seq 7; records are "
     "missing or moved"),
    # The forged record 7 links to record 6, so the renumbered record 8 is the first bad.
    ("inserted", insert_record, (8, "out of order: body is for seq 7"),
     "FAILED: record 8 (export line 4): expected record 8, found seq 7; records are "
     "missing or moved"),
    ("reordered", reorder_records, (6, "out of order: body is for seq 7"),
     "FAILED: record 6 (export line 2): expected record 6, found seq 7; records are "
     "missing or moved"),
    ("truncated", truncate_records,
     (10, "log ends at record 9 but checkpoint 3 signed 11; records were removed from the end"),
     "FAILED: record 10 missing: export ends at record 9 but checkpoint 3 signed 11; "
     "records were removed from the end"),
    ("purge-record-edited", edit_purge_record, (9, "content changed"),
     "FAILED: record 9 (export line 5): content changed"),
    ("cut-to-checkpoint", cut_to_checkpoint, (1, MISSING_PURGE),
     "FAILED: " + MISSING_PURGE.replace("the log continues", "the export continues")),
    ("cut-without-checkpoint", cut_without_checkpoint, (1, "records 1-6 missing"),
     "FAILED: records 1-6 missing: the export starts at record 7, and no checkpoint signed "
     "record 6"),
    ("anchor-wrong-key", forge_anchor_key,
     (None, f"{UNKNOWN_KEY}; add its public key to the folder of checkpoint public keys"),
     f"FAILED: {UNKNOWN_KEY}"),
    ("anchor-other-hash", forge_anchor_hash, (5, RELINKED),
     f"FAILED: record 5 (export line 1): {RELINKED}"),
]


async def test_purged_store_verifies_everywhere(
    purged_store: Fixture, capsys: pytest.CaptureFixture[str]
) -> None:
    report = await verify(purged_store)
    status, output = await run_offline(purged_store, capsys)

    assert report == VerifyReport(
        ok=True, records=7, first_bad_seq=None, reason=None, checkpoints=3, covered=11,
        first_seq=5,
    )
    assert status == 0
    assert output == (
        "OK: 7 records and 3 checkpoints verified; records 1-4 were purged up to a signed "
        "checkpoint"
    )


async def test_purge_record_names_checkpoint(purged_store: Fixture) -> None:
    with sqlite3.connect(purged_store.store) as connection:
        (body,) = connection.execute("SELECT body FROM audit_record WHERE seq = 9").fetchone()
        (head_hash,) = connection.execute(
            "SELECT head_hash FROM audit_checkpoint WHERE size = 4").fetchone()
    record = json.loads(body)

    assert record["kind"] == "purge"
    assert record["actor"] == "fonte-audit-purge"
    assert record["details"] == {
        "through_seq": 4,
        "head_hash": head_hash,
        "records": 4,
        "cutoff": "2026-06-01T00:00:00.000Z",
        "retention_months": 6,
    }


@pytest.mark.parametrize(
    ("tamper", "expected_report", "expected_offline"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_purged_log_tamper_is_named(
    purged_store: Fixture,
    capsys: pytest.CaptureFixture[str],
    tamper: Callable[[Fixture], None],
    expected_report: tuple[int | None, str],
    expected_offline: str,
) -> None:
    tamper(purged_store)

    report = await verify(purged_store)
    status, output = await run_offline(purged_store, capsys)

    assert not report.ok
    assert (report.first_bad_seq, report.reason) == expected_report
    assert output == expected_offline
    assert status == 1
