"""The field-access policy as a truth table, checked in the engine and over HTTP.

``policy_truth_table.csv`` states the intended decision for every schema field
under each role's default purpose, for every personal field under a purpose
the role does not hold, and for every field when the token names no purpose
(an empty ``purpose`` cell). A decision is ``allow``, ``deny`` or
``mask:<mask>`` in the policy's mask syntax (``mask:last4``,
``mask:pseudonym:it``). The table is written by hand from the access rules each
role should have, not generated from the policy files, so a wrong rule in
``policies/policy.csv`` shows up as a mismatch here.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casbin
import pytest
from conftest import DEFAULT_PURPOSES, Harness, field_errors, start_harness, write_policy_dir

from gateway.audit.pseudonym import load_or_create_key
from gateway.catalog import Catalog, load_catalog
from gateway.demo.data import DemoData
from gateway.errors import PolicyError
from gateway.identity import issue_token
from gateway.masks import PseudonymKeys, masker, parse_mask
from gateway.policy import DEFAULT_DENY, Decision, PolicyEngine, default_policy_dir, rule_id

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
    return PolicyEngine.from_directory(catalog)


def test_truth_table_covers_every_field(catalog: Catalog) -> None:
    fields = {decl.qualified_name for decl in catalog.all_fields()}
    for role, purpose in DEFAULT_PURPOSES.items():
        listed = {row.field for row in ROWS if row.role == role and row.purpose == purpose}
        assert listed == fields, f"{role} with purpose {purpose}"


def _is_decision_text(text: str) -> bool:
    if text in ("allow", "deny"):
        return True
    kind, _, mask = text.partition(":")
    if kind != "mask":
        return False
    try:
        parse_mask(mask)
    except PolicyError:
        return False
    return True


def decision_text(decision: Decision) -> str:
    """Return a decision in the truth table's vocabulary."""
    return f"mask:{decision.mask}" if decision.effect == "mask" else decision.effect


def test_truth_table_rows_well_formed(catalog: Catalog) -> None:
    fields = {decl.qualified_name for decl in catalog.all_fields()}
    keys = Counter((row.role, row.purpose, row.field) for row in ROWS)
    assert [key for key, count in keys.items() if count > 1] == []
    assert [row for row in ROWS if not _is_decision_text(row.expected)] == []
    assert {"allow", "deny", "mask:last4", "mask:pseudonym:it"} <= {row.expected for row in ROWS}
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
        effect = decision_text(engine.view([row.role], row.purpose).decide(row.field))
        if effect != row.expected:
            mismatches.append(f"{row.role}/{row.purpose}: {row.field} is {effect}, "
                              f"expected {row.expected}")
    assert mismatches == []


def test_default_deny_names_no_rule(engine: PolicyEngine) -> None:
    decision = engine.view(["sales"], "sales").decide("Customer.creditLimit")
    assert decision.effect == "deny"
    assert decision.rule == DEFAULT_DENY
    assert decision.mask is None


def test_allow_names_deciding_rule(engine: PolicyEngine) -> None:
    # The row names the parent purpose "finance"; the g3 rows put "billing" under it.
    decision = engine.view(["finance"], "billing").decide("Customer.iban")
    assert decision.effect == "allow"
    assert decision.rule == rule_id(["finance", "financial", "finance", "allow", "-"])
    assert decision.mask is None


def test_mask_names_deciding_rule(engine: PolicyEngine) -> None:
    decision = engine.view(["sales"], "sales").decide("Customer.iban")
    assert decision.effect == "mask"
    assert decision.mask == "last4"
    assert decision.rule == rule_id(["sales", "financial.bank_account", "customer-relations",
                                     "allow", "last4"])
    assert engine.rules[decision.rule] == (
        "sales, financial.bank_account, customer-relations, allow, last4")


def test_sales_rep_inherits_sales(engine: PolicyEngine, catalog: Catalog) -> None:
    sales = engine.view(["sales"], "sales")
    rep = engine.view(["sales-rep"], "sales")
    for decl in catalog.all_fields():
        assert rep.decide(decl.qualified_name) == sales.decide(decl.qualified_name), decl
    assert engine.purposes_of(["sales-rep"]) == {"sales", "support"}


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


# A role that reads every field unmasked, added beside the shipped rules so
# that the HTTP test can compare each served value with the plain one.
READER_RULES = "".join(f"p, reader, {category}, *, allow, -\n" for category in (
    "non_personal", "identity", "contact", "commercial", "financial", "logistics"))


def _masked(keys: PseudonymKeys, catalog: Catalog, field: str, expected: str,
            plain: Any) -> Any:
    """Return ``plain`` under the mask that ``expected`` names, or None if it names none."""
    kind, _, mask = expected.partition(":")
    if kind != "mask":
        return None
    scalar = catalog.field(field).base_type
    # The shipped policy masks only text fields, whose JSON value is the value masked.
    assert scalar in ("String", "ID"), f"{field}: a {scalar} value needs converting first"
    return masker(parse_mask(mask), scalar, keys)(plain)


