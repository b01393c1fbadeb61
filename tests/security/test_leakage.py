"""Leakage: nothing of the gateway's insides or another caller's data reaches a client.

Client errors name the field or the system, never a stack trace, an
upstream's own error text, SOQL or SQL, policy rules or role names. Logs
and metrics labels hold no personal value (``probe.send`` scans the logs of
every request), and no response or policy view is reused across callers.
The upstream errors below quote a personal value and a query on purpose,
as real Salesforce and Odoo errors do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Harness, field_errors, start_harness
from probe import Probe, leaked, personal_forms, send

from gateway.build import Builder
from gateway.demo.data import DemoData

Caplog = pytest.LogCaptureFixture
CARD = "query($id: ID!) { customer(id: $id) { name creditLimit iban } }"
LIMIT_DENIED = "Not authorised to read Customer.creditLimit."
# Words that would show policy rows, role names or rule ids in a client error.
POLICY_WORDS = ("sales", "finance", "dpo", "role", "rule", "p:", "default-deny", "policy.csv")


def _account(data: DemoData, index: int = 0) -> dict[str, Any]:
    account_id = sorted(a["Id"] for a in data.crm["Account"])[index]
    return next(a for a in data.crm["Account"] if a["Id"] == account_id)


class FailingTransport(httpx.AsyncBaseTransport):
    """Returns ``response`` for the calls that ``fails`` selects and passes the others on."""

    def __init__(self, inner: httpx.AsyncBaseTransport, fails: Callable[[httpx.Request], bool],
                 response: Callable[[httpx.Request], httpx.Response]) -> None:
        self.inner = inner
        self.fails = fails
        self.response = response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.fails(request):
            return await self.inner.handle_async_request(request)
        await request.aread()
        return self.response(request)


def _salesforce_error(name: str) -> Callable[[httpx.Request], httpx.Response]:
    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=[{
            "errorCode": "MALFORMED_QUERY",
            "message": f"SELECT Id, Name FROM Account WHERE Name = '{name}'\n"
                       "ERROR at Row:1:Column:38 unexpected token"}])
    return respond


def _odoo_error(name: str) -> Callable[[httpx.Request], httpx.Response]:
    def respond(request: httpx.Request) -> httpx.Response:
        call = json.loads(request.content)
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": call.get("id"), "error": {
            "code": 200, "message": "Odoo Server Error", "data": {
                "name": "psycopg2.errors.SyntaxError",
                "message": f"syntax error at or near \"FROM\": SELECT credit_limit FROM "
                           f"res_partner WHERE name = '{name}'",
                "debug": "Traceback (most recent call last):\n  File \"odoo/sql_db.py\""}}})
    return respond


def _is_salesforce_data_call(request: httpx.Request) -> bool:
    return "/services/data/" in request.url.path


def _is_odoo_read(request: httpx.Request) -> bool:
    return b"execute_kw" in request.content


def _gateway_log_lines(probe: Probe) -> list[str]:
    """Return the gateway's own log lines; aiosqlite logs the audit store's SQL at DEBUG."""
    return [line for record, line in zip(probe.logs, probe.log_lines(), strict=True)
            if record.name.startswith("gateway.")]


def _no_insides(text: str) -> None:
    """Check a client error: no upstream text, query, error name or code file."""
    for word in ("Traceback", "SELECT", "FROM", "WHERE", "psycopg2", "MALFORMED_QUERY",
                 "Odoo Server Error", ".py"):
        assert word not in text


def _no_upstream_text(line: str) -> None:
    """Check a log line: the upstream's error name may appear for operators, its text not."""
    for word in ("Traceback", "SELECT", "WHERE", "syntax error", "unexpected token"):
        assert word not in line


