"""The schema as one caller may see it, for introspection.

A caller's introspection shows only the fields its policy allows or masks
for its roles and purpose, so the schema itself does not tell a role which
personal fields exist beyond its reach. Root fields, scalars and the
connection wrappers stay. A type whose every field is denied keeps its key
field, because GraphQL requires at least one field per object type.
"""

from __future__ import annotations

from graphql import (
    DocumentNode,
    FieldDefinitionNode,
    GraphQLSchema,
    ObjectTypeDefinitionNode,
    build_ast_schema,
    parse,
    print_schema,
)

from gateway.catalog import Catalog
from gateway.policy import PolicyView


def visible_schema(schema: GraphQLSchema, catalog: Catalog, view: PolicyView) -> GraphQLSchema:
    """Return a copy of ``schema`` without the fields ``view`` denies."""
    document = parse(print_schema(schema))
    definitions = []
    for definition in document.definitions:
        if isinstance(definition, ObjectTypeDefinitionNode):
            definition = _filtered(definition, catalog, view)
        definitions.append(definition)
    return build_ast_schema(DocumentNode(definitions=tuple(definitions)),
                            assume_valid_sdl=True)


def _filtered(definition: ObjectTypeDefinitionNode, catalog: Catalog,
              view: PolicyView) -> ObjectTypeDefinitionNode:
    type_name = definition.name.value
    declared = catalog.types.get(type_name)
    if declared is None and type_name != "Query":  # connection wrappers have no policy
        return definition
    fields = definition.fields or ()
    kept = [f for f in fields if _visible(type_name, f, view)]
    if not kept and declared is not None:
        kept = [f for f in fields if f.name.value == _key_field(catalog, type_name)]
    if not kept:
        kept = list(fields)
    return ObjectTypeDefinitionNode(
        name=definition.name, description=definition.description,
        interfaces=definition.interfaces, directives=definition.directives,
        fields=tuple(kept))


def _visible(type_name: str, field: FieldDefinitionNode, view: PolicyView) -> bool:
    return view.decide(f"{type_name}.{field.name.value}").allowed


def _key_field(catalog: Catalog, type_name: str) -> str:
    declared = catalog.types[type_name]
    for name, decl in declared.fields.items():
        if decl.attribute == declared.key:
            return name
    return next(iter(declared.fields))
