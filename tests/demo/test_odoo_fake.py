"""Tests of the demo Odoo server: JSON-RPC envelope, ORM methods, domains, log, faults, JSON-2.

Most tests run in process over ``httpx.ASGITransport`` on a small hand-written
data set whose values are placeholders. One test builds the generated data
set, and one runs the real odoorpc client when it is installed.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from gateway.demo.control import RequestLogEntry
from gateway.demo.data import DemoData, generate
from gateway.demo.odoo import SERVER_VERSION, create_odoo_app

DB = "fonte_demo"
LOGIN = "gateway"
API_KEY = "test-api-key"
UID = 2

PARTNERS: list[dict[str, Any]] = [
    {
        "id": 1001, "name": "Alfa Test SRL", "vat": "IT00000000011",
        "email": "billing@alfa.example", "phone": "+39 000 0000001", "street": "Via Uno 1",
        "city": "Milano", "zip": "20121", "ref": "C000001", "is_company": True,
        "customer_rank": 1, "credit_limit": 5000.0, "credit": 1220.0,
    },
    {
        "id": 1002, "name": "Beta Prova SPA", "vat": None, "email": None, "phone": None,
        "street": "", "city": "Roma", "zip": "00118", "ref": "C000002", "is_company": True,
        "customer_rank": None, "credit_limit": None, "credit": 0,
    },
    {
        "id": 1003, "name": "gamma demo snc", "vat": "IT00000000022",
        "email": "conti@gamma.example", "phone": None, "street": "Via Tre 3", "city": "Milano",
        "zip": "20121", "ref": "C000003", "is_company": False, "customer_rank": 0,
        "credit_limit": 1000.0, "credit": 0.0,
    },
]


def _order(
    order_id: int, partner_id: int, ordered: str, committed: str | None, state: str, total: float
) -> dict[str, Any]:
    return {
        "id": order_id, "name": f"S{order_id - 5000:05d}", "partner_id": partner_id,
        "date_order": ordered, "commitment_date": committed, "state": state,
        "amount_untaxed": round(total / 1.22, 2), "amount_total": total, "currency_id": 1,
    }


ORDERS = [
    _order(5001, 1001, "2026-01-10 09:00:00", "2026-01-20 09:00:00", "sale", 1220.0),
    _order(5002, 1002, "2026-02-01 10:30:00", None, "draft", 122.0),
    _order(5003, 1001, "2026-03-15 08:00:00", "2026-03-25 00:00:00", "cancel", 61.0),
    _order(5004, 1003, "2026-03-15 17:45:00", None, "sent", 244.0),
]

PICKINGS: list[dict[str, Any]] = [
    {
        "id": 7001, "name": "WH/OUT/00001", "partner_id": 1001, "origin": "S00001",
        "sale_id": 5001, "picking_type_code": "outgoing", "state": "done",
        "scheduled_date": "2026-01-12 08:00:00", "date_deadline": "2026-01-20 09:00:00",
        "date_done": "2026-01-13 15:00:00", "carrier_id": 1, "carrier_tracking_ref": "TRK0001",
    },
    {
        "id": 7002, "name": "WH/OUT/00002", "partner_id": 1003, "origin": "S00004",
        "sale_id": 5004, "picking_type_code": "outgoing", "state": "confirmed",
        "scheduled_date": "2026-03-20 08:00:00", "date_deadline": None, "date_done": None,
        "carrier_id": None, "carrier_tracking_ref": None,
    },
]


def make_data() -> DemoData:
    return DemoData(
        crm={},
        erp={
            "res.partner": PARTNERS,
            "res.currency": [{"id": 1, "name": "EUR"}],
            "delivery.carrier": [{"id": 1, "name": "BRT"}],
            "sale.order": ORDERS,
            "stock.picking": PICKINGS,
        },
    )


@pytest.fixture
def app() -> Starlette:
    return create_odoo_app(make_data(), database=DB, login=LOGIN, api_key=API_KEY, uid=UID)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://erp.test") as client:
        yield client


async def rpc(
    client: httpx.AsyncClient, service: str, method: str, args: list[Any], request_id: int = 7
) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "method": "call",
        "id": request_id,
        "params": {"service": service, "method": method, "args": args},
    }
    return await client.post("/jsonrpc", json=body)


async def execute_kw(
    client: httpx.AsyncClient,
    model: str,
    method: str,
    args: list[Any],
    kwargs: dict[str, Any] | None = None,
) -> Any:
    call_args = [DB, UID, API_KEY, model, method, args, kwargs or {}]
    response = await rpc(client, "object", "execute_kw", call_args)
    assert response.status_code == 200
    body = response.json()
    assert "error" not in body, body
    return body["result"]


async def rpc_error(client: httpx.AsyncClient, service: str, method: str, args: list[Any]) -> Any:
    """Send a call that must fail and check Odoo's error envelope around it."""
    response = await rpc(client, service, method, args, request_id=41)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"jsonrpc", "id", "error"}
    assert body["jsonrpc"] == "2.0"
    assert body["id"] == 41
    error = body["error"]
    assert error["code"] == 200
    assert error["message"] == "Odoo Server Error"
    data = error["data"]
    assert set(data) == {"name", "message", "arguments", "context", "debug"}
    assert data["arguments"] == [data["message"]]
    assert data["context"] == {}
    assert data["debug"].startswith("Traceback (most recent call last):\n")
    assert data["message"] not in data["debug"]
    return data


async def search_ids(client: httpx.AsyncClient, model: str, domain: list[Any]) -> list[int]:
    result: list[int] = await execute_kw(client, model, "search", [domain])
    return result


