"""Size limits checked on a parsed document before anything runs.

A few hundred bytes of GraphQL can ask for millions of values: nested
relations multiply, and every root alias is a separate upstream read. These
limits bound a document's shape; they are checked once per document text.
Fragments count where they are spread.
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


@dataclass(frozen=True)
class OperationLimits:
    """The largest document shape the gateway runs."""

    max_depth: int = 10
    max_fields: int = 1000
    max_root_fields: int = 10


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
