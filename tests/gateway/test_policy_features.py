"""Each feature of the policy layer as a truth table over small policies.

Every case builds an engine from a few ``p``, ``g`` and ``g3`` rows and one
``purposes.toml`` table, then requests one field's decision. It checks the
effect, written as in ``policy_truth_table.csv`` (``allow``, ``deny``,
``mask:<mask>``), and the row that decided it. The HTTP tests run a gateway
over a policy folder written for the test and check the values a client gets.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    field_errors,
    last4,
    read_audit_records,
    start_harness,
    write_policy_dir,
)

from gateway.audit.pseudonym import load_or_create_key
from gateway.catalog import load_catalog
from gateway.demo.data import DemoData
from gateway.errors import PolicyError
from gateway.masks import PseudonymKeys, masker, parse_mask
from gateway.policy import DEFAULT_DENY, Decision, PolicyEngine, PolicyText, default_policy_dir

CATALOG = load_catalog()
MODEL = (default_policy_dir() / "model.conf").read_text(encoding="utf-8")

# Purposes each role may state in the engine cases. "junior" and "trainee"
# list none of their own: they act for the purposes of the roles they inherit.
PURPOSES = {
    "clerk": ["sales", "support", "billing", "customer-relations"],
    "manager": ["sales", "billing"],
    "auditor": ["sales"],
}


def engine_for(rules: list[str]) -> PolicyEngine:
    """Build an engine from policy rows written as in ``policy.csv``, with ``PURPOSES``."""
    rows = [[value.strip() for value in line.split(",")] for line in rules]
    text = PolicyText(model=MODEL, rules=rows, purposes=PURPOSES, origin="test rows")
    return PolicyEngine(CATALOG, text)


def decision_text(decision: Decision) -> str:
    return f"mask:{decision.mask}" if decision.effect == "mask" else decision.effect


@dataclass(frozen=True)
class Case:
    """One field's expected decision.

    ``decided_by`` is the index in ``rules`` of the deciding row, or None for the default deny.
    """

    rules: list[str]
    roles: tuple[str, ...]
    purpose: str | None
    field: str
    expected: str
    decided_by: int | None


def case(case_id: str, rules: list[str], field: str, expected: str, decided_by: int | None, *,
         roles: tuple[str, ...] = ("clerk",), purpose: str | None = "sales") -> Any:
    return pytest.param(Case(rules, roles, purpose, field, expected, decided_by), id=case_id)


def check(item: Case) -> None:
    engine = engine_for(item.rules)
    decision = engine.view(item.roles, item.purpose).decide(item.field)
    assert decision_text(decision) == item.expected
    if item.decided_by is None:
        assert decision.rule == DEFAULT_DENY
        return
    deciding_row = item.rules[item.decided_by].partition(",")[2].strip()
    assert engine.rules[decision.rule] == deciding_row
    assert engine.explain(item.roles, item.purpose, item.field) == decision


# --- effects -------------------------------------------------------------------------------

EFFECTS = [
    case("allow row", ["p, clerk, Customer.name, sales, allow, -"],
         "Customer.name", "allow", 0),
    case("deny row", ["p, clerk, Customer.name, sales, deny, -"],
         "Customer.name", "deny", 0),
    case("masked allow row", ["p, clerk, Customer.iban, sales, allow, last4"],
         "Customer.iban", "mask:last4", 0),
    case("no row", ["p, clerk, Customer.name, sales, allow, -"],
         "Customer.pec", "deny", None),
    case("row of another role", ["p, manager, Customer.name, sales, allow, -"],
         "Customer.name", "deny", None),
    case("row of another purpose", ["p, clerk, Customer.name, billing, allow, -"],
         "Customer.name", "deny", None),
    case("row for any purpose", ["p, clerk, Customer.name, *, allow, -"],
         "Customer.name", "allow", 0),
    case("category row", ["p, clerk, identity, sales, allow, -"],
         "Customer.vatNumber", "allow", 0),
    case("mask on a relation", ["p, clerk, Customer.contacts, sales, allow, null"],
         "Customer.contacts", "allow", 0),
]


@pytest.mark.parametrize("item", EFFECTS)
def test_effect(item: Case) -> None:
    check(item)


# --- every mask kind -----------------------------------------------------------------------

MASKS = [
    case("last4", ["p, clerk, Customer.iban, *, allow, last4"],
         "Customer.iban", "mask:last4", 0),
    case("first4", ["p, clerk, Customer.vatNumber, *, allow, first4"],
         "Customer.vatNumber", "mask:first4", 0),
    case("email_domain", ["p, clerk, Customer.pec, *, allow, email_domain"],
         "Customer.pec", "mask:email_domain", 0),
    case("year on DateTime", ["p, clerk, Order.orderDate, *, allow, year"],
         "Order.orderDate", "mask:year", 0),
    case("year on Date", ["p, clerk, Invoice.invoiceDate, *, allow, year"],
         "Invoice.invoiceDate", "mask:year", 0),
    case("round on Decimal", ["p, clerk, Order.amountTotal, *, allow, round:1000"],
         "Order.amountTotal", "mask:round:1000", 0),
    case("round on Int", ["p, clerk, Opportunity.probability, *, allow, round:10"],
         "Opportunity.probability", "mask:round:10", 0),
    case("pseudonym", ["p, clerk, Customer.name, *, allow, pseudonym:crm"],
         "Customer.name", "mask:pseudonym:crm", 0),
    case("null", ["p, clerk, Customer.phone, *, allow, null"],
         "Customer.phone", "mask:null", 0),
]


@pytest.mark.parametrize("item", MASKS)
def test_mask_kind(item: Case) -> None:
    check(item)


@pytest.mark.parametrize("row", [
    "p, clerk, Customer.iban, *, allow, last5",
    "p, clerk, Customer.iban, *, allow, round:0",
    "p, clerk, Customer.iban, *, allow, pseudonym:CRM",
    "p, clerk, Customer.iban, *, deny, last4",
    "p, clerk, Customer.iban, *, maybe, -",
    "p, clerk, Customer.iban, *, allow",
    "p, clerk, Customer.nickname, *, allow, -",
    "p2, clerk, Customer, contacts, user",
])
def test_invalid_row_rejected(row: str) -> None:
    with pytest.raises(PolicyError):
        engine_for([row])


# --- a category rule against a field rule ----------------------------------------------------

CONFLICTS = [
    case("category allow, field mask",
         ["p, clerk, financial, sales, allow, -",
          "p, clerk, Customer.iban, sales, allow, last4"],
         "Customer.iban", "mask:last4", 1),
    case("category mask, field allow",
         ["p, clerk, financial.bank_account, sales, allow, last4",
          "p, clerk, Customer.iban, sales, allow, -"],
         "Customer.iban", "allow", 1),
    case("category allow, field deny",
         ["p, clerk, financial, sales, allow, -",
          "p, clerk, Customer.iban, sales, deny, -"],
         "Customer.iban", "deny", 1),
    case("category deny, field allow",
         ["p, clerk, financial, sales, deny, -",
          "p, clerk, Customer.iban, sales, allow, -"],
         "Customer.iban", "deny", 0),
    case("parent allow, sub-category mask",
         ["p, clerk, contact, sales, allow, -",
          "p, clerk, contact.email, sales, allow, email_domain"],
         "Customer.pec", "mask:email_domain", 1),
    case("parent mask, sub-category allow",
         ["p, clerk, contact, sales, allow, null",
          "p, clerk, contact.email, sales, allow, -"],
         "Customer.pec", "allow", 1),
    case("sub-category mask, field mask",
         ["p, clerk, identity.tax_id, sales, allow, last4",
          "p, clerk, Customer.vatNumber, sales, allow, first4"],
         "Customer.vatNumber", "mask:first4", 1),
    case("field rule spares its neighbour",
         ["p, clerk, contact.email, sales, allow, email_domain",
          "p, clerk, Customer.pec, sales, allow, -"],
         "Customer.email", "mask:email_domain", 0),
    case("parent deny, sub-category allow",
         ["p, clerk, contact, sales, deny, -",
          "p, clerk, contact.email, sales, allow, -"],
         "Customer.pec", "deny", 0),
]


@pytest.mark.parametrize("item", CONFLICTS)
def test_category_against_field(item: Case) -> None:
    check(item)


# --- role inheritance ----------------------------------------------------------------------

INHERITANCE = [
    case("inherits an allow",
         ["g, junior, clerk", "p, clerk, Customer.name, sales, allow, -"],
         "Customer.name", "allow", 1, roles=("junior",)),
    case("inherits a mask",
         ["g, junior, clerk", "p, clerk, Customer.iban, sales, allow, last4"],
         "Customer.iban", "mask:last4", 1, roles=("junior",)),
    case("inherits a deny",
         ["g, junior, clerk", "p, clerk, Customer.iban, *, deny, -",
          "p, junior, financial, sales, allow, -"],
         "Customer.iban", "deny", 1, roles=("junior",)),
    case("two levels",
         ["g, trainee, junior", "g, junior, clerk", "p, clerk, Customer.name, sales, allow, -"],
         "Customer.name", "allow", 2, roles=("trainee",)),
    case("nothing flows up",
         ["g, junior, clerk", "p, junior, Customer.name, sales, allow, -"],
         "Customer.name", "deny", None),
    case("own rule beside inherited ones",
         ["g, junior, clerk", "p, clerk, Customer.name, sales, allow, -",
          "p, junior, Customer.pec, sales, allow, -"],
         "Customer.pec", "allow", 2, roles=("junior",)),
]


@pytest.mark.parametrize("item", INHERITANCE)
def test_role_inheritance(item: Case) -> None:
    check(item)


def test_inherited_purposes() -> None:
    engine = engine_for(["g, trainee, junior", "g, junior, clerk"])
    assert engine.purposes_of(["junior"]) == set(PURPOSES["clerk"])
    assert engine.purposes_of(["trainee"]) == set(PURPOSES["clerk"])
    assert engine.purposes_of(["clerk"]) == set(PURPOSES["clerk"])
    assert engine.purposes_of(["stranger"]) == set()


# --- several roles -------------------------------------------------------------------------

TWO_ROLES = [
    case("allow beats mask",
         ["p, clerk, Customer.iban, sales, allow, -",
          "p, manager, Customer.iban, sales, allow, last4"],
         "Customer.iban", "allow", 0, roles=("clerk", "manager")),
    case("allow beats mask, other order",
         ["p, clerk, Customer.iban, sales, allow, last4",
          "p, manager, Customer.iban, sales, allow, -"],
         "Customer.iban", "allow", 1, roles=("clerk", "manager")),
    case("mask beats nothing",
         ["p, clerk, Customer.iban, sales, allow, last4"],
         "Customer.iban", "mask:last4", 0, roles=("clerk", "manager")),
    case("deny beats allow",
         ["p, clerk, Customer.iban, sales, allow, -",
          "p, manager, Customer.iban, *, deny, -"],
         "Customer.iban", "deny", 1, roles=("clerk", "manager")),
    case("deny beats allow, other order",
         ["p, clerk, Customer.iban, *, deny, -",
          "p, manager, Customer.iban, sales, allow, -"],
         "Customer.iban", "deny", 0, roles=("clerk", "manager")),
    case("field deny beats category allow",
         ["p, clerk, financial, sales, allow, -",
          "p, auditor, Customer.iban, sales, deny, -"],
         "Customer.iban", "deny", 1, roles=("auditor", "clerk")),
    case("deny elsewhere spares this field",
         ["p, clerk, financial, sales, allow, -",
          "p, auditor, Customer.iban, sales, deny, -"],
         "Customer.creditLimit", "allow", 0, roles=("auditor", "clerk")),
]


@pytest.mark.parametrize("item", TWO_ROLES)
def test_two_roles(item: Case) -> None:
    check(item)


# --- purposes: the g3 hierarchy and purposes.toml ------------------------------------------

HIERARCHY = [
    case("parent purpose covers child",
         ["g3, sales, customer-relations",
          "p, clerk, Customer.name, customer-relations, allow, -"],
         "Customer.name", "allow", 1),
    case("parent purpose spares other child",
         ["g3, sales, customer-relations",
          "p, clerk, Customer.name, customer-relations, allow, -"],
         "Customer.name", "deny", None, purpose="billing"),
    case("child purpose spares parent",
         ["g3, sales, customer-relations", "p, clerk, Customer.name, sales, allow, -"],
         "Customer.name", "deny", None, purpose="customer-relations"),
    case("two levels of purposes",
         ["g3, sales, customer-relations", "g3, customer-relations, commercial",
          "p, clerk, Customer.name, commercial, allow, -"],
         "Customer.name", "allow", 2),
    case("parent deny beats child allow",
         ["g3, sales, customer-relations",
          "p, clerk, Customer.name, customer-relations, deny, -",
          "p, clerk, Customer.name, sales, allow, -"],
         "Customer.name", "deny", 1),
]


@pytest.mark.parametrize("item", HIERARCHY)
def test_purpose_hierarchy(item: Case) -> None:
    check(item)


LISTED_PURPOSES = [
    case("listed purpose", ["p, auditor, Customer.name, sales, allow, -"],
         "Customer.name", "allow", 0, roles=("auditor",)),
    case("unlisted purpose", ["p, auditor, Customer.name, support, allow, -"],
         "Customer.name", "deny", None, roles=("auditor",), purpose="support"),
    case("unlisted purpose, any-purpose row", ["p, auditor, Customer.name, *, allow, -"],
         "Customer.name", "allow", 0, roles=("auditor",), purpose="support"),
    case("no purpose", ["p, auditor, Customer.name, sales, allow, -"],
         "Customer.name", "deny", None, roles=("auditor",), purpose=None),
    case("no purpose, any-purpose row", ["p, auditor, Customer.id, *, allow, -"],
         "Customer.id", "allow", 0, roles=("auditor",), purpose=None),
    case("role without purposes", ["p, stranger, Customer.name, sales, allow, -"],
         "Customer.name", "deny", None, roles=("stranger",)),
    case("purpose of the other role",
         ["p, auditor, Customer.name, billing, allow, -"],
         "Customer.name", "allow", 0, roles=("auditor", "manager"), purpose="billing"),
]


@pytest.mark.parametrize("item", LISTED_PURPOSES)
def test_purposes_file(item: Case) -> None:
    check(item)


def test_unlisted_purpose_counts_as_none() -> None:
    engine = engine_for(["p, auditor, Customer.name, *, allow, -"])
    assert engine.view(["auditor"], "support").purpose is None
    assert engine.view(["auditor"], "sales").purpose == "sales"


# --- masks over HTTP -----------------------------------------------------------------------

# "masker" reads each sample field under one mask; "reader" reads everything plain.
HTTP_MASK_RULES = """\
p, masker, non_personal, *, allow, -
p, masker, Customer.iban, *, allow, last4
p, masker, Customer.vatNumber, *, allow, first4
p, masker, Customer.pec, *, allow, email_domain
p, masker, Customer.name, *, allow, pseudonym:crm
p, masker, Customer.phone, *, allow, null
p, masker, Customer.orders, *, allow, -
p, masker, Order.orderDate, *, allow, year
p, masker, Order.amountTotal, *, allow, round:1000
p, masker, Customer.invoices, *, allow, -
p, masker, Invoice.invoiceDate, *, allow, year
p, masker, Customer.opportunities, *, allow, -
p, masker, Opportunity.probability, *, allow, round:10
p, reader, non_personal, *, allow, -
p, reader, identity, *, allow, -
p, reader, contact, *, allow, -
p, reader, commercial, *, allow, -
p, reader, financial, *, allow, -
"""


def _round(text: str, step: int) -> decimal.Decimal:
    quotient = (decimal.Decimal(text) / step).quantize(decimal.Decimal(1),
                                                       rounding=decimal.ROUND_HALF_EVEN)
    return quotient * step


def _year_of_datetime(text: str) -> str:
    assert text.endswith("+00:00"), text
    return f"{text[:4]}-01-01T00:00:00+00:00"


def _email_domain(text: str) -> str:
    return "*@" + text.partition("@")[2].lower()


def _first4(text: str) -> str:
    return text[:4] + "*" * (len(text) - 4)


@dataclass(frozen=True)
class HttpMask:
    """A field under one mask and the value it should show for a plain value.

    ``relation`` is the field of Customer that leads to the field's type, or None
    when the field belongs to Customer itself.
    """

    mask: str
    field: str
    relation: str | None
    expected: Callable[[Any, PseudonymKeys], Any]


HTTP_MASKS = [
    HttpMask("last4", "Customer.iban", None, lambda plain, keys: last4(plain)),
    HttpMask("first4", "Customer.vatNumber", None, lambda plain, keys: _first4(plain)),
    HttpMask("email_domain", "Customer.pec", None, lambda plain, keys: _email_domain(plain)),
    HttpMask("pseudonym:crm", "Customer.name", None,
             lambda plain, keys: masker(parse_mask("pseudonym:crm"), "String", keys)(plain)),
    HttpMask("null", "Customer.phone", None, lambda plain, keys: None),
    HttpMask("year", "Order.orderDate", "orders(first: 2)",
             lambda plain, keys: _year_of_datetime(plain)),
    HttpMask("round:1000", "Order.amountTotal", "orders(first: 2)",
             lambda plain, keys: f"{_round(plain, 1000):.2f}"),
    HttpMask("year", "Invoice.invoiceDate", "invoices(first: 2)",
             lambda plain, keys: f"{plain[:4]}-01-01"),
    HttpMask("round:10", "Opportunity.probability", "opportunities",
             lambda plain, keys: int(_round(str(plain), 10))),
]


def _values(body: dict[str, Any], item: HttpMask) -> list[Any]:
    """Return every value of the sample field in a customer list, in response order."""
    name = item.field.partition(".")[2]
    nodes = [edge["node"] for edge in body["data"]["customers"]["edges"]]
    if item.relation is None:
        return [node[name] for node in nodes]
    relation = item.relation.partition("(")[0]
    return [child[name] for node in nodes for child in node[relation]]


def _list_query(item: HttpMask) -> str:
    name = item.field.partition(".")[2]
    selection = name if item.relation is None else f"{item.relation} {{ {name} }}"
    return f"{{ customers(first: 40) {{ edges {{ node {{ id {selection} }} }} }} }}"


@pytest.mark.parametrize("item", HTTP_MASKS, ids=[f"{i.mask} {i.field}" for i in HTTP_MASKS])
async def test_mask_over_http(demo_data: DemoData, tmp_path: Path, item: HttpMask) -> None:
    policy_dir = write_policy_dir(tmp_path / "policy", HTTP_MASK_RULES)
    async with start_harness(demo_data, tmp_path / "data", policy_dir=policy_dir) as harness:
        keys = PseudonymKeys(load_or_create_key(harness.settings.mask_key_path))
        query = _list_query(item)
        plain_body = (await harness.query(query, token=harness.token("reader"))).json()
        masked_body = (await harness.query(query, token=harness.token("masker"))).json()
        records = await read_audit_records(harness.data_dir)

    plain = [value for value in _values(plain_body, item) if value is not None]
    served = [value for value, raw in zip(_values(masked_body, item), _values(plain_body, item),
                                          strict=True) if raw is not None]
    assert field_errors(plain_body) == []
    assert field_errors(masked_body) == []
    assert len(plain) >= 10
    assert served == [item.expected(value, keys) for value in plain]
    assert served != plain
    entry = next(e for e in records[-1]["fields"] if e["field"] == item.field)
    assert (entry["decision"], entry["mask"]) == ("mask", item.mask)


async def test_pseudonym_mask_format(demo_data: DemoData, tmp_path: Path) -> None:
    policy_dir = write_policy_dir(tmp_path / "policy", HTTP_MASK_RULES)
    async with start_harness(demo_data, tmp_path / "data", policy_dir=policy_dir) as harness:
        body = (await harness.query("{ customers(first: 40) { edges { node { name } } } }",
                                    token=harness.token("masker"))).json()
    names = [edge["node"]["name"] for edge in body["data"]["customers"]["edges"]]
    assert all(re.fullmatch(r"pn:[a-z2-7]{26}", name) for name in names), names
    assert len(set(names)) == len(names)
