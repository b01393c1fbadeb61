"""A fake Microsoft Dataverse Web API (OData 4.0) over the demo ERP records.

It serves ``/api/data/v9.2/<entity set>`` and ``$batch``, and issues tokens
at ``/oauth2/v2.0/token`` for the client credentials it was built with.
Like Dataverse it rejects ``$skip``, ``$search``, ``$format`` and the OData
4.01 ``in`` operator, answers 414 for a URL over 32 KB, pages with
``Prefer: odata.maxpagesize`` and opaque ``$skiptoken`` next links, ignores
``$top`` when a page size is set, always returns the primary key and
``@odata.etag``, and answers errors as ``{"error": {"code", "message"}}``.
``DATAVERSE_SETS`` declares its names for the ERP's records.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.demo.control import DemoControl, body_fault, control_routes
from gateway.demo.data import DemoData, Record
from gateway.demo.odata_fake import (
    EntitySet,
    EntitySetSpec,
    Pager,
    Query,
    QueryError,
    build_sets,
    encode_batch_response,
    log_read,
    parse_batch_request,
    run_query,
)

SERVICE_PATH = "/api/data/v9.2"
MAX_URL_BYTES = 32_768
MAX_PAGE_SIZE = 5000
RETRY_AFTER_SECONDS = 7
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_MAX_PAGE = re.compile(r"odata\.maxpagesize=(\d+)")

DATAVERSE_SETS = [
    EntitySetSpec("accounts", "res.partner", {
        "fonte_partnerid": "id", "name": "name", "fonte_vatnumber": "vat",
        "emailaddress1": "email", "telephone1": "phone", "address1_line1": "street",
        "address1_city": "city", "address1_postalcode": "zip", "accountnumber": "ref",
        "creditlimit": "credit_limit", "fonte_totalreceivable": "credit"}),
    EntitySetSpec("fonte_bankaccounts", "res.partner.bank", {
        "fonte_bankaccountid": "id", "fonte_partnerid": "partner_id", "fonte_iban": "acc_number",
        "fonte_bankname": "bank_id"}),
    EntitySetSpec("salesorders", "sale.order", {
        "fonte_orderid": "id", "ordernumber": "name", "fonte_partnerid": "partner_id",
        "fonte_orderdate": "date_order", "requestdeliveryby": "commitment_date",
        "fonte_state": "state", "totallineitemamount": "amount_untaxed",
        "totalamount": "amount_total", "fonte_currencycode": "currency_id"}),
    EntitySetSpec("invoices", "account.move", {
        "fonte_invoiceid": "id", "invoicenumber": "name", "fonte_movetype": "move_type",
        "fonte_state": "state", "fonte_partnerid": "partner_id",
        "fonte_ordernumber": "invoice_origin", "fonte_invoicedate": "invoice_date",
        "duedate": "invoice_date_due", "totalamount": "amount_total",
        "fonte_amountdue": "amount_residual", "fonte_paymentstate": "payment_state",
        "fonte_currencycode": "currency_id"}),
    EntitySetSpec("fonte_shipments", "stock.picking", {
        "fonte_shipmentid": "id", "fonte_name": "name", "fonte_partnerid": "partner_id",
        "fonte_ordernumber": "origin", "fonte_orderid": "sale_id",
        "fonte_pickingtype": "picking_type_code", "fonte_state": "state",
        "fonte_scheduleddate": "scheduled_date", "fonte_deadline": "date_deadline",
        "fonte_donedate": "date_done", "fonte_carrier": "carrier_id",
        "fonte_trackingnumber": "carrier_tracking_ref"}),
]
# Each entity set's primary key, a GUID derived from the Odoo id, which every row carries.
PRIMARY_KEYS = {spec.name: spec.name.removesuffix("s").removeprefix("fonte_") + "id"
                for spec in DATAVERSE_SETS}


def _guid(record: Record) -> str:
    return f"6a1b2c3d-0000-4000-8000-{record['id']:012d}"


class DataverseFake:
    """State of one fake environment; tests reach it as ``app.state.fake``."""

    def __init__(self, data: DemoData, client_id: str, client_secret: str) -> None:
        extra = {spec.name: {PRIMARY_KEYS[spec.name]: _guid} for spec in DATAVERSE_SETS}
        self.sets = build_sets(data, DATAVERSE_SETS, extra)
        self.client_id = client_id
        self.client_secret = client_secret
        self.control = DemoControl()
        self.pager = Pager()
        self.tokens: set[str] = set()

    def expire_tokens(self) -> None:
        """Invalidate every issued token, so the next read gets a 401."""
        self.tokens.clear()

    def read(self, set_name: str, params: Mapping[str, str], prefer: str, base: str,
             method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        """Answer one GET of an entity set and log it."""
        entity_set = self.sets.get(set_name)
        try:
            if entity_set is None:
                raise QueryError(404, "0x80060888",
                                 f"resource not found for the segment {set_name!r}")
            status, headers, body = self._read(entity_set, params, prefer, base, method, path)
        except QueryError as exc:
            log_read(self.control, method, path, set_name, None, exc.status)
            return exc.status, {"Content-Type": "application/json"}, error_body(exc.code,
                                                                                 exc.message)
        return status, headers, body

    def _read(self, entity_set: EntitySet, params: Mapping[str, str], prefer: str, base: str,
              method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        unsupported = sorted({"$skip", "$search", "$format"} & set(params))
        if unsupported:
            raise QueryError(400, "0x80060888", f"the query parameter {unsupported[0]} is not "
                             "supported")
        found = _MAX_PAGE.search(prefer)
        page_size = min(int(found.group(1)), MAX_PAGE_SIZE) if found else MAX_PAGE_SIZE
        if "$skiptoken" in params:
            rows, select = self.pager.resume(params["$skiptoken"])
            keys = 0
        else:
            query_params = dict(params)
            if found:
                query_params.pop("$top", None)  # Dataverse ignores $top with maxpagesize
            query = run_query(entity_set, query_params, "4.0")
            rows, select, keys = query.records, query.select, query.keys
        headers = {"Content-Type": "application/json", "OData-Version": "4.0"}
        if found:
            headers["Preference-Applied"] = f"odata.maxpagesize={page_size}"
        name = entity_set.spec.name
        body: dict[str, Any] = {"@odata.context": f"{base}{SERVICE_PATH}/$metadata#{name}",
                                "value": [self._row(name, r, select) for r in rows[:page_size]]}
        if len(rows) > page_size:
            token = self.pager.park(rows[page_size:], select)
            body["@odata.nextLink"] = f"{base}{SERVICE_PATH}/{name}?$skiptoken={token}"
        log_read(self.control, method, path, name, Query(select, keys, rows), 200)
        return 200, headers, orjson.dumps(body)

    def _row(self, set_name: str, record: Record, select: list[str] | None) -> dict[str, Any]:
        names = select if select is not None else list(record)
        row: dict[str, Any] = {"@odata.etag": f'W/"{abs(hash(record[PRIMARY_KEYS[set_name]]))}"'}
        for name in names:
            row[name] = _wire(record.get(name))
        row[PRIMARY_KEYS[set_name]] = record[PRIMARY_KEYS[set_name]]
        return row


def _wire(value: Any) -> Any:
    if isinstance(value, str) and _DATETIME.match(value):
        return value.replace(" ", "T") + "Z"
    return value


def error_body(code: str, message: str) -> bytes:
    """Return a Dataverse error body."""
    return orjson.dumps({"error": {"code": code, "message": message}})


def _error(status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status,
                    media_type="application/json", headers=headers)


def create_dataverse_app(data: DemoData, *, client_id: str, client_secret: str) -> Starlette:
    """Build the fake Dataverse app; its ``DataverseFake`` is ``app.state.fake``."""
    fake = DataverseFake(data, client_id, client_secret)
    routes = _Routes(fake)
    app = Starlette(routes=[
        Route("/oauth2/v2.0/token", routes.token, methods=["POST"]),
        Route(f"{SERVICE_PATH}/$batch", routes.batch, methods=["POST"]),
        Route(SERVICE_PATH + "/{entity_set}", routes.entity_set, methods=["GET"]),
        *control_routes(fake.control),
    ])
    app.state.fake = fake
    app.state.control = fake.control
    return app


class _Routes:
    def __init__(self, fake: DataverseFake) -> None:
        self.fake = fake

    async def token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode(errors="replace")))
        if form.get("grant_type") != "client_credentials":
            return Response(orjson.dumps({"error": "unsupported_grant_type"}), 400,
                            media_type="application/json")
        if (form.get("client_id") != self.fake.client_id
                or form.get("client_secret") != self.fake.client_secret):
            return Response(orjson.dumps({"error": "invalid_client"}), 401,
                            media_type="application/json")
        access = secrets.token_urlsafe(24)
        self.fake.tokens.add(access)
        return Response(orjson.dumps({"token_type": "Bearer", "expires_in": 3599,
                                      "access_token": access}), media_type="application/json")

    async def guard(self, request: Request) -> Response | None:
        """Apply the fault delay, the token check, the fault status and body, and the URL cap."""
        control = self.fake.control
        if control.fault_delay:
            await asyncio.sleep(control.fault_delay)
        authorization = request.headers.get("authorization", "")
        if authorization.removeprefix("Bearer ") not in self.fake.tokens:
            return _error(401, "0x80090006", "ExpiredAuthTicket: the token is invalid")
        if control.fault_status == 429:
            return _error(429, "0x80072322", "Number of requests exceeded the limit",
                          {"Retry-After": str(RETRY_AFTER_SECONDS)})
        if control.fault_status is not None:
            return _error(control.fault_status, "0x80040216", "An unexpected error occurred.")
        faulty = body_fault(control)
        if faulty is not None:
            return faulty
        if len(str(request.url)) > MAX_URL_BYTES:
            return _error(414, "", "the request URL is too long")
        return None

    async def entity_set(self, request: Request) -> Response:
        refused = await self.guard(request)
        set_name = request.path_params["entity_set"]
        if refused is not None:
            log_read(self.fake.control, "GET", request.url.path, set_name, None,
                     refused.status_code)
            return refused
        status, headers, body = self.fake.read(set_name, request.query_params,
                                               request.headers.get("prefer", ""),
                                               _base(request), "GET", request.url.path)
        return Response(body, status_code=status, headers=headers)

    async def batch(self, request: Request) -> Response:
        refused = await self.guard(request)
        path = request.url.path
        if refused is not None:
            log_read(self.fake.control, "POST", path, "$batch", None, refused.status_code)
            return refused
        boundary = _boundary(request.headers.get("content-type", ""))
        try:
            if boundary is None:
                raise QueryError(400, "0x80048d19", "the batch needs a multipart/mixed "
                                 "content type with a boundary")
            parts = parse_batch_request(await request.body(), boundary)
        except QueryError as exc:
            log_read(self.fake.control, "POST", path, "$batch", None, exc.status)
            return _error(exc.status, exc.code, exc.message)
        log_read(self.fake.control, "POST", path, "$batch", None, 200)
        first_part = len(self.fake.control.log)
        answers = [self.part(method, target, headers, _base(request))
                   for method, target, headers in parts]
        for entry in self.fake.control.log[first_part:]:
            entry.in_batch = True
        reply = f"batchresponse_{secrets.token_hex(8)}"
        return Response(encode_batch_response(reply, answers),
                        media_type=f"multipart/mixed; boundary={reply}")

    def part(self, method: str, target: str, headers: dict[str, str],
             base: str) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(target)
        set_name = url.path.rstrip("/").rsplit("/", 1)[-1]
        if method != "GET":
            return 405, {"Content-Type": "application/json"}, error_body(
                "0x80060888", "this fake answers only GET requests in a batch")
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        return self.fake.read(set_name, params, headers.get("prefer", ""), base, "GET",
                              f"{SERVICE_PATH}/{set_name}")


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _boundary(content_type: str) -> str | None:
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/mixed") or found is None:
        return None
    return found.group(1)
