"""Random valid GraphQL operations over the gateway schema, for property-based tests.

An operation is generated as a tree that keeps the real field behind every
response key. A test can therefore judge each value of the response by the
field's real name, however the document renamed or regrouped it. The tree
covers aliases (also one field aliased under another field's name), inline
and named fragments, ``@include``/``@skip`` with literal and variable
conditions, nested relations, ``__typename`` and arguments.

Every response key is unique within a selection set, except leaf fields that
are deliberately selected twice under the same key (merged by GraphQL), so
the documents always pass validation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from graphql import (
    GraphQLObjectType,
    GraphQLSchema,
    get_named_type,
    is_leaf_type,
)
from hypothesis import strategies as st

from gateway.demo.data import DemoData

# Catalog object levels, for example Customer -> Order -> Customer -> Order.
# A connection's edges and node add two GraphQL levels, so a normal document
# nests at most 1 + 2 + 4 = 7 levels, below the gateway's limit of 10.
MAX_OBJECT_LEVELS = 4
MAX_FIELDS = 12
ALIAS_POOL = ("a", "b", "item", "x1", "value", "node")
# Account ids of the valid form (prefix 001, 18 characters) that no demo account has.
UNKNOWN_IDS = ("001000000000000AAA", "001ZZZZZZZZZZZZZZZ")

Directive = Literal["include", "skip"]


@dataclass(frozen=True)
class Condition:
    """One ``@include`` or ``@skip`` with a literal or a variable ``if``."""

    directive: Directive
    literal: bool | None = None
    variable: str | None = None

    def render(self) -> str:
        argument = f"${self.variable}" if self.variable else str(self.literal).lower()
        return f" @{self.directive}(if: {argument})"

    def passes(self, variables: Mapping[str, Any]) -> bool:
        value = variables[self.variable] if self.variable else self.literal
        return bool(value) if self.directive == "include" else not value


@dataclass(frozen=True)
class FieldSelection:
    """A field under its response key, with the real name and the types around it."""

    name: str
    parent_type: str
    type_name: str
    alias: str | None = None
    arguments: tuple[tuple[str, str], ...] = ()
    conditions: tuple[Condition, ...] = ()
    children: tuple[Selection, ...] = ()

    @property
    def key(self) -> str:
        return self.alias or self.name


@dataclass(frozen=True)
class InlineFragment:
    """``... on Type`` (or a bare ``...``) grouping some selections under conditions."""

    type_condition: str | None
    children: tuple[Selection, ...]
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class FragmentSpread:
    """``...Name``, with one fragment definition per spread unless ``name`` is fixed."""

    type_condition: str
    children: tuple[Selection, ...]
    conditions: tuple[Condition, ...] = ()
    name: str | None = None


Selection = FieldSelection | InlineFragment | FragmentSpread


@dataclass(frozen=True)
class Operation:
    """A generated operation, its variables and the values they are sent with."""

    roots: tuple[Selection, ...]
    variable_types: tuple[tuple[str, str], ...] = ()
    variables: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None

    def document(self) -> str:
        """Render the operation and one fragment definition per spread."""
        fragments: dict[str | int, str] = {}
        definitions: list[str] = []
        body = _render_set(self.roots, fragments, definitions)
        header = "query"
        if self.name:
            header += f" {self.name}"
        if self.variable_types:
            header += "(" + ", ".join(f"${n}: {t}" for n, t in self.variable_types) + ")"
        return "\n".join([f"{header} {body}", *definitions])

    def shape(self) -> DocumentShape:
        """Count depth, fields and root fields as the gateway's limits count them."""
        return DocumentShape(depth=_depth(self.roots), fields=_count(self.roots, top=False),
                             root_fields=_count(self.roots, top=True))


@dataclass(frozen=True)
class DocumentShape:
    """The static size of a document: directives are ignored, fragments count where spread."""

    depth: int
    fields: int
    root_fields: int

    def exceeds(self, *, max_depth: int = 10, max_fields: int = 1000,
                max_root_fields: int = 10) -> bool:
        """Return True when the gateway's documented limits reject this shape."""
        return (self.depth > max_depth or self.fields > max_fields
                or self.root_fields > max_root_fields)


