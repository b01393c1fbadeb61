"""The HTTP surface: ``POST /graphql``, GraphiQL, and health.

Requests follow the GraphQL-over-HTTP conventions: a JSON body with
``query``, ``variables`` and ``operationName``; HTTP 200 when the operation
ran, with field errors in ``errors``; 400 when the document or the body is
invalid; 401 without a valid bearer token; 503 when the token keys cannot
be fetched.

Only ``POST`` with ``Content-Type: application/json`` runs an operation.
A form post or a ``text/plain`` body, which a page on another site can send
without a CORS preflight, gets 415. ``GET /graphql`` serves GraphiQL when it
is enabled and never runs a query, and a token in the URL
(``?access_token=``) is rejected, because URLs end up in proxy logs and
browser history.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from strawberry.http.ides import get_graphql_ide_html

from gateway.audit.anchor import CheckpointAnchor, anchor_from_setting
from gateway.audit.keys import CheckpointKey, publish_public_key
from gateway.audit.keys import load_or_create_signing_key as load_or_create_checkpoint_key
from gateway.audit.maintenance import RetentionSchedule
from gateway.audit.operations import newest_checkpoint_key_name
from gateway.audit.postgres import PostgresAuditStore
from gateway.audit.pseudonym import Pseudonymizer, load_or_create_key
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.store import GroupCommitStore
from gateway.audit_events import AuditRecorder
from gateway.catalog import Catalog, load_catalog
from gateway.config import Settings
from gateway.datadir import claim_data_dir
from gateway.errors import (
    AuthenticationError,
    ConfigError,
    IdentityUnavailable,
    NoRoleError,
    PurposeError,
    quoted,
)
from gateway.execute import Executor, GraphQLRequest, GraphQLResponse
from gateway.graphql_schema import build_schema
from gateway.identity import TokenSettings, TokenVerifier, load_or_create_signing_key
from gateway.masks import PseudonymKeys
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import GatewayMetrics
from gateway.persisted import PersistedQueries, PersistedQueryError
from gateway.policy_reload import PolicyHolder, PolicySettings
from gateway.policy_watch import PolicyWatchers, open_policy
from gateway.principal import Principal
from gateway.ratelimit import RateLimiter, retry_after_header
from gateway.serving import tune_garbage_collector
from gateway.sources import Source
from gateway.sources.client import DEFAULT_HTTP_CLIENT, HttpClient, UpstreamClient, new_client
from gateway.sources.dataverse import DataverseSettings, DataverseSource
from gateway.sources.mapping import MappedSource
from gateway.sources.odoo import (
    OdooJson2Settings,
    OdooJson2Source,
    OdooJsonRpcSource,
    OdooSettings,
)
from gateway.sources.resilience import ResiliencePolicy, ResilientSource
from gateway.sources.rest import RestSettings, RestSource
from gateway.sources.salesforce import SalesforceSource
from gateway.sources.sap import SapSettings, SapSource
from gateway.sources.sql import SqlSettings, SqlSource
from gateway.token_keys import JwksKeys, KeyResolver, StaticKey, load_public_key
from gateway.transport import (
    GRAPHQL_RESPONSE_TYPE,
    TOKEN_IN_URL_MESSAGE,
    acceptable,
    client_address,
    content_charset,
    cors_middleware,
    response_media_type,
    token_in_url,
)

PURPOSE_HEADER = "fonte-purpose"
access_log = logging.getLogger("gateway.access")
log = logging.getLogger("gateway.app")


@dataclass
class Gateway:
    """The running parts of one gateway process."""

    settings: Settings
    executor: Executor
    verifier: TokenVerifier
    recorder: AuditRecorder
    sources: dict[str, Source]
    policy: PolicyHolder
    lock: IO[str]
    watchers: PolicyWatchers | None = None
    metrics: GatewayMetrics | None = None
    limiter: RateLimiter | None = None
    # Counts requests with a rejected token per client address, so that token
    # guessing from one address gets 429 before any verification work.
    auth_failures: RateLimiter | None = None
    persisted: PersistedQueries = field(default_factory=PersistedQueries)
    # None when [audit] auto_purge is false.
    retention: RetentionSchedule | None = None

    @classmethod
    async def start(cls, settings: Settings,
                    clients: Mapping[str, UpstreamClient] | None = None) -> Gateway:
        """Load schema and policy, open the audit store and the upstream clients."""
        lock = claim_data_dir(settings.data_dir)
        try:
            return await cls._start(settings, clients, lock)
        except BaseException:
            lock.close()
            raise

    @classmethod
    async def _start(cls, settings: Settings, clients: Mapping[str, UpstreamClient] | None,
                     lock: IO[str]) -> Gateway:
        catalog = load_catalog(settings.schema_dir)
        schema = build_schema(catalog)
        policy = await open_policy(
            catalog, settings.policy or PolicySettings(directory=settings.policy_dir))
        check_declared_systems(catalog, settings)
        sources: dict[str, Source] = {
            name: ResilientSource(_source(name, spec, (clients or {}).get(name),
                                          settings.http_clients.get(name, DEFAULT_HTTP_CLIENT)),
                                  settings.resilience.get(name, ResiliencePolicy()))
            for name, spec in settings.systems.items()
        }
        checkpoint_key = load_or_create_checkpoint_key(
            settings.checkpoint_key_path, name=settings.audit_checkpoint_key_name)
        publish_public_key(checkpoint_key, settings.checkpoint_public_key_dir)
        anchors = [anchor_from_setting(a, settings.data_dir) for a in settings.audit_anchors]
        previous_key = await newest_checkpoint_key_name(_audit_target(settings))
        store = await _open_audit_store(settings, checkpoint_key, anchors)
        audit_key = load_or_create_key(settings.pseudonym_key_path)
        pseudonymizer = Pseudonymizer(audit_key)
        operation_key = hmac.new(audit_key, b"fonte-operation-hash", hashlib.sha256).digest()
        recorder = AuditRecorder(store, pseudonymizer, operation_key=operation_key,
                                 fail_open=settings.audit_fail_open)
        if previous_key is not None and previous_key != checkpoint_key.name:
            await recorder.record_admin("key_rotation", {"previous_key": previous_key,
                                                         "key": checkpoint_key.name})
        policy.on_change = recorder.policy_changed
        keys = PseudonymKeys(load_or_create_key(settings.mask_key_path))
        executor = Executor(catalog, schema, policy, sources, recorder, keys,
                            settings.operation_limits, settings.max_search_length,
                            settings.executor)
        verifier = TokenVerifier(_token_settings(settings))
        persisted = PersistedQueries.load(settings.persisted_queries)
        log.info("gateway ready: %d systems, policy %s, audit store %s", len(sources),
                 policy.current.version, store.location)
        watchers = PolicyWatchers(policy, settings.policy) if settings.policy else None
        if watchers is not None:
            watchers.start()
        retention = None
        if settings.audit_auto_purge:
            retention = RetentionSchedule(_audit_target(settings),
                                          settings.checkpoint_public_key_dir,
                                          settings.audit_retention_months)
            retention.start()
        return cls(settings, executor, verifier, recorder, sources, policy, lock, watchers,
                   GatewayMetrics(sources), RateLimiter(settings.rate_limit),
                   RateLimiter(settings.rate_limit), persisted, retention)

    async def close(self) -> None:
        if self.retention is not None:
            await self.retention.close()
        if self.watchers is not None:
            await self.watchers.stop()
        await self.policy.aclose()
        for source in self.sources.values():
            await source.aclose()
        await self.recorder.close()
        await self.verifier.aclose()
        self.lock.close()


def _audit_target(settings: Settings) -> Path | str:
    """Return the URL of the PostgreSQL store of ``[audit] store``, or else the SQLite path."""
    return settings.audit_store_url or settings.audit_path


async def _open_audit_store(settings: Settings, checkpoint_key: CheckpointKey,
                            anchors: list[CheckpointAnchor]) -> GroupCommitStore:
    """Open the PostgreSQL store of ``[audit] store``, or else the SQLite file in data_dir."""
    delay, siblings = settings.audit_commit_delay_ms / 1000, settings.audit_commit_siblings
    if settings.audit_store_url is not None:
        return await PostgresAuditStore.open(
            settings.audit_store_url, checkpoint_key=checkpoint_key, anchors=anchors,
            checkpoint_interval=settings.audit_checkpoint_interval,
            commit_delay=delay, commit_siblings=siblings)
    return await SQLiteAuditStore.open(
        settings.audit_path, checkpoint_key=checkpoint_key, anchors=anchors,
        checkpoint_interval=settings.audit_checkpoint_interval,
        commit_delay=delay, commit_siblings=siblings)


def _source(name: str, spec: Any, client: UpstreamClient | None,
            http_client: HttpClient) -> Source:
    if client is None and not isinstance(spec, SqlSettings):
        # SAP sends the session cookie of its CSRF token back with each $batch.
        client = new_client(spec.timeout, http_client, cookies=isinstance(spec, SapSettings))
    if isinstance(spec, DataverseSettings):
        dataverse = DataverseSource(name, spec, client)
        return MappedSource(dataverse, spec.entities) if spec.entities else dataverse
    if isinstance(spec, SapSettings):
        sap = SapSource(name, spec, client)
        return MappedSource(sap, spec.entities) if spec.entities else sap
    if isinstance(spec, OdooSettings):
        return OdooJsonRpcSource(name, spec, client)
    if isinstance(spec, OdooJson2Settings):
        return OdooJson2Source(name, spec, client)
    if isinstance(spec, SqlSettings):
        return SqlSource(name, spec)
    if isinstance(spec, RestSettings):
        rest = RestSource(name, spec, client)
        return MappedSource(rest, spec.entities) if spec.entities else rest
    return SalesforceSource(name, spec, client)


def _token_settings(settings: Settings) -> TokenSettings:
    keys: KeyResolver
    if settings.jwks is not None:
        log.info("accepting tokens signed by the keys at %s", settings.jwks.url)
        keys = JwksKeys(settings.jwks)
    elif settings.token_public_key_file is not None:
        keys = StaticKey(load_public_key(settings.token_public_key_file))
    elif settings.development_tokens:
        log.info("accepting development tokens signed by %s", settings.signing_key_path)
        keys = StaticKey(load_or_create_signing_key(settings.signing_key_path).public_key())
    else:
        raise ConfigError("no token key configured; set [auth] jwks_url or public_key_file")
    return TokenSettings(keys=keys, issuer=settings.token_issuer,
                         audiences=settings.token_audiences,
                         leeway_seconds=settings.token_leeway_seconds,
                         roles=settings.role_mapping, cache_size=settings.token_cache_size)


def check_declared_systems(catalog: Catalog, settings: Settings) -> None:
    """Raise ``ConfigError`` for a schema system that the settings do not declare.

    Also raise it when a system's settings map an entity that the schema does not read
    from that system.
    """
    missing = sorted(catalog.systems - set(settings.systems))
    if missing:
        raise ConfigError(f"the schema reads from system(s) {', '.join(missing)} but the "
                          "settings declare no [systems.<name>] section for them")
    for name, spec in settings.systems.items():
        table, mapped = _mapped_entities(spec)
        read = _entities_read(catalog, name)
        unknown = sorted(set(mapped) - read)
        if unknown:
            # A misspelt entity name would leave the real entity unmapped, with no error.
            raise ConfigError(f"[systems.{name}.{table}] names entity {unknown[0]!r}, which the "
                              f"schema does not read from system {name}; use one of "
                              f"{', '.join(sorted(read)) or '(none)'}")


def _mapped_entities(spec: Any) -> tuple[str, Mapping[str, Any]]:
    """Return the settings table that maps schema entities of ``spec``, and its entries."""
    if isinstance(spec, SqlSettings):
        return "tables", spec.tables
    if isinstance(spec, DataverseSettings | SapSettings | RestSettings):
        return "entities", spec.entities
    return "entities", {}


def _entities_read(catalog: Catalog, system: str) -> set[str]:
    """Return the entities that the schema's types and links read from ``system``."""
    entities = {decl.entity for decl in catalog.types.values() if decl.system == system}
    entities.update(link.entity for decl in catalog.types.values()
                    for link in decl.links.values() if link.system == system)
    return entities


