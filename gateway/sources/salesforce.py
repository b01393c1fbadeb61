"""Salesforce REST dialect: SOQL queries with OAuth2 client credentials.

Reads go to ``GET /services/data/vNN.N/query?q=SOQL`` and follow
``nextRecordsUrl`` until ``done``. Keys travel in ``WHERE field IN (...)``
lists, split so no request URL passes 16,000 bytes (Salesforce rejects URI
plus headers above 16,384 bytes with 414/431). The access token is cached;
an ``INVALID_SESSION_ID`` answer triggers one refresh and one retry.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import httpx

from gateway.catalog import Condition
from gateway.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest, Row, order_terms
from gateway.sources.http import json_body, send, status_error

log = logging.getLogger("gateway.upstream")

MAX_URL_BYTES = 16_000
# Record ids are 15 case-sensitive or 18 case-insensitive alphanumerics.
# OAuth2 error codes (RFC 6749 5.2) that mean the gateway's credentials are wrong.
_AUTH_ERRORS = frozenset({"invalid_client", "invalid_grant", "unauthorized_client"})
_API_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
_RECORD_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_SOQL_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t",
                 "\b": "\\b", "\f": "\\f"}


@dataclass(frozen=True)
class SalesforceSettings:
    """Connection settings of one Salesforce org."""

    login_url: str
    client_id: str
    client_secret: str
    api_version: str = "62.0"
    timeout: float = 10.0


def soql_literal(value: str | int | bool) -> str:
    """Return ``value`` as a SOQL literal, quoting and escaping strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + "".join(_SOQL_ESCAPES.get(ch, ch) for ch in value) + "'"


def like_pattern(text: str) -> str:
    """Return a LIKE literal matching ``text`` anywhere, with its own % and _ escaped."""
    escapes = {**_SOQL_ESCAPES, "%": "\\%", "_": "\\_"}
    return "'%" + "".join(escapes.get(ch, ch) for ch in text) + "%'"


def build_soql(request: FetchRequest, keys: tuple[str | int, ...]) -> str:
    """Return the SOQL text of ``request`` restricted to ``keys``."""
    clauses = []
    if request.match is not None:
        clauses.append(f"{request.match} IN ({', '.join(soql_literal(k) for k in keys)})")
    clauses.extend(_condition(c) for c in request.where)
    if request.any_of:
        clauses.append("(" + " OR ".join(_condition(c) for c in request.any_of) + ")")
    if request.after is not None:
        clauses.append(f"{request.after[0]} > {soql_literal(request.after[1])}")
    if request.search is not None:
        clauses.append(f"{request.search[0]} LIKE {like_pattern(request.search[1])}")
    soql = f"SELECT {', '.join(request.attributes)} FROM {request.entity}"
    if clauses:
        soql += " WHERE " + " AND ".join(clauses)
    terms = order_terms(request.order)
    if terms:
        soql += " ORDER BY " + ", ".join(f"{name} {'DESC' if desc else 'ASC'}"
                                         for name, desc in terms)
    if request.limit is not None:
        soql += f" LIMIT {request.limit}"
    return soql


def _condition(condition: Condition) -> str:
    if condition.operator == "in":
        assert isinstance(condition.value, tuple)
        values = ", ".join(soql_literal(v) for v in condition.value)
        return f"{condition.attribute} IN ({values})"
    assert not isinstance(condition.value, tuple)
    return f"{condition.attribute} {condition.operator} {soql_literal(condition.value)}"


