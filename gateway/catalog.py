"""The federated schema as declared in ``schema/*.toml``.

Each GraphQL type names the system and entity that own its records; each
field names either an attribute of that entity, an attribute of a linked
entity in another system (``link``), or a relation to another type
(``target``, joined by ``local`` and ``remote`` attributes). Every field
carries a GDPR data category from ``taxonomy.toml``. Adding a field of a
known system is one declaration and no code.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from gateway.errors import SchemaError
from gateway.resources import shipped_dir

SCALARS = frozenset({"ID", "String", "Int", "Boolean", "Decimal", "Date", "DateTime"})
KeyType = Literal["string", "int"]
_TYPE_PATTERN = re.compile(r"^(\[)?([A-Za-z_][A-Za-z0-9_]*)(!)?(\])?(!)?$")
_FILTER_OPERATORS = frozenset({"=", "!=", "in"})


@dataclass(frozen=True)
class Condition:
    """A fixed filter every read of an entity carries, such as ``state = posted``."""

    attribute: str
    operator: Literal["=", "!=", "in"]
    value: str | int | bool | tuple[str | int, ...]


@dataclass(frozen=True)
class Link:
    """A one-to-one record of the same subject in another entity or system."""

    name: str
    system: str
    entity: str
    local: str
    remote: str
    remote_type: KeyType


@dataclass(frozen=True)
class FieldDecl:
    """One declared field of a GraphQL type."""

    owner: str
    name: str
    graphql_type: str
    category: str
    description: str
    attribute: str | None = None
    link: str | None = None
    target: str | None = None
    local: str | None = None
    remote: str | None = None
    remote_type: KeyType = "string"
    order: str | None = None
    lookup: str | None = None
    connection: bool = False
    search: str | None = None

    @cached_property
    def qualified_name(self) -> str:
        # The planner looks each field up by this name on every request.
        return f"{self.owner}.{self.name}"

    @property
    def is_relation(self) -> bool:
        return self.target is not None

    @property
    def is_list(self) -> bool:
        return self.graphql_type.startswith("[")

    @property
    def base_type(self) -> str:
        return self.graphql_type.strip("[]!")

    @property
    def personal(self) -> bool:
        return not self.category.startswith("non_personal")


@dataclass(frozen=True)
class TypeDecl:
    """One declared GraphQL object type and the entity that owns its records."""

    name: str
    description: str
    system: str
    entity: str
    key: str
    subject: str | None
    where: tuple[Condition, ...]
    links: Mapping[str, Link]
    fields: Mapping[str, FieldDecl]


@dataclass(frozen=True)
class Catalog:
    """Every declared type, the root fields and the category taxonomy."""

    types: Mapping[str, TypeDecl]
    query: Mapping[str, FieldDecl]
    categories: Mapping[str, str]
    systems: frozenset[str] = field(default_factory=frozenset)

    def field(self, qualified_name: str) -> FieldDecl:
        owner, _, name = qualified_name.partition(".")
        fields = self.query if owner == "Query" else self.types[owner].fields
        return fields[name]

    def all_fields(self) -> list[FieldDecl]:
        """Return every declared field, root fields first, in declaration order."""
        result = list(self.query.values())
        for decl in self.types.values():
            result.extend(decl.fields.values())
        return result

    def category_parents(self) -> list[tuple[str, str]]:
        """Return (category, parent) pairs of the taxonomy tree."""
        pairs = []
        for name in self.categories:
            parent, dot, _ = name.rpartition(".")
            if dot:
                pairs.append((name, parent))
        return pairs


def default_schema_dir() -> Path:
    """Return the shipped ``schema/`` folder."""
    return shipped_dir("schema")


def load_catalog(directory: Path | None = None) -> Catalog:
    """Load and check every declaration file of ``directory``."""
    directory = directory or default_schema_dir()
    if not directory.is_dir():
        raise SchemaError(f"schema folder {str(directory)!r} not found; pass the folder that "
                          "contains taxonomy.toml and the type declarations")
    documents = _read_documents(directory)
    categories = _read_taxonomy(documents.pop("taxonomy.toml", None), directory)

    types: dict[str, TypeDecl] = {}
    query: dict[str, FieldDecl] = {}
    for file_name, document in documents.items():
        for type_name, raw in document.items():
            if type_name == "Query":
                query.update(_read_fields(type_name, raw, file_name))
                continue
            if type_name in types:
                raise SchemaError(f"type {type_name!r} is declared twice; keep one declaration "
                                  f"(second one in {file_name})")
            types[type_name] = _read_type(type_name, raw, file_name)

    catalog = Catalog(types=types, query=query, categories=categories,
                      systems=frozenset(t.system for t in types.values()))
    _check_references(catalog)
    return catalog


def _read_documents(directory: Path) -> dict[str, dict[str, Any]]:
    documents = {}
    for path in sorted(directory.glob("*.toml")):
        try:
            documents[path.name] = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SchemaError(f"{path}: invalid TOML: {exc}") from exc
    return documents


def _read_taxonomy(document: dict[str, Any] | None, directory: Path) -> dict[str, str]:
    if document is None or not isinstance(document.get("categories"), dict):
        raise SchemaError(f"{directory}/taxonomy.toml with a [categories] table is missing")
    categories = {str(name): str(text) for name, text in document["categories"].items()}
    for name in categories:
        parent, dot, _ = name.rpartition(".")
        if dot and parent not in categories:
            raise SchemaError(f"category {name!r} has no parent {parent!r} in taxonomy.toml")
    return categories


def _read_type(name: str, raw: dict[str, Any], file_name: str) -> TypeDecl:
    where = f"{file_name}: type {name!r}"
    for required in ("system", "entity", "key"):
        if not isinstance(raw.get(required), str):
            raise SchemaError(f"{where} needs a string {required!r}")
    links = {
        link_name: _read_link(link_name, spec, where)
        for link_name, spec in raw.get("links", {}).items()
    }
    return TypeDecl(
        name=name,
        description=str(raw.get("description", "")),
        system=raw["system"],
        entity=raw["entity"],
        key=raw["key"],
        subject=raw.get("subject"),
        where=tuple(_read_condition(item, where) for item in raw.get("where", [])),
        links=links,
        fields=_read_fields(name, raw, file_name),
    )


def _read_link(name: str, spec: dict[str, Any], where: str) -> Link:
    for required in ("system", "entity", "local", "remote"):
        if not isinstance(spec.get(required), str):
            raise SchemaError(f"{where}, link {name!r} needs a string {required!r}")
    return Link(name=name, system=spec["system"], entity=spec["entity"], local=spec["local"],
                remote=spec["remote"], remote_type=_key_type(spec, where))


def _read_condition(item: Any, where: str) -> Condition:
    if not (isinstance(item, list) and len(item) == 3 and item[1] in _FILTER_OPERATORS):
        raise SchemaError(f"{where}: 'where' entry {item!r} must be [attribute, '=' | '!=' | "
                          "'in', value]")
    value = tuple(item[2]) if isinstance(item[2], list) else item[2]
    return Condition(attribute=str(item[0]), operator=item[1], value=value)


def _read_fields(owner: str, raw: dict[str, Any], file_name: str) -> dict[str, FieldDecl]:
    fields = {}
    for name, spec in raw.get("fields", {}).items():
        where = f"{file_name}: field {owner}.{name}"
        if not isinstance(spec.get("type"), str) or not _TYPE_PATTERN.match(spec["type"]):
            raise SchemaError(f"{where} needs a GraphQL 'type' such as \"String\" or \"[Order!]\"")
        if not isinstance(spec.get("category"), str):
            raise SchemaError(f"{where} needs a data 'category' from taxonomy.toml")
        fields[name] = FieldDecl(
            owner=owner, name=name, graphql_type=spec["type"], category=spec["category"],
            description=str(spec.get("description", "")), attribute=spec.get("attribute"),
            link=spec.get("link"), target=spec.get("target"), local=spec.get("local"),
            remote=spec.get("remote"), remote_type=_key_type(spec, where),
            order=spec.get("order"), lookup=spec.get("lookup"),
            connection=bool(spec.get("connection", False)), search=spec.get("search"),
        )
    return fields


def _key_type(spec: dict[str, Any], where: str) -> KeyType:
    value = spec.get("remote_type", "string")
    if value not in ("string", "int"):
        raise SchemaError(f"{where}: remote_type {value!r} must be 'string' or 'int'")
    return "int" if value == "int" else "string"


def _check_references(catalog: Catalog) -> None:
    for decl in catalog.all_fields():
        where = f"field {decl.qualified_name}"
        if decl.category not in catalog.categories:
            raise SchemaError(f"{where}: category {decl.category!r} is not in taxonomy.toml; "
                              "add it there or use an existing one")
        if decl.target is not None:
            _check_relation(catalog, decl, where)
            continue
        if decl.attribute is None:
            raise SchemaError(f"{where} needs an 'attribute' or a 'target'")
        if decl.base_type not in SCALARS:
            raise SchemaError(f"{where}: scalar type {decl.base_type!r} is not one of "
                              f"{sorted(SCALARS)}")
        owner = catalog.types[decl.owner]
        if decl.link is not None and decl.link not in owner.links:
            raise SchemaError(f"{where}: link {decl.link!r} is not declared on {decl.owner}")


def _check_relation(catalog: Catalog, decl: FieldDecl, where: str) -> None:
    if decl.target not in catalog.types:
        raise SchemaError(f"{where}: target type {decl.target!r} is not declared")
    if decl.owner == "Query":
        if not (decl.lookup or decl.connection):
            raise SchemaError(f"{where}: a root field needs 'lookup' or 'connection = true'")
        return
    if not (decl.local and decl.remote):
        raise SchemaError(f"{where}: a relation needs 'local' and 'remote' attributes")
