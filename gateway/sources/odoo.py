"""Odoo external API dialect over JSON-RPC (``/jsonrpc``, ``execute_kw``).

Reads are ``search_read`` calls with a domain ``[[match, "in", keys], ...]``
and an explicit ``fields`` list: Odoo returns every field of the model when
``fields`` is omitted or empty, so a request without attributes is rejected
before it leaves the gateway. Odoo writes ``false`` for empty values and
``[id, "name"]`` for many-to-one references; rows come back normalised to
``None`` and ``Many2one``. Odoo reports errors inside an HTTP 200 body.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.catalog import Condition
from gateway.errors import UpstreamError, UpstreamRejected, UpstreamUnavailable
from gateway.sources import FetchRequest, Many2one, Row, order_terms
from gateway.sources.http import json_body, send, status_error

log = logging.getLogger("gateway.upstream")

# Keys travel in the POST body, so size is not a URL problem; chunks keep
# each call's domain and result a bounded size.
MAX_KEYS_PER_CALL = 1000


@dataclass(frozen=True)
class OdooSettings:
    """Connection settings of one Odoo database."""

    base_url: str
    database: str
    login: str
    api_key: str
    timeout: float = 10.0


class OdooError(UpstreamError):
    """Odoo answered with its JSON-RPC error envelope."""


def domain_for(request: FetchRequest, keys: tuple[str | int, ...]) -> list[Any]:
    """Return the search domain of ``request`` restricted to ``keys``."""
    domain: list[Any] = []
    if request.match is not None:
        domain.append([request.match, "in", list(keys)])
    domain.extend(_leaf(condition) for condition in request.where)
    if request.after is not None:
        domain.append([request.after[0], ">", request.after[1]])
    if request.search is not None:
        domain.append([request.search[0], "ilike", request.search[1]])
    return domain


def _leaf(condition: Condition) -> list[Any]:
    value = list(condition.value) if isinstance(condition.value, tuple) else condition.value
    return [condition.attribute, condition.operator, value]


def normalise(record: dict[str, Any]) -> Row:
    """Return an Odoo record with ``None`` for empty values and ``Many2one`` references."""
    row: Row = {}
    for key, value in record.items():
        if value is False and key != "id":
            row[key] = None
        elif (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
              and isinstance(value[1], str)):
            row[key] = Many2one(value[0], value[1])
        else:
            row[key] = value
    return row


class OdooJsonRpcSource:
    """Reads one Odoo database through ``/jsonrpc``."""

    def __init__(self, name: str, settings: OdooSettings,
                 client: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self._settings = settings
        self._client = client or httpx.AsyncClient(timeout=settings.timeout)
        self._uid: int | None = None
        self._uid_lock = asyncio.Lock()
        self._ids = itertools.count(1)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, request: FetchRequest) -> list[Row]:
        if not request.attributes:
            raise UpstreamRejected(self.name, f"refusing to read {request.entity} without a "
                                   "field list: Odoo would return every field")
        if request.match is None:
            chunks: list[tuple[str | int, ...]] = [()]
        else:
            chunks = [request.keys[i:i + MAX_KEYS_PER_CALL]
                      for i in range(0, len(request.keys), MAX_KEYS_PER_CALL)]
        results = await asyncio.gather(*(self._search_read(request, chunk) for chunk in chunks))
        return [row for rows in results for row in rows]

    async def _search_read(self, request: FetchRequest,
                           keys: tuple[str | int, ...]) -> list[Row]:
        options: dict[str, Any] = {"fields": list(request.attributes)}
        terms = order_terms(request.order)
        if terms:
            options["order"] = ", ".join(f"{n} {'desc' if d else 'asc'}" for n, d in terms)
        if request.limit is not None:
            options["limit"] = request.limit
        what = f"{request.entity} search_read of {len(keys)} keys"
        result = await self._execute(request.entity, "search_read",
                                     [domain_for(request, keys)], options, what)
        if not isinstance(result, list):
            raise UpstreamUnavailable(self.name, f"system {self.name!r} answered {what} with "
                                      "something other than a list of records")
        return [normalise(record) for record in result if isinstance(record, dict)]

    async def _execute(self, model: str, method: str, args: list[Any],
                       kwargs: dict[str, Any], what: str) -> Any:
        uid = await self._login(stale=None)
        try:
            return await self._call("object", "execute_kw", [
                self._settings.database, uid, self._settings.api_key, model, method, args,
                kwargs], what)
        except OdooError as exc:
            if "AccessDenied" not in str(exc):
                raise
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
                raise UpstreamUnavailable(self.name, f"system {self.name!r} rejected the "
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
        name = str(data.get("name", "unknown")) if isinstance(data, dict) else "unknown"
        # Only the exception class name is kept: Odoo's message and debug
        # traceback may quote record values.
        message = f"system {self.name!r} answered {what} with Odoo error {name}"
        if name.endswith(("ValueError", "KeyError", "AttributeError", "ValidationError")):
            return UpstreamRejected(self.name, message + "; check the schema declaration")
        return OdooError(self.name, message)
