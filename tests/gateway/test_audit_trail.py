"""The audit record each GraphQL request leaves in ``<data_dir>/audit.sqlite3``.

A request that names a personal field or is denied a field gets exactly one
record: who asked, in which roles and for which purpose, every field named
with its category, decision and deciding rule, the systems read, the number
of records returned and the data subjects as keyed pseudonyms.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Harness, seeded_iban

from gateway.audit.chain import GENESIS_HASH
from gateway.audit.export import ExportFilter, export_records
from gateway.audit.pseudonym import Pseudonymizer, load_or_create_key
from gateway.audit.subject_keys import open_subject
from gateway.catalog import load_catalog
from gateway.policy import DEFAULT_DENY, PolicyEngine, rule_id

CARD_QUERY = """query CustomerCard($id: ID!) {
  customer(id: $id) { name iban openBalance contacts(first: 1) { id email } }
}"""


async def read_records(data_dir: Path) -> list[dict[str, Any]]:
    out = io.StringIO()
    await export_records(data_dir / "audit.sqlite3", out, fmt="jsonl", filters=ExportFilter())
    return [json.loads(line) for line in out.getvalue().splitlines()]


def opened_subjects(data_dir: Path, record: dict[str, Any]) -> list[dict[str, str]]:
    """Open the record's sealed subjects with the stored subject keys, in body order."""
    with sqlite3.connect(data_dir / "audit.sqlite3") as connection:
        keys = [bytes(row[0]) for row in connection.execute("SELECT key FROM audit_subject_key")]
    opened = []
    for subject in record["subjects"]:
        refs = [open_subject(key, subject, seq=record["seq"]) for key in keys]
        opened.append({"type": subject["type"], "ref": next(ref for ref in refs if ref)})
    return opened


def _pseudonym(data_dir: Path, kind: str, key: str) -> str:
    key_bytes = load_or_create_key(data_dir / "keys" / "audit-pseudonym.key")
    return Pseudonymizer(key_bytes).token(kind, key)


def _decision(field: str, category: str, effect: str, rule: str,
              mask: str | None = None) -> dict[str, Any]:
    return {"field": field, "category": category, "decision": effect, "rule": rule,
            "mask": mask}


def _sales_rule(target: str, mask: str = "-") -> str:
    """Return the id of the shipped sales row on ``target``; its purpose is the g3 parent."""
    return rule_id(["sales", target, "customer-relations", "allow", mask])


def _it_rule(target: str, mask: str = "-") -> str:
    return rule_id(["it", target, "it-operations", "allow", mask])


@dataclass
class CardRun:
    """CARD_QUERY run once as sales: the harness, the HTTP response and its one record."""

    harness: Harness
    response: httpx.Response
    record: dict[str, Any]


@pytest.fixture
async def card(harness: Harness) -> CardRun:
    account_id = harness.customer_ids(1)[0]
    token = harness.token("sales", user="u-audit")
    response = await harness.query(CARD_QUERY, variables={"id": account_id},
                                   operation_name="CustomerCard", token=token)
    records = await read_records(harness.data_dir)
    assert len(records) == 1
    return CardRun(harness, response, records[0])


async def test_one_record_per_request(harness: Harness) -> None:
    query = """{ one: customer(id: "%s") { name }
                 list: customers(first: 2) { edges { node { name } } } }"""
    await harness.query(query % harness.customer_ids(1)[0])
    assert len(await read_records(harness.data_dir)) == 1


async def test_record_caller_and_operation(card: CardRun) -> None:
    record = card.record
    assert record["actor"] == "u-audit"
    assert record["roles"] == ["sales"]
    assert record["purpose"] == "sales"
    assert record["client"] is None
    assert record["operation_name"] == "CustomerCard"
    recorder = card.harness.gateway_app.state.gateway.recorder
    assert record["operation_hash"] == recorder.operation_hash(CARD_QUERY)
    assert record["request_id"] == card.response.headers["x-request-id"]


async def test_record_field_decisions(card: CardRun) -> None:
    record = card.record
    assert sorted(record["fields"], key=lambda entry: entry["field"]) == [
        _decision("Contact.email", "contact.email", "allow", _sales_rule("contact")),
        _decision("Contact.id", "non_personal.identifier", "allow", _sales_rule("non_personal")),
        _decision("Customer.contacts", "contact.person", "allow", _sales_rule("contact")),
        _decision("Customer.iban", "financial.bank_account", "mask",
                  _sales_rule("financial.bank_account", "last4"), "last4"),
        _decision("Customer.name", "identity.name", "allow", _sales_rule("identity")),
        _decision("Customer.openBalance", "financial.balance", "allow",
                  _sales_rule("financial.balance")),
        _decision("Query.customer", "non_personal.identifier", "allow",
                  _sales_rule("non_personal")),
    ]


async def test_record_systems_and_counts(card: CardRun) -> None:
    record = card.record
    assert record["systems"] == ["crm", "erp"]
    assert record["records"] == 2
    assert record["outcome"] == "success"
    assert record["policy_version"] == PolicyEngine.from_directory(load_catalog()).version


