"""The OData dialects against a real OData server: SAP CAP, started on loopback.

``cap_launch`` starts ``@sap/cds`` with the model in this folder, seeded
with the demo ERP records. The Dataverse dialect reads its OData 4.0
service at the Dataverse Web API path, and the SAP dialect reads the OData
2.0 service that ``@cap-js-community/odata-v2-adapter`` serves at the SAP
Gateway path. Both read through ``MappedSource`` with the demo's name
tables, so requests use the schema's Odoo names and rows come back in them.

What CAP does differently from Dataverse and SAP Gateway, and so from our
fakes, and what the tests expect of it:

- CAP pages on the server at ``@cds.query.limit`` (100 rows here) and
  ignores ``Prefer: odata.maxpagesize``. A full last page still gets a
  next-page link, which returns no rows.
- CAP finds no boundary in a quoted one (``boundary="batch_1"``), responds
  to a ``$batch`` that accepts ``application/json`` in the OData 4.01 JSON
  batch format, and rejects request bodies over 100 KB unless configured
  otherwise (the Dataverse service here allows 1 MB). The Dataverse dialect
  used to quote the boundary and accept JSON; it now sends neither.
- The v2 adapter responds to ``$batch`` with 202 Accepted, which the SAP
  dialect used to treat as an error.
- Node.js accepts 16 KB of request line and headers by default; the server
  here runs with 64 KB for the 32 KB GETs of the Dataverse dialect.
- CAP writes OData 4.0 next-page links relative to the service root
  (``accounts?$select=...&$skiptoken=100``). Dataverse writes absolute URLs,
  and the dialect used to send the relative link as it was, which fails.
- The v2 adapter writes ``__next`` and ``__metadata.uri`` with the host
  ``localhost`` in place of the host the request named.
- CAP sends no CSRF token in response to ``x-csrf-token: fetch`` and needs
  none for ``$batch``. The SAP dialect used to fail the read; it now sends
  the POST without a token.
- Decimals come as numbers in OData 4.0 and as text without trailing zeros
  in OData 2.0 (``"10000"``, where SAP Gateway writes ``"10000.00"``).
- CAP accepts the OData 4.01 ``in`` operator in both protocols; Dataverse
  rejects it, so the dialects send ``or`` chains.
- The v2 adapter drops an unknown property from ``$select`` without an
  error, so the row reads it as None; ``$filter`` on it gets 400.
- Error bodies carry the HTTP status as ``error.code`` (``"400"``), where
  the SAP fake sends a message id such as ``/IWBEP/CM_MGW_RT/021``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cap_launch import (
    CLIENT_ID,
    CLIENT_SECRET,
    PASSWORD,
    USER,
    CapServer,
    CapUnavailable,
    check_installed,
    start_cap_server,
)
from services import unavailable

from gateway.catalog import Condition
from gateway.demo.data import DemoData
from gateway.demo.mappings import DATAVERSE_ENTITIES, SAP_ENTITIES
from gateway.errors import UpstreamAuthFailed, UpstreamRejected
from gateway.sources import FetchRequest, Row
from gateway.sources.dataverse import DataverseSettings, DataverseSource
from gateway.sources.mapping import EntityMap, MappedSource
from gateway.sources.odata import query_string
from gateway.sources.sap import SapSettings, SapSource

pytestmark = pytest.mark.loopback

PAGE_SIZE = 100  # @cds.query.limit.default in srv/services.cds
SAP_SERVICE = "/sap/opu/odata/sap/API_FONTE_DEMO"
DATAVERSE_SERVICE = "/api/data/v9.2"
PARTNER_FIELDS = ("id", "name", "email", "credit_limit", "credit")
ORDER_FIELDS = ("id", "name", "partner_id", "date_order", "amount_total")
INVOICE_FIELDS = ("id", "name", "invoice_date_due", "amount_residual")


@pytest.fixture(scope="session")
def cap_server(demo_data: DemoData,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[CapServer]:
    """Yield the CAP server over ``demo_data``; it stops when the session ends."""
    try:
        check_installed()
    except CapUnavailable as error:
        unavailable("the SAP CAP test server", str(error))
    workdir: Path = tmp_path_factory.mktemp("cap")
    with start_cap_server(demo_data, workdir) as server:
        yield server


@dataclass
class Recorder:
    """The requests one source sent, in order."""

    requests: list[httpx.Request] = field(default_factory=list)

    async def record(self, request: httpx.Request) -> None:
        self.requests.append(request)

    def reads(self) -> list[httpx.Request]:
        """Return the entity reads and batches, without token or CSRF requests."""
        return [r for r in self.requests
                if r.url.path.rstrip("/") not in (SAP_SERVICE, "/oauth2/v2.0/token")]


def _client(recorder: Recorder) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=30.0, event_hooks={"request": [recorder.record]})


def dataverse(server: CapServer, recorder: Recorder, *, client_secret: str = CLIENT_SECRET,
              entities: dict[str, EntityMap] | None = None) -> MappedSource:
    # CAP is not Dataverse: the token URL is the stand-in in server.js, and
    # the page size preference is sent but CAP pages at its own limit.
    settings = DataverseSettings(
        base_url=server.url, token_url=f"{server.url}/oauth2/v2.0/token", client_id=CLIENT_ID,
        client_secret=client_secret, scope=f"{server.url}/.default")
    return MappedSource(DataverseSource("erp", settings, _client(recorder)),
                        entities or DATAVERSE_ENTITIES)


def sap(server: CapServer, recorder: Recorder, *, password: str = PASSWORD,
        entities: dict[str, EntityMap] | None = None) -> MappedSource:
    settings = SapSettings(base_url=server.url, service="API_FONTE_DEMO", user=USER,
                           password=password)
    return MappedSource(SapSource("erp", settings, _client(recorder)), entities or SAP_ENTITIES)


def expected(data: DemoData, model: str, attributes: tuple[str, ...],
             ids: set[int] | None = None) -> list[Row]:
    return [{name: record[name] for name in attributes} for record in data.erp[model]
            if ids is None or record["id"] in ids]


def by_id(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda row: row["id"])


def decimals_as_floats(rows: list[Row], names: tuple[str, ...]) -> list[Row]:
    """Return ``rows`` with the text decimals of OData 2.0 read as floats."""
    return [{name: float(value) if name in names and value is not None else value
             for name, value in row.items()} for row in rows]


def query(request: httpx.Request) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(request.url.query.decode()).items()}


def partner_ids(data: DemoData) -> list[int]:
    return [int(record["id"]) for record in data.erp["res.partner"]]


# --- OData 4.0 with the Dataverse dialect ----------------------------------------------------


async def test_dataverse_reads_keys_as_or_chain(cap_server: CapServer,
                                                demo_data: DemoData) -> None:
    ids = partner_ids(demo_data)[:3]
    recorder = Recorder()
    source = dataverse(cap_server, recorder)
    rows = await source.fetch(FetchRequest("res.partner", PARTNER_FIELDS, match="id",
                                           keys=tuple(ids)))
    await source.aclose()

    assert by_id(rows) == expected(demo_data, "res.partner", PARTNER_FIELDS, set(ids))
    [read] = recorder.reads()
    assert read.url.path == f"{DATAVERSE_SERVICE}/accounts"
    options = query(read)
    assert options["$select"] == ("fonte_partnerid,name,emailaddress1,creditlimit,"
                                  "fonte_totalreceivable")
    assert options["$filter"] == " or ".join(f"fonte_partnerid eq {i}" for i in ids)


async def test_dataverse_follows_relative_next_links(cap_server: CapServer,
                                                     demo_data: DemoData) -> None:
    recorder = Recorder()
    source = dataverse(cap_server, recorder)
    rows = await source.fetch(FetchRequest("sale.order", ORDER_FIELDS))
    await source.aclose()

    orders = demo_data.erp["sale.order"]
    assert len(orders) > 3 * PAGE_SIZE
    # CAP writes timestamps as ISO 8601 in UTC; the demo data stores them without a zone.
    want = [{**row, "date_order": row["date_order"].replace(" ", "T") + "Z"}
            for row in expected(demo_data, "sale.order", ORDER_FIELDS)]
    assert by_id(rows) == want
    reads = recorder.reads()
    assert len(reads) == -(-len(orders) // PAGE_SIZE)
    assert reads[0].headers["Prefer"] == "odata.maxpagesize=5000"
    assert query(reads[1])["$skiptoken"] == str(PAGE_SIZE)
    assert all(query(r)["$select"] == query(reads[0])["$select"] for r in reads)


async def test_dataverse_limit_sends_top(cap_server: CapServer, demo_data: DemoData) -> None:
    recorder = Recorder()
    source = dataverse(cap_server, recorder)
    rows = await source.fetch(FetchRequest("account.move", INVOICE_FIELDS, order="id",
                                           limit=3))
    await source.aclose()

    assert rows == expected(demo_data, "account.move", INVOICE_FIELDS)[:3]
    [read] = recorder.reads()
    assert query(read)["$top"] == "3"
    assert "Prefer" not in read.headers


async def test_dataverse_batches_5000_keys(cap_server: CapServer, demo_data: DemoData) -> None:
    ids = partner_ids(demo_data)
    keys = tuple(ids) + tuple(range(100_000, 100_000 + 5000 - len(ids)))
    recorder = Recorder()
    source = dataverse(cap_server, recorder)
    rows = await source.fetch(FetchRequest("res.partner", PARTNER_FIELDS, match="id",
                                           keys=keys))
    await source.aclose()

    assert by_id(rows) == expected(demo_data, "res.partner", PARTNER_FIELDS)
    reads = recorder.reads()
    assert [(r.method, r.url.path) for r in reads[:1]] == [("POST",
                                                           f"{DATAVERSE_SERVICE}/$batch")]
    body = reads[0].content.decode()
    assert body.count("GET accounts?") > 1
    # The part with the 200 known keys returns two full pages, and the GET of
    # the second page returns a link to a third, empty one: CAP links a next
    # page whenever a page is full.
    assert [(r.method, urlsplit(str(r.url)).path) for r in reads[1:]] == [
        ("GET", f"{DATAVERSE_SERVICE}/accounts")] * 2


async def test_dataverse_row_rules_and_search(cap_server: CapServer,
                                              demo_data: DemoData) -> None:
    customers = demo_data.erp["res.partner"]
    first = customers[0]
    city = first["city"]
    source = dataverse(cap_server, Recorder())
    rows = await source.fetch(FetchRequest(
        "res.partner", ("id", "city"), any_of=(Condition("city", "=", city),),
        search=("name", first["name"].split()[0].upper())))
    await source.aclose()

    needle = first["name"].split()[0].lower()
    assert by_id(rows) == [{"id": c["id"], "city": city} for c in customers
                           if c["city"] == city and needle in c["name"].lower()]
    assert {"id": first["id"], "city": city} in rows


async def test_dataverse_unknown_property_is_rejected(cap_server: CapServer) -> None:
    entities = {"res.partner": EntityMap(name="accounts", attributes={"email": "emailaddress9"})}
    source = dataverse(cap_server, Recorder(), entities=entities)
    with pytest.raises(UpstreamRejected) as raised:
        await source.fetch(FetchRequest("res.partner", ("email",)))
    await source.aclose()

    assert str(raised.value) == (
        "system 'erp' rejected accounts read of 0 keys (HTTP 400 (400)); check the entity "
        "and attribute names in the schema and in the system's entities mapping")


async def test_dataverse_unknown_entity_is_rejected(cap_server: CapServer) -> None:
    entities = {"res.partner": EntityMap(name="contacts", attributes={})}
    source = dataverse(cap_server, Recorder(), entities=entities)
    with pytest.raises(UpstreamRejected) as raised:
        await source.fetch(FetchRequest("res.partner", ("email",)))
    await source.aclose()

    assert "(HTTP 404 (404))" in str(raised.value)


async def test_dataverse_wrong_secret_fails_auth(cap_server: CapServer) -> None:
    source = dataverse(cap_server, Recorder(), client_secret="wrong")
    with pytest.raises(UpstreamAuthFailed) as raised:
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))
    await source.aclose()

    assert "client_secret" in str(raised.value)


async def test_dataverse_renews_token_after_401(cap_server: CapServer,
                                                demo_data: DemoData) -> None:
    ids = partner_ids(demo_data)[:1]
    recorder = Recorder()
    source = dataverse(cap_server, recorder)
    request = FetchRequest("res.partner", ("id",), match="id", keys=tuple(ids))
    assert await source.fetch(request) == [{"id": ids[0]}]
    httpx.post(f"{cap_server.url}/test/expire-tokens", timeout=5.0).raise_for_status()
    recorder.requests.clear()

    assert await source.fetch(request) == [{"id": ids[0]}]
    await source.aclose()

    assert [(r.method, r.url.path) for r in recorder.requests] == [
        ("GET", f"{DATAVERSE_SERVICE}/accounts"), ("POST", "/oauth2/v2.0/token"),
        ("GET", f"{DATAVERSE_SERVICE}/accounts")]


# --- OData 2.0 with the SAP dialect ----------------------------------------------------------

SAP_DECIMALS = ("credit_limit", "credit", "amount_total", "amount_residual")


async def test_sap_reads_keys_as_or_chain(cap_server: CapServer, demo_data: DemoData) -> None:
    ids = partner_ids(demo_data)[:3]
    recorder = Recorder()
    source = sap(cap_server, recorder)
    rows = await source.fetch(FetchRequest("res.partner", PARTNER_FIELDS, match="id",
                                           keys=tuple(ids)))
    await source.aclose()

    assert all(isinstance(row["credit_limit"], str) for row in rows)
    assert decimals_as_floats(by_id(rows), SAP_DECIMALS) == expected(
        demo_data, "res.partner", PARTNER_FIELDS, set(ids))
    [read] = recorder.reads()
    assert read.url.path == f"{SAP_SERVICE}/A_Customer"
    options = query(read)
    assert options["$select"] == ("Customer,CustomerName,EmailAddress,CreditLimitAmount,"
                                  "CreditExposureAmount")
    assert options["$filter"] == " or ".join(f"Customer eq {i}" for i in ids)
    assert options["$format"] == "json"


async def test_sap_converts_dates(cap_server: CapServer, demo_data: DemoData) -> None:
    source = sap(cap_server, Recorder())
    invoices = await source.fetch(FetchRequest("account.move", INVOICE_FIELDS, order="id",
                                               limit=2))
    orders = await source.fetch(FetchRequest("sale.order", ORDER_FIELDS, order="id", limit=2))
    await source.aclose()

    # Edm.DateTime (cds.Date) becomes YYYY-MM-DD, Edm.DateTimeOffset becomes UTC text.
    assert decimals_as_floats(invoices, SAP_DECIMALS) == expected(
        demo_data, "account.move", INVOICE_FIELDS)[:2]
    assert decimals_as_floats(orders, SAP_DECIMALS) == [
        {**row, "date_order": row["date_order"].replace(" ", "T") + "Z"}
        for row in expected(demo_data, "sale.order", ORDER_FIELDS)[:2]]


async def test_sap_follows_next_links(cap_server: CapServer, demo_data: DemoData) -> None:
    recorder = Recorder()
    source = sap(cap_server, recorder)
    rows = await source.fetch(FetchRequest("sale.order", ("id", "partner_id")))
    await source.aclose()

    orders = demo_data.erp["sale.order"]
    assert by_id(rows) == expected(demo_data, "sale.order", ("id", "partner_id"))
    reads = recorder.reads()
    assert len(reads) == -(-len(orders) // PAGE_SIZE)
    # The adapter names the host localhost in __next, whatever host the request used.
    assert reads[1].url.host == "localhost"
    assert query(reads[1])["$skiptoken"] == str(PAGE_SIZE)


async def test_sap_batches_without_csrf_token(cap_server: CapServer,
                                              demo_data: DemoData) -> None:
    ids = partner_ids(demo_data)
    keys = tuple(ids) + tuple(range(100_000, 100_000 + 1500 - len(ids)))
    recorder = Recorder()
    source = sap(cap_server, recorder)
    rows = await source.fetch(FetchRequest("res.partner", ("id", "email"), match="id",
                                           keys=keys))
    await source.aclose()

    assert by_id(rows) == expected(demo_data, "res.partner", ("id", "email"))
    fetch, *reads = recorder.requests
    assert (fetch.method, fetch.url.path, fetch.headers["x-csrf-token"]) == (
        "GET", f"{SAP_SERVICE}/", "fetch")
    batches = [r for r in reads if r.method == "POST"]
    assert [r.url.path for r in batches] == [f"{SAP_SERVICE}/$batch"]
    assert "x-csrf-token" not in batches[0].headers
    assert batches[0].content.decode().count("GET A_Customer?") > 1


async def test_sap_batch_over_body_limit_is_rejected(cap_server: CapServer,
                                                     demo_data: DemoData) -> None:
    # The SAP service keeps CAP's default body limit of 100 KB, which 5,000
    # keys in 8 KB GETs pass; the Dataverse service allows 1 MB.
    keys = tuple(range(100_000, 105_000))
    source = sap(cap_server, Recorder())
    with pytest.raises(UpstreamRejected) as raised:
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=keys))
    await source.aclose()

    assert str(raised.value) == (
        "system 'erp' rejected A_Customer $batch of 20 reads and 5000 keys as too large "
        "(HTTP 413); raise the system's request body limit")


async def test_sap_search_with_substringof(cap_server: CapServer,
                                           demo_data: DemoData) -> None:
    first = demo_data.erp["res.partner"][0]
    word = first["name"].split()[0].rstrip(",")
    recorder = Recorder()
    source = sap(cap_server, recorder)
    rows = await source.fetch(FetchRequest("res.partner", ("id",), search=("name", word)))
    await source.aclose()

    assert by_id(rows) == [{"id": c["id"]} for c in demo_data.erp["res.partner"]
                           if word.lower() in c["name"].lower()]
    assert query(recorder.reads()[0])["$filter"] == (
        f"substringof('{word.lower()}',tolower(CustomerName)) eq true")


async def test_sap_unknown_filter_property_is_rejected(cap_server: CapServer) -> None:
    entities = {"res.partner": EntityMap(name="A_Customer", attributes={"id": "Customer",
                                                                        "city": "Town"})}
    source = sap(cap_server, Recorder(), entities=entities)
    with pytest.raises(UpstreamRejected) as raised:
        await source.fetch(FetchRequest("res.partner", ("id",),
                                        where=(Condition("city", "=", "Milano"),)))
    await source.aclose()

    assert str(raised.value) == (
        "system 'erp' rejected A_Customer read of 0 keys (HTTP 400 (400)); check the entity "
        "and attribute names in the schema and in the system's entities mapping")


async def test_sap_unknown_select_property_reads_none(cap_server: CapServer,
                                                      demo_data: DemoData) -> None:
    entities = {"res.partner": EntityMap(name="A_Customer", attributes={"id": "Customer",
                                                                        "city": "Town"})}
    first = partner_ids(demo_data)[0]
    source = sap(cap_server, Recorder(), entities=entities)
    rows = await source.fetch(FetchRequest("res.partner", ("id", "city"), match="id",
                                           keys=(first,)))
    await source.aclose()

    # NOTE: the v2 adapter drops an unknown $select property without an
    # error, so a misspelt mapping reads as None against CAP's OData 2.0.
    assert rows == [{"id": first, "city": None}]


async def test_sap_wrong_password_fails_auth(cap_server: CapServer) -> None:
    source = sap(cap_server, Recorder(), password="wrong")
    with pytest.raises(UpstreamAuthFailed) as raised:
        await source.fetch(FetchRequest("res.partner", ("id",), match="id", keys=(1001,)))
    await source.aclose()

    assert "check the user and password settings" in str(raised.value)


# --- CAP itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [f"{SAP_SERVICE}/A_Customer",
                                  "/odata/v4/api-fonte-demo/A_Customer"])
def test_cap_filter_in_matches_or(cap_server: CapServer, demo_data: DemoData,
                                path: str) -> None:
    ids = partner_ids(demo_data)[:3]
    results = []
    for expression in (f"Customer in ({','.join(map(str, ids))})",
                       " or ".join(f"Customer eq {i}" for i in ids)):
        # CAP reads "+" in a query as a plus sign, so spaces travel as %20.
        options = query_string({"$select": "Customer", "$filter": expression,
                                "$format": "json"})
        response = httpx.get(f"{cap_server.url}{path}?{options}", auth=(USER, PASSWORD),
                             timeout=10.0)
        assert response.status_code == 200, response.text
        body: Any = response.json()
        records = body["d"]["results"] if "d" in body else body["value"]
        results.append(sorted(record["Customer"] for record in records))
    assert results == [ids, ids]

