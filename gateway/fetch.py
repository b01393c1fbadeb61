"""Fetch every record a plan needs, one nesting level at a time.

At each level the parent rows are read, so every key the next level needs
is known. Requests of one level that read the same entity the same
way are merged, so each (system, entity) is read once per level whatever
the number of parents, and requests to different systems run concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from gateway.catalog import FieldDecl, Link, TypeDecl
from gateway.errors import RequestTimeout, UpstreamError
from gateway.plan import FieldPick, Selection
from gateway.sources import FetchRequest, Row, Source, matches

log = logging.getLogger("gateway.upstream")

Outcome = list[Row] | UpstreamError


@dataclass
class Node:
    """A selection and the rows of its type that the level above asked for.

    ``rows`` holds every row for all parents at this place of the
    operation, or the error that prevented reading them. ``links`` maps a
    link name to the linked rows by their remote key; ``children`` maps a
    relation's response key to the node of its target.
    """

    selection: Selection
    rows: Outcome
    match: str | None = None
    more: bool = False
    links: dict[str, dict[str, Row] | UpstreamError] = field(default_factory=dict)
    children: dict[str, Node] = field(default_factory=dict)


@dataclass(frozen=True)
class Budget:
    """The event-loop time by which every read of one request must have returned."""

    deadline: float
    seconds: float


@dataclass
class FetchStats:
    """Upstream cost of one request: requests per system, and the systems that failed."""

    requests: dict[str, int] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)


class Fetcher:
    """Runs the requests of a plan against the configured sources."""

    def __init__(self, sources: Mapping[str, Source]) -> None:
        self._sources = sources

    async def fetch_root(self, pick: FieldPick, request: FetchRequest, stats: FetchStats,
                         page_size: int | None = None, budget: Budget | None = None) -> Node:
        """Read a root field's rows, then every level below them.

        With ``page_size`` the request asks for one row more than the page
        to learn whether another page follows; that row is dropped before
        the levels below are read, so nothing is fetched for it. A read still
        running at ``budget.deadline`` is cancelled and becomes a
        ``RequestTimeout``, and so do the reads of the levels below it.
        """
        assert pick.child is not None
        system = pick.child.type_decl.system
        results = await self._run({(system, request): [request]}, stats, budget)
        rows = results[(system, request)]
        more = False
        if page_size is not None and not isinstance(rows, UpstreamError):
            more = len(rows) > page_size
            rows = rows[:page_size]
        root = Node(selection=pick.child, rows=rows, match=request.match, more=more)
        level = [root]
        while level:
            level = await self._fetch_level(level, stats, budget)
        return root

    async def _fetch_level(self, nodes: list[Node], stats: FetchStats,
                           budget: Budget | None) -> list[Node]:
        wanted: dict[tuple[str, FetchRequest], list[FetchRequest]] = {}
        consumers: list[tuple[Node, str, bool, FetchRequest, FieldPick | None]] = []
        for node in nodes:
            if isinstance(node.rows, UpstreamError) or not node.rows:
                continue
            for name, request in _link_requests(node):
                system = node.selection.type_decl.links[name].system
                consumers.append((node, name, True, request, None))
                _want(wanted, system, request)
            for pick, request in _relation_requests(node):
                assert pick.child is not None
                consumers.append((node, pick.response_key, False, request, pick))
                _want(wanted, pick.child.type_decl.system, request)
        if not wanted:
            return []

        merged = _merge(wanted)
        results = await self._run(merged, stats, budget)
        next_level = []
        for node, name, is_link, request, relation in consumers:
            outcome = results[_merged_key(merged, request)]
            if is_link:
                node.links[name] = _index_link(outcome, node.selection.type_decl.links[name])
                continue
            assert relation is not None and relation.child is not None
            first = relation.arguments.get("first")
            if isinstance(first, int) and not isinstance(outcome, UpstreamError):
                outcome = _first_per_parent(outcome, str(relation.decl.remote), first)
            child = Node(selection=relation.child, rows=outcome, match=request.match)
            node.children[name] = child
            next_level.append(child)
        return next_level

    async def _run(self, requests: Mapping[tuple[str, FetchRequest], list[FetchRequest]],
                   stats: FetchStats, budget: Budget | None
                   ) -> dict[tuple[str, FetchRequest], Outcome]:
        keys = list(requests)
        if len(keys) == 1:
            # A level of one read, such as a lookup by id, is awaited without a task.
            system, request = keys[0]
            return {keys[0]: await self._within(system, request, stats, budget)}
        outcomes = await asyncio.gather(*(self._within(system, req, stats, budget)
                                          for system, req in keys))
        return dict(zip(keys, outcomes, strict=True))

    async def _within(self, system: str, request: FetchRequest, stats: FetchStats,
                      budget: Budget | None) -> Outcome:
        """Read ``request``, cancelling the read when the request's time budget runs out."""
        if budget is None:
            return await self._one(system, request, stats)
        try:
            async with asyncio.timeout_at(budget.deadline):
                return await self._one(system, request, stats)
        except TimeoutError:
            stats.failed.add(system)
            log.warning("system %r: read of %s (%d keys) cancelled because the request's "
                        "time budget of %g s ran out", system, request.entity,
                        len(request.keys), budget.seconds)
            return RequestTimeout(system, f"system {system!r} did not respond within the "
                                  f"request's time budget of {budget.seconds:g} s")

    async def _one(self, system: str, request: FetchRequest, stats: FetchStats) -> Outcome:
        if not request.visible:
            return []
        stats.requests[system] = stats.requests.get(system, 0) + 1
        started = time.perf_counter()
        source = self._sources[system]
        if request.any_of and not source.supports_row_filters:
            return await self._filter_after(system, request, stats, started)
        try:
            rows = await source.fetch(request)
        except UpstreamError as exc:
            stats.failed.add(system)
            log.warning("system %r failed reading %s (%d keys): %s", system, request.entity,
                        len(request.keys), exc)
            return exc
        log.debug("system %r read %d %s rows for %d keys in %.1f ms", system, len(rows),
                  request.entity, len(request.keys), (time.perf_counter() - started) * 1000)
        return rows


    async def _filter_after(self, system: str, request: FetchRequest, stats: FetchStats,
                            started: float) -> Outcome:
        """Read without the row rules and drop the rows they exclude, for dialects without OR."""
        # The limit counts visible rows, so it is applied after filtering.
        unfiltered = replace(request, any_of=(), limit=None)
        try:
            rows = await self._sources[system].fetch(unfiltered)
        except UpstreamError as exc:
            stats.failed.add(system)
            log.warning("system %r failed reading %s (%d keys): %s", system, request.entity,
                        len(request.keys), exc)
            return exc
        kept = [row for row in rows if any(matches(row, c) for c in request.any_of)]
        if request.limit is not None:
            kept = kept[:request.limit]
        log.debug("system %r read %d %s rows, %d left after row rules, in %.1f ms", system,
                  len(rows), request.entity, len(kept), (time.perf_counter() - started) * 1000)
        return kept


