"""Shared fixtures: the demo CRM and ERP in-process, and a gateway in front of them.

The demo systems are the real Starlette apps of ``gateway.demo``; the
gateway reaches them through ``httpx.ASGITransport``, so every test runs the
gateway's real HTTP clients against the vendors' wire formats without
opening sockets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.config import Settings, SystemSettings
from gateway.demo.data import DemoData, generate
from gateway.demo.odoo import create_odoo_app
from gateway.demo.salesforce import create_salesforce_app
from gateway.identity import issue_token, load_or_create_signing_key
from gateway.sources.odoo import OdooSettings
from gateway.sources.resilience import ResiliencePolicy
from gateway.sources.salesforce import SalesforceSettings

DEMO_CUSTOMERS = 200
DEFAULT_PURPOSES = {"sales": "sales", "finance": "billing", "it": "it-operations",
                    "dpo": "compliance"}


@dataclass
class Harness:
    """A running gateway over the demo systems, and handles to inspect them."""

    data: DemoData
    data_dir: Path
    settings: Settings
    gateway_app: Starlette
    crm_app: Starlette
    erp_app: Starlette
    client: httpx.AsyncClient
    signing_key: Ed25519PrivateKey

    def token(self, *roles: str, purpose: str | None = None, user: str = "u-test") -> str:
        roles = roles or ("sales",)
        if purpose is None:
            purpose = DEFAULT_PURPOSES.get(roles[0])
        return issue_token(self.signing_key, user=user, roles=list(roles), purpose=purpose)

    async def query(self, query: str, *, role: str = "sales", purpose: str | None = None,
                    variables: dict[str, Any] | None = None, operation_name: str | None = None,
                    token: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"query": query}
        if variables is not None:
            body["variables"] = variables
        if operation_name is not None:
            body["operationName"] = operation_name
        bearer = token if token is not None else self.token(role, purpose=purpose)
        return await self.client.post("/graphql", json=body,
                                      headers={"Authorization": f"Bearer {bearer}"})

    def crm_requests(self) -> list[Any]:
        """Return the CRM's logged API calls, token requests left out."""
        return [e for e in self.crm_app.state.control.log if e.entity is not None]

    def erp_requests(self) -> list[Any]:
        """Return the ERP's logged ``execute_kw`` calls, logins left out."""
        return [e for e in self.erp_app.state.control.log if e.entity is not None]

    def clear_logs(self) -> None:
        self.crm_app.state.control.clear()
        self.erp_app.state.control.clear()

    def customer_ids(self, count: int) -> list[str]:
        """Return the ids of the first ``count`` accounts in id order."""
        return sorted(a["Id"] for a in self.data.crm["Account"])[:count]


@pytest.fixture(scope="session")
def demo_data() -> DemoData:
    return generate(customers=DEMO_CUSTOMERS)


@pytest.fixture
async def harness(demo_data: DemoData, tmp_path: Path) -> AsyncIterator[Harness]:
    crm_app = create_salesforce_app(demo_data, client_id="test-client", client_secret="s3cret")
    erp_app = create_odoo_app(demo_data, api_key="test-api-key")
    settings = Settings(
        systems={
            "crm": SalesforceSettings(login_url="http://crm.test", client_id="test-client",
                                      client_secret="s3cret"),
            "erp": OdooSettings(base_url="http://erp.test", database="fonte_demo",
                                login="gateway", api_key="test-api-key"),
        },
        data_dir=tmp_path / "data",
        development_tokens=True,
        # No retries, so fault-injection tests see one upstream call per read;
        # tests/sources/test_resilience.py covers retries.
        resilience={"crm": ResiliencePolicy(retries=0), "erp": ResiliencePolicy(retries=0)},
    )
    clients = {
        "crm": httpx.AsyncClient(transport=httpx.ASGITransport(app=crm_app)),
        "erp": httpx.AsyncClient(transport=httpx.ASGITransport(app=erp_app)),
    }
    gateway_app = create_app(settings, clients)
    signing_key = load_or_create_signing_key(settings.signing_key_path)
    async with gateway_app.router.lifespan_context(gateway_app):
        transport = httpx.ASGITransport(app=gateway_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            yield Harness(demo_data, settings.data_dir, settings, gateway_app, crm_app, erp_app,
                          client, signing_key)


TransportWrapper = Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport]


def _same_transport(transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
    return transport


@asynccontextmanager
async def start_harness(data: DemoData, data_dir: Path, *,
                        wrap_crm: TransportWrapper = _same_transport,
                        wrap_erp: TransportWrapper = _same_transport,
                        resilience: dict[str, ResiliencePolicy] | None = None,
                        erp: SystemSettings | None = None,
                        ) -> AsyncIterator[Harness]:
    """Run a gateway like the ``harness`` fixture, with each upstream transport wrapped.

    A wrapper receives the ``ASGITransport`` of the demo system and returns the
    transport the gateway's client uses, so a test can inject transport errors
    or hold requests back. ``resilience`` replaces the fixture's no-retry
    policies; pass ``{}`` for the production defaults. ``erp`` replaces the
    ERP settings, to read the demo ERP with another dialect. The gateway's lifespan
    ends, and its audit store is closed, when the ``async with`` block exits.
    """
    if resilience is None:
        resilience = {"crm": ResiliencePolicy(retries=0), "erp": ResiliencePolicy(retries=0)}
    crm_app = create_salesforce_app(data, client_id="test-client", client_secret="s3cret")
    erp_app = create_odoo_app(data, api_key="test-api-key")
    settings = Settings(
        systems={
            "crm": SalesforceSettings(login_url="http://crm.test", client_id="test-client",
                                      client_secret="s3cret"),
            "erp": erp or OdooSettings(base_url="http://erp.test", database="fonte_demo",
                                       login="gateway", api_key="test-api-key"),
        },
        data_dir=data_dir,
        development_tokens=True,
        resilience=resilience,
    )
    clients = {
        "crm": httpx.AsyncClient(transport=wrap_crm(httpx.ASGITransport(app=crm_app))),
        "erp": httpx.AsyncClient(transport=wrap_erp(httpx.ASGITransport(app=erp_app))),
    }
    gateway_app = create_app(settings, clients)
    signing_key = load_or_create_signing_key(settings.signing_key_path)
    async with gateway_app.router.lifespan_context(gateway_app):
        transport = httpx.ASGITransport(app=gateway_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            yield Harness(data, settings.data_dir, settings, gateway_app, crm_app, erp_app,
                          client, signing_key)


def field_errors(body: dict[str, Any]) -> list[tuple[list[Any], str, str]]:
    """Return each GraphQL error of a response body as (path, extensions.code, message)."""
    return [(error.get("path", []), error["extensions"]["code"], error["message"])
            for error in body.get("errors", [])]