# --- common service ------------------------------------------------------------


async def test_authenticate_returns_uid(client: httpx.AsyncClient) -> None:
    login = await rpc(client, "common", "login", [DB, LOGIN, API_KEY])
    authenticate = await rpc(client, "common", "authenticate", [DB, LOGIN, API_KEY, {}])

    assert login.json() == {"jsonrpc": "2.0", "id": 7, "result": UID}
    assert authenticate.json() == {"jsonrpc": "2.0", "id": 7, "result": UID}


@pytest.mark.parametrize(
    "args",
    [
        [DB, LOGIN, "wrong-key", {}],
        [DB, "someone-else", API_KEY, {}],
        ["other_db", LOGIN, API_KEY, {}],
        [DB, LOGIN, None, {}],
    ],
)
async def test_authenticate_bad_credentials_false(
    client: httpx.AsyncClient, args: list[Any]
) -> None:
    response = await rpc(client, "common", "authenticate", args)

    assert response.status_code == 200
    assert response.json() == {"jsonrpc": "2.0", "id": 7, "result": False}


async def test_common_version_and_web_version(client: httpx.AsyncClient) -> None:
    version = await rpc(client, "common", "version", [])
    web = await client.get("/web/version")

    assert version.json()["result"] == {
        "server_version": "18.0",
        "server_version_info": [18, 0, 0, "final", 0, ""],
        "server_serie": "18.0",
        "protocol_version": 1,
    }
    assert web.status_code == 200
    assert web.json() == {"version_info": [18, 0, 0, "final", 0, ""], "version": "18.0"}


@pytest.mark.parametrize(
    ("service", "method", "args", "name", "message"),
    [
        ("nope", "version", [], "builtins.KeyError", "'nope'"),
        ("common", "nope", [], "builtins.Exception", "Method not found: nope"),
        (
            "common", "login", [DB, LOGIN], "builtins.TypeError",
            "exp_login() missing a required argument: 'password'",
        ),
        ("db", "list", [], "odoo.exceptions.AccessDenied", "Access Denied"),
        ("object", "unlink_all", [DB, UID, API_KEY], "builtins.NameError",
         "Method not available unlink_all"),
    ],
)
async def test_service_errors_use_envelope(
    client: httpx.AsyncClient, service: str, method: str, args: list[Any], name: str, message: str
) -> None:
    data = await rpc_error(client, service, method, args)

    assert data["name"] == name
    assert data["message"] == message


# --- search_read and read --------------------------------------------------------


async def test_search_read_in_domain_exact_rows(client: httpx.AsyncClient) -> None:
    domain = [["partner_id", "in", [1001, 1003]]]
    kwargs = {
        "fields": ["name", "amount_total", "partner_id"],
        "order": "date_order desc",
        "offset": 1,
        "limit": 2,
    }

    result = await execute_kw(client, "sale.order", "search_read", [domain], kwargs)

    assert result == [
        {"id": 5003, "name": "S00003", "amount_total": 61.0, "partner_id": [1001, "Alfa Test SRL"]},
        {"id": 5001, "name": "S00001", "amount_total": 1220.0,
         "partner_id": [1001, "Alfa Test SRL"]},
    ]


async def test_search_read_positional_args_bind(client: httpx.AsyncClient) -> None:
    args = [[["partner_id", "in", [1001, 1003]]], ["name"], 1, 2, "date_order desc"]

    result = await execute_kw(client, "sale.order", "search_read", args)

    assert result == [{"id": 5003, "name": "S00003"}, {"id": 5001, "name": "S00001"}]


async def test_search_read_many2one_pairs(client: httpx.AsyncClient) -> None:
    fields = ["partner_id", "sale_id", "carrier_id"]

    classic = await execute_kw(client, "stock.picking", "search_read", [[]], {"fields": fields})
    bare = await execute_kw(
        client, "stock.picking", "search_read", [[]], {"fields": fields, "load": None}
    )

    assert classic == [
        {"id": 7001, "partner_id": [1001, "Alfa Test SRL"], "sale_id": [5001, "S00001"],
         "carrier_id": [1, "BRT"]},
        {"id": 7002, "partner_id": [1003, "gamma demo snc"], "sale_id": [5004, "S00004"],
         "carrier_id": False},
    ]
    assert bare == [
        {"id": 7001, "partner_id": 1001, "sale_id": 5001, "carrier_id": 1},
        {"id": 7002, "partner_id": 1003, "sale_id": 5004, "carrier_id": False},
    ]


@pytest.mark.parametrize("fields", [None, []])
async def test_search_read_without_fields_returns_all(
    client: httpx.AsyncClient, fields: list[str] | None
) -> None:
    kwargs: dict[str, Any] = {} if fields is None else {"fields": fields}

    result = await execute_kw(client, "res.partner", "search_read", [[["id", "=", 1002]]], kwargs)

    assert result == [
        {
            "id": 1002, "name": "Beta Prova SPA", "vat": False, "email": False, "phone": False,
            "street": False, "city": "Roma", "zip": "00118", "ref": "C000002",
            "is_company": True, "customer_rank": 0, "credit_limit": 0.0, "credit": 0.0,
        }
    ]
    assert isinstance(result[0]["credit"], float)
    assert isinstance(result[0]["credit_limit"], float)


async def test_read_skips_missing_ids(client: httpx.AsyncClient) -> None:
    result = await execute_kw(client, "sale.order", "read", [[5002, 9999, 5001], ["name"]])
    everything = await execute_kw(client, "delivery.carrier", "read", [[1]])

    assert result == [{"id": 5002, "name": "S00002"}, {"id": 5001, "name": "S00001"}]
    assert everything == [{"id": 1, "name": "BRT"}]


