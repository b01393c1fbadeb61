"""A plain REST/JSON ERP over the demo records, as a home-grown system would serve it.

Every resource is a collection at ``/api/v1/<resource>`` and an item at
``/api/v1/<resource>/{id}``. A collection read takes:

- ``ids=1,2,3``: the records with these ids (batch by ids), at most
  ``MAX_IDS`` per request;
- ``<field>=a,b``: the records whose field is one of the values, such as
  ``customer_id=1001,1002`` to read the orders of two customers;
- ``fields=a,b``: the fields each record carries (``id`` always included);
  all fields when absent;
- ``sort=-ordered_at,id``: the order of the records, ``-`` for descending,
  with empty values last in ascending order; id order when absent;
- ``limit`` (1 to ``MAX_PAGE_SIZE``, default ``DEFAULT_PAGE_SIZE``) and
  either ``cursor`` (the ``meta.next_cursor`` of the previous page) or
  ``offset``.

A list parameter may also be repeated (``ids=1&ids=2``). Responses are
``{"data": [...], "meta": {"next_cursor": ...}, "links": {"next": ...}}``
and errors ``{"error": {"status", "code", "message"}}``: 400 for an invalid
parameter, 401 without the API key, 404 for an unknown resource or id, 414
for a URL over ``MAX_URL_BYTES``. Through fault injection
(``gateway.demo.control``) it also returns 429 with ``Retry-After``, any
other status with the code of ``FAULT_ERRORS``, a truncated JSON body, or a
connection that ends mid-body. ``/openapi.json`` describes exactly these
endpoints (see ``gateway.demo.rest_openapi``).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.demo.control import DemoControl, RequestLogEntry, body_fault, control_routes
from gateway.demo.data import DemoData, Record
from gateway.demo.odata_fake import EntitySetSpec, build_sets
from gateway.demo.rest_openapi import openapi_document

API_PATH = "/api/v1"
MAX_IDS = 1000
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100
MAX_URL_BYTES = 8192
RETRY_AFTER_SECONDS = 7
MAX_OPEN_CURSORS = 1000  # paging states kept; the oldest is dropped first
API_KEY_HEADER = "X-API-Key"
# Parameters with a meaning of their own; any other parameter filters by a field.
CONTROL_PARAMETERS = frozenset({"ids", "fields", "sort", "limit", "cursor", "offset"})
# Fields that hold the key of a parent record: the request log counts their
# filter values as keys, like the values of ids.
KEY_FIELDS = frozenset({"customer_id", "order_id", "order_number", "account_id"})

REST_RESOURCES = [
    EntitySetSpec("customers", "res.partner", {
        "id": "id", "name": "name", "vat_number": "vat", "email": "email", "phone": "phone",
        "street": "street", "city": "city", "postal_code": "zip", "reference": "ref",
        "credit_limit": "credit_limit", "balance": "credit"}),
    EntitySetSpec("bank-accounts", "res.partner.bank", {
        "id": "id", "customer_id": "partner_id", "iban": "acc_number", "bank_name": "bank_id"}),
    EntitySetSpec("orders", "sale.order", {
        "id": "id", "number": "name", "customer_id": "partner_id", "ordered_at": "date_order",
        "promised_at": "commitment_date", "status": "state", "amount_untaxed": "amount_untaxed",
        "amount_total": "amount_total", "currency": "currency_id"}),
    EntitySetSpec("invoices", "account.move", {
        "id": "id", "number": "name", "kind": "move_type", "status": "state",
        "customer_id": "partner_id", "order_number": "invoice_origin",
        "invoice_date": "invoice_date", "due_date": "invoice_date_due",
        "amount_total": "amount_total", "amount_due": "amount_residual",
        "payment_status": "payment_state", "currency": "currency_id"}),
    EntitySetSpec("shipments", "stock.picking", {
        "id": "id", "reference": "name", "customer_id": "partner_id",
        "order_number": "origin", "order_id": "sale_id", "kind": "picking_type_code",
        "status": "state", "scheduled_at": "scheduled_date", "deadline": "date_deadline",
        "done_at": "date_done", "carrier": "carrier_id",
        "tracking_number": "carrier_tracking_ref"}),
]
# Error code and message of each injected fault status, as the API's own errors of
# that status have them. Any other status gets _SERVER_ERROR.
FAULT_ERRORS = {
    400: ("invalid_parameter", "a query parameter is invalid"),
    401: ("unauthorized", "the API key is missing or invalid"),
    404: ("not_found", "the resource or record does not exist"),
    414: ("uri_too_long", f"the request URL is longer than {MAX_URL_BYTES} bytes"),
}
_SERVER_ERROR = ("server_error", "an unexpected error occurred")
# Fields whose Odoo value is "YYYY-MM-DD HH:MM:SS" in UTC; the API writes them as ISO 8601.
DATETIME_FIELDS = frozenset({"ordered_at", "promised_at", "scheduled_at", "deadline",
                             "done_at"})


class ApiError(Exception):
    """A request the API rejects, with the HTTP status and error code to return."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Page:
    """One page of a collection read and what the request log keeps of it."""

    rows: list[dict[str, Any]]
    next_cursor: str | None
    keys: int
    fields: list[str] | None
    filter: str | None


