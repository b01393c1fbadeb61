"""Random valid operations for every role: no leak, no 500, no unaudited personal read.

``operations.py`` draws documents with aliases (also one field under another
field's name), fragments, ``@include``/``@skip``, nested relations and
arguments taken from the demo data. Each one is sent through an in-process
gateway over the demo CRM and ERP, with a token of one role and one purpose.
The response is checked field by field against the decisions that
``PolicyEngine.view`` computes for that role and purpose:

1. the status is 200, or 400 exactly when the document exceeds the
   documented shape limits (10 levels, 1,000 fields, 10 root fields);
   the cost limit is off here;
2. a denied field is null with a ``FORBIDDEN`` error at its path, a masked
   value never equals the value seeded for that record (or any record), and
   a ``sales-rep`` receives only the customers of its region or its own;
3. the request has exactly one audit record when it names a personal or
   denied field, and that record lists every field the gateway judged with
   its decision; otherwise it has none.

One gateway runs per role on an event loop the fixture owns, so hypothesis
drives a plain synchronous test.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, field_errors, start_harness
from hypothesis import given, settings
from hypothesis import strategies as st
from operations import (
    ExecutedField,
    Operation,
    SchemaInfo,
    SeedChoices,
    Selection,
    executed_fields,
    operations,
)

from gateway.audit.export import ExportFilter, export_records
from gateway.catalog import Catalog, load_catalog
from gateway.demo.data import DemoData
from gateway.graphql_schema import build_schema
from gateway.limits import OperationLimits
from gateway.policy import PolicyEngine, PolicyView

# Examples per role, 10,000 in all. dpo gets fewer because its requests are
# the cheapest: every root is denied, so nothing is read upstream.
EXAMPLES = {"sales": 2100, "sales-rep": 2100, "finance": 2000, "it": 2000, "dpo": 1800}
ROLES = tuple(EXAMPLES)
REP_USER = "u-rep-without-accounts"
# The cost limit is set out of reach, so that the 400s are exactly those of
# the shape limits; test_amplification.py checks exact cost estimates.
NO_COST_LIMIT = OperationLimits(max_cost=10**12)
# Checks each role must have run at least once, so that a change of the
# generator or of the shipped policy cannot silently leave them unexercised.
EXERCISED_BY_ALL = ("denied field", "document over a limit", "audit record")
EXERCISED = {
    "sales": ("masked Customer.iban",),
    "sales-rep": ("masked Customer.iban", "customer checked against row rules"),
    "finance": (),
    "it": ("masked Customer.name", "masked Customer.pec", "masked Customer.email"),
    "dpo": (),
}


@dataclass(frozen=True)
class Case:
    """One request: an operation and the token claims it is sent with."""

    operation: Operation
    purpose: str | None
    user: str
    region: str | None


class SeededValues:
    """The value the demo data contains for every scalar field, by record key.

    Read from the same declarations the gateway reads (entity, attribute,
    link), so a masked value can be compared with what the upstream stores.
    """

    def __init__(self, catalog: Catalog, data: DemoData) -> None:
        self._by_record: dict[str, dict[str, str]] = {}
        self._anywhere: dict[str, frozenset[str]] = {}
        for type_decl in catalog.types.values():
            rows = _entity_rows(data, type_decl.system, type_decl.entity)
            for decl in type_decl.fields.values():
                if decl.is_relation or decl.attribute is None:
                    continue
                values = {str(row[type_decl.key]): row.get(decl.attribute) for row in rows}
                if decl.link is not None:
                    link = type_decl.links[decl.link]
                    linked = {str(r[link.remote]): r
                              for r in _entity_rows(data, link.system, link.entity)}
                    values = {str(row[type_decl.key]):
                              linked.get(str(row.get(link.local)), {}).get(decl.attribute)
                              for row in rows}
                texts = {key: str(value) for key, value in values.items() if value is not None}
                self._by_record[decl.qualified_name] = texts
                self._anywhere[decl.qualified_name] = frozenset(texts.values())

    def of_record(self, qualified_name: str, record_key: str) -> str | None:
        return self._by_record[qualified_name].get(record_key)

    def anywhere(self, qualified_name: str) -> frozenset[str]:
        return self._anywhere[qualified_name]


def _entity_rows(data: DemoData, system: str, entity: str) -> list[dict[str, Any]]:
    records = {"crm": data.crm, "erp": data.erp}[system]
    return records[entity]


@dataclass(frozen=True)
class World:
    """What every check needs besides the response: schema, policy and demo data."""

    catalog: Catalog
    schema: SchemaInfo
    seeds: SeedChoices
    engine: PolicyEngine
    seeded: SeededValues
    accounts: Mapping[str, Mapping[str, Any]]
    regions: tuple[str, ...]
    owners: tuple[str, ...]


@dataclass
class RoleGateway:
    """A running gateway and the event loop it lives on."""

    role: str
    harness: Harness
    runner: asyncio.Runner


@pytest.fixture(scope="module")
def world(demo_data: DemoData) -> World:
    catalog = load_catalog()
    schema = SchemaInfo.from_schema(build_schema(catalog).graphql_schema,
                                    frozenset(catalog.types))
    accounts = {str(a["Id"]): a for a in demo_data.crm["Account"]}
    return World(catalog=catalog, schema=schema, seeds=SeedChoices.from_data(demo_data),
                 engine=PolicyEngine.from_directory(catalog),
                 seeded=SeededValues(catalog, demo_data), accounts=accounts,
                 regions=tuple(sorted({str(a["Region__c"]) for a in accounts.values()})),
                 owners=tuple(sorted({str(a["OwnerId"]) for a in accounts.values()})))


@pytest.fixture(scope="module", params=ROLES)
def role_gateway(request: pytest.FixtureRequest, demo_data: DemoData,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoleGateway]:
    role = str(request.param)
    data_dir = tmp_path_factory.mktemp(f"random-{role}") / "data"
    runner = asyncio.Runner()
    stack = AsyncExitStack()
    try:
        harness = runner.run(stack.enter_async_context(start_harness(
            demo_data, data_dir, overrides={"operation_limits": NO_COST_LIMIT})))
        yield RoleGateway(role, harness, runner)
    finally:
        runner.run(stack.aclose())
        runner.close()


def test_random_operations(role_gateway: RoleGateway, world: World) -> None:
    role = role_gateway.role
    seen: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES[role], deadline=None, derandomize=True, database=None)
    @given(case=cases(world, role))
    def run(case: Case) -> None:
        seen["request"] += 1
        role_gateway.runner.run(check_case(role_gateway, world, case, seen))

    run()
    assert seen["request"] >= EXAMPLES[role]
    for what in (*EXERCISED_BY_ALL, *EXERCISED[role]):
        assert seen[what] > 0, f"no request of role {role} checked a {what}: {dict(seen)}"


def cases(world: World, role: str) -> st.SearchStrategy[Case]:
    """Return requests of ``role``: its own purposes, another role's purpose, or none."""
    own = sorted(world.engine.purposes_of([role]))
    foreign = sorted(set().union(*world.engine.purposes.values()) - set(own))[:1]
    purposes: list[str | None] = [*own, *foreign, None]
    if role != "sales-rep":
        return st.builds(Case, operations(world.schema, world.seeds), st.sampled_from(purposes),
                         st.just("u-test"), st.none())
    return st.builds(Case, operations(world.schema, world.seeds), st.sampled_from(purposes),
                     st.sampled_from((*world.owners[:3], REP_USER)),
                     st.sampled_from(world.regions))