async def test_search_count_and_limit(client: httpx.AsyncClient) -> None:
    count = await execute_kw(client, "sale.order", "search_count", [[["state", "!=", "cancel"]]])
    capped = await execute_kw(client, "sale.order", "search_count", [[]], {"limit": 2})

    assert count == 3
    assert capped == 2


async def test_fields_get_types_and_filter(client: httpx.AsyncClient) -> None:
    fields = await execute_kw(client, "sale.order", "fields_get", [], {"attributes": ["type"]})
    partner = await execute_kw(client, "sale.order", "fields_get", [["partner_id", "state"]])

    assert fields == {
        "id": {"type": "integer"},
        "name": {"type": "char"},
        "partner_id": {"type": "many2one"},
        "date_order": {"type": "datetime"},
        "commitment_date": {"type": "datetime"},
        "state": {"type": "selection"},
        "amount_untaxed": {"type": "monetary"},
        "amount_total": {"type": "monetary"},
        "currency_id": {"type": "many2one"},
    }
    assert partner == {
        "partner_id": {"type": "many2one", "string": "Customer", "relation": "res.partner"},
        "state": {
            "type": "selection",
            "string": "Status",
            "selection": [
                ["draft", "Quotation"], ["sent", "Quotation Sent"],
                ["sale", "Sales Order"], ["cancel", "Cancelled"],
            ],
        },
    }


async def test_execute_positional_and_context_kwarg(client: httpx.AsyncClient) -> None:
    response = await rpc(
        client, "object", "execute",
        [DB, UID, API_KEY, "sale.order", "search", [["state", "=", "sale"]]],
    )
    with_context = await execute_kw(
        client, "sale.order", "search", [[["state", "=", "sale"]]], {"context": {"lang": "it_IT"}}
    )
    context = await execute_kw(client, "res.users", "context_get", [])

    assert response.json()["result"] == [5001]
    assert with_context == [5001]
    assert context == {"lang": "en_US", "tz": "Europe/Rome", "uid": UID}


# --- ordering ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (None, [5001, 5002, 5003, 5004]),
        ("date_order desc, id", [5004, 5003, 5002, 5001]),
        ("commitment_date", [5001, 5003, 5002, 5004]),
        ("commitment_date desc", [5002, 5004, 5003, 5001]),
        ("commitment_date asc nulls first, id desc", [5004, 5002, 5001, 5003]),
        ("partner_id, id desc", [5003, 5001, 5002, 5004]),
        ('"amount_total" DESC', [5001, 5004, 5002, 5003]),
    ],
)
async def test_search_order_terms(
    client: httpx.AsyncClient, order: str | None, expected: list[int]
) -> None:
    result = await execute_kw(client, "sale.order", "search", [[]], {"order": order})

    assert result == expected


# --- errors --------------------------------------------------------------------------


GOOD = (DB, UID, API_KEY)
DENIED = ("odoo.exceptions.AccessDenied", "Access Denied")
INVALID_NOPE = ("builtins.ValueError", "Invalid field 'nope' on model 'res.partner'")

EXECUTE_KW_ERRORS: list[tuple[tuple[Any, ...], str, str, list[Any], dict[str, Any], str, str]] = [
    ((DB, UID, "wrong-key"), "res.partner", "search", [[]], {}, *DENIED),
    ((DB, 99, API_KEY), "res.partner", "search", [[]], {}, *DENIED),
    (("other_db", UID, API_KEY), "res.partner", "search", [[]], {}, *DENIED),
    (GOOD, "foo.bar", "search", [[]], {},
     "odoo.exceptions.UserError", "Object foo.bar doesn't exist"),
    (GOOD, "res.partner", "unlink", [[1001]], {},
     "builtins.AttributeError",
     "The method 'unlink' does not exist on the model 'res.partner'"),
    (GOOD, "res.partner", "_read", [[1001]], {},
     "odoo.exceptions.AccessError",
     "Private methods (such as _read) cannot be called remotely."),
    (GOOD, "res.partner", "search_read", [[], ["name", "nope"]], {}, *INVALID_NOPE),
    (GOOD, "res.partner", "read", [[1001], ["nope"]], {}, *INVALID_NOPE),
    (GOOD, "res.partner", "read", [], {"fields": ["name"]},
     "builtins.IndexError", "list index out of range"),
    (GOOD, "res.partner", "search", [[["nope", "=", 1]]], {},
     "builtins.ValueError", "Invalid field res.partner.nope in leaf ('nope', '=', 1)"),
    (GOOD, "res.partner", "search", [[["name", "is", 1]]], {},
     "builtins.ValueError", "Invalid leaf ['name', 'is', 1]"),
    (GOOD, "res.partner", "search", [[["name", "="]]], {},
     "builtins.ValueError", "Invalid leaf ['name', '=']"),
    (GOOD, "res.partner", "search", [["|", ["id", "=", 1]]], {},
     "builtins.ValueError", "Domain ['|', ['id', '=', 1]] is syntactically not correct."),
    (GOOD, "res.partner", "search", [[["id", "=", "abc"]]], {},
     "builtins.ValueError", "invalid literal for int() with base 10: 'abc'"),
    (GOOD, "res.partner", "search", [[], 0, None, "nope desc"], {}, *INVALID_NOPE),
    (GOOD, "res.partner", "search", [[], 0, None, "id; drop"], {},
     "odoo.exceptions.UserError",
     'Invalid "order" specified (id; drop): use a comma-separated list of field names, '
     "each optionally followed by asc or desc"),
    (GOOD, "res.partner", "search_read", [[]], {"bogus": 1},
     "builtins.TypeError", "search_read() got an unexpected keyword argument 'bogus'"),
    (GOOD, "res.partner", "search", [], {},
     "builtins.TypeError", "search() missing a required argument: 'domain'"),
    (GOOD, "res.partner", "search", [[]], {"limit": -1},
     "builtins.ValueError", "Invalid limit -1: use a non-negative integer"),
]