class RestFake:
    """State of one fake REST system; tests reach it as ``app.state.fake``.

    ``resources`` maps each resource name to its records. ``api_key`` is the
    only accepted key, sent as ``Authorization: Bearer`` or in the
    ``X-API-Key`` header, which wins when both are sent. None serves without
    authentication.
    """

    def __init__(self, resources: Mapping[str, list[Record]], api_key: str | None) -> None:
        self.resources = dict(resources)
        self.api_key = api_key
        self.control = DemoControl()
        self._cursors: dict[str, tuple[str, list[Record], list[str] | None, str | None]] = {}

    def read_collection(self, resource: str, params: QueryParams) -> Page:
        """Return one page of a collection read; raises ``ApiError`` for an invalid request."""
        records = self._records(resource)
        limit = _page_size(params)
        cursor = params.get("cursor")
        if cursor is not None:
            if "offset" in params:
                raise ApiError(400, "invalid_parameter", "cursor and offset cannot be combined; "
                               "send one of them")
            return self._resume(resource, cursor, limit)

        fields = _field_list(params, records, resource)
        filters = {name: _values(params, name) for name in params
                   if name not in CONTROL_PARAMETERS}
        rows = records
        for name, values in filters.items():
            _check_field(name, records, resource)
            rows = [r for r in rows if _text(r.get(name)) in values]
        keys = sum(len(values) for name, values in filters.items() if name in KEY_FIELDS)
        if "ids" in params:
            ids = _values(params, "ids")
            if len(ids) > MAX_IDS:
                raise ApiError(400, "too_many_ids", f"ids lists {len(ids)} values; send at most "
                               f"{MAX_IDS} per request")
            keys = len(ids)
            rows = [r for r in rows if _text(r.get("id")) in ids]
        condition = "; ".join(_condition_text(n, v) for n, v in filters.items()) or None
        rows = _sorted(rows, params, resource)
        rows = rows[_offset(params):]
        token = self._park(resource, rows[limit:], fields, condition)
        return Page([_shape(r, fields) for r in rows[:limit]], token, keys, fields, condition)

    def read_item(self, resource: str, identifier: str, params: QueryParams) -> dict[str, Any]:
        """Return one record in the requested fields; raises ``ApiError`` when the id is unknown."""
        records = self._records(resource)
        fields = _field_list(params, records, resource)
        for record in records:
            if _text(record["id"]) == identifier:
                return _shape(record, fields)
        raise ApiError(404, "not_found", f"{resource} has no record with id {identifier!r}")

    def _records(self, resource: str) -> list[Record]:
        records = self.resources.get(resource)
        if records is None:
            raise ApiError(404, "unknown_resource", f"there is no resource {resource!r}; use one "
                           f"of {', '.join(self.resources)}")
        return records

    def _park(self, resource: str, rest: list[Record], fields: list[str] | None,
              condition: str | None) -> str | None:
        if not rest:
            return None
        token = secrets.token_urlsafe(12)
        self._cursors[token] = (resource, rest, fields, condition)
        while len(self._cursors) > MAX_OPEN_CURSORS:
            del self._cursors[next(iter(self._cursors))]
        return token

    def _resume(self, resource: str, cursor: str, limit: int) -> Page:
        state = self._cursors.pop(cursor, None)
        if state is None or state[0] != resource:
            raise ApiError(400, "invalid_cursor", "the cursor is invalid or expired; start "
                           "again without a cursor")
        _resource, rows, fields, condition = state
        token = self._park(resource, rows[limit:], fields, condition)
        return Page([_shape(r, fields) for r in rows[:limit]], token, 0, fields, condition)


