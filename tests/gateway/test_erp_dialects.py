"""The same demo ERP read through each ERP dialect gives the same answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import start_harness
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.config import SystemSettings
from gateway.demo.data import DemoData
from gateway.demo.dataverse import create_dataverse_app
from gateway.demo.launch import EXAMPLE_QUERY
from gateway.demo.mappings import DATAVERSE_ENTITIES, SAP_ENTITIES, demo_rest_settings
from gateway.demo.rest import create_rest_app
from gateway.demo.sap import create_sap_app
from gateway.demo.sql import load_demo_erp
from gateway.sources.dataverse import DataverseSettings
from gateway.sources.odoo import OdooJson2Settings, OdooSettings
from gateway.sources.sap import SapSettings
from gateway.sources.sql import SqlSettings

ROLES = ("sales", "finance", "it")


async def erp_settings(dialect: str, data: DemoData, scratch: Path) -> SystemSettings:
    if dialect == "sap":
        return SapSettings(base_url="http://erp.test", service="API_FONTE_DEMO", user="COMM",
                           password="pw", entities=SAP_ENTITIES)
    if dialect == "dataverse":
        return DataverseSettings(
            base_url="http://erp.test", token_url="http://erp.test/oauth2/v2.0/token",
            client_id="dataverse-client", client_secret="dataverse-secret",
            scope="http://erp.test/.default", entities=DATAVERSE_ENTITIES)
    if dialect == "rest":
        return demo_rest_settings("http://erp.test", "test-api-key")
    if dialect == "odoo-json2":
        return OdooJson2Settings(base_url="http://erp.test", database="fonte_demo",
                                 api_key="test-api-key")
    if dialect == "sql":
        scratch.mkdir(parents=True, exist_ok=True)
        path = scratch / "erp.sqlite3"
        engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
        await load_demo_erp(engine, data)
        await engine.dispose()
        return SqlSettings(url=f"sqlite+aiosqlite:///{path}")
    return OdooSettings(base_url="http://erp.test", database="fonte_demo", login="gateway",
                        api_key="test-api-key")


async def answers(dialect: str, data: DemoData, tmp_path: Path) -> dict[str, Any]:
    # One data dir for every dialect, so pseudonym masks use the same key.
    settings = await erp_settings(dialect, data, tmp_path / dialect)
    results = {}
    wrap_erp = _same
    if dialect in ("dataverse", "sap", "rest"):
        fake = create_dataverse_app(data, client_id="dataverse-client",
                                    client_secret="dataverse-secret")
        if dialect == "sap":
            fake = create_sap_app(data, user="COMM", password="pw")
        elif dialect == "rest":
            fake = create_rest_app(data, api_key="test-api-key")

        def wrap_erp(inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
            return httpx.ASGITransport(app=fake)

    async with start_harness(data, tmp_path / "data", erp=settings,
                             wrap_erp=wrap_erp) as harness:
        for role in ROLES:
            response = await harness.query(EXAMPLE_QUERY, role=role)
            assert response.status_code == 200
            results[role] = response.json()
    return results


def _same(inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
    return inner


@pytest.mark.parametrize("dialect", ["odoo-json2", "sql", "dataverse", "sap", "rest"])
async def test_dialect_matches_jsonrpc(dialect: str, demo_data: DemoData,
                                       tmp_path: Path) -> None:
    expected = await answers("odoo", demo_data, tmp_path)
    actual = await answers(dialect, demo_data, tmp_path)

    for role in ROLES:
        assert actual[role] == expected[role], role


async def test_example_has_erp_values(demo_data: DemoData, tmp_path: Path) -> None:
    result = await answers("sql", demo_data, tmp_path)
    node = result["finance"]["data"]["customers"]["edges"][0]["node"]

    assert node["creditLimit"] is not None
    assert node["iban"] is not None
    assert node["orders"] != []
