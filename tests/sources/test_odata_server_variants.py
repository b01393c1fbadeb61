"""OData server behaviour that our fakes do not show but SAP CAP does.

Each case was found by running the dialects against SAP CAP (see
``tests/cap``) and is kept here with ``httpx.MockTransport``, so it stays
tested where Node.js is missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from gateway.demo.odata_fake import encode_batch_response
from gateway.errors import UpstreamRejected
from gateway.sources import FetchRequest
from gateway.sources.dataverse import DataverseSettings, DataverseSource
from gateway.sources.odata_batch import batch_boundary
from gateway.sources.sap import SapSettings, SapSource

Handler = Callable[[httpx.Request], httpx.Response]
DATAVERSE_ROOT = "http://dv.test/api/data/v9.2/"
SAP_ROOT = "http://sap.test/sap/opu/odata/sap/API_TEST/"


def dataverse(handler: Handler, sent: list[httpx.Request]) -> DataverseSource:
    def route(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path == "/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return handler(request)

    settings = DataverseSettings(base_url="http://dv.test", token_url="http://dv.test/token",
                                 client_id="c", client_secret="s", scope="x")
    return DataverseSource("erp", settings, httpx.AsyncClient(
        transport=httpx.MockTransport(route)))


def sap(handler: Handler, sent: list[httpx.Request]) -> SapSource:
    def route(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return handler(request)

    settings = SapSettings(base_url="http://sap.test", service="API_TEST", user="u",
                           password="p")
    return SapSource("erp", settings, httpx.AsyncClient(transport=httpx.MockTransport(route)))


def batch_reply(request: httpx.Request, row: Callable[[int], dict[str, object]],
                status: int = 200) -> httpx.Response:
    """Return a batch response with one part per GET in ``request``, part i holding row(i)."""
    boundary = "batchresponse_1"
    count = request.content.count(b"\r\nGET ")
    parts = [(200, {"Content-Type": "application/json"}, json.dumps(row(i)).encode())
             for i in range(count)]
    return httpx.Response(status, content=encode_batch_response(boundary, parts),
                          headers={"Content-Type": f"multipart/mixed; boundary={boundary}"})


def parts_of(request: httpx.Request) -> int:
    return request.content.count(b"\r\nGET ")


async def test_relative_next_link_resolved() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "$skiptoken" in request.url.params:
            return httpx.Response(200, json={"value": [{"id": 2}]})
        return httpx.Response(200, json={"value": [{"id": 1}],
                                         "@odata.nextLink": "accounts?$skiptoken=1"})

    sent: list[httpx.Request] = []
    source = dataverse(handler, sent)
    rows = await source.fetch(FetchRequest("accounts", ("id",)))
    await source.aclose()

    assert rows == [{"id": 1}, {"id": 2}]
    assert str(sent[-1].url) == DATAVERSE_ROOT + "accounts?$skiptoken=1"


async def test_dataverse_batch_headers() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return batch_reply(request, lambda i: {"value": [{"id": i}]})

    sent: list[httpx.Request] = []
    source = dataverse(handler, sent)
    keys = tuple(range(1, 3001))  # more than one GET of at most 32,000 bytes
    rows = await source.fetch(FetchRequest("accounts", ("id",), match="id", keys=keys))
    await source.aclose()

    post = sent[-1]
    assert parts_of(post) > 1
    assert rows == [{"id": i} for i in range(parts_of(post))]
    assert post.url.path == "/api/data/v9.2/$batch"
    assert post.headers["Accept"] == "multipart/mixed"
    content_type = post.headers["Content-Type"]
    assert '"' not in content_type
    assert batch_boundary(content_type) is not None


async def test_sap_batch_without_csrf_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"d": {"EntitySets": ["A_Customer"]}})
        return batch_reply(request, lambda i: {"d": {"results": [{"Customer": i}]}},
                           status=202)

    sent: list[httpx.Request] = []
    source = sap(handler, sent)
    keys = tuple(range(1, 701))  # more than one GET of at most 8,000 bytes
    rows = await source.fetch(FetchRequest("A_Customer", ("Customer",), match="Customer",
                                           keys=keys))
    await source.aclose()

    fetch, post = sent
    assert parts_of(post) > 1
    assert rows == [{"Customer": i} for i in range(parts_of(post))]
    assert (fetch.method, str(fetch.url), fetch.headers["x-csrf-token"]) == (
        "GET", SAP_ROOT, "fetch")
    assert (post.method, str(post.url)) == ("POST", SAP_ROOT + "$batch")
    assert "x-csrf-token" not in post.headers


async def test_batch_over_body_limit_is_rejected() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"d": {}}, headers={"x-csrf-token": "abc"})
        return httpx.Response(413, json={"error": {"code": "413", "message": "too large"}})

    source = sap(handler, [])
    with pytest.raises(UpstreamRejected) as raised:
        await source.fetch(FetchRequest("A_Customer", ("Customer",), match="Customer",
                                        keys=tuple(range(1, 701))))
    await source.aclose()

    assert str(raised.value) == (
        "system 'erp' rejected A_Customer $batch of 3 reads and 700 keys as too large "
        "(HTTP 413); raise the system's request body limit")
