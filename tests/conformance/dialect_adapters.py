"""One adapter per source dialect for the conformance suite in ``test_conformance.py``.

An adapter starts a dialect's demo fake (or loads a SQL database) and builds
the dialect's source against it. It also declares what the suite needs: the
sample records to read, how many upstream requests a batch of keys costs,
how to inject a fault, and which cases cannot apply, with the reason.

HTTP fakes run in-process through ``httpx.ASGITransport``. Tests marked
``loopback`` get them on a loopback port instead, because they need a real
socket: a timeout that the client must enforce, or a connection that ends
mid-body. Every fake injects faults through its ``DemoControl``
(``app.state.control``) in the same way, see ``gateway.demo.control``.

Adding a dialect is one subclass of
``HttpAdapter`` (``Adapter`` for a dialect without HTTP) added to
``ADAPTERS``. It sets ``dialect``, ``sample``, ``batch_requests``,
``status_errors`` and ``not_applicable``, and implements ``build_app`` (the
fake, with a ``DemoControl`` as ``app.state.control``), ``build_source`` and,
when entity or attribute names differ from the sample's, ``wire_name``.
"""

from __future__ import annotations

import asyncio
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import httpx
import orjson
import uvicorn
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette

from gateway.demo.control import DemoControl, RequestLogEntry
from gateway.demo.data import DemoData, Record
from gateway.demo.dataverse import create_dataverse_app
from gateway.demo.launch import serve_in_background, stop_background
from gateway.demo.mappings import (
    DATAVERSE_ENTITIES,
    REST_ENTITIES,
    SAP_ENTITIES,
    demo_rest_settings,
)
from gateway.demo.odoo import create_odoo_app
from gateway.demo.rest import RETRY_AFTER_SECONDS as REST_RETRY_AFTER_SECONDS
from gateway.demo.rest import create_rest_app
from gateway.demo.salesforce import create_salesforce_app
from gateway.demo.sap import PAGE_SIZE as SAP_PAGE_SIZE
from gateway.demo.sap import create_sap_app
from gateway.demo.sql import load_demo_erp
from gateway.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest, Source
from gateway.sources.client import (
    DEFAULT_HTTP_CLIENT,
    HttpClient,
    UpstreamClient,
    new_client,
    new_transport,
)
from gateway.sources.dataverse import MAX_PAGE_SIZE, DataverseSettings, DataverseSource
from gateway.sources.mapping import EntityMap, MappedSource
from gateway.sources.odoo import (
    OdooJson2Settings,
    OdooJson2Source,
    OdooJsonRpcSource,
    OdooSettings,
)
from gateway.sources.rest import RestSource
from gateway.sources.salesforce import SalesforceSettings, SalesforceSource
from gateway.sources.sap import SapSettings, SapSource
from gateway.sources.sql import SqlSettings, SqlSource

Case = Literal["batch", "paging", "projection", "empty_false", "empty_null", "empty_missing",
               "status_error", "throttle", "unknown_attribute", "unknown_entity",
               "bad_credentials", "slow", "drop", "malformed"]
EmptyForm = Literal["false", "null", "missing"]
Fault = Literal["slow", "drop", "malformed"]

SECRET = "s3cret-conformance"
SLOW_SECONDS = 0.8  # how long a slow fake waits before it responds
TIMEOUT = 0.2  # the client timeout of the slow case, well under SLOW_SECONDS


@dataclass(frozen=True)
class Sample:
    """The records a dialect's fake serves for the shared cases, in the source's names.

    ``entity`` is read by ``key`` with ``attributes``. ``empty`` is an
    attribute with empty values in some records. ``child`` has several rows
    per ``child_key`` value, which contains the ``parent_key`` of a parent
    record, enough rows for several pages.
    """

    entity: str
    key: str
    attributes: tuple[str, ...]
    empty: str
    child: str
    child_key: str
    parent_key: str
    records: Callable[[DemoData], list[Record]]
    children: Callable[[DemoData], list[Record]]
    parents: Callable[[DemoData], list[Record]]
    missing_key: Callable[[int], str | int]

    def keys(self, data: DemoData, count: int) -> tuple[str | int, ...]:
        """Return ``count`` keys: existing records first, then keys that match nothing."""
        existing = [record[self.key] for record in self.records(data)][:count]
        missing = [self.missing_key(n) for n in range(count - len(existing))]
        return tuple(existing + missing)

    def expected(self, data: DemoData, keys: tuple[str | int, ...],
                 attributes: tuple[str, ...]) -> list[Record]:
        """Return the demo records among ``keys`` projected on ``attributes``, sorted by key."""
        requested = set(keys)
        rows = [{name: record[name] for name in attributes}
                for record in self.records(data) if record[self.key] in requested]
        return sorted(rows, key=lambda row: row[self.key])


