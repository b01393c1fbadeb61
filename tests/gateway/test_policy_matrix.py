"""The field-access policy as a truth table, checked in the engine and over HTTP.

``policy_truth_table.csv`` states the intended decision for every schema field
under each role's default purpose, for every personal field under a purpose
the role does not hold, and for every field when the token names no purpose
(an empty ``purpose`` cell). It is written by hand from the access rules each
role should have, not generated from the policy files, so a wrong rule in
``policies/policy.csv`` shows up as a mismatch here.
"""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casbin
import pytest
from conftest import DEFAULT_PURPOSES, Harness, field_errors

from gateway.catalog import Catalog, load_catalog
from gateway.identity import issue_token
from gateway.policy import DEFAULT_DENY, PolicyEngine, default_policy_dir, rule_id

TRUTH_TABLE = Path(__file__).with_name("policy_truth_table.csv")

# Where a field of each type is reached from `customer(id:)`: the relation of
# Customer that leads to it (None for Customer itself).
PARENT_RELATION = {
    "Customer": None,
    "Contact": "contacts",
    "Opportunity": "opportunities",
    "Order": "orders",
    "Invoice": "invoices",
    "Shipment": "shipments",
}

# Fields checked over HTTP for each role whose access to the parent relation
# allows reaching them: personal and non-personal, scalar, link and relation.
HTTP_SAMPLE = (
    "Customer.id", "Customer.name", "Customer.vatNumber", "Customer.pec", "Customer.phone",
    "Customer.street", "Customer.region", "Customer.ownerId", "Customer.email",
    "Customer.creditLimit", "Customer.openBalance", "Customer.iban", "Customer.contacts",
    "Customer.opportunities", "Customer.orders", "Customer.invoices", "Customer.shipments",
    "Contact.email", "Contact.phone", "Opportunity.amount", "Opportunity.stage",
    "Order.amountTotal", "Order.status", "Order.shipments", "Order.invoices",
    "Invoice.amountResidual", "Invoice.dueDate", "Shipment.carrier", "Shipment.status",
)


@dataclass(frozen=True)
class TruthRow:
    """One line of the truth table; ``purpose`` None means the token names none."""

    role: str
    purpose: str | None
    field: str
    expected: str


def load_truth_table() -> list[TruthRow]:
    with TRUTH_TABLE.open(encoding="utf-8", newline="") as handle:
        return [TruthRow(row["role"], row["purpose"] or None, row["field"], row["expected"])
                for row in csv.DictReader(handle)]


ROWS = load_truth_table()


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def engine(catalog: Catalog) -> PolicyEngine:
    return PolicyEngine(catalog)


def test_truth_table_covers_every_field(catalog: Catalog) -> None:
    fields = {decl.qualified_name for decl in catalog.all_fields()}
    for role, purpose in DEFAULT_PURPOSES.items():
        listed = {row.field for row in ROWS if row.role == role and row.purpose == purpose}
        assert listed == fields, f"{role} with purpose {purpose}"


def test_truth_table_rows_well_formed(catalog: Catalog) -> None:
    fields = {decl.qualified_name for decl in catalog.all_fields()}
    keys = Counter((row.role, row.purpose, row.field) for row in ROWS)
    assert [key for key, count in keys.items() if count > 1] == []
    assert {row.expected for row in ROWS} == {"allow", "deny"}
    assert {row.field for row in ROWS} - fields == set()


def test_foreign_purpose_rows_deny_personal(catalog: Catalog) -> None:
    personal = {decl.qualified_name for decl in catalog.all_fields() if decl.personal}
    for role, own_purpose in DEFAULT_PURPOSES.items():
        foreign = [row for row in ROWS if row.role == role and row.purpose is not None
                   and row.purpose != own_purpose]
        assert {row.field for row in foreign} == personal, role
        assert {row.expected for row in foreign} == {"deny"}, role


def test_no_purpose_rows_deny_everything(catalog: Catalog) -> None:
    fields = {decl.qualified_name for decl in catalog.all_fields()}
    for role in DEFAULT_PURPOSES:
        rows = [row for row in ROWS if row.role == role and row.purpose is None]
        assert {row.field for row in rows} == fields, role
        assert {row.expected for row in rows} == {"deny"}, role


def test_engine_matches_truth_table(engine: PolicyEngine) -> None:
    mismatches = []
    for row in ROWS:
        effect = engine.view([row.role], row.purpose).decide(row.field).effect
        if effect != row.expected:
            mismatches.append(f"{row.role}/{row.purpose}: {row.field} is {effect}, "
                              f"expected {row.expected}")
    assert mismatches == []


