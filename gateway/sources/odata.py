"""The OData core shared by the Dataverse (OData 4.0) and SAP (OData 2.0) dialects.

A read becomes ``GET <entity set>?$select=...&$filter=...``. Neither OData
4.0 nor 2.0 has an ``in`` operator, so keys travel as an ``or`` chain
(``id eq 1 or id eq 2``), split into chunks so no GET URL passes the
dialect's cap. A read that needs more than one chunk sends the chunks as
GETs inside ``$batch`` POSTs. Each response is followed through its
next-page links, absolute or relative to the service root. Rows keep
exactly the selected attributes, so the primary key and annotations a
server always adds are dropped, and a selected attribute the server left
out reads as None.
"""

from __future__ import annotations

import asyncio
import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urljoin

from gateway.catalog import Condition
from gateway.errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest, Row, chunk_by_size, order_terms
from gateway.sources.client import UpstreamClient
from gateway.sources.http import UpstreamResponse, json_body, retry_after, status_error
from gateway.sources.odata_batch import batch_boundary, decode_batch, encode_batch, new_boundary

log = logging.getLogger("gateway.upstream")

# A vendor error code is kept in messages only if it has this shape, because
# the vendor's message text may quote record values.
_SAFE_CODE = re.compile(r"[A-Za-z0-9_/.:#-]{1,80}")
_PATH_BYTES = 300  # margin for the host, headers and the service path in front of the query


@dataclass(frozen=True)
class Flavour:
    """The URL and ``$batch`` limits of one OData dialect."""

    version: Literal["4.0", "2.0"]
    max_url_bytes: int
    max_batch_parts: int


def literal(value: str | int | bool) -> str:
    """Return ``value`` as an OData literal: strings quoted with ``'`` doubled, ints bare.

    The schema's conditions and keys hold only strings, ints and booleans, so
    no decimal (``12.5M`` in 2.0) or date literal is ever needed.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def filter_text(request: FetchRequest, keys: tuple[str | int, ...],
                version: Literal["4.0", "2.0"]) -> str:
    """Return the ``$filter`` expression of ``request`` restricted to ``keys``, or ''."""
    clauses = []
    if request.match is not None:
        clauses.append(_any_equal(request.match, keys))
    clauses.extend(_condition(c) for c in request.where)
    if request.any_of:
        clauses.append(" or ".join(_condition(c) for c in request.any_of))
    if request.after is not None:
        clauses.append(f"{request.after[0]} gt {literal(request.after[1])}")
    if request.search is not None:
        attribute, text = request.search
        needle = literal(text.lower())
        if version == "4.0":
            clauses.append(f"contains(tolower({attribute}),{needle})")
        else:
            clauses.append(f"substringof({needle},tolower({attribute})) eq true")
    if len(clauses) == 1:
        return clauses[0]
    return " and ".join(f"({clause})" for clause in clauses)


def _any_equal(attribute: str, values: tuple[str | int, ...]) -> str:
    return " or ".join(f"{attribute} eq {literal(value)}" for value in values)


def _condition(condition: Condition) -> str:
    if condition.operator == "in":
        assert isinstance(condition.value, tuple)
        return f"({_any_equal(condition.attribute, condition.value)})"
    assert not isinstance(condition.value, tuple)
    operator = "eq" if condition.operator == "=" else "ne"
    return f"{condition.attribute} {operator} {literal(condition.value)}"


def query_string(options: dict[str, str]) -> str:
    """Return ``options`` as a query string, percent-encoding every reserved character."""
    return "&".join(f"{name}={quote(value, safe='')}" for name, value in options.items())


def query_options(request: FetchRequest, keys: tuple[str | int, ...],
                  version: Literal["4.0", "2.0"]) -> dict[str, str]:
    """Return the system query options of one read, without dialect-specific extras."""
    options = {"$select": ",".join(request.attributes)}
    expression = filter_text(request, keys, version)
    if expression:
        options["$filter"] = expression
    terms = order_terms(request.order)
    if terms:
        options["$orderby"] = ",".join(f"{name} {'desc' if descending else 'asc'}"
                                       for name, descending in terms)
    return options


def chunk_keys(request: FetchRequest, max_bytes: int,
               version: Literal["4.0", "2.0"]) -> list[tuple[str | int, ...]]:
    """Split the keys of ``request`` so that no chunk's query string passes ``max_bytes``."""
    if request.match is None:
        return [()]
    base = len(query_string(query_options(request, (), version))) + _PATH_BYTES
    return chunk_by_size(
        request.keys, base,
        lambda key: len(quote(f"{request.match} eq {literal(key)} or ", safe="")), max_bytes)


def project(record: dict[str, Any], attributes: tuple[str, ...]) -> Row:
    """Return the selected attributes of ``record``; a missing one reads as None."""
    return {name: record.get(name) for name in attributes}


def error_code(code: Any) -> str | None:
    """Return a vendor error code if it is safe to put in a message."""
    if isinstance(code, str) and _SAFE_CODE.fullmatch(code):
        return code
    return None


