"""Turn a parsed operation and a caller's policy view into a fetch plan.

The plan is decided before any upstream call: every field the operation
names (through aliases, fragments, inline fragments, ``@skip``/``@include``
and variables) is judged by its real schema name, and only the attributes
of allowed fields are ever requested from an upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLIncludeDirective,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLSkipDirective,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from graphql.execution.values import VariableValues, get_argument_values, get_directive_values

from gateway.catalog import Catalog, Condition, FieldDecl, TypeDecl
from gateway.graphql_schema import MAX_PAGE_SIZE
from gateway.policy import Decision, PolicyView


@dataclass
class FieldPick:
    """A field at one place of the operation, under its response key."""

    response_key: str
    decl: FieldDecl
    decision: Decision
    arguments: dict[str, Any]
    child: Selection | None = None
    wrapper: list[WrapperField] = field(default_factory=list)
    # Why the field's arguments cannot be served; the field then reads nothing.
    invalid: str | None = None


@dataclass
class WrapperField:
    """A field of a connection around the nodes (edges, cursor, pageInfo ...)."""

    response_key: str
    name: str
    children: list[WrapperField] = field(default_factory=list)


@dataclass
class Selection:
    """The fields picked on one object type at one place of the operation."""

    type_decl: TypeDecl
    depth: int
    picks: list[FieldPick] = field(default_factory=list)
    # Row rules as alternatives for the upstream query: None reads every
    # record, an empty tuple reads none (the caller lacks every claim a rule needs).
    row_filter: tuple[Condition, ...] | None = None
    # True when a search matched these records by a personal field.
    searched: bool = False

    def allowed(self) -> list[FieldPick]:
        return [pick for pick in self.picks if pick.decision.allowed]

    def primary_attributes(self, match: str | None) -> tuple[str, ...]:
        """Return the attributes to request from this type's own entity."""
        needed = [self.type_decl.key]
        if match:
            needed.append(match)
        # A dialect that filters after reading needs the rule attributes too.
        needed.extend(condition.attribute for condition in self.row_filter or ())
        for pick in self.allowed():
            decl = pick.decl
            if decl.is_relation:
                needed.append(str(decl.local))
            elif decl.link is not None:
                needed.append(self.type_decl.links[decl.link].local)
            else:
                needed.append(str(decl.attribute))
        return tuple(dict.fromkeys(needed))

    def link_attributes(self, link_name: str) -> tuple[str, ...]:
        """Return the attributes to request from a linked entity."""
        link = self.type_decl.links[link_name]
        needed = [link.remote]
        needed += [str(p.decl.attribute) for p in self.allowed() if p.decl.link == link_name]
        return tuple(dict.fromkeys(needed))

    def links_used(self) -> list[str]:
        used = [p.decl.link for p in self.allowed() if p.decl.link is not None]
        return list(dict.fromkeys(link for link in used if link is not None))


@dataclass
class Plan:
    """Root picks of one operation and the decision on every field it names."""

    roots: list[FieldPick]
    judged: dict[str, tuple[FieldDecl, Decision]]
    view: PolicyView

    def judge(self, decl: FieldDecl) -> Decision:
        """Return the decision on a field the operation uses, recording it for the audit."""
        decision = self.view.decide(decl.qualified_name)
        self.judged[decl.qualified_name] = (decl, decision)
        return decision


class Planner:
    """Builds plans against one catalog and GraphQL schema."""

    def __init__(self, catalog: Catalog, schema: GraphQLSchema) -> None:
        self._catalog = catalog
        self._schema = schema

    def plan(self, operation: OperationDefinitionNode,
             fragments: dict[str, FragmentDefinitionNode], variables: VariableValues,
             view: PolicyView, claims: Mapping[str, str]) -> Plan:
        context = _Context(self._catalog, self._schema, fragments, variables, view, claims)
        roots = context.pick_fields(self._schema.query_type, "Query", [operation.selection_set],
                                    0)
        return Plan(roots=roots, judged=context.judged, view=view)


