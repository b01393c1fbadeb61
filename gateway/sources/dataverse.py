"""Microsoft Dataverse Web API dialect (OData 4.0), with OAuth2 client credentials.

Reads go to ``GET <base_url>/api/data/v9.2/<entity set>``. Dataverse
implements OData 4.0 only, so there is no ``in`` operator and keys travel as
an ``or`` chain. A GET URL may be 32 KB long (Microsoft Learn, "Compose HTTP
requests and handle errors"), and ``$batch`` takes up to 1,000 requests.
Pages hold ``Prefer: odata.maxpagesize`` rows, and ``@odata.nextLink`` is
followed verbatim. Dataverse ignores ``$top`` when ``maxpagesize`` is set,
so a read with a limit sends ``$top`` alone.

The access token comes from an Entra ID token URL (form POST with
``grant_type=client_credentials``) and is cached until a minute before it
expires. Concurrent reads share one token request, and a 401 response
triggers one refresh and one retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import UpstreamAuthFailed, UpstreamError, UpstreamUnavailable
from gateway.sources import FetchRequest, Row
from gateway.sources.client import UpstreamClient, new_client
from gateway.sources.http import UpstreamResponse, json_body, send, status_error
from gateway.sources.mapping import EntityMap
from gateway.sources.odata import Flavour, ODataSource, error_code, generic_error

log = logging.getLogger("gateway.upstream")

MAX_PAGE_SIZE = 5000  # Dataverse's default and maximum odata.maxpagesize
# OAuth2 error codes (RFC 6749 5.2) that mean the gateway's credentials are wrong.
_AUTH_ERRORS = frozenset({"invalid_client", "invalid_grant", "unauthorized_client",
                          "invalid_scope"})
_TOKEN_MARGIN = 60.0  # seconds before expiry at which a cached token is renewed
DATAVERSE = Flavour(version="4.0", max_url_bytes=32_000, max_batch_parts=1000)


@dataclass(frozen=True)
class DataverseSettings:
    """Connection settings of one Dataverse environment.

    ``base_url`` is the environment URL, such as ``https://org.crm4.dynamics.com``.
    ``scope`` is usually ``<base_url>/.default``. ``entities`` maps the
    schema's entity and attribute names onto the environment's names.
    """

    base_url: str
    token_url: str
    client_id: str
    client_secret: str
    scope: str
    api_version: str = "9.2"
    page_size: int = MAX_PAGE_SIZE
    timeout: float = 10.0
    entities: Mapping[str, EntityMap] = field(default_factory=dict)


class DataverseSource(ODataSource):
    """Reads one Dataverse environment through its Web API."""

    flavour = DATAVERSE

    def __init__(self, name: str, settings: DataverseSettings,
                 client: UpstreamClient | None = None) -> None:
        super().__init__(name, client or new_client(settings.timeout))
        self._settings = settings
        self._token: tuple[str, float] | None = None  # (access token, monotonic expiry)
        self._token_lock = asyncio.Lock()

    def service_url(self) -> str:
        return f"{self._settings.base_url.rstrip('/')}/api/data/v{self._settings.api_version}/"

    def read_options(self, request: FetchRequest) -> dict[str, str]:
        if self._uses_top(request):
            return {"$top": str(request.limit)}
        return {}

    def _uses_top(self, request: FetchRequest) -> bool:
        return request.limit is not None and request.limit <= self._settings.page_size

    def _headers(self, request: FetchRequest) -> dict[str, str]:
        headers = {"Accept": "application/json", "OData-MaxVersion": "4.0",
                   "OData-Version": "4.0", "If-None-Match": "null"}
        if not self._uses_top(request):
            headers["Prefer"] = f"odata.maxpagesize={self._settings.page_size}"
        return headers

    def batch_part_headers(self, request: FetchRequest) -> dict[str, str]:
        return self._headers(request)

    async def get(self, url: str, request: FetchRequest, what: str) -> UpstreamResponse:
        return await self._send("GET", url, self._headers(request), None, what)

    async def post_batch(self, body: bytes, boundary: str, what: str) -> UpstreamResponse:
        # Accept: multipart/mixed, because SAP CAP responds to a batch in the
        # OData 4.01 JSON batch format when the request accepts JSON.
        headers = {"Accept": "multipart/mixed", "OData-MaxVersion": "4.0",
                   "OData-Version": "4.0",
                   # Unquoted, because SAP CAP 9 finds no boundary in a quoted one;
                   # the boundary is a token, which needs no quotes (RFC 2046).
                   "Content-Type": f"multipart/mixed; boundary={boundary}"}
        return await self._send("POST", self.service_url() + "$batch", headers, body, what)

    async def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                    what: str) -> UpstreamResponse:
        token = await self._access(stale=None)
        response = await send(self._client, self.name, what, method, url, content=body,
                              headers={**headers, "Authorization": f"Bearer {token}"})
        if response.status_code == 401:
            token = await self._access(stale=token)
            response = await send(self._client, self.name, what, method, url, content=body,
                                  headers={**headers, "Authorization": f"Bearer {token}"})
        if response.status_code != 200:
            raise self.error(response, what)
        return response

    def page(self, body: Any, what: str) -> tuple[list[dict[str, Any]], str | None]:
        records = body.get("value") if isinstance(body, dict) else None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise UpstreamUnavailable(self.name, f"system {self.name!r} responded to {what} "
                                      "without a value list of records")
        next_url = body.get("@odata.nextLink")
        return records, next_url if isinstance(next_url, str) else None

    def convert(self, row: Row) -> Row:
        # Dataverse writes null for empty values and ISO 8601 text for dates,
        # which the gateway's converters read as they are.
        return row

    def error(self, response: UpstreamResponse, what: str) -> UpstreamError:
        code = _error_code(response)
        status = response.status_code
        if status == 401:
            return UpstreamAuthFailed(self.name, f"system {self.name!r} rejected the gateway's "
                                      f"access token (HTTP 401) for {what}; check that an "
                                      "application user exists for its client_id")
        if status == 403:
            detail = f" ({code})" if code else ""
            return UpstreamAuthFailed(self.name, f"system {self.name!r} denied {what} (HTTP "
                                      f"403{detail}); give the application user a security "
                                      "role that can read the entity")
        return generic_error(self.name, response, what, code)

    async def _access(self, *, stale: str | None) -> str:
        async with self._token_lock:
            # Another read may have renewed the token while this one waited.
            if (self._token is not None and self._token[0] != stale
                    and self._token[1] > time.monotonic()):
                return self._token[0]
            self._token = await self._request_token()
            return self._token[0]

    async def _request_token(self) -> tuple[str, float]:
        what = "OAuth2 token request"
        settings = self._settings
        response = await send(self._client, self.name, what, "POST", settings.token_url, data={
            "grant_type": "client_credentials", "client_id": settings.client_id,
            "client_secret": settings.client_secret, "scope": settings.scope})
        if response.status_code != 200:
            raise self._token_error(response, what)
        body = json_body(response, self.name, what)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise UpstreamUnavailable(self.name, f"system {self.name!r} responded to the token "
                                      "request without an access_token")
        lifetime = body.get("expires_in", 3600)
        if isinstance(lifetime, str) and lifetime.isdigit():
            lifetime = int(lifetime)
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool):
            lifetime = 3600
        log.info("system %r: new access token obtained", self.name)
        return token, time.monotonic() + max(0.0, float(lifetime) - _TOKEN_MARGIN)

    def _token_error(self, response: UpstreamResponse, what: str) -> UpstreamError:
        try:
            body = response.json()
        except ValueError:
            body = None
        code = body.get("error") if isinstance(body, dict) else None
        if response.status_code in (400, 401) and code in _AUTH_ERRORS:
            return UpstreamAuthFailed(self.name, f"system {self.name!r} rejected the gateway's "
                                      f"OAuth2 client credentials ({code}); check its "
                                      "client_id, client_secret and scope settings")
        return status_error(self.name, what, response, error_code(code))


def _error_code(response: UpstreamResponse) -> str | None:
    """Return the ``error.code`` of a Dataverse error body; Dataverse often leaves it empty."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error_code(error.get("code")) if isinstance(error, dict) else None
