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
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import uvicorn
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.config import Settings
from gateway.datadir import check_data_dir_free
from gateway.demo.data import DemoData, generate
from gateway.demo.dataverse import create_dataverse_app
from gateway.demo.mappings import DATAVERSE_ENTITIES, SAP_ENTITIES, demo_rest_settings
from gateway.demo.odoo import create_odoo_app
from gateway.demo.rest import create_rest_app
from gateway.demo.salesforce import create_salesforce_app
from gateway.demo.sap import create_sap_app
from gateway.demo.sql import load_demo_erp
from gateway.errors import ConfigError
from gateway.identity import issue_token, load_or_create_signing_key
from gateway.policy import default_policy_dir, read_policy_dir
from gateway.serving import uvicorn_options
from gateway.sources.dataverse import DataverseSettings
from gateway.sources.odoo import OdooJson2Settings, OdooSettings
from gateway.sources.rest import RestSettings
from gateway.sources.salesforce import SalesforceSettings
from gateway.sources.sap import SapSettings
from gateway.sources.sql import SqlSettings

log = logging.getLogger("gateway.demo")

LOOPBACK = "127.0.0.1"
DEMO_ROLES = ("sales", "sales-rep", "finance", "it", "dpo")
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


class _ForegroundServer(uvicorn.Server):
    """A uvicorn server that stops on SIGINT or SIGTERM and then returns normally.

    uvicorn re-raises the signal after a graceful stop, which would end the
    process before the demo removes its scratch folder.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.signal(number, self.handle_exit)
                    for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


class _BackgroundServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the gateway's server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


ERP_DIALECTS = ("odoo", "odoo-json2", "sql", "dataverse", "sap", "rest")
ERP_LABELS = {"odoo": "Odoo JSON-RPC", "odoo-json2": "Odoo JSON-2", "sql": "SQL (SQLite)",
              "dataverse": "Dataverse OData v4", "sap": "SAP OData v2",
              "rest": "plain REST/JSON"}
# Demo ERPs whose settings need an entity mapping that --write-settings does not write.
_MAPPED_ERPS = ("dataverse", "sap", "rest")


@dataclass(frozen=True)
class DemoSystems:
    """The addresses and credentials of the running demo systems.

    ``erp_url`` is the Odoo server's address; with the SQL dialect the
    gateway reads the same records from a SQLite file at ``erp_database``.
    """

    crm_url: str
    erp_url: str
    crm: SalesforceSettings
    erp: (OdooSettings | OdooJson2Settings | SqlSettings | DataverseSettings | SapSettings
          | RestSettings)
    erp_dialect: str = "odoo"
    erp_database: Path | None = None


async def serve_in_background(app: ASGIApp, port: int = 0) -> tuple[uvicorn.Server, int]:
    """Start ``app`` on loopback and return the server and its bound port."""
    config = uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning",
                            access_log=False, lifespan="on", **uvicorn_options())
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
    erp_app: Starlette
    if erp == "dataverse":
        erp_app = create_dataverse_app(data, client_id=client_id, client_secret=client_secret)
    elif erp == "sap":
        erp_app = create_sap_app(data, user="FONTE_COMM", password=client_secret)
    elif erp == "rest":
        erp_app = create_rest_app(data, api_key=api_key)
    else:
        erp_app = create_odoo_app(data, api_key=api_key)
    erp_server, erp_port = await serve_in_background(erp_app)
    crm_url, erp_url = f"http://{LOOPBACK}:{crm_port}", f"http://{LOOPBACK}:{erp_port}"
    crm = SalesforceSettings(login_url=crm_url, client_id=client_id, client_secret=client_secret)
    erp_settings: (OdooSettings | OdooJson2Settings | SqlSettings | DataverseSettings
                   | SapSettings | RestSettings)
    database = None
    if erp == "odoo-json2":
        erp_settings = OdooJson2Settings(base_url=erp_url, database="fonte_demo",
                                         api_key=api_key)
    elif erp == "dataverse":
        erp_settings = DataverseSettings(
            base_url=erp_url, token_url=f"{erp_url}/oauth2/v2.0/token", client_id=client_id,
            client_secret=client_secret, scope=f"{erp_url}/.default",
            entities=DATAVERSE_ENTITIES)
    elif erp == "sap":
        erp_settings = SapSettings(base_url=erp_url, service="API_FONTE_DEMO", user="FONTE_COMM",
                                   password=client_secret, entities=SAP_ENTITIES)
    elif erp == "rest":
        erp_settings = demo_rest_settings(erp_url, api_key)
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


def demo_tokens(data_dir: Path, data: DemoData) -> dict[str, str]:
    """Return a development token per demo role, signed with the data dir's key.

    The sales-rep token is for the region of the first account and owns the
    accounts of that account's owner, so its row rules have something to show.
    """
    key = load_or_create_signing_key(data_dir / "keys" / "token-signing.pem")
    purposes = role_purposes()
    first = data.crm["Account"][0] if data.crm["Account"] else {}
    tokens = {}
    for role in DEMO_ROLES:
        user, extra = f"demo-{role}", {}
        if role == "sales-rep" and first:
            user, extra = str(first["OwnerId"]), {"region": str(first["Region__c"])}
        listed = purposes.get(role, [])
        tokens[role] = issue_token(key, user=user, roles=[role],
                                   purpose=listed[0] if listed else None, extra=extra)
    return tokens


def role_purposes() -> dict[str, list[str]]:
    """Return each role's purposes from the shipped ``policies/purposes.toml``."""
    return read_policy_dir(default_policy_dir()).purposes


