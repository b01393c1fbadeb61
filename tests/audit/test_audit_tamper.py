"""Tampering with a checkpointed store, caught by `verify_store` and by offline_verify.py.

The fixture store has five records, checkpoint 1 at size 3 and checkpoint 2 at size 5,
both also in an anchor file. Each test tampers through plain sqlite3, then runs the
package verifier on the store and the offline verifier on an export of it.
"""

from __future__ import annotations

import ast
import json
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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
from gateway.audit.chain import GENESIS_HASH, chain_hash
from gateway.audit.checkpoint import key_id, sign_checkpoint
from gateway.audit.keys import CheckpointKey, load_public_keys
from gateway.audit.record import canonical_json
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.verify import VerifyReport, verify_store

OFFLINE_SCRIPT = Path(offline_verify.__file__)


@dataclass(frozen=True)
class Fixture:
    store: Path
    anchor: Path
    public_keys: Path
    key: CheckpointKey
    tmp: Path


@pytest.fixture
async def signed_store(tmp_path: Path) -> Fixture:
    key = new_key()
    path = tmp_path / "audit.db"
    anchor = tmp_path / "anchor.txt"
    store = await SQLiteAuditStore.open(
        path, checkpoint_key=key, anchors=[anchor_for(anchor)], checkpoint_interval=3600
    )
    try:
        for index in range(1, 6):
            await store.append(make_event(index))
            if index == 3:
                await store.checkpoint()
    finally:
        await store.close()
    return Fixture(path, anchor, publish(tmp_path / "public", key), key, tmp_path)


async def verify(fixture: Fixture, *, with_anchor: bool = False) -> VerifyReport:
    anchors = [fixture.anchor] if with_anchor else []
    return await verify_store(
        fixture.store, public_keys=load_public_keys(fixture.public_keys), anchors=anchors
    )


async def run_offline(
    fixture: Fixture, capsys: pytest.CaptureFixture[str], checkpoints: Path | None = None
) -> tuple[int, str]:
    export = await export_jsonl(fixture.store, fixture.tmp / "export.jsonl")
    notes = checkpoints or fixture.anchor
    capsys.readouterr()
    status = offline_verify.main([str(export), str(notes), str(fixture.public_keys)])
    captured = capsys.readouterr()
    return status, (captured.out + captured.err).strip()


def read_record(path: Path, seq: int) -> tuple[str, str]:
    with sqlite3.connect(path) as connection:
        body, prev_hash = connection.execute(
            "SELECT body, prev_hash FROM audit_record WHERE seq = ?", (seq,)
        ).fetchone()
    return str(body), str(prev_hash)


def rebuild_chain_from(path: Path, seq: int, last: int) -> None:
    """Edit record ``seq`` and recompute its hash and every later one, as an attacker can."""
    body, prev_hash = read_record(path, seq)
    bodies = {seq: body.replace('"records":1', '"records":0')}
    for later in range(seq + 1, last + 1):
        bodies[later] = read_record(path, later)[0]
    for current in range(seq, last + 1):
        parsed = json.loads(bodies[current])
        parsed["prev_hash"] = prev_hash
        new_body = canonical_json(parsed)
        new_hash = chain_hash(prev_hash, current, new_body)
        run_sql(
            path,
            "UPDATE audit_record SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            parameters=(new_body.decode(), prev_hash, new_hash, current),
        )
        prev_hash = new_hash


async def test_untouched_store_verifies_everywhere(
    signed_store: Fixture, capsys: pytest.CaptureFixture[str]
) -> None:
    report = await verify(signed_store, with_anchor=True)
    status, output = await run_offline(signed_store, capsys)

    assert report == VerifyReport(
        ok=True, records=5, first_bad_seq=None, reason=None, checkpoints=2, covered=5
    )
    assert status == 0
    assert output == "OK: 5 records and 2 checkpoints verified"


