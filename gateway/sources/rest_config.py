"""Read the settings of one ``rest`` system from its TOML table.

Every setting that describes how an entity is read may sit in the system's
table, as the default for all its entities, and in an entity's table, where
it wins::

    [systems.erp]
    dialect = "rest"
    base_url = "https://erp.example.com/api/v1"
    token_env = "FONTE_ERP_TOKEN"        # or api_key_env + api_key_header, or auth = "none"
    rows_path = "data"
    paging = "cursor"

    [systems.erp.entities."sale.order"]
    name = "orders"                      # the path under base_url
    attributes = { partner_id = "customer_id" }
    filters = ["customer_id"]            # or { customer_id = "customer" }

A wrong setting raises ``ConfigError`` naming the section, the setting and
the fix.
"""

from __future__ import annotations

from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import ConfigError
from gateway.secrets import read_secret
from gateway.sources.mapping import EntityMap, entities_from_table
from gateway.sources.rest import PAGING_STYLES, Paging, Resource, RestSettings

# Settings of how an entity is read: in the system's table and in each entity's table.
_TEXT = ("key", "ids_param", "ids_separator", "next_path", "cursor_param", "cursor_path",
         "offset_param", "page_param")
_OPTIONAL_TEXT = ("fields_param", "sort_param", "size_param", "rows_path")  # "" turns it off
_COUNTS = {"max_ids": (1, 100_000), "max_url_bytes": (256, 1_000_000),
           "page_size": (1, 100_000), "first_page": (0, 1)}
_READ_SETTINGS = frozenset({*_TEXT, *_OPTIONAL_TEXT, *_COUNTS, "ids_repeat", "paging"})
_SYSTEM_SETTINGS = frozenset({"dialect", "base_url", "timeout", "resilience", "entities",
                              "auth", "token", "token_env", "token_file", "api_key",
                              "api_key_env",
                              "api_key_file", "api_key_header", "parallel_requests",
                              "http_client"})
_ENTITY_SETTINGS = frozenset({"name", "attributes", "filters"})


def rest_settings(section: str, spec: dict[str, Any], base: Path,
                  timeout: float) -> RestSettings:
    """Return the settings of the system in ``[section]``; raises ``ConfigError``."""
    _check_known(section, spec, _SYSTEM_SETTINGS | _READ_SETTINGS)
    base_url = spec.get("base_url")
    parts = urlsplit(base_url) if isinstance(base_url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"[{section}] base_url = {base_url!r} is invalid; set it to the "
                          "http or https URL the entity paths start from, such as "
                          "\"https://erp.example.com/api/v1\"")
    assert isinstance(base_url, str)
    defaults = _read_settings(section, spec, {})
    table = spec.get("entities", {})
    names = entities_from_table(section, {entity: {k: v for k, v in entry.items()
                                                   if k in ("name", "attributes")}
                                          if isinstance(entry, dict) else entry
                                          for entity, entry in _table(section, table).items()})
    resources: dict[str, Resource] = {}
    for entity, entry in table.items():
        where = f'{section}.entities."{entity}"'
        _check_known(where, entry, _ENTITY_SETTINGS | _READ_SETTINGS)
        resource = _resource(where, names[entity], _read_settings(where, entry, defaults),
                             entry.get("filters", {}))
        _check_filter_names(where, resource, names[entity])
        known = resources.get(resource.path)
        if known is not None and known != resource:
            raise ConfigError(f"[{where}] reads path {resource.path!r} with other settings than "
                              "another entity on the same path; give both the same settings")
        resources[resource.path] = resource
    header, setting = _auth(section, spec, base)
    return RestSettings(
        base_url=base_url, resources=resources,
        default=_resource(section, EntityMap(name=""), defaults, {}),
        entities={entity: mapping for entity, mapping in names.items()
                  if mapping.name != entity or mapping.attributes},
        auth_header=header, auth_setting=setting, timeout=timeout,
        parallel_requests=_count(section, "parallel_requests",
                                 spec.get("parallel_requests", 4), 1, 100))


def _table(section: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"[{section}.entities] must be a table with one sub-table per "
                          f"schema entity, such as [{section}.entities.\"res.partner\"]")
    return value


def _check_known(section: str, table: Any, known: frozenset[str]) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table of settings")
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"[{section}] {unknown[0]} is not a setting of dialect rest; use "
                          f"one of {', '.join(sorted(known))}")


