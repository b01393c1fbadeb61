"""The compiled executor gives byte for byte the response graphql-core gives.

Random operations from ``operations.py`` (aliases, fragments, ``@include``
and ``@skip`` with variables, ``__typename``, nested relations) are planned
and fetched for a role. Both executors then execute the same built value
tree, and the two JSON bodies must be identical, key order included.

To make failures likely, the records are served from memory with some
values spoiled. Some rows lack their key (null in a non-null ``id``), some
have every other attribute null, and some have values that do not convert
(an error value in the tree). Drawn sets of entities fail upstream. The
role's policy adds denied and masked fields.

Each role draws ``FONTE_DIFFERENTIAL_OPERATIONS`` operations (default
1,000) and runs each in 10 scenarios: clean records, two variants of
spoiled records, and seven drawn sets of failing entities over spoiled
records. That makes 10,000 compared executions per role by default.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from operations import SchemaInfo, SeedChoices, operations
from test_random_operations import Case

from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit_events import AuditRecorder
from gateway.build import Builder
from gateway.catalog import Catalog, load_catalog
from gateway.demo.data import DemoData
from gateway.errors import UpstreamError
from gateway.execute import Executor, GraphQLRequest, GraphQLResponse
from gateway.fetch import key_text
from gateway.graphql_schema import build_schema
from gateway.limits import OperationLimits
from gateway.masks import PseudonymKeys
from gateway.policy import PolicyEngine
from gateway.policy_reload import PolicyHolder
from gateway.principal import Principal
from gateway.sources import FetchRequest, Row, matches, order_terms

# Parsing and validating a new document costs more than executing it, so
# each generated operation runs in several scenarios (see Scenario).
OPERATIONS = int(os.environ.get("FONTE_DIFFERENTIAL_OPERATIONS", "1000"))
SCENARIOS = 10
ROLES = ("sales", "sales-rep", "finance", "it", "dpo")
KEYS = PseudonymKeys(bytes(range(32)))
# What each role's cases must have met at least once in a run of 1,000 or
# more operations, so that a change of the data, the generator or the policy
# cannot silently leave them untested.
_FAILURES = ("null propagated", "error UPSTREAM_UNAVAILABLE", "error FORBIDDEN")
EXERCISED = {"sales": _FAILURES, "sales-rep": _FAILURES, "finance": _FAILURES,
             "it": _FAILURES, "dpo": ("error FORBIDDEN",)}


class MemorySource:
    """Returns rows of a fixed set of records for a ``FetchRequest``, as a dialect does.

    Reading an entity in ``failing`` raises ``UpstreamError``, as a dialect
    does when its system is down.
    """

    supports_row_filters = True

    def __init__(self, name: str, variants: Sequence[Mapping[str, list[Row]]]) -> None:
        self.name = name
        self._variants = variants
        self._tables = variants[0]
        self.failing: frozenset[str] = frozenset()

    def serve(self, scenario: Scenario) -> None:
        self._tables = self._variants[scenario.variant]
        self.failing = scenario.failing

    async def fetch(self, request: FetchRequest) -> list[Row]:
        if request.entity in self.failing:
            raise UpstreamError(self.name, f"{request.entity} is unavailable")
        rows = list(self._tables.get(request.entity, []))
        if request.match is not None:
            requested = {str(key) for key in request.keys}
            rows = [row for row in rows if key_text(row.get(request.match)) in requested]
        rows = [row for row in rows if all(matches(row, c) for c in request.where)]
        if not request.visible:
            return []
        if request.any_of:
            rows = [row for row in rows if any(matches(row, c) for c in request.any_of)]
        if request.search is not None:
            attribute, text = request.search
            rows = [row for row in rows if text.lower() in str(row.get(attribute) or "").lower()]
        for attribute, descending in reversed(order_terms(request.order)):
            rows.sort(key=lambda row: str(row.get(attribute) or ""), reverse=descending)
        if request.after is not None:
            attribute, key = request.after
            rows = [row for row in rows if str(row.get(attribute) or "") > key]
        if request.limit is not None:
            rows = rows[:request.limit]
        return [{attribute: row.get(attribute) for attribute in request.attributes}
                for row in rows]

    async def aclose(self) -> None:
        return None


def spoiled(rows: list[dict[str, Any]], key: str, shift: int) -> list[Row]:
    """Return copies of ``rows`` of which some lack values or hold unconvertible ones.

    ``shift`` moves the spoiled rows, so that each variant spoils others.
    """
    result = []
    for index, row in enumerate(rows, start=shift):
        copy = dict(row)
        if index % 4 == 3:
            copy[key] = None
        elif index % 5 == 2:
            copy = {name: (value if name == key else None) for name, value in copy.items()}
        elif index % 7 == 3:
            copy = {name: ("n/a" if isinstance(value, int | float) and name != key
                           and not isinstance(value, bool) else value)
                    for name, value in copy.items()}
        result.append(copy)
    return result


def source_of(catalog: Catalog, data: DemoData, system: str) -> MemorySource:
    records = {"crm": data.crm, "erp": data.erp}[system]
    keys = {t.entity: t.key for t in catalog.types.values() if t.system == system}
    variants = [records] + [{entity: spoiled(rows, keys.get(entity, "id"), shift)
                             for entity, rows in records.items()} for shift in (0, 1)]
    return MemorySource(system, variants)


@dataclass(frozen=True)
class Scenario:
    """The records of one execution: clean (0) or spoiled (1, 2), and the entities that fail."""

    variant: int
    failing: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Trial:
    """One request, run in every scenario over the same parsed document."""

    case: Case
    scenarios: tuple[Scenario, ...]


@dataclass
class RoleExecutor:
    role: str
    executor: Executor
    sources: dict[str, MemorySource]
    runner: asyncio.Runner
    engine: PolicyEngine
    schema: SchemaInfo
    seeds: SeedChoices
    regions: tuple[str, ...]
    owners: tuple[str, ...]
    entities: tuple[str, ...]


@pytest.fixture(scope="module", params=ROLES)
def role_executor(request: pytest.FixtureRequest, demo_data: DemoData,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoleExecutor]:
    catalog = load_catalog()
    schema = build_schema(catalog)
    engine = PolicyEngine.from_directory(catalog)
    sources = {system: source_of(catalog, demo_data, system) for system in ("crm", "erp")}
    runner = asyncio.Runner()
    path: Path = tmp_path_factory.mktemp("differential") / "audit.db"
    store = runner.run(SQLiteAuditStore.open(path))
    recorder = AuditRecorder(store, Pseudonymizer(bytes(32)), operation_key=bytes(32))
    executor = Executor(catalog, schema, PolicyHolder(engine), sources, recorder, KEYS,
                        OperationLimits(max_cost=10**12))
    accounts = demo_data.crm["Account"]
    try:
        yield RoleExecutor(
            role=str(request.param), executor=executor, sources=sources, runner=runner,
            engine=engine,
            schema=SchemaInfo.from_schema(schema.graphql_schema, frozenset(catalog.types)),
            seeds=SeedChoices.from_data(demo_data),
            regions=tuple(sorted({str(a["Region__c"]) for a in accounts})),
            owners=tuple(sorted({str(a["OwnerId"]) for a in accounts})),
            entities=tuple(sorted({t.entity for t in catalog.types.values()})))
    finally:
        runner.run(store.close())
        runner.close()


def trials(world: RoleExecutor) -> st.SearchStrategy[Trial]:
    own = sorted(world.engine.purposes_of([world.role]))
    purposes: list[str | None] = [*own, None]
    failing = st.builds(Scenario, st.sampled_from((1, 2)),
                        st.frozensets(st.sampled_from(world.entities), min_size=1, max_size=2))
    scenarios = st.tuples(st.just(Scenario(0)), st.just(Scenario(1)), st.just(Scenario(2)),
                          *([failing] * (SCENARIOS - 3)))
    if world.role != "sales-rep":
        case = st.builds(Case, operations(world.schema, world.seeds), st.sampled_from(purposes),
                         st.just("u-test"), st.none())
    else:
        case = st.builds(Case, operations(world.schema, world.seeds), st.sampled_from(purposes),
                         st.sampled_from((*world.owners[:3], "u-rep-without-accounts")),
                         st.sampled_from(world.regions))
    return st.builds(Trial, case, scenarios)


async def both_bodies(world: RoleExecutor, case: Case,
                      scenario: Scenario) -> tuple[bytes, bytes] | None:
    """Return the compiled and the graphql-core body of one case, or None if it is rejected."""
    for source in world.sources.values():
        source.serve(scenario)
    operation = case.operation
    request = GraphQLRequest(operation.document(), dict(operation.variables) or None,
                             operation.name)
    attributes = {"region": case.region} if case.region else {}
    principal = Principal(case.user, frozenset({world.role}), case.purpose,
                          attributes=attributes)
    fetched = await world.executor.fetch(request, principal)
    if isinstance(fetched, GraphQLResponse):
        return None
    root = world.executor.build_root(fetched.plan, fetched.nodes, Builder(KEYS))
    compiled = world.executor.respond(request, fetched, root, "compiled")
    reference = world.executor.respond(request, fetched, root, "graphql-core")
    return orjson.dumps(compiled), orjson.dumps(reference)


def count_features(body: bytes, seen: Counter[str]) -> None:
    decoded = orjson.loads(body)
    seen["executed"] += 1
    for error in decoded.get("errors", []):
        code = error.get("extensions", {}).get("code", "none")
        seen[f"error {code}"] += 1
        if error["message"].startswith("Cannot return null"):
            seen["null propagated"] += 1
    if decoded["data"] is None:
        seen["data null"] += 1


def test_compiled_equals_graphql_core(role_executor: RoleExecutor) -> None:
    seen: Counter[str] = Counter()

    @settings(max_examples=OPERATIONS, deadline=None, derandomize=True, database=None)
    @given(trial=trials(role_executor))
    def run(trial: Trial) -> None:
        case = trial.case
        for scenario in trial.scenarios:
            bodies = role_executor.runner.run(both_bodies(role_executor, case, scenario))
            if bodies is None:
                seen["rejected"] += 1
                return
            compiled, reference = bodies
            assert compiled == reference, (case.operation.document(), scenario)
            count_features(reference, seen)

    run()
    assert role_executor.executor.shapes.fallbacks == 0
    assert seen["executed"] >= OPERATIONS * SCENARIOS * 8 // 10, dict(seen)
    if OPERATIONS < 1000:  # hypothesis draws small operations first
        return
    for feature in EXERCISED[role_executor.role]:
        assert seen[feature] > 0, f"no {role_executor.role} case had {feature}: {dict(seen)}"