async def test_internal_error_hides_trace(harness: Harness, caplog: Caplog,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    account = _account(harness.data)

    def broken(self: Builder, *args: Any) -> Any:
        raise RuntimeError(f"cannot build {account['Name']}")

    monkeypatch.setattr(Builder, "lookup", broken)
    probe = await send(harness, caplog, CARD, role="finance", variables={"id": account["Id"]})

    request_id = probe.response.headers["X-Request-ID"]
    assert probe.status == 500
    assert probe.body == {"errors": [{
        "message": f"internal error; quote request id {request_id} to the operators",
        "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]}
    assert [entry.entity for entry in probe.upstream] == ["Account", "res.partner",
                                                          "res.partner.bank"]
    # Nothing was disclosed, so nothing is audited.
    assert probe.audit == []
    errors = [r.getMessage() for r in probe.logs if r.name == "gateway.app"]
    assert len(errors) == 1
    # The type and place of the error, never its message.
    assert re.fullmatch(rf"request {request_id} failed with RuntimeError at \S+\.py:\d+",
                        errors[0])


async def test_upstream_text_not_served(demo_data: DemoData, tmp_path: Path,
                                        caplog: Caplog) -> None:
    account = _account(demo_data)
    name = account["Name"]
    async with start_harness(
            demo_data, tmp_path / "data",
            wrap_erp=lambda inner: FailingTransport(inner, _is_odoo_read, _odoo_error(name)),
    ) as harness:
        probe = await send(harness, caplog, CARD, role="finance",
                           variables={"id": account["Id"]})

    assert probe.body["data"] == {"customer": {"name": name, "creditLimit": None,
                                               "iban": None}}
    assert field_errors(probe.body) == [
        (["customer", "creditLimit"], "UPSTREAM_UNAVAILABLE",
         "System 'erp' is unavailable, so Customer.creditLimit could not be read."),
        (["customer", "iban"], "UPSTREAM_UNAVAILABLE",
         "System 'erp' is unavailable, so Customer.iban could not be read."),
    ]
    _no_insides(json.dumps(probe.body.get("errors")))
    assert probe.audit[0]["outcome"] == "partial"
    for line in _gateway_log_lines(probe):
        _no_upstream_text(line)


async def test_soql_error_not_served(demo_data: DemoData, tmp_path: Path,
                                     caplog: Caplog) -> None:
    account = _account(demo_data)
    async with start_harness(
            demo_data, tmp_path / "data",
            wrap_crm=lambda inner: FailingTransport(inner, _is_salesforce_data_call,
                                                    _salesforce_error(account["Name"])),
    ) as harness:
        probe = await send(
            harness, caplog,
            "query($s: String) { customers(first: 2, search: $s) { edges { node { id } } } }",
            variables={"s": "' OR Name != '"})

    assert probe.body["data"] == {"customers": None}
    assert probe.codes() == ["UPSTREAM_UNAVAILABLE"]
    assert probe.body["errors"][0]["message"] == (
        "System 'crm' is unavailable, so Query.customers could not be read.")
    _no_insides(json.dumps(probe.body))
    for line in _gateway_log_lines(probe):
        _no_upstream_text(line)


@pytest.mark.parametrize(("role", "purpose"), [("sales", "sales"), ("finance", "marketing"),
                                               ("dpo", "compliance")])
async def test_policy_not_in_errors(harness: Harness, caplog: Caplog, role: str,
                                    purpose: str) -> None:
    token = harness.token(role, purpose=purpose)
    probe = await send(harness, caplog, CARD, token=token,
                       variables={"id": harness.customer_ids(1)[0]})

    assert "FORBIDDEN" in probe.codes()
    messages = " ".join(error["message"] for error in probe.body["errors"])
    assert [word for word in POLICY_WORDS if word in messages.lower()] == []
    assert {json.dumps(error["extensions"]) for error in probe.body["errors"]} == {
        '{"code": "FORBIDDEN"}'}
    assert probe.audit[0]["roles"] == [role]


async def test_metrics_hold_no_personal_values(harness: Harness, caplog: Caplog) -> None:
    account = _account(harness.data)
    await send(harness, caplog, CARD, role="finance", variables={"id": account["Id"]})
    await send(harness, caplog,
               "query($s: String) { customers(first: 2, search: $s) { edges { node { id } } } }",
               variables={"s": account["Name"]})
    harness.erp_app.state.control.fault_status = 503
    await send(harness, caplog, CARD, role="finance", variables={"id": account["Id"]})
    harness.erp_app.state.control.fault_status = None

    metrics = (await harness.client.get("/metrics")).text

    assert leaked(metrics, personal_forms(harness.data)) == []
    labels = set(re.findall(r"[{,]([a-z_]+)=", metrics))
    assert labels <= {"status", "system", "le", "state"}


async def test_responses_not_shared(harness: Harness, caplog: Caplog) -> None:
    account = _account(harness.data)
    variables = {"id": account["Id"]}

    finance = await send(harness, caplog, CARD, role="finance", variables=variables)
    sales = await send(harness, caplog, CARD, role="sales", variables=variables)
    it = await send(harness, caplog, CARD, role="it", variables=variables)

    assert finance.body["data"]["customer"]["creditLimit"] is not None
    assert sales.body["data"]["customer"]["creditLimit"] is None
    assert field_errors(sales.body)[0] == (["customer", "creditLimit"], "FORBIDDEN",
                                          LIMIT_DENIED)
    assert sales.body["data"]["customer"]["iban"] != finance.body["data"]["customer"]["iban"]
    assert it.body["data"]["customer"]["name"].startswith("pn:")
    assert "credit_limit" in finance.requested_attributes()
    assert "credit_limit" not in sales.requested_attributes()
    # sales reads the IBAN (masked) but not the credit limit, so no res.partner call.
    assert [len(p.upstream) for p in (finance, sales, it)] == [3, 2, 1]


async def test_introspection_not_shared(harness: Harness, caplog: Caplog) -> None:
    document = '{ __type(name: "Customer") { fields { name } } }'
    names: dict[str, list[set[str]]] = {}
    for role in ("finance", "sales", "finance", "dpo"):
        probe = await send(harness, caplog, document, role=role)
        fields = probe.body["data"]["__type"]["fields"]
        names.setdefault(role, []).append({field["name"] for field in fields})

    assert "creditLimit" in names["finance"][0]
    assert "creditLimit" not in names["sales"][0]
    assert names["finance"][0] == names["finance"][1]
    assert names["dpo"] == [{"id"}]
