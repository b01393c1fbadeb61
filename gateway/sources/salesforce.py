"""Salesforce REST dialect: SOQL queries and sObject Collections retrieve.

Plain lookups by record id (``match`` is ``Id`` and nothing else narrows or
orders the request) go to ``POST /services/data/vNN.N/composite/sobjects/{Type}``
with at most 2,000 ids per request. Every other read goes to
``GET /services/data/vNN.N/query?q=SOQL`` and follows ``nextRecordsUrl``
until ``done``. There keys travel in ``WHERE field IN (...)`` lists, split so
no request URL passes 16,000 bytes (Salesforce rejects URI plus headers above
16,384 bytes with 414/431).

The gateway signs in with the OAuth2 client-credentials flow or the JWT
bearer flow (RFC 7523). The access token is cached, and an
``INVALID_SESSION_ID`` response triggers one new token and one retry.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import quote

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from gateway.catalog import Condition
from gateway.errors import (
    ConfigError,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest, Row, chunk_by_size, order_terms
from gateway.sources.client import UpstreamClient, new_client
from gateway.sources.http import UpstreamResponse, json_body, send, status_error

log = logging.getLogger("gateway.upstream")

MAX_URL_BYTES = 16_000
COLLECTION_MAX_IDS = 2_000
"""Maximum ids per sObject Collections retrieve request, as Salesforce documents it."""
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_LIFETIME_SECONDS = 180
"""Seconds from now to the assertion's ``exp``. Salesforce requires at most 3 minutes."""
AuthFlow = Literal["client_credentials", "jwt_bearer"]
_AUTH_FLOWS = ("client_credentials", "jwt_bearer")
_JWT_ONLY_SETTINGS = ("username", "private_key_pem", "audience")
# OAuth2 error codes (RFC 6749 5.2, plus Salesforce's invalid_client_id for an
# unknown consumer key) that mean the gateway's credentials are wrong.
_AUTH_ERRORS = frozenset({"invalid_client", "invalid_grant", "unauthorized_client",
                          "invalid_client_id"})
_API_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
# Seconds between two warnings that the org has used 90 % of its daily API requests.
USAGE_WARNING_INTERVAL = 300.0
# Record ids are 15 case-sensitive or 18 case-insensitive alphanumerics.
_RECORD_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_SOQL_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t",
                 "\b": "\\b", "\f": "\\f"}


# Words of Salesforce's invalid_grant descriptions for the JWT bearer flow,
# and the setting each points to. The first match wins. An assertion with a
# bad signature gets "invalid assertion" and so the fallback hint.
_JWT_REJECTION_HINTS = (
    ("audience", "audience setting (Salesforce accepts https://login.salesforce.com, "
                 "https://test.salesforce.com or an Experience Cloud site URL)"),
    ("exp", "gateway host's clock, because the assertion's exp claim was out of range"),
    ("client", "client_id setting against the connected app's consumer key"),
    ("user", "username setting and that the user is pre-authorized for the connected app"),
)
_JWT_FALLBACK_HINT = ("private_key_file or private_key_env setting against the certificate "
                      "uploaded to the connected app")


