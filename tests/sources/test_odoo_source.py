"""The Odoo JSON-RPC dialect against the demo Odoo server."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette

from gateway.catalog import Condition
from gateway.demo.data import DemoData
from gateway.demo.odoo import create_odoo_app
from gateway.errors import UpstreamAuthFailed, UpstreamRejected, UpstreamUnavailable
from gateway.sources import FetchRequest, Many2one
from gateway.sources.odoo import OdooJsonRpcSource, OdooSettings, domain_for, normalise

SETTINGS = OdooSettings(base_url="http://erp.test", database="fonte_demo", login="gateway",
                        api_key="key")


@pytest.fixture
def erp(demo_data: DemoData) -> Starlette:
    return create_odoo_app(demo_data, api_key="key")


def source_for(app: Starlette, settings: OdooSettings = SETTINGS) -> OdooJsonRpcSource:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    return OdooJsonRpcSource("erp", settings, client)


def test_domain_has_every_leaf() -> None:
    request = FetchRequest(entity="account.move", attributes=("id",), match="partner_id",
                           keys=(7, 8), where=(Condition("move_type", "in", ("out_invoice",)),
                                               Condition("state", "=", "posted")))

    assert domain_for(request, request.keys) == [
        ["partner_id", "in", [7, 8]], ["move_type", "in", ["out_invoice"]],
        ["state", "=", "posted"]]


def test_normalise_false_and_references() -> None:
    record = {"id": 3, "name": False, "partner_id": [9, "ACME"], "tag_ids": [1, 2],
              "active": True, "ref": "C-1"}
    attributes = ("id", "name", "partner_id", "tag_ids", "active", "missing")

    assert normalise(record, attributes) == {
        "id": 3, "name": None, "partner_id": Many2one(9, "ACME"), "tag_ids": [1, 2],
        "active": True, "missing": None}
    assert normalise({"id": False}, ("id",)) == {"id": False}


async def test_fetch_sends_fields_always(erp: Starlette, demo_data: DemoData) -> None:
    partner = demo_data.erp["res.partner"][0]
    request = FetchRequest(entity="res.partner", attributes=("id", "credit_limit"), match="id",
                           keys=(partner["id"],))

    rows = await source_for(erp).fetch(request)

    calls = [e for e in erp.state.control.log if e.entity == "res.partner"]
    assert rows == [{"id": partner["id"], "credit_limit": partner["credit_limit"]}]
    assert [c.fields for c in calls] == [["id", "credit_limit"]]


async def test_empty_projection_rejected(erp: Starlette) -> None:
    request = FetchRequest(entity="res.partner", attributes=(), match="id", keys=(1,))
    with pytest.raises(UpstreamRejected, match="without a field list"):
        await source_for(erp).fetch(request)
    assert [e for e in erp.state.control.log if e.entity == "res.partner"] == []


async def test_login_happens_once(erp: Starlette, demo_data: DemoData) -> None:
    source = source_for(erp)
    request = FetchRequest(entity="res.partner", attributes=("id",), match="id",
                           keys=(demo_data.erp["res.partner"][0]["id"],))
    await source.fetch(request)
    await source.fetch(request)

    logins = [e for e in erp.state.control.log if e.entity is None]
    assert len(logins) == 1


async def test_bad_key_names_system(erp: Starlette) -> None:
    settings = OdooSettings(base_url="http://erp.test", database="fonte_demo",
                            login="gateway", api_key="wrong")
    request = FetchRequest(entity="res.partner", attributes=("id",), match="id", keys=(1,))
    with pytest.raises(UpstreamAuthFailed, match="system 'erp' rejected the gateway's login"):
        await source_for(erp, settings).fetch(request)


async def test_odoo_error_hides_message(erp: Starlette) -> None:
    request = FetchRequest(entity="res.partner", attributes=("id", "no_such_field"),
                           match="id", keys=(1,))
    with pytest.raises(UpstreamRejected, match=r"with Odoo error builtins.ValueError;") as info:
        await source_for(erp).fetch(request)
    assert "no_such_field" not in str(info.value)


async def test_proxy_fault_is_unavailable(erp: Starlette) -> None:
    erp.state.control.fault_status = 502
    request = FetchRequest(entity="res.partner", attributes=("id",), match="id", keys=(1,))
    with pytest.raises(UpstreamUnavailable, match="answered HTTP 502 for authenticate"):
        await source_for(erp).fetch(request)