def _render_set(selections: Sequence[Selection], fragments: dict[str | int, str],
                definitions: list[str]) -> str:
    return "{ " + " ".join(_render(s, fragments, definitions) for s in selections) + " }"


def _render(selection: Selection, fragments: dict[str | int, str], definitions: list[str]) -> str:
    directives = "".join(c.render() for c in selection.conditions)
    if isinstance(selection, FieldSelection):
        text = f"{selection.alias}: {selection.name}" if selection.alias else selection.name
        if selection.arguments:
            text += "(" + ", ".join(f"{n}: {v}" for n, v in selection.arguments) + ")"
        text += directives
        if selection.children:
            text += " " + _render_set(selection.children, fragments, definitions)
        return text
    if isinstance(selection, InlineFragment):
        condition = f" on {selection.type_condition}" if selection.type_condition else ""
        return f"...{condition}{directives} " + _render_set(selection.children, fragments,
                                                           definitions)
    name = _fragment_name(selection, fragments, definitions)
    return f"...{name}{directives}"


def _fragment_name(spread: FragmentSpread, fragments: dict[str | int, str],
                   definitions: list[str]) -> str:
    identity: str | int = spread.name or id(spread)
    name = fragments.get(identity)
    if name is not None:
        return name
    name = spread.name or f"F{len(fragments)}"
    fragments[identity] = name
    body = _render_set(spread.children, fragments, definitions)
    definitions.append(f"fragment {name} on {spread.type_condition} {body}")
    return name


def _depth(selections: Sequence[Selection]) -> int:
    deepest = 0
    for selection in selections:
        if isinstance(selection, FieldSelection):
            deepest = max(deepest, 1 + _depth(selection.children))
        else:
            deepest = max(deepest, _depth(selection.children))
    return deepest


def _count(selections: Sequence[Selection], *, top: bool) -> int:
    total = 0
    for selection in selections:
        if isinstance(selection, FieldSelection):
            total += 1 if top else 1 + _count(selection.children, top=False)
        else:
            total += _count(selection.children, top=top)
    return total


@dataclass
class ExecutedField:
    """A response key after directives: the real field and every node merged into it."""

    name: str
    parent_type: str
    type_name: str
    nodes: list[FieldSelection]

    def children(self) -> list[Selection]:
        return [child for node in self.nodes for child in node.children]


def executed_fields(selections: Sequence[Selection], variables: Mapping[str, Any]
                    ) -> dict[str, ExecutedField]:
    """Return the fields GraphQL executes for ``selections``, by response key.

    Mirrors the specification's CollectFields for a schema without
    interfaces: a node counts when its own conditions and those of every
    fragment around it pass.
    """
    result: dict[str, ExecutedField] = {}
    for selection in _included(selections, variables):
        merged = result.get(selection.key)
        if merged is None:
            result[selection.key] = ExecutedField(selection.name, selection.parent_type,
                                                  selection.type_name, [selection])
        else:
            merged.nodes.append(selection)
    return result


def _included(selections: Sequence[Selection],
              variables: Mapping[str, Any]) -> Iterator[FieldSelection]:
    for selection in selections:
        if not all(condition.passes(variables) for condition in selection.conditions):
            continue
        if isinstance(selection, FieldSelection):
            yield selection
        else:
            yield from _included(selection.children, variables)


@dataclass(frozen=True)
class FieldInfo:
    """One field of an object type: its value's named type and argument names."""

    name: str
    type_name: str
    leaf: bool
    arguments: tuple[str, ...]


