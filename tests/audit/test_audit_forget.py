"""Tests of erasing a data subject from the audit log by destroying its key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import sqlite3
from pathlib import Path

import pytest
from checkpoint_support import make_event, new_key, publish, run_sql
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.audit.access_report import read_consultations
from gateway.audit.anchor import FileAnchor
from gateway.audit.chain import GENESIS_HASH, chain_hash
from gateway.audit.export import ExportFilter, export_records
from gateway.audit.keys import load_public_keys
from gateway.audit.operations import ErasureIncomplete, forget
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import AuditEvent, canonical_json
from gateway.audit.schema import subject_span
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.subject_keys import ForgetResult, SealedSubjects, open_subject
from gateway.audit.verify import verify_store
from gateway.errors import AuditError

PSEUDONYMS = Pseudonymizer(b"forget-test-key".ljust(32, b"."))
ERASED_ID = "CUST-ERASE-4711"
KEPT_ID = "CUST-KEEP-0815"
ERASED_REF = PSEUDONYMS.token("customer", ERASED_ID)
KEPT_REF = PSEUDONYMS.token("customer", KEPT_ID)


def event_about(index: int, *refs: str) -> AuditEvent:
    event = make_event(index)
    event["subjects"] = [{"type": "customer", "ref": ref} for ref in refs]
    return event


async def fill_store(folder: Path) -> tuple[Path, Path, Path]:
    """Write six records, three naming the erased subject, with a signed checkpoint."""
    path = folder / "audit.sqlite3"
    anchor = folder / "anchor.txt"
    key = new_key()
    keys_folder = publish(folder / "public", key)
    store = await SQLiteAuditStore.open(path, checkpoint_key=key, anchors=[FileAnchor(anchor)])
    try:
        await store.append(event_about(1, ERASED_REF))
        await store.append(event_about(2, KEPT_REF))
        await store.append(event_about(3, ERASED_REF, KEPT_REF))
        await store.append(event_about(4, KEPT_REF))
        await store.append(event_about(5, ERASED_REF))
        await store.append(event_about(6))
    finally:
        await store.close()
    return path, anchor, keys_folder


def files_containing(folder: Path, needles: list[bytes]) -> list[str]:
    """Return 'file: needle' for every file under ``folder`` that contains a needle."""
    found: list[str] = []
    for file in sorted(folder.rglob("*")):
        if not file.is_file():
            continue
        content = file.read_bytes()
        found.extend(f"{file.name}: {needle!r}" for needle in needles if needle in content)
    return found


def erased_key(path: Path) -> bytes:
    with sqlite3.connect(path) as connection:
        (key,) = connection.execute(
            "SELECT key FROM audit_subject_key WHERE ref = ?", (ERASED_REF,)
        ).fetchone()
    return bytes(key)


def needles_of_erased_subject(key: bytes) -> list[bytes]:
    token = ERASED_REF.encode("ascii")
    return [ERASED_ID.encode("ascii"), token, token.removeprefix(b"v1:"), key]


async def export_to(path: Path, target: Path, fmt: str, filters: ExportFilter) -> int:
    buffer = io.StringIO()
    count = await export_records(path, buffer, fmt=fmt, filters=filters)  # type: ignore[arg-type]
    target.write_text(buffer.getvalue(), encoding="utf-8")
    return count


async def test_scan_finds_subject_before_forget(tmp_path: Path) -> None:
    path, _, _ = await fill_store(tmp_path)
    needles = needles_of_erased_subject(erased_key(path))

    found = files_containing(tmp_path, needles)

    assert f"audit.sqlite3: {needles[1]!r}" in found
    assert f"audit.sqlite3: {needles[3]!r}" in found


async def test_forget_leaves_no_linking_byte(tmp_path: Path) -> None:
    path, anchor, _ = await fill_store(tmp_path)
    needles = needles_of_erased_subject(erased_key(path))

    await forget(path, ERASED_REF, "dpo-1")
    await export_to(path, tmp_path / "export.jsonl", "jsonl", ExportFilter())
    await export_to(path, tmp_path / "export.csv", "csv", ExportFilter())

    assert anchor.is_file()
    assert (tmp_path / "export.csv").read_text(encoding="utf-8").count(KEPT_REF) == 3
    assert files_containing(tmp_path, needles) == []


async def test_forget_keeps_log_verifiable(tmp_path: Path) -> None:
    path, anchor, keys_folder = await fill_store(tmp_path)

    result, seq = await forget(path, ERASED_REF, "dpo-1")
    report = await verify_store(path, public_keys=load_public_keys(keys_folder), anchors=[anchor])

    assert result.key_deleted is True
    assert result.records_unlinked == 3
    assert seq == 7
    assert report.ok is True
    assert report.records == 7
    assert report.checkpoints == 1
    assert report.covered == 6


async def test_forget_record_names_no_subject(tmp_path: Path) -> None:
    path, _, _ = await fill_store(tmp_path)

    await forget(path, ERASED_REF, "dpo-1")

    with sqlite3.connect(path) as connection:
        (body,) = connection.execute("SELECT body FROM audit_record WHERE seq = 7").fetchone()
    record = json.loads(body)
    assert record["kind"] == "forget"
    assert record["actor"] == "dpo-1"
    assert record["details"] == {"key_deleted": True, "records_unlinked": 3}
    assert "subjects" not in record


async def test_forget_records_erasure_when_log_busy(tmp_path: Path) -> None:
    path, _, _ = await fill_store(tmp_path)
    needles = needles_of_erased_subject(erased_key(path))
    # An open read transaction keeps SQLite from checkpointing the write-ahead log.
    reader = sqlite3.connect(path)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM audit_record").fetchone()
        with pytest.raises(ErasureIncomplete, match="could not be checkpointed") as raised:
            await forget(path, ERASED_REF, "dpo-1")
        busy_files = files_containing(tmp_path, needles)
        reader.rollback()
    finally:
        reader.close()

    result, seq = await forget(path, ERASED_REF, "dpo-1")

    with sqlite3.connect(path) as connection:
        bodies = connection.execute(
            "SELECT body FROM audit_record WHERE seq > 6 ORDER BY seq"
        ).fetchall()
    assert raised.value.seq == 7
    assert raised.value.result == ForgetResult(key_deleted=True, records_unlinked=3,
                                               wal_truncated=False)
    assert busy_files != []
    assert [json.loads(body)["details"] for (body,) in bodies] == [
        {"key_deleted": True, "records_unlinked": 3, "wal_truncated": False},
        {"key_deleted": False, "records_unlinked": 0},
    ]
    assert seq == 8
    assert result.wal_truncated is True
    assert files_containing(tmp_path, needles) == []


async def test_forgotten_subject_not_exported(tmp_path: Path) -> None:
    path, _, _ = await fill_store(tmp_path)

    await forget(path, ERASED_REF, "dpo-1")
    erased = await export_to(path, tmp_path / "a.jsonl", "jsonl", ExportFilter(ERASED_REF))
    kept = await export_to(path, tmp_path / "b.jsonl", "jsonl", ExportFilter(KEPT_REF))

    assert erased == 0
    assert kept == 3


async def test_forget_of_unknown_subject_records_it(tmp_path: Path) -> None:
    path, _, _ = await fill_store(tmp_path)

    result, seq = await forget(path, PSEUDONYMS.token("customer", "nobody"), "dpo-1")

    assert result.key_deleted is False
    assert result.records_unlinked == 0
    assert seq == 7


def seal_with_derived_nonce(key: bytes, ref: str, *, seq: int, kind: str) -> str:
    """Return the ``sealed`` value that earlier versions of Fonte wrote (docs/audit.md)."""
    nonce = hmac.new(key, b"nonce" + seq.to_bytes(8, "big"), hashlib.sha256).digest()[:12]
    associated = b"fonte-audit-subject-v1\x00" + seq.to_bytes(8, "big") + kind.encode()
    ciphertext = AESGCM(key).encrypt(nonce, ref.encode("ascii"), associated)
    return base64.b64encode(nonce + ciphertext).decode("ascii")


def write_old_record(path: Path, seq: int, prev_hash: str, ref: str,
                          key: bytes | None = None) -> str:
    """Append a record in a form of earlier versions, naming the subject ``ref``.

    Without ``key``, the pseudonym is in the body, as before subjects were sealed. With
    ``key``, it is sealed with a nonce derived from the key, and the key is stored as the
    subject's.
    """
    event = event_about(seq, ref)
    if key is not None:
        event["subjects"] = [{"type": "customer",  # type: ignore[typeddict-item]
                              "sealed": seal_with_derived_nonce(key, ref, seq=seq,
                                                                kind="customer")}]
        run_sql(path, "INSERT OR IGNORE INTO audit_subject_key (ref, key) VALUES (?, ?)",
                parameters=(ref, key))
    body = canonical_json({**event, "seq": seq, "prev_hash": prev_hash})
    record_hash = chain_hash(prev_hash, seq, body)
    run_sql(
        path,
        "INSERT INTO audit_record (seq, time, request_id, actor, purpose, outcome, body, "
        "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        parameters=(
            seq,
            event["time"],
            event["request_id"],
            event["actor"],
            event["purpose"],
            event["outcome"],
            body.decode("utf-8"),
            prev_hash,
            record_hash,
        ),
    )
    run_sql(path, "INSERT INTO audit_subject (seq, ref) VALUES (?, ?)", parameters=(seq, ref))
    # Revision 0005 gives the records of older releases their span rows.
    run_sql(path, "INSERT OR IGNORE INTO audit_subject_span (ref, span) VALUES (?, ?)",
            parameters=(ref, subject_span(seq)))
    return record_hash


async def unsealed_store(folder: Path) -> Path:
    path = folder / "audit.sqlite3"
    store = await SQLiteAuditStore.open(path)
    await store.close()
    first_hash = write_old_record(path, 1, GENESIS_HASH, ERASED_REF)
    write_old_record(path, 2, first_hash, KEPT_REF)
    return path


async def test_unsealed_records_still_verify(tmp_path: Path) -> None:
    path = await unsealed_store(tmp_path)
    store = await SQLiteAuditStore.open(path)
    await store.append(event_about(3, KEPT_REF))
    await store.close()

    report = await verify_store(path)

    assert report.ok is True
    assert report.records == 3


async def test_forget_rejects_unsealed_record(tmp_path: Path) -> None:
    path = await unsealed_store(tmp_path)

    with pytest.raises(AuditError, match=r"appears in audit record 1 .* written before subjects"):
        await forget(path, ERASED_REF, "dpo-1")

    report = await verify_store(path)
    assert report.ok is True
    assert report.records == 2


def test_derived_nonce_form_still_opens() -> None:
    key, ref = b"\x07" * 32, PSEUDONYMS.token("customer", "C-1001")
    entry = {"type": "customer", "sealed": seal_with_derived_nonce(key, ref, seq=5,
                                                                  kind="customer")}
    nonce = hmac.new(key, b"nonce" + (5).to_bytes(8, "big"), hashlib.sha256).digest()[:12]

    assert base64.b64decode(entry["sealed"])[:12] == nonce
    assert open_subject(key, entry, seq=5) == ref
    assert open_subject(key, entry, seq=6) is None
    assert SealedSubjects([entry], 5).opens(ref, key)
    assert not SealedSubjects([entry], 6).opens(ref, key)
    assert not SealedSubjects([entry], 5).opens(ref, b"\x08" * 32)


async def derived_nonce_store(folder: Path) -> Path:
    """Two records sealed with a derived nonce, then one in the current form."""
    path = folder / "audit.sqlite3"
    store = await SQLiteAuditStore.open(path)
    await store.close()
    first_hash = write_old_record(path, 1, GENESIS_HASH, ERASED_REF, b"\x05" * 32)
    write_old_record(path, 2, first_hash, KEPT_REF, b"\x06" * 32)
    store = await SQLiteAuditStore.open(path)
    await store.append(event_about(3, ERASED_REF, KEPT_REF))
    await store.close()
    return path


async def test_both_sealed_forms_verify_and_report(tmp_path: Path) -> None:
    path = await derived_nonce_store(tmp_path)
    with sqlite3.connect(path) as connection:
        bodies = [json.loads(body) for (body,) in connection.execute(
            "SELECT body FROM audit_record ORDER BY seq")]

    report = await verify_store(path)
    consultations = await read_consultations(path, ERASED_REF)

    assert [list(body["subjects"][0]) for body in bodies] == [
        ["sealed", "type"], ["sealed", "type"], ["seq_sealed", "type"]]
    # The store kept the subject's key, so the new record is sealed with it too.
    assert open_subject(b"\x05" * 32, bodies[2]["subjects"][0], seq=3) == ERASED_REF
    assert report.ok is True, report.reason
    assert report.records == 3
    assert [c.time for c in consultations] == ["2026-12-04T20:17:01.000Z",
                                               "2026-12-04T20:17:03.000Z"]


async def test_moved_index_in_older_form_detected(tmp_path: Path) -> None:
    path = await derived_nonce_store(tmp_path)
    # Record 2 names only the kept subject, and a new index row points it at the erased one.
    run_sql(path, "INSERT INTO audit_subject (seq, ref) VALUES (2, ?)", parameters=(ERASED_REF,))

    report = await verify_store(path)

    assert report.ok is False
    assert (report.first_bad_seq, report.reason) == (2, "subject index differs from body")


async def test_forget_across_both_sealed_forms(tmp_path: Path) -> None:
    path = await derived_nonce_store(tmp_path)

    result, _ = await forget(path, ERASED_REF, "dpo-1")
    report = await verify_store(path)

    assert result.records_unlinked == 2
    assert report.ok is True, report.reason
    assert await read_consultations(path, ERASED_REF) == []
    assert files_containing(tmp_path, needles_of_erased_subject(b"\x05" * 32)) == []


async def test_forget_one_of_many_subjects(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    refs = [PSEUDONYMS.token("customer", f"CUST-{number}") for number in range(200)]
    store = await SQLiteAuditStore.open(path)
    await store.append(event_about(1, *refs))
    await store.append(event_about(2, *reversed(refs)))
    await store.close()

    result, _ = await forget(path, refs[17], "dpo-1")
    report = await verify_store(path)

    assert result.records_unlinked == 2
    assert report.ok is True
    assert report.records == 3
