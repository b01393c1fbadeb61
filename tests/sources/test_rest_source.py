"""The generic REST/JSON dialect against the demo REST ERP and against hand-written replies.

Reads go through ``MappedSource`` with the demo's entity mapping, so
requests use the schema's Odoo names and rows come back in them, as in the
gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from gateway.catalog import Condition
from gateway.config import load_settings
from gateway.demo.control import RequestLogEntry
from gateway.demo.data import DemoData
from gateway.demo.mappings import REST_ENTITIES, demo_rest_settings
from gateway.demo.rest import create_rest_app
from gateway.errors import (
    ConfigError,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest, Row
from gateway.sources.mapping import MappedSource
from gateway.sources.rest import Paging, Resource, RestSettings, RestSource

Wrap = Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport]
PARTNER_FIELDS = ("id", "credit_limit", "credit", "email")


class Recording(httpx.AsyncBaseTransport):
    """Passes requests on and keeps their URLs."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.urls: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        return await self.inner.handle_async_request(request)


class Erp:
    """The demo REST ERP and a way to build a source that reads it."""

    def __init__(self, data: DemoData) -> None:
        self.data = data
        self.app: Starlette = create_rest_app(data, api_key="test-key")
        self.recording: Recording | None = None

    @property
    def log(self) -> list[RequestLogEntry]:
        return list(self.app.state.fake.control.log)

    def fault(self, status: int | None, delay: float = 0.0) -> None:
        self.app.state.fake.control.fault_status = status
        self.app.state.fake.control.fault_delay = delay

    def build(self, *, api_key: str = "test-key", timeout: float = 10.0, wrap: Wrap | None = None,
              **resource_changes: Any) -> MappedSource:
        settings = demo_rest_settings("http://erp.test", api_key)
        resources = {name: replace(resource, **resource_changes)
                     for name, resource in settings.resources.items()}
        settings = replace(settings, resources=resources, timeout=timeout)
        self.recording = Recording(httpx.ASGITransport(app=self.app))
        transport: httpx.AsyncBaseTransport = self.recording
        if wrap is not None:
            transport = wrap(transport)
        client = httpx.AsyncClient(transport=transport, timeout=timeout)
        return MappedSource(RestSource("erp", settings, client), REST_ENTITIES)


@pytest.fixture
def erp(demo_data: DemoData) -> Erp:
    return Erp(demo_data)


def expected(data: DemoData, model: str, attributes: tuple[str, ...],
             keep: Callable[[dict[str, Any]], bool]) -> list[Row]:
    return [{name: record[name] for name in attributes}
            for record in data.erp[model] if keep(record)]


def by_id(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda row: row["id"])


# --- batching ------------------------------------------------------------------------------


