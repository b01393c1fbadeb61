"""The Salesforce dialect against the demo Salesforce server."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from gateway.catalog import Condition
from gateway.demo.data import DemoData
from gateway.demo.identifiers import case_safe_id
from gateway.demo.salesforce import create_salesforce_app
from gateway.errors import (
    UpstreamAuthFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest
from gateway.sources.resilience import ResiliencePolicy, ResilientSource
from gateway.sources.salesforce import (
    MAX_URL_BYTES,
    USAGE_WARNING_INTERVAL,
    SalesforceSettings,
    SalesforceSource,
    build_soql,
    is_plain_id_lookup,
    like_pattern,
    soql_literal,
)

SETTINGS = SalesforceSettings(login_url="http://crm.test", client_id="id", client_secret="s")
RETRIEVE_ACCOUNT = "/services/data/v62.0/composite/sobjects/Account"


def source_for(app: Starlette) -> SalesforceSource:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    return SalesforceSource("crm", SETTINGS, client)


def api_calls(app: Starlette) -> list[str]:
    return [entry.path for entry in app.state.control.log]


@pytest.fixture
def crm(demo_data: DemoData) -> Starlette:
    return create_salesforce_app(demo_data, client_id="id", client_secret="s", page_size=2000)


def test_literal_escapes_quotes() -> None:
    assert soql_literal("O'Hara\\x\n") == "'O\\'Hara\\\\x\\n'"


def test_literal_numbers_and_booleans() -> None:
    assert soql_literal(42) == "42"
    assert soql_literal(True) == "true"


def test_like_pattern_escapes_wildcards() -> None:
    assert like_pattern("50%_off") == "'%50\\%\\_off%'"


def test_soql_has_every_clause() -> None:
    request = FetchRequest(entity="Opportunity", attributes=("Id", "Name"), match="AccountId",
                           keys=("001A",), where=(Condition("StageName", "!=", "Closed Lost"),),
                           order="CloseDate desc, Id", limit=5)

    assert build_soql(request, request.keys) == (
        "SELECT Id, Name FROM Opportunity WHERE AccountId IN ('001A') AND "
        "StageName != 'Closed Lost' ORDER BY CloseDate DESC, Id ASC LIMIT 5")


async def test_fetch_by_ids_returns_rows(crm: Starlette, demo_data: DemoData) -> None:
    accounts = demo_data.crm["Account"][:3]
    request = FetchRequest(entity="Account", attributes=("Id", "Name"), match="Id",
                           keys=tuple(a["Id"] for a in accounts))

    rows = await source_for(crm).fetch(request)

    assert sorted(rows, key=lambda r: r["Id"]) == sorted(
        ({"Id": a["Id"], "Name": a["Name"]} for a in accounts), key=lambda r: r["Id"])


async def test_many_keys_split_below_url_limit(crm: Starlette, demo_data: DemoData) -> None:
    account_ids = tuple(a["Id"] for a in demo_data.crm["Account"])
    keys = (account_ids * (5000 // len(account_ids) + 1))[:5000]
    request = FetchRequest(entity="Contact", attributes=("Id",), match="AccountId", keys=keys)

    rows = await source_for(crm).fetch(request)

    queries = [e for e in crm.state.control.log if e.entity == "Contact"]
    assert {row["Id"] for row in rows} == {c["Id"] for c in demo_data.crm["Contact"]}
    assert len(queries) > 1
    assert all(e.status == 200 and e.method == "GET" for e in queries)
    assert sum(e.keys for e in queries) == 5000
    assert MAX_URL_BYTES < 16_384


async def test_paging_follows_next_records(demo_data: DemoData) -> None:
    app = create_salesforce_app(demo_data, client_id="id", client_secret="s", page_size=200)
    request = FetchRequest(entity="Contact", attributes=("Id",), order="Id")

    rows = await source_for(app).fetch(request)

    assert [r["Id"] for r in rows] == sorted(c["Id"] for c in demo_data.crm["Contact"])
    assert len(api_calls(app)) == 1 + (len(rows) + 199) // 200


async def test_expired_session_refreshed_once(crm: Starlette, demo_data: DemoData) -> None:
    source = source_for(crm)
    request = FetchRequest(entity="Account", attributes=("Id",), match="Id",
                           keys=(demo_data.crm["Account"][0]["Id"],))
    await source.fetch(request)
    crm.state.expire_tokens()

    rows = await source.fetch(request)

    statuses = [(e.path, e.status) for e in crm.state.control.log]
    assert rows == [{"Id": demo_data.crm["Account"][0]["Id"]}]
    assert statuses == [("/services/oauth2/token", 200), (RETRIEVE_ACCOUNT, 200),
                        (RETRIEVE_ACCOUNT, 401), ("/services/oauth2/token", 200),
                        (RETRIEVE_ACCOUNT, 200)]


async def test_unknown_field_rejected(crm: Starlette, demo_data: DemoData) -> None:
    request = FetchRequest(entity="Account", attributes=("Id", "Nope__c"), match="OwnerId",
                           keys=(demo_data.crm["Account"][0]["OwnerId"],))
    with pytest.raises(UpstreamRejected, match=r"rejected Account query of 1 keys \(INVALID_"):
        await source_for(crm).fetch(request)


@pytest.mark.parametrize(("request_changes", "what"), [
    ({}, r"Account retrieve of 1 ids"),
    ({"order": "Id"}, r"Account query of 1 keys"),
])
async def test_server_fault_is_unavailable(crm: Starlette, demo_data: DemoData,
                                           request_changes: dict[str, Any], what: str) -> None:
    source = source_for(crm)
    request = replace(FetchRequest(entity="Account", attributes=("Id",), match="Id",
                                   keys=(demo_data.crm["Account"][0]["Id"],)), **request_changes)
    await source.fetch(request)  # gets the token before the fault
    crm.state.control.fault_status = 503

    with pytest.raises(UpstreamUnavailable,
                       match=rf"answered HTTP 503 \(SERVER_UNAVAILABLE\) for {what}"):
        await source.fetch(request)


def raising_client(make: Callable[[httpx.Request], Exception]) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        raise make(request)
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_read_timeout_is_timeout() -> None:
    client = raising_client(lambda r: httpx.ReadTimeout("slow", request=r))
    source = SalesforceSource("crm", SETTINGS, client)
    with pytest.raises(UpstreamTimeout, match="system 'crm' timed out on OAuth2 token request"):
        await source.fetch(FetchRequest(entity="Account", attributes=("Id",)))


async def test_body_not_json_is_unavailable() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(
        lambda r: httpx.Response(200, content=b"<html>proxy error</html>")))
    source = SalesforceSource("crm", SETTINGS, client)
    with pytest.raises(UpstreamUnavailable, match="a body that is not JSON"):
        await source.fetch(FetchRequest(entity="Account", attributes=("Id",)))


async def test_malformed_id_matches_nothing(crm: Starlette) -> None:
    request = FetchRequest(entity="Account", attributes=("Id",), match="Id",
                           keys=("not-an-id'", "x"))

    rows = await source_for(crm).fetch(request)

    assert rows == []
    assert api_calls(crm) == []


async def test_wrong_credentials_not_retried(crm: Starlette) -> None:
    settings = SalesforceSettings(login_url="http://crm.test", client_id="id",
                                  client_secret="wrong")
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=crm))
    source = ResilientSource(SalesforceSource("crm", settings, client),
                             ResiliencePolicy(retries=2))
    request = FetchRequest(entity="Account", attributes=("Id",))

    with pytest.raises(UpstreamAuthFailed, match=r"OAuth2 client credentials \(invalid_client\)"):
        await source.fetch(request)

    assert api_calls(crm) == ["/services/oauth2/token"]


async def test_uri_too_long_rejected(crm: Starlette) -> None:
    request = FetchRequest(entity="Account", attributes=("Id",), search=("Name", "x" * 17_000))
    with pytest.raises(UpstreamRejected, match=r"as too long \(HTTP 414\)"):
        await source_for(crm).fetch(request)


async def test_row_rule_on_id_with_claim(crm: Starlette, demo_data: DemoData) -> None:
    owner = demo_data.crm["Account"][0]["OwnerId"]
    request = FetchRequest(entity="Account", attributes=("Id",), any_of=(
        Condition("OwnerId", "=", "not-a-salesforce-id"), Condition("OwnerId", "=", owner)))

    rows = await source_for(crm).fetch(request)

    owned = sorted(a["Id"] for a in demo_data.crm["Account"] if a["OwnerId"] == owner)
    assert sorted(r["Id"] for r in rows) == owned


# --- sObject Collections retrieve ---------------------------------------------------------


def synthetic_accounts(count: int) -> DemoData:
    """Build ``count`` accounts with distinct 18-character ids, in id order."""
    accounts = [{"Id": case_safe_id(f"001{number:012d}"), "Name": f"Company {number}"}
                for number in range(count)]
    return DemoData(crm={"Account": accounts}, erp={})


@pytest.mark.parametrize(("count", "posts"), [(1, [1]), (200, [200]),
                                              (5000, [2000, 2000, 1000])])
async def test_retrieve_batches_of_ids(count: int, posts: list[int]) -> None:
    data = synthetic_accounts(count)
    app = create_salesforce_app(data, client_id="id", client_secret="s")
    accounts = list(reversed(data.crm["Account"]))  # not in id order, to check the order
    request = FetchRequest(entity="Account", attributes=("Id", "Name"), match="Id",
                           keys=tuple(a["Id"] for a in accounts))

    rows = await source_for(app).fetch(request)

    calls = [e for e in app.state.control.log if e.entity == "Account"]
    assert rows == accounts
    assert [e.keys for e in calls] == posts
    assert all(e.method == "POST" and e.path == RETRIEVE_ACCOUNT for e in calls)
    assert all(e.fields == ["Id", "Name"] and e.status == 200 for e in calls)


async def test_retrieve_drops_unknown_ids(crm: Starlette, demo_data: DemoData) -> None:
    known = [a["Id"] for a in demo_data.crm["Account"][:3]]
    unknown = case_safe_id("001ZZZZZZZZZZZZ")
    contact = demo_data.crm["Contact"][0]["Id"]  # an id of another object type
    request = FetchRequest(entity="Account", attributes=("Id",), match="Id",
                           keys=(unknown, known[0], contact, known[1], known[2]))

    rows = await source_for(crm).fetch(request)

    assert rows == [{"Id": record_id} for record_id in known]


async def test_retrieve_accepts_short_ids(crm: Starlette, demo_data: DemoData) -> None:
    full = [a["Id"] for a in demo_data.crm["Account"][:2]]
    request = FetchRequest(entity="Account", attributes=("Id",), match="Id",
                           keys=(full[0][:15], full[1], full[1][:15]))

    rows = await source_for(crm).fetch(request)

    assert rows == [{"Id": full[0]}, {"Id": full[1]}]


async def test_retrieve_unknown_field_rejected(crm: Starlette, demo_data: DemoData) -> None:
    request = FetchRequest(entity="Account", attributes=("Id", "Nope__c"), match="Id",
                           keys=(demo_data.crm["Account"][0]["Id"],))
    with pytest.raises(UpstreamRejected,
                       match=r"rejected Account retrieve of 1 ids \(INVALID_FIELD\)"):
        await source_for(crm).fetch(request)


@pytest.mark.parametrize("changes", [
    {"where": (Condition("Name", "!=", "x"),)},
    {"any_of": (Condition("OwnerId", "=", "005000000000001AAA"),)},
    {"after": ("Id", "001000000000000AAA")},
    {"search": ("Name", "a")},
    {"order": "Name"},
    {"limit": 5},
])
async def test_conditions_fall_back_to_soql(crm: Starlette, demo_data: DemoData,
                                            changes: dict[str, Any]) -> None:
    ids = tuple(a["Id"] for a in demo_data.crm["Account"][:3])
    request = replace(FetchRequest(entity="Account", attributes=("Id",), match="Id", keys=ids),
                      **changes)

    await source_for(crm).fetch(request)

    calls = [e for e in crm.state.control.log if e.entity == "Account"]
    assert not is_plain_id_lookup(request)
    assert [(e.method, e.path) for e in calls] == [("GET", "/services/data/v62.0/query")]


def test_plain_id_lookup_needs_id_match() -> None:
    assert is_plain_id_lookup(FetchRequest(entity="Account", attributes=("Id",), match="Id"))
    assert not is_plain_id_lookup(FetchRequest(entity="Contact", attributes=("Id",),
                                               match="AccountId"))
    assert not is_plain_id_lookup(FetchRequest(entity="Account", attributes=("Id",)))


async def test_api_usage_warning_once_per_interval(crm: Starlette, demo_data: DemoData,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    account = demo_data.crm["Account"][0]
    request = FetchRequest(entity="Account", attributes=("Id",), match="Id",
                           keys=(account["Id"],))
    source = source_for(crm)
    crm.state.set_api_usage(13_600)  # past 90 % of the fake's 15,000

    with caplog.at_level(logging.WARNING, logger="gateway.upstream"):
        for _ in range(3):
            await source.fetch(request)
        source._usage_warned_at = time.monotonic() - USAGE_WARNING_INTERVAL
        await source.fetch(request)

    warnings = [r.getMessage() for r in caplog.records if "daily API requests" in r.getMessage()]
    assert warnings == ["system 'crm' has used 13601 of its 15000 daily API requests",
                        "system 'crm' has used 13604 of its 15000 daily API requests"]
    assert source.api_usage == (13_604, 15_000)
