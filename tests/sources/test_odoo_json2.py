"""Conformance of the two Odoo transports, JSON-RPC and JSON-2, and the JSON-2 specifics.

Every test that takes the ``upstream`` fixture runs once per transport: the
same request must give the same rows, the same calls in the demo server's
log and the same class of gateway error. Error cases that the demo server
cannot produce on demand come from an ``httpx.MockTransport``. For JSON-RPC
the mock accepts the login and sends the case's response to the
``execute_kw`` call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx
import pytest
from starlette.applications import Starlette

from gateway.catalog import Condition
from gateway.demo.data import DemoData
from gateway.demo.odoo import create_odoo_app
from gateway.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest, Many2one
from gateway.sources.odoo import (
    MAX_KEYS_PER_CALL,
    OdooError,
    OdooJson2Settings,
    OdooJson2Source,
    OdooJsonRpcSource,
    OdooSettings,
    OdooSource,
)

BASE_URL = "http://erp.test"
DB = "fonte_demo"
LOGIN = "gateway"
API_KEY = "test-api-key"
UID = 2
# Stands for the upstream's own error text, which may quote personal values
# and must never reach a gateway error message.
UPSTREAM_DETAIL = "upstream-detail-3f9c"

Responder = Callable[[httpx.Request], httpx.Response]


@dataclass(frozen=True)
class Upstream:
    """One Odoo transport and the handles a conformance test needs to drive it."""

    transport: str

    def source(self, client: httpx.AsyncClient, *, api_key: str = API_KEY,
               database: str = DB) -> OdooSource:
        if self.transport == "json2":
            settings = OdooJson2Settings(BASE_URL, database, api_key)
            return OdooJson2Source("erp", settings, client)
        return OdooJsonRpcSource("erp", OdooSettings(BASE_URL, database, LOGIN, api_key), client)

    def demo_source(self, app: Starlette, *, api_key: str = API_KEY,
                    database: str = DB) -> OdooSource:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        return self.source(client, api_key=api_key, database=database)

    def read_path(self, model: str) -> str:
        return f"/json/2/{model}/search_read" if self.transport == "json2" else "/jsonrpc"

    def mock_source(self, respond: Responder, *,
                    login: Any = UID) -> tuple[OdooSource, list[str]]:
        """Build a source whose reads get the response of ``respond``, and its list of calls.

        ``login`` is what JSON-RPC's ``authenticate`` returns: a uid, or False.
        """
        calls: list[str] = []

        def handler(request: httpx.Request) -> httpx.Response:
            if self.transport == "jsonrpc" and _service(request) == "common":
                calls.append("login")
                return httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "result": login})
            calls.append("read")
            return respond(request)

        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        return self.source(client), calls

    def result(self, value: Any) -> httpx.Response:
        """Build a successful response carrying ``value`` as this transport sends it."""
        body = value if self.transport == "json2" else {"jsonrpc": "2.0", "id": 1, "result": value}
        # json=None would send no body at all, so the JSON text is built here.
        return httpx.Response(200, content=json.dumps(body).encode(),
                              headers={"content-type": "application/json"})


def _service(request: httpx.Request) -> Any:
    return json.loads(request.content)["params"]["service"]


@pytest.fixture(params=["jsonrpc", "json2"])
def upstream(request: pytest.FixtureRequest) -> Upstream:
    return Upstream(request.param)


@pytest.fixture
def erp(demo_data: DemoData) -> Starlette:
    return create_odoo_app(demo_data, database=DB, login=LOGIN, api_key=API_KEY, uid=UID)


def read_calls(app: Starlette) -> list[tuple[str, str | None, int, list[str] | None, int]]:
    """Return the demo server's logged reads, JSON-RPC logins left out."""
    return [(entry.path, entry.entity, entry.keys, entry.fields, entry.status)
            for entry in app.state.control.log if entry.entity is not None]


def partner_request(*keys: int, attributes: tuple[str, ...] = ("id", "name")) -> FetchRequest:
    return FetchRequest(entity="res.partner", attributes=attributes, match="id", keys=keys)


