"""Generic REST/JSON dialect: a home-grown system described in settings, not in code.

Each entity is a collection at ``<base_url>/<path>`` read with GET. Keys go
in a query parameter, either joined (``ids=1,2,3``) or repeated
(``ids=1&ids=2``): the ids parameter when the read matches the entity's key
field, or a declared filter parameter (such as ``customer_id``) when it
matches another attribute. Keys are split into chunks of at most
``max_ids`` whose URL stays under ``max_url_bytes``, and the chunks are read
concurrently, ``parallel_requests`` at a time. The attributes travel in the
field-selection parameter when the API has one. The rows are the list at a
dotted envelope path of each response body (``data``, ``result.items``),
and further pages follow one of four rules: a next-page link, a cursor
parameter, an offset, or a page number.

What a plain REST API cannot express is done here after reading:
conditions on attributes without a declared filter parameter, ``!=``
conditions, the cursor and search of a root list, and the limit. The order
is sent when the API has a sort parameter, and the rows are sorted here
in any case.
Row rules (``FetchRequest.any_of``) are left to the fetcher, which filters
after reading. Rows keep exactly the requested attributes. A JSON ``null``
or a missing attribute reads as None, and ``false`` stays ``False``,
because in plain JSON it is a value and not an empty one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import quote, urljoin, urlsplit

from gateway.catalog import Condition
from gateway.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest, Row, chunk_by_size, matches, order_terms
from gateway.sources.client import UpstreamClient, new_client
from gateway.sources.http import UpstreamResponse, json_body, retry_after, send, status_error
from gateway.sources.mapping import EntityMap
from gateway.sources.odata import error_code

log = logging.getLogger("gateway.upstream")

PagingStyle = Literal["none", "next_link", "cursor", "offset", "page"]
PAGING_STYLES: tuple[PagingStyle, ...] = ("none", "next_link", "cursor", "offset", "page")
# A bound that stops an upstream which pages forever (a cursor that never
# ends, a page parameter it ignores), not a tuned limit.
MAX_PAGES = 10_000
# Room in a URL for the paging parameters that later pages add to the first URL.
# NOTE: an estimate. A cursor longer than about 180 bytes can still push a
# later page's URL past max_url_bytes, and a next-page link is used as sent.
_PAGING_MARGIN = 200


@dataclass(frozen=True)
class Paging:
    """The paging rule that reads a collection past its first page.

    ``style`` is one of ``PAGING_STYLES``. ``next_link``: the body contains
    the URL of the next page at the dotted ``next_path``. ``cursor``: the
    body contains a cursor at ``cursor_path``, sent back in ``cursor_param``.
    ``offset``: ``offset_param`` counts the rows already read. ``page``:
    ``page_param`` counts pages from ``first_page``. ``page_size`` rows per
    page are asked for in ``size_param`` (None: not sent). Offset and page
    reads stop at the first page shorter than ``page_size``.
    """

    style: PagingStyle = "none"
    page_size: int = 100
    size_param: str | None = "limit"
    next_path: str = "links.next"
    cursor_param: str = "cursor"
    cursor_path: str = "meta.next_cursor"
    offset_param: str = "offset"
    page_param: str = "page"
    first_page: int = 1


@dataclass(frozen=True)
class Resource:
    """Read settings of one entity: its collection path, key, parameters and envelope.

    ``path`` is relative to the system's base URL. ``key`` is the field that
    ``ids_param`` matches. ``ids_repeat`` repeats the parameter once per key
    in place of joining the keys with ``ids_separator``. ``filters`` maps an
    attribute, in the system's names, to the query parameter that matches
    it with the same syntax as ``ids_param``. ``fields_param`` is None when
    the API returns every field. ``sort_param`` takes the order as
    ``field,-field`` (``-`` for descending), or is None when the API cannot
    sort. ``rows_path`` is the dotted path of the row list in a response
    body, empty when the body is the list itself.
    """

    path: str
    key: str = "id"
    ids_param: str = "ids"
    ids_separator: str = ","
    ids_repeat: bool = False
    max_ids: int = 100
    max_url_bytes: int = 8000
    fields_param: str | None = "fields"
    sort_param: str | None = None
    rows_path: str = "data"
    filters: Mapping[str, str] = field(default_factory=dict)
    paging: Paging = field(default_factory=Paging)


@dataclass(frozen=True)
class RestSettings:
    """Connection settings of one REST/JSON system.

    ``resources`` maps the system's entity name to how it is read, and
    ``default`` serves any other entity with its name as the path.
    ``entities`` maps the schema's names onto the system's names.
    ``auth_header`` is the header name and value sent with every request,
    such as ``("Authorization", "Bearer ...")``, or None for an API without
    authentication. ``auth_setting`` names the setting it came from, for
    error messages.
    """

    base_url: str
    resources: Mapping[str, Resource] = field(default_factory=dict)
    default: Resource = field(default_factory=lambda: Resource(path=""))
    entities: Mapping[str, EntityMap] = field(default_factory=dict)
    auth_header: tuple[str, str] | None = field(default=None, repr=False)
    auth_setting: str = "token"
    timeout: float = 10.0
    parallel_requests: int = 4


@dataclass(frozen=True)
class _Plan:
    """One read split into what the API is sent and what the gateway does after."""

    resource: Resource
    url: str
    params: list[tuple[str, str]]
    key_param: str | None
    local: tuple[Condition, ...]
    fields: tuple[str, ...]
    sorted_upstream: bool


class RestSource:
    """Reads one REST/JSON system as its settings describe."""

    supports_row_filters = False

    def __init__(self, name: str, settings: RestSettings,
                 client: UpstreamClient | None = None) -> None:
        self.name = name
        self._settings = settings
        self._client = client or new_client(settings.timeout)
        self._slots = asyncio.Semaphore(settings.parallel_requests)
        self._origin = _origin(settings.base_url)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, request: FetchRequest) -> list[Row]:
        if not request.visible or (request.match is not None and not request.keys):
            return []
        if not request.attributes:
            raise UpstreamRejected(self.name, f"rejected a read of {request.entity} without "
                                   "attributes, because the API would return every field")
        plan = self._plan(request)
        chunks = self._chunks(request, plan)
        results = await asyncio.gather(*(self._read_chunk(request, plan, chunk)
                                         for chunk in chunks))
        rows = [row for chunk_rows in results for row in chunk_rows]
        rows = _finish(rows, request, plan.local)
        return [{name: row.get(name) for name in request.attributes} for row in rows]

    def _plan(self, request: FetchRequest) -> _Plan:
        resource = self._settings.resources.get(request.entity)
        if resource is None:
            resource = replace(self._settings.default, path=request.entity)
        key_param = None
        if request.match is not None:
            key_param = self._key_param(request, resource)

        params, local = _split_conditions(request.where, resource)

        # The gateway filters and sorts by these attributes after reading, so they
        # are read with the requested ones.
        terms = order_terms(request.order)
        needed = [*request.attributes]
        needed += [condition.attribute for condition in local]
        needed += [name for name, _descending in terms]
        needed += [pair[0] for pair in (request.after, request.search) if pair is not None]
        fields = tuple(dict.fromkeys(needed))
        if resource.fields_param is not None:
            params.append((resource.fields_param, ",".join(fields)))

        if resource.sort_param is not None and terms:
            params.append((resource.sort_param, ",".join(
                f"-{name}" if descending else name for name, descending in terms)))
        url = f"{self._settings.base_url.rstrip('/')}/{quote(resource.path.strip('/'))}"
        return _Plan(resource, url, params, key_param, tuple(local), fields,
                     sorted_upstream=resource.sort_param is not None)

    def _key_param(self, request: FetchRequest, resource: Resource) -> str:
        assert request.match is not None
        if request.match == resource.key:
            return resource.ids_param
        parameter = resource.filters.get(request.match)
        if parameter is None:
            raise UpstreamRejected(
                self.name, f"system {self.name!r} has no filter parameter for {request.entity} "
                f"attribute {request.match!r}; declare it in the entity's filters setting, "
                f"such as filters = {{ {request.match} = \"{request.match}\" }}")
        return parameter

    def _chunks(self, request: FetchRequest, plan: _Plan) -> list[tuple[str | int, ...]]:
        if plan.key_param is None:
            return [()]
        resource = plan.resource
        base = len(plan.url) + 1 + len(_query(plan.params)) + _PAGING_MARGIN
        if resource.ids_repeat:
            def cost(key: str | int) -> int:
                return len(quote(plan.key_param or "", safe="")) + 2 + len(_quoted(key))
        else:
            base += len(quote(plan.key_param, safe="")) + 2
            separator = len(_quoted(resource.ids_separator))

            def cost(key: str | int) -> int:
                return len(_quoted(key)) + separator
        return chunk_by_size(request.keys, base, cost, resource.max_url_bytes,
                             max_keys=resource.max_ids)

    async def _read_chunk(self, request: FetchRequest, plan: _Plan,
                          keys: tuple[str | int, ...]) -> list[dict[str, Any]]:
        resource = plan.resource
        what = f"{request.entity} read of {len(keys)} keys"
        params = []
        if plan.key_param is not None:
            params += _key_params(resource, plan.key_param, keys)
        params += plan.params
        paging = resource.paging
        if paging.style != "none" and paging.size_param is not None:
            params.append((paging.size_param, str(paging.page_size)))
        early_stop = request.limit if _first_rows_suffice(request, plan) else None
        async with self._slots:
            return await self._read_pages(plan, params, what, early_stop)

    async def _read_pages(self, plan: _Plan, params: list[tuple[str, str]], what: str,
                          early_stop: int | None) -> list[dict[str, Any]]:
        paging = plan.resource.paging
        first = params
        if paging.style == "page":
            first = [*params, (paging.page_param, str(paging.first_page))]
        url = f"{plan.url}?{_query(first)}"
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number in range(MAX_PAGES):
            body = await self._get(url, what)
            page = self._rows(body, plan.resource, what)
            rows.extend(page)
            if early_stop is not None and len(rows) >= early_stop:
                return rows
            following = self._next_url(plan, params, body, page, number, what)
            if following is None:
                return rows
            if following in seen:
                raise UpstreamUnavailable(self.name, f"system {self.name!r} responded to {what} "
                                          "with a next page that repeats an earlier one")
            seen.add(following)
            url = following
        raise UpstreamUnavailable(self.name, f"system {self.name!r} returned more than "
                                  f"{MAX_PAGES} pages for {what}; check the paging settings")

    def _next_url(self, plan: _Plan, params: list[tuple[str, str]], body: Any,
                  page: list[dict[str, Any]], number: int, what: str) -> str | None:
        paging = plan.resource.paging
        if paging.style == "next_link":
            link = _at_path(body, paging.next_path)
            if not isinstance(link, str) or not link:
                return None
            absolute = urljoin(plan.url, link)
            if _origin(absolute) != self._origin:
                raise UpstreamUnavailable(
                    self.name, f"system {self.name!r} responded to {what} with a next-page "
                    "link to another host; the gateway sends its credentials only to base_url")
            return absolute
        if paging.style == "cursor":
            cursor = _at_path(body, paging.cursor_path)
            if cursor is None or cursor == "":
                return None
            return f"{plan.url}?{_query([*params, (paging.cursor_param, str(cursor))])}"
        if paging.style in ("offset", "page") and len(page) >= paging.page_size:
            if paging.style == "offset":
                position = (paging.offset_param, str((number + 1) * paging.page_size))
            else:
                position = (paging.page_param, str(paging.first_page + number + 1))
            return f"{plan.url}?{_query([*params, position])}"
        return None

    async def _get(self, url: str, what: str) -> Any:
        headers = {"Accept": "application/json"}
        if self._settings.auth_header is not None:
            name, value = self._settings.auth_header
            headers[name] = value
        response = await send(self._client, self.name, what, "GET", url, headers=headers)
        if response.status_code != 200:
            raise self._error(response, what)
        return json_body(response, self.name, what)

    def _rows(self, body: Any, resource: Resource, what: str) -> list[dict[str, Any]]:
        rows = _at_path(body, resource.rows_path)
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            where = f"at {resource.rows_path!r}" if resource.rows_path else "as its body"
            raise UpstreamUnavailable(self.name, f"system {self.name!r} responded to {what} "
                                      f"without a list of records {where}; check the "
                                      "entity's rows_path setting")
        return rows

    def _error(self, response: UpstreamResponse, what: str) -> UpstreamError:
        status = response.status_code
        code = _error_code(response)
        detail = f" ({code})" if code else ""
        if status in (401, 403):
            return UpstreamAuthFailed(self.name, f"system {self.name!r} rejected the gateway's "
                                      f"credentials (HTTP {status}{detail}) for {what}; check "
                                      f"its {self._settings.auth_setting} setting")
        if status in (414, 431):
            return UpstreamRejected(self.name, f"system {self.name!r} rejected {what} as too "
                                    f"long (HTTP {status}); lower the entity's max_url_bytes "
                                    "or max_ids setting")
        if status in (400, 404, 405, 422):
            return UpstreamRejected(self.name, f"system {self.name!r} rejected {what} (HTTP "
                                    f"{status}{detail}); check the entity's path, filters and "
                                    "attribute names in the system's settings")
        if status == 503 and "retry-after" in response.headers:
            return UpstreamRateLimited(self.name, f"system {self.name!r} responded with HTTP "
                                       f"503{detail} to {what}", retry_after(response))
        return status_error(self.name, what, response, code)


def _split_conditions(conditions: tuple[Condition, ...], resource: Resource
                      ) -> tuple[list[tuple[str, str]], list[Condition]]:
    """Return the query parameters of the conditions the API can filter by, and the others.

    An ``=`` or ``in`` condition on an attribute with a declared filter
    parameter is sent. The API has no syntax for ``!=``, so it stays local.
    """
    pushed: list[tuple[str, str]] = []
    local: list[Condition] = []
    for condition in conditions:
        parameter = resource.filters.get(condition.attribute)
        if parameter is None or condition.operator == "!=":
            local.append(condition)
            continue
        values = condition.value if isinstance(condition.value, tuple) else (condition.value,)
        pushed.extend(_key_params(resource, parameter, values))
    return pushed, local


def _key_params(resource: Resource, parameter: str,
                values: tuple[str | int | bool, ...]) -> list[tuple[str, str]]:
    texts = [_text(value) for value in values]
    if resource.ids_repeat:
        return [(parameter, text) for text in texts]
    return [(parameter, resource.ids_separator.join(texts))]


def _text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _quoted(value: str | int) -> str:
    return quote(str(value), safe="")


def _query(params: list[tuple[str, str]]) -> str:
    """Return ``params`` as a query string; commas stay literal, as list parameters expect."""
    return "&".join(f"{quote(name, safe='')}={quote(value, safe=',')}" for name, value in params)


def _at_path(body: Any, path: str) -> Any:
    """Return the value at the dotted ``path`` of ``body``, or None where a step is missing."""
    value = body
    for step in path.split(".") if path else ():
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _error_code(response: UpstreamResponse) -> str | None:
    """Return a safe ``error.code`` or ``code`` of an error body, the usual REST shapes."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        return error_code(error.get("code"))
    return error_code(body.get("code"))