@dataclass(frozen=True)
class SchemaInfo:
    """The object types of the schema with their fields, read once from graphql-core."""

    types: Mapping[str, tuple[FieldInfo, ...]]
    # Types declared in schema/*.toml; the others are Query and connection wrappers.
    catalog_types: frozenset[str]

    @classmethod
    def from_schema(cls, schema: GraphQLSchema, catalog_types: frozenset[str]) -> SchemaInfo:
        types: dict[str, tuple[FieldInfo, ...]] = {}
        for name, graphql_type in schema.type_map.items():
            if name.startswith("__") or not isinstance(graphql_type, GraphQLObjectType):
                continue
            fields = []
            for field_name, definition in graphql_type.fields.items():
                named = get_named_type(definition.type)
                fields.append(FieldInfo(field_name, named.name, is_leaf_type(named),
                                        tuple(definition.args)))
            types[name] = tuple(fields)
        return cls(types, catalog_types)

    def field(self, type_name: str, field_name: str) -> FieldInfo:
        return next(f for f in self.types[type_name] if f.name == field_name)


@dataclass(frozen=True)
class SeedChoices:
    """Argument values taken from the demo data: real ids and names to search for."""

    customer_ids: tuple[str, ...]
    search_texts: tuple[str, ...]

    @classmethod
    def from_data(cls, data: DemoData) -> SeedChoices:
        names = [str(account["Name"]) for account in data.crm["Account"]]
        words = sorted({word.strip(",.") for name in names for word in name.split()
                        if len(word.strip(",.")) >= 4})
        return cls(customer_ids=tuple(sorted(str(a["Id"]) for a in data.crm["Account"])),
                   search_texts=tuple(sorted(names)[:40]) + tuple(words[:40]))



# Condition variables have fixed names and values, so that strategies stay
# free of side effects and a document declares only the ones it uses.
CONDITION_VARIABLES: Mapping[str, bool] = {"yes": True, "no": False}

def _condition(directive: Directive) -> st.SearchStrategy[Condition]:
    return st.one_of(
        st.builds(Condition, st.just(directive), literal=st.booleans()),
        st.builds(Condition, st.just(directive),
                  variable=st.sampled_from(tuple(CONDITION_VARIABLES))),
    )


_INCLUDE, _SKIP = _condition("include"), _condition("skip")
# Mostly none, so that most fields are executed, and at most one of each directive.
CONDITIONS: st.SearchStrategy[tuple[Condition, ...]] = st.one_of(
    st.just(()), st.just(()), st.just(()),
    st.tuples(_INCLUDE | _SKIP),
    st.tuples(_INCLUDE, _SKIP) | st.tuples(_SKIP, _INCLUDE),
)


@dataclass(frozen=True)
class FragmentLayer:
    """One fragment put around a group of fields: inline, typed inline or named."""

    kind: Literal["inline", "typed", "spread"]
    conditions: tuple[Condition, ...]

    def wrap(self, children: tuple[Selection, ...], type_name: str) -> Selection:
        if self.kind == "spread":
            return FragmentSpread(type_name, children, self.conditions)
        return InlineFragment(type_name if self.kind == "typed" else None, children,
                              self.conditions)


_LAYER = st.builds(FragmentLayer, st.sampled_from(("inline", "typed", "spread")), CONDITIONS)
# Zero to three fragments nested around one group of fields, outermost first.
# Built once at import: hypothesis validates a strategy when it is first drawn
# from, which costs more than the draw when strategies are made per call.
FRAGMENT_LAYERS: st.SearchStrategy[tuple[FragmentLayer, ...]] = st.recursive(
    st.just(()),
    lambda inner: st.builds(lambda layer, rest: (layer, *rest), _LAYER, inner),
    max_leaves=3,
)


def wrap_in_layers(children: tuple[Selection, ...], layers: tuple[FragmentLayer, ...],
                   type_name: str) -> tuple[Selection, ...]:
    """Return ``children`` inside ``layers``, the first layer outermost."""
    for layer in reversed(layers):
        children = (layer.wrap(children, type_name),)
    return children


@dataclass
class _Draft:
    """Mutable state of one operation while it is drawn: the field budget and variables."""

    fields_left: int
    variable_types: dict[str, str] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)

    def argument(self, graphql_type: str, value: Any, as_variable: bool) -> str:
        """Return the text of an argument value, declaring a variable for it if asked."""
        if not as_variable:
            return json.dumps(value)
        name = f"v{len(self.variable_types)}"
        self.variable_types[name] = graphql_type
        self.variables[name] = value
        return f"${name}"