ERP_SAMPLE = Sample(
    entity="sale.order", key="id", attributes=("id", "name", "state"), empty="commitment_date",
    child="sale.order", child_key="partner_id", parent_key="id",
    records=lambda data: data.erp["sale.order"],
    children=lambda data: data.erp["sale.order"],
    parents=lambda data: data.erp["res.partner"],
    missing_key=lambda n: 900_000 + n)

CRM_SAMPLE = Sample(
    entity="Contact", key="Id", attributes=("Id", "LastName", "Title"), empty="Title",
    child="Contact", child_key="AccountId", parent_key="Id",
    records=lambda data: data.crm["Contact"],
    children=lambda data: data.crm["Contact"],
    parents=lambda data: data.crm["Account"],
    # A well-formed 18-character Contact id that no demo record has.
    missing_key=lambda n: f"0035g0ZZ{n:010d}")


@dataclass(frozen=True)
class Read:
    """One entity read as the upstream saw it: entity, key count and projected fields."""

    entity: str
    keys: int
    fields: list[str] | None


@dataclass(frozen=True)
class StatusError:
    """A documented error status and the gateway error it must become."""

    error: type[UpstreamError]
    match: str


class Adapter(ABC):
    """A dialect under test, with its fake or database."""

    dialect: ClassVar[str]
    sample: ClassVar[Sample]
    # Upstream requests (HTTP requests or SQL statements) for a batch of N keys.
    batch_requests: ClassVar[Mapping[int, int]]
    # Rows per page in the paging case, or None when the dialect has no paging.
    page_size: ClassVar[int | None] = None
    # Documented error statuses the fake can inject, by HTTP status.
    status_errors: ClassVar[Mapping[int, StatusError]] = {}
    # (status, Retry-After seconds or None) of the dialect's throttle response.
    throttle: ClassVar[tuple[int, float | None] | None] = None
    # Case -> why it cannot apply to this dialect.
    not_applicable: ClassVar[Mapping[Case, str]] = {}

    def __init__(self, data: DemoData) -> None:
        self.data = data

    @abstractmethod
    async def start(self, *, socket: bool = False) -> None:
        """Start the fake or open the database. ``socket`` serves the fake on loopback."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop what ``start`` started and close the sources built since."""

    @abstractmethod
    def source(self, *, timeout: float = 10.0, empty: EmptyForm | None = None,
               paged: bool = False, http_client: HttpClient = DEFAULT_HTTP_CLIENT) -> Source:
        """Build a source. ``empty`` rewrites every ``sample.empty`` value to that form.

        ``paged`` makes pages ``page_size`` rows long, and otherwise they have
        the dialect's default size. ``http_client`` picks the client of a
        fake on a real socket.
        """

    @abstractmethod
    def reads(self) -> list[Read]:
        """Return the entity reads since the last ``clear``, ``$batch`` parts included."""

    @abstractmethod
    def request_count(self) -> int:
        """Return the upstream requests since the last ``clear``: HTTP requests or statements."""

    @abstractmethod
    def clear(self) -> None:
        """Forget the logged requests."""

    async def reset_faults(self) -> None:
        """Make the next reads succeed again."""
        return None

    @abstractmethod
    async def inject(self, fault: Fault | int) -> FetchRequest | None:
        """Make the next reads fail with ``fault`` (an HTTP status or a named fault).

        Returns a request to send in place of the case's own, or None to keep it.
        """

    def wire_name(self, entity: str, attribute: str) -> str:
        """Return the upstream's name of ``attribute``, as its request log shows it."""
        return attribute

    @property
    def name(self) -> str:
        """The dialect, and the database server where one dialect runs on several."""
        return self.dialect

    def reason(self, case: Case) -> str | None:
        return self.not_applicable.get(case)