def _values(params: QueryParams, name: str) -> set[str]:
    values: set[str] = set()
    for item in params.getlist(name):
        values.update(value for value in item.split(",") if value)
    return values


def _field_list(params: QueryParams, records: list[Record], resource: str) -> list[str] | None:
    if "fields" not in params:
        return None
    names = [name for item in params.getlist("fields") for name in item.split(",") if name]
    for name in names:
        _check_field(name, records, resource)
    return names


def _check_field(name: str, records: list[Record], resource: str) -> None:
    if records and name not in records[0]:
        raise ApiError(400, "invalid_field", f"{resource} has no field {name!r}")


def _sorted(records: list[Record], params: QueryParams, resource: str) -> list[Record]:
    terms = [term for item in params.getlist("sort") for term in item.split(",") if term]
    ordered = list(records)
    # Stable sorts from the last term to the first.
    for term in reversed(terms):
        name = term.removeprefix("-")
        _check_field(name, records, resource)
        ordered.sort(key=_sort_key(name), reverse=term.startswith("-"))
    return ordered


def _sort_key(name: str) -> Callable[[Record], tuple[bool, Any]]:
    def key(record: Record) -> tuple[bool, Any]:
        value = record.get(name)
        return (value is None, 0 if value is None else value)
    return key


def _page_size(params: QueryParams) -> int:
    text = params.get("limit", str(DEFAULT_PAGE_SIZE))
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_SIZE:
        raise ApiError(400, "invalid_parameter", f"limit {text!r} is invalid; use a whole number "
                       f"from 1 to {MAX_PAGE_SIZE}")
    return int(text)


def _offset(params: QueryParams) -> int:
    text = params.get("offset", "0")
    if not text.isdigit():
        raise ApiError(400, "invalid_parameter", f"offset {text!r} is invalid; use a whole "
                       "number from 0")
    return int(text)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _condition_text(name: str, values: set[str]) -> str:
    if len(values) > 5:
        return f"{name} in ({len(values)} values)"
    return f"{name} in ({','.join(sorted(values))})"


def _shape(record: Record, fields: list[str] | None) -> dict[str, Any]:
    names = list(record) if fields is None else ["id", *(f for f in fields if f != "id")]
    return {name: _wire(name, record.get(name)) for name in names}


def _wire(name: str, value: Any) -> Any:
    if name in DATETIME_FIELDS and isinstance(value, str):
        return value.replace(" ", "T") + "Z"
    return value


def error_body(status: int, code: str, message: str) -> bytes:
    """Return the API's error body."""
    return orjson.dumps({"error": {"status": status, "code": code, "message": message}})


def _error(error: ApiError) -> Response:
    return Response(error_body(error.status, error.code, error.message),
                    status_code=error.status, media_type="application/json",
                    headers=error.headers)


def create_rest_app(data: DemoData, *, api_key: str | None) -> Starlette:
    """Build the fake REST ERP; its ``RestFake`` is ``app.state.fake``."""
    resources = {name: entity_set.records
                 for name, entity_set in build_sets(data, REST_RESOURCES).items()}
    return rest_app(resources, openapi_document(
        {spec.name: list(spec.properties) for spec in REST_RESOURCES}, **openapi_limits()),
        api_key=api_key)


def openapi_limits() -> dict[str, Any]:
    """Return the path, limits and key header that the OpenAPI document states."""
    return {"api_path": API_PATH, "max_ids": MAX_IDS, "max_page_size": MAX_PAGE_SIZE,
            "default_page_size": DEFAULT_PAGE_SIZE, "api_key_header": API_KEY_HEADER}


