"""The OData dialects against their demo servers: one set of cases for every dialect.

Each case runs through ``MappedSource`` with the fake's ``EntityMap`` table,
so requests use the schema's Odoo names and rows come back in them.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from gateway.catalog import Condition
from gateway.demo.control import RequestLogEntry
from gateway.demo.data import DemoData
from gateway.demo.dataverse import create_dataverse_app
from gateway.demo.mappings import DATAVERSE_ENTITIES, SAP_ENTITIES
from gateway.demo.sap import create_sap_app
from gateway.errors import (
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest, Row
from gateway.sources.dataverse import DataverseSettings, DataverseSource
from gateway.sources.mapping import EntityMap, MappedSource
from gateway.sources.odata import literal
from gateway.sources.sap import SapSettings, SapSource

Wrap = Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport]


@dataclass
class OData:
    """One dialect under test: its fake app and a way to build a source reading it.

    ``service_path`` is the fake's service root. ``auth_headers`` returns the
    headers that let a plain client read the fake. ``secret_setting`` is the
    settings name that an authentication error message names. ``text_numbers``
    lists the schema attributes whose numbers the dialect returns as text.
    """

    dialect: str
    app: Starlette
    build: Callable[..., MappedSource]
    entities: dict[str, EntityMap]
    service_path: str
    auth_headers: Callable[[httpx.AsyncClient], Awaitable[dict[str, str]]]
    secret_setting: str
    text_numbers: frozenset[str] = frozenset()

    @property
    def log(self) -> list[RequestLogEntry]:
        return list(self.app.state.fake.control.log)

    def reads(self) -> list[RequestLogEntry]:
        """Return the logged entity reads and batches, without token or CSRF requests."""
        return [entry for entry in self.log if entry.entity is not None]

    def numbers(self, rows: list[Row]) -> list[Row]:
        """Return ``rows`` with text numbers read as floats, to compare with the demo data."""
        return [{name: float(value) if name in self.text_numbers and value is not None
                 else value for name, value in row.items()} for row in rows]


def _dataverse(data: DemoData) -> OData:
    app = create_dataverse_app(data, client_id="client", client_secret="s3cret")

    def build(*, page_size: int = 5000, timeout: float = 10.0, wrap: Wrap | None = None,
              client_secret: str = "s3cret") -> MappedSource:
        transport: httpx.AsyncBaseTransport = httpx.ASGITransport(app=app)
        if wrap is not None:
            transport = wrap(transport)
        client = httpx.AsyncClient(transport=transport, timeout=timeout)
        settings = DataverseSettings(
            base_url="http://dataverse.test", token_url="http://dataverse.test/oauth2/v2.0/token",
            client_id="client", client_secret=client_secret, scope="http://dataverse.test/.default",
            page_size=page_size, timeout=timeout)
        return MappedSource(DataverseSource("erp", settings, client), DATAVERSE_ENTITIES)

    async def auth_headers(client: httpx.AsyncClient) -> dict[str, str]:
        response = await client.post("/oauth2/v2.0/token", data={
            "grant_type": "client_credentials", "client_id": "client", "client_secret": "s3cret",
            "scope": "x"})
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    return OData("dataverse", app, build, DATAVERSE_ENTITIES, "/api/data/v9.2", auth_headers,
                 "client_secret")


SAP_TEXT_NUMBERS = frozenset({"credit_limit", "credit", "amount_untaxed", "amount_total",
                              "amount_residual"})


def _sap(data: DemoData) -> OData:
    app = create_sap_app(data, user="COMM_USER", password="s3cret")

    def build(*, page_size: int = 1000, timeout: float = 10.0, wrap: Wrap | None = None,
              client_secret: str = "s3cret") -> MappedSource:
        # SAP pages on the server, so the page size is the fake's setting.
        app.state.fake.page_size = page_size
        transport: httpx.AsyncBaseTransport = httpx.ASGITransport(app=app)
        if wrap is not None:
            transport = wrap(transport)
        client = httpx.AsyncClient(transport=transport, timeout=timeout)
        settings = SapSettings(base_url="http://sap.test", service="API_FONTE_DEMO",
                               user="COMM_USER", password=client_secret, timeout=timeout)
        return MappedSource(SapSource("erp", settings, client), SAP_ENTITIES)

    async def auth_headers(client: httpx.AsyncClient) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(b"COMM_USER:s3cret").decode(),
                "Accept": "application/json"}

    return OData("sap", app, build, SAP_ENTITIES, "/sap/opu/odata/sap/API_FONTE_DEMO",
                 auth_headers, "password", SAP_TEXT_NUMBERS)


BUILDERS = {"dataverse": _dataverse, "sap": _sap}


@pytest.fixture(params=sorted(BUILDERS))
def odata(request: pytest.FixtureRequest, demo_data: DemoData) -> OData:
    return BUILDERS[request.param](demo_data)


def expected(data: DemoData, model: str, attributes: tuple[str, ...],
             keep: Callable[[dict[str, Any]], bool]) -> list[Row]:
    return [{name: record[name] for name in attributes}
            for record in data.erp[model] if keep(record)]


def by_id(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda row: row["id"])


PARTNER_FIELDS = ("id", "credit_limit", "credit", "email")


def test_literal_doubles_quotes() -> None:
    assert literal("O'Hara") == "'O''Hara'"
    assert literal(42) == "42"
    assert literal(False) == "false"


async def test_one_key_one_get(odata: OData, demo_data: DemoData) -> None:
    source = odata.build()
    first = demo_data.erp["res.partner"][0]["id"]

    rows = await source.fetch(FetchRequest("res.partner", PARTNER_FIELDS, match="id",
                                           keys=(first,)))

    assert odata.numbers(rows) == expected(demo_data, "res.partner", PARTNER_FIELDS,
                                           lambda r: r["id"] == first)
    reads = odata.reads()
    assert [(e.method, e.keys) for e in reads] == [("GET", 1)]


async def test_200_keys_one_get(odata: OData, demo_data: DemoData) -> None:
    source = odata.build()
    ids = [partner["id"] for partner in demo_data.erp["res.partner"]][:200]

    rows = await source.fetch(FetchRequest("res.partner", PARTNER_FIELDS, match="id",
                                           keys=tuple(ids)))

    assert odata.numbers(by_id(rows)) == expected(demo_data, "res.partner", PARTNER_FIELDS,
                                   lambda r: r["id"] in set(ids))
    assert [e.method for e in odata.reads()] == ["GET"]


async def test_5000_keys_one_batch(odata: OData, demo_data: DemoData) -> None:
    source = odata.build()
    keys = tuple(range(1, 5001))  # partner ids start at 1001, so some keys match nothing

    rows = await source.fetch(FetchRequest("res.partner", PARTNER_FIELDS, match="id", keys=keys))

    assert odata.numbers(by_id(rows)) == expected(demo_data, "res.partner", PARTNER_FIELDS,
                                   lambda r: r["id"] <= 5000)
    reads = odata.reads()
    assert reads[0].method == "POST"
    assert reads[0].path.endswith("$batch")
    assert [e.method for e in reads].count("POST") == 1
    assert sum(e.keys for e in reads[1:]) == 5000


async def test_paging_follows_next_links(odata: OData, demo_data: DemoData) -> None:
    source = odata.build(page_size=25)
    partners = tuple(p["id"] for p in demo_data.erp["res.partner"][:40])
    attributes = ("id", "partner_id", "amount_total", "state")

    rows = await source.fetch(FetchRequest("sale.order", attributes, match="partner_id",
                                           keys=partners, order="id"))

    wanted = expected(demo_data, "sale.order", attributes, lambda r: r["partner_id"] in partners)
    assert len(wanted) > 75
    assert odata.numbers(rows) == wanted
    assert len(odata.reads()) == -(-len(wanted) // 25)


async def test_projection_is_exact(odata: OData, demo_data: DemoData) -> None:
    source = odata.build()
    first = demo_data.erp["res.partner"][0]["id"]

    rows = await source.fetch(FetchRequest("res.partner", ("credit_limit",), match="id",
                                           keys=(first,)))

    assert list(rows[0]) == ["credit_limit"]
    assert odata.reads()[0].fields == [odata.entities["res.partner"].attribute("credit_limit")]


async def test_empty_values_are_none(odata: OData, demo_data: DemoData) -> None:
    source = odata.build()
    empty = [o for o in demo_data.erp["sale.order"] if o["commitment_date"] is None][:3]

    rows = await source.fetch(FetchRequest("sale.order", ("id", "commitment_date"), match="id",
                                           keys=tuple(o["id"] for o in empty)))

    assert len(rows) == len(empty)
    assert all(row["commitment_date"] is None for row in rows)


async def test_dates_read_as_iso(odata: OData, demo_data: DemoData) -> None:
    source = odata.build()
    order = demo_data.erp["sale.order"][0]

    rows = await source.fetch(FetchRequest("sale.order", ("date_order",), match="id",
                                           keys=(order["id"],)))

    assert rows[0]["date_order"].replace("T", " ")[:19] == order["date_order"]


async def test_where_search_and_limit(odata: OData, demo_data: DemoData) -> None:
    source = odata.build()
    target = demo_data.erp["res.partner"][3]
    needle = target["name"][2:8].upper()

    rows = await source.fetch(FetchRequest(
        "res.partner", ("id",), search=("name", needle), limit=5, order="id",
        where=(Condition("ref", "!=", "none"),)))

    matching = [p["id"] for p in demo_data.erp["res.partner"]
                if needle.lower() in p["name"].lower()]
    assert [row["id"] for row in rows] == matching[:5]


async def test_search_quotes_apostrophe(odata: OData) -> None:
    source = odata.build()

    rows = await source.fetch(FetchRequest("res.partner", ("id",), search=("name", "O'Hara")))

    assert rows == []


async def test_row_filters_or_chain(odata: OData, demo_data: DemoData) -> None:
    source = odata.build()
    moves = demo_data.erp["account.move"][:30]

    rows = await source.fetch(FetchRequest(
        "account.move", ("id", "move_type"), match="id", keys=tuple(m["id"] for m in moves),
        where=(Condition("move_type", "in", ("out_invoice", "out_refund")),
               Condition("state", "=", "posted")),
        any_of=(Condition("payment_state", "=", "paid"),
                Condition("payment_state", "=", "not_paid"))))

    wanted = {m["id"] for m in moves if m["payment_state"] in ("paid", "not_paid")}
    assert {row["id"] for row in rows} == wanted


async def test_no_keys_sends_nothing(odata: OData) -> None:
    source = odata.build()

    rows = await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=()))

    assert rows == []
    assert odata.log == []


async def test_unknown_attribute_rejected(odata: OData) -> None:
    source = odata.build()

    with pytest.raises(UpstreamRejected, match="HTTP 400"):
        await source.fetch(FetchRequest("res.partner", ("no_such_field",), match="id",
                                        keys=(1001,)))


async def test_unknown_entity_rejected(odata: OData) -> None:
    source = odata.build()

    with pytest.raises(UpstreamRejected, match="HTTP 404"):
        await source.fetch(FetchRequest("no.such.model", ("id",), match="id", keys=(1,)))


async def test_server_error_unavailable(odata: OData) -> None:
    source = odata.build()
    odata.app.state.fake.control.fault_status = 500

    with pytest.raises(UpstreamUnavailable, match="HTTP 500") as caught:
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))

    assert "unexpected" not in str(caught.value)


async def test_throttle_carries_retry_after(odata: OData) -> None:
    source = odata.build()
    odata.app.state.fake.control.fault_status = 429

    with pytest.raises(UpstreamRateLimited) as caught:
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))

    assert caught.value.retry_after == 7.0


async def test_throttle_inside_batch(odata: OData) -> None:
    source = odata.build()
    odata.app.state.fake.control.fault_status = 429

    with pytest.raises(UpstreamRateLimited):
        await source.fetch(FetchRequest("res.partner", ("id",), match="id",
                                        keys=tuple(range(5000))))


async def test_wrong_credentials_auth_failed(odata: OData) -> None:
    source = odata.build(client_secret="wrong")

    with pytest.raises(UpstreamAuthFailed, match=odata.secret_setting):
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))


async def test_expired_session_renewed_once(odata: OData) -> None:
    if odata.dialect == "sap":
        pytest.skip("Basic auth sends the password on every read, so no session expires; "
                    "test_sap_specific covers the CSRF token renewal")
    source = odata.build()
    request = FetchRequest("res.partner", ("id",), match="id", keys=(1001,))
    await source.fetch(request)
    odata.app.state.fake.expire_tokens()

    rows = await source.fetch(request)

    assert rows == [{"id": 1001}]
    statuses = [e.status for e in odata.reads()]
    assert statuses == [200, 401, 200]


class _Timed(httpx.AsyncBaseTransport):
    """Applies the client's read timeout, which ``ASGITransport`` ignores, as a socket would."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        seconds = request.extensions.get("timeout", {}).get("read")
        try:
            return await asyncio.wait_for(self.inner.handle_async_request(request), seconds)
        except TimeoutError as exc:
            raise httpx.ReadTimeout("no answer in time", request=request) from exc