_TYPENAME = FieldInfo("__typename", "String", True, ())
_ROOT_WEIGHTS = {"customers": 3, "customer": 2, "__typename": 1}


@st.composite
def operations(draw: st.DrawFn, schema: SchemaInfo, seeds: SeedChoices) -> Operation:
    """Draw an operation, of which about one in thirteen exceeds a limit of the gateway.

    The helpers below take ``draw`` and are plain functions, not strategies,
    for the same reason as ``FRAGMENT_LAYERS``.
    """
    mode = draw(st.integers(min_value=0, max_value=39))
    if mode == 0:
        return _too_deep()
    if mode == 1:
        return _too_wide()
    draft = _Draft(fields_left=MAX_FIELDS)
    roots = _selection_set(draw, schema, seeds, draft, "Query", MAX_OBJECT_LEVELS)
    if mode == 2:
        roots += tuple(FieldSelection("__typename", "Query", "String", alias=f"t{n}")
                       for n in range(11))
    name = draw(st.sampled_from((None, "Random")))
    variable_types = dict(draft.variable_types)
    variables = dict(draft.variables)
    for used in sorted(_condition_variables(roots)):
        variable_types[used] = "Boolean!"
        variables[used] = CONDITION_VARIABLES[used]
    return Operation(roots, tuple(variable_types.items()), variables, name)


def _condition_variables(selections: Sequence[Selection]) -> set[str]:
    used: set[str] = set()
    for selection in selections:
        used.update(c.variable for c in selection.conditions if c.variable)
        used |= _condition_variables(selection.children)
    return used


def _pick(draw: st.DrawFn, choices: Sequence[Any]) -> Any:
    return choices[draw(st.integers(min_value=0, max_value=len(choices) - 1))]


def _selection_set(draw: st.DrawFn, schema: SchemaInfo, seeds: SeedChoices, draft: _Draft,
                   type_name: str, levels_left: int) -> tuple[Selection, ...]:
    fields: list[FieldSelection] = []
    keys: set[str] = set()
    # Half of the catalog objects select their id, so values can be matched to records.
    if type_name in schema.catalog_types and draw(st.booleans()):
        identifier = _field(draw, schema, seeds, draft, type_name,
                            schema.field(type_name, "id"), levels_left, keys)
        fields.append(identifier)
        keys.add(identifier.key)
    size = draw(st.integers(min_value=1, max_value=4))
    while len(fields) < size and draft.fields_left > 0:
        candidates = _candidates(schema, type_name, levels_left, draft.fields_left)
        info = _pick(draw, candidates)
        selection = _field(draw, schema, seeds, draft, type_name, info, levels_left, keys)
        fields.append(selection)
        keys.add(selection.key)
    if draft.fields_left > 0 and draw(st.integers(min_value=0, max_value=4)) == 0:
        fields.extend(_duplicate_leaf(fields, draft))
    return _grouped(draw, fields, type_name)


def _candidates(schema: SchemaInfo, type_name: str, levels_left: int,
                fields_left: int) -> list[FieldInfo]:
    """Return the fields that fit the remaining levels and field budget.

    An object field needs room for itself and one field inside, and every
    object type has the leaf ``__typename``, so two fields always suffice.
    """
    fitting = []
    for info in (*schema.types[type_name], _TYPENAME):
        if not info.leaf:
            if fields_left < 2:
                continue
            if info.type_name in schema.catalog_types and levels_left < 1:
                continue
        weight = _ROOT_WEIGHTS.get(info.name, 1) if type_name == "Query" else 1
        fitting.extend([info] * weight)
    return fitting


def _duplicate_leaf(fields: list[FieldSelection], draft: _Draft) -> list[FieldSelection]:
    """Return a second node of one plain leaf field, which GraphQL merges with the first."""
    leaves = [f for f in fields if not f.children and not f.arguments]
    if not leaves:
        return []
    draft.fields_left -= 1
    original = leaves[0]
    return [FieldSelection(original.name, original.parent_type, original.type_name,
                           alias=original.alias, conditions=(Condition("include", literal=True),))]