def create_app(settings: Settings,
               clients: Mapping[str, UpstreamClient] | None = None, *,
               server_process: bool = False) -> Starlette:
    """Return the ASGI application; the gateway starts in its lifespan.

    ``server_process`` is for a process that serves only this gateway, such as
    ``fonte serve``: once the gateway has started, it tunes the process's
    garbage collector (``gateway.serving.tune_garbage_collector``).
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway = await Gateway.start(settings, clients)
        app.state.gateway = gateway
        if server_process:
            tune_garbage_collector()
        try:
            yield
        finally:
            await gateway.close()

    routes = [
        Route("/graphql", _graphql, methods=["POST"]),
        Route("/graphql", _graphiql, methods=["GET"]),
        Route("/healthz", _health, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     middleware=cors_middleware(settings.http))


def _json(status: int, body: Mapping[str, Any], request_id: str,
          headers: dict[str, str] | None = None,
          media_type: str = "application/json") -> Response:
    all_headers = {"X-Request-ID": request_id, **(headers or {})}
    return Response(orjson.dumps(body, option=orjson.OPT_PASSTHROUGH_DATETIME,
                                 default=_json_default),
                    status_code=status, media_type=media_type, headers=all_headers)


def _json_default(value: Any) -> Any:
    return str(value)


def _error_body(message: str, code: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code}}]}


async def _graphql(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    request_id = uuid.uuid4().hex
    started = time.perf_counter()
    address = _client_address(request, gateway)
    rejection = _check_transport(request)
    if rejection is not None:
        _log_access(gateway, request_id, None, rejection.status, started, None)
        return _json(rejection.status, rejection.body, request_id)
    media_type = response_media_type(request.headers.get("accept"))

    caller = await _authenticate(request, gateway, address, request_id, started)
    if isinstance(caller, Response):
        return caller
    principal = replace(caller, address=address)

    wait = gateway.limiter.acquire(principal.user) if gateway.limiter else None
    if wait is not None:
        _log_access(gateway, request_id, principal.user, 429, started, None)
        return _json(429, _error_body(
            f"too many requests from this caller; retry in {retry_after_header(wait)} s",
            "RATE_LIMITED"), request_id, {"Retry-After": retry_after_header(wait)})

    parsed = await _read_body(request, gateway.settings.max_body_bytes, gateway.persisted)
    if isinstance(parsed, GraphQLResponse):
        _log_access(gateway, request_id, principal.user, parsed.status, started, None)
        return _json(parsed.status, parsed.body, request_id, media_type=media_type)

    try:
        response = await gateway.executor.run(parsed, principal, request_id)
    except Exception as exc:  # the last guard: no client sees a stack trace
        # Only the type and place: the message of a library error can quote
        # the document, and so a searched name.
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f"{frame.filename}:{frame.lineno}" if frame else "unknown"
        log.error("request %s failed with %s at %s", request_id, type(exc).__name__, where)
        response = GraphQLResponse(500, _error_body(
            f"internal error; quote request id {request_id} to the operators",
            "INTERNAL_SERVER_ERROR"))
    _log_access(gateway, request_id, principal.user, response.status, started,
                parsed.operation_name)
    return _json(response.status, response.body, request_id, response.headers,
                 media_type=media_type)


async def _authenticate(request: Request, gateway: Gateway, address: str | None,
                        request_id: str, started: float) -> Principal | Response:
    """Return the verified caller, or the 401, 403, 429 or 503 response that rejects it."""
    failures = gateway.auth_failures
    wait = failures.peek(address or "-") if failures else None
    if wait is not None:
        _log_access(gateway, request_id, None, 429, started, None)
        return _json(429, _error_body(
            f"too many requests with an invalid token from this address; retry in "
            f"{retry_after_header(wait)} s", "RATE_LIMITED"), request_id,
            {"Retry-After": retry_after_header(wait)})
    try:
        return await gateway.verifier.verify(request.headers.get("authorization"),
                                             request.headers.get(PURPOSE_HEADER))
    except AuthenticationError as exc:
        if failures is not None:
            failures.acquire(address or "-")
        _log_access(gateway, request_id, None, 401, started, None)
        return _json(401, _error_body(str(exc), "UNAUTHENTICATED"), request_id,
                     {"WWW-Authenticate": 'Bearer realm="fonte"'})
    except IdentityUnavailable as exc:
        log.warning("request %s not authenticated: %s", request_id, exc)
        _log_access(gateway, request_id, None, 503, started, None)
        return _json(503, _error_body(
            "the identity provider's keys are unavailable, so the token cannot be checked; "
            "retry later", "AUTH_UNAVAILABLE"), request_id, {"Retry-After": "5"})
    except NoRoleError as exc:
        _log_access(gateway, request_id, None, 403, started, None)
        return _json(403, _error_body(str(exc), "NO_ROLE"), request_id)
    except PurposeError as exc:
        _log_access(gateway, request_id, None, 403, started, None)
        return _json(403, _error_body(str(exc), "FORBIDDEN"), request_id)


def _client_address(request: Request, gateway: Gateway) -> str | None:
    peer = request.client.host if request.client else None
    trusted = gateway.settings.http.trusted_proxies
    # Without a trusted proxy the header is ignored, so it is not even decoded.
    forwarded = request.headers.getlist("x-forwarded-for") if trusted else ()
    return client_address(peer, forwarded, trusted)


def _check_transport(request: Request) -> GraphQLResponse | None:
    """Return the 400 or 406 response for a token in the URL or an unacceptable Accept."""
    if token_in_url(request.query_params.keys()):
        return GraphQLResponse(400, _error_body(TOKEN_IN_URL_MESSAGE, "TOKEN_IN_URL"))
    accept = request.headers.get("accept")
    if accept is not None and not acceptable(accept):
        return GraphQLResponse(406, _error_body(
            f"Accept {accept[:100]!r} names no type this gateway sends; accept "
            f"application/json or {GRAPHQL_RESPONSE_TYPE}", "NOT_ACCEPTABLE"))
    return None


async def _read_body(request: Request, limit: int,
                     persisted: PersistedQueries) -> GraphQLRequest | GraphQLResponse:
    media_type, _, parameters = request.headers.get("content-type", "").partition(";")
    content_type = media_type.strip().lower()
    if content_type != "application/json":
        return GraphQLResponse(415, _error_body(
            f"Content-Type {content_type[:100] or 'missing'!r} is not supported; send the "
            "request as application/json", "BAD_REQUEST"))
    charset = content_charset(parameters)
    if charset not in (None, "utf-8", "utf8"):
        return GraphQLResponse(415, _error_body(
            f"charset {charset[:40]!r} is not supported; send the JSON body as UTF-8",
            "BAD_REQUEST"))
    too_large = GraphQLResponse(413, _error_body(
        f"request body exceeds the limit of {limit} bytes; send a smaller document or "
        "fewer variables", "BAD_REQUEST"))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # stops reading as soon as the limit is passed
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers invalid JSON and UTF-8, and integers too long to convert.
        return GraphQLResponse(400, _error_body("request body is not valid JSON",
                                                "BAD_REQUEST"))
    try:
        surrogate = _lone_surrogate_path(payload) if _SURROGATE_ESCAPE.search(body) else None
    except RecursionError:
        surrogate = "the request body"
    if surrogate is not None:
        return GraphQLResponse(400, _error_body(
            f"{surrogate} contains a lone UTF-16 surrogate escape (\\ud800 to \\udfff), "
            "which is not a Unicode character; escape characters outside the BMP as a pair "
            "or send them as UTF-8", "BAD_REQUEST"))
    return _graphql_request(payload, persisted)


# json.loads turns a lone \ud800 to \udfff escape into a str that cannot be encoded to
# UTF-8, so an upstream request built from it fails. Such a str can only come from this
# escape, because raw surrogate bytes are invalid UTF-8, so bodies without it skip the walk.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate_path(value: Any, path: str = "") -> str | None:
    """Return the JSON path of the first string that contains a lone surrogate, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "the request body"
        return None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and _lone_surrogate_path(key) is not None:
            return f"a member name in {path or 'the request body'}"
        if isinstance(key, int):
            item_path = f"{path}[{key}]"
        elif path:
            item_path = f"{path}.{key}"
        else:
            item_path = key
        found = _lone_surrogate_path(item, item_path)
        if found is not None:
            return found
    return None


