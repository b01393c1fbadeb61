"""Odoo external API dialects: JSON-RPC (``/jsonrpc``) and JSON-2 (``/json/2``).

Both transports read with ``search_read`` and share the model code here. The
domain is ``[[match, "in", keys], ...]``, and keys go in chunks of
``MAX_KEYS_PER_CALL``. Every call carries an explicit ``fields`` list,
because Odoo returns every field of the model when ``fields`` is omitted or
empty, so a request without attributes is rejected before it leaves the
gateway.
Odoo writes ``false`` for empty values and ``[id, "name"]`` for many-to-one
references, and rows come back normalised to ``None`` and ``Many2one``.

The transports differ in how a call is sent and how it fails.
``OdooJsonRpcSource`` logs in with ``common.authenticate`` and calls
``object.execute_kw``, and Odoo reports its errors inside an HTTP 200 body.
``OdooJson2Source`` (Odoo 19 and later) sends the API key as a bearer token
to ``POST /json/2/<model>/search_read``, and Odoo reports errors as 4xx/5xx
statuses with a ``{"name", "message", ...}`` body.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gateway.catalog import Condition
from gateway.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest, Many2one, Row, order_terms
from gateway.sources.client import UpstreamClient, new_client
from gateway.sources.http import UpstreamResponse, json_body, send, status_error

log = logging.getLogger("gateway.upstream")

# Keys travel in the POST body, so size is not a URL problem. Chunks keep
# each call's domain and result a bounded size; 5,000 ids keep a full page of
# 500 customers with about 8 orders each in one call per model and level.
MAX_KEYS_PER_CALL = 5000

USER_AGENT = "fonte-gateway"

# Odoo exception classes that mean the request itself is wrong (an unknown
# field or model, arguments that do not bind), so retrying cannot help.
_REQUEST_ERROR_SUFFIXES = (
    "ValueError", "KeyError", "AttributeError", "TypeError", "ValidationError", "UserError",
)
# An exception class path as Odoo serialises it, e.g. "odoo.exceptions.AccessError".
_ERROR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,199}")


@dataclass(frozen=True)
class OdooSettings:
    """URL, database, login and API key of one Odoo database read over JSON-RPC."""

    base_url: str
    database: str
    login: str
    api_key: str
    timeout: float = 10.0


@dataclass(frozen=True)
class OdooJson2Settings:
    """URL, database and API key of one Odoo database read over JSON-2 (Odoo 19 and later).

    ``database`` is sent as ``X-Odoo-Database``, which Odoo needs only when
    several databases share the host. An empty string sends no header.
    """

    base_url: str
    database: str
    api_key: str
    timeout: float = 10.0


class OdooError(UpstreamError):
    """An error returned by Odoo that names an Odoo exception class."""


class OdooAccessDenied(OdooError):
    """Odoo rejected the database, login or API key of a JSON-RPC call."""


def domain_for(request: FetchRequest, keys: tuple[str | int, ...]) -> list[Any]:
    """Return the search domain of ``request`` restricted to ``keys``."""
    domain: list[Any] = []
    if request.match is not None:
        domain.append([request.match, "in", list(keys)])
    domain.extend(_leaf(condition) for condition in request.where)
    if request.any_of:
        # Odoo domains use prefix operators: n alternatives need n - 1 '|'.
        domain.extend(["|"] * (len(request.any_of) - 1))
        domain.extend(_leaf(condition) for condition in request.any_of)
    if request.after is not None:
        domain.append([request.after[0], ">", request.after[1]])
    if request.search is not None:
        domain.append([request.search[0], "ilike", request.search[1]])
    return domain


def _leaf(condition: Condition) -> list[Any]:
    value = list(condition.value) if isinstance(condition.value, tuple) else condition.value
    return [condition.attribute, condition.operator, value]


def search_read_options(request: FetchRequest) -> dict[str, Any]:
    """Return the ``fields``, ``order`` and ``limit`` arguments of ``search_read``."""
    options: dict[str, Any] = {"fields": list(request.attributes)}
    terms = order_terms(request.order)
    if terms:
        options["order"] = ", ".join(f"{n} {'desc' if d else 'asc'}" for n, d in terms)
    if request.limit is not None:
        options["limit"] = request.limit
    return options


def normalise(record: dict[str, Any], attributes: tuple[str, ...]) -> Row:
    """Return ``record`` with exactly ``attributes``, as every source returns rows.

    Empty values (``false``) become ``None``, except ``id``, and ``[id, name]``
    pairs become ``Many2one`` references. Odoo adds ``id`` to every record even
    when ``fields`` omits it, and a field missing from a record reads as None.
    """
    row: Row = {}
    for name in attributes:
        value = record.get(name)
        if value is False and name != "id":
            value = None
        elif (type(value) is list and len(value) == 2 and isinstance(value[0], int)
              and isinstance(value[1], str)):
            value = Many2one(value[0], value[1])
        row[name] = value
    return row


def is_request_error(name: str) -> bool:
    """Return whether the Odoo exception class ``name`` means the request itself is wrong."""
    return name.endswith(_REQUEST_ERROR_SUFFIXES)


class OdooSource(ABC):
    """The transport-independent half of an Odoo source: chunking, domain and rows."""

    name: str
    supports_row_filters = True

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections."""

    @abstractmethod
    async def _search_read(self, model: str, domain: list[Any], options: dict[str, Any],
                           what: str) -> Any:
        """Send one ``search_read`` call and return its decoded result.

        ``what`` names the call in error messages: entity and key count only.
        """

    async def fetch(self, request: FetchRequest) -> list[Row]:
        if not request.attributes:
            raise UpstreamRejected(self.name, f"refusing to read {request.entity} without a "
                                   "field list: Odoo would return every field")
        if request.match is None:
            chunks: list[tuple[str | int, ...]] = [()]
        else:
            chunks = [request.keys[i:i + MAX_KEYS_PER_CALL]
                      for i in range(0, len(request.keys), MAX_KEYS_PER_CALL)]
        results = await asyncio.gather(*(self._read_chunk(request, chunk) for chunk in chunks))
        return [row for rows in results for row in rows]

    async def _read_chunk(self, request: FetchRequest, keys: tuple[str | int, ...]) -> list[Row]:
        what = f"{request.entity} search_read of {len(keys)} keys"
        result = await self._search_read(request.entity, domain_for(request, keys),
                                         search_read_options(request), what)
        if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
            raise UpstreamUnavailable(self.name, f"system {self.name!r} answered {what} with "
                                      "something other than a list of records")
        attributes = request.attributes
        return [normalise(record, attributes) for record in result]