def key_text(value: object) -> str | None:
    """Return the comparable text of a join value (ids as text, references by id)."""
    if value is None:
        return None
    return str(value)


def typed_keys(values: list[object], remote_type: str) -> tuple[str | int, ...]:
    """Return distinct, non-empty join values converted to the remote attribute's type."""
    keys: dict[str | int, None] = {}
    for value in values:
        text = key_text(value)
        if text is None:
            continue
        if remote_type == "int":
            if not text.lstrip("-").isdigit():
                continue
            keys[int(text)] = None
        else:
            keys[text] = None
    return tuple(keys)


def _want(wanted: dict[tuple[str, FetchRequest], list[FetchRequest]], system: str,
          request: FetchRequest) -> None:
    wanted.setdefault((system, _shape(request)), []).append(request)


def _shape(request: FetchRequest) -> FetchRequest:
    """Return the request without keys, attributes and limit: what merging compares."""
    return replace(request, keys=(), attributes=(), limit=None)


def _merge(wanted: dict[tuple[str, FetchRequest], list[FetchRequest]]
           ) -> dict[tuple[str, FetchRequest], list[FetchRequest]]:
    merged = {}
    for (system, shape), requests in wanted.items():
        keys = tuple(dict.fromkeys(k for r in requests for k in r.keys))
        attributes = tuple(dict.fromkeys(a for r in requests for a in r.attributes))
        limits = {r.limit for r in requests}
        # A limit applies to the whole result, so it is pushed down only when
        # one parent asked: with several parents each keeps its own first N.
        limit = limits.pop() if len(keys) == 1 and len(limits) == 1 else None
        merged[(system, replace(shape, keys=keys, attributes=attributes, limit=limit))] = requests
    return merged