# --- reads against the demo server ----------------------------------------------------------


@pytest.mark.parametrize(("size", "chunks"), [(1, [1]), (200, [200]), (5000, [5000]),
                                            (12000, [2000, 5000, 5000])])
async def test_batch_returns_exact_ids(upstream: Upstream, erp: Starlette, demo_data: DemoData,
                                       size: int, chunks: list[int]) -> None:
    existing = sorted(partner["id"] for partner in demo_data.erp["res.partner"])[:size]
    # Ids above every stored id pad the batch, so they must not come back.
    missing = list(range(100_001, 100_001 + size - len(existing)))
    request = partner_request(*existing, *missing, attributes=("id",))

    rows = await upstream.demo_source(erp).fetch(request)

    assert [row["id"] for row in rows] == existing
    assert sorted(keys for _path, _entity, keys, _fields, _status in read_calls(erp)) == chunks
    assert {path for path, *_ in read_calls(erp)} == {upstream.read_path("res.partner")}
    assert max(chunks) <= MAX_KEYS_PER_CALL


async def test_projection_sends_exact_fields(upstream: Upstream, erp: Starlette,
                                             demo_data: DemoData) -> None:
    partner_id = demo_data.erp["res.partner"][0]["id"]
    attributes = ("id", "name", "vat", "credit_limit")

    rows = await upstream.demo_source(erp).fetch(partner_request(partner_id,
                                                                 attributes=attributes))

    assert read_calls(erp) == [
        (upstream.read_path("res.partner"), "res.partner", 1, list(attributes), 200)]
    assert len(rows) == 1
    assert set(rows[0]) == set(attributes)


async def test_empty_values_become_none(upstream: Upstream, erp: Starlette,
                                        demo_data: DemoData) -> None:
    order = next(o for o in demo_data.erp["sale.order"] if o["commitment_date"] is None)
    request = FetchRequest(entity="sale.order", attributes=("id", "commitment_date"),
                           match="id", keys=(order["id"],))

    rows = await upstream.demo_source(erp).fetch(request)

    assert rows == [{"id": order["id"], "commitment_date": None}]


async def test_many2one_becomes_pair(upstream: Upstream, erp: Starlette,
                                     demo_data: DemoData) -> None:
    order = demo_data.erp["sale.order"][0]
    partner = next(p for p in demo_data.erp["res.partner"] if p["id"] == order["partner_id"])
    request = FetchRequest(entity="sale.order", attributes=("id", "partner_id"), match="id",
                           keys=(order["id"],))

    rows = await upstream.demo_source(erp).fetch(request)

    assert rows == [{"id": order["id"], "partner_id": Many2one(partner["id"], partner["name"])}]
    assert isinstance(rows[0]["partner_id"], Many2one)


async def test_where_order_limit_applied(upstream: Upstream, erp: Starlette,
                                         demo_data: DemoData) -> None:
    orders = [o for o in demo_data.erp["sale.order"] if o["state"] == "sale"]
    partner_id = max({o["partner_id"] for o in orders},
                     key=lambda pid: sum(o["partner_id"] == pid for o in orders))
    mine = sorted((o for o in orders if o["partner_id"] == partner_id), key=lambda o: o["id"])
    mine.sort(key=lambda o: str(o["date_order"]), reverse=True)
    request = FetchRequest(entity="sale.order", attributes=("id",), match="partner_id",
                           keys=(partner_id,), where=(Condition("state", "=", "sale"),),
                           order="date_order desc, id", limit=3)

    rows = await upstream.demo_source(erp).fetch(request)

    assert len(mine) > 3
    assert [row["id"] for row in rows] == [o["id"] for o in mine[:3]]


async def test_empty_projection_sends_nothing(upstream: Upstream, erp: Starlette) -> None:
    with pytest.raises(UpstreamRejected, match="without a field list"):
        await upstream.demo_source(erp).fetch(partner_request(1001, attributes=()))

    assert erp.state.control.log == []