class SalesforceSource:
    """Reads one Salesforce org."""

    supports_row_filters = True

    def __init__(self, name: str, settings: SalesforceSettings,
                 client: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self._settings = settings
        self._client = client or httpx.AsyncClient(timeout=settings.timeout)
        self._token: tuple[str, str] | None = None  # (access token, instance URL)
        # (used, allowed) API requests from the last Sforce-Limit-Info header.
        self.api_usage: tuple[int, int] | None = None
        self._token_lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, request: FetchRequest) -> list[Row]:
        request = _drop_malformed_ids(request)
        if not request.visible or (request.match is not None and not request.keys):
            return []
        chunks = self._chunks(request)
        pages = await asyncio.gather(*(self._query(request, chunk) for chunk in chunks))
        return [row for page in pages for row in page]

    def _chunks(self, request: FetchRequest) -> list[tuple[str | int, ...]]:
        if request.match is None:
            return [()]
        base = len(quote(build_soql(request, ()))) + 200  # path, host and headers margin
        chunks: list[tuple[str | int, ...]] = []
        current: list[str | int] = []
        size = base
        for key in request.keys:
            cost = len(quote(soql_literal(key) + ", "))
            if current and size + cost > MAX_URL_BYTES:
                chunks.append(tuple(current))
                current, size = [], base
            current.append(key)
            size += cost
        if current:
            chunks.append(tuple(current))
        return chunks

    async def _query(self, request: FetchRequest, keys: tuple[str | int, ...]) -> list[Row]:
        what = f"{request.entity} query of {len(keys)} keys"
        path = f"/services/data/v{self._settings.api_version}/query"
        body = await self._get(path, {"q": build_soql(request, keys)}, what)
        rows = [_row(record) for record in body.get("records", [])]
        while not body.get("done", True):
            next_url = body.get("nextRecordsUrl")
            if not isinstance(next_url, str):
                raise UpstreamUnavailable(self.name, f"system {self.name!r} answered {what} "
                                          "with done=false and no nextRecordsUrl")
            body = await self._get(next_url, None, what)
            rows.extend(_row(record) for record in body.get("records", []))
        return rows

    async def _get(self, path: str, params: dict[str, str] | None, what: str) -> dict[str, Any]:
        token, instance = await self._access(refresh=False)
        response = await self._send_query(instance + path, params, token, what)
        if response.status_code == 401:
            token, instance = await self._access(refresh=True, stale=token)
            response = await self._send_query(instance + path, params, token, what)
        self._read_usage(response)
        if response.status_code != 200:
            raise self._error(response, what)
        body = json_body(response, self.name, what)
        if not isinstance(body, dict) or not isinstance(body.get("records", []), list):
            raise UpstreamUnavailable(self.name, f"system {self.name!r} answered {what} with "
                                      "an unexpected JSON shape")
        return body

    async def _send_query(self, url: str, params: dict[str, str] | None, token: str,
                          what: str) -> httpx.Response:
        return await send(self._client, self.name, what, "GET", url, params=params,
                          headers={"Authorization": f"Bearer {token}",
                                   "Accept": "application/json"})

    async def _access(self, *, refresh: bool, stale: str | None = None) -> tuple[str, str]:
        async with self._token_lock:
            # Another request may have refreshed while this one waited.
            if self._token is not None and (not refresh or self._token[0] != stale):
                return self._token
            self._token = await self._request_token()
            return self._token

    async def _request_token(self) -> tuple[str, str]:
        what = "OAuth2 token request"
        url = self._settings.login_url.rstrip("/") + "/services/oauth2/token"
        response = await send(self._client, self.name, what, "POST", url, data={
            "grant_type": "client_credentials", "client_id": self._settings.client_id,
            "client_secret": self._settings.client_secret,
        })
        if response.status_code != 200:
            body = json_body(response, self.name, what) if response.content else {}
            code = body.get("error") if isinstance(body, dict) else None
            if response.status_code in (400, 401) and code in _AUTH_ERRORS:
                raise UpstreamAuthFailed(self.name, f"system {self.name!r} rejected the "
                                         f"gateway's OAuth2 client credentials ({code}); check "
                                         "its client_id and client_secret settings")
            raise status_error(self.name, what, response, str(code) if code else None)
        body = json_body(response, self.name, what)
        token, instance = body.get("access_token"), body.get("instance_url")
        if not isinstance(token, str) or not isinstance(instance, str):
            raise UpstreamUnavailable(self.name, f"system {self.name!r} answered the token "
                                      "request without access_token and instance_url")
        log.info("system %r: new access token obtained", self.name)
        return token, instance.rstrip("/")

    def _read_usage(self, response: httpx.Response) -> None:
        """Keep the org's API usage from ``Sforce-Limit-Info: api-usage=N/M``."""
        match = _API_USAGE.search(response.headers.get("sforce-limit-info", ""))
        if match is None:
            return
        self.api_usage = (int(match.group(1)), int(match.group(2)))
        if self.api_usage[0] >= 0.9 * self.api_usage[1]:
            log.warning("system %r has used %d of its %d daily API requests", self.name,
                        *self.api_usage)

    def _error(self, response: httpx.Response, what: str) -> UpstreamError:
        code = _error_code(response)
        if response.status_code in (414, 431):
            return UpstreamRejected(self.name, f"system {self.name!r} rejected {what} as too "
                                    f"long (HTTP {response.status_code})")
        if response.status_code == 400:
            return UpstreamRejected(self.name, f"system {self.name!r} rejected {what} ({code}); "
                                    "check the schema declaration's attribute names")
        return status_error(self.name, what, response, code)


def _is_id_attribute(name: str) -> bool:
    return name == "Id" or name.endswith("Id")


def _drop_malformed_ids(request: FetchRequest) -> FetchRequest:
    """Return ``request`` without id values that cannot be record ids.

    Salesforce rejects the whole query for one malformed id, while such a
    value simply matches no record: a client's typo must read as "not
    found", and a row rule comparing an id field with a claim that is no
    Salesforce id admits no record rather than failing the query.
    """
    if request.match is not None and _is_id_attribute(request.match):
        keys = tuple(k for k in request.keys if isinstance(k, str) and _RECORD_ID.match(k))
        if len(keys) != len(request.keys):
            request = replace(request, keys=keys)
    if request.any_of:
        kept = tuple(c for c in request.any_of if not _is_id_attribute(c.attribute)
                     or (isinstance(c.value, str) and _RECORD_ID.match(c.value)))
        if len(kept) != len(request.any_of):
            request = replace(request, any_of=kept, visible=bool(kept))
    return request


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, list) and body and isinstance(body[0], dict):
        code = body[0].get("errorCode")
        return str(code) if code else None
    return None


def _row(record: dict[str, Any]) -> Row:
    return {key: value for key, value in record.items() if key != "attributes"}