class OdooJsonRpcSource(OdooSource):
    """Reads one Odoo database through ``/jsonrpc``."""

    def __init__(self, name: str, settings: OdooSettings,
                 client: UpstreamClient | None = None) -> None:
        self.name = name
        self._settings = settings
        self._client = client or new_client(settings.timeout)
        self._uid: int | None = None
        self._uid_lock = asyncio.Lock()
        self._ids = itertools.count(1)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _search_read(self, model: str, domain: list[Any], options: dict[str, Any],
                           what: str) -> Any:
        return await self._execute(model, "search_read", [domain], options, what)

    async def _execute(self, model: str, method: str, args: list[Any],
                       kwargs: dict[str, Any], what: str) -> Any:
        uid = await self._login(stale=None)
        try:
            return await self._call("object", "execute_kw", [
                self._settings.database, uid, self._settings.api_key, model, method, args,
                kwargs], what)
        except OdooAccessDenied:
            pass
        # The key may have been rotated since login: log in again once.
        uid = await self._login(stale=uid)
        return await self._call("object", "execute_kw", [
            self._settings.database, uid, self._settings.api_key, model, method, args, kwargs],
            what)

    async def _login(self, *, stale: int | None) -> int:
        async with self._uid_lock:
            if self._uid is not None and self._uid != stale:
                return self._uid
            what = "authenticate"
            uid = await self._call("common", "authenticate", [
                self._settings.database, self._settings.login, self._settings.api_key, {}],
                what)
            if not isinstance(uid, int) or isinstance(uid, bool):
                raise UpstreamAuthFailed(self.name, f"system {self.name!r} rejected the "
                                         "gateway's login; check its database, login and API "
                                         "key settings")
            self._uid = uid
            log.info("system %r: logged in", self.name)
            return uid

    async def _call(self, service: str, method: str, args: list[Any], what: str) -> Any:
        payload = {"jsonrpc": "2.0", "method": "call", "id": next(self._ids),
                   "params": {"service": service, "method": method, "args": args}}
        url = self._settings.base_url.rstrip("/") + "/jsonrpc"
        response = await send(self._client, self.name, what, "POST", url, json=payload)
        if response.status_code != 200:
            raise status_error(self.name, what, response)
        body = json_body(response, self.name, what)
        if not isinstance(body, dict):
            raise UpstreamUnavailable(self.name, f"system {self.name!r} answered {what} with "
                                      "an unexpected JSON shape")
        if "error" in body:
            raise self._error(body["error"], what)
        return body.get("result")

    def _error(self, error: Any, what: str) -> UpstreamError:
        data = error.get("data", {}) if isinstance(error, dict) else {}
        name = _error_name(data) or "unknown"
        # Only the exception class name is kept: Odoo's message and debug
        # traceback may quote record values.
        message = f"system {self.name!r} answered {what} with Odoo error {name}"
        if name.endswith("AccessDenied"):
            return OdooAccessDenied(self.name, message + "; check its database, login and API "
                                    "key settings")
        if is_request_error(name):
            return UpstreamRejected(self.name, message + "; check the schema declaration")
        return OdooError(self.name, message)


