"""Tests of retention: the cutoff, purging up to a checkpoint, and verifying a purged log."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
from checkpoint_support import delete_records, make_event, new_key, publish, run_sql
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from typer.testing import CliRunner

from gateway.audit.keys import CheckpointKey
from gateway.audit.record import AuditEvent
from gateway.audit.retention import purge_records, retention_cutoff
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.verify import verify_store
from gateway.cli import app

CUTOFF = datetime(2026, 6, 1, tzinfo=UTC)


def event_at(index: int, time: str) -> AuditEvent:
    return cast(AuditEvent, {**make_event(index), "time": time})


async def write_log(path: Path, key: CheckpointKey) -> None:
    """Write records 1-4 and 5-7 before the cutoff and 8-9 after, with checkpoints at 4 and 7.

    Record 8 comes after the cutoff, so the purge may delete through 7 at most.
    """
    store = await SQLiteAuditStore.open(path, checkpoint_key=key)
    for index in range(1, 5):
        await store.append(event_at(index, "2025-01-01T00:00:00.000Z"))
    await store.checkpoint()
    for index in range(5, 8):
        await store.append(event_at(index, "2026-05-31T23:59:59.999Z"))
    await store.checkpoint()
    for index in range(8, 10):
        await store.append(event_at(index, "2026-06-01T00:00:00.000Z"))
    await store.close()


def public_keys(key: CheckpointKey) -> dict[str, Ed25519PublicKey]:
    return {key.name: key.private_key.public_key()}


def record_seqs(path: Path) -> list[int]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT seq FROM audit_record ORDER BY seq").fetchall()
    return [int(seq) for (seq,) in rows]


@pytest.mark.parametrize(
    ("now", "months", "expected"),
    [
        (datetime(2026, 12, 4, 8, 30, tzinfo=UTC), 24, datetime(2024, 12, 4, 8, 30, tzinfo=UTC)),
        (datetime(2026, 8, 31, tzinfo=UTC), 6, datetime(2026, 2, 28, tzinfo=UTC)),
        (datetime(2028, 8, 31, tzinfo=UTC), 6, datetime(2028, 2, 29, tzinfo=UTC)),
        (datetime(2026, 3, 15, tzinfo=UTC), 3, datetime(2025, 12, 15, tzinfo=UTC)),
    ],
)
def test_retention_cutoff_in_calendar_months(
    now: datetime, months: int, expected: datetime
) -> None:
    assert retention_cutoff(now, months) == expected


async def test_purge_stops_at_checkpoint_before_cutoff(tmp_path: Path) -> None:
    path, key = tmp_path / "audit.db", new_key()
    await write_log(path, key)

    result = await purge_records(path, CUTOFF)

    assert result.through_seq == 7
    assert result.records == 7
    assert result.checkpoint_id == 2
    assert result.cutoff == "2026-06-01T00:00:00.000Z"
    assert result.record_seq == 10
    assert record_seqs(path) == [8, 9, 10]


async def test_purged_log_verifies_from_checkpoint(tmp_path: Path) -> None:
    path, key = tmp_path / "audit.db", new_key()
    await write_log(path, key)
    await purge_records(path, CUTOFF)

    report = await verify_store(path, public_keys=public_keys(key))

    assert report.ok, report.reason
    assert report.first_seq == 8
    assert report.records == 3
    assert report.checkpoints == 3
    assert report.covered == 9
    assert report.summary() == (
        "3 records and 3 checkpoints verified; records 1-7 were purged up to a signed "
        "checkpoint; record 10 is after the newest checkpoint and verified by the hash "
        "chain only"
    )


async def test_purge_without_checkpoint_keeps_all(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = await SQLiteAuditStore.open(path)
    for index in range(1, 4):
        await store.append(event_at(index, "2025-01-01T00:00:00.000Z"))
    await store.close()

    result = await purge_records(path, CUTOFF)

    assert result.through_seq == 0
    assert result.records == 0
    assert record_seqs(path) == [1, 2, 3]


async def test_purge_keeps_last_record(tmp_path: Path) -> None:
    path, key = tmp_path / "audit.db", new_key()
    store = await SQLiteAuditStore.open(path, checkpoint_key=key)
    for index in range(1, 4):
        await store.append(event_at(index, "2025-01-01T00:00:00.000Z"))
    await store.close()

    result = await purge_records(path, CUTOFF)

    assert result.through_seq == 0
    assert record_seqs(path) == [1, 2, 3]


async def test_edit_after_purge_is_detected(tmp_path: Path) -> None:
    path, key = tmp_path / "audit.db", new_key()
    await write_log(path, key)
    await purge_records(path, CUTOFF)
    run_sql(path, "UPDATE audit_record SET body = replace(body, 'emp-17', 'emp-18') WHERE seq = 8")

    report = await verify_store(path, public_keys=public_keys(key))

    assert not report.ok
    assert report.first_bad_seq == 8
    assert report.reason == "content changed"


async def test_delete_after_purge_is_detected(tmp_path: Path) -> None:
    path, key = tmp_path / "audit.db", new_key()
    await write_log(path, key)
    await purge_records(path, CUTOFF)
    delete_records(path, 8)

    report = await verify_store(path, public_keys=public_keys(key))

    assert not report.ok
    assert report.first_bad_seq == 1
    assert report.reason == "records 1-8 missing"


async def test_first_record_relinked_after_purge_is_detected(tmp_path: Path) -> None:
    path, key = tmp_path / "audit.db", new_key()
    await write_log(path, key)
    await purge_records(path, CUTOFF)
    # Rewrite record 8 as if it followed another record 7, with its hash recomputed.
    with sqlite3.connect(path) as connection:
        (body,) = connection.execute("SELECT body FROM audit_record WHERE seq = 8").fetchone()
    from gateway.audit.chain import chain_hash

    other_prev = "1" * 64
    parsed = json.loads(body)
    parsed["prev_hash"] = other_prev
    new_body = json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    new_hash = chain_hash(other_prev, 8, new_body.encode("utf-8"))
    run_sql(
        path,
        "UPDATE audit_record SET body = ?, prev_hash = ?, hash = ? WHERE seq = 8",
        parameters=(new_body, other_prev, new_hash),
    )

    report = await verify_store(path, public_keys=public_keys(key))

    assert not report.ok
    assert report.first_bad_seq == 8
    assert report.reason == (
        "chain broken: prev_hash does not match the hash that the checkpoint of record 7 signed"
    )


async def write_old_log(path: Path, key: CheckpointKey) -> None:
    """Write records 1-6 of 2020 with a checkpoint at 4; close signs one at 6."""
    store = await SQLiteAuditStore.open(path, checkpoint_key=key)
    for index in range(1, 5):
        await store.append(event_at(index, "2020-01-01T00:00:00.000Z"))
    await store.checkpoint()
    for index in range(5, 7):
        await store.append(event_at(index, "2020-01-02T00:00:00.000Z"))
    await store.close()


def test_cli_purge_then_verify(tmp_path: Path) -> None:
    data_dir, key = tmp_path / "data", new_key()
    data_dir.mkdir()
    publish(data_dir / "keys" / "audit-checkpoint-public", key)
    asyncio.run(write_old_log(data_dir / "audit.sqlite3", key))

    runner = CliRunner()
    result = runner.invoke(app, ["audit", "purge", "--data-dir", str(data_dir),
                                 "--retention-months", "6"])

    assert result.exit_code == 0, result.output
    assert "purged 4 records through seq 4" in result.output
    with sqlite3.connect(data_dir / "audit.sqlite3") as connection:
        row = connection.execute(
            "SELECT actor, body FROM audit_record ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    assert row[0] == "fonte-audit-purge"
    body = json.loads(row[1])
    assert body["kind"] == "purge"
    assert body["details"]["through_seq"] == 4
    assert body["details"]["records"] == 4
    assert body["details"]["retention_months"] == 6
    assert "subjects" not in body

    verified = runner.invoke(app, ["audit", "verify", "--data-dir", str(data_dir)])
    assert verified.exit_code == 0, verified.output
    assert " ".join(verified.output.split()) == (
        "audit log intact: 3 records and 2 checkpoints verified; records 1-4 were purged up "
        "to a signed checkpoint; record 7 is after the newest checkpoint and verified by the "
        "hash chain only"
    )


def test_cli_purge_rejects_short_retention(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["audit", "purge", "--data-dir", str(tmp_path),
                                      "--retention-months", "5"])

    assert result.exit_code == 2
    assert "--retention-months 5 is below the minimum of 6 months" in result.output



def test_cli_purge_reads_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir, key = tmp_path / "data", new_key()
    data_dir.mkdir()
    publish(data_dir / "keys" / "audit-checkpoint-public", key)
    asyncio.run(write_old_log(data_dir / "audit.sqlite3", key))
    monkeypatch.setenv("TEST_CRM_ID", "crm-client")
    monkeypatch.setenv("TEST_CRM_SECRET", "crm-secret")
    settings = tmp_path / "fonte.toml"
    settings.write_text(
        '[gateway]\ndata_dir = "data"\n[auth]\ndevelopment_tokens = true\n'
        "[audit]\nretention_months = 6\n"
        '[systems.crm]\ndialect = "salesforce"\nlogin_url = "https://crm.example"\n'
        'client_id_env = "TEST_CRM_ID"\nclient_secret_env = "TEST_CRM_SECRET"\n',
        encoding="utf-8",
    )

    result = CliRunner().invoke(app, ["audit", "purge", "--config", str(settings)])

    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    # The cutoff in between is 6 months before the current time.
    assert output.startswith("purged 4 records through seq 4, older than ")
    assert output.endswith(", up to checkpoint 1")
    assert record_seqs(data_dir / "audit.sqlite3") == [5, 6, 7]
