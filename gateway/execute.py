"""Run one GraphQL request: parse, validate, plan, fetch, audit, respond.

graphql-core executes the operation over values prepared in advance, so
it only walks dicts: aliases, fragments, ``__typename``, null propagation
and error paths behave exactly as the GraphQL specification defines, while
no field resolver does I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from graphql import (
    DocumentNode,
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLResolveInfo,
    OperationDefinitionNode,
    execute_sync,
    parse,
    validate,
)
from graphql.execution.values import VariableValues, get_variable_values

from gateway.audit_events import AuditRecorder
from gateway.build import Builder, client_error, decode_cursor, forbidden
from gateway.catalog import Catalog
from gateway.errors import AuditError
from gateway.fetch import Fetcher, FetchStats, Node
from gateway.graphql_schema import MAX_PAGE_SIZE, GatewaySchema
from gateway.plan import FieldPick, Plan, Planner
from gateway.policy import PolicyEngine
from gateway.principal import Principal
from gateway.sources import FetchRequest, Source

log = logging.getLogger("gateway.execute")


@dataclass(frozen=True)
class GraphQLRequest:
    """The three members of a GraphQL-over-HTTP request body."""

    query: str
    variables: dict[str, Any] | None = None
    operation_name: str | None = None


@dataclass(frozen=True)
class GraphQLResponse:
    """HTTP status and JSON body of a response."""

    status: int
    body: dict[str, Any]


class RequestError(Exception):
    """The request cannot run at all; answered with HTTP 400."""

    def __init__(self, errors: list[GraphQLError]) -> None:
        super().__init__(errors[0].message if errors else "invalid request")
        self.errors = errors


@dataclass(frozen=True)
class _Prepared:
    document: DocumentNode
    operation: OperationDefinitionNode
    fragments: dict[str, FragmentDefinitionNode]
    variables: VariableValues


class Executor:
    """Runs GraphQL requests for one schema, policy and set of sources."""

    def __init__(self, catalog: Catalog, schema: GatewaySchema, policy: PolicyEngine,
                 sources: Mapping[str, Source], recorder: AuditRecorder) -> None:
        self._catalog = catalog
        self._schema = schema
        self._policy = policy
        self._planner = Planner(catalog, schema.graphql_schema)
        self._fetcher = Fetcher(sources)
        self._recorder = recorder
        self._parse = lru_cache(maxsize=512)(self._parse_and_validate)

    async def run(self, request: GraphQLRequest, principal: Principal,
                  request_id: str) -> GraphQLResponse:
        try:
            prepared = self._prepare(request)
        except RequestError as exc:
            return GraphQLResponse(400, {"errors": [e.formatted for e in exc.errors]})

        view = self._policy.view(principal.roles, principal.purpose)
        plan = self._planner.plan(prepared.operation, prepared.fragments, prepared.variables,
                                  view)
        stats = FetchStats()
        nodes = await self._fetch_roots(plan, stats)

        builder = Builder()
        root = self._build_root(plan, nodes, builder)
        if self._recorder.must_record(plan):
            try:
                await self._recorder.record(
                    principal=principal, request_id=request_id, query=request.query,
                    operation_name=_operation_name(prepared.operation), plan=plan,
                    facts=builder.facts, stats=stats, policy_version=view.version)
            except AuditError:
                if not self._recorder.fail_open:
                    root = self._build_root(plan, nodes, Builder(withhold_personal=True))
                else:
                    log.warning("request %s served without its audit record (fail-open)",
                                request_id)

        result = execute_sync(
            self._schema.graphql_schema, prepared.document, root_value=root,
            variable_values=request.variables, operation_name=request.operation_name,
            field_resolver=_by_response_key,
        )
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [error.formatted for error in result.errors]
        return GraphQLResponse(200, body)

    def _prepare(self, request: GraphQLRequest) -> _Prepared:
        document = self._parse(request.query)
        operation = _select_operation(document, request.operation_name)
        fragments = {d.name.value: d for d in document.definitions
                     if isinstance(d, FragmentDefinitionNode)}
        coerced = get_variable_values(self._schema.graphql_schema,
                                      operation.variable_definitions or (),
                                      request.variables or {}, hide_suggestions=True)
        if isinstance(coerced, list):
            raise RequestError([_bad_request(e.message) for e in coerced])
        return _Prepared(document, operation, fragments, coerced)

    def _parse_and_validate(self, query: str) -> DocumentNode:
        try:
            document = parse(query)
        except GraphQLError as exc:
            raise RequestError([_bad_request(exc.message, exc)]) from exc
        errors = validate(self._schema.graphql_schema, document, hide_suggestions=True)
        if errors:
            raise RequestError([_bad_request(e.message, e) for e in errors])
        return document

    async def _fetch_roots(self, plan: Plan, stats: FetchStats) -> dict[str, Node | Any]:
        jobs: dict[str, Any] = {}
        prepared: dict[str, Any] = {}
        for pick in plan.roots:
            outcome = self._root_request(pick, plan)
            if isinstance(outcome, FetchRequest):
                page_size = outcome.limit - 1 if pick.decl.connection and outcome.limit else None
                jobs[pick.response_key] = self._fetcher.fetch_root(pick, outcome, stats,
                                                                   page_size)
            else:
                prepared[pick.response_key] = outcome
        results = await asyncio.gather(*jobs.values())
        prepared.update(zip(jobs, results, strict=True))
        return prepared

    def _root_request(self, pick: FieldPick, plan: Plan) -> FetchRequest | GraphQLError:
        decl = pick.decl
        if not pick.decision.allowed or pick.child is None:
            return forbidden(decl)
        type_decl = pick.child.type_decl
        if decl.lookup:
            identifier = str(pick.arguments[decl.lookup])
            return FetchRequest(entity=type_decl.entity,
                                attributes=pick.child.primary_attributes(type_decl.key),
                                match=type_decl.key, keys=(identifier,), where=type_decl.where)
        return self._connection_request(pick, plan)

    def _connection_request(self, pick: FieldPick, plan: Plan) -> FetchRequest | GraphQLError:
        assert pick.child is not None
        type_decl = pick.child.type_decl
        first = pick.arguments.get("first")
        if not isinstance(first, int) or not 1 <= first <= MAX_PAGE_SIZE:
            return client_error(f"first must be between 1 and {MAX_PAGE_SIZE}; got {first!r}.",
                                "BAD_REQUEST")
        after = None
        cursor = pick.arguments.get("after")
        if cursor is not None:
            key = decode_cursor(str(cursor))
            if key is None:
                return client_error("after is not a cursor returned by this gateway; pass the "
                                    "endCursor of the previous page.", "BAD_REQUEST")
            after = (type_decl.key, key)
        search = None
        text = pick.arguments.get("search")
        if text is not None and pick.decl.search:
            search_decl = type_decl.fields[pick.decl.search]
            if not plan.judge(search_decl).allowed:
                return client_error(f"search needs read access to {search_decl.qualified_name}.",
                                    "FORBIDDEN")
            search = (str(search_decl.attribute), str(text))
        return FetchRequest(entity=type_decl.entity,
                            attributes=pick.child.primary_attributes(None),
                            where=type_decl.where, order=type_decl.key, limit=first + 1,
                            after=after, search=search)

    def _build_root(self, plan: Plan, nodes: Mapping[str, Any], builder: Builder
                    ) -> dict[str, Any]:
        root: dict[str, Any] = {}
        for pick in plan.roots:
            outcome = nodes[pick.response_key]
            if not isinstance(outcome, Node):
                root[pick.response_key] = outcome
            elif pick.decl.connection:
                root[pick.response_key] = builder.connection(pick, outcome)
            else:
                root[pick.response_key] = builder.lookup(pick, outcome)
        return root


def _by_response_key(source: Any, info: GraphQLResolveInfo[Any], **_: Any) -> Any:
    return source.get(info.path.key) if isinstance(source, dict) else None


def _bad_request(message: str, error: GraphQLError | None = None) -> GraphQLError:
    return GraphQLError(message, nodes=error.nodes if error else None,
                        source=error.source if error else None,
                        positions=error.positions if error else None,
                        extensions={"code": "BAD_REQUEST"})


def _select_operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name is None:
        if len(operations) != 1:
            raise RequestError([_bad_request(
                "The document has several operations; name one with operationName.")])
        return operations[0]
    for operation in operations:
        if operation.name is not None and operation.name.value == name:
            return operation
    raise RequestError([_bad_request(f"No operation named {name!r} in the document.")])


def _operation_name(operation: OperationDefinitionNode) -> str | None:
    return operation.name.value if operation.name else None

