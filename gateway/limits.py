"""Limits checked on an operation before anything runs: shape, estimated cost, time.

A few hundred bytes of GraphQL can ask for millions of values: nested
relations multiply, and every root alias is a separate upstream read. The
shape limits (depth, fields, root fields) are checked once per document
text, with fragments counted where they are spread. The cost estimate is
computed per request from the plan, because ``first`` may come from a
variable, and before any upstream call.

The estimate counts the objects the response may contain plus a weight per
upstream read. A list multiplies the objects of its parent by its ``first``
argument, or by the default page size (50) when it has none. Denied and
skipped fields read nothing, so they cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)

from gateway.graphql_schema import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from gateway.plan import FieldPick, Plan, Selection

# An upstream read costs a round trip and a share of the system's API quota,
# whatever the number of keys it carries, so it weighs as much as 10 objects.
FETCH_WEIGHT = 10


@dataclass(frozen=True)
class OperationLimits:
    """The largest operation the gateway runs, and the time one request may take."""

    max_depth: int = 10
    max_fields: int = 1000
    max_root_fields: int = 10
    # 50,000 admits 500 customers with one list of related rows each (25,520)
    # but not a second nested list below it. A client lowers an estimate by
    # passing a smaller ``first`` to its lists.
    max_cost: int = 50_000
    # Seconds that the upstream reads of one request may take in all, from
    # the first read on. Reads still running then are cancelled and their
    # fields nulled with REQUEST_TIMEOUT.
    request_timeout: float = 30.0


def estimate_cost(plan: Plan) -> int:
    """Return the estimated cost of the reads ``plan`` makes: objects plus weighted fetches.

    Reads are batched per nesting level, so a relation costs one fetch
    weight whatever the number of its parents, while its objects multiply.
    """
    cost = 0
    for pick in plan.roots:
        if pick.child is None or not pick.decision.allowed:
            continue
        rows = _root_rows(pick)
        if rows == 0:
            continue
        cost += FETCH_WEIGHT + _selection_cost(pick.child, rows)
    return cost


def _root_rows(pick: FieldPick) -> int:
    if not pick.decl.connection:
        return 1  # a lookup by id reads at most one record
    first = pick.arguments.get("first")
    if not isinstance(first, int) or not 1 <= first <= MAX_PAGE_SIZE:
        return 0  # rejected on that field with BAD_REQUEST, so nothing is read
    return first


def _selection_cost(selection: Selection, rows: int) -> int:
    cost = rows + FETCH_WEIGHT * len(selection.links_used())
    for pick in selection.allowed():
        if pick.child is None or pick.invalid is not None:
            continue
        cost += FETCH_WEIGHT + _selection_cost(pick.child, rows * _rows_per_parent(pick))
    return cost


def _rows_per_parent(pick: FieldPick) -> int:
    if not pick.decl.is_list:
        return 1
    first = pick.arguments.get("first")
    # NOTE: a nested list without `first` reads every related record. Their
    # number is unknown before the read, so the estimate assumes the default
    # page size.
    return first if isinstance(first, int) else DEFAULT_PAGE_SIZE


def check_limits(document: DocumentNode, limits: OperationLimits) -> str | None:
    """Return why ``document`` is too large, or None when it fits ``limits``."""
    fragments = {d.name.value: d for d in document.definitions
                 if isinstance(d, FragmentDefinitionNode)}
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        roots = _count_fields(definition.selection_set, fragments, set(), only_top=True)
        if roots > limits.max_root_fields:
            return (f"the operation has {roots} root fields; the limit is "
                    f"{limits.max_root_fields}. Split it into several requests")
        depth = _depth(definition.selection_set, fragments, set())
        if depth > limits.max_depth:
            return (f"the operation nests {depth} levels deep; the limit is {limits.max_depth}")
        fields = _count_fields(definition.selection_set, fragments, set(), only_top=False)
        if fields > limits.max_fields:
            return (f"the operation selects {fields} fields; the limit is {limits.max_fields}")
    return None


def _depth(selection_set: SelectionSetNode, fragments: dict[str, FragmentDefinitionNode],
           spreading: set[str]) -> int:
    deepest = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            inner = selection.selection_set
            deepest = max(deepest, 1 + (_depth(inner, fragments, spreading) if inner else 0))
        elif isinstance(selection, InlineFragmentNode):
            deepest = max(deepest, _depth(selection.selection_set, fragments, spreading))
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in spreading:  # validation reports cycles
                continue
            deepest = max(deepest, _depth(fragment.selection_set, fragments, spreading | {name}))
    return deepest


def _count_fields(selection_set: SelectionSetNode, fragments: dict[str, FragmentDefinitionNode],
                  spreading: set[str], *, only_top: bool) -> int:
    count = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            count += 1
            if selection.selection_set is not None and not only_top:
                count += _count_fields(selection.selection_set, fragments, spreading,
                                       only_top=False)
        elif isinstance(selection, InlineFragmentNode):
            count += _count_fields(selection.selection_set, fragments, spreading,
                                   only_top=only_top)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in spreading:
                continue
            count += _count_fields(fragment.selection_set, fragments, spreading | {name},
                                   only_top=only_top)
    return count