@pytest.mark.parametrize(
    ("credentials", "model", "method", "call", "kwargs", "name", "message"), EXECUTE_KW_ERRORS
)
async def test_execute_kw_errors_use_envelope(
    client: httpx.AsyncClient,
    credentials: tuple[Any, ...],
    model: str,
    method: str,
    call: list[Any],
    kwargs: dict[str, Any],
    name: str,
    message: str,
) -> None:
    args = [*credentials, model, method, call, kwargs]

    data = await rpc_error(client, "object", "execute_kw", args)

    assert data["name"] == name
    assert data["message"] == message


@pytest.mark.parametrize(
    ("content", "content_type", "text"),
    [
        (b"{not json", "application/json", "Invalid JSON data"),
        (b"[1, 2]", "application/json", "Invalid JSON-RPC data"),
        (b'{"params": {}}', "text/plain", None),
    ],
)
async def test_malformed_body_answers_400(
    app: Starlette, client: httpx.AsyncClient, content: bytes, content_type: str, text: str | None
) -> None:
    headers = {"content-type": content_type}
    response = await client.post("/jsonrpc", content=content, headers=headers)

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    if text is not None:
        assert response.text == text
    else:
        assert "application/json" in response.text
    assert app.state.control.log == [
        RequestLogEntry(
            method="POST", path="/jsonrpc", entity=None, keys=0, fields=None, status=400
        )
    ]


async def test_bad_params_use_envelope(client: httpx.AsyncClient) -> None:
    listed = await client.post("/jsonrpc", json={"jsonrpc": "2.0", "id": 3, "params": [1]})
    partial = await client.post(
        "/jsonrpc", json={"jsonrpc": "2.0", "id": 4, "params": {"service": "common"}}
    )

    assert listed.status_code == 200
    assert listed.json()["error"]["data"]["name"] == "builtins.TypeError"
    assert listed.json()["error"]["data"]["message"] == "params must be a JSON object"
    assert partial.status_code == 200
    assert partial.json()["id"] == 4
    assert partial.json()["error"]["data"]["message"] == (
        "jsonrpc() missing required arguments: method, args"
    )


# --- domains -------------------------------------------------------------------------

PARTNER_DOMAINS: list[tuple[list[Any], list[int]]] = [
    ([], [1001, 1002, 1003]),
    ([["city", "=", "Milano"]], [1001, 1003]),
    (["|", ["city", "=", "Roma"], ["ref", "=", "C000003"]], [1002, 1003]),
    (["!", ["city", "=", "Milano"]], [1002]),
    (["&", ["city", "=", "Milano"], ["is_company", "=", True]], [1001]),
    ([["city", "=", "Milano"], "|", ["credit", ">", 0], ["customer_rank", "=", 0]], [1001, 1003]),
    (["!", "|", ["city", "=", "Roma"], ["is_company", "=", False]], [1001]),
    ([["name", "ilike", "PROVA"]], [1002]),
    ([["name", "like", "Prova"]], [1002]),
    ([["name", "like", "prova"]], []),
    ([["name", "not ilike", "test"]], [1002, 1003]),
    ([["name", "=like", "Alfa%"]], [1001]),
    ([["name", "=ilike", "GAMMA%"]], [1003]),
    ([["name", "=like", "_eta Prova SPA"]], [1002]),
    ([["email", "ilike", ""]], [1001, 1002, 1003]),
    ([["email", "not ilike", "alfa"]], [1002, 1003]),
    ([["vat", "=?", False]], [1001, 1002, 1003]),
    ([["vat", "=?", "IT00000000022"]], [1003]),
    ([["id", "not in", [1001]]], [1002, 1003]),
    ([["vat", "not in", ["IT00000000011"]]], [1002, 1003]),
    ([["vat", "not in", ["IT00000000011", False]]], [1003]),
    ([["vat", "in", ["IT00000000022", False]]], [1002, 1003]),
    ([["id", "in", []]], []),
    ([["id", "not in", []]], [1001, 1002, 1003]),
    ([["vat", "=", False]], [1002]),
    ([["vat", "!=", False]], [1001, 1003]),
    ([["vat", "!=", "IT00000000011"]], [1002, 1003]),
    ([["vat", "<>", "IT00000000011"]], [1002, 1003]),
    ([["street", "=", False]], [1002]),
    ([["is_company", "=", False]], [1003]),
    ([["is_company", "!=", True]], [1003]),
    ([["is_company", "in", [False]]], [1003]),
    ([["credit_limit", ">", 0]], [1001, 1003]),
    # An empty number reads as 0.0 but compares as SQL NULL, so 1002 never matches.
    ([["credit_limit", "<=", 1000]], [1003]),
    ([["credit_limit", "=", 0]], []),
    ([[1, "=", 1]], [1001, 1002, 1003]),
    ([[0, "=", 1]], []),
]

