"""The direct clients, httptools and aiohttp: request encoding, failures, proxies and cookies.

The raw servers on loopback come from ``test_http_client``. Each request
is compared with what httpx sends for the same arguments, so the dialects
see no difference between the clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from test_http_client import (
    OK_BODY,
    answer,
    answering,
    free_port,
    raw_server,
    read_head,
)

from gateway.demo.data import DemoData
from gateway.demo.launch import serve_in_background, stop_background
from gateway.demo.mappings import SAP_ENTITIES
from gateway.demo.sap import create_sap_app
from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.sources import FetchRequest
from gateway.sources.aiohttp_client import AiohttpClient, AiohttpResponse
from gateway.sources.client import HttpClient, new_client
from gateway.sources.http import send
from gateway.sources.httptools_client import HttptoolsClient, HttptoolsResponse
from gateway.sources.mapping import MappedSource
from gateway.sources.sap import SapSettings, SapSource, basic_authorization

pytestmark = pytest.mark.loopback

# The clients that send without httpx; each test below runs on both.
DIRECT: tuple[HttpClient, ...] = ("httptools", "aiohttp")
RESPONSE_CLASS = {"httptools": HttptoolsResponse, "aiohttp": AiohttpResponse}
CLIENT_CLASS = {"httptools": HttptoolsClient, "aiohttp": AiohttpClient}
direct = pytest.mark.parametrize("http_client", DIRECT)

SOQL = "SELECT Id, Name FROM Account WHERE Name IN ('Rossi & Figli', 'a+b', 'Società')"


async def sent_request(http_client: HttpClient, **kwargs: Any) -> tuple[bytes, bytes]:
    """Send one POST with ``kwargs`` and return the request line and body the server read."""
    received: list[tuple[bytes, bytes]] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        received.append((head, await reader.readexactly(length)))
        writer.write(answer(OK_BODY))
        await writer.drain()
        writer.close()

    async with raw_server(record) as url, new_client(5.0, http_client) as client:
        await send(client, "crm", "query", "POST", url + "/services/query", **kwargs)
    return received[0]


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


ENCODING_CASES: dict[str, dict[str, Any]] = {
    "params": {"params": {"q": SOQL}},
    "json": {"json": {"domain": [["name", "ilike", "Società"]], "limit": 80}},
    "long-integer-json": {"json": {"id": 2**70, "keys": {1: "first"}}},
    "form": {"data": {"grant_type": "client_credentials", "client_secret": "a b&c"}},
    "content": {"content": b"--batch\r\nGET x HTTP/1.1\r\n",
                "headers": {"Content-Type": "multipart/mixed; boundary=batch"}},
    "no-body": {"headers": {"Accept": "application/json"}},
}


@direct
@pytest.mark.parametrize("case", ENCODING_CASES)
async def test_request_encoded_as_httpx(case: str, http_client: HttpClient) -> None:
    kwargs = ENCODING_CASES[case]

    direct_head, direct_body = await sent_request(http_client, **kwargs)
    httpx_head, httpx_body = await sent_request("httpx", **kwargs)

    assert direct_head.split(b"\r\n")[0] == httpx_head.split(b"\r\n")[0]
    assert direct_body == httpx_body
    assert header(direct_head, b"content-type") == header(httpx_head, b"content-type")
    assert header(direct_head, b"content-length") == header(httpx_head, b"content-length")


@direct
async def test_params_request_line(http_client: HttpClient) -> None:
    head, _ = await sent_request(http_client, params={"q": "SELECT Id FROM Account"})

    assert head.split(b"\r\n")[0] == (b"POST /services/query?q=SELECT+Id+FROM+Account "
                                      b"HTTP/1.1")


# yarl decodes the unreserved %41 and the %2F of a query, which RFC 3986 6.2.2
# makes equivalent; the httptools client sends httpx's bytes.
@pytest.mark.parametrize(("http_client", "line"), [
    ("httptools", b"GET /api/a%20b/citt%C3%A0?x=%41|%2F HTTP/1.1"),
    ("aiohttp", b"GET /api/a%20b/citt%C3%A0?x=A%7C/ HTTP/1.1"),
])
async def test_unsafe_url_characters_quoted(http_client: HttpClient, line: bytes) -> None:
    heads: list[bytes] = []

    async with raw_server(answering((b"",), heads)) as url, \
            new_client(5.0, http_client) as client:
        await send(client, "erp", "read", "GET", url + "/api/a b/città?x=%41|%2F")

    assert heads[0].split(b"\r\n")[0] == line


async def request_line(http_client: HttpClient, path: str) -> bytes:
    heads: list[bytes] = []
    async with raw_server(answering((b"",), heads)) as url, new_client(5.0, http_client) as client:
        await send(client, "erp", "read", "GET", url + path)
    return heads[0].split(b"\r\n")[0]


@direct
@pytest.mark.parametrize("path", ["/a%2F%41?q=%27x%27%2C", "/a b/città",
                                  "/api/v1/customers?ids=1,2&fields=name", "", "?q=1"])
async def test_request_line_as_httpx(path: str, http_client: HttpClient) -> None:
    assert await request_line(http_client, path) == await request_line("httpx", path)


async def test_dot_segments_removed_as_httpx() -> None:
    # The aiohttp client sends them as they are.
    assert await request_line("httptools", "/a/./b/../c?x=/./") == b"GET /a/c?x=/./ HTTP/1.1"
    assert await request_line("httpx", "/a/./b/../c?x=/./") == b"GET /a/c?x=/./ HTTP/1.1"


@direct
async def test_bare_percent_quoted(http_client: HttpClient) -> None:
    # httpx 0.29 sends such a "%" unchanged, which is not a valid URL.
    assert await request_line(http_client, "/a%zz/b%2") == b"GET /a%25zz/b%252 HTTP/1.1"


@direct
async def test_redirect_not_followed(http_client: HttpClient) -> None:
    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nRetry-After: 7\r\n"
                     b"Content-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with raw_server(redirect) as url, new_client(5.0, http_client) as client:
        response = await send(client, "crm", "query", "GET", url + "/")

    assert isinstance(response, RESPONSE_CLASS[http_client])
    assert response.status_code == 302
    assert response.headers["location"] == "/elsewhere"
    assert response.headers.get("RETRY-AFTER") == "7"
    assert response.content == b""


@direct
async def test_response_read_whole(http_client: HttpClient) -> None:
    heads: list[bytes] = []
    extra = b"Sforce-Limit-Info: api-usage=18/15000\r\n"

    async with raw_server(answering((extra,), heads)) as url, \
            new_client(5.0, http_client) as client:
        response = await send(client, "crm", "query", "GET", url + "/")

    assert isinstance(response, RESPONSE_CLASS[http_client])
    assert response.status_code == 200
    assert response.headers["sforce-limit-info"] == "api-usage=18/15000"
    assert response.headers["content-type"] == "application/json"
    assert response.content == OK_BODY
    assert response.json() == {"ok": True}


@direct
async def test_refused_connection_message(http_client: HttpClient) -> None:
    async with new_client(5.0, http_client) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await send(client, "crm", "Account query", "GET", f"http://127.0.0.1:{free_port()}/")

    assert str(caught.value) == ("system 'crm' could not be reached for Account query: "
                                 "ConnectError")


@direct
async def test_dropped_mid_headers_unavailable(http_client: HttpClient) -> None:
    async def half_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Ty")
        await writer.drain()
        writer.close()

    async with raw_server(half_head) as url, new_client(5.0, http_client) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await send(client, "erp", "read", "GET", url + "/")

    assert type(caught.value) is UpstreamUnavailable
    assert caught.value.code == "UPSTREAM_UNAVAILABLE"
    assert str(caught.value) == "system 'erp' could not be reached for read: RemoteProtocolError"


@direct
async def test_stalled_body_times_out(http_client: HttpClient) -> None:
    release = asyncio.Event()

    async def stalled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + OK_BODY)
        await writer.drain()
        await release.wait()
        writer.close()

    async with raw_server(stalled) as url, new_client(0.2, http_client) as client:
        try:
            with pytest.raises(UpstreamTimeout) as caught:
                await send(client, "erp", "read", "GET", url + "/")
        finally:
            release.set()

    assert caught.value.code == "UPSTREAM_TIMEOUT"
    assert str(caught.value) == "system 'erp' timed out on read"


@direct
async def test_closed_client_raises(http_client: HttpClient) -> None:
    client = new_client(5.0, http_client)
    await client.aclose()

    with pytest.raises(RuntimeError, match="client has been closed"):
        await client.request("GET", "http://127.0.0.1:1/")


@asynccontextmanager
async def proxy_environment(monkeypatch: pytest.MonkeyPatch, no_proxy: str | None
                            ) -> AsyncIterator[tuple[str, list[bytes]]]:
    """Serve a proxy that returns ``OK_BODY`` itself and set ``HTTP_PROXY`` to it."""
    heads: list[bytes] = []
    async with raw_server(answering((b"",), heads)) as proxy_url:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        if no_proxy is not None:
            monkeypatch.setenv("NO_PROXY", no_proxy)
        yield proxy_url, heads


@direct
async def test_proxied_url_sent_by_httpx(monkeypatch: pytest.MonkeyPatch,
                                         http_client: HttpClient) -> None:
    async with (proxy_environment(monkeypatch, no_proxy=None) as (_, heads),
                new_client(5.0, http_client) as client):
        response = await send(client, "erp", "read", "GET", "http://erp.invalid/api",
                              params={"ids": "1,2"})

    assert isinstance(response, httpx.Response)
    assert heads[0].startswith(b"GET http://erp.invalid/api?ids=1%2C2 HTTP/1.1\r\n")


@direct
async def test_no_proxy_host_sent_directly(monkeypatch: pytest.MonkeyPatch,
                                           http_client: HttpClient) -> None:
    direct_heads: list[bytes] = []

    async with (proxy_environment(monkeypatch, no_proxy="127.0.0.1") as (_, proxy_heads),
                raw_server(answering((b"",), direct_heads)) as url,
                new_client(5.0, http_client) as client):
        response = await send(client, "erp", "read", "GET", url + "/api")

    assert isinstance(response, RESPONSE_CLASS[http_client])
    assert proxy_heads == []
    assert direct_heads[0].startswith(b"GET /api HTTP/1.1\r\n")


@direct
async def test_no_proxy_environment_no_httpx(monkeypatch: pytest.MonkeyPatch,
                                             http_client: HttpClient) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    client = new_client(5.0, http_client)

    assert isinstance(client, HttptoolsClient | AiohttpClient)
    assert type(client) is CLIENT_CLASS[http_client]
    assert client._proxied is None
    await client.aclose()


@direct
async def test_cookies_kept_only_when_asked(http_client: HttpClient) -> None:
    set_cookie = b"Set-Cookie: SAP_SESSIONID=abc; Path=/\r\n"
    kept_heads: list[bytes] = []
    dropped_heads: list[bytes] = []

    # An IP-address host, as on loopback: http.cookiejar under httpx keeps its
    # cookies, and aiohttp's default jar would not.
    async with raw_server(answering((set_cookie, b""), kept_heads)) as url, \
            new_client(5.0, http_client, cookies=True) as client:
        await send(client, "erp", "token", "GET", url + "/")
        await send(client, "erp", "batch", "POST", url + "/batch", content=b"x")
    async with raw_server(answering((set_cookie, b""), dropped_heads)) as url, \
            new_client(5.0, http_client) as client:
        await send(client, "erp", "token", "GET", url + "/")
        await send(client, "erp", "batch", "POST", url + "/batch", content=b"x")

    assert b"cookie:" not in kept_heads[0].lower()
    assert header(kept_heads[1], b"cookie") == b"SAP_SESSIONID=abc"
    assert header(dropped_heads[1], b"cookie") is None


def test_basic_authorization_as_httpx() -> None:
    request = httpx.Request("GET", "http://sap.test/")
    flow = httpx.BasicAuth("COMM_USER", "pässword:1").auth_flow(request)

    expected = next(flow).headers["Authorization"]

    assert basic_authorization("COMM_USER", "pässword:1") == expected


# The httpx client keeps cookies whatever the value of ``cookies``.
@pytest.mark.parametrize(("http_client", "cookies"),
                         [("aiohttp", True), ("aiohttp", False), ("httpx", True),
                          ("httptools", True), ("httptools", False)])
async def test_sap_batch_needs_session_cookie(demo_data: DemoData, http_client: HttpClient,
                                              cookies: bool) -> None:
    app = create_sap_app(demo_data, user="COMM_USER", password="s3cret")
    server, port = await serve_in_background(app)
    settings = SapSettings(base_url=f"http://127.0.0.1:{port}", service="API_FONTE_DEMO",
                           user="COMM_USER", password="s3cret")
    client = new_client(5.0, http_client, cookies=cookies)
    sap = MappedSource(SapSource("erp", settings, client), SAP_ENTITIES)
    # Enough keys that the reads go in one $batch POST.
    request = FetchRequest("res.partner", ("id",), match="id", keys=tuple(range(1, 3001)))
    try:
        if cookies:
            rows = await sap.fetch(request)
        else:
            with pytest.raises(UpstreamUnavailable, match="rejected a freshly fetched CSRF"):
                await sap.fetch(request)
    finally:
        await sap.aclose()
        await stop_background(server)

    batches = [entry.status for entry in app.state.fake.control.log if entry.entity == "$batch"]
    if cookies:
        assert len(rows) > 0
        assert batches == [200]
    else:
        assert batches == [403, 403]