class OdooJson2Source(OdooSource):
    """Reads one Odoo database through ``POST /json/2/<model>/search_read`` (Odoo 19+).

    Each call is stateless: the API key travels as a bearer token, so there
    is no login, and a rejected key fails the read at once with no retry.
    """

    def __init__(self, name: str, settings: OdooJson2Settings,
                 client: UpstreamClient | None = None) -> None:
        self.name = name
        self._settings = settings
        self._client = client or new_client(settings.timeout)
        self._headers = {"Authorization": f"bearer {settings.api_key}", "User-Agent": USER_AGENT}
        if settings.database:
            self._headers["X-Odoo-Database"] = settings.database

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _search_read(self, model: str, domain: list[Any], options: dict[str, Any],
                           what: str) -> Any:
        url = f"{self._settings.base_url.rstrip('/')}/json/2/{quote(model, safe='')}/search_read"
        body = {"domain": domain, **options}
        response = await send(self._client, self.name, what, "POST", url, json=body,
                              headers=self._headers)
        if response.status_code != 200:
            raise self._status_error(response, what)
        return json_body(response, self.name, what)

    def _status_error(self, response: UpstreamResponse, what: str) -> UpstreamError:
        status = response.status_code
        name = _error_name(_error_body(response))
        # Only the exception class name is kept: Odoo's message and debug
        # traceback may quote record values.
        prefix = f"system {self.name!r} answered HTTP {status}"
        prefix += f" ({name}) for {what}" if name else f" for {what}"
        if status == 401:
            return UpstreamAuthFailed(self.name, f"system {self.name!r} rejected the gateway's "
                                      f"API key (HTTP 401) for {what}; check its api_key and "
                                      "database settings, and whether the key has expired")
        if status == 403:
            return OdooError(self.name, prefix + "; check the access rights of the API key's "
                             "user in Odoo")
        if status == 404:
            return UpstreamRejected(self.name, prefix + "; the model or method does not exist "
                                    "there, so check the schema declaration and the database "
                                    "setting")
        if status in (400, 405, 413, 415, 422):
            return UpstreamRejected(self.name, prefix + "; Odoo rejected the request as invalid, "
                                    "so check the schema declaration")
        if name and is_request_error(name):
            return UpstreamRejected(self.name, prefix + "; check the schema declaration")
        if name and status == 500:
            # An exception raised inside Odoo, like a JSON-RPC error envelope.
            return OdooError(self.name, prefix)
        return status_error(self.name, what, response, name)


def _error_body(response: UpstreamResponse) -> Any:
    """Return the decoded error body, or None when it is not JSON (a proxy's text page)."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _error_name(error: Any) -> str | None:
    """Return the exception class path of an Odoo error object, if it has a well-formed one.

    Odoo sends ``{"name", "message", "arguments", "context", "debug"}``. An
    older revision of the JSON-2 documentation shows a bare JSON string,
    which names no class.
    """
    name = error.get("name") if isinstance(error, dict) else None
    if isinstance(name, str) and _ERROR_NAME.fullmatch(name):
        return name
    return None
