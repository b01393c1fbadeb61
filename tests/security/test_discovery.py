"""Schema discovery: a caller learns no field beyond its own view.

Introspection runs against the caller's view of the schema (the fields its
roles and purpose may read or read masked), however the document reaches
``__schema`` or ``__type``: directly, under an alias, or inside a fragment
at the root. Validation errors carry no "did you mean" suggestion, which
would name fields of the full schema. ``fonte serve`` serves GraphiQL only
when ``[gateway] graphiql = true``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Harness, read_audit_records, start_harness
from probe import Probe, send

from gateway.config import load_settings
from gateway.demo.data import DemoData

Caplog = pytest.LogCaptureFixture
CUSTOMER_FIELDS = '{ __type(name: "Customer") { fields { name } } }'
SCHEMA_FIELDS = "{ __schema { types { name fields { name } } } }"
# Every field of Customer that sales may not read, not even masked.
HIDDEN_FROM_SALES = {"creditLimit"}
# The only Customer field dpo can introspect: its key, because a GraphQL type needs a field.
DPO_FIELDS = ["id"]


def _field_names(probe: Probe) -> list[str]:
    return [field["name"] for field in probe.body["data"]["__type"]["fields"]]


def _no_traffic(probe: Probe) -> None:
    assert probe.upstream == []
    assert probe.audit == []


@pytest.mark.parametrize(("role", "visible"), [
    ("finance", {"creditLimit", "iban", "name"}), ("it", {"id", "name", "pec"})])
async def test_introspection_shows_role_fields(harness: Harness, caplog: Caplog, role: str,
                                               visible: set[str]) -> None:
    probe = await send(harness, caplog, CUSTOMER_FIELDS, role=role)

    names = set(_field_names(probe))
    assert visible <= names
    assert "phone" not in names
    _no_traffic(probe)


async def test_introspection_hides_denied(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog, CUSTOMER_FIELDS)

    names = set(_field_names(probe))
    assert names & HIDDEN_FROM_SALES == set()
    assert "iban" in names
    _no_traffic(probe)


@pytest.mark.parametrize("document", [
    CUSTOMER_FIELDS,
    '{ t: __type(name: "Customer") { fields { name } } }',
    '{ ...Intro } fragment Intro on Query { __type(name: "Customer") { fields { name } } }',
    '{ ... on Query { __type(name: "Customer") { fields { name } } } }',
    '{ ... @skip(if: false) { __type(name: "Customer") { fields { name } } } }',
])
async def test_introspection_any_shape(harness: Harness, caplog: Caplog, document: str) -> None:
    probe = await send(harness, caplog, document, role="dpo")

    (value,) = probe.body["data"].values()
    assert [field["name"] for field in value["fields"]] == DPO_FIELDS
    _no_traffic(probe)


async def test_schema_types_hide_fields(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog, SCHEMA_FIELDS, role="dpo")

    types = {t["name"]: t["fields"] for t in probe.body["data"]["__schema"]["types"]}
    assert [field["name"] for field in types["Customer"]] == DPO_FIELDS
    assert [field["name"] for field in types["Contact"]] == ["id"]
    _no_traffic(probe)


@pytest.mark.parametrize("document", [
    '{ __schema { queryType { name } } customers(first: 1) { edges { node { id } } } }',
    '{ ...Intro customers(first: 1) { edges { node { id } } } } '
    "fragment Intro on Query { __schema { queryType { name } } }",
])
async def test_introspection_mixed_with_data(harness: Harness, caplog: Caplog,
                                             document: str) -> None:
    probe = await send(harness, caplog, document)

    assert probe.status == 400
    assert json.dumps(probe.body).count("Introspection") == 1
    assert probe.codes() == ["BAD_REQUEST"]
    _no_traffic(probe)


@pytest.mark.parametrize("document", [
    "{ customers(first: 2) { edges { node { nam } } } }",
    "{ customers(first: 2) { edges { node { creditLimt } } } }",
    "{ customer(ids: 1) { name } }",
    "{ customerz { name } }",
    "{ customers(first: 1) { edges { node { ...F } } } } fragment F on Custome { name }",
    "query($id: ID!) { customer(id: $id) { name @inclde(if: true) } }",
])
async def test_no_suggestions(harness: Harness, caplog: Caplog, document: str) -> None:
    probe = await send(harness, caplog, document, role="sales", variables={"id": "x"})

    messages = " ".join(error["message"] for error in probe.body["errors"])
    assert probe.status == 400
    assert "Did you mean" not in messages
    assert "creditLimit" not in messages
    _no_traffic(probe)


async def test_graphiql_off_by_default(tmp_path: Path, demo_data: DemoData,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CRM_ID", "id")
    monkeypatch.setenv("TEST_ERP_KEY", "key")
    path = tmp_path / "fonte.toml"
    path.write_text(PRODUCTION_SETTINGS, encoding="utf-8")
    production = load_settings(path)

    async with start_harness(demo_data, tmp_path / "data",
                             overrides={"graphiql": production.graphiql}) as harness:
        response = await harness.client.get("/graphql")
        records = await read_audit_records(harness.data_dir)

    assert production.graphiql is False
    assert response.status_code == 404
    assert "<html" not in response.text.lower()
    assert harness.crm_requests() == []
    assert records == []


async def test_graphiql_on_when_enabled(harness: Harness) -> None:
    response = await harness.client.get("/graphql")

    assert harness.settings.graphiql is True
    assert response.status_code == 200
    assert "graphiql" in response.text.lower()


PRODUCTION_SETTINGS = """
[auth]
development_tokens = true

[systems.crm]
dialect = "salesforce"
login_url = "https://crm.example"
client_id_env = "TEST_CRM_ID"
client_secret_env = "TEST_CRM_ID"

[systems.erp]
dialect = "odoo-jsonrpc"
base_url = "https://erp.example"
database = "prod"
login = "gateway"
api_key_env = "TEST_ERP_KEY"
"""