def _observed(body: dict[str, Any], field: str, path: list[Any], plain: Any,
              expected: str, masked: Any) -> str:
    """Classify a response as "allow", "deny", the expected mask or a description.

    ``plain`` is the value a role with an allow rule reads; ``masked`` is that
    value under the mask ``expected`` names, or None.
    """
    errors = field_errors(body)
    value = _value_at(body["data"], path)
    if not errors and value is not None and value == plain:
        return "allow"
    if not errors and masked is not None and value == masked:
        return expected
    if value is None and errors == [(path, "FORBIDDEN", f"Not authorised to read {field}.")]:
        return "deny"
    return f"value {value!r} with errors {errors}"


def _role_token(harness: Harness, role: str, account_id: str) -> str:
    """Return a token of ``role`` under which the account passes every row rule."""
    account = next(a for a in harness.data.crm["Account"] if a["Id"] == account_id)
    return harness.token_with(role, user=str(account["OwnerId"]),
                              purpose=DEFAULT_PURPOSES[role], region=account["Region__c"])


@pytest.mark.parametrize("role", ["sales", "sales-rep", "finance", "it"])
async def test_http_matches_truth_table(demo_data: DemoData, tmp_path: Path, catalog: Catalog,
                                        role: str) -> None:
    shipped = (default_policy_dir() / "policy.csv").read_text(encoding="utf-8")
    policy_dir = write_policy_dir(tmp_path / "policy", shipped + "\n" + READER_RULES)
    async with start_harness(demo_data, tmp_path / "data", policy_dir=policy_dir) as harness:
        keys = PseudonymKeys(load_or_create_key(harness.settings.mask_key_path))
        account_id = _customer_with_everything(harness)
        token = _role_token(harness, role, account_id)
        reader = harness.token("reader", purpose=None)
        expected = {field: _expected(role, field) for field in _http_sample(role)}
        observed = {}
        for field, expectation in expected.items():
            query, path = _lookup_query(field, catalog)
            variables = {"id": account_id}
            reference = await harness.query(query, variables=variables, token=reader)
            plain = _value_at(reference.json()["data"], path)
            assert plain is not None, f"{field} has no value for the reference role"
            masked = _masked(keys, catalog, field, expectation, plain)
            response = await harness.query(query, variables=variables, token=token)
            observed[field] = _observed(response.json(), field, path, plain, expectation,
                                        masked)
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
p, sales, contact, support, allow, -
p, finance, financial, support, allow, -
p, auditor, financial.bank_account, *, deny, -
p, zeta, financial.bank_account, *, deny, -
"""
UNION_PURPOSES = """\
[purposes]
sales = ["support"]
finance = ["support"]
"""


@pytest.fixture(scope="module")
def custom_engine(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> PolicyEngine:
    """Return an engine over rules where two roles share the purpose ``support``."""
    directory = write_policy_dir(tmp_path_factory.mktemp("policy"), UNION_RULES, UNION_PURPOSES)
    return PolicyEngine.from_directory(catalog, directory)


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
    assert decision.rule == rule_id([deny_role, "financial.bank_account", "*", "deny", "-"])
    assert view.decide("Customer.creditLimit").effect == "allow"


class EnforceCounter:
    """Counts ``casbin.Enforcer.enforce_ex`` calls by their (role, field, purpose) request.

    Calls through the exact matcher ``m2`` pass an ``EnforceContext`` first; it
    is left out of the key, so both matchers count under the same request.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[tuple[str, ...]] = Counter()
        original = casbin.Enforcer.enforce_ex

        def counting(enforcer: Any, *request: Any) -> Any:
            parts = request[1:] if not isinstance(request[0], str) else request
            self.calls[tuple(str(part) for part in parts)] += 1
            return original(enforcer, *request)

        monkeypatch.setattr(casbin.Enforcer, "enforce_ex", counting)

    def total(self) -> int:
        return sum(self.calls.values())

    def objects(self) -> set[str]:
        return {request[1] for request in self.calls}


def _max_calls_per_role(catalog: Catalog) -> int:
    """Return the most enforce calls one role's view may cost.

    Per field: one hierarchical check, one exact check per level of its
    category chain (field, category, parent categories) while looking for
    the deciding allow row, and at most one more while compiling the row rules.
    """
    total = 0
    for decl in catalog.all_fields():
        levels = 1 + len(decl.category.split("."))
        total += 2 + levels
    return total


LIST_QUERY = """query($n: Int!) { customers(first: $n) { edges { node {
  name pec iban orders(first: 1) { number shipments { status } } } } } }"""


async def test_casbin_consulted_once_per_view(harness: Harness, catalog: Catalog,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    counter = EnforceCounter(monkeypatch)

    await harness.query(LIST_QUERY, variables={"n": 1})
    after_first = counter.total()
    await harness.query(LIST_QUERY, variables={"n": 200})

    assert counter.total() == after_first
    assert counter.objects() >= {decl.qualified_name for decl in catalog.all_fields()}
    assert after_first <= _max_calls_per_role(catalog)


async def test_casbin_consulted_once_per_role(harness: Harness, catalog: Catalog,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    counter = EnforceCounter(monkeypatch)
    token = harness.token("sales", "finance", purpose="sales")

    await harness.query(LIST_QUERY, variables={"n": 1}, token=token)
    after_first = counter.total()
    await harness.query(LIST_QUERY, variables={"n": 200}, token=token)

    assert counter.total() == after_first
    assert {request[0] for request in counter.calls} == {"sales", "finance"}
    assert after_first <= 2 * _max_calls_per_role(catalog)
