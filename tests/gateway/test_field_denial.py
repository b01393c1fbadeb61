"""Fields are judged by their schema name, whatever form the operation names them in.

Aliases, fragments, directives and variables change how a field appears in
the document and in the response, never which policy decision applies.
Sales may read ``Customer.name`` but not ``Customer.creditLimit``, and reads
``Customer.iban`` masked to its last 4 characters; finance may read
``Order.customer`` but not ``Customer.pec``.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Harness, field_errors, last4, seeded_iban

LIMIT_DENIED = "Not authorised to read Customer.creditLimit."
PEC_DENIED = "Not authorised to read Customer.pec."


def _account(harness: Harness) -> dict[str, Any]:
    account_id = harness.customer_ids(1)[0]
    return next(a for a in harness.data.crm["Account"] if a["Id"] == account_id)


async def _lookup(harness: Harness, query: str, role: str = "sales",
                  **variables: Any) -> dict[str, Any]:
    response = await harness.query(query, role=role,
                                   variables={"id": _account(harness)["Id"], **variables})
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_alias_of_denied_field(harness: Harness) -> None:
    body = await _lookup(harness, "query($id: ID!) { customer(id: $id) { n: creditLimit } }")
    assert body["data"] == {"customer": {"n": None}}
    assert field_errors(body) == [(["customer", "n"], "FORBIDDEN", LIMIT_DENIED)]


async def test_alias_named_like_allowed_field(harness: Harness) -> None:
    body = await _lookup(harness, "query($id: ID!) { customer(id: $id) { name: creditLimit } }")
    assert body["data"] == {"customer": {"name": None}}
    assert field_errors(body) == [(["customer", "name"], "FORBIDDEN", LIMIT_DENIED)]


async def test_alias_named_like_denied_field(harness: Harness) -> None:
    body = await _lookup(harness, "query($id: ID!) { customer(id: $id) { creditLimit: name } }")
    assert body == {"data": {"customer": {"creditLimit": _account(harness)["Name"]}}}


async def test_same_field_two_aliases(harness: Harness) -> None:
    body = await _lookup(
        harness, "query($id: ID!) { customer(id: $id) { a: creditLimit b: creditLimit name } }")
    assert body["data"] == {"customer": {"a": None, "b": None, "name": _account(harness)["Name"]}}
    assert field_errors(body) == [
        (["customer", "a"], "FORBIDDEN", LIMIT_DENIED),
        (["customer", "b"], "FORBIDDEN", LIMIT_DENIED),
    ]


async def test_named_fragment_denied_field(harness: Harness) -> None:
    query = """query($id: ID!) { customer(id: $id) { name ...Credit } }
               fragment Credit on Customer { creditLimit }"""
    body = await _lookup(harness, query)
    assert body["data"] == {"customer": {"name": _account(harness)["Name"], "creditLimit": None}}
    assert field_errors(body) == [(["customer", "creditLimit"], "FORBIDDEN", LIMIT_DENIED)]


async def test_nested_fragments_denied_field(harness: Harness) -> None:
    query = """query($id: ID!) { customer(id: $id) { ...Outer } }
               fragment Outer on Customer { name ...Inner }
               fragment Inner on Customer { account: creditLimit }"""
    body = await _lookup(harness, query)
    assert body["data"] == {"customer": {"name": _account(harness)["Name"], "account": None}}
    assert field_errors(body) == [(["customer", "account"], "FORBIDDEN", LIMIT_DENIED)]


async def test_inline_fragment_denied_field(harness: Harness) -> None:
    query = ("query($id: ID!) { customer(id: $id) "
             "{ ... on Customer { creditLimit } ... { x: creditLimit } } }")
    body = await _lookup(harness, query)
    assert body["data"] == {"customer": {"creditLimit": None, "x": None}}
    assert field_errors(body) == [
        (["customer", "creditLimit"], "FORBIDDEN", LIMIT_DENIED),
        (["customer", "x"], "FORBIDDEN", LIMIT_DENIED),
    ]


@pytest.mark.parametrize(("directive", "value", "included"), [
    ("include", True, True),
    ("include", False, False),
    ("skip", True, False),
    ("skip", False, True),
])
async def test_directive_variable_on_denied_field(harness: Harness, directive: str, value: bool,
                                                  included: bool) -> None:
    query = (f"query($id: ID!, $x: Boolean!) "
             f"{{ customer(id: $id) {{ name creditLimit @{directive}(if: $x) }} }}")
    body = await _lookup(harness, query, x=value)
    name = _account(harness)["Name"]
    if included:
        assert body["data"] == {"customer": {"name": name, "creditLimit": None}}
        assert field_errors(body) == [(["customer", "creditLimit"], "FORBIDDEN", LIMIT_DENIED)]
    else:
        assert body == {"data": {"customer": {"name": name}}}


async def test_directive_on_fragment_spread(harness: Harness) -> None:
    query = """query($id: ID!, $x: Boolean!) {
                 customer(id: $id) { name ...Credit @include(if: $x) } }
               fragment Credit on Customer { creditLimit }"""
    body = await _lookup(harness, query, x=True)
    assert body["data"] == {"customer": {"name": _account(harness)["Name"], "creditLimit": None}}
    assert field_errors(body) == [(["customer", "creditLimit"], "FORBIDDEN", LIMIT_DENIED)]


async def test_nested_denied_under_lookup(harness: Harness) -> None:
    query = "query($id: ID!) { customer(id: $id) { orders(first: 1) { customer { pec name } } } }"
    body = await _lookup(harness, query, role="finance")
    assert body["data"] == {"customer": {"orders": [
        {"customer": {"pec": None, "name": _account(harness)["Name"]}}]}}
    assert field_errors(body) == [
        (["customer", "orders", 0, "customer", "pec"], "FORBIDDEN", PEC_DENIED)]


async def test_nested_denied_under_connection(harness: Harness) -> None:
    query = """{ customers(first: 1) { edges { node {
                 orders(first: 1) { customer { ...Reach } } } } } }
               fragment Reach on Customer { pec }"""
    response = await harness.query(query, role="finance")
    body = response.json()
    assert body["data"] == {"customers": {"edges": [
        {"node": {"orders": [{"customer": {"pec": None}}]}}]}}
    assert field_errors(body) == [
        (["customers", "edges", 0, "node", "orders", 0, "customer", "pec"], "FORBIDDEN",
         PEC_DENIED)]


async def test_denied_relation_hides_subtree(harness: Harness) -> None:
    body = await _lookup(harness, "query($id: ID!) { customer(id: $id) { contacts { email } } }",
                         role="finance")
    assert body["data"] == {"customer": {"contacts": None}}
    assert field_errors(body) == [
        (["customer", "contacts"], "FORBIDDEN", "Not authorised to read Customer.contacts.")]


async def test_denied_field_every_row(harness: Harness) -> None:
    response = await harness.query(
        "{ customers(first: 3) { edges { node { id creditLimit } } } }")
    body = response.json()
    ids = harness.customer_ids(3)
    assert body["data"] == {"customers": {"edges": [
        {"node": {"id": account_id, "creditLimit": None}} for account_id in ids]}}
    assert field_errors(body) == [
        (["customers", "edges", index, "node", "creditLimit"], "FORBIDDEN", LIMIT_DENIED)
        for index in range(3)]



# --- masked fields: the mask follows the real field name like a denial does ---------------

def _masked_iban(harness: Harness, account_id: str) -> str:
    return last4(seeded_iban(harness.data, account_id))


async def test_alias_of_masked_field(harness: Harness) -> None:
    body = await _lookup(harness, "query($id: ID!) { customer(id: $id) { name: iban } }")
    assert body == {"data": {"customer": {"name": _masked_iban(harness, _account(harness)["Id"])}}}


async def test_masked_field_in_fragments(harness: Harness) -> None:
    query = """query($id: ID!) { customer(id: $id) { ...Outer ... on Customer { x: iban } } }
               fragment Outer on Customer { name ...Inner }
               fragment Inner on Customer { account: iban }"""
    body = await _lookup(harness, query)
    masked = _masked_iban(harness, _account(harness)["Id"])
    assert body == {"data": {"customer": {"name": _account(harness)["Name"], "account": masked,
                                          "x": masked}}}


@pytest.mark.parametrize(("directive", "value", "included"), [
    ("include", True, True),
    ("skip", True, False),
])
async def test_directive_on_masked_field(harness: Harness, directive: str, value: bool,
                                         included: bool) -> None:
    query = (f"query($id: ID!, $x: Boolean!) "
             f"{{ customer(id: $id) {{ iban @{directive}(if: $x) }} }}")
    body = await _lookup(harness, query, x=value)
    expected = {"iban": _masked_iban(harness, _account(harness)["Id"])} if included else {}
    assert body == {"data": {"customer": expected}}


async def test_masked_field_every_row(harness: Harness) -> None:
    response = await harness.query("{ customers(first: 3) { edges { node { id iban } } } }")
    ids = harness.customer_ids(3)
    assert response.json() == {"data": {"customers": {"edges": [
        {"node": {"id": account_id, "iban": _masked_iban(harness, account_id)}}
        for account_id in ids]}}}