def _first_rows_suffice(request: FetchRequest, plan: _Plan) -> bool:
    """Return whether the first rows read are the rows to return, so paging may stop early."""
    ordered = request.order is None or plan.sorted_upstream
    return ordered and not plan.local and request.after is None and request.search is None


def _finish(rows: list[dict[str, Any]], request: FetchRequest,
            local: tuple[Condition, ...]) -> list[dict[str, Any]]:
    """Apply the conditions, cursor, search, order and limit that the API did not receive."""
    kept = [row for row in rows if all(matches(row, c) for c in local)]
    if request.after is not None:
        attribute, after = request.after
        kept = [row for row in kept if _after(row.get(attribute), after)]
    if request.search is not None:
        attribute, needle = request.search
        kept = [row for row in kept
                if needle.lower() in str(row.get(attribute) or "").lower()]
    for name, descending in reversed(order_terms(request.order)):
        kept.sort(key=_sort_key(name), reverse=descending)
    if request.limit is not None:
        kept = kept[:request.limit]
    return kept


def _sort_key(name: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    """Return the sort key of attribute ``name``.

    None sorts after every value in ascending order and before every value in
    descending order, as PostgreSQL sorts NULL by default.
    """
    def key(row: dict[str, Any]) -> tuple[bool, Any]:
        value = row.get(name)
        return (value is None, 0 if value is None else value)
    return key


def _after(value: Any, after: str) -> bool:
    if isinstance(value, int) and not isinstance(value, bool) and after.lstrip("-").isdigit():
        return value > int(after)
    return value is not None and str(value) > after
