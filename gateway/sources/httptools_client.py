"""An HTTP/1.1 upstream client on asyncio's transports and the httptools parser.

Profiles of the gateway under the peer benchmark's W1 load put about a
quarter of the event loop's CPU in aiohttp's request path. Per request,
aiohttp builds a request and a response object, trace hooks, timers, a
payload writer and a stream reader. A gateway's upstream requests are all
alike: a GET or a POST with a small body to one of a few origins over
kept-alive connections, read whole. ``HttptoolsClient`` sends exactly that
and nothing else. Each pooled connection is an ``asyncio.Protocol`` that
writes the request as one buffer and feeds what it receives to
``httptools.HttpResponseParser`` (the llhttp parser that uvicorn also
uses), which decodes chunked bodies.

It keeps the contract of the other clients (``gateway.sources.client``):

- the keyword arguments that the dialects pass to
  ``httpx.AsyncClient.request``, encoded as httpx 0.29 does (see
  ``gateway.sources.aiohttp_client``);
- a URL made only of the characters RFC 3986 allows is sent as it is. Any
  other goes through ``httpx.URL``, so the request target is httpx's bytes,
  except that a "%" that starts no percent-encoded byte is sent as "%25";
- no redirect is followed; gzip and deflate bodies are decoded;
- each phase has the source's timeout: the wait for a pooled connection and
  the connect together, then each wait for the next bytes of the response;
- at most 100 connections, an idle one closed after 5 seconds;
- TLS with the SSL context of ``httpx.create_ssl_context``, so
  ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` still apply;
- failures raise httpx's exception classes (``httpx.ConnectError``,
  ``httpx.ReadTimeout``, ``httpx.RemoteProtocolError`` and so on), which
  ``gateway.sources.http.send`` maps to the gateway's errors;
- credentials in a URL are sent as Basic authorization, the method is sent
  in capitals, and the trailers of a chunked body are ignored.

A method or a header name that is not an HTTP token, or a header value with
a line break, is rejected before anything is sent. llhttp is strict: it
rejects responses with bare LF line ends, folded header lines, or both
Content-Length and Transfer-Encoding, which httpx accepts. aiohttp, the
default client before this one, uses llhttp too.

It keeps no cookie. ``new_client`` gives a source that needs cookies (SAP's
CSRF session) the aiohttp client instead, and sends a request that a proxy
of the environment applies to through the httpx client it passes in.

A kept-alive connection can be closed by the server at the moment a request
is written on it. When a reused connection closes before any byte of the
response arrived, the request is sent once more on a new connection. Every
request of the dialects is a read (a GET, or a POST that carries a query),
so sending it twice changes nothing upstream.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json as jsonlib
import re
import ssl
import zlib
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import httptools
import httpx

from gateway.sources.aiohttp_client import (
    _BARE_PERCENT,
    KEEPALIVE_EXPIRY_SECONDS,
    MAX_CONNECTIONS,
    ProxyRoutes,
    _is_encoded,
    _json_bytes,
)

_DEFAULT_PORTS = {"http": 80, "https": 443}
# A method or a header name is a token (RFC 9110 5.6.2).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Header names that the client writes itself; a dialect's value for one of
# them replaces the client's.
_OWN_HEADERS = ("host", "accept", "accept-encoding", "content-length")


class Headers(dict[str, str]):
    """Response headers by lower-case name; the first value of a repeated header wins.

    Lookups ignore case, as ``httpx.Headers`` and aiohttp's ``CIMultiDictProxy`` do.
    """

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class HttptoolsResponse:
    """A complete upstream response: status, headers and the decoded body."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Headers, content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    def json(self) -> Any:
        """Return the decoded JSON body, as ``httpx.Response.json`` does."""
        return jsonlib.loads(self.content)


class _Origin:
    """Scheme, host, port and ``Host`` header of one origin, parsed once."""

    __slots__ = ("authorization", "host", "host_header", "port", "scheme", "server_hostname")

    def __init__(self, url: httpx.URL) -> None:
        if url.scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{url.scheme}://'.")
        if not url.host:
            raise httpx.UnsupportedProtocol("Request URL is missing a host.")
        self.scheme = url.scheme
        self.host = url.host
        self.port = url.port or _DEFAULT_PORTS[url.scheme]
        # The Host header as httpx writes it: the port only when it is not the default.
        self.host_header = url.netloc.decode("ascii").rpartition("@")[2]
        self.server_hostname = url.host if url.scheme == "https" else None
        # Credentials in the URL become Basic authorization, as httpx sends them.
        self.authorization = None
        if url.userinfo:
            credentials = f"{url.username}:{url.password}".encode()
            self.authorization = "Basic " + base64.b64encode(credentials).decode("ascii")