def token_for(harness: Harness, role: str, case: Case) -> str:
    claims: dict[str, str] = {}
    if case.purpose is not None:
        claims["purpose"] = case.purpose
    if case.region is not None:
        claims["region"] = case.region
    return harness.token_with(role, user=case.user, **claims)


async def check_case(gateway: RoleGateway, world: World, case: Case,
                     seen: Counter[str]) -> None:
    """Send one request and check status, values and audit record; count what was checked."""
    operation, harness = case.operation, gateway.harness
    document = operation.document()
    since = datetime.now(UTC)
    response = await harness.query(document, variables=dict(operation.variables) or None,
                                   operation_name=operation.name,
                                   token=token_for(harness, gateway.role, case))
    shape = operation.shape()
    body = response.json()

    assert response.status_code in (200, 400), (response.status_code, document, body)
    if shape.exceeds():
        assert response.status_code == 400, (shape, document)
        seen["document over a limit"] += 1
        assert [code for _, code, _ in field_errors(body)] == ["BAD_REQUEST"], body
        return
    assert response.status_code == 200, (shape, document, body)

    view = world.engine.view([gateway.role], case.purpose)
    check = ResponseCheck(world, view, operation.variables, case, body, seen)
    check.selection(body["data"], operation.roots, [])
    assert {code for _, code, _ in field_errors(body)} <= {"FORBIDDEN"}, (document, body)

    records = await audit_records_since(harness.data_dir, since,
                                        response.headers["x-request-id"])
    check_audit(world, view, operation, records, seen, personal_read=check.personal_read)


