"""The demo REST CRM of the peer benchmark: records, OpenAPI description, Fonte over it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import start_harness
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from gateway.demo.data import DemoData
from gateway.demo.launch import EXAMPLE_QUERY
from gateway.demo.mappings import demo_rest_settings
from gateway.demo.rest import create_rest_app
from gateway.demo.rest_crm import (
    REST_CRM_RESOURCES,
    create_rest_crm_app,
    demo_rest_crm_settings,
)

KEY = {"X-API-Key": "crm-key"}
ROLES = ("sales", "finance", "it")


@pytest.fixture
async def client(demo_data: DemoData) -> AsyncIterator[httpx.AsyncClient]:
    app = create_rest_crm_app(demo_data, api_key="crm-key")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://crm.test") as client:
        yield client


async def test_openapi_document_valid(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()

    validate(document)
    assert document["info"]["title"] == "Fonte demo CRM"
    assert sorted(document["paths"]) == ["/accounts", "/accounts/{id}", "/contacts",
                                         "/contacts/{id}", "/opportunities",
                                         "/opportunities/{id}"]


async def test_openapi_ids_are_strings(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()

    account = document["components"]["schemas"]["Account"]["properties"]
    assert account["id"] == {"type": "string"}
    assert account["erp_customer_number"] == {"type": "string", "nullable": True}
    ids = next(p for p in document["paths"]["/accounts"]["get"]["parameters"]
               if p["name"] == "ids")
    assert ids["schema"]["items"] == {"type": "string"}
    opportunity = document["components"]["schemas"]["Opportunity"]["properties"]
    assert opportunity["probability"] == {"type": "integer", "nullable": True}
    assert opportunity["amount"] == {"type": "number", "nullable": True}
    assert opportunity["close_date"] == {"type": "string", "format": "date", "nullable": True}


@pytest.mark.parametrize("spec", REST_CRM_RESOURCES, ids=lambda spec: spec.name)
async def test_list_matches_salesforce_records(client: httpx.AsyncClient, demo_data: DemoData,
                                               spec: Any) -> None:
    document = (await client.get("/openapi.json")).json()

    response = await client.get(f"/api/v1/{spec.name}", params={"limit": "500"}, headers=KEY)

    assert response.status_code == 200
    body = response.json()
    expected = [{prop: record[field] for prop, field in spec.properties.items()}
                for record in demo_data.crm[spec.model]]
    # Without sort the fake keeps the data set's order; a page has at most 500 rows.
    assert body["data"] == expected[:500]
    name = {"accounts": "Account", "contacts": "Contact", "opportunities": "Opportunity"}
    schema = {"$ref": f"#/components/schemas/{name[spec.name]}Page",
              "components": document["components"]}
    OAS30Validator(schema).validate(body)


async def test_contacts_filtered_by_account(client: httpx.AsyncClient,
                                            demo_data: DemoData) -> None:
    account_id = demo_data.crm["Account"][0]["Id"]

    response = await client.get("/api/v1/contacts", params={"account_id": account_id},
                                headers=KEY)

    assert response.status_code == 200
    expected = sorted(c["Id"] for c in demo_data.crm["Contact"] if c["AccountId"] == account_id)
    assert [row["id"] for row in response.json()["data"]] == expected


async def test_account_item_by_salesforce_id(client: httpx.AsyncClient,
                                             demo_data: DemoData) -> None:
    account = demo_data.crm["Account"][0]

    response = await client.get(f"/api/v1/accounts/{account['Id']}",
                                params={"fields": "name"}, headers=KEY)

    assert response.status_code == 200
    assert response.json() == {"data": {"id": account["Id"], "name": account["Name"]}}


async def test_missing_key_rejected(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/accounts")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


async def example_answers(data: DemoData, data_dir: Path, *, rest: bool) -> dict[str, Any]:
    results = {}
    overrides: dict[str, Any] = {}
    crm_app = create_rest_crm_app(data, api_key="crm-key")
    erp_app = create_rest_app(data, api_key="erp-key")

    def wrap_crm(inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        return httpx.ASGITransport(app=crm_app) if rest else inner

    def wrap_erp(inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        return httpx.ASGITransport(app=erp_app) if rest else inner

    if rest:
        overrides["systems"] = {"crm": demo_rest_crm_settings("http://crm.test", "crm-key"),
                                "erp": demo_rest_settings("http://erp.test", "erp-key")}
    async with start_harness(data, data_dir, wrap_crm=wrap_crm, wrap_erp=wrap_erp,
                             overrides=overrides) as harness:
        for role in ROLES:
            response = await harness.query(EXAMPLE_QUERY, role=role)
            assert response.status_code == 200
            results[role] = response.json()
    return results


async def test_gateway_over_rest_matches_vendor_dialects(demo_data: DemoData,
                                                         tmp_path: Path) -> None:
    # One data dir for both runs, so pseudonym masks use the same key.
    expected = await example_answers(demo_data, tmp_path / "data", rest=False)
    actual = await example_answers(demo_data, tmp_path / "data", rest=True)

    for role in ROLES:
        assert actual[role]["data"]["customers"]["edges"] != [], role
        assert actual[role] == expected[role], role