async def test_one_key_one_request(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build()
    first = demo_data.erp["res.partner"][0]["id"]

    rows = await source.fetch(FetchRequest("res.partner", PARTNER_FIELDS, match="id",
                                           keys=(first,)))

    assert rows == expected(demo_data, "res.partner", PARTNER_FIELDS, lambda r: r["id"] == first)
    assert [(e.path, e.keys) for e in erp.log] == [("/api/v1/customers", 1)]


async def test_200_keys_one_request(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build()
    ids = tuple(partner["id"] for partner in demo_data.erp["res.partner"][:200])

    rows = await source.fetch(FetchRequest("res.partner", PARTNER_FIELDS, match="id", keys=ids))

    assert by_id(rows) == expected(demo_data, "res.partner", PARTNER_FIELDS,
                                   lambda r: r["id"] in set(ids))
    assert [e.keys for e in erp.log] == [200]


async def test_5000_keys_by_max_ids(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build()
    keys = tuple(range(1, 5001))  # partner ids start at 1001, so some keys match nothing

    rows = await source.fetch(FetchRequest("res.partner", PARTNER_FIELDS, match="id", keys=keys))

    assert by_id(rows) == expected(demo_data, "res.partner", PARTNER_FIELDS,
                                   lambda r: r["id"] <= 5000)
    assert [e.keys for e in erp.log] == [1000] * 5


async def test_long_keys_chunked_by_url(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build(max_url_bytes=1000)
    numbers = tuple(order["name"] for order in demo_data.erp["sale.order"][:400])

    rows = await source.fetch(FetchRequest("account.move", ("id", "invoice_origin"),
                                           match="invoice_origin", keys=numbers))

    assert by_id(rows) == expected(demo_data, "account.move", ("id", "invoice_origin"),
                                   lambda r: r["invoice_origin"] in set(numbers))
    assert erp.recording is not None
    assert len(erp.recording.urls) > 1
    assert all(len(url) <= 1000 for url in erp.recording.urls)
    assert sum(e.keys for e in erp.log) == 400


async def test_repeated_ids_parameter(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build(ids_repeat=True)
    ids = tuple(partner["id"] for partner in demo_data.erp["res.partner"][:3])

    rows = await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=ids))

    assert rows == [{"id": key} for key in ids]
    assert erp.recording is not None
    assert "ids=1001&ids=1002&ids=1003" in erp.recording.urls[0]


async def test_no_keys_sends_nothing(erp: Erp) -> None:
    source = erp.build()

    rows = await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=()))

    assert rows == []
    assert erp.log == []


async def test_no_attributes_rejected(erp: Erp) -> None:
    source = erp.build()

    with pytest.raises(UpstreamRejected, match="without attributes"):
        await source.fetch(FetchRequest("res.partner", (), match="id", keys=(1001,)))

    assert erp.log == []


# --- projection, conditions, order ---------------------------------------------------------


async def test_projection_is_exact(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build()
    first = demo_data.erp["res.partner"][0]["id"]

    rows = await source.fetch(FetchRequest("res.partner", ("credit_limit",), match="id",
                                           keys=(first,)))

    assert list(rows[0]) == ["credit_limit"]
    assert erp.log[0].fields == ["credit_limit"]


async def test_no_fields_param_projects_here(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build(fields_param=None)
    first = demo_data.erp["res.partner"][0]["id"]

    rows = await source.fetch(FetchRequest("res.partner", ("credit_limit",), match="id",
                                           keys=(first,)))

    assert rows == [{"credit_limit": demo_data.erp["res.partner"][0]["credit_limit"]}]
    assert erp.log[0].fields is None


async def test_parent_key_uses_filter(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build()
    partners = tuple(p["id"] for p in demo_data.erp["res.partner"][:5])

    rows = await source.fetch(FetchRequest("sale.order", ("id", "partner_id"),
                                           match="partner_id", keys=partners))

    assert by_id(rows) == expected(demo_data, "sale.order", ("id", "partner_id"),
                                   lambda r: r["partner_id"] in partners)
    assert erp.log[0].filter == "customer_id in (" + ",".join(map(str, partners)) + ")"


async def test_undeclared_filter_rejected(erp: Erp) -> None:
    source = erp.build(filters={})

    with pytest.raises(UpstreamRejected, match="no filter parameter for orders attribute "
                                               "'customer_id'"):
        await source.fetch(FetchRequest("sale.order", ("id",), match="partner_id",
                                        keys=(1001,)))

    assert erp.log == []


async def test_where_pushed_or_applied(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build()
    moves = demo_data.erp["account.move"][:60]

    rows = await source.fetch(FetchRequest(
        "account.move", ("id",), match="id", keys=tuple(m["id"] for m in moves),
        where=(Condition("move_type", "in", ("out_invoice", "out_refund")),
               Condition("payment_state", "!=", "paid"))))

    unpaid = [{"id": m["id"]} for m in moves if m["payment_state"] != "paid"]
    assert by_id(rows) == unpaid
    assert erp.log[0].filter == "kind in (out_invoice,out_refund)"
    assert erp.log[0].fields == ["id", "payment_status"]


async def test_order_and_limit_applied(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build()
    partner = demo_data.erp["res.partner"][0]["id"]

    rows = await source.fetch(FetchRequest("sale.order", ("id", "date_order"),
                                           match="partner_id", keys=(partner,),
                                           order="date_order desc, id desc", limit=2))

    orders = sorted((o for o in demo_data.erp["sale.order"] if o["partner_id"] == partner),
                    key=lambda o: (o["date_order"], o["id"]), reverse=True)
    assert [row["id"] for row in rows] == [o["id"] for o in orders[:2]]


async def test_order_sent_as_sort(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build(paging=Paging(style="cursor", page_size=10))

    rows = await source.fetch(FetchRequest("sale.order", ("id",),
                                           order="date_order desc, id", limit=12))

    orders = sorted(demo_data.erp["sale.order"], key=lambda o: o["id"])
    orders.sort(key=lambda o: o["date_order"], reverse=True)
    assert [row["id"] for row in rows] == [o["id"] for o in orders[:12]]
    assert erp.recording is not None
    assert "sort=-ordered_at,id" in erp.recording.urls[0]
    assert len(erp.log) == 2


async def test_order_without_sort_param(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build(sort_param=None, paging=Paging(style="cursor", page_size=500))

    rows = await source.fetch(FetchRequest("sale.order", ("id",),
                                           order="date_order desc, id", limit=12))

    orders = sorted(demo_data.erp["sale.order"], key=lambda o: o["id"])
    orders.sort(key=lambda o: o["date_order"], reverse=True)
    assert [row["id"] for row in rows] == [o["id"] for o in orders[:12]]
    assert erp.log[0].fields == ["id", "ordered_at"]
    assert len(erp.log) == -(-len(orders) // 500)


async def test_after_and_search_applied(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build()
    partners = demo_data.erp["res.partner"]
    needle = partners[3]["name"][2:6].upper()

    rows = await source.fetch(FetchRequest("res.partner", ("id",), order="id", limit=3,
                                           after=("id", str(partners[1]["id"])),
                                           search=("name", needle)))

    matching = [p["id"] for p in partners[2:] if needle.lower() in p["name"].lower()]
    assert [row["id"] for row in rows] == matching[:3]


# --- paging --------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["cursor", "next_link", "offset"])
async def test_paging_reads_every_page(erp: Erp, demo_data: DemoData, style: str) -> None:
    paging = Paging(style=style, page_size=40)  # type: ignore[arg-type]
    source = erp.build(paging=paging)
    partners = tuple(p["id"] for p in demo_data.erp["res.partner"][:40])
    attributes = ("id", "partner_id", "amount_total", "state")

    rows = await source.fetch(FetchRequest("sale.order", attributes, match="partner_id",
                                           keys=partners, order="id"))

    orders = expected(demo_data, "sale.order", attributes, lambda r: r["partner_id"] in partners)
    assert len(orders) > 120
    assert rows == orders
    pages = -(-len(orders) // 40) + (1 if style == "offset" and len(orders) % 40 == 0 else 0)
    assert len(erp.log) == pages


async def test_limit_stops_paging_early(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build(paging=Paging(style="cursor", page_size=10))

    rows = await source.fetch(FetchRequest("sale.order", ("id",), limit=15))

    assert [row["id"] for row in rows] == [o["id"] for o in demo_data.erp["sale.order"][:15]]
    assert len(erp.log) == 2


def replies(pages: dict[str, Any]) -> httpx.MockTransport:
    """Return a transport that returns the JSON body listed for each URL query string."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = pages.get(request.url.query.decode())
        if body is None:
            return httpx.Response(404, json={"error": {"code": "not_found"}})
        return httpx.Response(200, content=orjson.dumps(body))

    return httpx.MockTransport(handler)


def plain_source(transport: httpx.AsyncBaseTransport, **changes: Any) -> RestSource:
    resource = replace(Resource(path="items"), **changes)
    settings = RestSettings(base_url="http://api.test/v2", resources={"items": resource},
                            auth_header=("X-API-Key", "k-123"), auth_setting="api_key_env")
    return RestSource("erp", settings, httpx.AsyncClient(transport=transport))


async def test_page_number_paging() -> None:
    transport = replies({
        "ids=1,2,3&fields=id&size=2&page=1": {"data": [{"id": 1}, {"id": 2}]},
        "ids=1,2,3&fields=id&size=2&page=2": {"data": [{"id": 3}]},
    })
    source = plain_source(transport, paging=Paging(style="page", page_size=2,
                                                   size_param="size"))

    rows = await source.fetch(FetchRequest("items", ("id",), match="id", keys=(1, 2, 3)))

    assert rows == [{"id": 1}, {"id": 2}, {"id": 3}]


async def test_first_page_number_zero() -> None:
    transport = replies({
        "fields=id&size=1&page=0": {"data": [{"id": 1}]},
        "fields=id&size=1&page=1": {"data": []},
    })
    source = plain_source(transport, paging=Paging(style="page", page_size=1, size_param="size",
                                                   first_page=0))

    rows = await source.fetch(FetchRequest("items", ("id",)))

    assert rows == [{"id": 1}]


async def test_repeated_cursor_unavailable() -> None:
    transport = replies({
        "fields=id&limit=1": {"data": [{"id": 1}], "next": "c1"},
        "fields=id&limit=1&cursor=c1": {"data": [{"id": 2}], "next": "c1"},
    })
    source = plain_source(transport, paging=Paging(style="cursor", page_size=1,
                                                   cursor_path="next"))

    with pytest.raises(UpstreamUnavailable, match="repeats an earlier one"):
        await source.fetch(FetchRequest("items", ("id",)))


async def test_foreign_next_link_unavailable() -> None:
    transport = replies({"fields=id&limit=1": {
        "data": [{"id": 1}], "links": {"next": "http://elsewhere.test/v2/items?page=2"}}})
    source = plain_source(transport, paging=Paging(style="next_link", page_size=1))

    with pytest.raises(UpstreamUnavailable, match="link to another host"):
        await source.fetch(FetchRequest("items", ("id",)))


async def test_relative_next_link_followed() -> None:
    transport = replies({
        "fields=id&limit=1": {"data": [{"id": 1}], "links": {"next": "items?after=1"}},
        "after=1": {"data": [{"id": 2}], "links": {"next": None}},
    })
    source = plain_source(transport, paging=Paging(style="next_link", page_size=1))

    rows = await source.fetch(FetchRequest("items", ("id",)))

    assert rows == [{"id": 1}, {"id": 2}]


# --- envelope and values -------------------------------------------------------------------


async def test_nested_rows_path() -> None:
    transport = replies({"ids=7&fields=id,name": {"result": {"items": [{"id": 7, "name": "x"}]}}})
    source = plain_source(transport, rows_path="result.items")

    rows = await source.fetch(FetchRequest("items", ("id", "name"), match="id", keys=(7,)))

    assert rows == [{"id": 7, "name": "x"}]


async def test_body_is_row_list() -> None:
    transport = replies({"ids=7&fields=id": [{"id": 7}]})
    source = plain_source(transport, rows_path="")

    rows = await source.fetch(FetchRequest("items", ("id",), match="id", keys=(7,)))

    assert rows == [{"id": 7}]


@pytest.mark.parametrize("body", [{"data": {"id": 7}}, {"items": []}, {"data": [7]}, [1]])
async def test_wrong_envelope_unavailable(body: Any) -> None:
    source = plain_source(replies({"ids=7&fields=id": body}))

    with pytest.raises(UpstreamUnavailable, match="without a list of records at 'data'; "
                                                  "check the entity's rows_path"):
        await source.fetch(FetchRequest("items", ("id",), match="id", keys=(7,)))


async def test_false_null_missing_values() -> None:
    transport = replies({"ids=7&fields=id,active,note,gone": {
        "data": [{"id": 7, "active": False, "note": None}]}})
    source = plain_source(transport)

    rows = await source.fetch(FetchRequest("items", ("id", "active", "note", "gone"),
                                           match="id", keys=(7,)))

    assert rows[0]["active"] is False
    assert rows[0]["note"] is None
    assert rows[0]["gone"] is None


async def test_demo_empty_dates_none(erp: Erp, demo_data: DemoData) -> None:
    source = erp.build()
    empty = [o for o in demo_data.erp["sale.order"] if o["commitment_date"] is None][:3]

    rows = await source.fetch(FetchRequest("sale.order", ("id", "commitment_date"), match="id",
                                           keys=tuple(o["id"] for o in empty)))

    assert len(rows) == 3
    assert all(row["commitment_date"] is None for row in rows)


async def test_api_key_header_sent() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-api-key"))
        return httpx.Response(200, json={"data": []})

    source = plain_source(httpx.MockTransport(handler))
    await source.fetch(FetchRequest("items", ("id",), match="id", keys=(7,)))

    assert seen == ["k-123"]


# --- errors --------------------------------------------------------------------------------


async def test_unknown_attribute_rejected(erp: Erp) -> None:
    source = erp.build()

    with pytest.raises(UpstreamRejected, match="HTTP 400 \\(invalid_field\\)"):
        await source.fetch(FetchRequest("res.partner", ("no_such_field",), match="id",
                                        keys=(1001,)))


async def test_unknown_entity_rejected(erp: Erp) -> None:
    source = erp.build()

    with pytest.raises(UpstreamRejected, match="HTTP 404 \\(unknown_resource\\)"):
        await source.fetch(FetchRequest("no.such.model", ("id",), match="id", keys=(1,)))


async def test_url_over_cap_rejected(erp: Erp) -> None:
    source = erp.build(max_ids=5000, max_url_bytes=1_000_000)

    with pytest.raises(UpstreamRejected, match="too long \\(HTTP 414\\); lower the entity's "
                                               "max_url_bytes"):
        await source.fetch(FetchRequest("res.partner", ("id",), match="id",
                                        keys=tuple(range(10_000, 12_000))))


async def test_wrong_key_auth_failed(erp: Erp) -> None:
    source = erp.build(api_key="wrong")

    with pytest.raises(UpstreamAuthFailed, match="HTTP 401 \\(unauthorized\\)") as caught:
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))

    assert "check its token setting" in str(caught.value)
    assert "wrong" not in str(caught.value)


async def test_server_error_unavailable(erp: Erp) -> None:
    source = erp.build()
    erp.fault(500)

    with pytest.raises(UpstreamUnavailable, match="HTTP 500 \\(server_error\\)") as caught:
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))

    assert "unexpected" not in str(caught.value)


async def test_bad_request_rejected(erp: Erp) -> None:
    source = erp.build()
    erp.fault(400)

    with pytest.raises(UpstreamRejected, match="HTTP 400"):
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))


async def test_throttle_carries_retry_after(erp: Erp) -> None:
    source = erp.build()
    erp.fault(429)

    with pytest.raises(UpstreamRateLimited, match="HTTP 429") as caught:
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))

    assert caught.value.retry_after == 7.0


async def test_overload_503_rate_limited() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(
        503, headers={"Retry-After": "3"}, json={"code": "overloaded"}))
    source = plain_source(transport)

    with pytest.raises(UpstreamRateLimited, match="HTTP 503 \\(overloaded\\)") as caught:
        await source.fetch(FetchRequest("items", ("id",), match="id", keys=(7,)))

    assert caught.value.retry_after == 3.0


async def test_unsafe_error_code_dropped() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(
        500, json={"error": {"code": "Mario Rossi <mario@example.com>"}}))
    source = plain_source(transport)

    with pytest.raises(UpstreamUnavailable) as caught:
        await source.fetch(FetchRequest("items", ("id",), match="id", keys=(7,)))

    assert "Mario" not in str(caught.value)
    assert str(caught.value) == "system 'erp' answered HTTP 500 for items read of 1 keys"


class Timed(httpx.AsyncBaseTransport):
    """Applies the client's read timeout, which ``ASGITransport`` ignores, as a socket would."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        seconds = request.extensions.get("timeout", {}).get("read")
        try:
            return await asyncio.wait_for(self.inner.handle_async_request(request), seconds)
        except TimeoutError as exc:
            raise httpx.ReadTimeout("no answer in time", request=request) from exc


class Dropping(httpx.AsyncBaseTransport):
    """Drops the connection on every request."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)


class Garbled(httpx.AsyncBaseTransport):
    """Returns every read with a truncated JSON body."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"data": [', request=request)


async def test_slow_upstream_times_out(erp: Erp) -> None:
    source = erp.build(timeout=0.05, wrap=Timed)
    await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))
    erp.fault(None, delay=0.5)

    with pytest.raises(UpstreamTimeout, match="timed out on customers read of 1 keys"):
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))


async def test_dropped_connection_unavailable(erp: Erp) -> None:
    source = erp.build(wrap=Dropping)

    with pytest.raises(UpstreamUnavailable, match="RemoteProtocolError"):
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))


async def test_malformed_json_unavailable(erp: Erp) -> None:
    source = erp.build(wrap=Garbled)

    with pytest.raises(UpstreamUnavailable, match="not JSON"):
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))


def test_settings_repr_hides_credentials() -> None:
    settings = demo_rest_settings("http://erp.test", "very-secret-key")

    assert "very-secret-key" not in repr(settings)


# --- settings file -------------------------------------------------------------------------

SYSTEM = """
[auth]
development_tokens = true

[systems.erp]
dialect = "rest"
base_url = "https://erp.example.com/api/v1"
"""


def load(tmp_path: Path, text: str) -> RestSettings:
    path = tmp_path / "fonte.toml"
    path.write_text(SYSTEM + text, encoding="utf-8")
    settings = load_settings(path).systems["erp"]
    assert isinstance(settings, RestSettings)
    return settings


@pytest.fixture(autouse=True)
def token_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_REST_TOKEN", "rest-token")


def test_settings_file_loads(tmp_path: Path) -> None:
    settings = load(tmp_path, """
token_env = "TEST_REST_TOKEN"
paging = "cursor"
max_ids = 250
parallel_requests = 2

[systems.erp.entities."sale.order"]
name = "orders"
attributes = { partner_id = "customer_id" }
filters = ["customer_id"]
ids_repeat = true
paging = "next_link"
fields_param = ""
sort_param = "order_by"
rows_path = "result.items"
""")

    orders = settings.resources["orders"]
    assert orders.filters == {"customer_id": "customer_id"}
    assert orders.ids_repeat is True
    assert orders.max_ids == 250
    assert orders.paging.style == "next_link"
    assert orders.fields_param is None
    assert orders.sort_param == "order_by"
    assert orders.rows_path == "result.items"
    assert settings.default.paging.style == "cursor"
    assert settings.entities["sale.order"].attribute("partner_id") == "customer_id"
    assert settings.auth_header == ("Authorization", "Bearer rest-token")
    assert settings.parallel_requests == 2


def test_api_key_header_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "key.txt").write_text("file-key\n", encoding="utf-8")

    settings = load(tmp_path, 'api_key_file = "key.txt"\napi_key_header = "X-Erp-Key"\n')

    assert settings.auth_header == ("X-Erp-Key", "file-key")


def test_auth_none_setting(tmp_path: Path) -> None:
    settings = load(tmp_path, 'auth = "none"\n')

    assert settings.auth_header is None


@pytest.mark.parametrize(("text", "message"), [
    ("", r"\[systems.erp\] needs credentials: set token_env or token_file"),
    ('token = "abc"\n', "token must not be written in the settings file"),
    ('auth = "none"\ntoken_env = "TEST_REST_TOKEN"\n', 'sets auth = "none" and a credential'),
    ('auth = "basic"\n', "auth = 'basic' is invalid"),
    ('token_env = "TEST_REST_TOKEN"\napi_key_env = "TEST_REST_TOKEN"\n',
     "sets both a token and an api_key"),
    ('auth = "none"\npaging = "pages"\n', "paging = 'pages' is invalid; use one of none, "
     "next_link, cursor, offset, page"),
    ('auth = "none"\nmax_ids = 0\n', "max_ids = 0 is invalid; use a whole number from 1"),
    ('auth = "none"\npage_size = "10"\n', "page_size = '10' is invalid"),
    ('auth = "none"\nmax_url_bytes = 100\n', "max_url_bytes = 100 is invalid"),
    ('auth = "none"\nids_param = ""\n', "ids_param = '' is invalid; set it to a non-empty"),
    ('auth = "none"\nrows_path = "data..rows"\n', "rows_path = 'data..rows' is invalid"),
    ('auth = "none"\nids_repeat = "yes"\n', "ids_repeat = 'yes' is invalid"),
    ('auth = "none"\nids_repeat = true\nids_separator = ";"\n',
     "sets both ids_repeat = true and ids_separator"),
    ('auth = "none"\nmax_id = 5\n', "max_id is not a setting of dialect rest"),
    ('auth = "none"\nparallel_requests = 0\n', "parallel_requests = 0 is invalid"),
    ('auth = "none"\n[systems.erp.entities."sale.order"]\nfilters = "customer_id"\n',
     r'\[systems.erp.entities."sale.order"\] filters = \'customer_id\' is invalid'),
    ('auth = "none"\n[systems.erp.entities."sale.order"]\n'
     'attributes = { partner_id = "customer_id" }\nfilters = ["partner_id"]\n',
     "filters names 'partner_id', a schema attribute; name the API's attribute "
     "'customer_id' instead"),
    ('auth = "none"\n[systems.erp.entities."sale.order"]\npath = "orders"\n',
     "path is not a setting of dialect rest"),
    ('auth = "none"\n[systems.erp.entities."sale.order"]\nname = "orders"\n'
     '[systems.erp.entities."account.move"]\nname = "orders"\nmax_ids = 5\n',
     "reads path 'orders' with other settings than another entity"),
])
def test_invalid_setting_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text)


def test_invalid_base_url_named(tmp_path: Path) -> None:
    path = tmp_path / "fonte.toml"
    path.write_text(SYSTEM.replace("https://erp.example.com/api/v1", "erp.example.com")
                    + 'auth = "none"\n', encoding="utf-8")

    with pytest.raises(ConfigError, match=r"base_url = 'erp\.example\.com' is invalid; set it "
                                          "to the http or https URL"):
        load_settings(path)