class ODataSource(ABC):
    """Chunking, paging and ``$batch`` of an OData read; subclasses add the dialect."""

    name: str
    flavour: Flavour
    supports_row_filters = True

    def __init__(self, name: str, client: UpstreamClient) -> None:
        self.name = name
        self._client = client

    async def aclose(self) -> None:
        await self._client.aclose()

    @abstractmethod
    def service_url(self) -> str:
        """Return the service root URL, ending in ``/``."""

    @abstractmethod
    def read_options(self, request: FetchRequest) -> dict[str, str]:
        """Return the dialect's extra query options, such as ``$top`` or ``$format``."""

    @abstractmethod
    async def get(self, url: str, request: FetchRequest, what: str) -> UpstreamResponse:
        """Send one authenticated GET and return a 200 response or raise the mapped error."""

    @abstractmethod
    async def post_batch(self, body: bytes, boundary: str, what: str) -> UpstreamResponse:
        """Send one authenticated ``$batch`` POST and return a 200 response or raise."""

    @abstractmethod
    def batch_part_headers(self, request: FetchRequest) -> dict[str, str]:
        """Return the headers each GET inside a batch carries."""

    @abstractmethod
    def page(self, body: Any, what: str) -> tuple[list[dict[str, Any]], str | None]:
        """Return the records of a decoded response body and its next-page URL."""

    @abstractmethod
    def convert(self, row: Row) -> Row:
        """Return ``row`` with the dialect's wire values turned into the gateway's."""

    @abstractmethod
    def error(self, response: UpstreamResponse, what: str) -> UpstreamError:
        """Return the error for a failed response, naming no upstream text."""

    async def fetch(self, request: FetchRequest) -> list[Row]:
        if not request.visible or (request.match is not None and not request.keys):
            return []
        if not request.attributes:
            raise UpstreamRejected(self.name, f"refusing to read {request.entity} without "
                                   "attributes: OData would return every property")
        chunks = chunk_keys(request, self.flavour.max_url_bytes, self.flavour.version)
        if len(chunks) == 1:
            what = f"{request.entity} read of {len(chunks[0])} keys"
            response = await self.get(self.service_url() + self._target(request, chunks[0]),
                                      request, what)
            return await self._read_pages(request, response, what)
        size = self.flavour.max_batch_parts
        batches = [chunks[i:i + size] for i in range(0, len(chunks), size)]
        results = await asyncio.gather(*(self._read_batch(request, b) for b in batches))
        return [row for rows in results for row in rows]

    def _target(self, request: FetchRequest, keys: tuple[str | int, ...]) -> str:
        options = query_options(request, keys, self.flavour.version)
        options.update(self.read_options(request))
        return f"{quote(request.entity, safe='')}?{query_string(options)}"

    async def _read_batch(self, request: FetchRequest,
                          chunks: list[tuple[str | int, ...]]) -> list[Row]:
        keys = sum(len(chunk) for chunk in chunks)
        what = f"{request.entity} $batch of {len(chunks)} reads and {keys} keys"
        boundary = new_boundary()
        body = encode_batch(boundary, [self._target(request, c) for c in chunks],
                            self.batch_part_headers(request))
        response = await self.post_batch(body, boundary, what)
        answer_boundary = batch_boundary(response.headers.get("content-type", ""))
        parts = None
        if answer_boundary is not None:
            parts = decode_batch(response.content, answer_boundary)
        if parts is None or len(parts) != len(chunks):
            raise UpstreamUnavailable(self.name, f"system {self.name!r} responded to {what} with "
                                      "a body that is not a multipart batch response of "
                                      f"{len(chunks)} parts")
        rows: list[Row] = []
        for part in parts:
            if part.status_code != 200:
                raise self.error(part, what)
            rows.extend(await self._read_pages(request, part, what))
        return rows

    async def _read_pages(self, request: FetchRequest, response: UpstreamResponse,
                          what: str) -> list[Row]:
        records, next_url = self.page(json_body(response, self.name, what), what)
        rows = [self.convert(project(r, request.attributes)) for r in records]
        seen = set()
        while next_url is not None and not _reached(rows, request.limit):
            # A next-page link may be relative to the service root: SAP CAP writes
            # "accounts?$skiptoken=100", where Dataverse writes an absolute URL.
            next_url = urljoin(self.service_url(), next_url)
            if next_url in seen:
                raise UpstreamUnavailable(self.name, f"system {self.name!r} responded to {what} "
                                          "with a next-page link that repeats an earlier one")
            seen.add(next_url)
            response = await self.get(next_url, request, what)
            records, next_url = self.page(json_body(response, self.name, what), what)
            rows.extend(self.convert(project(r, request.attributes)) for r in records)
        if request.limit is not None:
            del rows[request.limit:]
        return rows


def _reached(rows: list[Row], limit: int | None) -> bool:
    return limit is not None and len(rows) >= limit


def generic_error(system: str, response: UpstreamResponse, what: str,
                  code: str | None) -> UpstreamError:
    """Return the error for the statuses that every OData dialect returns alike."""
    status = response.status_code
    detail = f" ({code})" if code else ""
    if status in (414, 431):
        return UpstreamRejected(system, f"system {system!r} rejected {what} as too long "
                                f"(HTTP {status}); lower the dialect's URL cap")
    if status == 413:
        # NOTE: a $batch body is bounded only by max_batch_parts, so a server
        # with a small body limit (SAP CAP's default is 100 KB) rejects it.
        return UpstreamRejected(system, f"system {system!r} rejected {what} as too large "
                                f"(HTTP 413); raise the system's request body limit")
    if status in (400, 404, 405, 501):
        return UpstreamRejected(system, f"system {system!r} rejected {what} (HTTP {status}"
                                f"{detail}); check the entity and attribute names in the "
                                "schema and in the system's entities mapping")
    if status == 503 and "retry-after" in response.headers:
        # Dataverse and SAP may respond to an overload with 503 and a delay, like a 429.
        return UpstreamRateLimited(system, f"system {system!r} responded with HTTP 503{detail} to "
                                   f"{what}", retry_after(response))
    return status_error(system, what, response, code)
