"""Shared fixtures: the demo CRM and ERP in-process, and a gateway in front of them.

The demo systems are the real Starlette apps of ``gateway.demo``; the
gateway reaches them through ``httpx.ASGITransport``, so every test runs the
gateway's real HTTP clients against the vendors' wire formats without
opening sockets.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.audit.export import ExportFilter, export_records
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.config import Settings, SystemSettings
from gateway.demo.data import DemoData, generate
from gateway.demo.odoo import create_odoo_app
from gateway.demo.salesforce import create_salesforce_app
from gateway.identity import (
    ALGORITHM,
    DEV_AUDIENCE,
    DEV_ISSUER,
    issue_token,
    load_or_create_signing_key,
)
from gateway.policy import default_policy_dir
from gateway.sources.odoo import OdooSettings
from gateway.sources.resilience import ResiliencePolicy
from gateway.sources.salesforce import SalesforceSettings

DEMO_CUSTOMERS = 200
DEFAULT_PURPOSES = {"sales": "sales", "finance": "billing", "it": "it-operations",
                    "dpo": "compliance", "sales-rep": "sales"}


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

    def token_with(self, *roles: str, user: str = "u-test", **claims: Any) -> str:
        """Return a token for ``roles`` carrying extra claims (``purposes``, ``region`` ...).

        Unlike ``token``, no purpose is added unless ``claims`` names one.
        """
        now = int(time.time())
        payload: dict[str, Any] = {"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": user,
                                   "roles": list(roles), "iat": now, "nbf": now,
                                   "exp": now + 3600, **claims}
        return jwt.encode(payload, self.signing_key, algorithm=ALGORITHM)

    async def query(self, query: str, *, role: str = "sales", purpose: str | None = None,
                    variables: dict[str, Any] | None = None, operation_name: str | None = None,
                    token: str | None = None,
                    headers: dict[str, str] | None = None) -> httpx.Response:
        body: dict[str, Any] = {"query": query}
        if variables is not None:
            body["variables"] = variables
        if operation_name is not None:
            body["operationName"] = operation_name
        bearer = token if token is not None else self.token(role, purpose=purpose)
        return await self.client.post("/graphql", json=body,
                                      headers={"Authorization": f"Bearer {bearer}",
                                               **(headers or {})})

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
async def store(tmp_path: Path) -> AsyncIterator[SQLiteAuditStore]:
    """An SQLite audit store at ``tmp_path / "audit.db"``, closed after the test."""
    opened = await SQLiteAuditStore.open(tmp_path / "audit.db")
    try:
        yield opened
    finally:
        await opened.close()


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
                        policy_dir: Path | None = None,
                        overrides: dict[str, Any] | None = None,
                        checkpoint_key: tuple[str, Path] | None = None,
                        ) -> AsyncIterator[Harness]:
    """Run a gateway like the ``harness`` fixture, with each upstream transport wrapped.

    A wrapper receives the ``ASGITransport`` of the demo system and returns the
    transport the gateway's client uses, so a test can inject transport errors
    or hold requests back. ``resilience`` replaces the fixture's no-retry
    policies; pass ``{}`` for the production defaults. ``erp`` replaces the
    ERP settings, to read the demo ERP with another dialect. ``policy_dir`` replaces
    the shipped ``policies/`` folder (see ``write_policy_dir``). ``overrides`` replaces
    other ``Settings`` fields by name, such as ``operation_limits``, ``jwks`` or ``http``.
    ``checkpoint_key`` is the name and file of the audit checkpoint key, instead of the
    default. The gateway's lifespan ends, and its audit store is closed, when the
    ``async with`` block exits.
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
        policy_dir=policy_dir or default_policy_dir(),
    )
    settings = replace(settings, **(overrides or {}))
    if checkpoint_key is not None:
        settings = replace(settings, audit_checkpoint_key_name=checkpoint_key[0],
                           audit_checkpoint_key_file=checkpoint_key[1])
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


def write_policy_dir(directory: Path, rules: str, purposes: str | None = None) -> Path:
    """Write a policy folder: the shipped ``model.conf``, ``rules`` as ``policy.csv``.

    ``purposes`` is the text of ``purposes.toml``; None copies the shipped file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    shipped = default_policy_dir()
    shutil.copy(shipped / "model.conf", directory / "model.conf")
    if purposes is None:
        shutil.copy(shipped / "purposes.toml", directory / "purposes.toml")
    else:
        (directory / "purposes.toml").write_text(purposes, encoding="utf-8")
    (directory / "policy.csv").write_text(rules, encoding="utf-8")
    return directory


async def read_audit_records(data_dir: Path) -> list[dict[str, Any]]:
    """Return every audit record under ``data_dir``, oldest first, as exported to JSONL."""
    out = io.StringIO()
    await export_records(data_dir / "audit.sqlite3", out, fmt="jsonl", filters=ExportFilter())
    return [json.loads(line) for line in out.getvalue().splitlines()]


def seeded_iban(data: DemoData, account_id: str) -> str:
    """Return the IBAN the demo ERP holds for the CRM account ``account_id``."""
    account = next(a for a in data.crm["Account"] if a["Id"] == account_id)
    partner_id = int(account["ERP_Customer_Number__c"])
    ibans = [str(bank["acc_number"]) for bank in data.erp["res.partner.bank"]
             if bank["partner_id"] == partner_id]
    assert len(ibans) == 1, f"partner {partner_id} has {len(ibans)} bank accounts"
    return ibans[0]


def last4(text: str) -> str:
    """Return ``text`` as the ``last4`` mask shows an unspaced value: '*' but the last 4."""
    assert not any(character.isspace() for character in text), "spaced values keep their spaces"
    return "*" * (len(text) - 4) + text[-4:]