def test_default_deny_names_no_rule(engine: PolicyEngine) -> None:
    decision = engine.view(["sales"], "sales").decide("Customer.iban")
    assert decision.effect == "deny"
    assert decision.rule == DEFAULT_DENY


def test_allow_names_deciding_rule(engine: PolicyEngine) -> None:
    decision = engine.view(["finance"], "billing").decide("Customer.iban")
    assert decision.effect == "allow"
    assert decision.rule == rule_id(["finance", "financial", "billing", "allow"])


def _expected(role: str, field: str) -> str:
    purpose = DEFAULT_PURPOSES[role]
    matches = [row.expected for row in ROWS
               if row.role == role and row.purpose == purpose and row.field == field]
    assert len(matches) == 1, f"truth table has no single row for {role} {field}"
    return matches[0]


def _parent_field(field: str) -> str | None:
    relation = PARENT_RELATION[field.partition(".")[0]]
    return None if relation is None else f"Customer.{relation}"


def _http_sample(role: str) -> list[str]:
    """Return the sample fields that ``role`` can reach: their parent relation is allowed."""
    reachable = []
    for field in HTTP_SAMPLE:
        parent = _parent_field(field)
        if parent is None or _expected(role, parent) == "allow":
            reachable.append(field)
    return reachable


def _lookup_query(field: str, catalog: Catalog) -> tuple[str, list[Any]]:
    """Return a lookup query naming ``field`` and the response path of its first value."""
    owner, _, name = field.partition(".")
    selection = name + (" { id }" if catalog.field(field).is_relation else "")
    relation = PARENT_RELATION[owner]
    if relation is None:
        return (f"query($id: ID!) {{ customer(id: $id) {{ {selection} }} }}",
                ["customer", name])
    return (f"query($id: ID!) {{ customer(id: $id) {{ {relation}(first: 1) {{ {selection} }} }} }}",
            ["customer", relation, 0, name])


def _customer_with_everything(harness: Harness) -> str:
    """Return the first account id that has contacts, opportunities, orders and the rest."""
    crm, erp = harness.data.crm, harness.data.erp
    with_contacts = {row["AccountId"] for row in crm["Contact"]}
    with_opportunities = {row["AccountId"] for row in crm["Opportunity"]}
    shipped_orders = {row["sale_id"] for row in erp["stock.picking"]}
    invoiced_orders = {row["invoice_origin"] for row in erp["account.move"]}
    for account_id in harness.customer_ids(len(crm["Account"])):
        account = next(a for a in crm["Account"] if a["Id"] == account_id)
        partner_id = int(account["ERP_Customer_Number__c"])
        orders = sorted((o for o in erp["sale.order"] if o["partner_id"] == partner_id),
                        key=lambda o: (o["date_order"], o["id"]), reverse=True)
        if (account_id in with_contacts and account_id in with_opportunities and orders
                and orders[0]["id"] in shipped_orders and orders[0]["name"] in invoiced_orders):
            return account_id
    raise AssertionError("the demo data has no customer with every kind of related record")


def _value_at(data: Any, path: list[Any]) -> Any:
    for step in path:
        data = data[step]
    return data


def _observed(body: dict[str, Any], field: str, path: list[Any]) -> str:
    """Classify a response as "allow", "deny" or a description of what else it was."""
    errors = field_errors(body)
    value = _value_at(body["data"], path)
    if not errors and value is not None:
        return "allow"
    if value is None and errors == [(path, "FORBIDDEN", f"Not authorised to read {field}.")]:
        return "deny"
    return f"value {value!r} with errors {errors}"


@pytest.mark.parametrize("role", ["sales", "finance", "it"])
async def test_http_matches_truth_table(harness: Harness, catalog: Catalog, role: str) -> None:
    account_id = _customer_with_everything(harness)
    expected = {field: _expected(role, field) for field in _http_sample(role)}
    observed = {}
    for field in expected:
        query, path = _lookup_query(field, catalog)
        response = await harness.query(query, role=role, variables={"id": account_id})
        observed[field] = _observed(response.json(), field, path)
    assert observed == expected


async def test_dpo_denied_root_field(harness: Harness) -> None:
    response = await harness.query("query($id: ID!) { customer(id: $id) { id name } }",
                                   role="dpo", variables={"id": harness.customer_ids(1)[0]})
    body = response.json()
    assert response.status_code == 200
    assert body["data"] == {"customer": None}
    assert field_errors(body) == [(["customer"], "FORBIDDEN",
                                   "Not authorised to read Query.customer.")]


