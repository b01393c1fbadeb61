"""Build the public GraphQL schema from the catalog with strawberry.

strawberry owns the schema: types, descriptions, scalars, introspection and
GraphiQL. Execution does not go through strawberry's resolvers: the planner
fetches every record a request needs before execution starts, and the
executor reads each value from the prepared result by response key (see
``gateway.execute``). ``build_schema`` therefore removes the per-field
resolvers strawberry attaches, which would otherwise cost a Python call
chain per value.
"""

from __future__ import annotations

import datetime
import decimal
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any

import strawberry
from graphql import GraphQLObjectType, GraphQLSchema

from gateway.catalog import Catalog, FieldDecl

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50

_SCALAR_ANNOTATIONS: dict[str, str] = {
    "ID": "strawberry.ID",
    "String": "str",
    "Int": "int",
    "Boolean": "bool",
    "Decimal": "decimal.Decimal",
    "Date": "datetime.date",
    "DateTime": "datetime.datetime",
}


@dataclass(frozen=True)
class GatewaySchema:
    """The strawberry schema and the graphql-core schema the executor runs."""

    strawberry_schema: strawberry.Schema
    graphql_schema: GraphQLSchema

    def sdl(self) -> str:
        return self.strawberry_schema.as_str()


# Resolver signatures only declare arguments; they are never called.
def _lookup_arguments(id: strawberry.ID) -> None:
    return None


def _list_arguments(first: int | None = None) -> None:
    return None


def _connection_arguments(
    first: int = DEFAULT_PAGE_SIZE, after: str | None = None, search: str | None = None
) -> None:
    return None


def build_schema(catalog: Catalog) -> GatewaySchema:
    """Return the GraphQL schema of the declared types and root fields."""
    module = types.ModuleType("gateway._declared_types")
    module.__dict__.update({
        "typing": typing, "strawberry": strawberry, "decimal": decimal, "datetime": datetime,
    })
    sys.modules[module.__name__] = module

    for decl in catalog.types.values():
        fields = {name: _field(module, f) for name, f in decl.fields.items()}
        module.__dict__[decl.name] = _make_type(module, decl.name, decl.description, fields)
    for target in sorted({str(f.target) for f in catalog.query.values() if f.connection}):
        _add_connection_types(module, target)

    query_fields = {name: _root_field(module, f) for name, f in catalog.query.items()}
    query = _make_type(module, "Query", "Read-only entry points.", query_fields)
    schema = strawberry.Schema(query=query)
    graphql_schema = schema._schema
    _drop_resolvers(graphql_schema)
    return GatewaySchema(strawberry_schema=schema, graphql_schema=graphql_schema)


def _annotation(graphql_type: str) -> str:
    is_list = graphql_type.startswith("[")
    outer_required = graphql_type.endswith("!") and (not is_list or graphql_type.endswith("]!"))
    base = graphql_type.strip("[]!")
    inner = _SCALAR_ANNOTATIONS.get(base, base)
    if is_list:
        item_required = "!]" in graphql_type
        inner = f"typing.List[{inner if item_required else f'typing.Optional[{inner}]'}]"
    return inner if outer_required else f"typing.Optional[{inner}]"


def _field(module: types.ModuleType, decl: FieldDecl) -> tuple[str, Any]:
    annotation = _annotation(decl.graphql_type)
    if not (decl.is_relation and decl.is_list):
        return annotation, strawberry.field(description=decl.description)

    # The target type may not exist yet (relations are cyclic), so the type
    # stays a string that strawberry resolves, once every type is defined, in
    # the namespace of the resolver's module: the generated one.
    return annotation, strawberry.field(
        description=decl.description, resolver=_bind(_list_arguments, module),
        graphql_type=annotation,
    )


def _root_field(module: types.ModuleType, decl: FieldDecl) -> tuple[str, Any]:
    if decl.connection:
        annotation = f"typing.Optional[{decl.target}Connection]"
        resolver: Any = _connection_arguments
    else:
        annotation = _annotation(decl.graphql_type)
        resolver = _lookup_arguments
    return annotation, strawberry.field(
        description=decl.description, resolver=_bind(resolver, module), graphql_type=annotation,
    )


def _bind(function: Any, module: types.ModuleType) -> Any:
    """Return a copy of ``function`` that lives in the generated module."""
    copy = types.FunctionType(function.__code__, module.__dict__, function.__name__,
                              function.__defaults__)
    copy.__annotations__ = dict(function.__annotations__)
    copy.__module__ = module.__name__
    return copy


def _make_type(module: types.ModuleType, name: str, description: str,
               fields: dict[str, tuple[str, Any]]) -> Any:
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__module__": module.__name__, "__annotations__": annotations}
    for field_name, (annotation, field) in fields.items():
        if field.base_resolver is None:
            annotations[field_name] = annotation
        namespace[field_name] = field
    cls = type(name, (), namespace)
    return strawberry.type(cls, description=description or None)


def _add_connection_types(module: types.ModuleType, target: str) -> None:
    if "PageInfo" not in module.__dict__:
        module.__dict__["PageInfo"] = _make_type(module, "PageInfo", "Where a page ends.", {
            "hasNextPage": ("bool", strawberry.field(description="True when more items follow.")),
            "endCursor": ("typing.Optional[str]", strawberry.field(
                description="Cursor of the last item; pass it as `after` for the next page.")),
        })
    edge = f"{target}Edge"
    module.__dict__[edge] = _make_type(module, edge, f"One {target} and its cursor.", {
        "cursor": ("str", strawberry.field(description="Opaque position of this item.")),
        "node": (target, strawberry.field(description=f"The {target}.")),
    })
    connection = f"{target}Connection"
    module.__dict__[connection] = _make_type(module, connection, f"A page of {target} items.", {
        "edges": (f"typing.List[{edge}]", strawberry.field(description="Items of this page.")),
        "pageInfo": ("PageInfo", strawberry.field(description="Paging state.")),
    })


def _drop_resolvers(schema: GraphQLSchema) -> None:
    for name, graphql_type in schema.type_map.items():
        if name.startswith("__") or not isinstance(graphql_type, GraphQLObjectType):
            continue
        for field in graphql_type.fields.values():
            field.resolve = None