# --- HTTP dialects ----------------------------------------------------------------------


class _EmptyRewrite(httpx.AsyncBaseTransport):
    """Rewrites one property of every JSON object in read responses to an empty form.

    It lets every dialect meet each empty-value form (``false``, ``null``, a
    missing property), whichever form its fake writes.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, name: str, form: EmptyForm) -> None:
        self.inner = inner
        self.name = name
        self.form = form

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if "json" not in response.headers.get("content-type", ""):
            return response
        body = orjson.loads(await response.aread())
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return httpx.Response(response.status_code, headers=headers,
                              content=orjson.dumps(self._rewrite(body)), request=request)

    def _rewrite(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._rewrite(item) for item in value]
        if not isinstance(value, dict):
            return value
        rewritten = {key: self._rewrite(item) for key, item in value.items()}
        if self.name in rewritten:
            if self.form == "missing":
                del rewritten[self.name]
            else:
                rewritten[self.name] = False if self.form == "false" else None
        return rewritten


class HttpAdapter(Adapter):
    """A dialect that reads an HTTP fake whose ``app.state.control`` is a ``DemoControl``."""

    def __init__(self, data: DemoData) -> None:
        super().__init__(data)
        self.app: Starlette | None = None
        self.base_url = "http://upstream.test"
        self.secret = SECRET  # the credential sources send, and the fake accepts only SECRET
        self._server: uvicorn.Server | None = None
        self._sources: list[Source] = []

    @abstractmethod
    def build_app(self) -> Starlette:
        """Build the dialect's fake over ``self.data``."""

    @abstractmethod
    def build_source(self, client: UpstreamClient, timeout: float, paged: bool) -> Source:
        """Build the source that reads ``self.base_url`` through ``client``."""

    @property
    def control(self) -> DemoControl:
        assert self.app is not None, "start the adapter first"
        control: DemoControl = self.app.state.control
        return control

    async def start(self, *, socket: bool = False) -> None:
        self.app = self.build_app()
        if socket:
            self._server, port = await serve_in_background(self.app)
            self.base_url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for source in self._sources:
            await source.aclose()
        if self._server is not None:
            await stop_background(self._server)

    def source(self, *, timeout: float = 10.0, empty: EmptyForm | None = None,
               paged: bool = False, http_client: HttpClient = DEFAULT_HTTP_CLIENT) -> Source:
        assert self.app is not None, "start the adapter first"
        client: UpstreamClient
        if self._server is not None and empty is None:
            client = new_client(timeout, http_client, cookies=self.dialect == "sap")
        else:
            # The empty-value rewrite is an httpx transport, so it needs an httpx client.
            transport: httpx.AsyncBaseTransport
            if self._server is not None:
                transport = new_transport()
            else:
                transport = httpx.ASGITransport(app=self.app)
            if empty is not None:
                transport = _EmptyRewrite(transport, self.wire_name(self.sample.entity,
                                                                    self.sample.empty), empty)
            client = httpx.AsyncClient(transport=transport, timeout=timeout)
        source = self.build_source(client, timeout, paged)
        self._sources.append(source)
        return source

    def reads(self) -> list[Read]:
        return [Read(entry.entity, entry.keys, entry.fields) for entry in self.control.log
                if entry.entity is not None and _is_read(entry)]

    def request_count(self) -> int:
        return len(self.control.http_requests())

    def clear(self) -> None:
        self.control.clear()

    async def reset_faults(self) -> None:
        self.control.fault_status = None
        self.control.fault_delay = 0.0
        self.control.fault_body = None

    async def inject(self, fault: Fault | int) -> FetchRequest | None:
        if fault == "slow":
            self.control.fault_delay = SLOW_SECONDS
        elif isinstance(fault, int):
            self.control.fault_status = fault
        else:
            self.control.fault_body = fault
        return None


def _is_read(entry: RequestLogEntry) -> bool:
    return entry.entity is not None and entry.entity != "$batch" and entry.status == 200


# --- Salesforce --------------------------------------------------------------------------