async def test_tail_after_checkpoint_is_named(signed_store: Fixture) -> None:
    store = await SQLiteAuditStore.open(signed_store.store)
    await store.append(make_event(6))
    await store.append(make_event(7))
    await store.close()

    report = await verify(signed_store)

    assert report.ok
    assert report.covered == 5
    assert report.summary() == (
        "7 records and 2 checkpoints verified; records 6-7 are after the newest "
        "checkpoint and verified by the hash chain only"
    )


async def test_edited_record_is_named(
    signed_store: Fixture, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sql(
        signed_store.store,
        "UPDATE audit_record SET body = replace(body, '\"records\":1', '\"records\":0') "
        "WHERE seq = 2",
    )

    report = await verify(signed_store)
    status, output = await run_offline(signed_store, capsys)

    assert (report.first_bad_seq, report.reason) == (2, "content changed")
    assert status == 1
    assert output == "FAILED: record 2 (export line 2): content changed"


async def test_deleted_record_is_named(
    signed_store: Fixture, capsys: pytest.CaptureFixture[str]
) -> None:
    delete_records(signed_store.store, 2)

    report = await verify(signed_store)
    status, output = await run_offline(signed_store, capsys)

    assert (report.first_bad_seq, report.reason) == (2, "record 2 missing")
    assert status == 1
    assert output.startswith("FAILED: record 2 (export line 2): expected record 2, found seq 3")


async def test_reordered_records_are_named(
    signed_store: Fixture, capsys: pytest.CaptureFixture[str]
) -> None:
    columns = "time, request_id, actor, purpose, outcome, body, prev_hash, hash"
    with sqlite3.connect(signed_store.store) as connection:
        second = connection.execute(f"SELECT {columns} FROM audit_record WHERE seq = 2").fetchone()
        fourth = connection.execute(f"SELECT {columns} FROM audit_record WHERE seq = 4").fetchone()
    assignments = ", ".join(f"{name.strip()} = ?" for name in columns.split(","))
    run_sql(signed_store.store, f"UPDATE audit_record SET {assignments} WHERE seq = 2",
            parameters=tuple(fourth))
    run_sql(signed_store.store, f"UPDATE audit_record SET {assignments} WHERE seq = 4",
            parameters=tuple(second))

    report = await verify(signed_store)
    status, output = await run_offline(signed_store, capsys)

    assert (report.first_bad_seq, report.reason) == (2, "out of order: body is for seq 4")
    assert status == 1
    assert output.startswith("FAILED: record 2 (export line 2): expected record 2, found seq 4")


async def test_inserted_record_is_named(
    signed_store: Fixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # Renumber records 3-5 to 4-6 and insert a forged record 3 linked to record 2.
    for seq in (5, 4, 3):
        run_sql(
            signed_store.store,
            f"UPDATE audit_subject SET seq = {seq + 1} WHERE seq = {seq}",
            f"UPDATE audit_record SET seq = {seq + 1} WHERE seq = {seq}",
        )
    forged = make_event(99)
    with sqlite3.connect(signed_store.store) as connection:
        (prev_hash,) = connection.execute("SELECT hash FROM audit_record WHERE seq = 2").fetchone()
    body = canonical_json({**forged, "seq": 3, "prev_hash": prev_hash})
    run_sql(
        signed_store.store,
        "INSERT INTO audit_record (seq, time, request_id, actor, purpose, outcome, body, "
        "prev_hash, hash) VALUES (3, ?, ?, ?, ?, ?, ?, ?, ?)",
        parameters=(
            forged["time"], forged["request_id"], forged["actor"], forged["purpose"],
            forged["outcome"], body.decode(), prev_hash, chain_hash(prev_hash, 3, body),
        ),
    )
    run_sql(
        signed_store.store,
        "INSERT INTO audit_subject (seq, ref) VALUES (3, ?)",
        parameters=(forged["subjects"][0]["ref"],),
    )

    report = await verify(signed_store)
    status, output = await run_offline(signed_store, capsys)

    # The forged record 3 links correctly, but checkpoint 1 signed the original record 3.
    expected = (
        "checkpoint 1 signed another hash for record 3: records 1-3 were changed and the "
        "chain rebuilt after them"
    )
    assert (report.first_bad_seq, report.reason) == (1, expected)
    assert status == 1
    assert output == f"FAILED: {expected}"


async def test_truncated_tail_is_detected(
    signed_store: Fixture, capsys: pytest.CaptureFixture[str]
) -> None:
    delete_records(signed_store.store, 4, 5)

    report = await verify(signed_store)
    status, output = await run_offline(signed_store, capsys)

    assert report == VerifyReport(
        ok=False,
        records=3,
        first_bad_seq=4,
        reason="log ends at record 3 but checkpoint 2 signed 5; records were removed from the end",
    )
    assert status == 1
    assert output == (
        "FAILED: record 4 missing: export ends at record 3 but checkpoint 2 signed 5; "
        "records were removed from the end"
    )


async def test_rebuilt_chain_is_detected(
    signed_store: Fixture, capsys: pytest.CaptureFixture[str]
) -> None:
    rebuild_chain_from(signed_store.store, 4, 5)

    report = await verify(signed_store)
    status, output = await run_offline(signed_store, capsys)

    expected = (
        "checkpoint 2 signed another hash for record 5: records 4-5 were changed and the "
        "chain rebuilt after them"
    )
    assert report == VerifyReport(ok=False, records=4, first_bad_seq=4, reason=expected)
    assert status == 1
    assert output == f"FAILED: {expected}"


async def test_rebuilt_chain_from_record_one(
    signed_store: Fixture, capsys: pytest.CaptureFixture[str]
) -> None:
    rebuild_chain_from(signed_store.store, 1, 5)

    report = await verify(signed_store)
    status, output = await run_offline(signed_store, capsys)

    assert report.first_bad_seq == 1
    assert report.reason is not None
    assert report.reason.startswith("checkpoint 1 signed another hash for record 3")
    assert status == 1
    assert output.startswith("FAILED: checkpoint 1 signed another hash for record 3")


async def test_edited_checkpoint_note_is_detected(signed_store: Fixture) -> None:
    run_sql(
        signed_store.store,
        "UPDATE audit_checkpoint SET note = replace(note, 'time 2', 'time 1'), "
        "time = replace(time, '2', '1') WHERE id = 2",
    )
    with sqlite3.connect(signed_store.store) as connection:
        (note,) = connection.execute("SELECT note FROM audit_checkpoint WHERE id = 2").fetchone()
    run_sql(
        signed_store.store,
        "UPDATE audit_checkpoint SET time = ? WHERE id = 2",
        parameters=(note.split("\n")[3].removeprefix("time "),),
    )

    report = await verify(signed_store)

    assert report.ok is False
    assert report.reason == "checkpoint 2: signature of key 'fonte-audit-1' is invalid"


async def test_edited_checkpoint_column_is_detected(signed_store: Fixture) -> None:
    run_sql(signed_store.store, "UPDATE audit_checkpoint SET size = 3 WHERE id = 2")

    report = await verify(signed_store)

    assert report.reason == "checkpoint 2: column size differs from note"


async def test_deleted_checkpoint_caught_by_anchor(signed_store: Fixture) -> None:
    # Without checkpoint 2 in the database, a truncation to 3 records passes there.
    run_sql(signed_store.store, "DELETE FROM audit_checkpoint WHERE id = 2")
    delete_records(signed_store.store, 4, 5)

    database_only = await verify(signed_store)
    anchored = await verify(signed_store, with_anchor=True)

    assert database_only.ok
    assert anchored.ok is False
    assert anchored.reason == (
        f"log ends at record 3 but anchor file {signed_store.anchor} entry 2 signed 5; "
        "records were removed from the end"
    )


async def test_replaced_checkpoint_caught_by_anchor(signed_store: Fixture) -> None:
    # A note signed with the real key, as after a key leak, that the anchor never saw.
    with sqlite3.connect(signed_store.store) as connection:
        (head,) = connection.execute("SELECT hash FROM audit_record WHERE seq = 4").fetchone()
        (note,) = connection.execute("SELECT note FROM audit_checkpoint WHERE id = 2").fetchone()
    replacement = sign_checkpoint(
        signed_store.key.private_key, signed_store.key.name, origin=note.split("\n")[0],
        size=4, head_hash=head, time="2026-12-04T21:00:00.000Z",
    )
    run_sql(
        signed_store.store,
        "UPDATE audit_checkpoint SET note = ?, size = 4, head_hash = ?, time = ? WHERE id = 2",
        parameters=(replacement.note, head, replacement.time),
    )

    report = await verify(signed_store, with_anchor=True)

    assert report.ok is False
    assert report.reason == (
        f"checkpoint 2 (size 4) is not in anchor file {signed_store.anchor}; the stored "
        "note was replaced, or the anchor file lost it"
    )


async def test_wrong_key_checkpoint_is_detected(
    signed_store: Fixture, capsys: pytest.CaptureFixture[str]
) -> None:
    intruder = new_key("fonte-audit-1")
    with sqlite3.connect(signed_store.store) as connection:
        (head,) = connection.execute("SELECT hash FROM audit_record WHERE seq = 5").fetchone()
        (note,) = connection.execute("SELECT note FROM audit_checkpoint WHERE id = 2").fetchone()
    forged = sign_checkpoint(
        intruder.private_key, intruder.name, origin=note.split("\n")[0], size=5,
        head_hash=head, time="2026-12-04T21:00:00.000Z",
    )
    run_sql(
        signed_store.store,
        "UPDATE audit_checkpoint SET note = ?, time = ? WHERE id = 2",
        parameters=(forged.note, forged.time),
    )
    forged_file = signed_store.tmp / "forged.txt"
    forged_file.write_text(forged.note + "\n", encoding="utf-8")

    report = await verify(signed_store)
    status, output = await run_offline(signed_store, capsys, checkpoints=forged_file)

    assert report.reason is not None
    assert report.reason.startswith("checkpoint 2: signed by unknown key 'fonte-audit-1'")
    assert status == 1
    assert output == "FAILED: checkpoint 1: signed by unknown key 'fonte-audit-1'"


async def test_offline_matches_package_hashes(signed_store: Fixture) -> None:
    export = await export_jsonl(signed_store.store, signed_store.tmp / "export.jsonl")
    prev_hash = GENESIS_HASH
    for line in export.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        body = {key: value for key, value in record.items() if key != "hash"}
        package_hash = chain_hash(prev_hash, body["seq"], canonical_json(body))
        offline_hash = offline_verify.chain_hash(
            prev_hash, body["seq"], offline_verify.canonical_json(body)
        )
        assert offline_verify.canonical_json(body) == canonical_json(body)
        assert offline_hash == package_hash == record["hash"]
        prev_hash = package_hash

    public_key = signed_store.key.public_key()
    assert offline_verify.key_id("k", public_key) == key_id("k", public_key)


def test_offline_script_imports_no_gateway() -> None:
    tree = ast.parse(OFFLINE_SCRIPT.read_text(encoding="utf-8"))
    modules = {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}

    assert not any(module.split(".")[0] == "gateway" for module in modules)


async def test_offline_script_runs_alone(signed_store: Fixture) -> None:
    export = await export_jsonl(signed_store.store, signed_store.tmp / "export.jsonl")
    copy = signed_store.tmp / "bundle" / "offline_verify.py"
    copy.parent.mkdir()
    copy.write_text(OFFLINE_SCRIPT.read_text(encoding="utf-8"), encoding="utf-8")

    result = subprocess.run(
        [sys.executable, "-I", str(copy), str(export), str(signed_store.anchor),
         str(signed_store.public_keys)],
        capture_output=True, text=True, timeout=60, check=False, cwd=copy.parent,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK: 5 records and 2 checkpoints verified"
