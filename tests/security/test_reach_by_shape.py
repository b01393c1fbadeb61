"""Reaching a field by another shape: the decision follows the field's schema name.

Aliases, named and inline fragments, nested paths back to the same object,
``@include``/``@skip``, variables and several operations in one document
change how a field appears in the document and in the response, never
which policy decision applies. Sales may read ``Customer.name`` but not
``Customer.creditLimit`` (the ERP attribute ``credit_limit``), and reads
``Customer.iban`` masked to its last 4 characters. Finance may read
``Order.customer`` but not ``Customer.pec`` (the CRM attribute
``PEC_Email__c``).

The schema has no interfaces, unions or relay ``node`` field, so a type
condition naming another type is the only type trick left, and validation
rejects it. Each test checks the response, the attributes requested
upstream and the audit record; ``probe.send`` checks the logs.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Harness, field_errors, last4, seeded_iban
from probe import Probe, send

LIMIT_DENIED = "Not authorised to read Customer.creditLimit."
PEC_DENIED = "Not authorised to read Customer.pec."
Caplog = pytest.LogCaptureFixture


def _account(harness: Harness) -> dict[str, Any]:
    account_id = harness.customer_ids(1)[0]
    return next(a for a in harness.data.crm["Account"] if a["Id"] == account_id)


async def _lookup(harness: Harness, caplog: Caplog, query: str, role: str = "sales",
                  **variables: Any) -> Probe:
    probe = await send(harness, caplog, query, role=role,
                       variables={"id": _account(harness)["Id"], **variables})
    assert probe.status == 200
    return probe


def _limit_denied(probe: Probe) -> None:
    """Check that the credit limit was not read and that its denial was audited."""
    assert "credit_limit" not in probe.requested_attributes()
    assert probe.decisions()["Customer.creditLimit"] == "deny"


def _pec_denied(probe: Probe) -> None:
    assert "PEC_Email__c" not in probe.requested_attributes()
    assert probe.decisions()["Customer.pec"] == "deny"


async def test_alias_of_denied_field(harness: Harness, caplog: Caplog) -> None:
    probe = await _lookup(harness, caplog,
                          "query($id: ID!) { customer(id: $id) { n: creditLimit } }")

    assert probe.body["data"] == {"customer": {"n": None}}
    assert field_errors(probe.body) == [(["customer", "n"], "FORBIDDEN", LIMIT_DENIED)]
    _limit_denied(probe)


async def test_alias_named_like_allowed_field(harness: Harness, caplog: Caplog) -> None:
    probe = await _lookup(harness, caplog,
                          "query($id: ID!) { customer(id: $id) { name: creditLimit } }")

    assert probe.body["data"] == {"customer": {"name": None}}
    assert field_errors(probe.body) == [(["customer", "name"], "FORBIDDEN", LIMIT_DENIED)]
    assert "Name" not in probe.requested_attributes()
    _limit_denied(probe)
    assert "Customer.name" not in probe.decisions()


async def test_alias_named_like_denied_field(harness: Harness, caplog: Caplog) -> None:
    probe = await _lookup(harness, caplog,
                          "query($id: ID!) { customer(id: $id) { creditLimit: name } }")

    assert probe.body == {"data": {"customer": {"creditLimit": _account(harness)["Name"]}}}
    assert "Name" in probe.requested_attributes()
    assert "credit_limit" not in probe.requested_attributes()
    assert probe.decisions() == {"Query.customer": "allow", "Customer.name": "allow"}


async def test_same_field_two_aliases(harness: Harness, caplog: Caplog) -> None:
    probe = await _lookup(
        harness, caplog,
        "query($id: ID!) { customer(id: $id) { a: creditLimit b: creditLimit name } }")

    assert probe.body["data"] == {
        "customer": {"a": None, "b": None, "name": _account(harness)["Name"]}}
    assert field_errors(probe.body) == [
        (["customer", "a"], "FORBIDDEN", LIMIT_DENIED),
        (["customer", "b"], "FORBIDDEN", LIMIT_DENIED),
    ]
    _limit_denied(probe)


async def test_named_fragment_denied_field(harness: Harness, caplog: Caplog) -> None:
    query = """query($id: ID!) { customer(id: $id) { name ...Credit } }
               fragment Credit on Customer { creditLimit }"""
    probe = await _lookup(harness, caplog, query)

    assert probe.body["data"] == {
        "customer": {"name": _account(harness)["Name"], "creditLimit": None}}
    assert field_errors(probe.body) == [(["customer", "creditLimit"], "FORBIDDEN", LIMIT_DENIED)]
    _limit_denied(probe)


async def test_nested_fragments_denied_field(harness: Harness, caplog: Caplog) -> None:
    query = """query($id: ID!) { customer(id: $id) { ...Outer } }
               fragment Outer on Customer { name ...Inner }
               fragment Inner on Customer { account: creditLimit }"""
    probe = await _lookup(harness, caplog, query)

    assert probe.body["data"] == {
        "customer": {"name": _account(harness)["Name"], "account": None}}
    assert field_errors(probe.body) == [(["customer", "account"], "FORBIDDEN", LIMIT_DENIED)]
    _limit_denied(probe)


async def test_inline_fragment_denied_field(harness: Harness, caplog: Caplog) -> None:
    query = ("query($id: ID!) { customer(id: $id) "
             "{ ... on Customer { creditLimit } ... { x: creditLimit } } }")
    probe = await _lookup(harness, caplog, query)

    assert probe.body["data"] == {"customer": {"creditLimit": None, "x": None}}
    assert field_errors(probe.body) == [
        (["customer", "creditLimit"], "FORBIDDEN", LIMIT_DENIED),
        (["customer", "x"], "FORBIDDEN", LIMIT_DENIED),
    ]
    _limit_denied(probe)


async def test_type_condition_of_other_type(harness: Harness, caplog: Caplog) -> None:
    query = "query($id: ID!) { customer(id: $id) { ... on Order { number } } }"
    probe = await send(harness, caplog, query, variables={"id": _account(harness)["Id"]})

    assert probe.status == 400
    assert probe.codes() == ["BAD_REQUEST"]
    assert probe.upstream == []
    assert probe.audit == []


@pytest.mark.parametrize(("directive", "value", "included"), [
    ("include", True, True),
    ("include", False, False),
    ("skip", True, False),
    ("skip", False, True),
])
async def test_directive_variable_on_denied_field(harness: Harness, caplog: Caplog,
                                                  directive: str, value: bool,
                                                  included: bool) -> None:
    query = (f"query($id: ID!, $x: Boolean!) "
             f"{{ customer(id: $id) {{ name creditLimit @{directive}(if: $x) }} }}")
    probe = await _lookup(harness, caplog, query, x=value)

    name = _account(harness)["Name"]
    assert "credit_limit" not in probe.requested_attributes()
    if included:
        assert probe.body["data"] == {"customer": {"name": name, "creditLimit": None}}
        assert field_errors(probe.body) == [
            (["customer", "creditLimit"], "FORBIDDEN", LIMIT_DENIED)]
        assert probe.decisions()["Customer.creditLimit"] == "deny"
    else:
        assert probe.body == {"data": {"customer": {"name": name}}}
        assert "Customer.creditLimit" not in probe.decisions()


async def test_directive_on_fragment_spread(harness: Harness, caplog: Caplog) -> None:
    query = """query($id: ID!, $x: Boolean!) {
                 customer(id: $id) { name ...Credit @include(if: $x) } }
               fragment Credit on Customer { creditLimit }"""
    probe = await _lookup(harness, caplog, query, x=True)

    assert probe.body["data"] == {
        "customer": {"name": _account(harness)["Name"], "creditLimit": None}}
    assert field_errors(probe.body) == [(["customer", "creditLimit"], "FORBIDDEN", LIMIT_DENIED)]
    _limit_denied(probe)


async def test_nested_denied_under_lookup(harness: Harness, caplog: Caplog) -> None:
    query = ("query($id: ID!) { customer(id: $id) "
             "{ orders(first: 1) { customer { pec name } } } }")
    probe = await _lookup(harness, caplog, query, role="finance")

    assert probe.body["data"] == {"customer": {"orders": [
        {"customer": {"pec": None, "name": _account(harness)["Name"]}}]}}
    assert field_errors(probe.body) == [
        (["customer", "orders", 0, "customer", "pec"], "FORBIDDEN", PEC_DENIED)]
    _pec_denied(probe)


async def test_nested_denied_under_connection(harness: Harness, caplog: Caplog) -> None:
    query = """{ customers(first: 1) { edges { node {
                 orders(first: 1) { customer { ...Reach } } } } } }
               fragment Reach on Customer { pec }"""
    probe = await send(harness, caplog, query, role="finance")

    assert probe.body["data"] == {"customers": {"edges": [
        {"node": {"orders": [{"customer": {"pec": None}}]}}]}}
    assert field_errors(probe.body) == [
        (["customers", "edges", 0, "node", "orders", 0, "customer", "pec"], "FORBIDDEN",
         PEC_DENIED)]
    _pec_denied(probe)


async def test_denied_relation_hides_subtree(harness: Harness, caplog: Caplog) -> None:
    probe = await _lookup(harness, caplog,
                          "query($id: ID!) { customer(id: $id) { contacts { email } } }",
                          role="finance")

    assert probe.body["data"] == {"customer": {"contacts": None}}
    assert field_errors(probe.body) == [
        (["customer", "contacts"], "FORBIDDEN", "Not authorised to read Customer.contacts.")]
    assert [entry.entity for entry in probe.upstream] == ["Account"]
    assert probe.decisions() == {"Query.customer": "allow", "Customer.contacts": "deny"}


async def test_denied_field_every_row(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog,
                       "{ customers(first: 3) { edges { node { id creditLimit } } } }")

    ids = harness.customer_ids(3)
    assert probe.body["data"] == {"customers": {"edges": [
        {"node": {"id": account_id, "creditLimit": None}} for account_id in ids]}}
    assert field_errors(probe.body) == [
        (["customers", "edges", index, "node", "creditLimit"], "FORBIDDEN", LIMIT_DENIED)
        for index in range(3)]
    assert [entry.entity for entry in probe.upstream] == ["Account"]
    _limit_denied(probe)


@pytest.mark.parametrize(("document", "variables"), [
    ("query($f: Int = 3) { customers(first: $f) { edges { node { id } } } }", {"f": None}),
    ("query($b: Boolean = false) { customers(first: 1) "
     "{ edges { node { id @include(if: $b) } } } }", {"b": None}),
])
async def test_null_for_defaulted_variable(harness: Harness, caplog: Caplog, document: str,
                                           variables: dict[str, Any]) -> None:
    probe = await send(harness, caplog, document, variables=variables)

    assert probe.status == 400
    assert probe.codes() == ["BAD_REQUEST"]
    assert probe.upstream == []
    assert probe.audit == []


# --- several operations in one document ----------------------------------------------------

TWO_OPERATIONS = """query Card($id: ID!) { customer(id: $id) { name } }
                    query Credit($id: ID!) { customer(id: $id) { ...Limit } }
                    fragment Limit on Customer { creditLimit }"""


async def test_operation_name_picks_operation(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog, TWO_OPERATIONS, operation_name="Card",
                       variables={"id": _account(harness)["Id"]})

    assert probe.body == {"data": {"customer": {"name": _account(harness)["Name"]}}}
    assert "credit_limit" not in probe.requested_attributes()
    assert probe.decisions() == {"Query.customer": "allow", "Customer.name": "allow"}
    assert probe.audit[0]["operation_name"] == "Card"


async def test_other_operation_still_judged(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog, TWO_OPERATIONS, operation_name="Credit",
                       variables={"id": _account(harness)["Id"]})

    assert probe.body["data"] == {"customer": {"creditLimit": None}}
    assert field_errors(probe.body) == [(["customer", "creditLimit"], "FORBIDDEN", LIMIT_DENIED)]
    _limit_denied(probe)
    assert probe.audit[0]["operation_name"] == "Credit"


@pytest.mark.parametrize(("document", "operation_name", "message"), [
    (TWO_OPERATIONS, None,
     "The document has several operations; name one with operationName."),
    (TWO_OPERATIONS, "Missing", "No operation named 'Missing' in the document."),
    ("query($id: ID!) { customer(id: $id) { creditLimit } }", "Credit",
     "No operation named 'Credit' in the document."),
    ("query Card($id: ID!) { customer(id: $id) { name } } "
     "query Card($id: ID!) { customer(id: $id) { creditLimit } }", "Card",
     "There can be only one operation named 'Card'."),
])
async def test_ambiguous_operation_rejected(harness: Harness, caplog: Caplog, document: str,
                                            operation_name: str | None, message: str) -> None:
    probe = await send(harness, caplog, document, operation_name=operation_name,
                       variables={"id": _account(harness)["Id"]})

    assert probe.status == 400
    assert [e["message"] for e in probe.body["errors"]] == [message]
    assert probe.codes() == ["BAD_REQUEST"]
    assert probe.upstream == []
    assert probe.audit == []


# --- masked fields: the mask follows the real field name like a denial does ---------------

def _masked_iban(harness: Harness, account_id: str) -> str:
    return last4(seeded_iban(harness.data, account_id))


def _iban_masked(probe: Probe) -> None:
    assert "acc_number" in probe.requested_attributes()
    assert probe.decisions()["Customer.iban"] == "mask"
    assert len(probe.audit[0]["subjects"]) == 1


async def test_alias_of_masked_field(harness: Harness, caplog: Caplog) -> None:
    probe = await _lookup(harness, caplog, "query($id: ID!) { customer(id: $id) { name: iban } }")

    assert probe.body == {
        "data": {"customer": {"name": _masked_iban(harness, _account(harness)["Id"])}}}
    _iban_masked(probe)
    assert "Customer.name" not in probe.decisions()


async def test_masked_field_in_fragments(harness: Harness, caplog: Caplog) -> None:
    query = """query($id: ID!) { customer(id: $id) { ...Outer ... on Customer { x: iban } } }
               fragment Outer on Customer { name ...Inner }
               fragment Inner on Customer { account: iban }"""
    probe = await _lookup(harness, caplog, query)

    masked = _masked_iban(harness, _account(harness)["Id"])
    assert probe.body == {"data": {"customer": {
        "name": _account(harness)["Name"], "account": masked, "x": masked}}}
    _iban_masked(probe)


@pytest.mark.parametrize(("directive", "value", "included"), [
    ("include", True, True),
    ("skip", True, False),
])
async def test_directive_on_masked_field(harness: Harness, caplog: Caplog, directive: str,
                                         value: bool, included: bool) -> None:
    query = (f"query($id: ID!, $x: Boolean!) "
             f"{{ customer(id: $id) {{ iban @{directive}(if: $x) }} }}")
    probe = await _lookup(harness, caplog, query, x=value)

    expected = {"iban": _masked_iban(harness, _account(harness)["Id"])} if included else {}
    assert probe.body == {"data": {"customer": expected}}
    if included:
        _iban_masked(probe)
    else:
        assert "acc_number" not in probe.requested_attributes()
        assert probe.audit == []


async def test_masked_field_every_row(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog, "{ customers(first: 3) { edges { node { id iban } } } }")

    ids = harness.customer_ids(3)
    assert probe.body == {"data": {"customers": {"edges": [
        {"node": {"id": account_id, "iban": _masked_iban(harness, account_id)}}
        for account_id in ids]}}}
    assert probe.decisions()["Customer.iban"] == "mask"
    assert len(probe.audit[0]["subjects"]) == 3
