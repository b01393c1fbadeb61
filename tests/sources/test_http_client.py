"""The sources' two HTTP clients, aiohttp and httpx, against raw servers on loopback.

Each server is an asyncio stream server that writes fixed bytes, so a test
can break HTTP in ways a real web framework never does.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import httpx
import pytest

from gateway.errors import ConfigError, UpstreamTimeout, UpstreamUnavailable
from gateway.sources.aiohttp_client import httpx_error_class
from gateway.sources.client import (
    HTTP_CLIENTS,
    HttpClient,
    check_http_client,
    new_client,
)
from gateway.sources.http import send

pytestmark = pytest.mark.loopback

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK_BODY = b'{"ok": true}'


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """Serve ``handler`` on a free loopback port and yield the base URL."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    """Read one request's head, and its body when the head gives a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            await reader.readexactly(int(value))
    return head


def answer(body: bytes, extra_headers: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra_headers
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def answering(headers: tuple[bytes, ...], heads: list[bytes]) -> Handler:
    """Return a handler that responds to one request per entry of ``headers`` on one connection.

    Each response is ``OK_BODY`` with that entry's extra header lines, and
    each request head is appended to ``heads``.
    """
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for extra in headers:
            heads.append(await read_head(reader))
            writer.write(answer(OK_BODY, extra))
            await writer.drain()
        writer.close()

    return handler


async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.close()


async def truncated_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + OK_BODY)
    await writer.drain()
    writer.close()


async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    await writer.drain()
    writer.close()


def free_port() -> int:
    """Return a loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("http_client", HTTP_CLIENTS)
@pytest.mark.parametrize("handler", [close_at_once, truncated_body, not_http],
                         ids=lambda handler: handler.__name__)
async def test_broken_response_unavailable(handler: Handler, http_client: HttpClient) -> None:
    async with raw_server(handler) as url, new_client(5.0, http_client) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await send(client, "erp", "res.partner read", "GET", url + "/")

    assert type(caught.value) is UpstreamUnavailable
    assert caught.value.code == "UPSTREAM_UNAVAILABLE"


@pytest.mark.parametrize("http_client", HTTP_CLIENTS)
async def test_refused_connection_unavailable(http_client: HttpClient) -> None:
    async with new_client(5.0, http_client) as client:
        with pytest.raises(UpstreamUnavailable, match="ConnectError") as caught:
            await send(client, "crm", "Account query", "GET", f"http://127.0.0.1:{free_port()}/")

    assert type(caught.value) is UpstreamUnavailable


@pytest.mark.parametrize("http_client", HTTP_CLIENTS)
async def test_silent_server_times_out(http_client: HttpClient) -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await release.wait()
        writer.close()

    async with raw_server(silent) as url, new_client(0.2, http_client) as client:
        try:
            with pytest.raises(UpstreamTimeout, match="system 'erp' timed out on read"):
                await send(client, "erp", "read", "GET", url + "/")
        finally:
            release.set()


async def test_keep_alive_and_cookies_httpx() -> None:
    heads: list[bytes] = []
    keep_alive = answering((b"Set-Cookie: session=abc; Path=/\r\n", b"", b""), heads)

    async with raw_server(keep_alive) as url, new_client(5.0, "httpx") as client:
        assert isinstance(client, httpx.AsyncClient)
        url = url.replace("127.0.0.1", "localhost")
        first = await send(client, "crm", "login", "POST", url + "/login", json={"user": "x"})
        second = await send(client, "crm", "query", "GET", url + "/query")
        client.cookies.clear()
        third = await send(client, "crm", "query", "GET", url + "/query")

    assert [first.json(), second.json(), third.json()] == [{"ok": True}] * 3
    assert len(heads) == 3  # all requests on one connection
    assert heads[0].startswith(b"POST /login HTTP/1.1\r\n")
    assert b"cookie:" not in heads[0].lower()
    assert heads[1].lower().count(b"cookie: session=abc") == 1
    assert b"cookie:" not in heads[2].lower()


@pytest.mark.parametrize("http_client", HTTP_CLIENTS)
async def test_gzip_body_decoded(http_client: HttpClient) -> None:
    import gzip

    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(answer(gzip.compress(OK_BODY), b"Content-Encoding: gzip\r\n"))
        await writer.drain()
        writer.close()

    async with raw_server(gzipped) as url, new_client(5.0, http_client) as client:
        response = await send(client, "erp", "read", "GET", url + "/")

    assert response.content == OK_BODY


def aiohttp_error_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    pending: list[type[BaseException]] = [aiohttp.ClientError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda cls: cls.__name__)


@pytest.mark.parametrize("aiohttp_class", aiohttp_error_classes(), ids=lambda c: c.__name__)
def test_aiohttp_error_class_mapped(aiohttp_class: type[BaseException]) -> None:
    mapped = httpx_error_class(aiohttp_class)

    assert issubclass(mapped, httpx.TransportError)
    assert issubclass(mapped, httpx.TimeoutException) is issubclass(aiohttp_class,
                                                                   TimeoutError)


def test_aiohttp_error_classes_expected() -> None:
    assert httpx_error_class(aiohttp.ServerDisconnectedError) is httpx.RemoteProtocolError
    assert httpx_error_class(aiohttp.ConnectionTimeoutError) is httpx.ConnectTimeout
    assert httpx_error_class(aiohttp.SocketTimeoutError) is httpx.ReadTimeout
    assert httpx_error_class(aiohttp.ClientConnectorError) is httpx.ConnectError
    assert httpx_error_class(aiohttp.ClientProxyConnectionError) is httpx.ProxyError
    assert httpx_error_class(aiohttp.ClientPayloadError) is httpx.ReadError


def test_http_client_setting_checked() -> None:
    assert check_http_client("systems.crm", "httpx") == "httpx"
    assert check_http_client("systems.crm", "aiohttp") == "aiohttp"
    assert check_http_client("systems.crm", "httptools") == "httptools"
    with pytest.raises(ConfigError) as caught:
        check_http_client("systems.crm", "requests")

    assert str(caught.value) == ("[systems.crm] http_client = 'requests' is not supported; "
                                 "use 'httptools', 'aiohttp' or 'httpx'")


@pytest.mark.parametrize("http_client", HTTP_CLIENTS)
async def test_environment_proxy_used(http_client: HttpClient,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    heads: list[bytes] = []
    proxy = answering((b"",), heads)

    async with raw_server(proxy) as proxy_url:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        # The proxy returns the response itself, so no request leaves for the .invalid host.
        async with new_client(5.0, http_client) as client:
            response = await send(client, "erp", "read", "GET", "http://erp.invalid/api")

    assert response.json() == {"ok": True}
    assert heads[0].startswith(b"GET http://erp.invalid/api HTTP/1.1\r\n")


async def test_reassigned_cookies_sent_httpx() -> None:
    heads: list[bytes] = []
    record = answering((b"", b"Set-Cookie: later=2; Path=/\r\n", b""), heads)

    async with raw_server(record) as url, new_client(5.0, "httpx") as client:
        assert isinstance(client, httpx.AsyncClient)
        url = url.replace("127.0.0.1", "localhost")
        client.cookies = {"first": "1"}
        for _ in range(3):
            await send(client, "crm", "query", "GET", url + "/query")

    assert b"cookie: first=1\r\n" in heads[0].lower()
    assert b"cookie: first=1\r\n" in heads[1].lower()
    assert b"later=2" in heads[2]
    assert b"first=1" in heads[2]