@dataclass
class ResponseCheck:
    """A check of every value of a response, walked along the operation that produced it."""

    world: World
    view: PolicyView
    variables: Mapping[str, Any]
    case: Case
    body: dict[str, Any]
    seen: Counter[str]
    personal_read: bool = False
    errors: set[tuple[tuple[str | int, ...], str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.errors = {(tuple(path), code) for path, code, _ in field_errors(self.body)}

    def selection(self, value: Mapping[str, Any], selections: Sequence[Selection],
                  path: list[str | int]) -> None:
        executed = executed_fields(selections, self.variables)
        assert set(value) == set(executed), (path, sorted(value), sorted(executed))
        record_key = next((str(value[key]) for key, f in executed.items()
                           if f.name == "id" and value[key] is not None), None)
        for key, executed_field in executed.items():
            if executed_field.parent_type == "Customer" and record_key is not None:
                self.visible_customer(record_key, path)
            self.field(value[key], executed_field, [*path, key], record_key)

    def field(self, value: Any, executed: ExecutedField, path: list[str | int],
              record_key: str | None) -> None:
        if not executed.name.startswith("__") and (
                executed.parent_type == "Query"
                or executed.parent_type in self.world.schema.catalog_types):
            self.decision(value, executed, path, record_key)
        children = executed.children()
        if value is None or not children:
            return
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            if item is None:
                continue
            item_path = [*path, index] if isinstance(value, list) else path
            self.selection(item, children, item_path)

    def decision(self, value: Any, executed: ExecutedField, path: list[str | int],
                 record_key: str | None) -> None:
        qualified = f"{executed.parent_type}.{executed.name}"
        decision = self.view.decide(qualified)
        if decision.effect == "deny":
            assert value is None, (qualified, path)
            assert (tuple(path), "FORBIDDEN") in self.errors, (qualified, path, self.errors)
            self.seen["denied field"] += 1
            return
        if value is not None and self.world.catalog.field(qualified).personal:
            self.personal_read = True
        if decision.effect != "mask" or value is None:
            return
        seeded = self.world.seeded
        if record_key is not None:
            assert value != seeded.of_record(qualified, record_key), (qualified, path)
        assert str(value) not in seeded.anywhere(qualified), (qualified, path)
        self.seen[f"masked {qualified}"] += 1

    def visible_customer(self, account_id: str, path: list[str | int]) -> None:
        """Assert that a row rule of the caller, if any, admits this customer."""
        rules = self.view.rows_of("Customer")
        if rules is None:
            return
        account = self.world.accounts[account_id]
        claims = {"region": self.case.region, "user": self.case.user}
        admitted = []
        for rule in rules:
            attribute = str(self.world.catalog.field(f"Customer.{rule.field}").attribute)
            claim = claims.get(rule.claim)
            if claim is not None and str(account[attribute]) == claim:
                admitted.append(rule)
        assert admitted, (account_id, path, "outside every row rule of the caller")
        self.seen["customer checked against row rules"] += 1


async def audit_records_since(data_dir: Path, since: datetime,
                              request_id: str) -> list[dict[str, Any]]:
    """Return the audit records of one request, reading only those written since ``since``.

    ``conftest.read_audit_records`` exports the whole log, which would cost time
    quadratic in the number of requests, thousands per gateway here.
    """
    out = io.StringIO()
    await export_records(data_dir / "audit.sqlite3", out, fmt="jsonl",
                         filters=ExportFilter(since=since))
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    return [record for record in records if record["request_id"] == request_id]


def check_audit(world: World, view: PolicyView, operation: Operation,
                records: list[dict[str, Any]], seen: Counter[str], *,
                personal_read: bool) -> None:
    judged = judged_fields(world.schema.catalog_types, operation.roots, operation.variables,
                           lambda name: view.decide(name).allowed)
    decisions = {name: view.decide(name) for name in judged}
    must_record = any(world.catalog.field(name).personal or not decision.allowed
                      for name, decision in decisions.items())
    if personal_read:
        assert must_record, (operation.document(), "a personal value without a judged field")
    if not must_record:
        assert records == [], operation.document()
        return
    assert len(records) == 1, (operation.document(), len(records))
    listed = {entry["field"]: entry["decision"] for entry in records[0]["fields"]}
    expected = {name: decision.effect for name, decision in decisions.items()}
    assert listed == expected, operation.document()
    seen["audit record"] += 1


def judged_fields(catalog_types: frozenset[str], selections: Sequence[Selection],
                  variables: Mapping[str, Any], allowed: Callable[[str], bool]) -> set[str]:
    """Return the qualified names the gateway must judge, and audit, for ``selections``.

    Every executed field is judged except ``__typename`` and connection
    wrappers. The gateway reads nothing below a denied relation, so the
    fields inside a relation count only when ``allowed`` returns True for it.
    ``customers(search:)`` also judges ``Customer.name``, which the search reads.
    """
    judged: set[str] = set()
    for executed in executed_fields(selections, variables).values():
        if executed.name.startswith("__"):
            continue
        if executed.parent_type != "Query" and executed.parent_type not in catalog_types:
            # A connection's edges, node and pageInfo are judged with the connection.
            judged |= judged_fields(catalog_types, executed.children(), variables, allowed)
            continue
        qualified = f"{executed.parent_type}.{executed.name}"
        judged.add(qualified)
        if not allowed(qualified):
            continue
        if any(name == "search" for name, _ in executed.nodes[0].arguments):
            judged.add("Customer.name")
        judged |= judged_fields(catalog_types, executed.children(), variables, allowed)
    return judged
