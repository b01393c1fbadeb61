"""Start the demo: a Salesforce-style CRM, an Odoo ERP and the gateway.

The two demo systems are real HTTP servers on free loopback ports, serving
one generated data set; the gateway reads them through the same code path
as ``fonte serve``. Credentials of the demo systems are random per run and
live only in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import tempfile
import tomllib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import uvicorn
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.config import Settings
from gateway.demo.data import DemoData, generate
from gateway.demo.odoo import create_odoo_app
from gateway.demo.salesforce import create_salesforce_app
from gateway.demo.sql import load_demo_erp
from gateway.identity import issue_token, load_or_create_signing_key
from gateway.policy import default_policy_dir
from gateway.sources.odoo import OdooJson2Settings, OdooSettings
from gateway.sources.salesforce import SalesforceSettings
from gateway.sources.sql import SqlSettings

log = logging.getLogger("gateway.demo")

LOOPBACK = "127.0.0.1"
DEMO_ROLES = ("sales", "finance", "it", "dpo")
EXAMPLE_QUERY = """query CustomerList {
  customers(first: 3) {
    edges {
      node {
        id
        name
        vatNumber
        pec
        city
        openBalance
        creditLimit
        iban
        contacts { firstName lastName email }
        orders(first: 2) {
          number
          status
          amountTotal
          shipments { promisedDate status carrier }
        }
        invoices(first: 2) { number dueDate amountResidual paymentStatus }
      }
    }
    pageInfo { hasNextPage endCursor }
  }
}
"""


class _BackgroundServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the gateway's server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


ERP_DIALECTS = ("odoo", "odoo-json2", "sql")
ERP_LABELS = {"odoo": "Odoo JSON-RPC", "odoo-json2": "Odoo JSON-2", "sql": "SQL (SQLite)"}


@dataclass(frozen=True)
class DemoSystems:
    """The addresses and credentials of the running demo systems.

    ``erp_url`` is the Odoo server's address; with the SQL dialect the
    gateway reads the same records from a SQLite file at ``erp_database``.
    """

    crm_url: str
    erp_url: str
    crm: SalesforceSettings
    erp: OdooSettings | OdooJson2Settings | SqlSettings
    erp_dialect: str = "odoo"
    erp_database: Path | None = None


async def serve_in_background(app: ASGIApp, port: int = 0) -> tuple[uvicorn.Server, int]:
    """Start ``app`` on loopback and return the server and its bound port."""
    config = uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning",
                            access_log=False, lifespan="on")
    server = _BackgroundServer(config)
    task = asyncio.create_task(server.serve())
    server.fonte_task = task  # type: ignore[attr-defined]
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done() or not server.started:
        await task  # re-raises the start-up error
        raise RuntimeError(f"demo server on {LOOPBACK}:{port} did not start")
    bound = server.servers[0].sockets[0].getsockname()[1]
    return server, int(bound)


async def stop_background(server: uvicorn.Server) -> None:
    server.should_exit = True
    await server.fonte_task  # type: ignore[attr-defined]


async def start_demo_systems(data: DemoData, erp: str = "odoo", *,
                             scratch: Path | None = None
                             ) -> tuple[DemoSystems, list[uvicorn.Server]]:
    """Start the demo CRM and ERP on free loopback ports.

    ``erp`` picks the dialect the gateway reads the ERP with. For ``sql``
    the ERP records are also loaded into a SQLite file in ``scratch``, a
    folder the caller owns and removes.
    """
    if erp not in ERP_DIALECTS:
        raise ValueError(f"ERP dialect {erp!r} is not one of {', '.join(ERP_DIALECTS)}")
    client_id, client_secret = secrets.token_hex(12), secrets.token_hex(24)
    api_key = secrets.token_hex(20)
    crm_server, crm_port = await serve_in_background(create_salesforce_app(
        data, client_id=client_id, client_secret=client_secret))
    erp_server, erp_port = await serve_in_background(create_odoo_app(data, api_key=api_key))
    crm_url, erp_url = f"http://{LOOPBACK}:{crm_port}", f"http://{LOOPBACK}:{erp_port}"
    crm = SalesforceSettings(login_url=crm_url, client_id=client_id, client_secret=client_secret)
    erp_settings: OdooSettings | OdooJson2Settings | SqlSettings
    database = None
    if erp == "odoo-json2":
        erp_settings = OdooJson2Settings(base_url=erp_url, database="fonte_demo",
                                         api_key=api_key)
    elif erp == "sql":
        database = await _demo_database(data, scratch)
        erp_settings = SqlSettings(url=f"sqlite+aiosqlite:///{database}")
    else:
        erp_settings = OdooSettings(base_url=erp_url, database="fonte_demo", login="gateway",
                                    api_key=api_key)
    systems = DemoSystems(crm_url=crm_url, erp_url=erp_url, crm=crm, erp=erp_settings,
                          erp_dialect=erp, erp_database=database)
    return systems, [crm_server, erp_server]


async def _demo_database(data: DemoData, scratch: Path | None) -> Path:
    if scratch is None:
        raise ValueError("the SQL demo ERP needs a scratch folder for its database file")
    path = scratch / "demo-erp.sqlite3"
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await load_demo_erp(engine, data)
    finally:
        await engine.dispose()
    return path


def demo_tokens(data_dir: Path) -> dict[str, str]:
    """Return a development token per demo role, signed with the data dir's key."""
    key = load_or_create_signing_key(data_dir / "keys" / "token-signing.pem")
    purposes = role_purposes()
    return {role: issue_token(key, user=f"demo-{role}", roles=[role],
                              purpose=purposes.get(role, [None])[0])
            for role in DEMO_ROLES}


def role_purposes() -> dict[str, list[str | None]]:
    """Return each role's purposes from ``policies/purposes.toml``."""
    path = default_policy_dir() / "purposes.toml"
    document = tomllib.loads(path.read_text(encoding="utf-8"))
    return {role: list(values) for role, values in document.get("purposes", {}).items()}


def graphiql_link(base: str, token: str) -> str:
    """Return a GraphiQL address with the example query and the token filled in."""
    headers = json.dumps({"Authorization": f"Bearer {token}"})
    return f"{base}/graphql?q={quote(EXAMPLE_QUERY)}&headers={quote(headers)}"


async def run_demo(*, port: int, data_dir: Path, customers: int, erp: str = "odoo",
                   announce: Callable[[str, DemoSystems, dict[str, str]], None]) -> None:
    """Run the demo until interrupted; ``announce`` prints where it listens."""
    data = generate(customers=customers)
    with tempfile.TemporaryDirectory(prefix="fonte-demo-erp-") as scratch:
        await _serve_demo(data, port=port, data_dir=data_dir, erp=erp, scratch=Path(scratch),
                          announce=announce)


async def _serve_demo(data: DemoData, *, port: int, data_dir: Path, erp: str, scratch: Path,
                      announce: Callable[[str, DemoSystems, dict[str, str]], None]) -> None:
    systems, background = await start_demo_systems(data, erp, scratch=scratch)
    settings = Settings(systems={"crm": systems.crm, "erp": systems.erp}, data_dir=data_dir,
                        host=LOOPBACK, port=port, graphiql=True, development_tokens=True)
    tokens = demo_tokens(data_dir)
    config = uvicorn.Config(create_app(settings), host=LOOPBACK, port=port,
                            log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()[1]
            announce(f"http://{LOOPBACK}:{bound}", systems, tokens)
        await task
    finally:
        for background_server in background:
            await stop_background(background_server)
