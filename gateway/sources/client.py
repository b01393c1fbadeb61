"""The clients of the HTTP sources: httptools or aiohttp directly, or httpx with its own transport.

Every HTTP dialect sends through ``gateway.sources.http.send``, which takes
any of them. ``new_client`` picks one:

- ``httptools`` (the default): ``HttptoolsClient`` of
  ``gateway.sources.httptools_client`` writes each request on a pooled
  asyncio connection and parses the response with httptools' C parser,
  with no request or response object of a library in between. A source
  that keeps cookies (SAP) gets the aiohttp client instead.
- ``aiohttp``: ``AiohttpClient`` of ``gateway.sources.aiohttp_client``
  sends each request with one aiohttp session per source, whose parser is
  written in C and which runs on asyncio directly.
- ``httpx``: an ``httpx.AsyncClient`` on httpx's own transport (httpcore
  1.0.9, which runs every read and write through anyio with a cancel scope
  each).

With either direct client, a request to a URL that a proxy of the
environment applies to goes to an httpx client.

All three return responses with ``status_code``, ``headers``, ``content`` and
``json()`` (``gateway.sources.http.UpstreamResponse``), apply the source's
timeout to each phase of a request, keep at most 100 connections and honour
``SSL_CERT_FILE`` and ``SSL_CERT_DIR``. A client keeps cookies only when
``new_client`` is asked to: the SAP dialect needs the session cookie that
comes with its CSRF token.
"""

from __future__ import annotations

from http.cookiejar import CookieJar
from typing import Any, Literal, get_args

import httpx

from gateway.errors import ConfigError
from gateway.sources.aiohttp_client import (
    KEEPALIVE_EXPIRY_SECONDS,
    MAX_CONNECTIONS,
    AiohttpClient,
    environment_has_proxy,
)
from gateway.sources.httptools_client import HttptoolsClient

HttpClient = Literal["httptools", "aiohttp", "httpx"]
HTTP_CLIENTS: tuple[HttpClient, ...] = get_args(HttpClient)
DEFAULT_HTTP_CLIENT: HttpClient = "httptools"

# The client object that a source sends through.
UpstreamClient = httpx.AsyncClient | AiohttpClient | HttptoolsClient

# httpx's default pool: 100 connections, idle ones closed after 5 seconds.
_LIMITS = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=20,
                       keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS)


def check_http_client(section: str, value: object) -> HttpClient:
    """Return ``value`` as an HTTP client name, or raise ``ConfigError`` naming the choices."""
    for name in HTTP_CLIENTS:
        if value == name:
            return name
    names = [repr(name) for name in HTTP_CLIENTS]
    raise ConfigError(f"[{section}] http_client = {value!r} is not supported; use "
                      f"{', '.join(names[:-1])} or {names[-1]}")


def new_client(timeout: float, http_client: HttpClient = DEFAULT_HTTP_CLIENT, *,
               cookies: bool = False) -> UpstreamClient:
    """Create the client of one source, with ``timeout`` seconds for each phase of a request.

    ``cookies`` makes the aiohttp client keep the cookies that responses
    set, and gives a source that selects ``httptools`` the aiohttp client,
    because the httptools client keeps none. The httpx client always keeps
    them, as it did before.
    """
    if http_client == "httpx":
        return _HttpxClient(timeout=timeout, limits=_LIMITS)
    proxied = _HttpxClient(timeout=timeout, limits=_LIMITS) if environment_has_proxy() else None
    if http_client == "httptools" and not cookies:
        return HttptoolsClient(timeout, proxied=proxied)
    return AiohttpClient(timeout, cookies=cookies, proxied=proxied)


def new_transport() -> httpx.AsyncBaseTransport:
    """Create an httpx transport with the pool limits of ``new_client``."""
    return httpx.AsyncHTTPTransport(limits=_LIMITS)


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


class _HttpxClient(httpx.AsyncClient):
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
