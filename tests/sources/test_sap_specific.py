"""What only the SAP OData 2.0 dialect and its fake do: envelope, wire values, CSRF, auth.

The cases every OData dialect shares are in ``test_odata_dialects.py``.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import httpx
import pytest
from starlette.applications import Starlette

from gateway.demo.data import DemoData
from gateway.demo.mappings import SAP_ENTITIES
from gateway.demo.sap import MAX_URL_BYTES, SERVICE_PATH, create_sap_app
from gateway.errors import UpstreamAuthFailed, UpstreamRejected, UpstreamUnavailable
from gateway.sources import FetchRequest
from gateway.sources.mapping import MappedSource
from gateway.sources.sap import SAP, SapSettings, SapSource, iso_date

USER, PASSWORD = "COMM_USER", "s3cret"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


@pytest.fixture
def app(demo_data: DemoData) -> Starlette:
    return create_sap_app(demo_data, user=USER, password=PASSWORD)


def plain_client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sap.test")


def source(app: Starlette, transport: httpx.AsyncBaseTransport | None = None,
           client: str | None = None) -> MappedSource:
    settings = SapSettings(base_url="http://sap.test", service="API_FONTE_DEMO", user=USER,
                           password=PASSWORD, client=client)
    http = httpx.AsyncClient(transport=transport or httpx.ASGITransport(app=app))
    return MappedSource(SapSource("erp", settings, http), SAP_ENTITIES)


class Recording(httpx.AsyncBaseTransport):
    """Passes requests through and keeps each one for the test to inspect."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)


