"""Audit gaps: every disclosure and every denial has its record, whatever else failed.

A request that reads or is denied a personal field has exactly one audit
record, also when a system failed part-way (outcome ``partial``), when
every field was denied (outcome ``denied``), and when a search matched
records by a personal field. A request rejected before planning or before
any read (invalid document, cost over the limit) reads and decides
nothing, so it has no record. Its access log line keeps its request id and
status. Names that a client controls (operation name, purpose, client)
cannot forge a log line and stay plain data in the audit export.
"""

from __future__ import annotations

import csv
import io

import pytest
from conftest import Harness, field_errors, read_audit_records
from probe import Probe, send

from gateway.audit.export import ExportFilter, export_records

Caplog = pytest.LogCaptureFixture
CARD = "query Card($id: ID!) { customer(id: $id) { name creditLimit iban } }"


def _access_line(probe: Probe) -> str:
    lines = [r.getMessage() for r in probe.logs if r.name == "gateway.access"]
    assert len(lines) == 1
    return lines[0]


async def test_partial_failure_audited(harness: Harness, caplog: Caplog) -> None:
    harness.erp_app.state.control.fault_status = 503
    probe = await send(harness, caplog, CARD, role="finance", operation_name="Card",
                       variables={"id": harness.customer_ids(1)[0]})

    assert probe.body["data"]["customer"]["name"] is not None
    assert probe.codes() == ["UPSTREAM_UNAVAILABLE", "UPSTREAM_UNAVAILABLE"]
    # The ERP already fails the gateway's login, so no ERP read reaches its log.
    assert [entry.entity for entry in probe.upstream] == ["Account"]
    record = probe.audit[0]
    assert record["outcome"] == "partial"
    assert record["systems"] == ["crm", "erp"]
    assert len(record["subjects"]) == 1
    assert probe.decisions() == {"Query.customer": "allow", "Customer.name": "allow",
                                 "Customer.creditLimit": "allow", "Customer.iban": "allow"}


async def test_root_failure_audited(harness: Harness, caplog: Caplog) -> None:
    harness.crm_app.state.control.fault_status = 503
    probe = await send(harness, caplog, CARD, role="finance", operation_name="Card",
                       variables={"id": harness.customer_ids(1)[0]})

    assert probe.body["data"] == {"customer": None}
    # The CRM already fails the OAuth2 token request, before any read.
    assert probe.upstream == []
    assert probe.audit[0]["outcome"] == "partial"
    assert probe.audit[0]["subjects"] == []
    assert probe.audit[0]["records"] == 0


async def test_denial_audited(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog, CARD, role="dpo", operation_name="Card",
                       variables={"id": harness.customer_ids(1)[0]})

    assert field_errors(probe.body) == [
        (["customer"], "FORBIDDEN", "Not authorised to read Query.customer.")]
    assert probe.upstream == []
    assert probe.audit[0]["outcome"] == "denied"
    assert probe.audit[0]["operation_name"] == "Card"
    assert probe.decisions() == {"Query.customer": "deny"}


async def test_denied_field_audited(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog, CARD, operation_name="Card",
                       variables={"id": harness.customer_ids(1)[0]})

    assert probe.codes() == ["FORBIDDEN"]
    assert probe.audit[0]["outcome"] == "success"
    assert probe.decisions()["Customer.creditLimit"] == "deny"
    assert probe.decisions()["Customer.iban"] == "mask"


async def test_search_records_matched_subjects(harness: Harness, caplog: Caplog) -> None:
    account = next(a for a in harness.data.crm["Account"]
                   if a["Id"] == harness.customer_ids(1)[0])
    probe = await send(
        harness, caplog,
        "query($s: String) { customers(first: 5, search: $s) { edges { node { id } } } }",
        variables={"s": account["Name"]})

    assert probe.body["data"]["customers"]["edges"] == [{"node": {"id": account["Id"]}}]
    records = await read_audit_records(harness.data_dir)
    assert len(records) == 1
    assert len(records[0]["subjects"]) == 1
    assert probe.decisions() == {"Query.customers": "allow", "Customer.id": "allow",
                                 "Customer.name": "allow"}


@pytest.mark.parametrize(("document", "variables"), [
    ("{ customers(first: 1) { edges { node { name iban nam } } } }", None),
    ("query($f: Int!) { customers(first: $f) { edges { node { iban } } } }", {"f": "many"}),
    ("{ customers(first: 500) { edges { node { iban orders { shipments { status } } } } } }",
     None),
])
async def test_rejected_before_reading(harness: Harness, caplog: Caplog, document: str,
                                       variables: dict[str, str] | None) -> None:
    probe = await send(harness, caplog, document, variables=variables)

    assert probe.status == 400
    assert probe.upstream == []
    assert probe.audit == []
    line = _access_line(probe)
    assert line.startswith(f"request {probe.response.headers['X-Request-ID']} user='u-test' "
                           "status=400 ")


@pytest.mark.parametrize("name", ["Card\nrequest 0 user='admin' status=200",
                                  "Card\r\x1b[2K", "Card\x00"])
async def test_operation_name_injection(harness: Harness, caplog: Caplog, name: str) -> None:
    probe = await send(harness, caplog, CARD, operation_name=name,
                       variables={"id": harness.customer_ids(1)[0]})

    assert probe.status == 400
    assert probe.body["errors"][0]["message"] == f"No operation named {name!r} in the document."
    assert f"operation={name!r}" in _access_line(probe)
    assert probe.upstream == []
    assert probe.audit == []


async def test_long_operation_name_cut(harness: Harness, caplog: Caplog) -> None:
    name = "N" * 100_000
    probe = await send(harness, caplog, CARD, operation_name=name,
                       variables={"id": harness.customer_ids(1)[0]})
    clipped = f"{'N' * 80!r}... (100000 characters)"

    assert probe.status == 400
    assert probe.body["errors"][0]["message"] == f"No operation named {clipped} in the document."
    assert f"operation={clipped} " in _access_line(probe)
    assert len(_access_line(probe)) < 300
    assert probe.upstream == []
    assert probe.audit == []


async def test_control_characters_stay_data(harness: Harness, caplog: Caplog) -> None:
    purpose = "sales\nforged,record"
    client = "crm\r\n\x1b[31m"
    token = harness.token_with("sales", purpose=purpose, client=client)
    probe = await send(harness, caplog, CARD, token=token, operation_name="Card",
                       variables={"id": harness.customer_ids(1)[0]})

    # An unknown purpose reads nothing personal, and that denial is audited.
    assert probe.audit[0]["outcome"] == "denied"
    assert probe.audit[0]["purpose"] == purpose
    assert probe.audit[0]["client"] == client
    exported = [record["purpose"] for record in await read_audit_records(harness.data_dir)]
    as_csv = io.StringIO()
    await export_records(harness.data_dir / "audit.sqlite3", as_csv, fmt="csv",
                         filters=ExportFilter())
    assert exported == [purpose]
    rows = list(csv.DictReader(io.StringIO(as_csv.getvalue())))
    assert [(row["purpose"], row["client"]) for row in rows] == [(purpose, client)]
