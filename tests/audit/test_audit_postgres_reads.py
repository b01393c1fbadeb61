"""Bundles and access reports of a PostgreSQL audit store, on the local server.

The bundles are checked by their own verifier in a Python that has only
`cryptography` besides the standard library.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bundle_support import isolated_path, run_verifier
from checkpoint_support import PSEUDONYMS, make_event, new_key, publish
from services import postgres_url
from typer.testing import CliRunner, Result

from gateway.audit.access_report import Consultation, read_consultations
from gateway.audit.bundle import write_bundle
from gateway.audit.keys import CheckpointKey, load_or_create_signing_key
from gateway.audit.postgres import PostgresAuditStore
from gateway.audit.pseudonym import Pseudonymizer, load_or_create_key
from gateway.audit.retention import purge_records
from gateway.cli import app

__all__ = ["isolated_path"]


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with postgres_url() as url:
        yield url


async def write_log(url: str, key: CheckpointKey, subjects: list[str]) -> None:
    """Append one record per subject id, with a checkpoint after the third; close signs
    one over the last."""
    store = await PostgresAuditStore.open(url, checkpoint_key=key, checkpoint_interval=3600)
    try:
        for index, subject in enumerate(subjects, start=1):
            event = make_event(index)
            event["subjects"] = [{"type": "customer", "ref": PSEUDONYMS.token("customer", subject)}]
            await store.append(event)
            if index == 3:
                await store.checkpoint()
    finally:
        await store.close()


async def test_postgres_bundle_verifies_offline(
    database: str, tmp_path: Path, isolated_path: Path
) -> None:
    key = new_key()
    await write_log(database, key, ["C-1", "C-2", "C-3", "C-4", "C-5", "C-6"])

    summary = await write_bundle(database, publish(tmp_path / "public", key), tmp_path / "b")
    status, output = run_verifier(isolated_path, tmp_path / "b")

    assert (summary.records, summary.checkpoints) == (6, 2)
    assert (summary.first_seq, summary.last_seq) == (1, 6)
    assert output == "OK: 6 records and 2 checkpoints verified"
    assert status == 0


async def test_purged_postgres_bundle_verifies_offline(
    database: str, tmp_path: Path, isolated_path: Path
) -> None:
    key = new_key()
    await write_log(database, key, ["C-1", "C-2", "C-3", "C-4", "C-5", "C-6"])
    # make_event dates every record 2026-12-04T20:17, so this cutoff is after all of them.
    result = await purge_records(database, datetime(2027, 1, 1, tzinfo=UTC))

    summary = await write_bundle(database, publish(tmp_path / "public", key), tmp_path / "b")
    status, output = run_verifier(isolated_path, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text(encoding="utf-8"))
    readme = (tmp_path / "b" / "README.md").read_text(encoding="utf-8")

    assert (result.through_seq, result.record_seq) == (3, 7)
    assert (summary.records, summary.first_seq, summary.last_seq) == (4, 4, 7)
    assert (manifest["records"], manifest["first_seq"]) == (4, 4)
    assert "It contains audit records 4 to 7 of one Fonte audit log" in readme
    assert "Records 1 to 3 were purged for retention." in readme
    assert output == (
        "OK: 4 records and 2 checkpoints verified; records 1-3 were purged up to a signed "
        "checkpoint; record 7 is after the newest checkpoint and verified by the hash "
        "chain only"
    )
    assert status == 0


async def test_postgres_access_report_lists_consultations(database: str) -> None:
    await write_log(database, new_key(), ["C-1", "C-2", "C-1"])

    consultations = await read_consultations(database, PSEUDONYMS.token("customer", "C-1"))
    named = await read_consultations(
        database, PSEUDONYMS.token("customer", "C-2"), include_callers=True
    )

    expected = [
        Consultation(time=f"2026-12-04T20:17:0{index}.000Z", purpose="billing",
                     roles=["finance"], categories=["financial.iban"], systems=["erp"],
                     caller=None)
        for index in (1, 3)
    ]
    assert consultations == expected
    assert [item.caller for item in named] == ["emp-17"]


async def test_postgres_access_report_rejects_other_url() -> None:
    with pytest.raises(ValueError) as caught:
        await read_consultations("mysql://root@127.0.0.1/audit", "v1:x")

    assert str(caught.value).startswith("audit store URL mysql://root@127.0.0.1/audit is not a "
                                        "PostgreSQL URL")


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


async def test_cli_bundle_and_report_from_postgres(
    database: str, tmp_path: Path, isolated_path: Path
) -> None:
    data_dir = tmp_path / "data"
    pseudonyms = Pseudonymizer(load_or_create_key(data_dir / "keys" / "audit-pseudonym.key"))
    key_path = data_dir / "keys" / "audit-checkpoint.pem"
    key = load_or_create_signing_key(key_path, name="fonte-audit-1")
    store = await PostgresAuditStore.open(database, checkpoint_key=key)
    for index, subject in enumerate(["C-1", "C-2"], start=1):
        event = make_event(index)
        event["subjects"] = [{"type": "customer", "ref": pseudonyms.token("customer", subject)}]
        await store.append(event)
    await store.close()

    # The commands call asyncio.run, which needs a thread without a running loop.
    report = await asyncio.to_thread(
        run_cli, "audit", "access-report", "C-1", "--operator", "dpo-1",
        "--data-dir", str(data_dir), "--store", database)
    bundle = await asyncio.to_thread(
        run_cli, "audit", "bundle", str(tmp_path / "bundle"), "--operator", "dpo-1",
        "--data-dir", str(data_dir), "--store", database)
    status, output = run_verifier(isolated_path, tmp_path / "bundle")
    records = [
        json.loads(line)
        for line in (tmp_path / "bundle" / "records.jsonl").read_text("utf-8").splitlines()
    ]

    assert report.exit_code == 0, report.output
    document = json.loads(report.stdout)
    assert [entry["time"] for entry in document["consultations"]] == [
        "2026-12-04T20:17:01.000Z"
    ]
    assert bundle.exit_code == 0, bundle.output
    assert [record.get("kind") for record in records] == [None, None, "access_report", "bundle"]
    assert records[2]["details"] == {
        "format": "json", "consultations": 1, "callers_included": False
    }
    assert output == "OK: 4 records and 2 checkpoints verified"
    assert status == 0
