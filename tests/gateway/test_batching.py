"""Upstream calls grow with the nesting depth of a query, not with its number of rows.

At each nesting level the gateway merges the reads of one entity into one
request, whatever the number of parent rows, and sends the requests of
different systems concurrently.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import Harness, field_errors, start_harness

from gateway.demo.data import DemoData
from gateway.limits import OperationLimits

WIDE_QUERY = """query($n: Int!) { customers(first: $n) { edges { node {
  name pec creditLimit openBalance iban
  contacts { lastName }
  orders { number shipments { status } }
  invoices { number }
} } } }"""

# One call per entity and nesting level. Sales reads the iban masked, so one
# res.partner.bank call is expected; it may not read creditLimit, but
# openBalance comes from res.partner too. Finance may not read pec, contacts
# or shipments, so no Contact and no stock.picking call is expected.
EXPECTED_CALLS = {
    "sales": ({"Account": 1, "Contact": 1},
              {"res.partner": 1, "res.partner.bank": 1, "sale.order": 1, "account.move": 1,
               "stock.picking": 1}),
    "finance": ({"Account": 1},
                {"res.partner": 1, "res.partner.bank": 1, "sale.order": 1, "account.move": 1}),
}


@pytest.fixture
async def harness(demo_data: DemoData, tmp_path: Path) -> AsyncIterator[Harness]:
    """Return the shared harness with a higher cost limit.

    WIDE_QUERY for 200 customers has nested lists without ``first``, which
    the cost estimate counts as 50 rows per parent (about 530,000 in all).
    That is above the default limit, and these tests are about batching.
    """
    limits = OperationLimits(max_cost=1_000_000)
    async with start_harness(demo_data, tmp_path / "data",
                             overrides={"operation_limits": limits}) as started:
        yield started


@pytest.mark.parametrize(("role", "customers"), [
    ("sales", 1),
    ("sales", 200),
    ("finance", 1),
    ("finance", 200),
])
async def test_calls_per_entity_and_level(harness: Harness, role: str, customers: int) -> None:
    response = await harness.query(WIDE_QUERY, role=role, variables={"n": customers})
    edges = response.json()["data"]["customers"]["edges"]
    crm_expected, erp_expected = EXPECTED_CALLS[role]
    assert len(edges) == customers
    assert Counter(entry.entity for entry in harness.crm_requests()) == crm_expected
    assert Counter(entry.entity for entry in harness.erp_requests()) == erp_expected


@pytest.mark.parametrize("customers", [1, 200])
async def test_first_level_keys_match_rows(harness: Harness, customers: int) -> None:
    await harness.query(WIDE_QUERY, variables={"n": customers})
    keys = {entry.entity: entry.keys for entry in harness.crm_requests()}
    keys.update({entry.entity: entry.keys for entry in harness.erp_requests()
                 if entry.entity in ("res.partner", "sale.order", "account.move")})
    assert keys == {"Account": 0, "Contact": customers, "res.partner": customers,
                    "sale.order": customers, "account.move": customers}


@pytest.mark.parametrize("customers", [1, 200])
async def test_same_entity_two_levels(harness: Harness, customers: int) -> None:
    query = """query($n: Int!) { customers(first: $n) { edges { node {
                 name orders { number customer { name } } } } } }"""
    response = await harness.query(query, variables={"n": customers})
    assert field_errors(response.json()) == []
    assert [entry.entity for entry in harness.crm_requests()] == ["Account", "Account"]
    assert [entry.entity for entry in harness.erp_requests()] == ["sale.order"]


class MeetingTransport(httpx.AsyncBaseTransport):
    """Holds matching requests until a request to the other system has started.

    Each side sets its own event when a matching request arrives and waits
    for the other side's event before forwarding. If the gateway sent the
    CRM and ERP requests one after the other, the first would wait for a
    request that never starts. That wait ends after 5 seconds with a
    connection error, so the test fails instead of hanging.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, path_part: str,
                 arrived: asyncio.Event, other: asyncio.Event) -> None:
        self._inner = inner
        self._path_part = path_part
        self._arrived = arrived
        self._other = other

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._path_part in str(request.url):
            self._arrived.set()
            try:
                await asyncio.wait_for(self._other.wait(), timeout=5)
            except TimeoutError as exc:
                raise httpx.ConnectError("the other system's request never started",
                                         request=request) from exc
        return await self._inner.handle_async_request(request)


async def test_crm_and_erp_overlap(demo_data: DemoData, tmp_path: Path) -> None:
    crm_arrived, erp_arrived = asyncio.Event(), asyncio.Event()
    query = """{ customers(first: 3) { edges { node {
                 contacts { lastName } orders(first: 1) { number } } } } }"""

    async with start_harness(
        demo_data, tmp_path / "data",
        # The Contact query and the ERP calls belong to the same nesting level.
        wrap_crm=lambda inner: MeetingTransport(inner, "FROM+Contact", crm_arrived, erp_arrived),
        wrap_erp=lambda inner: MeetingTransport(inner, "/jsonrpc", erp_arrived, crm_arrived),
    ) as harness:
        response = await harness.query(query)

    assert field_errors(response.json()) == []
    assert crm_arrived.is_set()
    assert erp_arrived.is_set()


async def test_first_limits_next_level(harness: Harness) -> None:
    query = ("{ customers(first: 20) { edges { node { id "
             "orders(first: 1) { number shipments { reference } } } } } }")
    response = await harness.query(query)
    body = response.json()
    orders = [order for edge in body["data"]["customers"]["edges"]
              for order in edge["node"]["orders"]]

    pickings = [e for e in harness.erp_requests() if e.entity == "stock.picking"]
    assert "errors" not in body
    assert len(pickings) == 1
    assert pickings[0].keys == len(orders)
