"""One failed upstream nulls only the fields it serves, and the response is still HTTP 200.

Every field read from the failed system gets one error at its own path with
``extensions.code`` UPSTREAM_UNAVAILABLE or UPSTREAM_TIMEOUT. The message
names the system and the field, and never repeats the upstream's own error
text, which may quote data.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Harness, field_errors, start_harness

from gateway.audit.export import ExportFilter, export_records
from gateway.demo.data import DemoData
from gateway.execute import Fetched, GraphQLRequest
from gateway.principal import Principal

# Finance may read every field here. The CRM serves id and name, the ERP the rest.
MIXED_QUERY = """query($id: ID!) { customer(id: $id) {
  id name creditLimit openBalance iban orders(first: 1) { number } invoices(first: 1) { number }
} }"""
ERP_FIELDS = ("creditLimit", "openBalance", "iban", "orders", "invoices")
UPSTREAM_TEXT = "upstream detail that must not reach the client"


class FailingTransport(httpx.AsyncBaseTransport):
    """Raises one httpx transport error for every request."""

    def __init__(self, error: type[httpx.TransportError]) -> None:
        self._error = error

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise self._error(UPSTREAM_TEXT, request=request)


def _failing(error: type[httpx.TransportError]) -> Any:
    return lambda inner: FailingTransport(error)


def _account(harness: Harness) -> dict[str, Any]:
    account_id = harness.customer_ids(1)[0]
    return next(a for a in harness.data.crm["Account"] if a["Id"] == account_id)


FAILURE_WORDS = {"UPSTREAM_UNAVAILABLE": "is unavailable", "UPSTREAM_TIMEOUT": "timed out"}


def _erp_errors(code: str) -> list[tuple[list[Any], str, str]]:
    return [(["customer", name], code,
             f"System 'erp' {FAILURE_WORDS[code]}, so Customer.{name} could not be read.")
            for name in ERP_FIELDS]


async def _mixed_lookup(harness: Harness) -> dict[str, Any]:
    response = await harness.query(MIXED_QUERY, role="finance",
                                   variables={"id": _account(harness)["Id"]})
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def _assert_crm_served_erp_failed(body: dict[str, Any], account: dict[str, Any],
                                  code: str) -> None:
    assert body["data"] == {"customer": {
        "id": account["Id"], "name": account["Name"],
        **{name: None for name in ERP_FIELDS}}}
    assert field_errors(body) == _erp_errors(code)


async def test_erp_status_503_nulls_erp(harness: Harness) -> None:
    harness.erp_app.state.control.fault_status = 503
    body = await _mixed_lookup(harness)
    _assert_crm_served_erp_failed(body, _account(harness), "UPSTREAM_UNAVAILABLE")


async def test_no_record_left_announced(harness: Harness) -> None:
    recorder = harness.gateway_app.state.gateway.recorder
    account = _account(harness)
    served = await asyncio.gather(*(_mixed_lookup(harness) for _ in range(6)))
    harness.erp_app.state.control.fault_status = 503
    failed = await _mixed_lookup(harness)
    rejected = await harness.query("{ customers(first: 2) { edges { node { nope } } } }")

    # Each request announced its record before its upstream calls, for the commit
    # delay, and the count went back to zero whether the request was served or not.
    assert [body["data"]["customer"]["name"] for body in served] == [account["Name"]] * 6
    _assert_crm_served_erp_failed(failed, account, "UPSTREAM_UNAVAILABLE")
    assert rejected.status_code == 400
    assert recorder.expected_records == 0


async def test_fetch_alone_announces_nothing(harness: Harness) -> None:
    gateway = harness.gateway_app.state.gateway
    request = GraphQLRequest(MIXED_QUERY, {"id": _account(harness)["Id"]})
    principal = Principal("u-fetch", frozenset({"finance"}), "billing")

    fetched = await gateway.executor.fetch(request, principal)

    assert isinstance(fetched, Fetched)
    assert fetched.expected is None
    assert gateway.recorder.expected_records == 0


async def test_bad_commit_delay_stops_startup(demo_data: DemoData, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        async with start_harness(demo_data, tmp_path / "data",
                                 overrides={"audit_commit_delay_ms": 500}):
            pass

    assert str(caught.value) == "commit delay must be from 0 to 0.1 seconds, not 0.5"
    # Checked before the store opened, so no audit writer task was left running.
    assert [task.get_name() for task in asyncio.all_tasks()
            if task.get_name().startswith("audit-writer")] == []


async def test_erp_connect_error_nulls_erp(demo_data: DemoData, tmp_path: Path) -> None:
    async with start_harness(demo_data, tmp_path / "data",
                             wrap_erp=_failing(httpx.ConnectError)) as harness:
        body = await _mixed_lookup(harness)
        _assert_crm_served_erp_failed(body, _account(harness), "UPSTREAM_UNAVAILABLE")


async def test_erp_read_timeout_nulls_erp(demo_data: DemoData, tmp_path: Path) -> None:
    async with start_harness(demo_data, tmp_path / "data",
                             wrap_erp=_failing(httpx.ReadTimeout)) as harness:
        body = await _mixed_lookup(harness)
        _assert_crm_served_erp_failed(body, _account(harness), "UPSTREAM_TIMEOUT")


async def test_timeout_code_survives_retries(demo_data: DemoData, tmp_path: Path) -> None:
    async with start_harness(demo_data, tmp_path / "data", resilience={},
                             wrap_erp=_failing(httpx.ReadTimeout)) as harness:
        body = await _mixed_lookup(harness)
        _assert_crm_served_erp_failed(body, _account(harness), "UPSTREAM_TIMEOUT")


async def test_error_hides_upstream_text(demo_data: DemoData, tmp_path: Path) -> None:
    async with start_harness(demo_data, tmp_path / "data",
                             wrap_erp=_failing(httpx.ConnectError)) as harness:
        body = await _mixed_lookup(harness)
    messages = [message for _, _, message in field_errors(body)]
    assert messages != []
    for message in messages:
        assert "'erp'" in message
        assert UPSTREAM_TEXT not in message
        assert "ConnectError" not in message


async def test_erp_503_hides_status_text(harness: Harness) -> None:
    harness.erp_app.state.control.fault_status = 503
    body = await _mixed_lookup(harness)
    for _, _, message in field_errors(body):
        assert "503" not in message
        assert "Service Unavailable" not in message


async def test_erp_failure_on_list_rows(harness: Harness) -> None:
    harness.erp_app.state.control.fault_status = 503
    response = await harness.query(
        "{ customers(first: 2) { edges { node { id openBalance } } } }")
    body = response.json()
    assert response.status_code == 200
    assert body["data"] == {"customers": {"edges": [
        {"node": {"id": account_id, "openBalance": None}}
        for account_id in harness.customer_ids(2)]}}
    assert field_errors(body) == [
        (["customers", "edges", index, "node", "openBalance"], "UPSTREAM_UNAVAILABLE",
         "System 'erp' is unavailable, so Customer.openBalance could not be read.")
        for index in range(2)]


@pytest.mark.parametrize("failure", ["status_503", "connect_error"])
async def test_crm_down_nulls_root(demo_data: DemoData, tmp_path: Path, failure: str) -> None:
    wrap = _failing(httpx.ConnectError) if failure == "connect_error" else (lambda inner: inner)
    async with start_harness(demo_data, tmp_path / "data", wrap_crm=wrap) as harness:
        harness.crm_app.state.control.fault_status = 503
        response = await harness.query("{ customers(first: 2) { edges { node { name } } } }")
    body = response.json()
    assert response.status_code == 200
    assert body["data"] == {"customers": None}
    assert field_errors(body) == [
        (["customers"], "UPSTREAM_UNAVAILABLE",
         "System 'crm' is unavailable, so Query.customers could not be read.")]


async def test_crm_down_skips_erp(harness: Harness) -> None:
    harness.crm_app.state.control.fault_status = 503
    await harness.query("{ customers(first: 2) { edges { node { name openBalance } } } }")
    assert harness.erp_requests() == []


async def test_erp_recovers_after_fault(harness: Harness) -> None:
    harness.erp_app.state.control.fault_status = 503
    await _mixed_lookup(harness)
    harness.erp_app.state.control.fault_status = None
    body = await _mixed_lookup(harness)
    assert field_errors(body) == []


async def test_partial_audit_outcome(harness: Harness) -> None:
    harness.erp_app.state.control.fault_status = 503
    await _mixed_lookup(harness)
    out = io.StringIO()
    count = await export_records(harness.data_dir / "audit.sqlite3", out, fmt="jsonl",
                                 filters=ExportFilter())
    assert count == 1
    assert '"outcome":"partial"' in out.getvalue()
    assert '"systems":["crm","erp"]' in out.getvalue()


async def test_lookup_malformed_id_null(harness: Harness) -> None:
    response = await harness.query("query($id: ID!) { customer(id: $id) { id } }",
                                   variables={"id": "not-an-account-id"})
    assert response.json() == {"data": {"customer": None}}


async def test_lookup_unknown_id_null(harness: Harness) -> None:
    unknown = "001000000000000AAA"
    assert unknown not in harness.customer_ids(len(harness.data.crm["Account"]))
    response = await harness.query("query($id: ID!) { customer(id: $id) { id } }",
                                   variables={"id": unknown})
    assert response.json() == {"data": {"customer": None}}
