"""A fake SAP S/4HANA OData 2.0 service over the demo ERP records.

It serves ``/sap/opu/odata/sap/API_FONTE_DEMO/<entity set>``, ``$batch`` and
``$metadata`` behind Basic auth. Like an SAP Gateway it returns JSON as
``{"d": {"results": [...]}}`` with ``__metadata`` on every row, pages on the
server with opaque ``$skiptoken`` links in ``__next``, writes
``Edm.Decimal`` values as strings (``"1190.00"``) and dates as
``/Date(<ms>)/`` (date-only) or ``/Date(<ms>+0000)/`` (timestamps), returns
``__count`` as a string for ``$inlinecount=allpages``, answers 414 for a URL
over 8 KB and writes errors as ``{"error": {"code", "message": {"lang",
"value"}, "innererror": {...}}}``. A ``$batch`` POST needs the CSRF token and
session cookie that a GET with ``x-csrf-token: fetch`` returns; without them
it gets 403 with ``x-csrf-token: Required``. ``SAP_SETS`` declares its names
for the ERP's records.

Differences from a real S/4HANA service: keys are the demo's integers
(``Edm.Int32``), where SAP uses zero-padded strings, and the sets are one
demo service rather than API_BUSINESS_PARTNER and the sales APIs.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
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

SERVICE = "API_FONTE_DEMO"
SERVICE_PATH = f"/sap/opu/odata/sap/{SERVICE}"
SESSION_COOKIE = "SAP_SESSIONID_FON_100"
MAX_URL_BYTES = 8192
PAGE_SIZE = 1000
RETRY_AFTER_SECONDS = 7
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_JSON = {"Content-Type": "application/json"}

SAP_SETS = [
    EntitySetSpec("A_Customer", "res.partner", {
        "Customer": "id", "CustomerName": "name", "VATRegistration": "vat",
        "EmailAddress": "email", "PhoneNumber": "phone", "StreetName": "street",
        "CityName": "city", "PostalCode": "zip", "BPCustomerNumber": "ref",
        "CreditLimitAmount": "credit_limit", "CreditExposureAmount": "credit"}),
    EntitySetSpec("A_CustomerBankAccount", "res.partner.bank", {
        "BankIdentification": "id", "Customer": "partner_id", "IBAN": "acc_number",
        "BankName": "bank_id"}),
    EntitySetSpec("A_SalesOrder", "sale.order", {
        "SalesOrder": "id", "ExternalDocumentID": "name", "SoldToParty": "partner_id",
        "CreationDateTime": "date_order", "RequestedDeliveryDateTime": "commitment_date",
        "OverallSDProcessStatus": "state", "TotalNetAmount": "amount_untaxed",
        "TotalGrossAmount": "amount_total", "TransactionCurrency": "currency_id"}),
    EntitySetSpec("A_BillingDocument", "account.move", {
        "BillingDocument": "id", "BillingDocumentNumber": "name",
        "BillingDocumentType": "move_type", "OverallBillingStatus": "state",
        "PayerParty": "partner_id", "SalesDocument": "invoice_origin",
        "BillingDocumentDate": "invoice_date", "NetDueDate": "invoice_date_due",
        "TotalGrossAmount": "amount_total", "OpenAmount": "amount_residual",
        "PaymentStatus": "payment_state", "TransactionCurrency": "currency_id"}),
    EntitySetSpec("A_OutbDeliveryHeader", "stock.picking", {
        "DeliveryDocument": "id", "DeliveryDocumentNumber": "name", "ShipToParty": "partner_id",
        "ReferenceSDDocument": "origin", "SalesOrder": "sale_id",
        "DeliveryDocumentType": "picking_type_code", "OverallGoodsMovementStatus": "state",
        "PlannedGoodsIssueDateTime": "scheduled_date", "DeliveryDeadlineDateTime": "date_deadline",
        "ActualGoodsMovementDateTime": "date_done", "ShippingCarrier": "carrier_id",
        "TrackingNumber": "carrier_tracking_ref"}),
]


def wire(value: Any) -> Any:
    """Return an internal value as SAP writes it in JSON."""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, str) and _DATETIME.match(value):
        moment = datetime.fromisoformat(value).replace(tzinfo=UTC)
        return f"/Date({int(moment.timestamp() * 1000)}+0000)/"
    if isinstance(value, str) and _DATE.match(value):
        moment = datetime.fromisoformat(value).replace(tzinfo=UTC)
        return f"/Date({int(moment.timestamp() * 1000)})/"
    return value


def edm_type(entity_set: EntitySet, prop: str) -> str:
    """Return the EDM type under which the fake writes ``prop``."""
    kind = entity_set.types[prop]
    if kind != "str":
        return {"int": "Edm.Int32", "decimal": "Edm.Decimal", "bool": "Edm.Boolean"}[kind]
    sample = next((r[prop] for r in entity_set.records if r.get(prop) is not None), "")
    if _DATETIME.match(str(sample)):
        return "Edm.DateTimeOffset"
    if _DATE.match(str(sample)):
        return "Edm.DateTime"
    return "Edm.String"


def metadata_document(sets: Mapping[str, EntitySet]) -> bytes:
    """Return a minimal EDMX 1.0 ``$metadata`` document describing ``sets``.

    It contains what an OData 2.0 client library needs to read the sets: each
    entity type with its key and typed, nullable properties, and one entity
    container. Navigation properties are left out, because the fake serves none.
    """
    types, container = [], []
    for name, entity_set in sets.items():
        key = next(iter(entity_set.spec.properties))
        properties = []
        for prop in entity_set.spec.properties:
            edm = edm_type(entity_set, prop)
            facets = ' Precision="15" Scale="2"' if edm == "Edm.Decimal" else ""
            if edm == "Edm.DateTime":
                facets = ' Precision="0" sap:display-format="Date"'
            nullable = "false" if prop == key else "true"
            properties.append(f'<Property Name="{prop}" Type="{edm}" '
                              f'Nullable="{nullable}"{facets}/>')
        types.append(f'<EntityType Name="{name}Type"><Key><PropertyRef Name="{key}"/></Key>'
                     + "".join(properties) + "</EntityType>")
        container.append(f'<EntitySet Name="{name}" EntityType="{SERVICE}.{name}Type"/>')
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<edmx:Edmx Version="1.0" xmlns:edmx="http://schemas.microsoft.com/ado/2007/06/edmx" '
        'xmlns:m="http://schemas.microsoft.com/ado/2007/08/dataservices/metadata" '
        'xmlns:sap="http://www.sap.com/Protocols/SAPData">'
        '<edmx:DataServices m:DataServiceVersion="2.0">'
        f'<Schema Namespace="{SERVICE}" xml:lang="en" '
        'xmlns="http://schemas.microsoft.com/ado/2008/09/edm">'
        + "".join(types)
        + f'<EntityContainer Name="{SERVICE}_Entities" m:IsDefaultEntityContainer="true">'
        + "".join(container)
        + "</EntityContainer></Schema></edmx:DataServices></edmx:Edmx>"
    ).encode()


def error_body(code: str, message: str) -> bytes:
    """Return an SAP Gateway error body; tests check that its text never reaches a client."""
    return orjson.dumps({"error": {
        "code": code, "message": {"lang": "en", "value": message},
        "innererror": {"transactionid": secrets.token_hex(16).upper(),
                       "errordetails": [{"code": code, "message": message, "severity": "error",
                                         "target": ""}]}}})


class SapFake:
    """State of one fake SAP system; tests reach it as ``app.state.fake``.

    ``page_size`` is the server-side page size, which a client cannot change.
    ``sessions`` maps session cookie -> CSRF token.
    """

    def __init__(self, data: DemoData, user: str, password: str) -> None:
        self.sets = build_sets(data, SAP_SETS)
        self.user = user
        self.password = password
        self.control = DemoControl()
        self.pager = Pager()
        self.page_size = PAGE_SIZE
        self.sessions: dict[str, str] = {}

    def expire_tokens(self) -> None:
        """Invalidate every session and CSRF token, so the next ``$batch`` gets a 403."""
        self.sessions.clear()

    def open_session(self) -> tuple[str, str]:
        """Return a new (session cookie, CSRF token) pair."""
        session, token = secrets.token_urlsafe(16), secrets.token_urlsafe(18)
        self.sessions[session] = token
        return session, token

    def read(self, set_name: str, params: Mapping[str, str], base: str,
             path: str) -> tuple[int, dict[str, str], bytes]:
        """Run one GET of an entity set, log it and return (status, headers, body)."""
        entity_set = self.sets.get(set_name)
        try:
            if entity_set is None:
                raise QueryError(404, "/IWBEP/CM_MGW_RT/021",
                                 f"Resource not found for segment '{set_name}'")
            return self._read(entity_set, params, base, path)
        except QueryError as exc:
            log_read(self.control, "GET", path, set_name, None, exc.status)
            return exc.status, dict(_JSON), error_body(exc.code, exc.message)

    def _read(self, entity_set: EntitySet, params: Mapping[str, str], base: str,
              path: str) -> tuple[int, dict[str, str], bytes]:
        name = entity_set.spec.name
        count = params.get("$inlinecount", "none")
        if count not in ("none", "allpages"):
            raise QueryError(400, "/IWBEP/CM_MGW_RT/004", f"$inlinecount {count!r} is invalid")
        if "$skiptoken" in params:
            rows, select = self.pager.resume(params["$skiptoken"])
            keys = 0
        else:
            query_params = {k: v for k, v in params.items() if k not in ("$top", "$skip")}
            query = run_query(entity_set, query_params, "2.0")
            rows = _window(query.records, params.get("$skip"), params.get("$top"))
            select, keys = query.select, query.keys
        body: dict[str, Any] = {"results": [self._row(entity_set, r, select, base)
                                            for r in rows[:self.page_size]]}
        if count == "allpages":
            body["__count"] = str(len(rows))
        if len(rows) > self.page_size:
            token = self.pager.park(rows[self.page_size:], select)
            body["__next"] = f"{base}{SERVICE_PATH}/{name}?$skiptoken={token}"
        log_read(self.control, "GET", path, name, Query(select, keys, rows), 200)
        return 200, dict(_JSON), orjson.dumps({"d": body})

    def _row(self, entity_set: EntitySet, record: Record, select: list[str] | None,
             base: str) -> dict[str, Any]:
        name = entity_set.spec.name
        key_property = next(iter(entity_set.spec.properties))
        uri = f"{base}{SERVICE_PATH}/{name}({record[key_property]})"
        row: dict[str, Any] = {"__metadata": {"id": uri, "uri": uri,
                                              "type": f"{SERVICE}.{name}Type"}}
        for prop in select if select is not None else list(record):
            row[prop] = wire(record.get(prop))
        return row


def _window(records: list[Record], skip: str | None, top: str | None) -> list[Record]:
    for option, value in (("$skip", skip), ("$top", top)):
        if value is not None and not value.isdigit():
            raise QueryError(400, "/IWBEP/CM_MGW_RT/004", f"{option} {value!r} is not a whole "
                             "number")
    start = int(skip) if skip is not None else 0
    end = start + int(top) if top is not None else None
    return records[start:end]


def _error(status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status,
                    media_type="application/json", headers=headers)


def create_sap_app(data: DemoData, *, user: str, password: str) -> Starlette:
    """Build the fake SAP app; its ``SapFake`` is ``app.state.fake``."""
    fake = SapFake(data, user, password)
    routes = _Routes(fake)
    app = Starlette(routes=[
        Route(f"{SERVICE_PATH}/", routes.service_document, methods=["GET"]),
        Route(f"{SERVICE_PATH}/$metadata", routes.metadata, methods=["GET"]),
        Route(f"{SERVICE_PATH}/$batch", routes.batch, methods=["POST"]),
        Route(SERVICE_PATH + "/{entity_set}", routes.entity_set, methods=["GET"]),
        *control_routes(fake.control),
    ])
    app.state.fake = fake
    app.state.control = fake.control
    return app


class _Routes:
    def __init__(self, fake: SapFake) -> None:
        self.fake = fake

    def _authorized(self, request: Request) -> bool:
        scheme, _space, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _colon, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return (secrets.compare_digest(user, self.fake.user)
                and secrets.compare_digest(password, self.fake.password))

    async def guard(self, request: Request) -> Response | None:
        """Apply the fault delay, Basic auth, the injected faults, the URL cap and JSON-only."""
        control = self.fake.control
        if control.fault_delay:
            await asyncio.sleep(control.fault_delay)
        if not self._authorized(request):
            return Response(b"Logon failed", status_code=401, media_type="text/plain",
                            headers={"WWW-Authenticate": 'Basic realm="SAP NetWeaver '
                                     'Application Server [FON/100]"'})
        if control.fault_status == 429:
            return _error(429, "/IWBEP/CM_MGW_RT/429", "Too many requests",
                          {"Retry-After": str(RETRY_AFTER_SECONDS)})
        if control.fault_status is not None:
            return _error(control.fault_status, "/IWBEP/CM_MGW_RT/000",
                          "An unexpected exception occurred")
        faulty = body_fault(control)
        if faulty is not None:
            return faulty
        if len(str(request.url)) > MAX_URL_BYTES:
            return _error(414, "/IWFND/CM_BEC/076", "Request URI too long")
        wants_json = (request.query_params.get("$format") == "json"
                      or "json" in request.headers.get("accept", ""))
        if request.method == "GET" and not wants_json:
            return _error(415, "/IWBEP/CM_MGW_RT/010", "this fake writes JSON only; add "
                          "$format=json or Accept: application/json")
        return None

    async def service_document(self, request: Request) -> Response:
        refused = await self.guard(request)
        if refused is not None:
            log_read(self.fake.control, "GET", request.url.path, None, None,
                     refused.status_code)
            return refused
        log_read(self.fake.control, "GET", request.url.path, None, None, 200)
        body = orjson.dumps({"d": {"EntitySets": sorted(self.fake.sets)}})
        response = Response(body, media_type="application/json")
        if request.headers.get("x-csrf-token", "").lower() == "fetch":
            session, token = self.fake.open_session()
            response.headers["x-csrf-token"] = token
            response.set_cookie(SESSION_COOKIE, session, path="/", httponly=True)
        return response

    async def metadata(self, request: Request) -> Response:
        if not self._authorized(request):
            return Response(b"Logon failed", status_code=401, media_type="text/plain")
        log_read(self.fake.control, "GET", request.url.path, None, None, 200)
        return Response(metadata_document(self.fake.sets),
                        media_type="application/xml")

    async def entity_set(self, request: Request) -> Response:
        refused = await self.guard(request)
        set_name = request.path_params["entity_set"]
        if refused is not None:
            log_read(self.fake.control, "GET", request.url.path, set_name, None,
                     refused.status_code)
            return refused
        status, headers, body = self.fake.read(set_name, request.query_params, _base(request),
                                               request.url.path)
        return Response(body, status_code=status, headers=headers)

    def _csrf_valid(self, request: Request) -> bool:
        session = request.cookies.get(SESSION_COOKIE)
        token = request.headers.get("x-csrf-token", "")
        expected = self.fake.sessions.get(session or "")
        return expected is not None and secrets.compare_digest(token, expected)

    async def batch(self, request: Request) -> Response:
        refused = await self.guard(request)
        path = request.url.path
        if refused is None and not self._csrf_valid(request):
            refused = _error(403, "/IWFND/CM_BEC/026", "CSRF token validation failed",
                             {"x-csrf-token": "Required"})
        if refused is not None:
            log_read(self.fake.control, "POST", path, "$batch", None, refused.status_code)
            return refused
        boundary = _boundary(request.headers.get("content-type", ""))
        try:
            if boundary is None:
                raise QueryError(400, "/IWFND/CM_BEC/030", "the batch needs a multipart/mixed "
                                 "content type with a boundary")
            parts = parse_batch_request(await request.body(), boundary)
        except QueryError as exc:
            log_read(self.fake.control, "POST", path, "$batch", None, exc.status)
            return _error(exc.status, exc.code, exc.message)
        log_read(self.fake.control, "POST", path, "$batch", None, 200)
        first_part = len(self.fake.control.log)
        answers = [self.part(method, target, _base(request)) for method, target, _h in parts]
        for entry in self.fake.control.log[first_part:]:
            entry.in_batch = True
        reply = f"batchresponse_{secrets.token_hex(8)}"
        return Response(encode_batch_response(reply, answers),
                        media_type=f"multipart/mixed; boundary={reply}")

    def part(self, method: str, target: str, base: str) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(target)
        set_name = url.path.rstrip("/").rsplit("/", 1)[-1]
        if method != "GET":
            return 405, dict(_JSON), error_body("/IWBEP/CM_MGW_RT/005",
                                                "this fake answers only GET requests in a batch")
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        return self.fake.read(set_name, params, base, f"{SERVICE_PATH}/{set_name}")


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _boundary(content_type: str) -> str | None:
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/mixed") or found is None:
        return None
    return found.group(1)