def _read_settings(section: str, table: dict[str, Any],
                   inherited: dict[str, Any]) -> dict[str, Any]:
    """Return the read settings of ``table`` checked, over the ``inherited`` ones."""
    result = dict(inherited)
    result.update(_texts(section, table))
    for name, (low, high) in _COUNTS.items():
        if name in table:
            result[name] = _count(section, name, table[name], low, high)
    if "ids_repeat" in table:
        if not isinstance(table["ids_repeat"], bool):
            raise ConfigError(f"[{section}] ids_repeat = {table['ids_repeat']!r} is invalid; "
                              "set it to true or false")
        if table["ids_repeat"] and "ids_separator" in table:
            raise ConfigError(f"[{section}] sets both ids_repeat = true and ids_separator; "
                              "remove ids_separator, because repeated parameters need none")
        result["ids_repeat"] = table["ids_repeat"]
    if "paging" in table:
        if table["paging"] not in PAGING_STYLES:
            raise ConfigError(f"[{section}] paging = {table['paging']!r} is invalid; use one "
                              f"of {', '.join(PAGING_STYLES)}")
        result["paging"] = table["paging"]
    return result


def _texts(section: str, table: dict[str, Any]) -> dict[str, str]:
    result = {}
    for name in _TEXT:
        if name in table:
            value = table[name]
            if not isinstance(value, str) or not value:
                raise ConfigError(f"[{section}] {name} = {value!r} is invalid; set it to a "
                                  "non-empty string")
            result[name] = value
    for name in _OPTIONAL_TEXT:
        if name in table:
            value = table[name]
            if not isinstance(value, str):
                raise ConfigError(f"[{section}] {name} = {value!r} is invalid; set it to a "
                                  "string, or to \"\" when the API has none")
            result[name] = value
    for name in ("rows_path", "next_path", "cursor_path"):
        path = result.get(name, "")
        if path and "" in path.split("."):
            raise ConfigError(f"[{section}] {name} = {path!r} is invalid; write the keys from "
                              "the body down to the value separated by single dots, such as "
                              "\"result.items\"")
    return result


def _resource(section: str, mapping: EntityMap, settings: dict[str, Any],
              filters: Any) -> Resource:
    paging_options: dict[str, Any] = {
        item.name: settings[item.name] for item in dataclass_fields(Paging)
        if item.name in settings and item.name != "style"}
    if "size_param" in paging_options:
        paging_options["size_param"] = _off(paging_options["size_param"])
    paging = Paging(style=settings.get("paging", "none"), **paging_options)
    resource_options: dict[str, Any] = {
        item.name: settings[item.name] for item in dataclass_fields(Resource)
        if item.name in settings and item.name not in ("path", "filters", "paging")}
    for name in ("fields_param", "sort_param"):
        if name in resource_options:
            resource_options[name] = _off(resource_options[name])
    return Resource(path=mapping.name, filters=_filters(section, filters), paging=paging,
                    **resource_options)


def _off(value: str) -> str | None:
    return value or None


def _filters(section: str, value: Any) -> dict[str, str]:
    if isinstance(value, list) and all(isinstance(item, str) and item for item in value):
        return {item: item for item in value}
    if isinstance(value, dict) and all(isinstance(item, str) and item
                                       for item in value.values()):
        return dict(value)
    raise ConfigError(f"[{section}] filters = {value!r} is invalid; list the attributes the "
                      "API filters by, such as [\"customer_id\"], or map each attribute to "
                      "its query parameter, such as { customer_id = \"customer\" }")


def _check_filter_names(section: str, resource: Resource, mapping: EntityMap) -> None:
    for name in resource.filters:
        system_name = mapping.attribute(name)
        if system_name != name:
            raise ConfigError(f"[{section}] filters names {name!r}, a schema attribute; name "
                              f"the API's attribute {system_name!r} instead, as attributes "
                              "maps it")


def _count(section: str, name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"[{section}] {name} = {value!r} is invalid; use a whole number "
                          f"from {low} to {high}")
    return value


def _auth(section: str, spec: dict[str, Any], base: Path) -> tuple[tuple[str, str] | None, str]:
    """Return the header every request carries and the setting it came from."""
    token = read_secret(f"[{section}]", spec, "token", base)
    api_key = read_secret(f"[{section}]", spec, "api_key", base)
    auth = spec.get("auth")
    if auth not in (None, "none"):
        raise ConfigError(f"[{section}] auth = {auth!r} is invalid; the only value is \"none\", "
                          "for an API without authentication")
    if token is not None and api_key is not None:
        raise ConfigError(f"[{section}] sets both a token and an api_key; keep the one the API "
                          "expects")
    if auth == "none":
        if token is not None or api_key is not None:
            raise ConfigError(f"[{section}] sets auth = \"none\" and a credential; remove one")
        return None, "auth"
    if token is not None:
        return ("Authorization", f"Bearer {token}"), "token_env or token_file"
    if api_key is not None:
        header = spec.get("api_key_header", "X-API-Key")
        if not isinstance(header, str) or not header:
            raise ConfigError(f"[{section}] api_key_header = {header!r} is invalid; set it to "
                              "the header name the API reads the key from, such as "
                              "\"X-API-Key\"")
        return (header, api_key), "api_key_env or api_key_file"
    raise ConfigError(f"[{section}] needs credentials: set token_env or token_file for a "
                      "bearer token, api_key_env or api_key_file for an API key header, or "
                      "auth = \"none\" for an API without authentication")
