"""HTTP transport: cross-origin callers, trusted proxies, media types and tokens in URLs.

CORS: a browser page from another origin may call the gateway only when its
origin is in ``cors_origins``; the default allows none. Credentials
(cookies) are never allowed, because the gateway reads only the bearer
token of the ``Authorization`` header.

Client address: ``X-Forwarded-For`` is read only when the TCP peer is in
``trusted_proxies``. The header is walked from the right, past entries that
are themselves trusted proxies, and the first other address is the client.
So a client cannot forge its address by sending the header itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from gateway.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Media type of GraphQL responses in the GraphQL over HTTP working draft.
GRAPHQL_RESPONSE_TYPE = "application/graphql-response+json"
_ACCEPTED_RESPONSE_TYPES = frozenset({"application/json", GRAPHQL_RESPONSE_TYPE,
                                      "application/*", "*/*"})
# Query parameters that would put a bearer token into the URL.
_TOKEN_PARAMETERS = frozenset({"access_token", "token", "id_token", "authorization", "jwt"})
TOKEN_IN_URL_MESSAGE = ("a token in the URL is not accepted, because URLs are logged and kept "
                        "in browser history; send it in the header 'Authorization: Bearer <JWT>'")

CORS_ALLOWED_HEADERS = ("Authorization", "Content-Type", "Fonte-Purpose")
CORS_MAX_AGE_SECONDS = 600


@dataclass(frozen=True)
class HttpSettings:
    """The ``[http]`` section: allowed browser origins and trusted reverse proxies."""

    cors_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()


def http_settings_from_table(table: Mapping[str, Any]) -> HttpSettings:
    """Read the ``[http]`` section of the settings file."""
    unknown = sorted(set(table) - {"cors_origins", "trusted_proxies"})
    if unknown:
        raise ConfigError(f"[http] {unknown[0]} is not a setting; use cors_origins or "
                          "trusted_proxies")
    origins = _string_list("cors_origins", table.get("cors_origins", []),
                           '["https://crm.example.com"]')
    proxies = _string_list("trusted_proxies", table.get("trusted_proxies", []),
                           '["10.0.0.0/8", "192.0.2.7"]')
    return HttpSettings(cors_origins=tuple(_origin(o) for o in origins),
                        trusted_proxies=tuple(_network(p) for p in proxies))


def cors_middleware(settings: HttpSettings) -> list[Middleware]:
    """Return the CORS middleware for the allowed origins; none when no origin is allowed."""
    if not settings.cors_origins:
        return []
    return [Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                       allow_methods=["POST"], allow_headers=list(CORS_ALLOWED_HEADERS),
                       allow_credentials=False, expose_headers=["X-Request-ID", "Retry-After"],
                       max_age=CORS_MAX_AGE_SECONDS)]


def client_address(peer: str | None, forwarded_for: Sequence[str],
                   trusted: Sequence[Network]) -> str | None:
    """Return the client's IP address from the TCP peer and its ``X-Forwarded-For`` headers.

    ``forwarded_for`` contains every ``X-Forwarded-For`` header value in the
    order received. An entry that is not an IP address ends the walk, and the
    last trusted hop before it is returned.
    """
    current = _address(peer)
    if current is None:
        return None
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    while _is_trusted(current, trusted) and hops:
        previous = _address(hops.pop())
        if previous is None:
            break
        current = previous
    return str(current)


def token_in_url(parameter_names: Iterable[str]) -> bool:
    """Return whether a query parameter name is one that carries a token."""
    return any(name.lower() in _TOKEN_PARAMETERS for name in parameter_names)


def acceptable(accept: str) -> bool:
    """Return whether an ``Accept`` header admits a JSON response."""
    return bool(_media_types(accept) & _ACCEPTED_RESPONSE_TYPES)


def response_media_type(accept: str | None) -> str:
    """Return the GraphQL response media type when ``accept`` names it, else JSON."""
    if accept is not None and GRAPHQL_RESPONSE_TYPE in _media_types(accept):
        return GRAPHQL_RESPONSE_TYPE
    return "application/json"


def content_charset(parameters: str) -> str | None:
    """Return the lowercase ``charset`` of the parameters after a Content-Type's media type."""
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def _media_types(accept: str) -> set[str]:
    return {part.split(";")[0].strip().lower() for part in accept.split(",")}


def _is_trusted(address: IPAddress, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)


def _address(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _string_list(name: str, value: Any, example: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"[http] {name} = {value!r} must be a list of strings, such as "
                          f"{example}")
    return value


def _origin(value: str) -> str:
    parts = urlsplit(value)
    if value == "*" or parts.scheme not in ("http", "https") or not parts.hostname or (
            parts.path not in ("", "/") or parts.query or parts.fragment or "*" in value):
        raise ConfigError(f"[http] cors_origins entry {value!r} is not an origin; write each "
                          "allowed origin in full as scheme://host[:port], such as "
                          "https://crm.example.com (wildcards are not accepted)")
    return value.rstrip("/").lower()


def _network(value: str) -> Network:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ConfigError(f"[http] trusted_proxies entry {value!r} is not an IP address or "
                          "CIDR network, such as 10.0.0.0/8 or 192.0.2.7") from exc
