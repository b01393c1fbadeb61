"""The demo REST ERP: its wire format, its errors, and its OpenAPI description."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from starlette.applications import Starlette

from gateway.demo.data import DemoData
from gateway.demo.rest import MAX_IDS, REST_RESOURCES, create_rest_app
from gateway.demo.rest_openapi import schema_name

KEY = {"Authorization": "Bearer test-key"}


@pytest.fixture
def app(demo_data: DemoData) -> Starlette:
    return create_rest_app(demo_data, api_key="test-key")


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://rest.test") as client:
        yield client


async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def check_schema(document: dict[str, Any], name: str, body: Any) -> None:
    """Raise if ``body`` does not match the component schema ``name`` of ``document``."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    OAS30Validator(schema).validate(body)


async def test_openapi_document_valid(client: httpx.AsyncClient) -> None:
    document = await openapi(client)

    validate(document)
    assert document["openapi"] == "3.0.3"


async def test_openapi_paths_match_resources(client: httpx.AsyncClient) -> None:
    document = await openapi(client)

    expected = sorted([f"/{spec.name}" for spec in REST_RESOURCES]
                      + [f"/{spec.name}/{{id}}" for spec in REST_RESOURCES])
    assert sorted(document["paths"]) == expected
    assert document["servers"] == [{"url": "/api/v1"}]


@pytest.mark.parametrize("spec", REST_RESOURCES, ids=lambda spec: spec.name)
async def test_list_body_matches_schema(client: httpx.AsyncClient, spec: Any) -> None:
    document = await openapi(client)

    response = await client.get(f"/api/v1/{spec.name}", params={"limit": "500"}, headers=KEY)

    assert response.status_code == 200
    body = response.json()
    assert len(body["data"]) > 0
    check_schema(document, f"{schema_name(spec.name)}Page", body)
    assert set(body["data"][0]) == set(spec.properties)


@pytest.mark.parametrize("spec", REST_RESOURCES, ids=lambda spec: spec.name)
async def test_item_body_matches_schema(client: httpx.AsyncClient, spec: Any,
                                        app: Starlette) -> None:
    document = await openapi(client)
    first = app.state.fake.resources[spec.name][0]["id"]

    response = await client.get(f"/api/v1/{spec.name}/{first}", headers=KEY)

    assert response.status_code == 200
    check_schema(document, f"{schema_name(spec.name)}Item", response.json())


async def test_error_body_matches_schema(client: httpx.AsyncClient) -> None:
    document = await openapi(client)

    response = await client.get("/api/v1/orders", params={"nope": "1"}, headers=KEY)

    assert response.status_code == 400
    check_schema(document, "Error", response.json())
    assert response.json()["error"]["code"] == "invalid_field"


async def test_fields_parameter_enum_matches(client: httpx.AsyncClient) -> None:
    document = await openapi(client)

    for spec in REST_RESOURCES:
        parameters = document["paths"][f"/{spec.name}"]["get"]["parameters"]
        fields = next(p for p in parameters if p["name"] == "fields")
        assert fields["schema"]["items"]["enum"] == list(spec.properties), spec.name


async def test_batch_by_ids_and_projection(client: httpx.AsyncClient, app: Starlette,
                                           demo_data: DemoData) -> None:
    partners = demo_data.erp["res.partner"][:3]
    ids = ",".join(str(p["id"]) for p in partners)

    response = await client.get("/api/v1/customers", params={"ids": ids,
                                                             "fields": "credit_limit"},
                                headers=KEY)

    assert response.json()["data"] == [{"id": p["id"], "credit_limit": p["credit_limit"]}
                                       for p in partners]
    entry = app.state.fake.control.log[-1]
    assert entry.entity == "customers"
    assert entry.keys == 3
    assert entry.fields == ["credit_limit"]


async def test_repeated_ids_accepted(client: httpx.AsyncClient,
                                     demo_data: DemoData) -> None:
    partners = demo_data.erp["res.partner"][:2]

    response = await client.get("/api/v1/customers?" + "&".join(
        f"ids={p['id']}" for p in partners) + "&fields=name", headers=KEY)

    assert [row["id"] for row in response.json()["data"]] == [p["id"] for p in partners]


