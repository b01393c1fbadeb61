"""Hostile or malformed input gets a clear 4xx, costs no upstream call, and leaks nothing."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from conftest import Harness, field_errors, read_audit_records

from gateway.identity import issue_token

LIST = "query($after: String) { customers(first: 2, after: $after) { edges { node { id } } } }"


def forged_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(b"\0" * 12 + ("c2:" + key).encode()).decode()


@pytest.mark.parametrize("key", ["a" * 20_000, "0", "' OR Id != '"])
async def test_forged_cursor_rejected(harness: Harness, key: str) -> None:
    response = await harness.query(LIST, role="it", variables={"after": forged_cursor(key)})

    assert response.status_code == 200
    assert field_errors(response.json())[0][:2] == (["customers"], "BAD_REQUEST")
    assert harness.crm_requests() == []


async def test_issued_cursor_accepted(harness: Harness) -> None:
    first = (await harness.query(
        "{ customers(first: 2) { pageInfo { endCursor } } }")).json()
    cursor = first["data"]["customers"]["pageInfo"]["endCursor"]

    response = await harness.query(LIST, variables={"after": cursor})

    ids = [edge["node"]["id"] for edge in response.json()["data"]["customers"]["edges"]]
    assert ids == harness.customer_ids(4)[2:]


async def test_long_search_rejected(harness: Harness) -> None:
    response = await harness.query(
        "query($s: String) { customers(first: 2, search: $s) { edges { node { id } } } }",
        variables={"s": "x" * 101})

    assert field_errors(response.json()) == [
        (["customers"], "BAD_REQUEST", "search is 101 characters long; the limit is 100.")]
    assert harness.crm_requests() == []


async def test_search_records_matched_subjects(harness: Harness) -> None:
    account = next(a for a in harness.data.crm["Account"]
                   if a["Id"] == harness.customer_ids(1)[0])
    await harness.query(
        "query($s: String) { customers(first: 5, search: $s) { edges { node { id } } } }",
        variables={"s": account["Name"]})

    records = await read_audit_records(harness.data_dir)
    assert len(records) == 1
    assert len(records[0]["subjects"]) == 1


@pytest.mark.parametrize(("document", "variables"), [
    ("query($f: Int = 3) { customers(first: $f) { edges { node { id } } } }", {"f": None}),
    ("query($b: Boolean = false) { customers(first: 1) "
     "{ edges { node { id @include(if: $b) } } } }", {"b": None}),
])
async def test_null_for_defaulted_variable(harness: Harness, document: str,
                                           variables: dict[str, Any]) -> None:
    response = await harness.query(document, variables=variables)

    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


@pytest.mark.parametrize("body", [
    b'{"query": "{ __typename }", "variables": {"v": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
    b'{"query": "{ __typename }", "variables": {"v": ' + b"9" * 5000 + b"}}",
])
async def test_pathological_json_rejected(harness: Harness, body: bytes) -> None:
    response = await harness.client.post(
        "/graphql", content=body, headers={"Authorization": f"Bearer {harness.token('sales')}",
                                           "Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.json()["errors"][0]["message"] == "request body is not valid JSON"


async def test_declared_length_over_limit(harness: Harness) -> None:
    response = await harness.client.post(
        "/graphql", content=b"{}", headers={
            "Authorization": f"Bearer {harness.token('sales')}",
            "Content-Type": "application/json", "Content-Length": "999999999"})

    assert response.status_code == 413


async def test_negative_nested_first(harness: Harness) -> None:
    account_id = harness.customer_ids(1)[0]
    response = await harness.query(
        "query($id: ID!) { customer(id: $id) { id orders(first: -1) { number } } }",
        variables={"id": account_id})
    body = response.json()

    assert body["data"] == {"customer": {"id": account_id, "orders": None}}
    assert field_errors(body) == [(["customer", "orders"], "BAD_REQUEST",
                                   "first must be between 0 and 500; got -1.")]
    assert [e.entity for e in harness.erp_requests()] == []


async def test_deep_document_rejected(harness: Harness) -> None:
    inner = "number"
    for _ in range(6):
        inner = f"number customer {{ orders {{ {inner} }} }}"
    document = f"{{ customers(first: 1) {{ edges {{ node {{ orders {{ {inner} }} }} }} }} }}"

    response = await harness.query(document)

    assert response.status_code == 400
    assert "nests" in response.json()["errors"][0]["message"]
    assert harness.crm_requests() == []


async def test_many_root_aliases_rejected(harness: Harness) -> None:
    document = "{ " + " ".join(f"a{i}: customers(first: 1) {{ edges {{ node {{ id }} }} }}"
                               for i in range(11)) + " }"

    response = await harness.query(document)

    assert response.status_code == 400
    assert response.json()["errors"][0]["message"] == (
        "The document is too large: the operation has 11 root fields; the limit is 10. "
        "Split it into several requests.")


@pytest.mark.parametrize("subject", ["", "   ", "user\ninjected"])
async def test_unusable_subject_unauthenticated(harness: Harness, subject: str) -> None:
    token = issue_token(harness.signing_key, user=subject, roles=["sales"], purpose="sales")

    response = await harness.query("{ __typename }", token=token)

    assert response.status_code == 401
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_introspection_mixed_with_data(harness: Harness) -> None:
    response = await harness.query("{ __schema { queryType { name } } customers(first: 1) "
                                   "{ edges { node { id } } } }")

    assert response.status_code == 400
    assert json.dumps(response.json()).count("Introspection") == 1


@pytest.mark.parametrize(("role", "visible"), [
    ("finance", {"creditLimit", "iban", "name"}), ("it", {"id", "name", "pec"})])
async def test_introspection_shows_role_fields(harness: Harness, role: str,
                                               visible: set[str]) -> None:
    response = await harness.query('{ __type(name: "Customer") { fields { name } } }', role=role)
    names = {f["name"] for f in response.json()["data"]["__type"]["fields"]}

    assert visible <= names
    assert "phone" not in names