def graphiql_link(base: str, token: str) -> str:
    """Return a GraphiQL address with the example query and the token filled in."""
    headers = json.dumps({"Authorization": f"Bearer {token}"})
    return f"{base}/graphql?q={quote(EXAMPLE_QUERY)}&headers={quote(headers)}"


def check_port_free(port: int) -> None:
    """Raise ``ConfigError`` when ``port`` on the loopback address is taken."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError as exc:
            raise ConfigError(f"port {port} on {LOOPBACK} is in use; stop what listens there, "
                              "or pick a free port with `fonte demo --port 0` (with make: "
                              "make demo DEMO_ARGS='--port 0')") from exc


async def run_demo(*, port: int, data_dir: Path, customers: int, erp: str = "odoo",
                   announce: Callable[[str, DemoSystems, dict[str, str]], None],
                   settings_file: Path | None = None) -> None:
    """Run the demo until interrupted; ``announce`` prints where it listens."""
    check_port_free(port)
    check_data_dir_free(data_dir)
    if settings_file is not None and erp in _MAPPED_ERPS:
        raise ConfigError(f"--write-settings does not write the {ERP_LABELS[erp]} demo's "
                          "entity mapping; use it with --erp odoo, odoo-json2 or sql")
    data = generate(customers=customers)
    with tempfile.TemporaryDirectory(prefix="fonte-demo-erp-") as scratch:
        await _serve_demo(data, port=port, data_dir=data_dir, erp=erp, scratch=Path(scratch),
                          announce=announce, settings_file=settings_file)


async def _serve_demo(data: DemoData, *, port: int, data_dir: Path, erp: str, scratch: Path,
                      announce: Callable[[str, DemoSystems, dict[str, str]], None],
                      settings_file: Path | None) -> None:
    systems, background = await start_demo_systems(data, erp, scratch=scratch)
    if settings_file is not None:
        write_serve_settings(settings_file, systems)
    settings = Settings(systems={"crm": systems.crm, "erp": systems.erp}, data_dir=data_dir,
                        host=LOOPBACK, port=port, graphiql=True, development_tokens=True)
    tokens = demo_tokens(data_dir, data)
    # proxy_headers off, as in `fonte serve`: uvicorn would otherwise take the
    # client address from X-Forwarded-For of any local caller.
    config = uvicorn.Config(create_app(settings, server_process=True), host=LOOPBACK, port=port,
                            log_level="warning", access_log=False, lifespan="on",
                            proxy_headers=False, **uvicorn_options())
    server = _ForegroundServer(config)
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


def write_serve_settings(path: Path, systems: DemoSystems) -> None:
    """Write settings with which ``fonte serve`` reads the running demo systems.

    The demo systems' credentials go to files beside ``path`` (mode 0600),
    never into the settings file itself, as the settings loader requires.
    """
    secrets_dir = path.parent / f"{path.stem}-secrets"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    values = {"crm-client-id": systems.crm.client_id,
              "crm-client-secret": systems.crm.client_secret}
    if isinstance(systems.erp, OdooSettings | OdooJson2Settings):
        values["erp-api-key"] = systems.erp.api_key
    for name, value in values.items():
        secret = secrets_dir / name
        secret.write_text(value, encoding="utf-8")
        secret.chmod(0o600)
    lines = [
        "# Written by `fonte demo --write-settings`; valid while that demo runs.",
        "[gateway]", 'host = "127.0.0.1"', "port = 8001",
        f'data_dir = "{path.stem}-data"', "graphiql = true", "",
        "[auth]", "# accept tokens of `fonte token --data-dir <data_dir above>`",
        "development_tokens = true", "",
        "[systems.crm]", 'dialect = "salesforce"', f'login_url = "{systems.crm.login_url}"',
        f'client_id_file = "{secrets_dir.name}/crm-client-id"',
        f'client_secret_file = "{secrets_dir.name}/crm-client-secret"', "",
        "[systems.erp]", *_erp_settings_lines(systems, secrets_dir.name),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _erp_settings_lines(systems: DemoSystems, secrets: str) -> list[str]:
    erp = systems.erp
    if isinstance(erp, DataverseSettings | SapSettings | RestSettings):
        raise ConfigError("--write-settings does not write an entity mapping; use it with "
                          "--erp odoo, odoo-json2 or sql")
    if isinstance(erp, SqlSettings):
        return ['dialect = "sql"', f'url = "{erp.url}"']
    if isinstance(erp, OdooJson2Settings):
        return ['dialect = "odoo-json2"', f'base_url = "{erp.base_url}"',
                f'database = "{erp.database}"', f'api_key_file = "{secrets}/erp-api-key"']
    return ['dialect = "odoo-jsonrpc"', f'base_url = "{erp.base_url}"',
            f'database = "{erp.database}"', f'login = "{erp.login}"',
            f'api_key_file = "{secrets}/erp-api-key"']