# --- errors from the demo server --------------------------------------------------------------


async def test_demo_bad_key_names_setting(upstream: Upstream, erp: Starlette) -> None:
    with pytest.raises(UpstreamAuthFailed) as info:
        await upstream.demo_source(erp, api_key="wrong-key").fetch(partner_request(1001))

    message = str(info.value)
    assert type(info.value) is UpstreamAuthFailed
    assert "system 'erp' rejected the gateway's" in message
    assert "API key" in message
    assert "database" in message
    # One call and no retry: the JSON-RPC login or the JSON-2 read itself.
    assert len(erp.state.control.log) == 1


async def test_demo_unknown_model_rejected(upstream: Upstream, erp: Starlette) -> None:
    request = FetchRequest(entity="no.such.model", attributes=("id",), match="id", keys=(1,))

    with pytest.raises(UpstreamRejected, match="check the schema declaration"):
        await upstream.demo_source(erp).fetch(request)


async def test_demo_unknown_field_hidden(upstream: Upstream, erp: Starlette) -> None:
    with pytest.raises(UpstreamRejected, match=r"builtins\.ValueError") as info:
        await upstream.demo_source(erp).fetch(partner_request(1001,
                                                              attributes=("id", "no_such_field")))

    assert "no_such_field" not in str(info.value)


async def test_demo_invalid_order_rejected(upstream: Upstream, erp: Starlette) -> None:
    request = FetchRequest(entity="res.partner", attributes=("id",), match="id", keys=(1001,),
                           order="id; drop")

    with pytest.raises(UpstreamRejected, match="check the schema declaration"):
        await upstream.demo_source(erp).fetch(request)


async def test_demo_fault_503_unavailable(upstream: Upstream, erp: Starlette) -> None:
    erp.state.control.fault_status = 503

    with pytest.raises(UpstreamUnavailable, match="answered HTTP 503") as info:
        await upstream.demo_source(erp).fetch(partner_request(1001))

    assert type(info.value) is UpstreamUnavailable


# --- errors from a mock upstream ---------------------------------------------------------------


def odoo_error(status: int, name: str, message: str) -> Responder:
    """Build the response that Odoo 19's JSON-2 dispatcher sends when a call raises."""
    body = {"name": name, "message": f"{message} {UPSTREAM_DETAIL}",
            "arguments": [message, status], "context": {},
            "debug": f"Traceback (most recent call last):\n{name}: {UPSTREAM_DETAIL}\n"}
    return lambda request: httpx.Response(status, json=body)


def envelope(name: str, message: str) -> Responder:
    """Build the response that Odoo's ``/jsonrpc`` sends when a call raises: HTTP 200, ``error``."""
    data = {"name": name, "message": f"{message} {UPSTREAM_DETAIL}",
            "arguments": [message], "context": {},
            "debug": f"Traceback (most recent call last):\n{name}: {UPSTREAM_DETAIL}\n"}
    error = {"code": 200, "message": "Odoo Server Error", "data": data}
    return lambda request: httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "error": error})


def proxy_page(status: int, headers: dict[str, str] | None = None) -> Responder:
    """Build the short text page that a reverse proxy in front of Odoo sends."""
    return lambda request: httpx.Response(status, text=f"{status} {UPSTREAM_DETAIL}\n",
                                          headers=headers)


class ErrorCase(NamedTuple):
    json2: Responder
    jsonrpc: Responder
    expected: type[UpstreamError]
    message: str
    login: Any = UID