class SalesforceAdapter(HttpAdapter):
    """Salesforce REST: sObject Collections by id, SOQL with ``nextRecordsUrl`` paging."""

    dialect = "salesforce"
    sample = CRM_SAMPLE
    # Lookups by Id use sObject Collections, 2,000 ids per request.
    batch_requests: ClassVar[Mapping[int, int]] = {1: 1, 200: 1, 5000: 3}
    page_size = 200  # the smallest batchSize Salesforce allows
    status_errors: ClassVar[Mapping[int, StatusError]] = {
        400: StatusError(UpstreamRejected, r"rejected Contact retrieve .*\(UNKNOWN_EXCEPTION\)"),
        404: StatusError(UpstreamRejected, "HTTP 404"),
        500: StatusError(UpstreamUnavailable, "HTTP 500"),
        503: StatusError(UpstreamUnavailable, "HTTP 503"),
    }
    throttle = (403, None)  # 403 REQUEST_LIMIT_EXCEEDED, with no Retry-After
    not_applicable: ClassVar[Mapping[Case, str]] = {
        "empty_false": "Salesforce writes null for every empty field; false is a Checkbox "
                       "value, never an empty marker",
    }

    def build_app(self) -> Starlette:
        return create_salesforce_app(self.data, client_id="client", client_secret=SECRET,
                                     page_size=self.page_size or 2000)

    def build_source(self, client: UpstreamClient, timeout: float, paged: bool) -> Source:
        settings = SalesforceSettings(login_url=self.base_url, client_id="client",
                                      client_secret=self.secret, timeout=timeout)
        return SalesforceSource("crm", settings, client)


# --- Odoo ---------------------------------------------------------------------------------


class OdooJsonRpcAdapter(HttpAdapter):
    """Odoo's ``/jsonrpc`` transport: errors arrive in HTTP 200 bodies."""

    dialect = "odoo-jsonrpc"
    sample = ERP_SAMPLE
    # Up to 5,000 keys per search_read call.
    batch_requests: ClassVar[Mapping[int, int]] = {1: 1, 200: 1, 5000: 1}
    status_errors: ClassVar[Mapping[int, StatusError]] = {
        500: StatusError(UpstreamUnavailable, "HTTP 500"),
        502: StatusError(UpstreamUnavailable, "HTTP 502"),
        503: StatusError(UpstreamUnavailable, "HTTP 503"),
    }
    # Odoo has no throttle of its own, but Odoo.sh and proxies in front of it return 429.
    throttle = (429, None)
    not_applicable: ClassVar[Mapping[Case, str]] = {
        "paging": "search_read returns every match in one response; Odoo has no "
                  "server-driven paging, and the dialect sends no offset",
    }
    def build_app(self) -> Starlette:
        return create_odoo_app(self.data, api_key=SECRET)

    def build_source(self, client: UpstreamClient, timeout: float, paged: bool) -> Source:
        settings = OdooSettings(base_url=self.base_url, database="fonte_demo", login="gateway",
                                api_key=self.secret, timeout=timeout)
        return OdooJsonRpcSource("erp", settings, client)


class OdooJson2Adapter(OdooJsonRpcAdapter):
    """Odoo 19's ``/json/2`` transport: errors arrive as HTTP statuses."""

    dialect = "odoo-json2"
    status_errors: ClassVar[Mapping[int, StatusError]] = {
        403: StatusError(UpstreamError, "HTTP 403"),
        404: StatusError(UpstreamRejected, "HTTP 404"),
        422: StatusError(UpstreamRejected, "HTTP 422"),
        500: StatusError(UpstreamUnavailable, "HTTP 500"),
        503: StatusError(UpstreamUnavailable, "HTTP 503"),
    }

    def build_source(self, client: UpstreamClient, timeout: float, paged: bool) -> Source:
        settings = OdooJson2Settings(base_url=self.base_url, database="fonte_demo",
                                     api_key=self.secret, timeout=timeout)
        return OdooJson2Source("erp", settings, client)


# --- OData ----------------------------------------------------------------------------------


class _MappedAdapter(HttpAdapter):
    """A dialect read through ``MappedSource``: the schema's names mapped onto the fake's."""

    entities: ClassVar[Mapping[str, EntityMap]]
    sample = ERP_SAMPLE

    def wire_name(self, entity: str, attribute: str) -> str:
        return self.entities[entity].attribute(attribute)

    def reads(self) -> list[Read]:
        by_name = {mapping.name: model for model, mapping in self.entities.items()}
        return [Read(by_name.get(read.entity, read.entity), read.keys, read.fields)
                for read in super().reads()]


