"""Run one GraphQL request: parse, validate, plan, fetch, audit, respond.

The operation is executed over values prepared in advance, so execution
only walks dicts and no field resolver does I/O. By default the compiled
executor of ``gateway.compiled`` walks them. graphql-core does so for
introspection, for what the compiler does not support, and for every
operation under ``[gateway] executor = "graphql-core"``. Both give the
same aliases, fragments, ``__typename``, null propagation and error paths,
as the GraphQL specification defines them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLResolveInfo,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    execute_sync,
    parse,
    validate,
)
from graphql.execution.values import VariableValues, get_variable_values

from gateway.audit.store import ExpectedAppend
from gateway.audit_events import AuditRecorder
from gateway.build import CURSOR_DOMAIN, Builder, client_error, decode_cursor, forbidden
from gateway.catalog import Catalog
from gateway.compiled import CompiledResult, ShapeCache, execute_shape
from gateway.errors import AuditError, quoted
from gateway.fetch import Budget, Fetcher, FetchStats, Node
from gateway.graphql_schema import MAX_PAGE_SIZE, GatewaySchema
from gateway.limits import OperationLimits, check_limits, estimate_cost
from gateway.masks import PseudonymKeys
from gateway.plan import FieldPick, Plan, Planner
from gateway.policy_reload import PolicyHolder
from gateway.principal import Principal
from gateway.sources import FetchRequest, Source
from gateway.visible_schema import visible_schema

log = logging.getLogger("gateway.execute")

MAX_SEARCH_LENGTH = 100
# Response header with the operation's estimated cost, so clients can tune
# their operations before they reach ``[limits] max_cost``.
COST_HEADER = "Fonte-Cost"


@dataclass(frozen=True)
class GraphQLRequest:
    """The three members of a GraphQL-over-HTTP request body."""

    query: str
    variables: dict[str, Any] | None = None
    operation_name: str | None = None


@dataclass(frozen=True)
class GraphQLResponse:
    """HTTP status, JSON body and extra headers of a response."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class RequestError(Exception):
    """The request cannot run at all, so the response is HTTP 400."""

    def __init__(self, errors: list[GraphQLError]) -> None:
        super().__init__(errors[0].message if errors else "invalid request")
        self.errors = errors


@dataclass(frozen=True)
class _Prepared:
    document: DocumentNode
    operation: OperationDefinitionNode
    fragments: dict[str, FragmentDefinitionNode]
    variables: VariableValues


@dataclass(frozen=True)
class Fetched:
    """A planned request and the records read for it, before values are built."""

    prepared: _Prepared
    plan: Plan
    nodes: dict[str, Node | Any]
    stats: FetchStats
    headers: dict[str, str]
    # The request's announced audit record, or None if it has none.
    expected: ExpectedAppend | None = None