ERROR_CASES = {
    "unknown model": ErrorCase(
        odoo_error(404, "werkzeug.exceptions.NotFound", "the model 'x.y' does not exist"),
        envelope("odoo.exceptions.UserError", "Object x.y doesn't exist"),
        UpstreamRejected, "check the schema declaration"),
    "unknown method": ErrorCase(
        odoo_error(404, "werkzeug.exceptions.NotFound", "The method 'search_read' does not exist"),
        envelope("builtins.AttributeError", "The method 'search_read' does not exist"),
        UpstreamRejected, "check the schema declaration"),
    "ids on model method": ErrorCase(
        odoo_error(422, "werkzeug.exceptions.UnprocessableEntity",
                   "cannot call res.partner.search_read with ids"),
        envelope("builtins.TypeError", "search_read() got multiple values for argument"),
        UpstreamRejected, "check the schema declaration"),
    "arguments do not bind": ErrorCase(
        odoo_error(422, "werkzeug.exceptions.UnprocessableEntity",
                   "got an unexpected keyword argument 'bogus'"),
        envelope("builtins.TypeError", "got an unexpected keyword argument 'bogus'"),
        UpstreamRejected, "check the schema declaration"),
    "invalid field": ErrorCase(
        odoo_error(500, "builtins.ValueError", "Invalid field 'x' on model 'res.partner'"),
        envelope("builtins.ValueError", "Invalid field 'x' on model 'res.partner'"),
        UpstreamRejected, r"builtins\.ValueError.*check the schema declaration"),
    "access rights": ErrorCase(
        odoo_error(403, "odoo.exceptions.AccessError", "You are not allowed to access"),
        envelope("odoo.exceptions.AccessError", "You are not allowed to access"),
        OdooError, r"odoo\.exceptions\.AccessError"),
    "server error": ErrorCase(
        odoo_error(500, "psycopg2.OperationalError", "server closed the connection"),
        envelope("psycopg2.OperationalError", "server closed the connection"),
        OdooError, r"psycopg2\.OperationalError"),
    "bad API key": ErrorCase(
        odoo_error(401, "werkzeug.exceptions.Unauthorized", "Invalid apikey"),
        envelope("odoo.exceptions.AccessDenied", "Access Denied"),
        UpstreamAuthFailed, "rejected the gateway's (API key|login).*database", login=False),
    "bad gateway": ErrorCase(
        proxy_page(502), proxy_page(502), UpstreamUnavailable, "answered HTTP 502 for"),
    "service unavailable": ErrorCase(
        proxy_page(503), proxy_page(503), UpstreamUnavailable, "answered HTTP 503 for"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES.values()), ids=list(ERROR_CASES))
async def test_error_mapped_same_class(upstream: Upstream, case: ErrorCase) -> None:
    respond = case.json2 if upstream.transport == "json2" else case.jsonrpc
    source, calls = upstream.mock_source(respond, login=case.login)

    with pytest.raises(UpstreamError) as info:
        await source.fetch(partner_request(1001, 1002))

    assert type(info.value) is case.expected
    assert info.value.system == "erp"
    assert UPSTREAM_DETAIL not in str(info.value)
    assert info.match(case.message)
    if case.login is not False:
        assert "res.partner search_read of 2 keys" in str(info.value)
    # No retry loop inside the source: at most one login and one read.
    assert calls.count("login") <= 1
    assert calls.count("read") <= 1


async def test_rate_limit_keeps_retry_after(upstream: Upstream) -> None:
    source, _calls = upstream.mock_source(proxy_page(429, {"Retry-After": "7"}))

    with pytest.raises(UpstreamRateLimited, match="answered HTTP 429") as info:
        await source.fetch(partner_request(1001))

    assert info.value.retry_after == 7.0


async def test_malformed_json_body_unavailable(upstream: Upstream) -> None:
    source, _calls = upstream.mock_source(
        lambda request: httpx.Response(200, content=b'[{"id": 1001,',
                                       headers={"content-type": "application/json"}))

    with pytest.raises(UpstreamUnavailable, match="a body that is not JSON"):
        await source.fetch(partner_request(1001))


@pytest.mark.parametrize("value", [{"id": 1001}, [1001], None])
async def test_result_not_records_unavailable(upstream: Upstream, value: Any) -> None:
    source, _calls = upstream.mock_source(lambda request: upstream.result(value))

    with pytest.raises(UpstreamUnavailable, match="something other than a list of records"):
        await source.fetch(partner_request(1001))