ORDER_DOMAINS: list[tuple[list[Any], list[int]]] = [
    ([["partner_id", "=", 1001]], [5001, 5003]),
    ([["partner_id", "in", [1002, 1003]]], [5002, 5004]),
    ([["partner_id", "ilike", "alfa"]], [5001, 5003]),
    ([["partner_id", "not ilike", "alfa"]], [5002, 5004]),
    ([["partner_id", "=", "Beta Prova SPA"]], [5002]),
    ([["partner_id.city", "=", "Milano"]], [5001, 5003, 5004]),
    ([["partner_id", "any", [["is_company", "=", False]]]], [5004]),
    ([["partner_id", "not any", [["is_company", "=", False]]]], [5001, 5002, 5003]),
    ([["date_order", ">=", "2026-03-15"]], [5003, 5004]),
    ([["date_order", "<=", "2026-03-15"]], [5001, 5002, 5003, 5004]),
    ([["date_order", "<", "2026-03-15"]], [5001, 5002]),
    ([["date_order", ">", "2026-03-15 08:00:00"]], [5004]),
    ([["commitment_date", "=", False]], [5002, 5004]),
    ([["state", "in", ["sale", "sent"]]], [5001, 5004]),
    ([["amount_total", "<", 200]], [5002, 5003]),
]

PICKING_DOMAINS: list[tuple[list[Any], list[int]]] = [
    ([["carrier_id", "=", False]], [7002]),
    ([["carrier_id", "!=", 1]], [7002]),
    ([["carrier_id", "not in", [1]]], [7002]),
    ([["carrier_id", "in", [1]]], [7001]),
    ([["carrier_id", "!=", "BRT"]], [7002]),
    ([["carrier_id", "not any", [["name", "=", "BRT"]]]], [7002]),
    ([["carrier_id.name", "=", "BRT"]], [7001]),
    ([["sale_id.partner_id.name", "=like", "gamma%"]], [7002]),
]


@pytest.mark.parametrize(("domain", "expected"), PARTNER_DOMAINS)
async def test_domain_on_partners(
    client: httpx.AsyncClient, domain: list[Any], expected: list[int]
) -> None:
    assert await search_ids(client, "res.partner", domain) == expected


@pytest.mark.parametrize(("domain", "expected"), ORDER_DOMAINS)
async def test_domain_on_orders(
    client: httpx.AsyncClient, domain: list[Any], expected: list[int]
) -> None:
    assert await search_ids(client, "sale.order", domain) == expected


@pytest.mark.parametrize(("domain", "expected"), PICKING_DOMAINS)
async def test_domain_on_pickings(
    client: httpx.AsyncClient, domain: list[Any], expected: list[int]
) -> None:
    assert await search_ids(client, "stock.picking", domain) == expected


async def test_long_or_chain_evaluates(client: httpx.AsyncClient) -> None:
    leaves = [["id", "=", record_id] for record_id in range(-3000, 0)] + [["id", "=", 1002]]
    domain = ["|"] * (len(leaves) - 1) + leaves

    assert await search_ids(client, "res.partner", domain) == [1002]


# --- request log and faults ------------------------------------------------------------


async def test_request_log_entries(app: Starlette, client: httpx.AsyncClient) -> None:
    await rpc(client, "common", "login", [DB, LOGIN, API_KEY])
    await execute_kw(
        client, "sale.order", "search_read",
        [[["state", "=", "sale"], ["partner_id", "in", [1001, 1002, 1003]]]],
        {"fields": ["name", "partner_id"]},
    )
    await execute_kw(client, "res.partner", "read", [[1001, 1002], ["name"]])
    await execute_kw(client, "res.partner", "search_read", [[["id", "in", [1001]]]], {"fields": []})
    await execute_kw(client, "res.partner", "search_count", [[["city", "=", "Roma"]]])
    await rpc(client, "object", "execute_kw", [DB, UID, "wrong-key", "res.bank", "search", [[]]])

    entries = [
        RequestLogEntry("POST", "/jsonrpc", None, 0, None, 200),
        RequestLogEntry("POST", "/jsonrpc", "sale.order", 3, ["name", "partner_id"], 200,
                        '[["state", "=", "sale"], ["partner_id", "in", [1001, 1002, 1003]]]'),
        RequestLogEntry("POST", "/jsonrpc", "res.partner", 2, ["name"], 200),
        RequestLogEntry("POST", "/jsonrpc", "res.partner", 1, None, 200,
                        '[["id", "in", [1001]]]'),
        RequestLogEntry("POST", "/jsonrpc", "res.partner", 0, None, 200),
        RequestLogEntry("POST", "/jsonrpc", "res.bank", 0, None, 200, "[]"),
    ]
    assert app.state.control.log == entries
    listed = await client.get("/__fonte/requests")
    assert listed.json() == {"requests": [entry.to_json() for entry in entries]}


async def test_fault_status_answers_text(app: Starlette, client: httpx.AsyncClient) -> None:
    set_fault = await client.put("/__fonte/fault", json={"status": 503})
    failed = await rpc(client, "object", "execute_kw",
                       [DB, UID, API_KEY, "res.partner", "search", [[["id", "in", [1001]]]]])
    version = await client.get("/web/version")
    await client.put("/__fonte/fault", json={"status": None})
    recovered = await rpc(client, "common", "version", [])

    assert set_fault.status_code == 200
    assert failed.status_code == 503
    assert failed.text == "503 Service Unavailable\n"
    assert failed.headers["content-type"].startswith("text/plain")
    assert version.status_code == 503
    assert recovered.status_code == 200
    assert [(entry.entity, entry.keys, entry.status) for entry in app.state.control.log] == [
        ("res.partner", 1, 503),
        (None, 0, 503),
        (None, 0, 200),
    ]