async def test_foreign_purpose_denied_over_http(harness: Harness) -> None:
    response = await harness.query("query($id: ID!) { customer(id: $id) { id name } }",
                                   role="sales", purpose="billing",
                                   variables={"id": harness.customer_ids(1)[0]})
    body = response.json()
    assert body["data"] == {"customer": None}
    assert field_errors(body) == [(["customer"], "FORBIDDEN",
                                   "Not authorised to read Query.customer.")]


async def test_missing_purpose_denied_over_http(harness: Harness) -> None:
    token = issue_token(harness.signing_key, user="u-test", roles=["sales"], purpose=None)
    response = await harness.query("query($id: ID!) { customer(id: $id) { id } }",
                                   variables={"id": harness.customer_ids(1)[0]}, token=token)
    body = response.json()
    assert body["data"] == {"customer": None}
    assert field_errors(body) == [(["customer"], "FORBIDDEN",
                                   "Not authorised to read Query.customer.")]


# --- several roles, deny rows, caching -----------------------------------------------------

UNION_RULES = """\
p, sales, contact, support, allow
p, finance, financial, support, allow
p, auditor, financial.bank_account, *, deny
p, zeta, financial.bank_account, *, deny
"""


@pytest.fixture(scope="module")
def custom_engine(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> PolicyEngine:
    """Return an engine over rules where two roles share the purpose ``support``."""
    directory = tmp_path_factory.mktemp("policy")
    shutil.copy(default_policy_dir() / "model.conf", directory / "model.conf")
    (directory / "policy.csv").write_text(UNION_RULES, encoding="utf-8")
    return PolicyEngine(catalog, directory)


def test_single_roles_get_own_fields(custom_engine: PolicyEngine) -> None:
    sales = custom_engine.view(["sales"], "support")
    finance = custom_engine.view(["finance"], "support")
    assert sales.decide("Customer.pec").effect == "allow"
    assert sales.decide("Customer.iban").effect == "deny"
    assert finance.decide("Customer.pec").effect == "deny"
    assert finance.decide("Customer.iban").effect == "allow"


def test_two_roles_get_union(custom_engine: PolicyEngine) -> None:
    both = custom_engine.view(["sales", "finance"], "support")
    assert both.decide("Customer.pec").effect == "allow"
    assert both.decide("Customer.iban").effect == "allow"
    assert both.decide("Customer.creditLimit").effect == "allow"
    assert both.decide("Customer.name").effect == "deny"


@pytest.mark.parametrize("deny_role", ["auditor", "zeta"])
def test_deny_row_beats_other_allow(custom_engine: PolicyEngine, deny_role: str) -> None:
    # "auditor" sorts before "finance" and "zeta" after it, so the result
    # cannot depend on the order the engine visits the roles in.
    view = custom_engine.view(["finance", deny_role], "support")
    decision = view.decide("Customer.iban")
    assert decision.effect == "deny"
    assert decision.rule == rule_id([deny_role, "financial.bank_account", "*", "deny"])
    assert view.decide("Customer.creditLimit").effect == "allow"


class EnforceCounter:
    """Counts ``casbin.Enforcer.enforce_ex`` calls by their (role, field, purpose) request."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[tuple[str, ...]] = Counter()
        original = casbin.Enforcer.enforce_ex

        def counting(enforcer: Any, *request: Any) -> Any:
            self.calls[tuple(str(part) for part in request)] += 1
            return original(enforcer, *request)

        monkeypatch.setattr(casbin.Enforcer, "enforce_ex", counting)


CACHE_QUERY = """query($id: ID!) {
  customer(id: $id) { name pec iban orders(first: 1) { number shipments { status } } }
}"""


async def test_casbin_consulted_once_per_field(harness: Harness, catalog: Catalog,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    counter = EnforceCounter(monkeypatch)
    variables = {"id": harness.customer_ids(1)[0]}

    await harness.query(CACHE_QUERY, variables=variables)
    after_first = sum(counter.calls.values())
    await harness.query(CACHE_QUERY, variables=variables)

    assert sum(counter.calls.values()) == after_first
    assert len(counter.calls) == len(catalog.all_fields())
    assert max(counter.calls.values()) == 1


async def test_casbin_consulted_once_per_role(harness: Harness, catalog: Catalog,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    counter = EnforceCounter(monkeypatch)
    token = harness.token("sales", "finance", purpose="sales")
    variables = {"id": harness.customer_ids(1)[0]}

    await harness.query(CACHE_QUERY, variables=variables, token=token)
    after_first = sum(counter.calls.values())
    await harness.query(CACHE_QUERY, variables=variables, token=token)

    assert sum(counter.calls.values()) == after_first
    assert len(counter.calls) == 2 * len(catalog.all_fields())
    assert max(counter.calls.values()) == 1