class _ODataAdapter(_MappedAdapter):
    """The shared half of the OData dialects."""

    not_applicable: ClassVar[Mapping[Case, str]] = {
        "empty_false": "false is an Edm.Boolean value in OData, never an empty marker",
    }


class DataverseAdapter(_ODataAdapter):
    """Dataverse Web API (OData 4.0): ``or`` chains, ``$batch`` past 32 KB, nextLink paging."""

    dialect = "dataverse"
    entities = DATAVERSE_ENTITIES
    # 5,000 keys go in one $batch POST.
    batch_requests: ClassVar[Mapping[int, int]] = {1: 1, 200: 1, 5000: 1}
    page_size = 500
    status_errors: ClassVar[Mapping[int, StatusError]] = {
        400: StatusError(UpstreamRejected, "HTTP 400"),
        401: StatusError(UpstreamAuthFailed, "HTTP 401"),
        403: StatusError(UpstreamAuthFailed, "HTTP 403"),
        404: StatusError(UpstreamRejected, "HTTP 404"),
        500: StatusError(UpstreamUnavailable, "HTTP 500"),
        503: StatusError(UpstreamUnavailable, "HTTP 503"),
    }
    throttle = (429, 7.0)

    def build_app(self) -> Starlette:
        return create_dataverse_app(self.data, client_id="client", client_secret=SECRET)

    def build_source(self, client: UpstreamClient, timeout: float, paged: bool) -> Source:
        settings = DataverseSettings(
            base_url=self.base_url, token_url=f"{self.base_url}/oauth2/v2.0/token",
            client_id="client", client_secret=self.secret, scope=f"{self.base_url}/.default",
            page_size=self.page_size if paged and self.page_size else MAX_PAGE_SIZE,
            timeout=timeout)
        return MappedSource(DataverseSource("erp", settings, client), DATAVERSE_ENTITIES)


class SapAdapter(_ODataAdapter):
    """SAP OData 2.0: ``d.results``, ``__next`` paging, ``$batch`` after a CSRF token fetch."""

    dialect = "sap"
    entities = SAP_ENTITIES
    # 5,000 keys: one GET that fetches the CSRF token, then one $batch POST.
    batch_requests: ClassVar[Mapping[int, int]] = {1: 1, 200: 1, 5000: 2}
    page_size = 500
    status_errors: ClassVar[Mapping[int, StatusError]] = {
        400: StatusError(UpstreamRejected, "HTTP 400"),
        403: StatusError(UpstreamAuthFailed, "HTTP 403"),
        404: StatusError(UpstreamRejected, "HTTP 404"),
        500: StatusError(UpstreamUnavailable, "HTTP 500"),
        503: StatusError(UpstreamUnavailable, "HTTP 503"),
    }
    throttle = (429, 7.0)

    def build_app(self) -> Starlette:
        return create_sap_app(self.data, user="COMM_USER", password=SECRET)

    def build_source(self, client: UpstreamClient, timeout: float, paged: bool) -> Source:
        # SAP pages on the server, so the page size is the fake's setting.
        assert self.app is not None
        self.app.state.fake.page_size = self.page_size if paged else SAP_PAGE_SIZE
        settings = SapSettings(base_url=self.base_url, service="API_FONTE_DEMO",
                               user="COMM_USER", password=self.secret, timeout=timeout)
        return MappedSource(SapSource("erp", settings, client), SAP_ENTITIES)


# --- REST -----------------------------------------------------------------------------------