@dataclass(frozen=True)
class SalesforceSettings:
    """Connection settings of one Salesforce org.

    ``auth`` picks the OAuth2 flow. ``client_credentials`` needs
    ``client_secret``. ``jwt_bearer`` needs ``username`` and
    ``private_key_pem`` (an unencrypted RSA key in PEM form) and signs the
    assertion for ``audience``, which defaults to ``login_url``. A My Domain
    login URL is no valid audience for Salesforce, so such an org needs
    ``audience = "https://login.salesforce.com"`` (or test.salesforce.com
    for a sandbox). ``__post_init__`` raises ``ConfigError`` naming the
    setting when a combination is invalid.
    """

    login_url: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    api_version: str = "62.0"
    timeout: float = 10.0
    auth: AuthFlow = "client_credentials"
    username: str | None = None
    private_key_pem: str | None = field(default=None, repr=False)
    audience: str | None = None

    def __post_init__(self) -> None:
        if self.auth not in _AUTH_FLOWS:
            raise ConfigError(f"auth = {self.auth!r} is not supported; use "
                              "\"client_credentials\" or \"jwt_bearer\"")
        if self.auth == "client_credentials":
            self._check_client_credentials()
        else:
            self._check_jwt_bearer()

    def _check_client_credentials(self) -> None:
        if not self.client_secret:
            raise ConfigError("client_secret is missing; auth = \"client_credentials\" needs "
                              "the connected app's consumer secret")
        for name in _JWT_ONLY_SETTINGS:
            if getattr(self, name) is not None:
                raise ConfigError(f"{name} is only used with auth = \"jwt_bearer\"; remove it "
                                  "or set auth = \"jwt_bearer\"")

    def _check_jwt_bearer(self) -> None:
        if self.client_secret:
            raise ConfigError("client_secret is not used with auth = \"jwt_bearer\", which "
                              "signs with the private key instead; remove it")
        if not self.username:
            raise ConfigError("username is missing; auth = \"jwt_bearer\" needs the username "
                              "of the Salesforce user the gateway reads as")
        if not self.private_key_pem:
            raise ConfigError("the private key is missing; auth = \"jwt_bearer\" needs the "
                              "connected app's RSA private key (private_key_file or "
                              "private_key_env in the settings file)")
        load_private_key(self.private_key_pem)
        if self.audience is not None and not self.audience.startswith(("https://", "http://")):
            raise ConfigError(f"audience = {self.audience!r} is not a URL; set it to "
                              "https://login.salesforce.com or https://test.salesforce.com")

    @property
    def jwt_audience(self) -> str:
        """The ``aud`` claim of a JWT bearer assertion."""
        return (self.audience or self.login_url).rstrip("/")


def load_private_key(pem: str) -> RSAPrivateKey:
    """Parse an unencrypted RSA private key in PEM form, or raise ``ConfigError``."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # TypeError: the key is encrypted. The message never quotes the key.
        raise ConfigError("the private key (private_key_file or private_key_env) is not "
                          "an unencrypted PEM private key; set it to the key whose "
                          "certificate the connected app holds, decrypted "
                          "(openssl pkey -in KEY -out PLAIN)") from exc
    if not isinstance(key, RSAPrivateKey):
        raise ConfigError(f"the private key (private_key_file or private_key_env) is a "
                          f"{type(key).__name__}, but Salesforce's JWT "
                          "bearer flow signs with RS256 and needs an RSA private key")
    return key


def soql_literal(value: str | int | bool) -> str:
    """Return ``value`` as a SOQL literal, quoting and escaping strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + "".join(_SOQL_ESCAPES.get(ch, ch) for ch in value) + "'"


def like_pattern(text: str) -> str:
    """Return a LIKE literal matching ``text`` anywhere, with its own % and _ escaped."""
    escapes = {**_SOQL_ESCAPES, "%": "\\%", "_": "\\_"}
    return "'%" + "".join(escapes.get(ch, ch) for ch in text) + "%'"


def build_soql(request: FetchRequest, keys: tuple[str | int, ...]) -> str:
    """Return the SOQL text of ``request`` restricted to ``keys``."""
    clauses = []
    if request.match is not None:
        clauses.append(f"{request.match} IN ({', '.join(soql_literal(k) for k in keys)})")
    clauses.extend(_condition(c) for c in request.where)
    if request.any_of:
        clauses.append("(" + " OR ".join(_condition(c) for c in request.any_of) + ")")
    if request.after is not None:
        clauses.append(f"{request.after[0]} > {soql_literal(request.after[1])}")
    if request.search is not None:
        clauses.append(f"{request.search[0]} LIKE {like_pattern(request.search[1])}")
    soql = f"SELECT {', '.join(request.attributes)} FROM {request.entity}"
    if clauses:
        soql += " WHERE " + " AND ".join(clauses)
    terms = order_terms(request.order)
    if terms:
        soql += " ORDER BY " + ", ".join(f"{name} {'DESC' if desc else 'ASC'}"
                                         for name, desc in terms)
    if request.limit is not None:
        soql += f" LIMIT {request.limit}"
    return soql


