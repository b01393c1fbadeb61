"""SAP's own OData 2.0 client, pyodata, reads the demo SAP server over loopback HTTP.

pyodata builds its model from the fake's ``$metadata`` document and parses
the ``d.results`` envelopes, typed values and ``__next`` links, so these
tests fail when the fake drifts from what an SAP Gateway serves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyodata  # type: ignore[import-untyped]
import pytest
import requests
import uvicorn
from starlette.applications import Starlette

from gateway.demo.data import DemoData
from gateway.demo.sap import SERVICE_PATH, create_sap_app

PAGE_SIZE = 50


@pytest.fixture
def app(demo_data: DemoData) -> Starlette:
    sap = create_sap_app(demo_data, user="COMM_USER", password="s3cret")
    sap.state.fake.page_size = PAGE_SIZE
    return sap


@pytest.fixture
def service(app: Starlette) -> Iterator[Any]:
    """A pyodata client of the fake, served by uvicorn on a loopback port."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    session = requests.Session()
    session.auth = ("COMM_USER", "s3cret")
    try:
        # Without retain_null, pyodata reads null as the type's default value.
        config = pyodata.v2.model.Config(retain_null=True)
        yield pyodata.Client(f"http://127.0.0.1:{port}{SERVICE_PATH}/", session, config=config)
    finally:
        session.close()
        server.should_exit = True
        thread.join(timeout=10)


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.loopback
def test_metadata_lists_entity_sets(service: Any) -> None:
    names = sorted(entity_set.name for entity_set in service.schema.entity_sets)

    assert names == ["A_BillingDocument", "A_Customer", "A_CustomerBankAccount",
                     "A_OutbDeliveryHeader", "A_SalesOrder"]


@pytest.mark.loopback
def test_select_and_filter_read_typed(service: Any, demo_data: DemoData, app: Starlette) -> None:
    partners = demo_data.erp["res.partner"][:2]
    request = service.entity_sets.A_Customer.get_entities()
    request = request.select("Customer,CustomerName,CreditLimitAmount")
    request = request.filter(" or ".join(f"Customer eq {p['id']}" for p in partners))

    customers = request.execute()

    assert [c.Customer for c in customers] == [p["id"] for p in partners]
    assert [c.CustomerName for c in customers] == [p["name"] for p in partners]
    assert [Decimal(c.CreditLimitAmount) for c in customers] == [
        Decimal(f"{p['credit_limit']:.2f}") for p in partners]
    read = [e for e in app.state.control.log if e.entity == "A_Customer"]
    assert [e.fields for e in read] == [["Customer", "CustomerName", "CreditLimitAmount"]]
    assert [e.keys for e in read] == [2]


@pytest.mark.loopback
def test_dates_and_nulls_read_typed(service: Any, demo_data: DemoData) -> None:
    order = next(o for o in demo_data.erp["sale.order"] if o["commitment_date"] is None)
    request = service.entity_sets.A_SalesOrder.get_entities()
    request = request.select("SalesOrder,CreationDateTime,RequestedDeliveryDateTime")
    request = request.filter(f"SalesOrder eq {order['id']}")

    [found] = request.execute()

    assert found.SalesOrder == order["id"]
    assert found.CreationDateTime == _moment(order["date_order"])
    assert found.RequestedDeliveryDateTime is None


@pytest.mark.loopback
def test_next_links_page_through(service: Any, demo_data: DemoData) -> None:
    expected = [o["id"] for o in demo_data.erp["sale.order"]]
    orders = service.entity_sets.A_SalesOrder

    page = orders.get_entities().select("SalesOrder").execute()
    read = [o.SalesOrder for o in page]
    pages = 1
    while page.next_url is not None:
        page = orders.get_entities().next_url(page.next_url).execute()
        read.extend(o.SalesOrder for o in page)
        pages += 1

    assert read == expected
    assert pages == -(-len(expected) // PAGE_SIZE)
