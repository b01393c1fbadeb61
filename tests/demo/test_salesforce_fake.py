"""Tests of the demo Salesforce server, in-process and through simple-salesforce."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import requests
import uvicorn
from requests.adapters import HTTPAdapter
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import SalesforceExpiredSession, SalesforceMalformedRequest
from starlette.applications import Starlette

from gateway.demo.data import DemoData, generate
from gateway.demo.salesforce import create_salesforce_app

CLIENT_ID = "demo-client"
CLIENT_SECRET = "demo-secret"
BASE_URL = "https://sf.test"
QUERY_PATH = "/services/data/v62.0/query"
LOCATOR_URL = re.compile(r"/services/data/v62\.0/query/01g[0-9A-Za-z]{15}-(\d+)")


@pytest.fixture(scope="module")
def data() -> DemoData:
    return generate(customers=200)


@pytest.fixture
def app(data: DemoData) -> Starlette:
    return create_salesforce_app(data, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        yield http


async def fetch_token(client: httpx.AsyncClient) -> str:
    response = await client.post("/services/oauth2/token", data={
        "grant_type": "client_credentials", "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET})
    assert response.status_code == 200
    token: str = response.json()["access_token"]
    return token


@pytest.fixture
async def headers(client: httpx.AsyncClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {await fetch_token(client)}"}


async def query(client: httpx.AsyncClient, headers: dict[str, str], soql: str) -> Any:
    response = await client.get(QUERY_PATH, params={"q": soql}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def query_error(client: httpx.AsyncClient, headers: dict[str, str], soql: str,
                      status: int = 400) -> dict[str, Any]:
    response = await client.get(QUERY_PATH, params={"q": soql}, headers=headers)
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, list)
    assert len(body) == 1
    assert body[0]["fields"] == []
    error: dict[str, Any] = body[0]
    return error


def ids(body: dict[str, Any]) -> list[str]:
    return [record["Id"] for record in body["records"]]


# --- OAuth token ---------------------------------------------------------------------------


async def test_token_with_form_credentials(client: httpx.AsyncClient) -> None:
    response = await client.post("/services/oauth2/token", data={
        "grant_type": "client_credentials", "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET})
    body = response.json()
    assert response.status_code == 200
    assert sorted(body) == ["access_token", "id", "instance_url", "issued_at", "signature",
                            "token_type"]
    assert body["instance_url"] == "https://sf.test"
    assert body["token_type"] == "Bearer"
    assert body["id"].startswith("https://sf.test/id/00D")
    expected = hmac.new(CLIENT_SECRET.encode(), (body["id"] + body["issued_at"]).encode(),
                        hashlib.sha256).digest()
    assert base64.b64decode(body["signature"]) == expected


async def test_token_with_basic_auth(client: httpx.AsyncClient) -> None:
    response = await client.post("/services/oauth2/token",
                                 data={"grant_type": "client_credentials"},
                                 auth=(CLIENT_ID, CLIENT_SECRET))
    assert response.status_code == 200
    token = response.json()["access_token"]
    body = await query(client, {"Authorization": f"Bearer {token}"},
                       "SELECT COUNT() FROM Account")
    assert body == {"totalSize": 200, "done": True, "records": []}


async def test_tokens_are_distinct(client: httpx.AsyncClient) -> None:
    assert await fetch_token(client) != await fetch_token(client)


@pytest.mark.parametrize("form, auth", [
    ({"client_id": CLIENT_ID, "client_secret": "wrong"}, None),
    ({"client_id": "someone-else", "client_secret": CLIENT_SECRET}, None),
    ({}, None),
    ({}, (CLIENT_ID, "wrong")),
])
async def test_token_bad_credentials(client: httpx.AsyncClient, form: dict[str, str],
                                     auth: tuple[str, str] | None) -> None:
    options: dict[str, Any] = {"auth": auth} if auth else {}
    response = await client.post("/services/oauth2/token",
                                 data={"grant_type": "client_credentials", **form}, **options)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_client",
                               "error_description": "invalid client credentials"}


async def test_token_other_grant_type(client: httpx.AsyncClient) -> None:
    response = await client.post("/services/oauth2/token", data={
        "grant_type": "password", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


# --- query results -------------------------------------------------------------------------


async def test_in_order_by_limit_returns_exact_ids(client: httpx.AsyncClient,
                                                   headers: dict[str, str],
                                                   data: DemoData) -> None:
    accounts = data.crm["Account"][:12]
    quoted = ", ".join(f"'{account['Id']}'" for account in accounts)
    body = await query(client, headers,
                       f"SELECT Id, Name FROM Account WHERE Id IN ({quoted}) "
                       "ORDER BY Name DESC LIMIT 5")
    expected = sorted(accounts, key=lambda account: account["Name"].casefold(), reverse=True)
    assert body["totalSize"] == 5
    assert body["done"] is True
    assert "nextRecordsUrl" not in body
    assert ids(body) == [account["Id"] for account in expected[:5]]


async def test_projection_only_selected_fields(client: httpx.AsyncClient,
                                               headers: dict[str, str], data: DemoData) -> None:
    account = data.crm["Account"][3]
    body = await query(client, headers,
                       f"select name, vat_number__c from ACCOUNT where id = '{account['Id']}'")
    assert body["records"] == [{
        "attributes": {"type": "Account",
                       "url": f"/services/data/v62.0/sobjects/Account/{account['Id']}"},
        "Name": account["Name"],
        "VAT_Number__c": account["VAT_Number__c"],
    }]


async def test_fifteen_character_id_matches(client: httpx.AsyncClient, headers: dict[str, str],
                                            data: DemoData) -> None:
    account_id = data.crm["Account"][0]["Id"]
    body = await query(client, headers, f"SELECT Id FROM Account WHERE Id = '{account_id[:15]}'")
    assert ids(body) == [account_id]
    swapped = account_id[:15].swapcase()
    body = await query(client, headers, f"SELECT Id FROM Account WHERE Id = '{swapped}'")
    assert ids(body) == []


async def test_paging_three_pages(client: httpx.AsyncClient, headers: dict[str, str],
                                  data: DemoData) -> None:
    total = len(data.crm["Contact"])
    assert 400 < total <= 600, "the 200-customer data set must give three pages of 200"
    paged = {**headers, "Sforce-Query-Options": "batchSize=200"}

    first = (await client.get(QUERY_PATH, params={"q": "SELECT Id FROM Contact"},
                              headers=paged)).json()
    assert first["totalSize"] == total
    assert first["done"] is False
    assert len(first["records"]) == 200
    match = LOCATOR_URL.fullmatch(first["nextRecordsUrl"])
    assert match is not None
    assert match.group(1) == "200"

    second = (await client.get(first["nextRecordsUrl"], headers=paged)).json()
    assert second["totalSize"] == total
    assert second["done"] is False
    assert len(second["records"]) == 200
    assert second["nextRecordsUrl"] == first["nextRecordsUrl"][:-3] + "400"

    third = (await client.get(second["nextRecordsUrl"], headers=paged)).json()
    assert third["totalSize"] == total
    assert third["done"] is True
    assert "nextRecordsUrl" not in third
    assert len(third["records"]) == total - 400

    all_ids = ids(first) + ids(second) + ids(third)
    assert all_ids == [contact["Id"] for contact in data.crm["Contact"]]


@pytest.mark.parametrize("option, expected", [("batchSize=50", 200), ("batchSize=5000", 2000),
                                               ("batchSize=300", 300), ("other=1", 2000)])
async def test_batch_size_clamped(option: str, expected: int) -> None:
    crm = {"Item__c": [{"Id": f"a01{index:015d}", "Rank__c": float(index)}
                       for index in range(2500)]}
    app = create_salesforce_app(DemoData(crm=crm, erp={}), client_id=CLIENT_ID,
                                client_secret=CLIENT_SECRET)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url=BASE_URL) as client:
        headers = {"Authorization": f"Bearer {await fetch_token(client)}"}
        response = await client.get(QUERY_PATH, params={"q": "SELECT Id FROM Item__c"},
                                    headers={**headers, "Sforce-Query-Options": option})
    body = response.json()
    assert len(body["records"]) == expected
    assert body["nextRecordsUrl"].endswith(f"-{expected}")


async def test_default_page_size_from_app(data: DemoData) -> None:
    app = create_salesforce_app(data, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                                page_size=250)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url=BASE_URL) as client:
        headers = {"Authorization": f"Bearer {await fetch_token(client)}"}
        body = await query(client, headers, "SELECT Id FROM Contact")
    assert len(body["records"]) == 250
    assert body["nextRecordsUrl"].endswith("-250")


async def test_count_offset_and_filters(client: httpx.AsyncClient, headers: dict[str, str],
                                        data: DemoData) -> None:
    opportunities = data.crm["Opportunity"]
    won = [item for item in opportunities
           if item["StageName"] == "Closed Won" and item["Amount"] >= 100000]
    body = await query(client, headers, "SELECT COUNT() FROM Opportunity WHERE "
                       "StageName = 'closed won' AND Amount >= 100000")
    assert body["totalSize"] == len(won)

    later = sorted((item for item in opportunities if item["CloseDate"] > "2026-11-30"),
                   key=lambda item: (item["CloseDate"], item["Id"]))
    body = await query(client, headers, "SELECT Id FROM Opportunity WHERE CloseDate > "
                       "2026-11-30 ORDER BY CloseDate, Id LIMIT 10 OFFSET 5")
    assert ids(body) == [item["Id"] for item in later[5:15]]


async def test_like_or_not_in(client: httpx.AsyncClient, headers: dict[str, str],
                              data: DemoData) -> None:
    expected = [account["Id"] for account in data.crm["Account"]
                if (account["Name"].lower().endswith("spa")
                    or account["Region__c"] == "Isole")
                and account["BillingState"] not in ("PA", "CT")]
    body = await query(client, headers, "SELECT Id FROM Account WHERE (Name LIKE '%SpA' OR "
                       "Region__c = 'Isole') AND BillingState NOT IN ('PA', 'CT')")
    assert ids(body) == expected

    negated = await query(client, headers, "SELECT Id FROM Account WHERE NOT (Name LIKE '%SpA' "
                          "OR Region__c = 'Isole')")
    assert len(negated["records"]) == 200 - sum(
        1 for account in data.crm["Account"]
        if account["Name"].lower().endswith("spa") or account["Region__c"] == "Isole")


async def test_soql_escapes_and_nulls() -> None:
    crm: dict[str, list[dict[str, Any]]] = {"Lead__c": [
        {"Id": "a005g000001AAAAAAA", "Note__c": "50% off", "Rank__c": 2.0},
        {"Id": "a005g000001AAABAAA", "Note__c": "it's here", "Rank__c": None},
        {"Id": "a005g000001AAACAAA", "Note__c": None, "Rank__c": 1.0},
        {"Id": "a005g000001AAADAAA", "Note__c": "505 off", "Rank__c": 3.0},
    ]}
    app = create_salesforce_app(DemoData(crm=crm, erp={}), client_id=CLIENT_ID,
                                client_secret=CLIENT_SECRET)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url=BASE_URL) as client:
        headers = {"Authorization": f"Bearer {await fetch_token(client)}"}
        literal_percent = await query(client, headers,
                                      r"SELECT Id FROM Lead__c WHERE Note__c LIKE '50\% %'")
        wildcard = await query(client, headers,
                               "SELECT Id FROM Lead__c WHERE Note__c LIKE '50_ off'")
        quote = await query(client, headers, r"SELECT Id FROM Lead__c WHERE Note__c = 'IT\'S HERE'")
        null = await query(client, headers, "SELECT Id FROM Lead__c WHERE Note__c = null")
        nulls_first = await query(client, headers, "SELECT Id FROM Lead__c ORDER BY Rank__c DESC")
        nulls_last = await query(client, headers,
                                 "SELECT Id FROM Lead__c ORDER BY Rank__c NULLS LAST")
    assert ids(literal_percent) == ["a005g000001AAAAAAA"]
    assert ids(wildcard) == ["a005g000001AAAAAAA", "a005g000001AAADAAA"]
    assert ids(quote) == ["a005g000001AAABAAA"]
    assert ids(null) == ["a005g000001AAACAAA"]
    assert ids(nulls_first) == ["a005g000001AAABAAA", "a005g000001AAADAAA",
                                "a005g000001AAAAAAA", "a005g000001AAACAAA"]
    assert ids(nulls_last) == ["a005g000001AAACAAA", "a005g000001AAAAAAA",
                               "a005g000001AAADAAA", "a005g000001AAABAAA"]


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic abc"])
async def test_missing_or_unknown_token(client: httpx.AsyncClient,
                                        authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    error = await query_error(client, headers, "SELECT Id FROM Account", status=401)
    assert error["errorCode"] == "INVALID_SESSION_ID"
    assert error["message"] == "Session expired or invalid"


async def test_expire_tokens_hook(client: httpx.AsyncClient, app: Starlette,
                                  headers: dict[str, str]) -> None:
    await query(client, headers, "SELECT Id FROM Account LIMIT 1")
    app.state.expire_tokens()
    error = await query_error(client, headers, "SELECT Id FROM Account LIMIT 1", status=401)
    assert error["errorCode"] == "INVALID_SESSION_ID"


async def test_token_expires_after_ttl(data: DemoData) -> None:
    app = create_salesforce_app(data, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                                token_ttl=0.0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url=BASE_URL) as client:
        headers = {"Authorization": f"Bearer {await fetch_token(client)}"}
        error = await query_error(client, headers, "SELECT Id FROM Account", status=401)
    assert error["errorCode"] == "INVALID_SESSION_ID"


@pytest.mark.parametrize("soql, position, detail", [
    ("SELECT FROM Account", "Row:1:Column:8", "unexpected token: 'FROM'"),
    ("SELECT Id FROM Account WHERE", "Row:1:Column:29", "unexpected token: '<EOF>'"),
    ("SELECT Id FROM Account WHERE Name = 'a' AND Phone = 'b' OR Id = 'c'", "Row:1:Column:57",
     "unexpected token: 'OR'"),
    ("SELECT Id FROM Account WHERE Name = 'a' AND NOT Phone = 'b'", "Row:1:Column:45",
     "unexpected token: 'NOT'"),
    ("SELECT Id FROM Account WHERE Name = 'unterminated", "Row:1:Column:37",
     "unterminated string literal"),
    ("SELECT Id FROM Account\nWHERE Name = 'a' 'b'", "Row:2:Column:18",
     "unexpected token: <string literal>"),
    ("SELECT Id FROM Account WHERE Name = 'a\\qb'", "Row:1:Column:39",
     "invalid escape sequence"),
    ("SELECT Id FROM Account LIMIT -1", "Row:1:Column:30", "unexpected token: <number literal>"),
])
async def test_malformed_query(client: httpx.AsyncClient, headers: dict[str, str], soql: str,
                               position: str, detail: str) -> None:
    error = await query_error(client, headers, soql)
    assert error["errorCode"] == "MALFORMED_QUERY"
    assert error["message"].startswith(f"ERROR at {position}\n{detail}")


async def test_missing_query_string(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.get(QUERY_PATH, headers=headers)
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "MALFORMED_QUERY"


async def test_unknown_field(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    error = await query_error(client, headers, "SELECT Id, Foo FROM Account")
    assert error["errorCode"] == "INVALID_FIELD"
    assert re.match(r"ERROR at Row:1:Column:12\nNo such column 'Foo' on entity 'Account'\.",
                    error["message"])


async def test_relationship_field_rejected(client: httpx.AsyncClient,
                                           headers: dict[str, str]) -> None:
    error = await query_error(client, headers, "SELECT Account.Name FROM Contact")
    assert error["errorCode"] == "INVALID_FIELD"
    assert "Didn't understand relationship 'Account'" in error["message"]


async def test_unknown_object(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    error = await query_error(client, headers, "SELECT Id FROM Foo")
    assert error["errorCode"] == "INVALID_TYPE"
    assert "sObject type 'Foo' is not supported." in error["message"]


@pytest.mark.parametrize("condition, expected_type, quoting", [
    ("Amount = '100'", "currency", "should not be enclosed in quotes"),
    ("CloseDate > '2026-01-01'", "date", "should not be enclosed in quotes"),
    ("Name = 5", "string", "should be enclosed in quotes"),
    ("Amount LIKE '1%'", "string", "should be enclosed in quotes"),
])
async def test_literal_type_mismatch(client: httpx.AsyncClient, headers: dict[str, str],
                                     condition: str, expected_type: str, quoting: str) -> None:
    error = await query_error(client, headers, f"SELECT Id FROM Opportunity WHERE {condition}")
    assert error["errorCode"] == "INVALID_FIELD"
    assert f"must be of type {expected_type} and {quoting}" in error["message"]


async def test_invalid_id_literal(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    error = await query_error(client, headers, "SELECT Id FROM Account WHERE Id = 'short'")
    assert error["errorCode"] == "INVALID_QUERY_FILTER_OPERATOR"
    assert "short" not in error["message"]


async def test_offset_above_limit(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    error = await query_error(client, headers, "SELECT Id FROM Account OFFSET 2001")
    assert error["errorCode"] == "NUMBER_OUTSIDE_VALID_RANGE"
    assert error["message"] == "Maximum SOQL offset allowed is 2000"


async def test_errors_do_not_echo_values(client: httpx.AsyncClient, headers: dict[str, str],
                                         data: DemoData) -> None:
    name = data.crm["Account"][0]["Name"].replace("'", "\\'")
    vat = data.crm["Account"][0]["VAT_Number__c"]
    statements = [
        f"SELECT Id FROM Account WHERE Name = '{name}' AND Foo = '{vat}'",
        f"SELECT Id FROM Account WHERE Name = '{name}' '{vat}'",
        f"SELECT Id FROM Account WHERE Id = '{vat}'",
        f"SELECT Id FROM Account WHERE VAT_Number__c = '{vat}' AND Name = '{name}' OR Id = ''",
    ]
    for soql in statements:
        error = await query_error(client, headers, soql)
        for value in data.personal_values():
            assert value not in error["message"], error["errorCode"]


async def test_uri_too_long(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    quoted = ", ".join(["'0015g0000000000AAA'"] * 800)
    response = await client.get(QUERY_PATH, headers=headers,
                                params={"q": f"SELECT Id FROM Account WHERE Id IN ({quoted})"})
    assert response.status_code == 414
    assert response.json()[0]["errorCode"] == "URI_TOO_LONG"


async def test_uri_just_below_limit(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    quoted = ", ".join(["'0015g0000000000AAA'"] * 300)
    response = await client.get(QUERY_PATH, headers=headers,
                                params={"q": f"SELECT Id FROM Account WHERE Id IN ({quoted})"})
    assert len(str(response.request.url)) < 16_384
    assert response.status_code == 200


async def test_unknown_version_and_locator(client: httpx.AsyncClient,
                                           headers: dict[str, str]) -> None:
    response = await client.get("/services/data/v12.0/query",
                                params={"q": "SELECT Id FROM Account"}, headers=headers)
    assert response.status_code == 404
    assert response.json()[0]["errorCode"] == "NOT_FOUND"
    response = await client.get(f"{QUERY_PATH}/01gAAAAAAAAAAAAAAA-200", headers=headers)
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


@pytest.mark.parametrize("status, error_code", [(503, "SERVER_UNAVAILABLE"),
                                                (500, "UNKNOWN_EXCEPTION"),
                                                (403, "REQUEST_LIMIT_EXCEEDED")])
async def test_injected_fault(client: httpx.AsyncClient, headers: dict[str, str], status: int,
                              error_code: str) -> None:
    response = await client.put("/__fonte/fault", json={"status": status, "delay": 0})
    assert response.status_code == 200
    error = await query_error(client, headers, "SELECT Id FROM Account", status=status)
    assert error["errorCode"] == error_code

    await client.put("/__fonte/fault", json={"status": None, "delay": 0})
    await query(client, headers, "SELECT Id FROM Account LIMIT 1")


async def test_injected_delay(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    await client.put("/__fonte/fault", json={"status": None, "delay": 0.2})
    started = time.monotonic()
    await query(client, headers, "SELECT Id FROM Account LIMIT 1")
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("body, message", [
    ({"status": 99}, "fault status 99 is invalid"),
    ({"status": 503, "delay": -1}, "fault delay -1 is invalid"),
    ([], "fault body must be a JSON object"),
])
async def test_fault_hook_rejects_bad_input(client: httpx.AsyncClient, body: Any,
                                            message: str) -> None:
    response = await client.put("/__fonte/fault", json=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


# --- request log and limit header ----------------------------------------------------------


async def test_request_log_contents(client: httpx.AsyncClient, headers: dict[str, str],
                                    data: DemoData) -> None:
    first, second = data.crm["Account"][0]["Id"], data.crm["Account"][1]["Id"]
    paged = {**headers, "Sforce-Query-Options": "batchSize=200"}
    await query(client, headers, f"SELECT id, Name FROM account WHERE Industry != null AND "
                f"(Id IN ('{first}', '{second}') OR Id NOT IN ('{first}'))")
    page = (await client.get(QUERY_PATH, params={"q": "SELECT Id FROM Contact"},
                             headers=paged)).json()
    await client.get(page["nextRecordsUrl"], headers=paged)
    await query_error(client, headers, "SELECT Foo FROM Account")
    await query_error(client, headers, "SELECT FROM")
    await query_error(client, {}, "SELECT Id FROM Account", status=401)

    logged = (await client.get("/__fonte/requests")).json()["requests"]
    filters = [entry.pop("filter") for entry in logged]
    in_batch = [entry.pop("in_batch") for entry in logged]
    entries = logged
    assert not any(in_batch)
    assert filters[1] == (f"Industry != null AND (Id IN ('{first}', '{second}') OR "
                          f"Id NOT IN ('{first}'))")
    assert entries == [
        {"method": "POST", "path": "/services/oauth2/token", "entity": None, "keys": 0,
         "fields": None, "status": 200},
        {"method": "GET", "path": QUERY_PATH, "entity": "Account", "keys": 2,
         "fields": ["id", "Name"], "status": 200},
        {"method": "GET", "path": QUERY_PATH, "entity": "Contact", "keys": 0,
         "fields": ["Id"], "status": 200},
        {"method": "GET", "path": page["nextRecordsUrl"], "entity": "Contact", "keys": 0,
         "fields": ["Id"], "status": 200},
        {"method": "GET", "path": QUERY_PATH, "entity": "Account", "keys": 0,
         "fields": ["Foo"], "status": 400},
        {"method": "GET", "path": QUERY_PATH, "entity": None, "keys": 0, "fields": None,
         "status": 400},
        {"method": "GET", "path": QUERY_PATH, "entity": None, "keys": 0, "fields": None,
         "status": 401},
    ]

    cleared = await client.delete("/__fonte/requests")
    assert cleared.status_code == 204
    assert (await client.get("/__fonte/requests")).json() == {"requests": []}


async def test_limit_info_header_counts_calls(client: httpx.AsyncClient,
                                              headers: dict[str, str]) -> None:
    for expected in (1, 2, 3):
        response = await client.get(QUERY_PATH, params={"q": "SELECT Id FROM Account LIMIT 1"},
                                    headers=headers)
        assert response.headers["Sforce-Limit-Info"] == f"api-usage={expected}/15000"
    failed = await client.get(QUERY_PATH, params={"q": "SELECT"}, headers=headers)
    assert failed.headers["Sforce-Limit-Info"] == "api-usage=4/15000"


async def test_versions_list(client: httpx.AsyncClient) -> None:
    response = await client.get("/services/data/")
    versions = response.json()
    assert response.status_code == 200
    assert versions[-1] == {"label": "Winter '25", "url": "/services/data/v62.0",
                            "version": "62.0"}
    assert {"label": "Winter '24", "url": "/services/data/v59.0", "version": "59.0"} in versions


def test_invalid_app_settings(data: DemoData) -> None:
    with pytest.raises(ValueError, match=r"api_version '62' is invalid"):
        create_salesforce_app(data, client_id="a", client_secret="b", api_version="62")
    with pytest.raises(ValueError, match=r"page_size 0 is invalid"):
        create_salesforce_app(data, client_id="a", client_secret="b", page_size=0)


# --- sObject Collections retrieve ----------------------------------------------------------


RETRIEVE_PATH = "/services/data/v62.0/composite/sobjects/"


async def retrieve(client: httpx.AsyncClient, headers: dict[str, str], sobject: str,
                   body: Any) -> httpx.Response:
    return await client.post(RETRIEVE_PATH + sobject, json=body, headers=headers)


async def test_retrieve_in_id_order_with_nulls(client: httpx.AsyncClient,
                                               headers: dict[str, str], data: DemoData) -> None:
    first, second = data.crm["Account"][:2]
    unknown = "001000000000000AAA"
    contact = data.crm["Contact"][0]["Id"]  # exists, but is no Account

    response = await retrieve(client, headers, "Account", {
        "ids": [second["Id"], unknown, first["Id"], contact, "bad"], "fields": ["id", "NAME"]})

    assert response.status_code == 200
    assert response.json() == [
        {"attributes": {"type": "Account",
                        "url": f"/services/data/v62.0/sobjects/Account/{second['Id']}"},
         "Id": second["Id"], "Name": second["Name"]},
        None,
        {"attributes": {"type": "Account",
                        "url": f"/services/data/v62.0/sobjects/Account/{first['Id']}"},
         "Id": first["Id"], "Name": first["Name"]},
        None,
        None,
    ]


async def test_retrieve_fifteen_character_id(client: httpx.AsyncClient,
                                             headers: dict[str, str], data: DemoData) -> None:
    account_id = data.crm["Account"][0]["Id"]

    response = await retrieve(client, headers, "account",
                              {"ids": [account_id[:15]], "fields": ["Id"]})

    assert response.status_code == 200
    assert [record["Id"] for record in response.json()] == [account_id]


@pytest.mark.parametrize(("sobject", "body", "status", "error_code"), [
    ("Account", {"ids": ["001000000000000AAA"], "fields": ["Id", "Nope__c"]}, 400,
     "INVALID_FIELD"),
    ("Account", {"ids": ["001000000000000AAA"], "fields": ["Owner.Name"]}, 400,
     "INVALID_FIELD"),
    ("Account", {"ids": [], "fields": ["Id"]}, 400, "INVALID_FIELD"),
    ("Account", {"ids": ["001000000000000AAA"]}, 400, "INVALID_FIELD"),
    ("Account", ["001000000000000AAA"], 400, "JSON_PARSER_ERROR"),
    ("Account", {"ids": ["001000000000000AAA"] * 2001, "fields": ["Id"]}, 400,
     "LIMIT_EXCEEDED"),
    ("Nope__c", {"ids": ["001000000000000AAA"], "fields": ["Id"]}, 404, "NOT_FOUND"),
])
async def test_retrieve_rejects(client: httpx.AsyncClient, headers: dict[str, str],
                                sobject: str, body: Any, status: int, error_code: str) -> None:
    response = await retrieve(client, headers, sobject, body)

    assert response.status_code == status
    assert response.json()[0]["errorCode"] == error_code


async def test_retrieve_two_thousand_ids(client: httpx.AsyncClient,
                                         headers: dict[str, str]) -> None:
    response = await retrieve(client, headers, "Account",
                              {"ids": ["001000000000000AAA"] * 2000, "fields": ["Id"]})

    assert response.status_code == 200
    assert response.json() == [None] * 2000


async def test_retrieve_needs_session(client: httpx.AsyncClient) -> None:
    response = await retrieve(client, {"Authorization": "Bearer expired"}, "Account",
                              {"ids": ["001000000000000AAA"], "fields": ["Id"]})

    assert response.status_code == 401
    assert response.json()[0]["errorCode"] == "INVALID_SESSION_ID"


async def test_retrieve_injected_fault(client: httpx.AsyncClient,
                                       headers: dict[str, str]) -> None:
    await client.put("/__fonte/fault", json={"status": 503, "delay": 0})

    response = await retrieve(client, headers, "Account",
                              {"ids": ["001000000000000AAA"], "fields": ["Id"]})

    assert response.status_code == 503
    assert response.json()[0]["errorCode"] == "SERVER_UNAVAILABLE"


async def test_retrieve_request_log(client: httpx.AsyncClient, headers: dict[str, str],
                                    app: Starlette, data: DemoData) -> None:
    account_ids = [a["Id"] for a in data.crm["Account"][:3]]
    await retrieve(client, headers, "Account", {"ids": account_ids, "fields": ["id", "Name"]})
    await retrieve(client, headers, "Account", {"ids": account_ids, "fields": ["Nope__c"]})

    entries = [e for e in app.state.control.log if e.path.startswith(RETRIEVE_PATH)]
    assert [(e.method, e.entity, e.keys, e.fields, e.status, e.filter) for e in entries] == [
        ("POST", "Account", 3, ["id", "Name"], 200, None),
        ("POST", "Account", 3, ["Nope__c"], 400, None),
    ]


# --- simple-salesforce over loopback HTTP --------------------------------------------------


class HttpsToLoopback(HTTPAdapter):
    """Send simple-salesforce's https:// requests as plain HTTP to the loopback server."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def send(self, request: requests.PreparedRequest, *args: Any,
             **kwargs: Any) -> requests.Response:
        assert request.url is not None
        request.url = re.sub(r"^https://[^/]+", f"http://127.0.0.1:{self.port}", request.url)
        return super().send(request, *args, **kwargs)