async def test_fault_body_malformed_json(client: httpx.AsyncClient) -> None:
    set_fault = await client.put("/__fonte/fault", json={"status": None, "body": "malformed"})
    failed = await rpc(client, "common", "version", [])
    await client.put("/__fonte/fault", json={"status": None})
    recovered = await rpc(client, "common", "version", [])

    assert set_fault.json() == {"status": None, "delay": 0.0, "body": "malformed"}
    assert failed.status_code == 200
    assert failed.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        failed.json()
    assert recovered.json()["result"]["server_version"] == SERVER_VERSION


async def test_fault_body_invalid_rejected(client: httpx.AsyncClient) -> None:
    response = await client.put("/__fonte/fault", json={"status": None, "body": "garbled"})

    assert response.status_code == 400
    assert response.json() == {"error": "fault body 'garbled' is invalid. Use 'malformed' or "
                                        "'drop' or null"}


async def test_fault_delay_holds_answer(client: httpx.AsyncClient) -> None:
    await client.put("/__fonte/fault", json={"status": None, "delay": 0.2})

    started = time.perf_counter()
    response = await rpc(client, "common", "version", [])
    elapsed = time.perf_counter() - started

    assert response.status_code == 200
    assert elapsed >= 0.2


# --- data set and real client ------------------------------------------------------------


def test_bad_data_set_rejected() -> None:
    dangling = DemoData(crm={}, erp={"sale.order": [ORDERS[0]]})
    unknown = DemoData(crm={}, erp={"res.users": [{"id": 1}]})

    with pytest.raises(ValueError, match=r"partner_id=1001, but res\.partner has no record"):
        create_odoo_app(dangling, api_key=API_KEY)
    with pytest.raises(ValueError, match=r"models \['res\.users'\] have no field table"):
        create_odoo_app(unknown, api_key=API_KEY)


async def test_generated_data_matches_field_tables() -> None:
    app = create_odoo_app(generate(customers=50), api_key=API_KEY)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://erp.test") as client:
        partners = await execute_kw(client, "res.partner", "search_count", [[]])
        for model in ("res.partner", "res.partner.bank", "sale.order", "account.move",
                      "stock.picking", "res.bank", "res.currency", "delivery.carrier"):
            declared = await execute_kw(client, model, "fields_get", [])
            first = await execute_kw(client, model, "search_read", [[]], {"limit": 1})
            assert len(first) == 1, model
            assert set(first[0]) == set(declared), model

    assert partners == 50


