"""Erasure of a subject from a data folder that a real gateway wrote, checked byte by byte.

The gateway serves two customers over the demo systems, with an anchor file in its data
folder, and stops. Then ``fonte audit forget`` erases one customer, and ``fonte audit
export`` writes JSON Lines and CSV into the same folder. The test scans every file
there for the customer's id, its pseudonym and its subject key: the database with any
-wal or -shm file, the anchor file, the exports and the keys.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from conftest import start_harness
from typer.testing import CliRunner, Result

from gateway.audit.pseudonym import Pseudonymizer, load_or_create_key
from gateway.cli import app
from gateway.demo.data import DemoData

LOOKUP = "query($id: ID!) { customer(id: $id) { name email } }"


async def serve_two_customers(data: DemoData, data_dir: Path, ids: list[str]) -> None:
    anchor = str(data_dir / "anchor.txt")
    async with start_harness(data, data_dir, overrides={"audit_anchors": (anchor,)}) as harness:
        for customer_id in (ids[0], ids[1], ids[0]):
            response = await harness.query(LOOKUP, variables={"id": customer_id})
            assert response.status_code == 200
            assert "errors" not in response.json()


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def files_containing(folder: Path, needles: dict[str, bytes]) -> list[str]:
    found: list[str] = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            content = path.read_bytes()
            found.extend(f"{path.name}: {name}" for name, needle in needles.items()
                         if needle in content)
    return found


def test_forget_scans_whole_data_dir(demo_data: DemoData, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ids = sorted(account["Id"] for account in demo_data.crm["Account"])[:2]
    asyncio.run(serve_two_customers(demo_data, data_dir, ids))
    pseudonyms = Pseudonymizer(load_or_create_key(data_dir / "keys" / "audit-pseudonym.key"))
    ref = pseudonyms.token("customer", ids[0])
    with sqlite3.connect(data_dir / "audit.sqlite3") as connection:
        (key,) = connection.execute(
            "SELECT key FROM audit_subject_key WHERE ref = ?", (ref,)).fetchone()
    needles = {
        "id": ids[0].encode("ascii"),
        "pseudonym": ref.encode("ascii"),
        "pseudonym digits": ref.removeprefix("v1:").encode("ascii"),
        "key": bytes(key),
    }
    before = files_containing(data_dir, needles)

    forgotten = run_cli("audit", "forget", ids[0], "--yes", "--operator", "dpo-1",
                        "--data-dir", str(data_dir))
    exports = [
        run_cli("audit", "export", "--format", fmt, "--output", str(data_dir / f"export.{fmt}"),
                "--operator", "dpo-1", "--data-dir", str(data_dir))
        for fmt in ("jsonl", "csv")
    ]
    verified = run_cli("audit", "verify", "--anchor", str(data_dir / "anchor.txt"),
                       "--data-dir", str(data_dir))

    assert before == ["audit.sqlite3: pseudonym", "audit.sqlite3: pseudonym digits",
                      "audit.sqlite3: key"]
    assert forgotten.exit_code == 0, forgotten.output
    assert [result.exit_code for result in exports] == [0, 0]
    assert (data_dir / "anchor.txt").is_file()
    assert pseudonyms.token("customer", ids[1]) in (data_dir / "export.csv").read_text("utf-8")
    assert files_containing(data_dir, needles) == []
    assert verified.exit_code == 0, verified.output
    assert "audit log intact: 6 records" in " ".join(verified.output.split())


def test_forget_busy_store_exit_status(demo_data: DemoData, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ids = sorted(account["Id"] for account in demo_data.crm["Account"])[:2]
    asyncio.run(serve_two_customers(demo_data, data_dir, ids))
    store = data_dir / "audit.sqlite3"
    ref = Pseudonymizer(load_or_create_key(data_dir / "keys" / "audit-pseudonym.key")).token(
        "customer", ids[0])
    needles = {"id": ids[0].encode("ascii"), "pseudonym": ref.encode("ascii")}
    # An open read transaction keeps SQLite from checkpointing the write-ahead log.
    reader = sqlite3.connect(store)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM audit_record").fetchone()
        busy = run_cli("audit", "forget", ids[0], "--yes", "--operator", "dpo-1",
                       "--data-dir", str(data_dir))
        reader.rollback()
    finally:
        reader.close()
    again = run_cli("audit", "forget", ids[0], "--yes", "--operator", "dpo-1",
                    "--data-dir", str(data_dir))

    assert busy.exit_code == 3, busy.output
    assert busy.stdout == "key destroyed; 2 records unlinked; erasure recorded as record 4\n"
    assert "warning: the write-ahead log of audit store" in busy.stderr
    assert "run forget again" in " ".join(busy.stderr.split())
    assert again.exit_code == 0, again.output
    assert again.stdout == "no key was stored; 0 records unlinked; erasure recorded as record 5\n"
    assert files_containing(data_dir, needles) == []