class RestAdapter(_MappedAdapter):
    """Generic REST/JSON, configured as the demo configures it for the demo REST ERP."""

    dialect = "rest"
    entities = REST_ENTITIES
    # Up to 1,000 ids per GET, fewer where the URL would pass 8,000 bytes, and
    # 500 rows per page. Of 5,000 keys, 1,590 match demo orders: six GETs, and
    # the two that match over 500 orders read a second page.
    batch_requests: ClassVar[Mapping[int, int]] = {1: 1, 200: 1, 5000: 8}
    page_size = 200
    status_errors: ClassVar[Mapping[int, StatusError]] = {
        400: StatusError(UpstreamRejected, r"HTTP 400 \(invalid_parameter\)"),
        401: StatusError(UpstreamAuthFailed, r"HTTP 401 \(unauthorized\)"),
        404: StatusError(UpstreamRejected, r"HTTP 404 \(not_found\)"),
        414: StatusError(UpstreamRejected, r"too long \(HTTP 414\)"),
        500: StatusError(UpstreamUnavailable, r"HTTP 500 \(server_error\)"),
        502: StatusError(UpstreamUnavailable, r"HTTP 502 \(server_error\)"),
        503: StatusError(UpstreamUnavailable, r"HTTP 503 \(server_error\)"),
    }
    throttle = (429, float(REST_RETRY_AFTER_SECONDS))
    not_applicable: ClassVar[Mapping[Case, str]] = {
        "empty_false": "false is a JSON boolean value, never an empty marker, so the rest "
                       "dialect keeps it as False",
    }

    def build_app(self) -> Starlette:
        return create_rest_app(self.data, api_key=SECRET)

    def build_source(self, client: UpstreamClient, timeout: float, paged: bool) -> Source:
        settings = replace(demo_rest_settings(self.base_url, self.secret), timeout=timeout)
        if paged:
            assert self.page_size is not None
            resources = {name: replace(resource, paging=replace(resource.paging,
                                                                page_size=self.page_size))
                         for name, resource in settings.resources.items()}
            settings = replace(settings, resources=resources)
        return MappedSource(RestSource("erp", settings, client), REST_ENTITIES)


# --- SQL ------------------------------------------------------------------------------------


# A view of sale_order that takes seconds or more for any read. SQLite has no
# sleep function, so its view counts to two billion first.
_SLOW_VIEWS = {
    "postgresql": "CREATE VIEW slow_sale_order AS SELECT o.* FROM sale_order o "
                  "CROSS JOIN pg_sleep(5) AS s",
    "mysql": "CREATE VIEW slow_sale_order AS SELECT o.* FROM sale_order o "
             "WHERE SLEEP(5) = 0",
    "sqlite": "CREATE VIEW slow_sale_order AS SELECT o.* FROM sale_order o, (WITH RECURSIVE "
              "c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2000000000) "
              "SELECT max(i) AS n FROM c) AS counted",
}
# How to end another session's connection, and how to find it by its running SQL.
_FIND_SESSION = {
    "postgresql": "SELECT pid FROM pg_stat_activity WHERE state = 'active' "
                  "AND query LIKE '%slow_sale_order%' AND pid <> pg_backend_pid()",
    "mysql": "SELECT id FROM information_schema.processlist "
             "WHERE info LIKE '%slow_sale_order%' AND id <> connection_id()",
}
_END_SESSION = {
    "postgresql": "SELECT pg_terminate_backend({})",
    "mysql": "KILL CONNECTION {}",
}


async def load_sql_database(url: str, data: DemoData) -> None:
    """Load the demo ERP and the ``slow_sale_order`` view into an empty database."""
    engine = create_async_engine(url)
    try:
        await load_demo_erp(engine, data)
        async with engine.begin() as connection:
            await connection.execute(text(_SLOW_VIEWS[engine.dialect.name]))
    finally:
        await engine.dispose()


@dataclass
class _Statements:
    """The SQL statements a source sent with their parameters, collected by an engine event."""

    sent: list[tuple[str, Any]] = field(default_factory=list)

    def record(self, _connection: Any, _cursor: Any, statement: str, parameters: Any,
               _context: Any, _executemany: bool) -> None:
        self.sent.append((statement, parameters))