def _merged_key(merged: Mapping[tuple[str, FetchRequest], list[FetchRequest]],
                request: FetchRequest) -> tuple[str, FetchRequest]:
    for key, requests in merged.items():
        if any(r is request for r in requests):
            return key
    raise KeyError(request.entity)


def _parent_values(node: Node, attribute: str) -> list[object]:
    assert not isinstance(node.rows, UpstreamError)
    return [row.get(attribute) for row in node.rows]


def _link_requests(node: Node) -> list[tuple[str, FetchRequest]]:
    requests = []
    type_decl = node.selection.type_decl
    for name in node.selection.links_used():
        link = type_decl.links[name]
        keys = typed_keys(_parent_values(node, link.local), link.remote_type)
        if not keys:
            continue
        requests.append((name, FetchRequest(
            entity=link.entity, attributes=node.selection.link_attributes(name),
            match=link.remote, keys=keys,
        )))
    return requests


def _relation_requests(node: Node) -> list[tuple[FieldPick, FetchRequest]]:
    requests = []
    for pick in node.selection.allowed():
        if pick.child is None:
            continue
        decl = pick.decl
        keys = typed_keys(_parent_values(node, str(decl.local)), decl.remote_type)
        if not keys:
            continue
        requests.append((pick, relation_request(decl, pick.child, keys, pick.arguments)))
    return requests


def relation_request(decl: FieldDecl, child: Selection, keys: tuple[str | int, ...],
                     arguments: Mapping[str, object]) -> FetchRequest:
    """Return the request that reads a relation's target rows for ``keys``."""
    target: TypeDecl = child.type_decl
    first = arguments.get("first")
    return FetchRequest(
        entity=target.entity, attributes=child.primary_attributes(decl.remote),
        match=decl.remote, keys=keys, where=target.where, order=decl.order,
        limit=first if isinstance(first, int) else None,
        any_of=child.row_filter or (), visible=child.row_filter != (),
    )


def _first_per_parent(rows: list[Row], remote: str, first: int) -> list[Row]:
    """Keep the first ``first`` rows of each parent, in the order the upstream sent them.

    One request serves many parents and no dialect can limit rows per parent,
    so the cut happens here, before the rows become parents of the next level:
    nothing below is fetched for rows the response leaves out.
    """
    kept: list[Row] = []
    counts: dict[str | None, int] = {}
    for row in rows:
        key = key_text(row.get(remote))
        seen = counts.get(key, 0)
        if seen < first:
            kept.append(row)
            counts[key] = seen + 1
    return kept


def _index_link(outcome: Outcome, link: Link) -> dict[str, Row] | UpstreamError:
    if isinstance(outcome, UpstreamError):
        return outcome
    # The first row of a key wins.
    remote = link.remote
    index: dict[str, Row] = {}
    for row in outcome:
        value = row.get(remote)
        if value is None:
            continue
        key = value if type(value) is str else str(value)
        if key not in index:
            index[key] = row
    return index
