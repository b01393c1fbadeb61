"""The gateway requests from each upstream exactly the attributes the allowed fields need.

The demo servers log every call with its entity, the number of keys in its
IN clause and its exact field list, so these tests read what left the
gateway. A denied field must not be requested at all, not only be removed
from the response.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Harness

# A query naming fields of every entity, for checks that hold for any role.
BROAD_QUERY = """{ customers(first: 3) { edges { node {
  id erpNumber name vatNumber pec phone street city region ownerId email
  creditLimit openBalance iban
  contacts { firstName lastName email phone }
  opportunities { name amount stage }
  orders(first: 2) { number amountTotal customer { name pec } shipments { carrier status }
                     invoices { number amountResidual } }
  invoices(first: 2) { number dueDate amountResidual }
  shipments(first: 2) { reference trackingReference }
} } } }"""


def _calls(entries: list[Any]) -> list[tuple[str, int, list[str] | None]]:
    return sorted((entry.entity, entry.keys, entry.fields) for entry in entries)


async def test_denied_link_never_requested(harness: Harness) -> None:
    await harness.query("query($id: ID!) { customer(id: $id) { name creditLimit } }",
                        role="sales", variables={"id": harness.customer_ids(1)[0]})
    assert _calls(harness.erp_requests()) == []
    assert _calls(harness.crm_requests()) == [("Account", 1, ["Id", "Name"])]


async def test_masked_link_requested(harness: Harness) -> None:
    # A masked field is read like an allowed one; the mask applies in the gateway.
    await harness.query("query($id: ID!) { customer(id: $id) { name iban } }",
                        role="sales", variables={"id": harness.customer_ids(1)[0]})
    assert _calls(harness.crm_requests()) == [
        ("Account", 1, ["Id", "Name", "ERP_Customer_Number__c"])]
    assert _calls(harness.erp_requests()) == [("res.partner.bank", 1, ["partner_id", "acc_number"])]


async def test_denied_attribute_not_selected(harness: Harness) -> None:
    await harness.query("query($id: ID!) { customer(id: $id) { name pec } }",
                        role="finance", variables={"id": harness.customer_ids(1)[0]})
    assert _calls(harness.crm_requests()) == [("Account", 1, ["Id", "Name"])]
    assert _calls(harness.erp_requests()) == []


async def test_denied_relation_never_requested(harness: Harness) -> None:
    await harness.query("query($id: ID!) { customer(id: $id) { name contacts { email } } }",
                        role="finance", variables={"id": harness.customer_ids(1)[0]})
    assert _calls(harness.crm_requests()) == [("Account", 1, ["Id", "Name"])]


async def test_sales_list_exact_projection(harness: Harness) -> None:
    await harness.query("""{ customers(first: 2) { edges { node {
        name openBalance orders(first: 1) { number shipments { status carrier } } } } } }""")
    assert _calls(harness.crm_requests()) == [
        ("Account", 0, ["Id", "Name", "ERP_Customer_Number__c"])]
    erp = _calls(harness.erp_requests())
    assert [call[0] for call in erp] == ["res.partner", "sale.order", "stock.picking"]
    assert erp[0] == ("res.partner", 2, ["id", "credit"])
    assert erp[1] == ("sale.order", 2, ["id", "partner_id", "name"])
    assert erp[2][2] == ["id", "sale_id", "state", "carrier_id"]


async def test_finance_list_exact_projection(harness: Harness) -> None:
    await harness.query("""{ customers(first: 2) { edges { node {
        name vatNumber creditLimit iban invoices(first: 1) { number amountResidual } } } } }""",
                        role="finance")
    assert _calls(harness.crm_requests()) == [
        ("Account", 0, ["Id", "Name", "VAT_Number__c", "ERP_Customer_Number__c"])]
    assert _calls(harness.erp_requests()) == [
        ("account.move", 2, ["id", "partner_id", "name", "amount_residual"]),
        ("res.partner", 2, ["id", "credit_limit"]),
        ("res.partner.bank", 2, ["partner_id", "acc_number"]),
    ]


async def test_it_reads_identifiers_and_masked(harness: Harness) -> None:
    # it reads ids, statuses and dates (also of orders, invoices and shipments,
    # through the relations its field rules allow), and the name and e-mail
    # addresses only to pseudonymise them; amounts and numbers are never asked.
    await harness.query(BROAD_QUERY, role="it")
    customer_fields = ["Id", "ERP_Customer_Number__c", "Name", "PEC_Email__c"]
    assert _calls(harness.crm_requests()) == [
        ("Account", 0, customer_fields), ("Account", 3, customer_fields)]
    assert _calls(harness.erp_requests()) == [
        ("account.move", 3, ["id", "partner_id", "invoice_date_due"]),
        ("account.move", 6, ["id", "invoice_origin"]),
        ("res.partner", 3, ["id", "email"]),
        ("sale.order", 3, ["id", "partner_id", "name"]),
        ("stock.picking", 3, ["id", "partner_id", "name"]),
        ("stock.picking", 6, ["id", "sale_id", "state"]),
    ]


async def test_dpo_causes_no_upstream_call(harness: Harness) -> None:
    await harness.query(BROAD_QUERY, role="dpo")
    assert _calls(harness.crm_requests()) == []
    assert _calls(harness.erp_requests()) == []


@pytest.mark.parametrize("role", ["sales", "finance", "it"])
async def test_erp_always_gets_field_list(harness: Harness, role: str) -> None:
    await harness.query(BROAD_QUERY, role=role)
    for entry in harness.erp_requests():
        assert entry.fields is not None, entry.entity
        assert entry.fields != [], entry.entity


async def test_sales_never_asks_credit_limit(harness: Harness) -> None:
    await harness.query(BROAD_QUERY, role="sales")
    requested = {field for entry in harness.erp_requests() for field in entry.fields or []}
    bank_calls = [call for call in _calls(harness.erp_requests())
                  if call[0] == "res.partner.bank"]
    assert "credit_limit" not in requested
    # The IBAN is read for its last 4 characters, and nothing else of the bank account.
    assert bank_calls == [("res.partner.bank", 3, ["partner_id", "acc_number"])]


async def test_finance_never_asks_contact_data(harness: Harness) -> None:
    await harness.query(BROAD_QUERY, role="finance")
    crm_fields = {field for entry in harness.crm_requests() for field in entry.fields or []}
    erp_fields = {field for entry in harness.erp_requests() for field in entry.fields or []}
    assert {"PEC_Email__c", "Phone", "Region__c", "OwnerId"} & crm_fields == set()
    assert {"Contact", "Opportunity"} & {entry.entity for entry in harness.crm_requests()} == set()
    assert "email" not in erp_fields
    assert "stock.picking" not in {entry.entity for entry in harness.erp_requests()}
