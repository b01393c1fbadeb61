"""``fonte audit`` export records, forget, access-report and bundle, on a log a gateway wrote.

Every command here appends its own record, so the log grows from the gateway's three
records as the commands run.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import start_harness
from typer.testing import CliRunner, Result

from gateway.audit.pseudonym import Pseudonymizer, load_or_create_key
from gateway.cli import app
from gateway.datadir import claim_data_dir
from gateway.demo.data import DemoData

LOOKUP = "query($id: ID!) { customer(id: $id) { name email } }"


async def _write_log(data: DemoData, data_dir: Path, first: str, second: str) -> None:
    async with start_harness(data, data_dir) as harness:
        await harness.query(LOOKUP, variables={"id": first})
        await harness.query(LOOKUP, variables={"id": second}, role="finance")
        await harness.query("{ customers(first: 1) { edges { node { name } } } }")


@pytest.fixture
def account_ids(demo_data: DemoData) -> list[str]:
    return sorted(account["Id"] for account in demo_data.crm["Account"])[:2]


@pytest.fixture
def data_dir(demo_data: DemoData, tmp_path: Path, account_ids: list[str]) -> Path:
    """A stopped gateway's folder: record 1 reads customer 1 as sales, record 2 customer 2
    as finance, record 3 lists customer 1 as sales."""
    directory = tmp_path / "data"
    asyncio.run(_write_log(demo_data, directory, account_ids[0], account_ids[1]))
    return directory

# /dev/full fails every write with ENOSPC; it exists on Linux.
FULL_DISK = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _text(output: str) -> str:
    return " ".join(output.split())


def _bodies(data_dir: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(data_dir / "audit.sqlite3") as connection:
        rows = connection.execute("SELECT body FROM audit_record ORDER BY seq").fetchall()
    return [json.loads(body) for (body,) in rows]


def _token(data_dir: Path, account_id: str) -> str:
    key = load_or_create_key(data_dir / "keys" / "audit-pseudonym.key")
    return Pseudonymizer(key).token("customer", account_id)


def test_export_records_itself(data_dir: Path, account_ids: list[str]) -> None:
    result = _run("audit", "export", "--subject", account_ids[0], "--category", "contact",
                  "--operator", "dpo-1", "--data-dir", str(data_dir))

    last = _bodies(data_dir)[-1]
    assert result.exit_code == 0
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [1]
    assert last["kind"] == "export"
    assert last["actor"] == "dpo-1"
    assert last["details"] == {
        "format": "jsonl", "records": 1, "subject": True, "category": "contact"}
    assert _token(data_dir, account_ids[0]) not in json.dumps(last)


def test_export_filters_by_role(data_dir: Path) -> None:
    result = _run("audit", "export", "--role", "finance", "--data-dir", str(data_dir))

    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [2]


async def test_export_while_gateway_runs(
    demo_data: DemoData, tmp_path: Path, account_ids: list[str]
) -> None:
    directory = tmp_path / "data"
    async with start_harness(demo_data, directory) as harness:
        await harness.query(LOOKUP, variables={"id": account_ids[0]})
        # A separate process, as a compliance officer's shell would be.
        export = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "fonte"), "audit", "export",
            "--operator", "dpo-1", "--data-dir", str(directory),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await export.communicate()
        await harness.query(LOOKUP, variables={"id": account_ids[1]})
    verify = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "fonte"), "audit", "verify",
        "--data-dir", str(directory), stdout=asyncio.subprocess.PIPE)
    verified, _ = await verify.communicate()

    bodies = _bodies(directory)
    assert export.returncode == 0, stderr.decode()
    assert [json.loads(line)["seq"] for line in stdout.decode().splitlines()] == [1]
    assert [body["seq"] for body in bodies] == [1, 2, 3]
    assert [body.get("kind") for body in bodies] == [None, "export", None]
    assert verify.returncode == 0, verified.decode()
    assert _text(verified.decode()) == "audit log intact: 3 records and 1 checkpoint verified"


def test_export_unknown_subject_type(data_dir: Path, account_ids: list[str]) -> None:
    result = _run("audit", "export", "--subject", account_ids[0], "--subject-type", "person",
                  "--data-dir", str(data_dir))

    assert result.exit_code == 2
    assert result.stdout == ""
    assert _text(result.stderr) == (
        "--subject-type 'person' is not supported; use customer or contact")
    assert len(_bodies(data_dir)) == 3


@pytest.mark.parametrize("command", ["export", "access-report"])
def test_output_folder_missing(data_dir: Path, account_ids: list[str], tmp_path: Path,
                               command: str) -> None:
    output = tmp_path / "missing" / "out.json"
    subject = [account_ids[0]] if command == "access-report" else []

    result = _run("audit", command, *subject, "--output", str(output),
                  "--data-dir", str(data_dir))

    assert result.exit_code == 2
    assert _text(result.stderr) == (
        f"error: cannot write --output {output}: No such file or directory; pass a file in "
        "an existing, writable folder")
    assert len(_bodies(data_dir)) == 3


@FULL_DISK
def test_export_full_disk_removes_file(data_dir: Path, tmp_path: Path) -> None:
    # Every write to /dev/full fails with ENOSPC, as on a full disk.
    output = tmp_path / "export.jsonl"
    output.symlink_to("/dev/full")

    result = _run("audit", "export", "--output", str(output), "--data-dir", str(data_dir))

    assert result.exit_code == 2
    assert _text(result.stderr) == (
        "error: cannot write the export: No space left on device; free space or write it "
        "to another file")
    assert not output.is_symlink()
    assert len(_bodies(data_dir)) == 3


def test_export_while_data_dir_locked(data_dir: Path) -> None:
    lock = claim_data_dir(data_dir)
    try:
        result = _run("audit", "export", "--data-dir", str(data_dir))
    finally:
        lock.close()

    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 3
    assert _bodies(data_dir)[-1]["kind"] == "export"


def test_forget_rejected_while_gateway_runs(data_dir: Path, account_ids: list[str]) -> None:
    lock = claim_data_dir(data_dir)
    try:
        result = _run("audit", "forget", account_ids[0], "--yes", "--data-dir", str(data_dir))
    finally:
        lock.close()

    assert result.exit_code == 2
    assert "is in use by another gateway process" in _text(result.stderr)
    assert "stop the gateway first" in _text(result.stderr)
    assert len(_bodies(data_dir)) == 3


def test_verify_after_admin_records(data_dir: Path) -> None:
    _run("audit", "export", "--operator", "dpo-1", "--data-dir", str(data_dir))

    result = _run("audit", "verify", "--data-dir", str(data_dir))

    assert result.exit_code == 0
    assert _text(result.stdout) == (
        "audit log intact: 4 records and 1 checkpoint verified; record 4 is after the "
        "newest checkpoint and verified by the hash chain only"
    )


def test_forget_command_unlinks_subject(data_dir: Path, account_ids: list[str]) -> None:
    token = _token(data_dir, account_ids[0])

    result = _run("audit", "forget", account_ids[0], "--yes", "--operator", "dpo-1",
                  "--data-dir", str(data_dir))
    exported = _run("audit", "export", "--subject", account_ids[0], "--data-dir", str(data_dir))
    verified = _run("audit", "verify", "--data-dir", str(data_dir))

    assert result.exit_code == 0
    assert _text(result.stdout) == "key destroyed; 2 records unlinked; erasure recorded as record 4"
    assert exported.stdout == ""
    assert verified.exit_code == 0
    found = [path.name for path in data_dir.rglob("*") if path.is_file()
             and (token.encode() in path.read_bytes()
                  or account_ids[0].encode() in path.read_bytes())]
    assert found == []


def test_forget_asks_for_confirmation(data_dir: Path, account_ids: list[str]) -> None:
    result = CliRunner().invoke(app, ["audit", "forget", account_ids[0], "--data-dir",
                                      str(data_dir)], input="n\n")

    assert result.exit_code == 1
    assert len(_bodies(data_dir)) == 3


def test_access_report_withholds_callers(data_dir: Path, account_ids: list[str]) -> None:
    result = _run("audit", "access-report", account_ids[0], "--operator", "dpo-1",
                  "--data-dir", str(data_dir))

    report = json.loads(result.stdout)
    bodies = _bodies(data_dir)
    assert result.exit_code == 0
    assert report["subject_type"] == "customer"
    assert report["callers_included"] is False
    assert report["consultations"] == [
        {"time": bodies[0]["time"], "purpose": "sales", "roles": ["sales"],
         "categories": ["contact.email", "identity.name", "non_personal.identifier"],
         "systems": ["crm", "erp"]},
        {"time": bodies[2]["time"], "purpose": "sales", "roles": ["sales"],
         "categories": ["identity.name", "non_personal.identifier"], "systems": ["crm"]},
    ]
    assert bodies[3]["kind"] == "access_report"
    assert bodies[3]["details"] == {
        "callers_included": False, "consultations": 2, "format": "json"}


def test_access_report_names_callers_on_request(data_dir: Path, account_ids: list[str]) -> None:
    result = _run("audit", "access-report", account_ids[1], "--include-callers",
                  "--data-dir", str(data_dir))

    report = json.loads(result.stdout)
    assert [entry["caller"] for entry in report["consultations"]] == [_bodies(data_dir)[1]["actor"]]
    assert report["consultations"][0]["purpose"] == "billing"


def test_access_report_html_is_self_contained(data_dir: Path, account_ids: list[str]) -> None:
    result = _run("audit", "access-report", account_ids[0], "--format", "html",
                  "--data-dir", str(data_dir))

    assert result.exit_code == 0
    assert result.stdout.startswith("<!DOCTYPE html>")
    assert "contact.email (E-mail and certified e-mail (PEC) addresses)" in result.stdout
    assert "2 consultation(s)" in result.stdout
    assert "http" not in result.stdout
    assert "<script" not in result.stdout


@FULL_DISK
def test_access_report_full_disk_named(data_dir: Path, account_ids: list[str],
                                       tmp_path: Path) -> None:
    output = tmp_path / "report.json"
    output.symlink_to("/dev/full")

    result = _run("audit", "access-report", account_ids[0], "--output", str(output),
                  "--data-dir", str(data_dir))

    assert result.exit_code == 2
    assert _text(result.stderr) == (
        f"error: cannot write --output {output}: No space left on device; audit record 4 "
        "already records this report, so free space and run the command again")
    assert not output.is_symlink()
    assert _bodies(data_dir)[3]["kind"] == "access_report"


def test_access_report_after_forget_is_empty(data_dir: Path, account_ids: list[str]) -> None:
    _run("audit", "forget", account_ids[0], "--yes", "--data-dir", str(data_dir))

    result = _run("audit", "access-report", account_ids[0], "--data-dir", str(data_dir))

    assert json.loads(result.stdout)["consultations"] == []


def test_bundle_command_signs_and_verifies(data_dir: Path, tmp_path: Path) -> None:
    result = _run("audit", "bundle", str(tmp_path / "bundle"), "--operator", "dpo-1",
                  "--data-dir", str(data_dir))

    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text(encoding="utf-8"))
    assert result.exit_code == 0
    assert _text(result.stdout) == (
        f"bundle written to {tmp_path / 'bundle'}: 4 records and 2 checkpoints; "
        "OK: 4 records and 2 checkpoints verified"
    )
    assert manifest["records"] == 4
    assert _bodies(data_dir)[3]["details"] == {"folder": "bundle"}


async def test_bundle_while_gateway_runs(
    demo_data: DemoData, tmp_path: Path, account_ids: list[str]
) -> None:
    directory = tmp_path / "data"
    folder = tmp_path / "bundle"
    async with start_harness(demo_data, directory) as harness:
        await harness.query(LOOKUP, variables={"id": account_ids[0]})
        bundle = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "fonte"), "audit", "bundle", str(folder),
            "--operator", "dpo-1", "--data-dir", str(directory),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await bundle.communicate()
        await harness.query(LOOKUP, variables={"id": account_ids[1]})

    assert bundle.returncode == 0, stderr.decode()
    assert _text(stdout.decode()) == (
        f"bundle written to {folder}: 2 records and 1 checkpoint; "
        "OK: 2 records and 1 checkpoint verified"
    )
    assert [body.get("kind") for body in _bodies(directory)] == [None, "bundle", None]


def test_bundle_needs_checkpoint_key(data_dir: Path, tmp_path: Path) -> None:
    (data_dir / "keys" / "audit-checkpoint.pem").unlink()

    result = _run("audit", "bundle", str(tmp_path / "bundle"), "--data-dir", str(data_dir))

    assert result.exit_code == 2
    assert "checkpoint key" in _text(result.stderr)
    assert "not found; pass --key-file" in _text(result.stderr)
    assert not (tmp_path / "bundle").exists()


def test_bundle_existing_folder_not_recorded(data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    folder.mkdir()

    result = _run("audit", "bundle", str(folder), "--data-dir", str(data_dir))

    assert result.exit_code == 2
    assert _text(result.stderr) == (
        f"error: bundle folder {folder} already exists; give a new folder")
    assert len(_bodies(data_dir)) == 3


def test_bundle_unwritable_folder_named(data_dir: Path, tmp_path: Path) -> None:
    # A regular file where the parent folder should be makes mkdir fail.
    blocker = tmp_path / "blocker"
    blocker.write_text("", encoding="utf-8")
    folder = blocker / "bundle"

    result = _run("audit", "bundle", str(folder), "--data-dir", str(data_dir))

    assert result.exit_code == 2
    assert _text(result.stderr) == (
        f"error: cannot create bundle folder {folder}: Not a directory; give a folder in a "
        "writable place")
    assert not folder.exists()


def test_forget_needs_pseudonym_key(data_dir: Path, account_ids: list[str]) -> None:
    (data_dir / "keys" / "audit-pseudonym.key").unlink()

    result = _run("audit", "forget", account_ids[0], "--yes", "--data-dir", str(data_dir))

    assert result.exit_code == 2
    assert "audit-pseudonym.key not found" in _text(result.stderr)
    assert len(_bodies(data_dir)) == 3
