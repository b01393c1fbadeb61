"""The httpx clients of the HTTP sources, on httpx's own transport or on aiohttp.

Every HTTP dialect sends through an ``httpx.AsyncClient``. ``new_client``
picks what carries its requests:

- ``aiohttp`` (the default): the ``AiohttpTransport`` of the
  ``httpx-aiohttp`` package sends each request with an aiohttp session, whose
  parser is written in C and which runs on asyncio directly. httpcore 1.0.9,
  under httpx's own transport, runs every read and write through anyio with
  a cancel scope each.
- ``httpx``: httpx's own transport (httpcore), as before.

With aiohttp, httpx still builds each request (URL, headers, auth, JSON
body) and decodes the response, and the sources see the same
``httpx.Response``. aiohttp errors become the httpx exceptions that
``gateway.sources.http.send`` maps. The aiohttp transport of
httpx-aiohttp 0.2.0 applies httpx's connect, read and pool timeouts but no
write timeout, and it speaks HTTP/1.1 only. A request through a proxy set
in the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``) is
sent by httpx's own transport, which httpx mounts for proxied URLs. TLS
uses the SSL context that httpx builds, so ``SSL_CERT_FILE`` and
``SSL_CERT_DIR`` still apply.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.cookiejar import CookieJar
from typing import Any, Literal, get_args

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from gateway.errors import ConfigError

HttpClient = Literal["aiohttp", "httpx"]
HTTP_CLIENTS: tuple[HttpClient, ...] = get_args(HttpClient)
DEFAULT_HTTP_CLIENT: HttpClient = "aiohttp"

# httpx's default pool: 100 connections, idle ones closed after 5 seconds.
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)

# aiohttp error -> the httpx exception that httpx's own transport raises for
# the same failure. The first class that matches wins, so subclasses come
# before their bases. httpx-aiohttp 0.2.0 maps a dropped connection
# (ServerDisconnectedError) to ConnectTimeout, which would turn it into a
# timeout. This table runs on the original aiohttp error instead.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (TimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientConnectionError, httpx.ReadError),
    (aiohttp.ClientError, httpx.RemoteProtocolError),
)


def check_http_client(section: str, value: object) -> HttpClient:
    """Return ``value`` as an HTTP client name, or raise ``ConfigError`` naming the choices."""
    for name in HTTP_CLIENTS:
        if value == name:
            return name
    raise ConfigError(f"[{section}] http_client = {value!r} is not supported; use "
                      f"{' or '.join(repr(name) for name in HTTP_CLIENTS)}")


def new_client(timeout: float, http_client: HttpClient = DEFAULT_HTTP_CLIENT
               ) -> httpx.AsyncClient:
    """Create the client of one source, with ``timeout`` seconds for each phase of a request."""
    if http_client == "httpx":
        return _UpstreamClient(timeout=timeout, limits=_LIMITS)
    return _AiohttpClient(timeout=timeout, limits=_LIMITS)


def new_transport(http_client: HttpClient = DEFAULT_HTTP_CLIENT) -> httpx.AsyncBaseTransport:
    """Create the transport that sends a client's requests that go through no proxy."""
    if http_client == "httpx":
        return httpx.AsyncHTTPTransport(limits=_LIMITS)
    return MappedAiohttpTransport(limits=_LIMITS)


class _SetCookieCookies(httpx.Cookies):
    """A cookie jar that reads only the responses that set a cookie.

    For every response, httpx 0.29 wraps the request and the response for
    ``http.cookiejar``, about 24 microseconds (timeit) even when the
    response sets no cookie. The jar's default policy ignores
    ``Set-Cookie2``, so a response without ``Set-Cookie`` changes nothing
    and can be skipped.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


class _UpstreamClient(httpx.AsyncClient):
    """An httpx client whose cookie jar is a ``_SetCookieCookies``, also after a reassignment."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cookies = self.cookies

    # NOTE: the property mirrors httpx 0.29's, which keeps the jar in the
    # private attribute ``_cookies``. A later httpx may store it elsewhere.

    @property
    def cookies(self) -> httpx.Cookies:
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: httpx.Cookies | CookieJar | dict[str, str]
                | list[tuple[str, str]]) -> None:
        self._cookies = _SetCookieCookies(cookies)


class _AiohttpClient(_UpstreamClient):
    """An httpx client whose requests go through aiohttp unless they go through a proxy.

    Passing ``transport=`` to ``httpx.AsyncClient`` would also turn off the
    proxies of the environment. Replacing only the default transport keeps
    them, on the proxy transports that httpx mounts.
    """

    def _init_transport(self, verify: ssl.SSLContext | str | bool = True,
                        cert: str | tuple[str, str] | tuple[str, str, str] | None = None,
                        trust_env: bool = True,
                        http1: bool = True, http2: bool = False, limits: httpx.Limits = _LIMITS,
                        transport: httpx.AsyncBaseTransport | None = None
                        ) -> httpx.AsyncBaseTransport:
        if transport is not None:
            return transport
        return MappedAiohttpTransport(verify=verify, cert=cert, trust_env=trust_env,
                                      http1=http1, http2=http2, limits=limits)


class MappedAiohttpTransport(AiohttpTransport):
    """httpx-aiohttp's transport with errors mapped again and a session that keeps no cookies.

    httpx's cookie jar must stay the only one. A session with its own jar
    would keep sending a cookie that httpx's jar no longer contains.
    """

    def get_client(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.limits.max_connections or 0,
                                         keepalive_timeout=self.limits.keepalive_expiry,
                                         ssl=self.ssl_context)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _mapped_errors():
            response = await super().handle_async_request(request)
        response.stream = _MappedStream(response.stream)
        return response


class _MappedStream(httpx.AsyncByteStream):
    """A response body stream whose aiohttp errors become httpx exceptions."""

    def __init__(self, inner: httpx.SyncByteStream | httpx.AsyncByteStream) -> None:
        assert isinstance(inner, httpx.AsyncByteStream)
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped_errors():
            async for chunk in self._inner:
                yield chunk

    async def aclose(self) -> None:
        with _mapped_errors():
            await self._inner.aclose()


@contextmanager
def _mapped_errors() -> Iterator[None]:
    try:
        yield
    except httpx.TransportError as exc:
        # httpx-aiohttp raised its own mapping; map the aiohttp error under it again.
        cause = exc.__cause__
        if cause is None or not isinstance(cause, aiohttp.ClientError | TimeoutError):
            raise
        raise _httpx_error(cause) from cause
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _httpx_error(exc) from exc


def _httpx_error(error: BaseException) -> httpx.TransportError:
    return httpx_error_class(type(error))(f"{type(error).__name__}: {error}")


def httpx_error_class(aiohttp_class: type[BaseException]) -> type[httpx.TransportError]:
    """Return the httpx exception class that an aiohttp error class becomes."""
    for matched, httpx_class in _ERRORS:
        if issubclass(aiohttp_class, matched):
            return httpx_class
    return httpx.RemoteProtocolError
