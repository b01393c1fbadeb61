"""Per-system names: read the schema's Odoo-named entities from a system that names them otherwise.

The schema names ERP entities and attributes as Odoo does (``res.partner``,
``credit_limit``). ``MappedSource`` renames every name a ``FetchRequest``
uses to the system's own names before the read, and renames row keys back
after it, so the fetcher and the schema never see the system's names.
Names without a mapping pass through unchanged. Settings::

    [systems.erp.entities."res.partner"]
    name = "accounts"

    [systems.erp.entities."res.partner".attributes]
    credit_limit = "creditlimit"

The gateway rejects an entity name that the schema does not read from the system
(`gateway.app.check_declared_systems`).

NOTE: attribute names are not checked against the schema. A misspelt schema
attribute leaves the real one unmapped, and its reads fail at the system with the
schema's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.catalog import Condition
from gateway.errors import ConfigError
from gateway.sources import FetchRequest, Row, Source, order_terms


@dataclass(frozen=True)
class EntityMap:
    """The system's name of one schema entity and of those of its attributes that differ."""

    name: str
    attributes: Mapping[str, str] = field(default_factory=dict)

    def attribute(self, name: str) -> str:
        """Return the system's name of the schema attribute ``name``."""
        return self.attributes.get(name, name)


class MappedSource:
    """A source that reads through ``inner`` with each entity's names mapped."""

    def __init__(self, inner: Source, entities: Mapping[str, EntityMap]) -> None:
        self.inner = inner
        self.name = inner.name
        self._entities = dict(entities)
        self._inverses = {entity: inverse_attributes(mapping)
                          for entity, mapping in self._entities.items()}

    @property
    def supports_row_filters(self) -> bool:
        return self.inner.supports_row_filters

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def fetch(self, request: FetchRequest) -> list[Row]:
        mapping = self._entities.get(request.entity)
        if mapping is None:
            return await self.inner.fetch(request)
        rows = await self.inner.fetch(map_request(request, mapping))
        inverse = self._inverses[request.entity]
        requested = [(name, mapping.attribute(name)) for name in request.attributes]
        return [unmap_row(row, inverse, requested) for row in rows]


def map_request(request: FetchRequest, mapping: EntityMap) -> FetchRequest:
    """Return ``request`` with its entity and every attribute it names in the system's names."""
    rename = mapping.attribute
    order = None
    if request.order is not None:
        order = ", ".join(f"{rename(name)} desc" if descending else rename(name)
                          for name, descending in order_terms(request.order))
    return replace(
        request,
        entity=mapping.name,
        attributes=tuple(rename(name) for name in request.attributes),
        match=None if request.match is None else rename(request.match),
        where=tuple(_map_condition(c, mapping) for c in request.where),
        any_of=tuple(_map_condition(c, mapping) for c in request.any_of),
        order=order,
        after=None if request.after is None else (rename(request.after[0]), request.after[1]),
        search=None if request.search is None else (rename(request.search[0]),
                                                    request.search[1]),
    )


def inverse_attributes(mapping: EntityMap) -> dict[str, str]:
    """Return the schema name of each mapped system attribute.

    Where two schema attributes map onto one system attribute, the first wins.
    """
    inverse: dict[str, str] = {}
    for schema_name, system_name in mapping.attributes.items():
        inverse.setdefault(system_name, schema_name)
    return inverse


def unmap_row(row: Row, inverse: Mapping[str, str],
              requested: list[tuple[str, str]]) -> Row:
    """Return ``row`` keyed by the schema's names.

    ``requested`` pairs each requested schema attribute with its system name.
    Each one is looked up by its system name, so two schema attributes mapped
    onto one system attribute both get its value. Keys the request did not
    name are renamed back with ``inverse`` (from ``inverse_attributes``).
    """
    result: Row = {inverse.get(key, key): value for key, value in row.items()}
    for name, system_name in requested:
        if system_name in row:
            result[name] = row[system_name]
    return result


def _map_condition(condition: Condition, mapping: EntityMap) -> Condition:
    return replace(condition, attribute=mapping.attribute(condition.attribute))


def entities_from_table(section: str, table: Any) -> dict[str, EntityMap]:
    """Read the ``[<section>.entities]`` table of one system's settings.

    ``section`` is the system's section name, such as ``systems.erp``. Each
    entry may set ``name`` (the system's entity name, default: the schema's)
    and ``attributes`` (schema attribute -> system attribute). Raises
    ``ConfigError`` naming the entry and the fix.
    """
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}.entities] must be a table with one sub-table per "
                          f"schema entity, such as [{section}.entities.\"res.partner\"]")
    return {entity: _entity_map(section, entity, spec) for entity, spec in table.items()}


def _entity_map(section: str, entity: str, spec: Any) -> EntityMap:
    where = f'[{section}.entities."{entity}"]'
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a table with name and attributes")
    unknown = sorted(set(spec) - {"name", "attributes"})
    if unknown:
        raise ConfigError(f"{where} {unknown[0]} is not a setting; use one of attributes, name")
    name = spec.get("name", entity)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where} name = {name!r} is invalid; set it to the system's "
                          "non-empty entity name, such as \"accounts\"")
    attributes = spec.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ConfigError(f"{where} attributes must be a table of schema attribute = system "
                          "attribute, such as credit_limit = \"creditlimit\"")
    for schema_name, system_name in attributes.items():
        if not isinstance(system_name, str) or not system_name:
            raise ConfigError(f"{where} attributes.{schema_name} = {system_name!r} is invalid; "
                              "set it to the system's non-empty attribute name")
    return EntityMap(name=name, attributes=dict(attributes))