class SqlAdapter(Adapter):
    """The SQL dialect on one database server, over the demo ERP tables."""

    dialect = "sql"
    sample = ERP_SAMPLE
    batch_requests: ClassVar[Mapping[int, int]] = {1: 1, 200: 1, 5000: 5}  # 1,000 keys per SELECT
    not_applicable: ClassVar[Mapping[Case, str]] = {
        "paging": "one SELECT returns one result set; SQL has no server-driven pages",
        "empty_false": "false is a BOOLEAN value in SQL, never an empty marker",
        "empty_missing": "a SELECT returns every column of its list, so no value can be "
                         "missing from a row",
        "status_error": "databases answer with driver errors, not HTTP statuses; the unknown "
                        "attribute and entity cases cover the statement errors",
        "throttle": "databases have no throttle response; a full pool waits up to the "
                    "timeout, which the slow case covers",
        "bad_credentials": "the test servers use trust authentication and SQLite has none, "
                           "so no credential is ever checked",
        "malformed": "results arrive in the driver's wire protocol, never as JSON",
    }

    def __init__(self, data: DemoData, backend: str, url: str) -> None:
        super().__init__(data)
        self.backend = backend
        self.url = url
        self.statements = _Statements()
        self._sources: list[SqlSource] = []
        self._ending: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"sql-{self.backend}"

    def reason(self, case: Case) -> str | None:
        if case == "drop" and self.backend == "sqlite":
            return "SQLite runs in the gateway's process, so there is no connection to drop"
        return super().reason(case)

    async def start(self, *, socket: bool = False) -> None:
        return None

    async def stop(self) -> None:
        if self._ending is not None:
            await self._ending
        for source in self._sources:
            await source.aclose()

    def source(self, *, timeout: float = 10.0, empty: EmptyForm | None = None,
               paged: bool = False, http_client: HttpClient = DEFAULT_HTTP_CLIENT) -> Source:
        # The demo ERP contains real NULLs, so the null form needs no rewriting.
        assert empty in (None, "null"), f"{empty} does not apply to SQL"
        source = SqlSource("erp", SqlSettings(url=self.url, timeout=timeout))
        event.listen(source.engine.sync_engine, "before_cursor_execute", self.statements.record)
        self._sources.append(source)
        return source

    def selects(self) -> list[tuple[str, Any]]:
        """Return the SELECTs that read ``sale_order``, reflection queries left out."""
        return [(sql, parameters) for sql, parameters in self.statements.sent
                if _READS_SALE_ORDER.match(sql)]

    def reads(self) -> list[Read]:
        # Every parameter of the sample's reads is a key.
        return [Read("sale.order", len(parameters or ()), _select_list(sql))
                for sql, parameters in self.selects()]

    def request_count(self) -> int:
        return len(self.selects())

    def clear(self) -> None:
        self.statements.sent.clear()

    async def inject(self, fault: Fault | int) -> FetchRequest | None:
        assert fault in ("slow", "drop"), f"fault {fault!r} does not apply to SQL"
        request = FetchRequest("slow_sale_order", ("id",), match="id", keys=(3001,))
        if fault == "drop":
            self._ending = asyncio.get_running_loop().create_task(self._end_session())
        return request

    async def _end_session(self) -> None:
        """End the connection that runs the slow read, as a failed server or network would."""
        engine = create_async_engine(self.url)
        try:
            async with engine.connect() as connection:
                name = engine.dialect.name
                for _attempt in range(200):
                    found = (await connection.execute(text(_FIND_SESSION[name]))).first()
                    if found is not None:
                        await connection.execute(text(_END_SESSION[name].format(int(found[0]))))
                        return
                    await asyncio.sleep(0.02)
        finally:
            await engine.dispose()
        raise AssertionError("the slow read did not appear in the server's session list "
                             "within 4 s, so its connection could not be ended")


_READS_SALE_ORDER = re.compile(r"^\s*SELECT\s.*?\sFROM\s+[`\"]?sale_order[`\"]?(\s|$)",
                               re.S | re.I)


def _select_list(statement: str) -> list[str]:
    """Return the column names of a SELECT, table prefixes and quotes removed."""
    head = re.split(r"\sFROM\s", statement, maxsplit=1, flags=re.I)[0]
    columns = re.sub(r"^\s*SELECT\s", "", head, flags=re.I)
    return [part.strip().split(".")[-1].strip('"`') for part in columns.split(",")]


ADAPTERS: dict[str, Callable[[DemoData], HttpAdapter]] = {
    "salesforce": SalesforceAdapter,
    "odoo-jsonrpc": OdooJsonRpcAdapter,
    "odoo-json2": OdooJson2Adapter,
    "dataverse": DataverseAdapter,
    "sap": SapAdapter,
    "rest": RestAdapter,
}
"""The HTTP dialects by name; the SQL backends are built by the suite's ``adapter`` fixture."""

SQL_BACKENDS = ("sqlite", "postgresql", "mariadb")


def pages(rows: int, page_size: int) -> int:
    """Return how many pages ``rows`` rows fill."""
    return max(1, math.ceil(rows / page_size))