def rest_app(resources: Mapping[str, list[Record]], document: dict[str, Any], *,
             api_key: str | None) -> Starlette:
    """Serve ``resources`` as a fake REST system, with ``document`` at ``/openapi.json``."""
    fake = RestFake(resources, api_key)
    routes = _Routes(fake, document)
    app = Starlette(routes=[
        Route("/openapi.json", routes.openapi, methods=["GET"]),
        Route(API_PATH + "/{resource}", routes.collection, methods=["GET"]),
        Route(API_PATH + "/{resource}/{identifier}", routes.item, methods=["GET"]),
        *control_routes(fake.control),
    ])
    app.state.fake = fake
    app.state.control = fake.control
    return app


class _Routes:
    def __init__(self, fake: RestFake, document: dict[str, Any]) -> None:
        self.fake = fake
        self.document = orjson.dumps(document)

    async def openapi(self, request: Request) -> Response:
        return Response(self.document, media_type="application/json")

    async def guard(self, request: Request) -> Response | None:
        """Apply the fault delay, the key check, the fault status and body, and the URL cap.

        Raises ``ApiError`` for a rejected request, and returns the fault body's
        response when one is set.
        """
        control = self.fake.control
        if control.fault_delay:
            await asyncio.sleep(control.fault_delay)
        if self.fake.api_key is not None:
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
            presented = request.headers.get(API_KEY_HEADER.lower(), bearer)
            if not secrets.compare_digest(presented.encode(), self.fake.api_key.encode()):
                raise ApiError(401, "unauthorized", "the API key is missing or invalid; send it "
                               f"as Authorization: Bearer <key> or in {API_KEY_HEADER}")
        if control.fault_status == 429:
            raise ApiError(429, "rate_limited", "too many requests; retry after the delay in "
                           "Retry-After", {"Retry-After": str(RETRY_AFTER_SECONDS)})
        if control.fault_status is not None:
            code, message = FAULT_ERRORS.get(control.fault_status, _SERVER_ERROR)
            raise ApiError(control.fault_status, code, message)
        faulty = body_fault(control)
        if faulty is not None:
            return faulty
        if len(str(request.url)) > MAX_URL_BYTES:
            raise ApiError(414, "uri_too_long", f"the request URL is longer than {MAX_URL_BYTES} "
                           "bytes; send fewer ids per request")
        return None

    async def collection(self, request: Request) -> Response:
        resource = request.path_params["resource"]
        try:
            faulty = await self.guard(request)
            if faulty is not None:
                self._log(request, resource, faulty.status_code)
                return faulty
            page = self.fake.read_collection(resource, request.query_params)
        except ApiError as exc:
            self._log(request, resource, exc.status)
            return _error(exc)
        self.fake.control.record(RequestLogEntry(
            method="GET", path=request.url.path, entity=resource, keys=page.keys,
            fields=page.fields, status=200, filter=page.filter))
        next_link = None
        if page.next_cursor is not None:
            next_link = (f"{str(request.base_url).rstrip('/')}{API_PATH}/{resource}"
                         f"?cursor={page.next_cursor}&limit={_page_size(request.query_params)}")
        body = {"data": page.rows, "meta": {"next_cursor": page.next_cursor},
                "links": {"next": next_link}}
        return Response(orjson.dumps(body), media_type="application/json")

    async def item(self, request: Request) -> Response:
        resource = request.path_params["resource"]
        try:
            faulty = await self.guard(request)
            if faulty is not None:
                self._log(request, resource, faulty.status_code)
                return faulty
            row = self.fake.read_item(resource, request.path_params["identifier"],
                                      request.query_params)
        except ApiError as exc:
            self._log(request, resource, exc.status)
            return _error(exc)
        self.fake.control.record(RequestLogEntry(
            method="GET", path=request.url.path, entity=resource, keys=1,
            fields=_field_names(request.query_params), status=200))
        return Response(orjson.dumps({"data": row}), media_type="application/json")

    def _log(self, request: Request, resource: str, status: int) -> None:
        self.fake.control.record(RequestLogEntry(
            method="GET", path=request.url.path, entity=resource, keys=0,
            fields=_field_names(request.query_params), status=status))


def _field_names(params: QueryParams) -> list[str] | None:
    if "fields" not in params:
        return None
    return [name for item in params.getlist("fields") for name in item.split(",") if name]