class CsrfAlwaysRequired(httpx.AsyncBaseTransport):
    """Passes GETs through and rejects every POST with 403 and ``x-csrf-token: Required``."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.posts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST":
            return await self.inner.handle_async_request(request)
        self.posts += 1
        return httpx.Response(403, headers={"x-csrf-token": "Required"}, request=request)


def test_iso_date_forms() -> None:
    assert iso_date("/Date(1712275200000)/") == "2024-04-05"
    assert iso_date("/Date(1712345678000)/") == "2024-04-05T19:34:38Z"
    assert iso_date("/Date(1712345678000+0060)/") == "2024-04-05T19:34:38Z"
    assert iso_date("/Date(1712275200000+0000)/") == "2024-04-05T00:00:00Z"
    assert iso_date("/Date(-86400000)/") == "1969-12-31"
    assert iso_date("/Date(1712345678123)/") == "2024-04-05T19:34:38.123000Z"
    assert iso_date("/Date(abc)/") is None
    assert iso_date("2024-04-05") is None


async def test_fake_envelope_and_wire_values(app: Starlette, demo_data: DemoData) -> None:
    partner = demo_data.erp["res.partner"][0]
    async with plain_client(app) as client:
        response = await client.get(f"{SERVICE_PATH}/A_Customer", headers=BASIC, params={
            "$format": "json", "$select": "Customer,CreditLimitAmount",
            "$filter": f"Customer eq {partner['id']}", "$inlinecount": "allpages"})

    body = response.json()
    assert response.status_code == 200
    assert body["d"]["__count"] == "1"
    row = body["d"]["results"][0]
    assert row["__metadata"]["type"] == "API_FONTE_DEMO.A_CustomerType"
    assert row["CreditLimitAmount"] == f"{partner['credit_limit']:.2f}"
    assert set(row) == {"__metadata", "Customer", "CreditLimitAmount"}


async def test_fake_writes_sap_dates(app: Starlette) -> None:
    async with plain_client(app) as client:
        response = await client.get(f"{SERVICE_PATH}/A_BillingDocument", headers=BASIC, params={
            "$format": "json", "$select": "BillingDocumentDate,NetDueDate", "$top": "1"})

    row = response.json()["d"]["results"][0]
    assert row["BillingDocumentDate"].startswith("/Date(")
    assert "+" not in row["BillingDocumentDate"]


async def test_fake_pages_with_opaque_tokens(app: Starlette) -> None:
    app.state.fake.page_size = 10
    async with plain_client(app) as client:
        first = await client.get(f"{SERVICE_PATH}/A_Customer", headers=BASIC,
                                 params={"$format": "json", "$select": "Customer"})
        next_url = first.json()["d"]["__next"]
        second = await client.get(next_url, headers={**BASIC, "Accept": "application/json"})
        reused = await client.get(next_url, headers={**BASIC, "Accept": "application/json"})

    assert "$skiptoken=" in next_url
    assert len(first.json()["d"]["results"]) == 10
    assert second.status_code == 200
    assert reused.status_code == 400


async def test_fake_json_only(app: Starlette) -> None:
    async with plain_client(app) as client:
        response = await client.get(f"{SERVICE_PATH}/A_Customer", headers=BASIC)

    assert response.status_code == 415


async def test_fake_basic_auth_401(app: Starlette) -> None:
    async with plain_client(app) as client:
        response = await client.get(f"{SERVICE_PATH}/A_Customer", params={"$format": "json"},
                                    auth=(USER, "wrong"))

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic ")


async def test_fake_error_body_shape(app: Starlette) -> None:
    async with plain_client(app) as client:
        response = await client.get(f"{SERVICE_PATH}/A_Customer", headers=BASIC,
                                    params={"$format": "json", "$select": "Nope"})

    error = response.json()["error"]
    assert response.status_code == 400
    assert set(error) == {"code", "message", "innererror"}
    assert set(error["message"]) == {"lang", "value"}
    assert error["innererror"]["errordetails"][0]["code"] == error["code"]


async def test_fake_batch_needs_csrf(app: Starlette) -> None:
    async with plain_client(app) as client:
        refused = await client.post(f"{SERVICE_PATH}/$batch", headers=BASIC, content=b"")
        fetched = await client.get(f"{SERVICE_PATH}/",
                                   headers={**BASIC, "x-csrf-token": "fetch",
                                            "Accept": "application/json"})
        token_only = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                       base_url="http://sap.test")
        async with token_only:
            no_cookie = await token_only.post(
                f"{SERVICE_PATH}/$batch", content=b"",
                headers={**BASIC, "x-csrf-token": fetched.headers["x-csrf-token"]})

    assert refused.status_code == 403
    assert refused.headers["x-csrf-token"] == "Required"
    assert fetched.headers["x-csrf-token"] not in ("", "Required")
    assert "SAP_SESSIONID_FON_100" in fetched.cookies
    assert no_cookie.status_code == 403


async def test_fake_serves_metadata(app: Starlette) -> None:
    async with plain_client(app) as client:
        response = await client.get(f"{SERVICE_PATH}/$metadata", headers=BASIC)

    root = ET.fromstring(response.content)
    edm = "{http://schemas.microsoft.com/ado/2008/09/edm}"
    names = {node.get("Name") for node in root.iter(f"{edm}EntitySet")}
    types = {node.get("Name"): node.get("Type") for node in root.iter(f"{edm}Property")}
    assert "A_Customer" in names
    assert types["CreditLimitAmount"] == "Edm.Decimal"
    assert types["BillingDocumentDate"] == "Edm.DateTime"
    assert types["CreationDateTime"] == "Edm.DateTimeOffset"


async def test_decimals_stay_text(app: Starlette, demo_data: DemoData) -> None:
    partner = demo_data.erp["res.partner"][0]

    rows = await source(app).fetch(FetchRequest("res.partner", ("credit_limit",), match="id",
                                                keys=(partner["id"],)))

    assert rows == [{"credit_limit": f"{partner['credit_limit']:.2f}"}]


async def test_dates_become_iso(app: Starlette, demo_data: DemoData) -> None:
    move = demo_data.erp["account.move"][0]
    order = demo_data.erp["sale.order"][0]

    moves = await source(app).fetch(FetchRequest("account.move", ("invoice_date",), match="id",
                                                 keys=(move["id"],)))
    orders = await source(app).fetch(FetchRequest("sale.order", ("date_order",), match="id",
                                                  keys=(order["id"],)))

    assert moves == [{"invoice_date": move["invoice_date"]}]
    assert orders == [{"date_order": order["date_order"].replace(" ", "T") + "Z"}]


async def test_reads_send_format_and_basic(app: Starlette) -> None:
    recording = Recording(httpx.ASGITransport(app=app))

    await source(app, recording, client="100").fetch(
        FetchRequest("res.partner", ("id",), match="id", keys=(1001,), limit=1))

    sent = recording.requests[0]
    assert sent.url.params["$format"] == "json"
    assert sent.url.params["$top"] == "1"
    assert sent.url.params["sap-client"] == "100"
    assert sent.headers["authorization"] == BASIC["Authorization"]


async def test_urls_stay_under_cap(app: Starlette) -> None:
    recording = Recording(httpx.ASGITransport(app=app))
    keys = tuple(range(1, 3001))

    await source(app, recording).fetch(FetchRequest("res.partner", ("id", "name"), match="id",
                                                    keys=keys))

    batch = next(r for r in recording.requests if r.method == "POST")
    lines = batch.content.decode().split("\r\n")
    targets = [line for line in lines if line.startswith("GET ")]
    assert len(targets) > 1
    assert all(len(f"http://sap.test{SERVICE_PATH}/{t}") < MAX_URL_BYTES for t in targets)
    assert SAP.max_url_bytes < MAX_URL_BYTES


async def test_batch_fetches_csrf_once(app: Starlette) -> None:
    sap = source(app)
    request = FetchRequest("res.partner", ("id",), match="id", keys=tuple(range(1, 3001)))

    await sap.fetch(request)
    await sap.fetch(request)

    log = app.state.fake.control.log
    assert [e.path.endswith(f"{SERVICE_PATH}/") for e in log].count(True) == 1
    assert [(e.method, e.status) for e in log if e.entity == "$batch"] == [("POST", 200)] * 2


async def test_expired_csrf_refetched_once(app: Starlette) -> None:
    sap = source(app)
    request = FetchRequest("res.partner", ("id",), match="id", keys=tuple(range(1, 3001)))
    await sap.fetch(request)
    app.state.fake.expire_tokens()
    app.state.fake.control.clear()

    rows = await sap.fetch(request)

    assert len(rows) > 0
    log = app.state.fake.control.log
    batches = [e.status for e in log if e.entity == "$batch"]
    csrf_fetches = [e for e in log if e.entity is None]
    assert batches == [403, 200]
    assert len(csrf_fetches) == 1


async def test_csrf_refused_twice_unavailable(app: Starlette) -> None:
    refusing = CsrfAlwaysRequired(httpx.ASGITransport(app=app))

    with pytest.raises(UpstreamUnavailable, match="CSRF"):
        await source(app, refusing).fetch(
            FetchRequest("res.partner", ("id",), match="id", keys=tuple(range(1, 3001))))

    assert refusing.posts == 2


async def test_forbidden_names_role(app: Starlette) -> None:
    app.state.fake.control.fault_status = 403

    with pytest.raises(UpstreamAuthFailed, match="communication") as caught:
        await source(app).fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))

    assert "/IWBEP/CM_MGW_RT/000" in str(caught.value)
    assert "unexpected" not in str(caught.value)


async def test_upstream_text_not_in_error(app: Starlette) -> None:
    with pytest.raises(UpstreamRejected) as caught:
        await source(app).fetch(FetchRequest("res.partner", ("no_such_field",), match="id",
                                             keys=(1001,)))

    assert "no_such_field" not in str(caught.value)
    assert "could not find" not in str(caught.value)


async def test_relative_next_link_followed(app: Starlette) -> None:
    class Relative(httpx.AsyncBaseTransport):
        """Rewrites each absolute ``__next`` link to one relative to the service root."""

        def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
            self.inner = inner

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            content = await response.aread()
            prefix = f"http://sap.test{SERVICE_PATH}/".encode()
            return httpx.Response(response.status_code, headers=response.headers,
                                  content=content.replace(prefix, b""))

    app.state.fake.page_size = 7
    partners = tuple(p["Customer"] for p in app.state.fake.sets["A_Customer"].records[:20])

    rows = await source(app, Relative(httpx.ASGITransport(app=app))).fetch(
        FetchRequest("res.partner", ("id",), match="id", keys=partners, order="id"))

    assert [row["id"] for row in rows] == sorted(partners)
    assert len([e for e in app.state.fake.control.log if e.entity == "A_Customer"]) == 3