async def test_filter_by_parent_key(client: httpx.AsyncClient, app: Starlette,
                                    demo_data: DemoData) -> None:
    partner = demo_data.erp["res.partner"][0]["id"]
    expected_ids = [o["id"] for o in demo_data.erp["sale.order"] if o["partner_id"] == partner]

    response = await client.get("/api/v1/orders", params={"customer_id": str(partner),
                                                          "fields": "id"}, headers=KEY)

    assert [row["id"] for row in response.json()["data"]] == expected_ids
    assert app.state.fake.control.log[-1].filter == f"customer_id in ({partner})"


async def test_cursor_paging_reads_all(client: httpx.AsyncClient,
                                       demo_data: DemoData) -> None:
    seen: list[int] = []
    response = await client.get("/api/v1/invoices", params={"limit": "150", "fields": "id"},
                                headers=KEY)
    pages = 1
    while True:
        body = response.json()
        seen.extend(row["id"] for row in body["data"])
        if body["links"]["next"] is None:
            assert body["meta"]["next_cursor"] is None
            break
        response = await client.get(body["links"]["next"], headers=KEY)
        pages += 1

    assert seen == [move["id"] for move in demo_data.erp["account.move"]]
    assert pages == -(-len(seen) // 150)


async def test_sort_parameter_orders(client: httpx.AsyncClient,
                                     demo_data: DemoData) -> None:
    response = await client.get("/api/v1/shipments", params={"sort": "deadline,-id",
                                                             "fields": "id", "limit": "500"},
                                headers=KEY)

    pickings = sorted(demo_data.erp["stock.picking"], key=lambda p: p["id"], reverse=True)
    pickings.sort(key=lambda p: (p["date_deadline"] is None, p["date_deadline"] or ""))
    assert [row["id"] for row in response.json()["data"]] == [p["id"] for p in pickings[:500]]


async def test_offset_paging(client: httpx.AsyncClient, demo_data: DemoData) -> None:
    response = await client.get("/api/v1/orders", params={"offset": "10", "limit": "5",
                                                          "fields": "id"}, headers=KEY)

    assert [row["id"] for row in response.json()["data"]] == [
        order["id"] for order in demo_data.erp["sale.order"][10:15]]


@pytest.mark.parametrize(("params", "code"), [
    ({"ids": ",".join(str(i) for i in range(MAX_IDS + 1))}, "too_many_ids"),
    ({"fields": "id,secret"}, "invalid_field"),
    ({"sort": "-secret"}, "invalid_field"),
    ({"limit": "501"}, "invalid_parameter"),
    ({"limit": "0"}, "invalid_parameter"),
    ({"offset": "-1"}, "invalid_parameter"),
    ({"cursor": "unknown"}, "invalid_cursor"),
])
async def test_invalid_parameter_400(client: httpx.AsyncClient, params: dict[str, str],
                                     code: str) -> None:
    response = await client.get("/api/v1/orders", params=params, headers=KEY)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


async def test_missing_key_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/orders")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


async def test_api_key_header_accepted(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/orders", params={"limit": "1"},
                                headers={"X-API-Key": "test-key"})

    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/orders/1", "/api/v1/products"])
async def test_unknown_record_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, headers=KEY)

    assert response.status_code == 404


async def test_long_url_414(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/orders", params={"number": "S" * 9000}, headers=KEY)

    assert response.status_code == 414
    assert response.json()["error"]["code"] == "uri_too_long"


async def test_fault_429_retry_after(client: httpx.AsyncClient) -> None:
    await client.put("/__fonte/fault", json={"status": 429})

    response = await client.get("/api/v1/orders", headers=KEY)

    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["code"] == "rate_limited"


async def test_fault_500_logged(client: httpx.AsyncClient, app: Starlette) -> None:
    await client.put("/__fonte/fault", json={"status": 500})

    response = await client.get("/api/v1/orders", params={"fields": "id"}, headers=KEY)

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "server_error"
    entry = app.state.fake.control.log[-1]
    assert entry.status == 500
    assert entry.fields == ["id"]


async def test_open_without_key(demo_data: DemoData) -> None:
    app = create_rest_app(demo_data, api_key=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://rest.test") as client:
        response = await client.get("/api/v1/orders", params={"limit": "1"})

    assert response.status_code == 200