def _condition(condition: Condition) -> str:
    if condition.operator == "in":
        assert isinstance(condition.value, tuple)
        values = ", ".join(soql_literal(v) for v in condition.value)
        return f"{condition.attribute} IN ({values})"
    assert not isinstance(condition.value, tuple)
    return f"{condition.attribute} {condition.operator} {soql_literal(condition.value)}"


class SalesforceSource:
    """Reads one Salesforce org."""

    supports_row_filters = True

    def __init__(self, name: str, settings: SalesforceSettings,
                 client: UpstreamClient | None = None) -> None:
        self.name = name
        self._settings = settings
        self._client = client or new_client(settings.timeout)
        self._signing_key = (load_private_key(settings.private_key_pem)
                             if settings.private_key_pem else None)
        self._token: tuple[str, str] | None = None  # (access token, instance URL)
        # (used, allowed) API requests from the last Sforce-Limit-Info header.
        self.api_usage: tuple[int, int] | None = None
        # When the last warning about the API usage was logged (time.monotonic()).
        self._usage_warned_at: float | None = None
        self._token_lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, request: FetchRequest) -> list[Row]:
        request = _drop_malformed_ids(request)
        if not request.visible or (request.match is not None and not request.keys):
            return []
        if is_plain_id_lookup(request):
            return await self._retrieve(request)
        chunks = self._chunks(request)
        pages = await asyncio.gather(*(self._query(request, chunk) for chunk in chunks))
        return [row for page in pages for row in page]

    # --- sObject Collections retrieve ----------------------------------------------------

    async def _retrieve(self, request: FetchRequest) -> list[Row]:
        """Read records by id, 2,000 ids per request, in the order of ``request.keys``."""
        ids = list(dict.fromkeys(str(key) for key in request.keys))
        chunks = [ids[start:start + COLLECTION_MAX_IDS]
                  for start in range(0, len(ids), COLLECTION_MAX_IDS)]
        pages = await asyncio.gather(*(self._retrieve_chunk(request, chunk)
                                       for chunk in chunks))
        rows: list[Row] = []
        seen: set[str] = set()
        for record in (record for page in pages for record in page):
            # A 15- and an 18-character form of one id return the same record twice.
            url = record.get("attributes", {}).get("url")
            if isinstance(url, str) and url in seen:
                continue
            if isinstance(url, str):
                seen.add(url)
            rows.append(_row(record, request.attributes))
        return rows

    async def _retrieve_chunk(self, request: FetchRequest,
                              ids: list[str]) -> list[dict[str, Any]]:
        what = f"{request.entity} retrieve of {len(ids)} ids"
        path = (f"/services/data/v{self._settings.api_version}/composite/sobjects/"
                f"{quote(request.entity, safe='')}")
        body = await self._call("POST", path, what,
                                json={"ids": ids, "fields": list(request.attributes)})
        if (not isinstance(body, list) or len(body) != len(ids)
                or not all(record is None or isinstance(record, dict) for record in body)):
            raise UpstreamUnavailable(self.name, f"system {self.name!r} returned an unexpected "
                                      f"JSON shape for {what}: expected one record or null "
                                      "per id")
        # Salesforce returns null for an id that does not exist or that the user cannot read.
        return [record for record in body if record is not None]

    # --- SOQL query ----------------------------------------------------------------------

    def _chunks(self, request: FetchRequest) -> list[tuple[str | int, ...]]:
        if request.match is None:
            return [()]
        base = len(quote(build_soql(request, ()))) + 200  # path, host and headers margin
        return chunk_by_size(request.keys, base, lambda key: len(quote(soql_literal(key) + ", ")),
                             MAX_URL_BYTES)

    async def _query(self, request: FetchRequest, keys: tuple[str | int, ...]) -> list[Row]:
        what = f"{request.entity} query of {len(keys)} keys"
        path = f"/services/data/v{self._settings.api_version}/query"
        body = await self._get(path, {"q": build_soql(request, keys)}, what)
        rows = [_row(record, request.attributes) for record in body.get("records", [])]
        while not body.get("done", True):
            next_url = body.get("nextRecordsUrl")
            if not isinstance(next_url, str):
                raise UpstreamUnavailable(self.name, f"system {self.name!r} answered {what} "
                                          "with done=false and no nextRecordsUrl")
            body = await self._get(next_url, None, what)
            rows.extend(_row(record, request.attributes)
                        for record in body.get("records", []))
        return rows

    async def _get(self, path: str, params: dict[str, str] | None, what: str) -> dict[str, Any]:
        body = await self._call("GET", path, what, params=params)
        if not isinstance(body, dict) or not isinstance(body.get("records", []), list):
            raise UpstreamUnavailable(self.name, f"system {self.name!r} answered {what} with "
                                      "an unexpected JSON shape")
        return body

    # --- requests and tokens -------------------------------------------------------------

    async def _call(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        """Send one data API request, and resend it once with a new token after a 401."""
        token, instance = await self._access(refresh=False)
        response = await self._send_data(method, instance + path, token, what, **kwargs)
        if response.status_code == 401:
            token, instance = await self._access(refresh=True, stale=token)
            response = await self._send_data(method, instance + path, token, what, **kwargs)
        self._read_usage(response)
        if response.status_code != 200:
            raise self._error(response, what)
        return json_body(response, self.name, what)

    async def _send_data(self, method: str, url: str, token: str, what: str,
                         **kwargs: Any) -> UpstreamResponse:
        return await send(self._client, self.name, what, method, url,
                          headers={"Authorization": f"Bearer {token}",
                                   "Accept": "application/json"}, **kwargs)

    async def _access(self, *, refresh: bool, stale: str | None = None) -> tuple[str, str]:
        async with self._token_lock:
            # Another request may have refreshed while this one waited.
            if self._token is not None and (not refresh or self._token[0] != stale):
                return self._token
            self._token = await self._request_token()
            return self._token

    async def _request_token(self) -> tuple[str, str]:
        what = "OAuth2 token request"
        url = self._settings.login_url.rstrip("/") + "/services/oauth2/token"
        response = await send(self._client, self.name, what, "POST", url,
                              data=self._grant_form())
        if response.status_code != 200:
            body = json_body(response, self.name, what) if response.content else {}
            code = body.get("error") if isinstance(body, dict) else None
            if response.status_code in (400, 401) and code in _AUTH_ERRORS:
                description = body.get("error_description") if isinstance(body, dict) else None
                raise UpstreamAuthFailed(self.name, self._rejection_message(
                    str(code), description if isinstance(description, str) else ""))
            raise status_error(self.name, what, response, str(code) if code else None)
        body = json_body(response, self.name, what)
        token, instance = body.get("access_token"), body.get("instance_url")
        if not isinstance(token, str) or not isinstance(instance, str):
            raise UpstreamUnavailable(self.name, f"system {self.name!r} answered the token "
                                      "request without access_token and instance_url")
        log.info("system %r: new access token obtained", self.name)
        return token, instance.rstrip("/")

    def _grant_form(self) -> dict[str, str]:
        settings = self._settings
        if self._signing_key is None:
            return {"grant_type": "client_credentials", "client_id": settings.client_id,
                    "client_secret": settings.client_secret}
        assert settings.username is not None  # checked by SalesforceSettings
        claims = {"iss": settings.client_id, "sub": settings.username,
                  "aud": settings.jwt_audience,
                  "exp": int(time.time()) + JWT_LIFETIME_SECONDS}
        assertion = jwt.encode(claims, self._signing_key, algorithm="RS256")
        return {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}

    def _rejection_message(self, code: str, description: str) -> str:
        """Build the message naming the settings to check, without the vendor's description."""
        if self._signing_key is None:
            return (f"system {self.name!r} rejected the gateway's OAuth2 client credentials "
                    f"({code}); check its client_id and client_secret settings")
        lowered = description.lower()
        hint = next((hint for word, hint in _JWT_REJECTION_HINTS if word in lowered),
                    _JWT_FALLBACK_HINT)
        return (f"system {self.name!r} rejected the gateway's JWT bearer assertion ({code}); "
                f"check its {hint}")

    def _read_usage(self, response: UpstreamResponse) -> None:
        """Keep the org's API usage from ``Sforce-Limit-Info: api-usage=N/M``."""
        match = _API_USAGE.search(response.headers.get("sforce-limit-info", ""))
        if match is None:
            return
        self.api_usage = (int(match.group(1)), int(match.group(2)))
        if self.api_usage[0] < 0.9 * self.api_usage[1]:
            self._usage_warned_at = None
            return
        # Every response carries the header, so past 90 % the warning would repeat
        # on each call. It is logged once, then again only after the interval.
        now = time.monotonic()
        last = self._usage_warned_at
        if last is None or now - last >= USAGE_WARNING_INTERVAL:
            self._usage_warned_at = now
            log.warning("system %r has used %d of its %d daily API requests", self.name,
                        *self.api_usage)

    def _error(self, response: UpstreamResponse, what: str) -> UpstreamError:
        code = _error_code(response)
        if response.status_code in (414, 431):
            return UpstreamRejected(self.name, f"system {self.name!r} rejected {what} as too "
                                    f"long (HTTP {response.status_code})")
        if response.status_code == 400:
            return UpstreamRejected(self.name, f"system {self.name!r} rejected {what} ({code}); "
                                    "check the schema declaration's attribute names")
        if response.status_code == 404:
            # NOT_FOUND: the sObject type or API version in the URL does not exist.
            return UpstreamRejected(self.name, f"system {self.name!r} rejected {what} (HTTP 404 "
                                    f"{code}); check the schema declaration's entity names and "
                                    "the api_version setting")
        return status_error(self.name, what, response, code)


def is_plain_id_lookup(request: FetchRequest) -> bool:
    """Return whether ``request`` only reads records by id, so Collections retrieve serves it."""
    return (request.match == "Id" and not request.where and not request.any_of
            and request.after is None and request.search is None and not request.order
            and request.limit is None)


def _is_id_attribute(name: str) -> bool:
    return name == "Id" or name.endswith("Id")


def _drop_malformed_ids(request: FetchRequest) -> FetchRequest:
    """Return ``request`` without id values that cannot be record ids.

    Salesforce rejects the whole query for one malformed id, while such a
    value simply matches no record: a client's typo must read as "not
    found", and a row rule comparing an id field with a claim that is no
    Salesforce id admits no record rather than failing the query.
    """
    if request.match is not None and _is_id_attribute(request.match):
        keys = tuple(k for k in request.keys if isinstance(k, str) and _RECORD_ID.match(k))
        if len(keys) != len(request.keys):
            request = replace(request, keys=keys)
    if request.any_of:
        kept = tuple(c for c in request.any_of if not _is_id_attribute(c.attribute)
                     or (isinstance(c.value, str) and _RECORD_ID.match(c.value)))
        if len(kept) != len(request.any_of):
            request = replace(request, any_of=kept, visible=bool(kept))
    return request


def _error_code(response: UpstreamResponse) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, list) and body and isinstance(body[0], dict):
        code = body[0].get("errorCode")
        return str(code) if code else None
    return None


def _row(record: dict[str, Any], attributes: tuple[str, ...]) -> Row:
    """Return a record without its ``attributes`` annotation. An omitted field reads as None."""
    row = {key: value for key, value in record.items() if key != "attributes"}
    for name in attributes:
        row.setdefault(name, None)
    return row