def _grouped(draw: st.DrawFn, fields: list[FieldSelection],
             type_name: str) -> tuple[Selection, ...]:
    """Place each field directly or in one of two groups, each inside drawn fragments."""
    groups: list[list[FieldSelection]] = [[], [], []]
    for selection in fields:
        groups[_pick(draw, (0, 0, 1, 2))].append(selection)
    result: tuple[Selection, ...] = ()
    for members in groups:
        if members:
            result += wrap_in_layers(tuple(members), draw(FRAGMENT_LAYERS), type_name)
    return result


def _field(draw: st.DrawFn, schema: SchemaInfo, seeds: SeedChoices, draft: _Draft,
           type_name: str, info: FieldInfo, levels_left: int,
           keys: set[str]) -> FieldSelection:
    alias = _alias(draw, schema, type_name, info.name)
    if (alias or info.name) in keys:
        alias = next(f"k{n}" for n in range(len(keys) + 1) if f"k{n}" not in keys)
    arguments = _arguments(draw, seeds, draft, info)
    conditions = draw(CONDITIONS)
    draft.fields_left -= 1
    children: tuple[Selection, ...] = ()
    if not info.leaf:
        inner_levels = levels_left - (1 if info.type_name in schema.catalog_types else 0)
        children = _selection_set(draw, schema, seeds, draft, info.type_name, inner_levels)
    return FieldSelection(info.name, type_name, info.type_name, alias=alias,
                          arguments=arguments, conditions=conditions, children=children)


def _alias(draw: st.DrawFn, schema: SchemaInfo, type_name: str, name: str) -> str | None:
    """Return no alias (mostly), a made-up one, or the name of another field of the type."""
    kind = draw(st.integers(min_value=0, max_value=3))
    if kind == 2:
        return str(_pick(draw, ALIAS_POOL))
    others = [f.name for f in schema.types[type_name] if f.name != name]
    if kind == 3 and others:
        return str(_pick(draw, others))
    return None


def _arguments(draw: st.DrawFn, seeds: SeedChoices, draft: _Draft,
               info: FieldInfo) -> tuple[tuple[str, str], ...]:
    if "id" in info.arguments:
        known = draw(st.integers(min_value=0, max_value=3)) > 0
        identifier = _pick(draw, seeds.customer_ids if known else UNKNOWN_IDS)
        return (("id", draft.argument("ID!", identifier, draw(st.booleans()))),)
    arguments: list[tuple[str, str]] = []
    if "search" in info.arguments:
        # Always set `first`: its default of 50 would make a page 10 times the usual size.
        first = draw(st.integers(min_value=1, max_value=6))
        arguments.append(("first", draft.argument("Int!", first, draw(st.booleans()))))
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            text = _pick(draw, seeds.search_texts)
            arguments.append(("search", draft.argument("String!", text, draw(st.booleans()))))
        return tuple(arguments)
    if "first" in info.arguments and draw(st.booleans()):
        first = draw(st.integers(min_value=0, max_value=3))
        arguments.append(("first", draft.argument("Int!", first, draw(st.booleans()))))
    return tuple(arguments)


def _too_deep() -> Operation:
    """Return an 11-level chain of relations on an unknown customer."""
    node = FieldSelection("orders", "Customer", "Order",
                          children=(FieldSelection("id", "Order", "ID"),))
    for _ in range(4):
        customer = FieldSelection("customer", "Order", "Customer", children=(node,))
        node = FieldSelection("orders", "Customer", "Order", children=(customer,))
    root = FieldSelection("customer", "Query", "Customer",
                          arguments=(("id", json.dumps(UNKNOWN_IDS[0])),), children=(node,))
    return Operation((root,))


def _too_wide() -> Operation:
    """Return 1,101 fields: one fragment of 100 spread 11 times, as the limits count it."""
    wide = tuple(FieldSelection("__typename", "Customer", "String", alias=f"w{n}")
                 for n in range(100))
    spreads = tuple(FragmentSpread("Customer", wide, name="Wide") for _ in range(11))
    root = FieldSelection("customer", "Query", "Customer",
                          arguments=(("id", json.dumps(UNKNOWN_IDS[0])),), children=spreads)
    return Operation((root,))
