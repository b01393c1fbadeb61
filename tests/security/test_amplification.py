"""Amplification and denial of service: limits apply before any upstream read.

A document deeper than ``max_depth``, wider than ``max_fields`` (fragments
counted where they are spread, aliases counted as fields), with more root
fields than ``max_root_fields``, or with an estimated cost above
``max_cost`` gets HTTP 400 and reads nothing. Repeated directives and
fragment cycles fail validation, a JSON array body (batched operations) is
rejected, long strings are bounded by ``max_search_length`` and the body
size, and the upstream reads of one request share ``request_timeout``.

Cost estimates are exact numbers for fixed documents: each object counts 1,
each upstream read 10, a list multiplies its parent's objects by its
``first`` or by 50 when it has none (``gateway.limits``).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from conftest import Harness, field_errors, start_harness
from probe import Probe, send

from gateway.demo.data import DemoData
from gateway.limits import OperationLimits

Caplog = pytest.LogCaptureFixture
README_QUERY = """query CustomerList {
  customers(first: 3) {
    edges {
      node {
        id name vatNumber pec city openBalance creditLimit iban
        contacts { firstName lastName email }
        orders(first: 2) {
          number status amountTotal
          shipments { promisedDate status carrier }
        }
        invoices(first: 2) { number dueDate amountResidual paymentStatus }
      }
    }
    pageInfo { hasNextPage endCursor }
  }
}"""
BENCH_QUERY = """query CustomerCost($first: Int!) { customers(first: $first) {
  edges { node { id name vatNumber street city postalCode province
                 creditLimit openBalance iban } }
  pageInfo { hasNextPage endCursor } } }"""
ORDER_LIST = "{ customers(first: 500) { edges { node { id orders { number status } } } } }"
SHIPMENT_LIST = ("{ customers(first: 500) { edges { node { id "
                 "orders { number shipments { status } } } } } }")


def _rejected(probe: Probe, code: str = "BAD_REQUEST") -> None:
    """Check that the request was rejected before any read and left no audit record."""
    assert probe.status == 400
    assert probe.codes() == [code]
    assert probe.upstream == []
    assert probe.audit == []
    access = [r.getMessage() for r in probe.logs if r.name == "gateway.access"]
    assert len(access) == 1
    assert f"request {probe.response.headers['X-Request-ID']} " in access[0]
    assert " status=400 " in access[0]


def _nested(levels: int) -> str:
    inner = "number"
    for _ in range(levels):
        inner = f"number customer {{ orders {{ {inner} }} }}"
    return f"{{ customers(first: 1) {{ edges {{ node {{ orders {{ {inner} }} }} }} }} }}"


# --- shape limits ---------------------------------------------------------------------------

async def test_deep_document_rejected(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog, _nested(6))

    assert "nests" in probe.body["errors"][0]["message"]
    _rejected(probe)


async def test_deep_fragment_spreads_rejected(harness: Harness, caplog: Caplog) -> None:
    # customers, edges, node and orders are 4 levels, each fragment F0-F3 adds
    # two and F4 one: 4 + 2 * 4 + 1 = 13.
    fragments = "".join(f"fragment F{i} on Order {{ customer {{ orders {{ ...F{i + 1} }} }} }} "
                        for i in range(4))
    document = ("{ customers(first: 1) { edges { node { orders { ...F0 } } } } } "
                + fragments + "fragment F4 on Order { number }")
    probe = await send(harness, caplog, document)

    assert probe.body["errors"][0]["message"] == (
        "The document is too large: the operation nests 13 levels deep; the limit is 10.")
    _rejected(probe)


async def test_many_root_aliases_rejected(harness: Harness, caplog: Caplog) -> None:
    document = "{ " + " ".join(f"a{i}: customers(first: 1) {{ edges {{ node {{ id }} }} }}"
                               for i in range(11)) + " }"
    probe = await send(harness, caplog, document)

    assert probe.body["errors"][0]["message"] == (
        "The document is too large: the operation has 11 root fields; the limit is 10. "
        "Split it into several requests.")
    _rejected(probe)


async def test_fragment_breadth_rejected(harness: Harness, caplog: Caplog) -> None:
    # One fragment of 100 fields, spread 11 times: 3 wrapper fields + 1,100.
    wide = " ".join(f"f{i}: id" for i in range(100))
    spreads = " ".join("...Wide" for _ in range(11))
    document = (f"{{ customers(first: 1) {{ edges {{ node {{ {spreads} }} }} }} }} "
                f"fragment Wide on Customer {{ {wide} }}")
    probe = await send(harness, caplog, document)

    assert probe.body["errors"][0]["message"] == (
        "The document is too large: the operation selects 1103 fields; the limit is 1000.")
    _rejected(probe)


async def test_alias_breadth_rejected(harness: Harness, caplog: Caplog) -> None:
    aliases = " ".join(f"n{i}: name" for i in range(1000))
    probe = await send(harness, caplog,
                       f"{{ customers(first: 1) {{ edges {{ node {{ {aliases} }} }} }} }}")

    assert probe.body["errors"][0]["message"] == (
        "The document is too large: the operation selects 1003 fields; the limit is 1000.")
    _rejected(probe)


async def test_repeated_directive_rejected(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog, "query($id: ID!) { customer(id: $id) "
                       "{ name @include(if: true) @include(if: true) } }",
                       variables={"id": harness.customer_ids(1)[0]})

    assert probe.body["errors"][0]["message"] == (
        "The directive '@include' can only be used once at this location.")
    _rejected(probe)


async def test_fragment_cycle_rejected(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog,
                       "query($id: ID!) { customer(id: $id) { ...A } } "
                       "fragment A on Customer { name ...B } fragment B on Customer { ...A }",
                       variables={"id": harness.customer_ids(1)[0]})

    assert probe.body["errors"][0]["message"] == "Cannot spread fragment 'A' within itself via 'B'."
    _rejected(probe)


async def test_batched_operations_rejected(harness: Harness, caplog: Caplog) -> None:
    batch = [{"query": "{ customers(first: 500) { edges { node { id } } } }"}] * 50
    probe = await send(harness, caplog, payload=batch)

    assert probe.body["errors"][0]["message"] == (
        "request body must be a JSON object with a 'query' member")
    _rejected(probe)


# --- long strings and lists -----------------------------------------------------------------

async def test_long_search_rejected(harness: Harness, caplog: Caplog) -> None:
    probe = await send(
        harness, caplog,
        "query($s: String) { customers(first: 2, search: $s) { edges { node { id } } } }",
        variables={"s": "x" * 101})

    assert field_errors(probe.body) == [
        (["customers"], "BAD_REQUEST", "search is 101 characters long; the limit is 100.")]
    assert probe.upstream == []


async def test_huge_list_variable_rejected(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog,
                       "query($f: Int!) { customers(first: $f) { edges { node { id } } } }",
                       variables={"f": [0] * 100_000})

    assert probe.body["errors"][0]["message"] == (
        "Variable '$f' has invalid value: Int cannot represent non-integer value: "
        "[0, 0, 0, 0, 0, ..., 0, 0, 0, 0]")
    _rejected(probe)


async def test_negative_nested_first(harness: Harness, caplog: Caplog) -> None:
    account_id = harness.customer_ids(1)[0]
    probe = await send(
        harness, caplog,
        "query($id: ID!) { customer(id: $id) { id orders(first: -1) { number } } }",
        variables={"id": account_id})

    assert probe.body["data"] == {"customer": {"id": account_id, "orders": None}}
    assert field_errors(probe.body) == [(["customer", "orders"], "BAD_REQUEST",
                                         "first must be between 0 and 500; got -1.")]
    assert probe.erp == []


# --- cost estimate --------------------------------------------------------------------------

@pytest.mark.parametrize(("role", "document", "variables", "cost"), [
    # 10 + 3 customers + 2 ERP links (20) + contacts 10 + 150
    # + orders 10 + 6 + shipments 10 + 300 + invoices 10 + 6; sales may not read creditLimit.
    ("sales", README_QUERY, None, 535),
    # finance may not read pec, contacts or shipments: 10 + 3 + 20 + 10 + 6 + 10 + 6.
    ("finance", README_QUERY, None, 65),
    ("finance", BENCH_QUERY, {"first": 100}, 130),
    ("finance", BENCH_QUERY, {"first": 1}, 31),
    ("sales", ORDER_LIST, None, 25_520),
    # 10 + 500 + orders 10 + 5,000 + shipments 10 + 10,000.
    ("sales", SHIPMENT_LIST.replace("orders {", "orders(first: 10) {")
     .replace("shipments {", "shipments(first: 2) {"), None, 15_530),
    ("dpo", ORDER_LIST, None, 0),
])
async def test_cost_estimate_exact(harness: Harness, caplog: Caplog, role: str, document: str,
                                   variables: dict[str, int] | None, cost: int) -> None:
    probe = await send(harness, caplog, document, role=role, variables=variables)

    assert probe.status == 200
    assert probe.response.headers["Fonte-Cost"] == str(cost)


async def test_cost_over_limit_rejected(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog, SHIPMENT_LIST)

    assert probe.body == {"errors": [{
        "message": "The operation's estimated cost is 1275530; the limit is 50000. Pass a "
                   "smaller first to its lists, select fewer relations, or split it into "
                   "several requests.",
        "extensions": {"code": "COST_LIMIT_EXCEEDED", "cost": 1_275_530, "maxCost": 50_000}}]}
    assert probe.response.headers["Fonte-Cost"] == "1275530"
    _rejected(probe, "COST_LIMIT_EXCEEDED")


async def test_cost_limit_configurable(demo_data: DemoData, tmp_path: Path,
                                       caplog: Caplog) -> None:
    limits = OperationLimits(max_cost=100)
    async with start_harness(demo_data, tmp_path / "data",
                             overrides={"operation_limits": limits}) as harness:
        over = await send(harness, caplog, README_QUERY, role="sales")
        under = await send(harness, caplog, BENCH_QUERY, role="finance",
                           variables={"first": 50})

    assert over.body["errors"][0]["extensions"] == {
        "code": "COST_LIMIT_EXCEEDED", "cost": 535, "maxCost": 100}
    _rejected(over, "COST_LIMIT_EXCEEDED")
    assert under.status == 200
    assert under.response.headers["Fonte-Cost"] == "80"


# --- time budget ----------------------------------------------------------------------------

class CancelCounting(httpx.AsyncBaseTransport):
    """Passes requests through and counts those cancelled before their response."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.started = 0
        self.cancelled = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.started += 1
        try:
            return await self.inner.handle_async_request(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def test_time_budget_nulls_slow_system(demo_data: DemoData, tmp_path: Path,
                                             caplog: Caplog) -> None:
    wrapped: list[CancelCounting] = []

    def wrap(inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        wrapped.append(CancelCounting(inner))
        return wrapped[0]

    limits = OperationLimits(request_timeout=0.2)
    async with start_harness(demo_data, tmp_path / "data", wrap_erp=wrap,
                             overrides={"operation_limits": limits}) as harness:
        account_id = harness.customer_ids(1)[0]
        name = next(a["Name"] for a in demo_data.crm["Account"] if a["Id"] == account_id)
        harness.erp_app.state.control.fault_delay = 3600.0
        tasks_before = asyncio.all_tasks()
        probe = await send(harness, caplog,
                           "query($id: ID!) { customer(id: $id) "
                           "{ name creditLimit orders(first: 1) { number } } }",
                           role="finance", variables={"id": account_id})
        left_running = [t for t in asyncio.all_tasks() - tasks_before if not t.done()]

    message = ("System 'erp' did not respond within the request's time budget, so {} could "
               "not be read.")
    assert probe.body["data"] == {"customer": {"name": name, "creditLimit": None,
                                               "orders": None}}
    assert field_errors(probe.body) == [
        (["customer", "creditLimit"], "REQUEST_TIMEOUT", message.format("Customer.creditLimit")),
        (["customer", "orders"], "REQUEST_TIMEOUT", message.format("Customer.orders")),
    ]
    assert [entry.entity for entry in probe.crm] == ["Account"]
    assert left_running == []
    # Every ERP call that started (the login, or the reads after it) was cancelled.
    assert wrapped[0].started > 0
    assert wrapped[0].cancelled == wrapped[0].started
    assert probe.audit[0]["outcome"] == "partial"
    assert probe.audit[0]["systems"] == ["crm", "erp"]
    assert len(probe.audit[0]["subjects"]) == 1
    assert sorted(r.getMessage() for r in probe.logs
                  if r.name == "gateway.upstream" and r.levelno == logging.WARNING) == [
        "system 'erp': read of res.partner (1 keys) cancelled because the request's time "
        "budget of 0.2 s ran out",
        "system 'erp': read of sale.order (1 keys) cancelled because the request's time "
        "budget of 0.2 s ran out",
    ]