@pytest.fixture
def loopback_server(app: Starlette) -> Iterator[int]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.02)
    port: int = server.servers[0].sockets[0].getsockname()[1]
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def loopback_salesforce(port: int, session_id: str) -> Salesforce:
    session = requests.Session()
    session.mount("https://", HttpsToLoopback(port))
    return Salesforce(instance_url="https://sf.test", session_id=session_id, session=session,
                      version="62.0")


@pytest.mark.loopback
def test_simple_salesforce_query_all(loopback_server: int, data: DemoData) -> None:
    token = requests.post(f"http://127.0.0.1:{loopback_server}/services/oauth2/token",
                          data={"grant_type": "client_credentials", "client_id": CLIENT_ID,
                                "client_secret": CLIENT_SECRET}, timeout=10).json()
    assert token["instance_url"] == f"http://127.0.0.1:{loopback_server}"
    sf = loopback_salesforce(loopback_server, token["access_token"])

    result = sf.query_all("SELECT Id, LastName FROM Contact",
                          headers={"Sforce-Query-Options": "batchSize=200"})
    assert result["totalSize"] == len(data.crm["Contact"])
    assert [record["Id"] for record in result["records"]] == [
        contact["Id"] for contact in data.crm["Contact"]]
    assert sf.api_usage["api-usage"].used == 3
    assert sf.api_usage["api-usage"].total == 15000


@pytest.mark.loopback
def test_simple_salesforce_errors(loopback_server: int) -> None:
    sf = loopback_salesforce(loopback_server, "expired-or-unknown")
    with pytest.raises(SalesforceExpiredSession, match=r"INVALID_SESSION_ID"):
        sf.query("SELECT Id FROM Account")

    token = requests.post(f"http://127.0.0.1:{loopback_server}/services/oauth2/token",
                          data={"grant_type": "client_credentials"},
                          auth=(CLIENT_ID, CLIENT_SECRET), timeout=10).json()
    sf = loopback_salesforce(loopback_server, token["access_token"])
    with pytest.raises(SalesforceMalformedRequest, match=r"No such column 'Foo'"):
        sf.query("SELECT Foo FROM Account")