class _Context:
    def __init__(self, catalog: Catalog, schema: GraphQLSchema,
                 fragments: dict[str, FragmentDefinitionNode], variables: VariableValues,
                 view: PolicyView, claims: Mapping[str, str]) -> None:
        self.catalog = catalog
        self.claims = claims
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.view = view
        self.judged: dict[str, tuple[FieldDecl, Decision]] = {}

    def pick_fields(self, graphql_type: GraphQLObjectType | None, type_name: str,
                    selection_sets: list[SelectionSetNode], depth: int) -> list[FieldPick]:
        assert graphql_type is not None
        grouped = self._group(type_name, selection_sets)
        fields = self.catalog.query if type_name == "Query" else self.catalog.types[
            type_name].fields
        picks = []
        for response_key, nodes in grouped.items():
            name = nodes[0].name.value
            decl = fields.get(name)
            if decl is None:  # __typename, answered by the executor itself
                continue
            picks.append(self._pick(graphql_type, response_key, nodes, decl, depth))
        return picks

    def _pick(self, graphql_type: GraphQLObjectType, response_key: str, nodes: list[FieldNode],
              decl: FieldDecl, depth: int) -> FieldPick:
        decision = self.view.decide(decl.qualified_name)
        self.judged[decl.qualified_name] = (decl, decision)
        field_def = graphql_type.fields[decl.name]
        # Validation has rejected arguments a field does not define.
        arguments = get_argument_values(field_def, nodes[0], self.variables) \
            if field_def.args else {}
        pick = FieldPick(response_key, decl, decision, arguments)
        if decl.target is None or not decision.allowed:
            return pick
        first = arguments.get("first")
        if decl.is_list and not decl.connection and first is not None and not (
                isinstance(first, int) and 0 <= first <= MAX_PAGE_SIZE):
            pick.invalid = f"first must be between 0 and {MAX_PAGE_SIZE}; got {first!r}."
            return pick

        target = self.catalog.types[decl.target]
        node_type = self.schema.get_type(target.name)
        assert isinstance(node_type, GraphQLObjectType)
        selection_sets = [node.selection_set for node in nodes if node.selection_set is not None]
        if decl.connection:
            selection_sets = self._connection_nodes(decl, selection_sets, pick.wrapper)
        child = Selection(type_decl=target, depth=depth + 1,
                          row_filter=self._row_filter(target))
        child.picks = self.pick_fields(node_type, target.name, selection_sets, depth + 1)
        pick.child = child
        return pick

    def _row_filter(self, target: TypeDecl) -> tuple[Condition, ...] | None:
        """Return the row rules of ``target`` as conditions on its own entity."""
        rules = self.view.rows_of(target.name)
        if rules is None:
            return None
        conditions = []
        for rule in rules:
            value = self.claims.get(rule.claim)
            if value is None:  # a rule the caller has no claim for admits no record
                continue
            attribute = str(target.fields[rule.field].attribute)
            conditions.append(Condition(attribute=attribute, operator="=", value=value))
        return tuple(conditions)

    def _connection_nodes(self, decl: FieldDecl, selection_sets: list[SelectionSetNode],
                          wrapper: list[WrapperField]) -> list[SelectionSetNode]:
        """Record a connection's own fields in ``wrapper``; return its node selections."""
        nodes: list[SelectionSetNode] = []
        outer = self._group(f"{decl.target}Connection", selection_sets)
        for key, group in outer.items():
            name = group[0].name.value
            inner_type = {"edges": f"{decl.target}Edge", "pageInfo": "PageInfo"}.get(name)
            entry = WrapperField(key, name)
            wrapper.append(entry)
            if inner_type is None:
                continue
            inner_sets = [n.selection_set for n in group if n.selection_set is not None]
            for inner_key, inner_group in self._group(inner_type, inner_sets).items():
                inner_name = inner_group[0].name.value
                entry.children.append(WrapperField(inner_key, inner_name))
                if inner_name == "node":
                    nodes.extend(n.selection_set for n in inner_group
                                 if n.selection_set is not None)
        return nodes

    def _group(self, type_name: str,
               selection_sets: list[SelectionSetNode]) -> dict[str, list[FieldNode]]:
        grouped: dict[str, list[FieldNode]] = {}
        for selection_set in selection_sets:
            self._collect(type_name, selection_set, grouped, set())
        return grouped

    def _collect(self, type_name: str, selection_set: SelectionSetNode,
                 grouped: dict[str, list[FieldNode]], visited: set[str]) -> None:
        for selection in selection_set.selections:
            if not self._included(selection):
                continue
            if isinstance(selection, FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                grouped.setdefault(key, []).append(selection)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                if condition is None or condition.name.value == type_name:
                    self._collect(type_name, selection.selection_set, grouped, visited)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if name in visited or fragment is None:
                    continue
                visited.add(name)
                if fragment.type_condition.name.value == type_name:
                    self._collect(type_name, fragment.selection_set, grouped, visited)

    def _included(self, node: FieldNode | InlineFragmentNode | FragmentSpreadNode | Any) -> bool:
        if not node.directives:
            return True
        skip = get_directive_values(GraphQLSkipDirective, node, self.variables)
        if skip and skip.get("if") is True:
            return False
        include = get_directive_values(GraphQLIncludeDirective, node, self.variables)
        return not (include and include.get("if") is False)
