"""SAP OData 2.0 dialect (S/4HANA APIs such as API_BUSINESS_PARTNER), with Basic auth.

Reads go to ``GET <base_url>/sap/opu/odata/sap/<service>/<entity set>`` with
``$format=json``. OData 2.0 has no ``in`` operator, so keys travel as an
``or`` chain. The response body is ``{"d": {"results": [...], "__next":
url}}``, and ``__next`` is followed until it is absent. Each record carries
``__metadata``, which the projection drops. A read with a limit sends
``$top``.

Wire values: ``Edm.Decimal`` and ``Edm.Int64`` arrive as JSON strings such
as ``"1190.00"``. They stay strings here, because without ``$metadata`` the
dialect cannot tell a decimal from a text that looks like one, and the
gateway's Decimal and Int converters parse strings exactly. A per-entity list
of decimal attributes would be a second copy of the schema that can drift.
Dates arrive as ``/Date(<ms since 1970 UTC>)/`` (``Edm.DateTime``) or
``/Date(<ms>+<offset minutes>)/`` (``Edm.DateTimeOffset``) and leave as ISO
8601 text (see ``iso_date``).

Every request carries Basic auth for the communication user. A ``$batch``
POST also needs a CSRF token: a GET of the service root with
``x-csrf-token: fetch`` returns it in a header and sets a session cookie,
which the client's cookie jar keeps (``new_client(..., cookies=True)``). A
POST whose token has expired gets 403 with ``x-csrf-token: Required``, and
then the token is fetched once more and the POST retried once. A service
that sends no token in response to the fetch gets its POSTs without one.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.errors import UpstreamAuthFailed, UpstreamError, UpstreamUnavailable
from gateway.sources import FetchRequest, Row
from gateway.sources.client import UpstreamClient, new_client
from gateway.sources.http import UpstreamResponse, send
from gateway.sources.mapping import EntityMap
from gateway.sources.odata import Flavour, ODataSource, error_code, generic_error

log = logging.getLogger("gateway.upstream")

# 8,000 bytes keeps every GET under the 8,190-byte request line that Apache
# httpd accepts by default (LimitRequestLine) and under nginx's default 8 KB
# header buffer, two reverse proxies often placed in front of an SAP system.
# NOTE: SAP publishes no single URL limit for OData 2.0 services. Raise this
# only where every hop in front of the system is known to accept more.
# max_batch_parts = 100 is a chosen bound, not a limit published by SAP. It
# keeps the server work of one $batch bounded.
SAP = Flavour(version="2.0", max_url_bytes=8_000, max_batch_parts=100)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DATE = re.compile(r"/Date\((-?\d+)(?:([+-])(\d{1,4}))?\)/")


@dataclass(frozen=True)
class SapSettings:
    """Connection settings of one SAP OData 2.0 service.

    ``base_url`` is the system's URL, such as ``https://s4.example.com:44300``.
    ``service`` is the OData service name, such as ``API_BUSINESS_PARTNER``.
    ``user`` and ``password`` are the communication user's Basic auth
    credentials. ``client`` is the SAP client number sent as ``sap-client``
    when set. ``entities`` maps the schema's entity and attribute names onto
    the service's names.
    """

    base_url: str
    service: str
    user: str
    password: str
    client: str | None = None
    timeout: float = 10.0
    entities: Mapping[str, EntityMap] = field(default_factory=dict)


def iso_date(value: str) -> str | None:
    """Return the ISO 8601 text of an OData 2.0 ``/Date(...)/`` value, or None if it is not one.

    A value without an offset at midnight UTC is returned as ``YYYY-MM-DD``,
    because SAP writes date-only ``Edm.DateTime`` properties that way. Any
    other value becomes ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` in UTC. Both forms
    read back as the same instant through the gateway's Date and DateTime
    converters. The milliseconds count from 1970 in UTC, and an offset only
    states the writer's zone, so it does not move the instant.
    NOTE: OData 2.0 writers differ on whether the milliseconds count in UTC or
    in the offset's zone. This reads them as UTC, untested against a live SAP.
    """
    found = _DATE.fullmatch(value)
    if found is None:
        return None
    moment = _EPOCH + timedelta(milliseconds=int(found.group(1)))
    if found.group(2) is None and moment.time() == datetime.min.time():
        return moment.date().isoformat()
    return moment.isoformat().replace("+00:00", "Z")


class SapSource(ODataSource):
    """Reads one SAP OData 2.0 service."""

    flavour = SAP

    def __init__(self, name: str, settings: SapSettings,
                 client: UpstreamClient | None = None) -> None:
        super().__init__(name, client or new_client(settings.timeout, cookies=True))
        self._settings = settings
        self._authorization = basic_authorization(settings.user, settings.password)
        self._csrf: str | None = None
        self._csrf_lock = asyncio.Lock()

    def service_url(self) -> str:
        return f"{self._settings.base_url.rstrip('/')}/sap/opu/odata/sap/{self._settings.service}/"

    def read_options(self, request: FetchRequest) -> dict[str, str]:
        options = {"$format": "json"}
        if request.limit is not None:
            options["$top"] = str(request.limit)
        if self._settings.client is not None:
            options["sap-client"] = self._settings.client
        return options

    def batch_part_headers(self, request: FetchRequest) -> dict[str, str]:
        return {"Accept": "application/json"}

    async def get(self, url: str, request: FetchRequest, what: str) -> UpstreamResponse:
        response = await self._send("GET", url, {"Accept": "application/json"}, None, what)
        if response.status_code != 200:
            raise self.error(response, what)
        return response

    async def post_batch(self, body: bytes, boundary: str, what: str) -> UpstreamResponse:
        url = self.service_url() + "$batch"
        if self._settings.client is not None:
            url += f"?sap-client={self._settings.client}"
        headers = {"Accept": "multipart/mixed",
                   "Content-Type": f"multipart/mixed; boundary={boundary}"}
        token = await self._csrf_token(stale=None, what=what)
        response = await self._send("POST", url, _with_token(headers, token), body, what)
        if _csrf_required(response):
            log.info("system %r: CSRF token rejected; fetching a new one", self.name)
            token = await self._csrf_token(stale=token, what=what)
            response = await self._send("POST", url, _with_token(headers, token), body, what)
        if _csrf_required(response):
            raise UpstreamUnavailable(self.name, f"system {self.name!r} rejected a freshly "
                                      f"fetched CSRF token for {what} (HTTP 403); check that "
                                      "no proxy drops the session cookie")
        # The OData v2 adapter of SAP CAP responds to a $batch with 202 Accepted.
        if response.status_code not in (200, 202):
            raise self.error(response, what)
        return response

    async def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                    what: str) -> UpstreamResponse:
        return await send(self._client, self.name, what, method, url, content=body,
                          headers={**headers, "Authorization": self._authorization})

    async def _csrf_token(self, *, stale: str | None, what: str) -> str:
        async with self._csrf_lock:
            # Another batch may have fetched a new token while this one waited.
            if self._csrf is not None and self._csrf != stale:
                return self._csrf
            url = self.service_url()
            if self._settings.client is not None:
                url += f"?sap-client={self._settings.client}"
            response = await self._send("GET", url, {"x-csrf-token": "fetch",
                                                     "Accept": "application/json"}, None,
                                        f"CSRF token request for {what}")
            if response.status_code != 200:
                raise self.error(response, f"CSRF token request for {what}")
            token = str(response.headers.get("x-csrf-token", ""))
            if token.lower() in ("fetch", "required"):
                raise UpstreamUnavailable(self.name, f"system {self.name!r} returned no CSRF "
                                          f"token for {what}; check that the service allows "
                                          "$batch")
            self._csrf = token
            if token:
                log.info("system %r: new CSRF token obtained", self.name)
            else:
                # A service without CSRF protection, such as SAP CAP behind the
                # OData v2 adapter, sends no token, and its POSTs need none.
                log.info("system %r: the service sent no CSRF token; sending $batch without "
                         "one", self.name)
            return token

    def page(self, body: Any, what: str) -> tuple[list[dict[str, Any]], str | None]:
        envelope = body.get("d") if isinstance(body, dict) else None
        records = envelope.get("results") if isinstance(envelope, dict) else None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise UpstreamUnavailable(self.name, f"system {self.name!r} responded to {what} "
                                      "without a d.results list of records")
        assert isinstance(envelope, dict)
        next_url = envelope.get("__next")
        return records, next_url if isinstance(next_url, str) else None

    def convert(self, row: Row) -> Row:
        return {name: _wire_value(value) for name, value in row.items()}

    def error(self, response: UpstreamResponse, what: str) -> UpstreamError:
        code = _error_code(response)
        status = response.status_code
        if status == 401:
            return UpstreamAuthFailed(self.name, f"system {self.name!r} rejected the gateway's "
                                      f"Basic auth (HTTP 401) for {what}; check the user and "
                                      "password settings of the communication user")
        if status == 403:
            detail = f" ({code})" if code else ""
            return UpstreamAuthFailed(self.name, f"system {self.name!r} denied {what} (HTTP "
                                      f"403{detail}); add the service to the communication "
                                      "arrangement or role of the communication user")
        return generic_error(self.name, response, what, code)


def basic_authorization(user: str, password: str) -> str:
    """Return the ``Authorization`` value of Basic auth, UTF-8 encoded as httpx 0.29 does."""
    credentials = user.encode("utf-8") + b":" + password.encode("utf-8")
    return "Basic " + base64.b64encode(credentials).decode("ascii")


def _wire_value(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("/Date("):
        converted = iso_date(value)
        if converted is not None:
            return converted
    return value


def _with_token(headers: dict[str, str], token: str) -> dict[str, str]:
    """Return ``headers`` with the CSRF token, or unchanged if the service sent none."""
    return {**headers, "x-csrf-token": token} if token else headers


def _csrf_required(response: UpstreamResponse) -> bool:
    return (response.status_code == 403
            and response.headers.get("x-csrf-token", "").lower() == "required")


def _error_code(response: UpstreamResponse) -> str | None:
    """Return the ``error.code`` of an SAP error body, such as ``/IWBEP/CM_MGW_RT/020``."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error_code(error.get("code")) if isinstance(error, dict) else None