class _Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection, which carries one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[HttptoolsResponse] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._read_timeout = 0.0
        self._last_read = 0.0
        self._head_request = False
        self._start_response()
        self.closed = False
        self.reusable = False
        # Whether an earlier request went over this connection.
        self.used_before = False
        self.idle_since = 0.0
        # Whether the pool still counts this connection among its open ones.
        self.counted = True

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes that belong to no request: the connection cannot be trusted any more.
            self.close()
            return
        self._received = True
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # A 101 response raises HttpParserUpgrade: no dialect requests a protocol switch.
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._until_close and self._headers_done and exc is None:
            # A clean close ends a body without Content-Length; a reset cuts it short.
            self._finish()
            return
        if not self._received:
            self._fail(_NotAnswered("Server disconnected without sending a response."))
        elif exc is not None:
            self._fail(httpx.ReadError(f"The connection failed while reading the response: "
                                       f"{type(exc).__name__}."))
        else:
            self._fail(httpx.RemoteProtocolError(
                "Server disconnected before the end of the response."))

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self._complete:
            # A second response to one request: the connection cannot be trusted any more.
            # Raising stops the parser, so nothing of it reaches the first response.
            self.close()
            raise httpx.RemoteProtocolError("a response arrived that no request was sent for")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a trailer of a chunked body, which httpx ignores too
        key = name.decode("latin-1").lower()
        if key not in self._headers:
            dict.__setitem__(self._headers, key, value.decode("latin-1"))
        elif key == "content-encoding":
            # Codings may come in several header lines; httpx joins them.
            dict.__setitem__(self._headers, key, f"{self._headers[key]}, "
                                                 f"{value.decode('latin-1')}")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._status = self._parser.get_status_code()
        headers = self._headers
        self._until_close = ("content-length" not in headers
                             and "chunked" not in headers.get("transfer-encoding", "").lower()
                             and self._status not in (204, 304) and self._status >= 200)
        if self._head_request and self._status >= 200:
            # A HEAD response has no body, whatever its Content-Length header gives; the
            # connection is not kept, because the parser would wait for that body.
            self._until_close = False
            self._finish()
            self.close()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status < 200:
            # 1xx informational responses precede the real one.
            self._start_response()
            self._received = True
            return
        if not self._until_close and not self.closed:
            self.reusable = self._parser.should_keep_alive()
        self._finish()

    # -- the request

    async def send(self, data: bytes, head: bool, read_timeout: float) -> HttptoolsResponse:
        """Write one request and wait for its whole response."""
        assert self._transport is not None
        self.reusable = False
        self._waiter = self._loop.create_future()
        self._start_response()
        self._head_request = head
        self._read_timeout = read_timeout
        self._last_read = self._loop.time()
        self._timer = self._loop.call_at(self._last_read + read_timeout, self._check_timeout)
        self._transport.write(data)
        try:
            return await self._waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._waiter = None
            self.used_before = True
            if not self.reusable:
                self.close()

    def _start_response(self) -> None:
        """Clear what the parser callbacks gathered of the last response."""
        self._headers: Headers = Headers()
        self._body: list[bytes] = []
        self._status = 0
        self._received = False
        self._headers_done = False
        self._until_close = False
        self._complete = False

    def _check_timeout(self) -> None:
        # One timer per request, moved on only when it fires: cheaper than a
        # new timer for each received chunk.
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        due = self._last_read + self._read_timeout
        if self._loop.time() >= due:
            self._fail(httpx.ReadTimeout("Timed out waiting for the upstream's response."))
            self.close()
        else:
            self._timer = self._loop.call_at(due, self._check_timeout)

    def _finish(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        self._complete = True
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        try:
            body = _decode(body, self._headers.get("content-encoding", ""))
        except zlib.error as exc:
            self.reusable = False
            waiter.set_exception(httpx.DecodingError(f"the body could not be decoded: {exc}"))
            return
        waiter.set_result(HttptoolsResponse(self._status, self._headers, body))

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self._transport is not None:
            self._transport.close()


class _NotAnswered(httpx.RemoteProtocolError):
    """A connection closed before any byte of the response arrived."""


def _decode(body: bytes, encoding: str) -> bytes:
    """Undo the Content-Encoding codings, last applied first, as httpx does."""
    if not encoding or not body:
        return body
    for coding in reversed([part.strip().lower() for part in encoding.split(",")]):
        if coding in ("gzip", "x-gzip"):
            body = zlib.decompress(body, zlib.MAX_WBITS | 16)
        elif coding == "deflate":
            try:
                body = zlib.decompress(body)
            except zlib.error:
                body = zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, no zlib header
        # httpx skips a coding it does not know and decodes the others, and so does this client.
    return body


class HttptoolsClient:
    """One source's connection pool, opened on the first request and kept until ``aclose``.

    ``proxied`` is the httpx client that sends the requests whose URL a
    proxy of the environment applies to, or None when the environment sets
    no proxy.
    """

    def __init__(self, timeout: float, *, proxied: httpx.AsyncClient | None = None) -> None:
        self._timeout = timeout
        self._proxied = proxied
        self._routes = ProxyRoutes(proxied) if proxied is not None else None
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[str, collections.deque[_Connection]] = {}
        self._open = 0
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ssl: ssl.SSLContext | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def __aenter__(self) -> HttptoolsClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, traceback: TracebackType | None) -> None:
        await self.aclose()

    @property
    def open_connections(self) -> int:
        """The connections of the pool, idle or carrying a request."""
        return self._open

    async def aclose(self) -> None:
        """Close the idle connections and the proxied client; later requests raise."""
        self._closed = True
        for idle in self._idle.values():
            while idle:
                self._discard(idle.popleft())
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._slot_waiters:  # each raises RuntimeError once it runs
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        if self._proxied is not None:
            await self._proxied.aclose()

    async def request(self, method: str, url: str, *, params: Mapping[str, str] | None = None,
                      headers: Mapping[str, str] | None = None, content: bytes | None = None,
                      data: Mapping[str, str] | None = None, json: Any = None
                      ) -> HttptoolsResponse | httpx.Response:
        """Send one request and read the whole response.

        Raises an ``httpx.TransportError`` on a transport failure, and
        ``RuntimeError`` after ``aclose``, as httpx does.
        """
        if self._closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        key, origin, target = self._split(url)
        if self._routes is not None and self._routes.applies(key):
            return await self._routes.client.request(method, url, headers=headers, content=content,
                                               data=data, json=json)
        body = content
        content_type = None
        if json is not None:
            body = _json_bytes(json)
            content_type = "application/json"
        elif data is not None:
            body = urlencode(data).encode("ascii")
            content_type = "application/x-www-form-urlencoded"
        method = method.upper()  # as httpx sends it
        message = _message(method, target, origin, headers, body, content_type)
        head = method == "HEAD"

        connection = await self._acquire(key, origin)
        reused = connection.used_before
        try:
            return await connection.send(message, head, self._timeout)
        except _NotAnswered as exc:
            if not reused:
                raise httpx.RemoteProtocolError(str(exc)) from None
        finally:
            self._release(key, connection)
        # The server closed a kept-alive connection as the request went out.
        connection = await self._acquire(key, origin, fresh=True)
        try:
            return await connection.send(message, head, self._timeout)
        except _NotAnswered as exc:
            raise httpx.RemoteProtocolError(str(exc)) from None
        finally:
            self._release(key, connection)

    # -- URLs

    def _split(self, url: str) -> tuple[str, _Origin, bytes]:
        """Return the origin's key, the origin and the request target of ``url``."""
        scheme, separator, rest = url.partition("://")
        if scheme in _DEFAULT_PORTS and separator and _is_encoded(url) and "#" not in url \
                and "/." not in rest:
            end = len(rest)
            for mark in ("/", "?"):
                found = rest.find(mark)
                if 0 <= found < end:
                    end = found
            authority, target = rest[:end], rest[end:]
            if authority and "@" not in authority:
                key = f"{scheme}://{authority}"
                origin = self._origins.get(key) or self._origin(key)
                if not target.startswith("/"):
                    target = "/" + target
                return key, origin, target.encode("ascii")
        try:
            # A "%" that starts no percent-encoded byte is quoted, as the aiohttp
            # client does; httpx 0.29 would send it unchanged, an invalid URL.
            parsed = httpx.URL(_BARE_PERCENT.sub("%25", url))
        except httpx.InvalidURL as exc:
            raise httpx.UnsupportedProtocol(str(exc)) from exc
        key = f"{parsed.scheme}://{parsed.netloc.decode('ascii')}"
        origin = self._origins.get(key) or self._origin(key, parsed)
        return key, origin, parsed.raw_path

    def _origin(self, key: str, parsed: httpx.URL | None = None) -> _Origin:
        try:
            origin = _Origin(parsed if parsed is not None else httpx.URL(key))
        except httpx.InvalidURL as exc:
            raise httpx.UnsupportedProtocol(str(exc)) from exc
        self._origins[key] = origin
        return origin

    # -- the pool

    async def _acquire(self, key: str, origin: _Origin, fresh: bool = False) -> _Connection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            if not fresh:
                connection = self._idle_connection(key, loop.time())
                if connection is not None:
                    return connection
            if self._open < MAX_CONNECTIONS or self._close_one_idle():
                break
            await self._wait_for_slot(deadline)
        self._open += 1
        try:
            async with asyncio.timeout_at(deadline):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop), origin.host, origin.port,
                    ssl=self._ssl_context() if origin.scheme == "https" else None,
                    server_hostname=origin.server_hostname)
        except BaseException as exc:
            self._open -= 1
            self._wake()
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout(
                    f"Timed out connecting to {origin.host_header}.") from exc
            if isinstance(exc, OSError):
                raise httpx.ConnectError(
                    f"Could not connect to {origin.host_header}: "
                    f"{exc.strerror or type(exc).__name__}.") from exc
            raise
        return connection

    async def _wait_for_slot(self, deadline: float) -> None:
        """Wait until a connection is released or closed, at most until ``deadline``."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Woken for a free slot but leaving: the next waiter gets it.
                self._wake()
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout("Timed out waiting for a free connection.") from exc
            raise
        finally:
            if waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)
        if self._closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")

    def _idle_connection(self, key: str, now: float) -> _Connection | None:
        """Return an idle connection to the origin ``key`` that is still open and fresh."""
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()  # the most recently used, the least likely to be stale
            if not connection.closed and now - connection.idle_since < KEEPALIVE_EXPIRY_SECONDS:
                return connection
            self._discard(connection)
        return None

    def _release(self, key: str, connection: _Connection) -> None:
        if connection.reusable and not connection.closed and not self._closed:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(key, collections.deque()).append(connection)
            self._schedule_sweep()
            self._wake()  # a request waiting for the same origin takes it
        else:
            self._discard(connection)

    def _discard(self, connection: _Connection) -> None:
        """Close a connection and count it out of the pool, once."""
        connection.close()
        if connection.counted:
            connection.counted = False
            self._open -= 1
            self._wake()

    def _close_one_idle(self) -> bool:
        for idle in self._idle.values():
            if idle:
                self._discard(idle.popleft())
                return True
        return False

    def _wake(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _schedule_sweep(self) -> None:
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(KEEPALIVE_EXPIRY_SECONDS, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for longer than the keep-alive expiry."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        left = False
        for idle in self._idle.values():
            kept: collections.deque[_Connection] = collections.deque()
            for connection in idle:
                if connection.closed or now - connection.idle_since >= KEEPALIVE_EXPIRY_SECONDS:
                    self._discard(connection)
                else:
                    kept.append(connection)
            idle.clear()
            idle.extend(kept)
            left = left or bool(kept)
        if left and not self._closed:
            self._schedule_sweep()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl


def _message(method: str, target: bytes, origin: _Origin, headers: Mapping[str, str] | None,
             body: bytes | None, content_type: str | None) -> bytes:
    """Return the request's head and body as one buffer."""
    if not _TOKEN.fullmatch(method):
        raise httpx.LocalProtocolError(f"the method {method!r} is not a valid HTTP token")
    own = {"host": origin.host_header, "accept": "*/*", "accept-encoding": "gzip, deflate"}
    lines = []
    if origin.authorization is not None and not any(
            name.lower() == "authorization" for name in headers or ()):
        lines.append(_header_line("Authorization", origin.authorization))
    if headers:
        for name, value in headers.items():
            lowered = name.lower()
            if lowered in _OWN_HEADERS:
                own[lowered] = value
                continue
            if lowered == "content-type":
                content_type = value
                continue
            lines.append(_header_line(name, value))
    if content_type is not None:
        lines.append(_header_line("Content-Type", content_type))
    if body is not None or method.upper() in ("POST", "PUT", "PATCH"):
        own["content-length"] = str(len(body or b""))
    head = [f"{method} ".encode("ascii") + target + b" HTTP/1.1",
            _header_line("Host", own["host"]),
            _header_line("Accept", own["accept"]),
            _header_line("Accept-Encoding", own["accept-encoding"])]
    head.extend(lines)
    if "content-length" in own:
        head.append(_header_line("Content-Length", own["content-length"]))
    message = b"\r\n".join(head) + b"\r\n\r\n"
    return message + body if body else message


def _header_line(name: str, value: str) -> bytes:
    if not _TOKEN.fullmatch(name):
        raise httpx.LocalProtocolError(f"the header name {name!r} is not a valid HTTP token")
    line = f"{name}: {value}"
    if "\r" in line or "\n" in line or "\x00" in line:
        raise httpx.LocalProtocolError(
            f"the header {name!r} has a line break or a NUL character in its value")
    try:
        return line.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise httpx.LocalProtocolError(
            f"the header {name!r} has a character that HTTP/1.1 cannot carry") from exc
