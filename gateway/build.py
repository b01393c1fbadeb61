"""Assemble the response values from fetched rows, and the facts to audit.

The result is a tree of plain dicts keyed by response key (alias or field
name). A field that cannot be served contains a ``GraphQLError`` instance;
graphql-core raises it at that field's path, which nulls the field and adds
one error with its path and ``extensions.code``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from graphql import GraphQLError

from gateway.catalog import FieldDecl
from gateway.errors import UpstreamError
from gateway.fetch import Node, key_text
from gateway.masks import PseudonymKeys, compatible, masker, parse_mask
from gateway.plan import FieldPick, Selection, WrapperField
from gateway.sources import Row
from gateway.values import converter

log = logging.getLogger("gateway.execute")

_CURSOR_PREFIX = "c2:"
CURSOR_DOMAIN = "cursor"
_CURSOR_TAG_BYTES = 12


def client_error(message: str, code: str) -> GraphQLError:
    """Return an error for the client with a stable ``extensions.code``."""
    return GraphQLError(message, extensions={"code": code})


def forbidden(decl: FieldDecl) -> GraphQLError:
    return client_error(f"Not authorised to read {decl.qualified_name}.", "FORBIDDEN")


_FAILURE_WORDS = {
    "UPSTREAM_TIMEOUT": "timed out",
    "UPSTREAM_RATE_LIMITED": "is limiting the request rate",
    "REQUEST_TIMEOUT": "did not respond within the request's time budget",
}


def upstream_failed(error: UpstreamError, decl: FieldDecl) -> GraphQLError:
    what = _FAILURE_WORDS.get(error.code, "is unavailable")
    return client_error(f"System '{error.system}' {what}, so {decl.qualified_name} could not "
                        "be read.", error.code)


def encode_cursor(key: str, secret: bytes) -> str:
    """Return the opaque cursor of a row key (a non-personal record id).

    The cursor carries an HMAC of the key, so a client cannot hand-craft one:
    a forged key would otherwise travel into the upstream query.
    """
    payload = (_CURSOR_PREFIX + key).encode("utf-8")
    tag = hmac.new(secret, payload, hashlib.sha256).digest()[:_CURSOR_TAG_BYTES]
    return base64.urlsafe_b64encode(tag + payload).decode("ascii")


def decode_cursor(cursor: str, secret: bytes) -> str | None:
    """Return the row key of a cursor, or None when this gateway did not issue it."""
    if len(cursor) > 512:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii"))
    except (binascii.Error, UnicodeError, ValueError):
        return None
    tag, payload = raw[:_CURSOR_TAG_BYTES], raw[_CURSOR_TAG_BYTES:]
    expected = hmac.new(secret, payload, hashlib.sha256).digest()[:_CURSOR_TAG_BYTES]
    if not hmac.compare_digest(tag, expected):
        return None
    text = payload.decode("utf-8", errors="replace")
    if not text.startswith(_CURSOR_PREFIX) or len(text) == len(_CURSOR_PREFIX):
        return None
    return text[len(_CURSOR_PREFIX):]


@dataclass
class AuditFacts:
    """Disclosure of one response: its data subjects and number of records."""

    subjects: dict[tuple[str, str], None] = field(default_factory=dict)
    records: int = 0


class Builder:
    """Builds response dicts; one instance per request."""

    def __init__(self, keys: PseudonymKeys, *, withhold_personal: bool = False) -> None:
        self.facts = AuditFacts()
        self._keys = keys
        self._withhold = withhold_personal
        self._errors: dict[tuple[str, str], GraphQLError] = {}
        self._steps: dict[int, list[tuple[str, Callable[[Row], Any]]]] = {}

    def release(self) -> None:
        """Drop the steps of each node, once the response is built.

        The step of a relation calls `objects` on this builder, which keeps that step,
        so the two form a reference cycle that also holds the related rows. Only the
        garbage collector's full collections free such a cycle, so a busy gateway
        kept the rows of many finished requests and walked them again and again.
        Without the steps, the rows are freed when the request ends. ``facts`` stays.
        """
        self._steps.clear()

    def lookup(self, pick: FieldPick, node: Node) -> Any:
        """Return the value of a root field that reads one record."""
        if isinstance(node.rows, UpstreamError):
            return upstream_failed(node.rows, pick.decl)
        objects = self.objects(node, node.rows)
        return objects[0] if objects else None

    def connection(self, pick: FieldPick, node: Node) -> Any:
        """Return the value of a root connection field: one page of rows."""
        if isinstance(node.rows, UpstreamError):
            return upstream_failed(node.rows, pick.decl)
        rows = node.rows
        objects = self.objects(node, rows)
        key = node.selection.type_decl.key
        secret = self._keys.key(CURSOR_DOMAIN)
        # A cursor costs an HMAC, so rows get one only when an edge selects it.
        cursors: list[str | None] = [None] * len(rows)
        if any(wrapper.name == "edges" and any(c.name == "cursor" for c in wrapper.children)
               for wrapper in pick.wrapper):
            cursors = [encode_cursor(str(row[key]), secret) for row in rows]
        value: dict[str, Any] = {}
        for wrapper in pick.wrapper:
            if wrapper.name == "edges":
                value[wrapper.response_key] = [
                    _edge(wrapper.children, cursor, obj)
                    for cursor, obj in zip(cursors, objects, strict=True)
                ]
            elif wrapper.name == "pageInfo":
                page: dict[str, Any] = {"hasNextPage": node.more, "endCursor": None}
                if rows:
                    page["endCursor"] = cursors[-1] or encode_cursor(str(rows[-1][key]), secret)
                value[wrapper.response_key] = {c.response_key: page[c.name]
                                               for c in wrapper.children if c.name in page}
        return value

    def objects(self, node: Node, rows: list[Row]) -> list[dict[str, Any]]:
        """Return one response dict per row of ``node``."""
        selection = node.selection
        steps = self._steps.get(id(node))
        if steps is None:  # once per node, not per parent row
            steps = [self._step(node, pick) for pick in selection.picks]
            self._steps[id(node)] = steps
        subject = selection.type_decl.subject
        discloses = subject is not None and not self._withhold and (selection.searched or any(
            pick.decl.personal and pick.decision.allowed for pick in selection.picks))
        key = selection.type_decl.key
        objects = []
        for row in rows:
            objects.append({response_key: step(row) for response_key, step in steps})
            if discloses:
                self.facts.subjects[(str(subject), str(row.get(key)))] = None
        self.facts.records += len(objects)
        return objects

    def _step(self, node: Node, pick: FieldPick) -> tuple[str, Callable[[Row], Any]]:
        decl = pick.decl
        if not pick.decision.allowed:
            error = self._cached_error("forbidden", decl, lambda: forbidden(decl))
            return pick.response_key, lambda row: error
        if pick.invalid is not None:
            message = pick.invalid
            invalid = self._cached_error("invalid", decl,
                                         lambda: client_error(message, "BAD_REQUEST"))
            return pick.response_key, lambda row: invalid
        if self._withhold and decl.personal:
            error = self._cached_error("audit", decl, lambda: client_error(
                f"{decl.qualified_name} is withheld because the audit log cannot be written.",
                "AUDIT_UNAVAILABLE"))
            return pick.response_key, lambda row: error
        if pick.child is not None:
            return pick.response_key, self._relation_step(node, pick)
        mask = self._mask(pick)
        if decl.link is not None:
            return pick.response_key, self._link_step(node, decl, mask)
        return pick.response_key, _scalar_step(node.selection, decl, str(decl.attribute), mask)

    def _mask(self, pick: FieldPick) -> Callable[[Any], Any] | None:
        decision = pick.decision
        if decision.effect != "mask" or decision.mask is None:
            return None
        spec = parse_mask(decision.mask)
        scalar = pick.decl.base_type
        if not compatible(spec, scalar):
            # A category-wide mask can meet a field it does not fit (a
            # pseudonym on an amount): the value is then hidden entirely.
            log.warning("mask %s does not fit %s (%s); serving null", spec,
                        pick.decl.qualified_name, scalar)
            spec = parse_mask("null")
        return masker(spec, scalar, self._keys)

    def _cached_error(self, kind: str, decl: FieldDecl,
                      make: Callable[[], GraphQLError]) -> GraphQLError:
        key = (kind, decl.qualified_name)
        if key not in self._errors:
            self._errors[key] = make()
        return self._errors[key]

    def _link_step(self, node: Node, decl: FieldDecl,
                   mask: Callable[[Any], Any] | None) -> Callable[[Row], Any]:
        link = node.selection.type_decl.links[str(decl.link)]
        linked = node.links.get(link.name, {})
        if isinstance(linked, UpstreamError):
            error = upstream_failed(linked, decl)
            return lambda row: error
        read = _scalar_step(node.selection, decl, str(decl.attribute), mask)

        def step(row: Row) -> Any:
            target = linked.get(key_text(row.get(link.local)) or "")
            return None if target is None else read(target)

        return step

    def _relation_step(self, node: Node, pick: FieldPick) -> Callable[[Row], Any]:
        decl = pick.decl
        child = node.children.get(pick.response_key)
        if child is None:  # no parent had a join value, so nothing was read
            return lambda row: [] if decl.is_list else None
        if isinstance(child.rows, UpstreamError):
            error = upstream_failed(child.rows, decl)
            return lambda row: error

        grouped: dict[str, list[Row]] = {}
        for child_row in child.rows:
            key = key_text(child_row.get(str(decl.remote)))
            if key is not None:
                grouped.setdefault(key, []).append(child_row)
        first = pick.arguments.get("first")
        local = str(decl.local)

        def step(row: Row) -> Any:
            rows = grouped.get(key_text(row.get(local)) or "", [])
            if not decl.is_list:
                return self.objects(child, rows[:1])[0] if rows else None
            if isinstance(first, int):
                rows = rows[:first]
            return self.objects(child, rows)

        return step


def _edge(children: list[WrapperField], cursor: str | None,
          obj: dict[str, Any]) -> dict[str, Any]:
    edge: dict[str, Any] = {}
    for child in children:
        if child.name == "cursor":
            edge[child.response_key] = cursor
        elif child.name == "node":
            edge[child.response_key] = obj
    return edge


def _scalar_step(selection: Selection, decl: FieldDecl, attribute: str,
                 mask: Callable[[Any], Any] | None = None) -> Callable[[Row], Any]:
    base = converter(decl.base_type)
    convert = base if mask is None else (lambda value: mask(base(value)))
    system = selection.type_decl.system if decl.link is None else \
        selection.type_decl.links[str(decl.link)].system

    # Most text values arrive as str and need no conversion.
    passes_text = mask is None and decl.base_type in ("String", "ID")

    def step(row: Row) -> Any:
        value = row.get(attribute)
        if value is None or (passes_text and type(value) is str):
            return value
        try:
            return convert(value)
        except (ValueError, TypeError, ArithmeticError):
            log.warning("system %r sent a value for %s that is not a valid %s", system,
                        decl.qualified_name, decl.base_type)
            return client_error(f"System '{system}' sent an invalid value for "
                                f"{decl.qualified_name}.", "UPSTREAM_UNAVAILABLE")

    return step