def _graphql_request(payload: Any,
                     persisted: PersistedQueries) -> GraphQLRequest | GraphQLResponse:
    if not isinstance(payload, dict):
        return GraphQLResponse(400, _error_body(
            "request body must be a JSON object with a 'query' member", "BAD_REQUEST"))
    try:
        query = persisted.query_of(payload)
    except PersistedQueryError as exc:
        return GraphQLResponse(400, _error_body(str(exc), exc.code))
    variables = payload.get("variables")
    operation_name = payload.get("operationName")
    if not isinstance(query, str) or not query.strip():
        return GraphQLResponse(400, _error_body("'query' must be a non-empty string",
                                                "BAD_REQUEST"))
    if variables is not None and not isinstance(variables, dict):
        return GraphQLResponse(400, _error_body("'variables' must be a JSON object or null",
                                                "BAD_REQUEST"))
    if operation_name is not None and not isinstance(operation_name, str):
        return GraphQLResponse(400, _error_body("'operationName' must be a string or null",
                                                "BAD_REQUEST"))
    return GraphQLRequest(query=query, variables=variables, operation_name=operation_name)


async def _graphiql(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    if token_in_url(request.query_params.keys()):
        return _json(400, _error_body(TOKEN_IN_URL_MESSAGE, "TOKEN_IN_URL"), uuid.uuid4().hex)
    if "query" in request.query_params:
        return _json(405, _error_body(
            "GraphQL operations run only by POST with a JSON body, so that a link or an "
            "image on another site cannot run one", "METHOD_NOT_ALLOWED"), uuid.uuid4().hex,
            {"Allow": "POST"})
    if not gateway.settings.graphiql:
        return Response("GraphiQL is disabled; POST GraphQL requests to this address.\n",
                        status_code=404, media_type="text/plain")
    return HTMLResponse(get_graphql_ide_html("graphiql"))


async def _health(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    audit_ok = await gateway.recorder.healthy()
    policy = gateway.policy.status()
    body = {"status": "ok" if audit_ok else "degraded",
            "audit": "ok" if audit_ok else "unavailable",
            "policy": {"version": policy.version, "last_error": policy.last_error,
                       "notifications": gateway.watchers.status() if gateway.watchers else {}},
            "systems": _system_health(gateway.sources)}
    return Response(orjson.dumps(body), status_code=200 if audit_ok else 503,
                    media_type="application/json")


async def _metrics(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    assert gateway.metrics is not None
    return Response(gateway.metrics.render(), media_type=METRICS_CONTENT_TYPE)


def _system_health(sources: Mapping[str, Source]) -> dict[str, dict[str, object]]:
    health: dict[str, dict[str, object]] = {}
    for name, source in sources.items():
        if isinstance(source, ResilientSource):
            health[name] = {"circuit": source.breaker_state, "failures": source.failures}
    return health


def _log_access(gateway: Gateway, request_id: str, user: str | None, status: int,
                started: float, operation_name: str | None) -> None:
    if gateway.metrics is not None:
        gateway.metrics.observe(status, time.perf_counter() - started)
    access_log.info("request %s user=%r status=%d operation=%s duration_ms=%.1f", request_id,
                    user or "-", status,
                    None if operation_name is None else quoted(operation_name),
                    (time.perf_counter() - started) * 1000)