async def test_record_subject_pseudonyms(card: CardRun) -> None:
    harness, response, record = card.harness, card.response, card.record
    contact_id = response.json()["data"]["customer"]["contacts"][0]["id"]
    expected = [
        {"type": "contact", "ref": _pseudonym(harness.data_dir, "contact", contact_id)},
        {"type": "customer",
         "ref": _pseudonym(harness.data_dir, "customer", harness.customer_ids(1)[0])},
    ]
    subjects = opened_subjects(harness.data_dir, record)
    assert sorted(subjects, key=lambda subject: subject["type"]) == expected


async def test_record_chain_fields(card: CardRun) -> None:
    record = card.record
    assert record["seq"] == 1
    assert record["prev_hash"] == GENESIS_HASH
    assert re.fullmatch(r"[0-9a-f]{64}", record["hash"]) is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"]) is not None


async def test_record_has_no_values(card: CardRun) -> None:
    harness, response, record = card.harness, card.response, card.record
    customer = response.json()["data"]["customer"]
    text = json.dumps(record, ensure_ascii=False)
    assert customer["name"] not in text
    assert customer["contacts"][0]["email"] not in text
    assert harness.customer_ids(1)[0] not in text
    # Neither the IBAN that was read nor its masked form that was served.
    assert customer["iban"].startswith("*")
    assert customer["iban"] not in text
    assert seeded_iban(harness.data, harness.customer_ids(1)[0]) not in text


async def test_two_roles_recorded_sorted(harness: Harness) -> None:
    token = harness.token("sales", "finance", purpose="sales")
    await harness.query("{ customers(first: 1) { edges { node { name } } } }", token=token)
    records = await read_records(harness.data_dir)
    assert [record["roles"] for record in records] == [["finance", "sales"]]


async def test_list_subjects_per_row(harness: Harness) -> None:
    await harness.query("{ customers(first: 3) { edges { node { name } } } }")
    records = await read_records(harness.data_dir)
    refs = {subject["ref"] for subject in opened_subjects(harness.data_dir, records[0])}
    assert refs == {_pseudonym(harness.data_dir, "customer", account_id)
                    for account_id in harness.customer_ids(3)}
    assert records[0]["records"] == 3


async def test_non_personal_query_unrecorded(harness: Harness) -> None:
    response = await harness.query("{ customers(first: 2) { edges { node { id erpNumber } } } }")
    assert response.json()["data"]["customers"]["edges"][0]["node"]["id"] is not None
    assert await read_records(harness.data_dir) == []


async def test_dpo_request_recorded_denied(harness: Harness) -> None:
    await harness.query("{ customers(first: 2) { edges { node { name } } } }", role="dpo")
    records = await read_records(harness.data_dir)
    assert len(records) == 1
    assert records[0]["outcome"] == "denied"
    assert records[0]["fields"] == [
        _decision("Query.customers", "non_personal.identifier", "deny", DEFAULT_DENY)]
    assert records[0]["subjects"] == []
    assert records[0]["records"] == 0
    assert records[0]["systems"] == []


async def test_personal_fields_all_denied(harness: Harness) -> None:
    await harness.query("query($id: ID!) { customer(id: $id) { vatNumber street } }", role="it",
                        variables={"id": harness.customer_ids(1)[0]})
    records = await read_records(harness.data_dir)
    assert [record["outcome"] for record in records] == ["denied"]


async def test_denied_only_fields_listed(harness: Harness) -> None:
    await harness.query("query($id: ID!) { customer(id: $id) { vatNumber street } }", role="it",
                        variables={"id": harness.customer_ids(1)[0]})
    records = await read_records(harness.data_dir)
    assert len(records) == 1
    denied = [entry["field"] for entry in records[0]["fields"] if entry["decision"] == "deny"]
    assert denied == ["Customer.street", "Customer.vatNumber"]
    assert records[0]["subjects"] == []


async def test_masked_field_recorded(harness: Harness) -> None:
    account_id = harness.customer_ids(1)[0]
    response = await harness.query("query($id: ID!) { customer(id: $id) { name vatNumber } }",
                                   role="it", variables={"id": account_id})
    records = await read_records(harness.data_dir)
    name = response.json()["data"]["customer"]["name"]
    assert len(records) == 1
    assert records[0]["fields"] == [
        _decision("Customer.name", "identity.name", "mask",
                  _it_rule("identity.name", "pseudonym:it"), "pseudonym:it"),
        _decision("Customer.vatNumber", "identity.tax_id", "deny", DEFAULT_DENY),
        _decision("Query.customer", "non_personal.identifier", "allow",
                  _it_rule("non_personal")),
    ]
    # A masked personal field counts as read: the customer is a subject of the record.
    assert records[0]["outcome"] == "success"
    assert opened_subjects(harness.data_dir, records[0]) == [
        {"type": "customer", "ref": _pseudonym(harness.data_dir, "customer", account_id)}]
    assert name.startswith("pn:")
    assert name not in json.dumps(records[0])