@pytest.mark.loopback
def test_odoorpc_client_reads_partners(app: Starlette) -> None:
    odoorpc = pytest.importorskip("odoorpc")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]

        odoo = odoorpc.ODOO("127.0.0.1", port=port, protocol="jsonrpc", timeout=10)
        odoo.login(DB, LOGIN, API_KEY)
        rows = odoo.env["res.partner"].search_read(
            [["id", "in", [1001, 1003]]], ["name", "credit"], order="id desc"
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    assert odoo.version == "18.0"
    assert rows == [
        {"id": 1003, "name": "gamma demo snc", "credit": 0.0},
        {"id": 1001, "name": "Alfa Test SRL", "credit": 1220.0},
    ]


# --- JSON-2 ----------------------------------------------------------------------------------


def json2_headers(api_key: str = API_KEY, **extra: str) -> dict[str, str]:
    return {"Authorization": f"bearer {api_key}", "X-Odoo-Database": DB, **extra}


async def json2(
    client: httpx.AsyncClient,
    model: str,
    method: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    if headers is None:
        headers = json2_headers()
    return await client.post(f"/json/2/{model}/{method}", json=body, headers=headers)


async def json2_result(client: httpx.AsyncClient, model: str, method: str, body: Any) -> Any:
    response = await json2(client, model, method, body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def json2_error(response: httpx.Response) -> dict[str, Any]:
    """Check the shape of a JSON-2 error object and return it."""
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"name", "message", "arguments", "context", "debug"}
    assert body["context"] == {}
    assert body["debug"].startswith("Traceback (most recent call last):\n")
    assert body["message"] not in body["debug"]
    return body


async def test_json2_search_read_exact_rows(client: httpx.AsyncClient) -> None:
    kwargs = {"fields": ["name", "amount_total", "partner_id"], "order": "date_order desc",
              "offset": 1, "limit": 2}
    domain = [["partner_id", "in", [1001, 1003]]]

    result = await json2_result(client, "sale.order", "search_read", {"domain": domain, **kwargs})
    over_jsonrpc = await execute_kw(client, "sale.order", "search_read", [domain], kwargs)

    assert result == [
        {"id": 5003, "name": "S00003", "amount_total": 61.0, "partner_id": [1001, "Alfa Test SRL"]},
        {"id": 5001, "name": "S00001", "amount_total": 1220.0,
         "partner_id": [1001, "Alfa Test SRL"]},
    ]
    assert result == over_jsonrpc


async def test_json2_empty_values_false(client: httpx.AsyncClient) -> None:
    result = await json2_result(client, "stock.picking", "search_read",
                                {"domain": [["id", "=", 7002]],
                                 "fields": ["carrier_id", "date_done", "carrier_tracking_ref"]})

    assert result == [
        {"id": 7002, "carrier_id": False, "date_done": False, "carrier_tracking_ref": False}
    ]


@pytest.mark.parametrize("fields", [None, []])
async def test_json2_without_fields_returns_all(
    client: httpx.AsyncClient, fields: list[str] | None
) -> None:
    body: dict[str, Any] = {"domain": [["id", "=", 1002]]}
    if fields is not None:
        body["fields"] = fields

    result = await json2_result(client, "res.partner", "search_read", body)

    assert set(result[0]) == {
        "id", "name", "vat", "email", "phone", "street", "city", "zip", "ref", "is_company",
        "customer_rank", "credit_limit", "credit",
    }


async def test_json2_read_takes_ids(client: httpx.AsyncClient) -> None:
    result = await json2_result(client, "sale.order", "read",
                                {"ids": [5002, 9999, 5001], "fields": ["name"]})
    no_ids = await json2_result(client, "sale.order", "read", {"fields": ["name"]})

    assert result == [{"id": 5002, "name": "S00002"}, {"id": 5001, "name": "S00001"}]
    assert no_ids == []


async def test_json2_model_methods_and_context(client: httpx.AsyncClient) -> None:
    search = await json2_result(client, "sale.order", "search",
                                {"domain": [["state", "=", "sale"]], "context": {"lang": "it_IT"}})
    count = await json2_result(client, "sale.order", "search_count", {"domain": []})
    fields = await json2_result(client, "res.currency", "fields_get", {"attributes": ["type"]})
    user = await json2_result(client, "res.users", "context_get", {})

    assert search == [5001]
    assert count == 4
    assert fields == {"id": {"type": "integer"}, "name": {"type": "char"}}
    assert user == {"lang": "en_US", "tz": "Europe/Rome", "uid": UID}


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {API_KEY}"},
        {"Authorization": f"BEARER  {API_KEY} "},
        {"Authorization": f"bearer {API_KEY}", "X-Odoo-Database": DB},
    ],
    ids=["capitalised, no database", "upper case, spaces", "matching database"],
)
async def test_json2_auth_header_forms(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await json2(client, "res.partner", "search", {"domain": [["id", "=", 1001]]},
                           headers=headers)

    assert response.status_code == 200
    assert response.json() == [1001]


NOT_FOUND = "werkzeug.exceptions.NotFound"
UNPROCESSABLE = "werkzeug.exceptions.UnprocessableEntity"
ROUTE_HINT = "Did you mean POST /json/2/<model>/<method>?"

JSON2_ERRORS: list[tuple[str, str, Any, int, str, str]] = [
    ("foo.bar", "search", {"domain": []}, 404, NOT_FOUND, "the model 'foo.bar' does not exist"),
    ("res.partner", "unlink", {"ids": [1001]}, 404, NOT_FOUND,
     "The method 'unlink' does not exist on the model 'res.partner'"),
    ("res.partner", "_read", {"ids": [1001]}, 404, NOT_FOUND,
     "Private methods (such as _read) cannot be called remotely."),
    ("res.partner", "search_read", {"ids": [1001], "domain": []}, 422, UNPROCESSABLE,
     "cannot call res.partner.search_read with ids"),
    ("res.partner", "search_read", {"domain": [], "bogus": 1}, 422, UNPROCESSABLE,
     "got an unexpected keyword argument 'bogus'"),
    ("res.partner", "search_read", {"args": [[]]}, 422, UNPROCESSABLE,
     "got an unexpected keyword argument 'args'"),
    ("res.partner", "search", {}, 422, UNPROCESSABLE, "missing a required argument: 'domain'"),
    ("res.partner", "search_read", {"domain": [], "fields": ["nope"]}, 500,
     "builtins.ValueError", "Invalid field 'nope' on model 'res.partner'"),
    ("res.partner", "search", {"domain": [], "limit": -1}, 500,
     "builtins.ValueError", "Invalid limit -1: use a non-negative integer"),
    ("res.partner", "search", {"domain": [], "order": "id; drop"}, 422,
     "odoo.exceptions.UserError",
     'Invalid "order" specified (id; drop): use a comma-separated list of field names, '
     "each optionally followed by asc or desc"),
]


@pytest.mark.parametrize(("model", "method", "body", "status", "name", "message"), JSON2_ERRORS)
async def test_json2_call_errors(
    client: httpx.AsyncClient, model: str, method: str, body: Any, status: int, name: str,
    message: str,
) -> None:
    response = await json2(client, model, method, body)

    error = json2_error(response)
    assert response.status_code == status
    assert error["name"] == name
    assert error["message"] == message
    expected_arguments = [message, status] if name.startswith("werkzeug.") else [message]
    assert error["arguments"] == expected_arguments


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Missing Authorization: bearer <API key> header"),
        ({"Authorization": f"Basic {API_KEY}"}, "Missing Authorization: bearer <API key> header"),
        ({"Authorization": "bearer wrong-key"}, "Invalid apikey"),
        ({"Authorization": f"bearer {API_KEY}x"}, "Invalid apikey"),
    ],
)
async def test_json2_bad_key_answers_401(
    client: httpx.AsyncClient, headers: dict[str, str], message: str
) -> None:
    response = await json2(client, "res.partner", "search", {"domain": []}, headers=headers)

    error = json2_error(response)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert error["name"] == "werkzeug.exceptions.Unauthorized"
    assert error["message"] == message


async def test_json2_other_database_404(client: httpx.AsyncClient) -> None:
    headers = json2_headers(**{"X-Odoo-Database": "other_db"})

    response = await json2(client, "res.partner", "search", {"domain": []}, headers=headers)

    assert response.status_code == 404
    assert json2_error(response)["message"] == ROUTE_HINT


