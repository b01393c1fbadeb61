"""When the audit log cannot be written, personal fields are withheld (fail-closed).

A SQLite trigger that aborts every insert into ``audit_record`` makes the
store fail while the gateway keeps running, which is what a full disk or a
broken file does to the gateway's own commits.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

from conftest import Harness, field_errors

from gateway.audit.export import ExportFilter, export_records

QUERY = "{ customers(first: 2) { edges { node { id erpNumber name creditLimit } } } }"


def _block_audit_inserts(data_dir: Path) -> None:
    connection = sqlite3.connect(data_dir / "audit.sqlite3")
    try:
        connection.execute("CREATE TRIGGER block_audit BEFORE INSERT ON audit_record "
                           "BEGIN SELECT RAISE(ABORT, 'audit store blocked by test'); END")
        connection.commit()
    finally:
        connection.close()


def _withheld(field: str) -> str:
    return f"{field} is withheld because the audit log cannot be written."


async def test_personal_fields_withheld(harness: Harness) -> None:
    _block_audit_inserts(harness.data_dir)
    response = await harness.query(QUERY, role="finance")
    body = response.json()
    partners = {a["Id"]: a["ERP_Customer_Number__c"] for a in harness.data.crm["Account"]}
    assert response.status_code == 200
    assert body["data"] == {"customers": {"edges": [
        {"node": {"id": account_id, "erpNumber": partners[account_id], "name": None,
                  "creditLimit": None}}
        for account_id in harness.customer_ids(2)]}}
    assert field_errors(body) == [
        (["customers", "edges", index, "node", name], "AUDIT_UNAVAILABLE",
         _withheld(f"Customer.{name}"))
        for index in range(2) for name in ("name", "creditLimit")]


async def test_withheld_request_leaves_no_record(harness: Harness) -> None:
    _block_audit_inserts(harness.data_dir)
    await harness.query(QUERY, role="finance")
    count = await export_records(harness.data_dir / "audit.sqlite3", io.StringIO(),
                                 fmt="jsonl", filters=ExportFilter())
    assert count == 0


async def test_health_degrades_after_failure(harness: Harness) -> None:
    before = await harness.client.get("/healthz")
    _block_audit_inserts(harness.data_dir)
    await harness.query(QUERY, role="finance")
    after = await harness.client.get("/healthz")
    # The body also reports the policy and each system; only these two concern the audit.
    assert before.status_code == 200
    assert {key: before.json()[key] for key in ("status", "audit")} == {
        "status": "ok", "audit": "ok"}
    assert after.status_code == 503
    assert {key: after.json()[key] for key in ("status", "audit")} == {
        "status": "degraded", "audit": "unavailable"}


async def test_health_recovers_after_commit(harness: Harness) -> None:
    _block_audit_inserts(harness.data_dir)
    await harness.query(QUERY, role="finance")
    connection = sqlite3.connect(harness.data_dir / "audit.sqlite3")
    connection.execute("DROP TRIGGER block_audit")
    connection.commit()
    connection.close()

    response = await harness.query(QUERY, role="finance")
    health = await harness.client.get("/healthz")
    assert field_errors(response.json()) == []
    assert health.status_code == 200


async def test_non_personal_query_still_served(harness: Harness) -> None:
    _block_audit_inserts(harness.data_dir)
    response = await harness.query("{ customers(first: 2) { edges { node { id } } } }")
    assert response.json() == {"data": {"customers": {"edges": [
        {"node": {"id": account_id}} for account_id in harness.customer_ids(2)]}}}

