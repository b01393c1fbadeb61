"""SalesforceSource refreshes an expired token once, however many fetches see it expire."""

from __future__ import annotations

import asyncio

import httpx

from gateway.demo.data import DemoData
from gateway.demo.salesforce import create_salesforce_app
from gateway.sources import FetchRequest
from gateway.sources.salesforce import SalesforceSettings, SalesforceSource

SETTINGS = SalesforceSettings(login_url="http://crm.test", client_id="id", client_secret="s")
CONCURRENT_FETCHES = 50


class QueryGate(httpx.AsyncBaseTransport):
    """Hold query requests until ``expected`` of them are waiting, then send them all.

    The in-process demo server responds without yielding to other tasks, so
    without the gate one fetch refreshes the token before the others send
    their query. The gate counts only while ``armed``.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, expected: int) -> None:
        self.inner = inner
        self.expected = expected
        self.armed = False
        self.waiting = 0
        self.open = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        held = request.url.path.endswith(("/query", "/composite/sobjects/Account"))
        if self.armed and held and not self.open.is_set():
            self.waiting += 1
            if self.waiting == self.expected:
                self.open.set()
            await self.open.wait()
        return await self.inner.handle_async_request(request)


async def test_expired_token_refreshed_once(demo_data: DemoData) -> None:
    crm_app = create_salesforce_app(demo_data, client_id="id", client_secret="s")
    gate = QueryGate(httpx.ASGITransport(app=crm_app), CONCURRENT_FETCHES)
    source = SalesforceSource("crm", SETTINGS, httpx.AsyncClient(transport=gate))
    account_id = demo_data.crm["Account"][0]["Id"]
    request = FetchRequest(entity="Account", attributes=("Id",), match="Id", keys=(account_id,))
    await source.fetch(request)
    crm_app.state.expire_tokens()
    crm_app.state.control.clear()
    gate.armed = True

    results = await asyncio.gather(*(source.fetch(request) for _ in range(CONCURRENT_FETCHES)))

    log = crm_app.state.control.log
    token_requests = [entry for entry in log if entry.path.endswith("/oauth2/token")]
    expired_queries = [entry for entry in log if entry.status == 401]
    assert results == [[{"Id": account_id}]] * CONCURRENT_FETCHES
    assert len(expired_queries) == CONCURRENT_FETCHES
    assert len(token_requests) == 1
    await source.aclose()