@pytest.mark.parametrize(
    ("content", "content_type", "status", "message"),
    [
        (b"{not json", "application/json", 400, "could not parse the body as json: "),
        (b"[1, 2]", "application/json", 400, "could not parse the body, expecting a json object"),
        (b'"Invalid"', "application/json", 400,
         "could not parse the body, expecting a json object"),
        (b'{"domain": []}', "text/plain", 415, "Request type 'text/plain' is not compatible"),
        (b'{"domain": []}', "", 415, "Request type 'none' is not compatible"),
    ],
)
async def test_json2_malformed_body(
    client: httpx.AsyncClient, content: bytes, content_type: str, status: int, message: str
) -> None:
    headers = json2_headers(**{"Content-Type": content_type})

    response = await client.post("/json/2/res.partner/search", content=content, headers=headers)

    assert response.status_code == status
    assert json2_error(response)["message"].startswith(message)


async def test_json2_empty_body_binds_nothing(client: httpx.AsyncClient) -> None:
    headers = json2_headers(**{"Content-Type": "application/json"})

    count = await client.post("/json/2/sale.order/search_count", headers=headers)
    search = await client.post("/json/2/sale.order/search", headers=headers)

    assert count.status_code == 422
    assert json2_error(count)["message"] == "missing a required argument: 'domain'"
    assert search.status_code == 422


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/json/2/res.partner/search_read"),
        ("POST", "/json/2"),
        ("POST", "/json/2/"),
        ("DELETE", "/json/2/res.partner"),
        ("POST", "/json/2/res.partner/search/extra"),
    ],
)
async def test_json2_other_paths_404(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path)

    assert response.status_code == 404
    assert json2_error(response)["message"] == ROUTE_HINT


async def test_json2_request_log_entries(app: Starlette, client: httpx.AsyncClient) -> None:
    await json2(client, "sale.order", "search_read",
                {"domain": [["state", "=", "sale"], ["partner_id", "in", [1001, 1002, 1003]]],
                 "fields": ["name", "partner_id"]})
    await json2(client, "res.partner", "read", {"ids": [1001, 1002], "fields": ["name"]})
    await json2(client, "res.partner", "search_read", {"domain": [["id", "in", [1001]]]})
    await json2(client, "res.partner", "search_count", {"domain": [["id", "in", [1001]]]})
    await json2(client, "res.bank", "search_read", {"domain": [], "fields": ["name"]},
                headers=json2_headers("wrong-key"))
    await client.post("/json/2/res.partner/search_read", content=b"{not json",
                      headers=json2_headers(**{"Content-Type": "application/json"}))
    await client.get("/json/2")

    assert [entry.filter for entry in app.state.control.log][:3] == [
        '[["state", "=", "sale"], ["partner_id", "in", [1001, 1002, 1003]]]', None,
        '[["id", "in", [1001]]]']
    assert [dataclasses.replace(entry, filter=None) for entry in app.state.control.log] == [
        RequestLogEntry("POST", "/json/2/sale.order/search_read", "sale.order", 3,
                        ["name", "partner_id"], 200),
        RequestLogEntry("POST", "/json/2/res.partner/read", "res.partner", 2, ["name"], 200),
        RequestLogEntry("POST", "/json/2/res.partner/search_read", "res.partner", 1, None, 200),
        RequestLogEntry("POST", "/json/2/res.partner/search_count", "res.partner", 1, None, 200),
        RequestLogEntry("POST", "/json/2/res.bank/search_read", "res.bank", 0, ["name"], 401),
        RequestLogEntry("POST", "/json/2/res.partner/search_read", "res.partner", 0, None, 400),
        RequestLogEntry("GET", "/json/2", None, 0, None, 404),
    ]


async def test_json2_fault_status_answers_text(app: Starlette, client: httpx.AsyncClient) -> None:
    app.state.control.fault_status = 503
    failed = await json2(client, "res.partner", "search_read",
                         {"domain": [["id", "in", [1001, 1002]]], "fields": ["name"]})
    other = await client.post("/json/2")
    app.state.control.fault_status = None
    recovered = await json2(client, "res.partner", "search", {"domain": [["id", "=", 1001]]})

    assert failed.status_code == 503
    assert failed.text == "503 Service Unavailable\n"
    assert failed.headers["content-type"].startswith("text/plain")
    assert other.status_code == 503
    assert recovered.status_code == 200
    assert [(entry.entity, entry.keys, entry.fields, entry.status)
            for entry in app.state.control.log] == [
        ("res.partner", 2, ["name"], 503),
        (None, 0, None, 503),
        ("res.partner", 0, None, 200),
    ]


async def test_json2_fault_delay_holds_answer(app: Starlette, client: httpx.AsyncClient) -> None:
    app.state.control.fault_delay = 0.2

    started = time.perf_counter()
    response = await json2(client, "res.partner", "search", {"domain": []})
    elapsed = time.perf_counter() - started

    assert response.status_code == 200
    assert elapsed >= 0.2


async def test_json2_generated_data_matches_jsonrpc() -> None:
    app = create_odoo_app(generate(customers=20), api_key=API_KEY)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://erp.test") as client:
        for model in ("res.partner", "res.partner.bank", "sale.order", "account.move",
                      "stock.picking"):
            over_json2 = await json2_result(client, model, "search_read",
                                            {"domain": [], "limit": 5, "order": "id desc"})
            over_jsonrpc = await execute_kw(client, model, "search_read", [[]],
                                            {"limit": 5, "order": "id desc"})
            assert len(over_json2) == 5, model
            assert over_json2 == over_jsonrpc, model