class Executor:
    """Runs GraphQL requests for one schema, policy and set of sources."""

    def __init__(self, catalog: Catalog, schema: GatewaySchema, policy: PolicyHolder,
                 sources: Mapping[str, Source], recorder: AuditRecorder,
                 keys: PseudonymKeys, limits: OperationLimits | None = None,
                 max_search_length: int = MAX_SEARCH_LENGTH, executor: str = "compiled"
                 ) -> None:
        self._catalog = catalog
        self._schema = schema
        self._policy = policy
        self._planner = Planner(catalog, schema.graphql_schema)
        self._fetcher = Fetcher(sources)
        self._recorder = recorder
        self._keys = keys
        self._limits = limits or OperationLimits()
        self._max_search = max_search_length
        self._parse = lru_cache(maxsize=512)(self._parse_and_validate)
        self._visible: dict[tuple[frozenset[str], str | None, str], GraphQLSchema] = {}
        self.configured_executor = executor
        self.shapes = ShapeCache(schema.graphql_schema)

    async def run(self, request: GraphQLRequest, principal: Principal,
                  request_id: str) -> GraphQLResponse:
        fetched = await self.fetch(request, principal, announce=True)
        if isinstance(fetched, GraphQLResponse):
            return fetched
        prepared, plan, nodes = fetched.prepared, fetched.plan, fetched.nodes

        try:
            builder = Builder(self._keys)
            root = self.build_root(plan, nodes, builder)
            if self._recorder.must_record(plan):
                try:
                    await self._recorder.record(
                        principal=principal, request_id=request_id, query=request.query,
                        operation_name=_operation_name(prepared.operation), plan=plan,
                        facts=builder.facts, stats=fetched.stats,
                        policy_version=plan.view.version, expected=fetched.expected)
                except AuditError:
                    if not self._recorder.fail_open:
                        root = self.build_root(plan, nodes,
                                               Builder(self._keys, withhold_personal=True))
                    else:
                        log.warning("request %s served without its audit record (fail-open)",
                                    request_id)
        finally:
            if fetched.expected is not None:
                fetched.expected.withdraw()

        body = self.respond(request, fetched, root, self.configured_executor)
        return GraphQLResponse(200, body, fetched.headers)

    async def fetch(self, request: GraphQLRequest, principal: Principal, *,
                    announce: bool = False) -> Fetched | GraphQLResponse:
        """Plan the request and read its records, or return the response that rejects it.

        With ``announce``, a request that will write an audit record announces it to the
        store's commit delay before its upstream calls, in ``Fetched.expected``. The
        caller must then pass it to `AuditRecorder.record` or withdraw it, as `run` does.
        """
        try:
            prepared = self._prepare(request)
        except RequestError as exc:
            return GraphQLResponse(400, {"errors": [e.formatted for e in exc.errors]})

        engine = self._policy.current
        view = engine.cached_view(principal.roles, principal.purpose)
        if view is None:
            # The first request of a (roles, purpose) pair compiles its view;
            # a thread keeps the event loop serving other requests meanwhile.
            view = await asyncio.to_thread(engine.view, principal.roles, principal.purpose)
        try:
            plan = self._planner.plan(prepared.operation, prepared.fragments,
                                      prepared.variables, view, principal.claims())
        except GraphQLError as exc:  # an argument or directive value invalid after defaults
            return GraphQLResponse(400, {"errors": [_bad_request(exc.message, exc).formatted]})
        cost = estimate_cost(plan)
        headers = {COST_HEADER: str(cost)}
        if cost > self._limits.max_cost:
            return GraphQLResponse(400, {"errors": [self._too_costly(cost).formatted]}, headers)
        stats = FetchStats()
        seconds = self._limits.request_timeout
        budget = Budget(asyncio.get_running_loop().time() + seconds, seconds)
        expected = self._recorder.expect(plan) if announce else None
        try:
            nodes = await self._fetch_roots(plan, stats, budget)
        except BaseException:
            if expected is not None:
                expected.withdraw()
            raise
        return Fetched(prepared, plan, nodes, stats, headers, expected)

    def respond(self, request: GraphQLRequest, fetched: Fetched, root: dict[str, Any],
                executor: str) -> dict[str, Any]:
        """Execute the operation over the built values with ``executor``; return the body.

        ``executor`` is one of ``gateway.compiled.EXECUTORS``.
        """
        prepared = fetched.prepared
        shape = None
        if executor == "compiled":  # introspection is not compiled, so it gets None here
            shape = self.shapes.shape(prepared.document, request.operation_name,
                                      request.variables, prepared.variables.coerced)
        if shape is not None:
            result: ExecutionResult | CompiledResult = execute_shape(shape, root)
        else:
            result = execute_sync(
                self._executable_schema(fetched.plan, prepared), prepared.document,
                root_value=root, variable_values=request.variables,
                operation_name=request.operation_name, field_resolver=_by_response_key,
            )
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [error.formatted for error in result.errors]
            _drop_tracebacks(result.errors)
        return body

    def _too_costly(self, cost: int) -> GraphQLError:
        limit = self._limits.max_cost
        return GraphQLError(
            f"The operation's estimated cost is {cost}; the limit is {limit}. Pass a smaller "
            "first to its lists, select fewer relations, or split it into several requests.",
            extensions={"code": "COST_LIMIT_EXCEEDED", "cost": cost, "maxCost": limit})

    def _executable_schema(self, plan: Plan, prepared: _Prepared) -> GraphQLSchema:
        """Return the schema to execute with: the caller's own view for introspection."""
        if not _introspects(prepared.operation, prepared.fragments):
            return self._schema.graphql_schema
        key = (plan.view.roles, plan.view.purpose, plan.view.version)
        schema = self._visible.get(key)
        if schema is None:
            schema = visible_schema(self._schema.graphql_schema, self._catalog, plan.view)
            self._visible[key] = schema
        return schema

    def _prepare(self, request: GraphQLRequest) -> _Prepared:
        document = self._parse(request.query)
        operation = _select_operation(document, request.operation_name)
        fragments = {d.name.value: d for d in document.definitions
                     if isinstance(d, FragmentDefinitionNode)}
        if _introspects(operation, fragments) and not _only_introspection(operation, fragments):
            raise RequestError([_bad_request(
                "Introspection (__schema, __type) cannot be mixed with data fields in one "
                "operation; send it as its own request.")])
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
        too_large = check_limits(document, self._limits)
        if too_large is not None:
            raise RequestError([_bad_request(f"The document is too large: {too_large}.")])
        return document

    async def _fetch_roots(self, plan: Plan, stats: FetchStats,
                           budget: Budget) -> dict[str, Node | Any]:
        jobs: dict[str, Any] = {}
        prepared: dict[str, Any] = {}
        for pick in plan.roots:
            outcome = self._root_request(pick, plan)
            if isinstance(outcome, FetchRequest):
                page_size = outcome.limit - 1 if pick.decl.connection and outcome.limit else None
                jobs[pick.response_key] = self._fetcher.fetch_root(pick, outcome, stats,
                                                                   page_size, budget)
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
                                match=type_decl.key, keys=(identifier,), where=type_decl.where,
                                any_of=pick.child.row_filter or (),
                                visible=pick.child.row_filter != ())
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
            key = decode_cursor(str(cursor), self._keys.key(CURSOR_DOMAIN))
            if key is None:
                return client_error("after is not a cursor returned by this gateway; pass the "
                                    "endCursor of the previous page.", "BAD_REQUEST")
            after = (type_decl.key, key)
        search = None
        text = pick.arguments.get("search")
        if text is not None and len(str(text)) > self._max_search:
            return client_error(f"search is {len(str(text))} characters long; the limit is "
                                f"{self._max_search}.", "BAD_REQUEST")
        if text is not None and pick.decl.search:
            search_decl = type_decl.fields[pick.decl.search]
            # Searching a masked field would still confirm or deny a guessed name.
            if plan.judge(search_decl).effect != "allow":
                return client_error(f"search needs read access to {search_decl.qualified_name}.",
                                    "FORBIDDEN")
            search = (str(search_decl.attribute), str(text))
            # The rows a search returns disclose that their name matched.
            pick.child.searched = True
        return FetchRequest(entity=type_decl.entity,
                            attributes=pick.child.primary_attributes(None),
                            where=type_decl.where, order=type_decl.key, limit=first + 1,
                            after=after, search=search, any_of=pick.child.row_filter or (),
                            visible=pick.child.row_filter != ())

    def build_root(self, plan: Plan, nodes: Mapping[str, Any], builder: Builder
                    ) -> dict[str, Any]:
        """Return the values of the root fields, built from the fetched records."""
        root: dict[str, Any] = {}
        try:
            for pick in plan.roots:
                outcome = nodes[pick.response_key]
                if not isinstance(outcome, Node):
                    root[pick.response_key] = outcome
                elif pick.decl.connection:
                    root[pick.response_key] = builder.connection(pick, outcome)
                else:
                    root[pick.response_key] = builder.lookup(pick, outcome)
        finally:
            builder.release()
        return root


