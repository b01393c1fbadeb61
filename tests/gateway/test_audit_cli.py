"""``fonte audit verify`` and ``fonte audit export`` on a log the gateway wrote.

The log is written by a real gateway run, then the gateway stops and the
tests change the SQLite file with plain ``sqlite3``, as someone with write
access to the data folder could.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from conftest import start_harness
from typer.testing import CliRunner, Result

from gateway.cli import app
from gateway.demo.data import DemoData

LOOKUP = "query($id: ID!) { customer(id: $id) { name } }"


async def _write_log(data: DemoData, data_dir: Path, first: str, second: str) -> None:
    async with start_harness(data, data_dir) as harness:
        await harness.query(LOOKUP, variables={"id": first})
        await harness.query(LOOKUP, variables={"id": second})
        await harness.query("{ customers(first: 1) { edges { node { name } } } }")


@pytest.fixture
def account_ids(demo_data: DemoData) -> list[str]:
    return sorted(account["Id"] for account in demo_data.crm["Account"])[:2]


@pytest.fixture
def data_dir(demo_data: DemoData, tmp_path: Path, account_ids: list[str]) -> Path:
    """Return a data folder whose log has 3 records and whose gateway has stopped.

    Record 1 reads the first customer, record 2 the second and record 3 lists
    the first customer again.
    """
    directory = tmp_path / "data"
    asyncio.run(_write_log(demo_data, directory, account_ids[0], account_ids[1]))
    return directory


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _verify(data_dir: Path) -> Result:
    return _run("audit", "verify", "--data-dir", str(data_dir))


def _text(output: str) -> str:
    """Return CLI output with rich's line wrapping undone."""
    return " ".join(output.split())


def _execute(data_dir: Path, *statements: str) -> None:
    connection = sqlite3.connect(data_dir / "audit.sqlite3")
    try:
        for statement in statements:
            connection.execute(statement)
        connection.commit()
    finally:
        connection.close()


def test_verify_intact_log(data_dir: Path) -> None:
    result = _verify(data_dir)
    assert result.exit_code == 0
    assert _text(result.stdout) == "audit log intact: 3 records and 1 checkpoint verified"


def test_verify_edited_body(data_dir: Path) -> None:
    connection = sqlite3.connect(data_dir / "audit.sqlite3")
    changed = connection.execute(
        "UPDATE audit_record SET body = replace(body, '\"records\":1', '\"records\":7') "
        "WHERE seq = 2").rowcount
    connection.commit()
    connection.close()
    assert changed == 1

    result = _verify(data_dir)
    assert result.exit_code == 1
    assert "audit log broken at record 2:" in _text(result.stderr)


def test_verify_deleted_record(data_dir: Path) -> None:
    _execute(data_dir, "DELETE FROM audit_subject WHERE seq = 2",
             "DELETE FROM audit_record WHERE seq = 2")
    result = _verify(data_dir)
    assert result.exit_code == 1
    assert "audit log broken at record 2: record 2 missing" in _text(result.stderr)


def test_verify_truncated_tail(data_dir: Path) -> None:
    # The gateway signed a checkpoint of all 3 records when it shut down.
    _execute(data_dir, "DELETE FROM audit_subject WHERE seq = 3",
             "DELETE FROM audit_record WHERE seq = 3")
    result = _verify(data_dir)
    assert result.exit_code == 1
    assert "audit log broken at record 3: log ends at record 2 but checkpoint 1 signed 3" in (
        _text(result.stderr))


def test_verify_swapped_records(data_dir: Path) -> None:
    _execute(data_dir,
             "UPDATE audit_subject SET seq = -1 WHERE seq = 1",
             "UPDATE audit_subject SET seq = 1 WHERE seq = 2",
             "UPDATE audit_subject SET seq = 2 WHERE seq = -1",
             "UPDATE audit_record SET seq = -1 WHERE seq = 1",
             "UPDATE audit_record SET seq = 1 WHERE seq = 2",
             "UPDATE audit_record SET seq = 2 WHERE seq = -1")
    result = _verify(data_dir)
    assert result.exit_code == 1
    assert "audit log broken at record 1:" in _text(result.stderr)


def test_verify_missing_log(tmp_path: Path) -> None:
    result = _verify(tmp_path)
    assert result.exit_code == 2
    assert "no audit log at" in _text(result.stderr)


def test_export_one_subject(data_dir: Path, account_ids: list[str]) -> None:
    result = _run("audit", "export", "--subject", account_ids[0], "--data-dir", str(data_dir))
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 0
    assert [record["seq"] for record in records] == [1, 3]
    assert _text(result.stderr) == "2 records exported"


def test_export_other_subject(data_dir: Path, account_ids: list[str]) -> None:
    result = _run("audit", "export", "--subject", account_ids[1], "--data-dir", str(data_dir))
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["seq"] for record in records] == [2]


def test_export_unknown_subject_empty(data_dir: Path) -> None:
    result = _run("audit", "export", "--subject", "001000000000000AAA",
                  "--data-dir", str(data_dir))
    assert result.exit_code == 0
    assert result.stdout == ""


def test_export_everything_in_order(data_dir: Path) -> None:
    result = _run("audit", "export", "--data-dir", str(data_dir))
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["seq"] for record in records] == [1, 2, 3]
