"""Exact responses of the compiled executor in the cases that are easy to get wrong.

Each test executes a hand-built value tree, as ``gateway.build`` makes
them, with the compiled executor, checks the exact body, and checks that
graphql-core gives the same bytes.
"""

from __future__ import annotations

import datetime
import decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import start_harness
from graphql import GraphQLError, GraphQLResolveInfo, execute_sync, parse, validate

from gateway.catalog import load_catalog
from gateway.compiled import EXECUTORS, ShapeCache, Unsupported, compile_operation, execute_shape
from gateway.demo.data import DemoData
from gateway.graphql_schema import build_schema

SCHEMA = build_schema(load_catalog()).graphql_schema
ID = "0015g0SqFEhlPh3A0E"


def forbidden(name: str) -> GraphQLError:
    return GraphQLError(f"Not authorised to read {name}.", extensions={"code": "FORBIDDEN"})


def by_response_key(source: Any, info: GraphQLResolveInfo[Any], **_: Any) -> Any:
    return source.get(info.path.key) if isinstance(source, dict) else None


def run(query: str, root: dict[str, Any], variables: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    """Return the compiled executor's body after checking graphql-core's is the same."""
    document = parse(query)
    assert validate(SCHEMA, document) == []
    result = execute_shape(compile_operation(SCHEMA, document, None, variables), root)
    compiled: dict[str, Any] = {"data": result.data}
    if result.errors:
        compiled["errors"] = [error.formatted for error in result.errors]
    reference = execute_sync(SCHEMA, document, root_value=root, variable_values=variables,
                             field_resolver=by_response_key)
    expected: dict[str, Any] = {"data": reference.data}
    if reference.errors:
        expected["errors"] = [error.formatted for error in reference.errors]
    assert orjson.dumps(compiled) == orjson.dumps(expected)
    return compiled


def test_null_item_nulls_whole_list() -> None:
    body = run('{ customer(id: "1") { name contacts { id } } }', {"customer": {
        "name": "Rossi SPA", "contacts": [{"id": "c1"}, {"id": None}, {"id": "c3"}]}})

    assert body["data"] == {"customer": {"name": "Rossi SPA", "contacts": None}}
    assert body["errors"] == [{
        "message": "Cannot return null for non-nullable field Contact.id.",
        "locations": [{"line": 1, "column": 39}],
        "path": ["customer", "contacts", 1, "id"],
    }]


def test_null_id_nulls_nullable_parent() -> None:
    body = run('{ customers(first: 2) { edges { cursor node { id name } } } }',
               {"customers": {"edges": [{"cursor": "a", "node": {"id": ID, "name": "A"}},
                                        {"cursor": "b", "node": {"id": None, "name": "B"}}]}})

    # node and edges are non-null, so the null climbs to the nullable root field.
    assert body["data"] == {"customers": None}
    assert [error["path"] for error in body["errors"]] == [
        ["customers", "edges", 1, "node", "id"]]


def test_errors_in_execution_order() -> None:
    root = {"customer": {"pec": forbidden("Customer.pec"), "iban": forbidden("Customer.iban"),
                         "contacts": [{"email": forbidden("Contact.email"), "id": None}]}}

    body = run('{ customer(id: "1") { iban contacts { email id } pec } }', root)

    assert body["data"] == {"customer": {"iban": None, "contacts": None, "pec": None}}
    assert [(error["path"], error["message"]) for error in body["errors"]] == [
        (["customer", "iban"], "Not authorised to read Customer.iban."),
        (["customer", "contacts", 0, "email"], "Not authorised to read Contact.email."),
        (["customer", "contacts", 0, "id"],
         "Cannot return null for non-nullable field Contact.id."),
        (["customer", "pec"], "Not authorised to read Customer.pec."),
    ]
    assert body["errors"][0]["extensions"] == {"code": "FORBIDDEN"}


def test_aliases_of_one_field_with_different_arguments() -> None:
    root = {"customer": {"recent": [{"number": "S2"}],
                         "all": [{"number": "S2"}, {"number": "S1"}]}}

    body = run('{ customer(id: "1") { recent: orders(first: 1) { number } '
               'all: orders { number } } }', root)

    assert list(body["data"]["customer"]) == ["recent", "all"]
    assert body["data"]["customer"]["all"] == [{"number": "S2"}, {"number": "S1"}]


def test_skip_on_fragment_spread() -> None:
    query = ('query Q($hide: Boolean!) { customer(id: "1") { ...Names @skip(if: $hide) id } }'
             ' fragment Names on Customer { name city }')
    root = {"customer": {"name": "Rossi SPA", "city": "Milano", "id": ID}}

    visible = run(query, root, {"hide": False})
    hidden = run(query, root, {"hide": True})

    assert list(visible["data"]["customer"]) == ["name", "city", "id"]
    assert hidden["data"] == {"customer": {"id": ID}}


def test_cache_keeps_shape_per_condition_values() -> None:
    cache = ShapeCache(SCHEMA)
    document = parse('query Q($hide: Boolean!) { customer(id: "1") { name @skip(if: $hide) } }')

    visible = cache.shape(document, None, {"hide": False}, {"hide": False})
    hidden = cache.shape(document, None, {"hide": True}, {"hide": True})

    assert visible is not None and hidden is not None
    assert cache.shape(document, None, {"hide": False}, {"hide": False}) is visible
    assert [field.key for field in visible.fields[0].fields] == ["name"]
    assert hidden.fields[0].fields == []


def test_typename_and_merged_fields() -> None:
    body = run('{ __typename customer(id: "1") { t: __typename name ... on Customer { name '
               'k: __typename } } }', {"customer": {"name": "Rossi SPA"}})

    assert body["data"] == {"__typename": "Query",
                            "customer": {"t": "Customer", "name": "Rossi SPA", "k": "Customer"}}


def test_leaf_values_are_coerced() -> None:
    root = {"customer": {"creditLimit": decimal.Decimal("25000.00"), "name": 12,
                         "orders": [{"orderDate": datetime.datetime(2025, 6, 10, 9, 24, 56,
                                                                    tzinfo=datetime.UTC),
                                     "number": {"not": "text"}}]}}

    body = run('{ customer(id: "1") { creditLimit name orders { orderDate number } } }', root)

    assert body["data"]["customer"]["creditLimit"] == "25000.00"
    assert body["data"]["customer"]["name"] == "12"
    assert body["data"]["customer"]["orders"] == [
        {"orderDate": "2025-06-10T09:24:56+00:00", "number": None}]
    assert body["errors"][0]["path"] == ["customer", "orders", 0, "number"]


def test_introspection_is_not_compiled() -> None:
    document = parse('{ __type(name: "Customer") { name } }')

    with pytest.raises(Unsupported, match=r"Query.__type has its own resolver"):
        compile_operation(SCHEMA, document, None, None)


async def test_setting_selects_executor(demo_data: DemoData, tmp_path: Path) -> None:
    query = ("query($hide: Boolean!) { customers(first: 3) { edges { node { id name iban "
             "contacts @skip(if: $hide) { firstName email } orders(first: 2) { number "
             "amountTotal orderDate } } } pageInfo { hasNextPage } } }")
    bodies = {}
    for executor in EXECUTORS:
        async with start_harness(demo_data, tmp_path / executor,
                                 overrides={"executor": executor}) as harness:
            response = await harness.query(query, variables={"hide": False})
            bodies[executor] = response.content
            shapes = harness.gateway_app.state.gateway.executor.shapes

            assert response.status_code == 200
            assert shapes.fallbacks == 0
            assert len(shapes) == (1 if executor == "compiled" else 0)

    assert bodies["compiled"] == bodies["graphql-core"]
    assert b'"iban":"IT' not in bodies["compiled"]