def _drop_tracebacks(errors: Iterable[GraphQLError]) -> None:
    """Drop the tracebacks that raising left on the field errors of a response.

    Both executors raise the error that the builder put in the value tree, and
    graphql-core copies the traceback onto the located error. The traceback's frames
    hold the request's values, which hold the error, so the request would stay in a
    reference cycle until the garbage collector's next full collection.
    """
    for error in errors:
        error.__traceback__ = None
        if error.original_error is not None:
            error.original_error.__traceback__ = None


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
    raise RequestError([_bad_request(f"No operation named {quoted(name)} in the document.")])


_INTROSPECTION_ROOTS = frozenset({"__schema", "__type"})


def _root_names(operation: OperationDefinitionNode,
                fragments: Mapping[str, FragmentDefinitionNode]) -> set[str]:
    """Return the names of the root fields, also those inside fragments at the root.

    Directives are ignored, so a field that ``@skip`` would drop still
    counts: introspection hidden in a fragment gets the caller's view too.
    """
    names: set[str] = set()
    pending = [operation.selection_set]
    spread: set[str] = set()
    while pending:
        for selection in pending.pop().selections:
            if isinstance(selection, FieldNode):
                names.add(selection.name.value)
            elif isinstance(selection, InlineFragmentNode):
                pending.append(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name not in spread and name in fragments:
                    spread.add(name)
                    pending.append(fragments[name].selection_set)
    return names


def _introspects(operation: OperationDefinitionNode,
                 fragments: Mapping[str, FragmentDefinitionNode]) -> bool:
    return bool(_root_names(operation, fragments) & _INTROSPECTION_ROOTS)


def _only_introspection(operation: OperationDefinitionNode,
                        fragments: Mapping[str, FragmentDefinitionNode]) -> bool:
    return _root_names(operation, fragments) <= _INTROSPECTION_ROOTS | {"__typename"}


def _operation_name(operation: OperationDefinitionNode) -> str | None:
    return operation.name.value if operation.name else None