async def test_connection_dropped_unavailable(upstream: Upstream) -> None:
    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    source, _calls = upstream.mock_source(drop)

    with pytest.raises(UpstreamUnavailable, match=r"could not be reached for res\.partner "
                       r"search_read of 1 keys: RemoteProtocolError"):
        await source.fetch(partner_request(1001))


# --- JSON-2 specifics ---------------------------------------------------------------------------


async def test_json2_request_wire_format() -> None:
    sent: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=[])

    source, _calls = Upstream("json2").mock_source(respond)
    request = FetchRequest(entity="sale.order", attributes=("id", "name"), match="partner_id",
                           keys=(1001, 1002), order="date_order desc, id", limit=5)
    await source.fetch(request)

    assert len(sent) == 1
    assert sent[0].method == "POST"
    assert str(sent[0].url) == "http://erp.test/json/2/sale.order/search_read"
    assert sent[0].headers["authorization"] == f"bearer {API_KEY}"
    assert sent[0].headers["x-odoo-database"] == DB
    assert sent[0].headers["content-type"] == "application/json"
    assert sent[0].headers["user-agent"] == "fonte-gateway"
    assert json.loads(sent[0].content) == {
        "domain": [["partner_id", "in", [1001, 1002]]], "fields": ["id", "name"],
        "order": "date_order desc, id asc", "limit": 5}


async def test_json2_empty_database_no_header() -> None:
    sent: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=[])

    client = httpx.AsyncClient(transport=httpx.MockTransport(respond))
    source = OdooJson2Source("erp", OdooJson2Settings(BASE_URL + "/", "", API_KEY), client)
    await source.fetch(partner_request(1001))

    assert "x-odoo-database" not in sent[0].headers
    assert str(sent[0].url) == "http://erp.test/json/2/res.partner/search_read"


@pytest.mark.parametrize(("status", "body", "expected", "message"), [
    (401, "Invalid apikey", UpstreamAuthFailed, "rejected the gateway's API key"),
    (500, "Internal Server Error", UpstreamUnavailable, r"answered HTTP 500 for"),
    (404, "the model 'x.y' does not exist", UpstreamRejected, "model or method does not exist"),
    (422, "cannot call res.partner.search_read with ids", UpstreamRejected,
     "rejected the request as invalid"),
])
async def test_json2_bare_string_error(status: int, body: str,
                                       expected: type[UpstreamError], message: str) -> None:
    # An older revision of the JSON-2 documentation shows the error body as a JSON string.
    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=f"{body} {UPSTREAM_DETAIL}")

    source, _calls = Upstream("json2").mock_source(respond)

    with pytest.raises(UpstreamError) as info:
        await source.fetch(partner_request(1001))

    assert type(info.value) is expected
    assert info.match(message)
    assert UPSTREAM_DETAIL not in str(info.value)


async def test_json2_odd_error_name_dropped() -> None:
    # A name that is not a class path is upstream text too, so it is left out.
    source, _calls = Upstream("json2").mock_source(
        odoo_error(500, f"not a class: {UPSTREAM_DETAIL}", "boom"))

    with pytest.raises(UpstreamUnavailable, match=r"answered HTTP 500 for res\.partner") as info:
        await source.fetch(partner_request(1001))

    assert UPSTREAM_DETAIL not in str(info.value)


async def test_json2_wrong_database_rejected(erp: Starlette) -> None:
    source = Upstream("json2").demo_source(erp, database="other_db")

    with pytest.raises(UpstreamRejected, match="database setting"):
        await source.fetch(partner_request(1001))

    assert read_calls(erp) == [("/json/2/res.partner/search_read", "res.partner", 1,
                                ["id", "name"], 404)]


async def test_json2_demo_statuses_logged(erp: Starlette) -> None:
    source = Upstream("json2").demo_source(erp, api_key="wrong-key")
    with pytest.raises(UpstreamAuthFailed, match="rejected the gateway's API key"):
        await source.fetch(partner_request(1001))

    assert read_calls(erp) == [("/json/2/res.partner/search_read", "res.partner", 1,
                                ["id", "name"], 401)]