async def test_slow_upstream_times_out(odata: OData) -> None:
    source = odata.build(timeout=0.05, wrap=_Timed)
    await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))
    odata.app.state.fake.control.fault_delay = 0.5

    with pytest.raises(UpstreamTimeout):
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))


class _Dropping(httpx.AsyncBaseTransport):
    """Passes token requests through and drops the connection on every read."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "token" in request.url.path:
            return await self.inner.handle_async_request(request)
        raise httpx.RemoteProtocolError("peer closed connection", request=request)


class _Garbled(httpx.AsyncBaseTransport):
    """Passes token requests through and returns every read with broken JSON."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "token" in request.url.path:
            return await self.inner.handle_async_request(request)
        return httpx.Response(200, content=b'{"value": [', request=request)


async def test_dropped_connection_unavailable(odata: OData) -> None:
    source = odata.build(wrap=_Dropping)

    with pytest.raises(UpstreamUnavailable, match="RemoteProtocolError"):
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))


async def test_malformed_json_unavailable(odata: OData) -> None:
    source = odata.build(wrap=_Garbled)

    with pytest.raises(UpstreamUnavailable, match="not JSON"):
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))


async def test_fake_rejects_in_operator(odata: OData) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=odata.app),
                                 base_url="http://fake.test") as client:
        path = _entity_path(odata, "res.partner")
        key = odata.entities["res.partner"].attribute("id")
        headers = await odata.auth_headers(client)
        response = await client.get(path, params={"$filter": f"{key} in (1001)"},
                                    headers=headers)

    assert response.status_code == 400
    assert "error" in response.json()


async def test_fake_rejects_long_url(odata: OData) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=odata.app),
                                 base_url="http://fake.test") as client:
        headers = await odata.auth_headers(client)
        response = await client.get(_entity_path(odata, "res.partner"),
                                    params={"$filter": "x" * 40_000}, headers=headers)

    assert response.status_code == 414


async def test_fake_dataverse_rejects_skip(demo_data: DemoData) -> None:
    odata = _dataverse(demo_data)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=odata.app),
                                 base_url="http://fake.test") as client:
        headers = await odata.auth_headers(client)
        response = await client.get("/api/data/v9.2/accounts", params={"$skip": "10"},
                                    headers=headers)

    assert response.status_code == 400


def _entity_path(odata: OData, model: str) -> str:
    return f"{odata.service_path}/{odata.entities[model].name}"
