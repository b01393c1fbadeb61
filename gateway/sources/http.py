"""HTTP plumbing shared by the dialects: one place maps the clients' errors.

Every httpx and aiohttp exception becomes an ``UpstreamError`` here, so no
dialect lets a library error escape and no upstream text reaches a client.
Messages name the system, the entity and the key count, never keys or
values.
"""

from __future__ import annotations

import email.utils
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import httpx
import orjson

from gateway.errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.sources.aiohttp_client import httpx_error_class

if TYPE_CHECKING:
    from gateway.sources.client import UpstreamClient

log = logging.getLogger("gateway.upstream")

# httpx logs every request URL at INFO, and a Salesforce query URL carries
# SOQL literals such as a searched company name. The gateway logs its own
# upstream line without values instead, so these loggers stay at WARNING.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)


# Translation table from every digit to b"0" and from every byte that may
# come just before a JSON number to b":". After it, one substring search
# finds a number that may have 19 or more digits.
_NUMBER_SHAPE = bytes.maketrans(b"123456789,[- \n\t\r", b"000000000:::::::")
_LONG_NUMBER = b":" + b"0" * 19


class UpstreamResponse(Protocol):
    """A complete response of either client: ``httpx.Response`` or ``AiohttpResponse``."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    def json(self) -> Any: ...


async def send(client: UpstreamClient, system: str, what: str, method: str, url: str,
               **kwargs: Any) -> UpstreamResponse:
    """Send one request; map transport failures to the gateway's errors.

    An aiohttp error is named by the httpx class of the same failure, so the
    message is the same on both clients.
    """
    try:
        return await client.request(method, url, **kwargs)
    except (httpx.TimeoutException, TimeoutError) as exc:
        # aiohttp's timeouts (ServerTimeoutError and its subclasses) are TimeoutErrors.
        raise UpstreamTimeout(system, f"system {system!r} timed out on {what}") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable(
            system, f"system {system!r} could not be reached for {what}: "
            f"{httpx_error_class(type(exc)).__name__}") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise UpstreamUnavailable(
            system, f"system {system!r} could not be reached for {what}: {type(exc).__name__}"
        ) from exc


def json_body(response: UpstreamResponse, system: str, what: str) -> Any:
    """Return the decoded JSON body or raise ``UpstreamUnavailable`` naming the fault.

    orjson decodes UTF-8 bodies. A body it rejects goes through the standard
    decoder, as ``response.json()`` does, which also reads UTF-16 and UTF-32,
    and NaN and Infinity. orjson 3.13 turns an integer of more than 64 bits
    into a float, so a body that may hold one also goes to the standard
    decoder, which keeps the exact integer.
    """
    content = response.content
    if not _may_hold_long_integer(content):
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UpstreamUnavailable(
            system, f"system {system!r} answered {what} with HTTP {response.status_code} and a "
            "body that is not JSON") from exc


def _may_hold_long_integer(content: bytes) -> bool:
    """Return whether a number token in ``content`` may have 19 or more digits.

    A string with such digits after one of the number's leading bytes also
    counts, which only sends that body to the slower standard decoder.
    """
    return _LONG_NUMBER in b":" + content.translate(_NUMBER_SHAPE)


def status_error(system: str, what: str, response: UpstreamResponse,
                 code: str | None = None) -> UpstreamError:
    """Return the error for a failed HTTP status; ``code`` is the vendor's error code."""
    detail = f" ({code})" if code else ""
    message = f"system {system!r} answered HTTP {response.status_code}{detail} for {what}"
    if response.status_code in (408, 504):
        return UpstreamTimeout(system, message)
    if response.status_code == 429 or code == "REQUEST_LIMIT_EXCEEDED":
        return UpstreamRateLimited(system, message, retry_after(response))
    return UpstreamUnavailable(system, message)


def retry_after(response: UpstreamResponse) -> float | None:
    """Return the delay a ``Retry-After`` header asks for, in seconds (RFC 9110 10.2.3)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())
