"""The engine the demo Dataverse and SAP servers share: entity sets, queries, paging, $batch.

An entity set is a view of one model of ``DemoData.erp`` under the fake's
own names, declared as a table of fake property -> Odoo field. Many2one
fields that the schema shows as names (currency, carrier, bank) hold the
referenced record's name, as ``gateway.demo.sql`` does. The servers differ
only in URLs, envelopes, wire values, auth and errors, which each defines.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.demo.control import DemoControl, RequestLogEntry
from gateway.demo.data import DemoData, Record
from gateway.demo.odata_filter import (
    FilterError,
    PropertyType,
    count_key_equalities,
    parse_filter,
)

# (model, field) -> the model whose record name the property holds in place of the id.
NAME_REFERENCES = {
    ("sale.order", "currency_id"): "res.currency",
    ("account.move", "currency_id"): "res.currency",
    ("stock.picking", "carrier_id"): "delivery.carrier",
    ("res.partner.bank", "bank_id"): "res.bank",
}
MAX_OPEN_PAGES = 1000  # paging states kept; the oldest is dropped first


class QueryError(Exception):
    """A read the server rejects, with the HTTP status and error code to return."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class EntitySetSpec:
    """One entity set of a fake: its name, the Odoo model and fake property -> Odoo field."""

    name: str
    model: str
    properties: Mapping[str, str]


@dataclass
class EntitySet:
    """The records of one entity set, in the fake's property names."""

    spec: EntitySetSpec
    records: list[Record]
    types: dict[str, PropertyType]


def build_sets(data: DemoData, specs: list[EntitySetSpec],
               extra: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, EntitySet]:
    """Return each declared entity set filled from ``data.erp``.

    ``extra`` maps an entity set to properties computed per record from the
    Odoo record, such as a Dataverse GUID primary key.
    """
    names = {model: {r["id"]: r["name"] for r in data.erp.get(model, [])}
             for model in set(NAME_REFERENCES.values())}
    sets = {}
    for spec in specs:
        records = []
        for source in data.erp.get(spec.model, []):
            record: Record = {}
            for prop, odoo_field in spec.properties.items():
                value = source.get(odoo_field)
                target = NAME_REFERENCES.get((spec.model, odoo_field))
                if target is not None and value is not None:
                    value = names[target][value]
                record[prop] = value
            for prop, make in (extra or {}).get(spec.name, {}).items():
                record[prop] = make(source)
            records.append(record)
        sets[spec.name] = EntitySet(spec, records, _types(records))
    return sets


def _types(records: list[Record]) -> dict[str, PropertyType]:
    types: dict[str, PropertyType] = {}
    for record in records:
        for prop, value in record.items():
            if value is None or prop in types:
                continue
            if isinstance(value, bool):
                types[prop] = "bool"
            elif isinstance(value, int):
                types[prop] = "int"
            elif isinstance(value, float):
                types[prop] = "decimal"
            else:
                types[prop] = "str"
    if records:
        for prop in records[0]:
            types.setdefault(prop, "str")
    return types


@dataclass
class Query:
    """The parsed system query options of one read."""

    select: list[str] | None
    keys: int
    records: list[Record]


@dataclass
class Pager:
    """Opaque paging tokens: each maps to the rows still to send and their projection."""

    open: dict[str, tuple[list[Record], list[str] | None]] = field(default_factory=dict)

    def park(self, rows: list[Record], select: list[str] | None) -> str:
        token = secrets.token_urlsafe(12)
        self.open[token] = (rows, select)
        while len(self.open) > MAX_OPEN_PAGES:
            del self.open[next(iter(self.open))]
        return token

    def resume(self, token: str) -> tuple[list[Record], list[str] | None]:
        state = self.open.pop(token, None)
        if state is None:
            raise QueryError(400, "InvalidSkipToken", "the paging token is invalid or expired")
        return state


def run_query(entity_set: EntitySet, params: Mapping[str, str], version: str) -> Query:
    """Apply ``$select``, ``$filter``, ``$orderby`` and ``$top`` to an entity set."""
    select = None
    if "$select" in params:
        select = [name.strip() for name in params["$select"].split(",") if name.strip()]
        _check_properties(entity_set, select)
    records = entity_set.records
    keys = 0
    if "$filter" in params:
        try:
            predicate = parse_filter(params["$filter"], entity_set.types, version)
        except FilterError as exc:
            raise QueryError(400, "InvalidFilter", str(exc)) from exc
        records = [record for record in records if predicate(record)]
        keys = count_key_equalities(params["$filter"])
    if "$orderby" in params:
        records = _ordered(entity_set, records, params["$orderby"])
    if "$top" in params:
        top = params["$top"]
        if not top.isdigit():
            raise QueryError(400, "InvalidTop", f"$top {top!r} is not a whole number")
        records = records[:int(top)]
    return Query(select, keys, records)


def _check_properties(entity_set: EntitySet, names: list[str]) -> None:
    for name in names:
        if name not in entity_set.types:
            raise QueryError(400, "PropertyNotFound",
                             f"could not find a property named {name!r} on "
                             f"{entity_set.spec.name}")


def _ordered(entity_set: EntitySet, records: list[Record], text: str) -> list[Record]:
    terms = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise QueryError(400, "InvalidOrderBy", f"$orderby term {part!r} is invalid")
        terms.append((words[0], len(words) == 2 and words[1] == "desc"))
    _check_properties(entity_set, [name for name, _descending in terms])
    ordered = list(records)
    # Stable sorts from the last term to the first; nulls sort first, as on SQL Server.
    for name, descending in reversed(terms):
        blank: Any = "" if entity_set.types[name] == "str" else 0
        ordered.sort(key=lambda r: _sort_key(r.get(name), blank), reverse=descending)
    return ordered


def _sort_key(value: Any, blank: Any) -> tuple[bool, Any]:
    return (value is not None, blank if value is None else value)


def log_read(control: DemoControl, method: str, path: str, entity: str | None, query: Query | None,
             status: int) -> None:
    """Record one read in the request log."""
    control.record(RequestLogEntry(method=method, path=path, entity=entity,
                                   keys=query.keys if query else 0,
                                   fields=query.select if query else None, status=status))


def parse_batch_request(body: bytes, boundary: str) -> list[tuple[str, str, dict[str, str]]]:
    """Return (method, target, headers) of each request in a ``$batch`` body.

    Header names are lower-cased. Raises ``QueryError`` for a malformed body.
    """
    text = body.decode("utf-8", errors="replace").replace("\r\n", "\n")
    delimiter = f"--{boundary}"
    if f"{delimiter}--" not in text:
        raise QueryError(400, "InvalidBatch", "the batch body has no closing boundary")
    requests = []
    for section in text.split(f"{delimiter}--")[0].split(delimiter)[1:]:
        mime, _separator, http = section.lstrip("\n").partition("\n\n")
        if "multipart/mixed" in mime.lower():
            raise QueryError(400, "InvalidBatch", "change sets may not contain GET requests")
        head = http.split("\n\n", 1)[0].split("\n")
        words = head[0].split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            raise QueryError(400, "InvalidBatch", "a batch part has no request line")
        headers = {}
        for line in head[1:]:
            name, _colon, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        requests.append((words[0], words[1], headers))
    if not requests:
        raise QueryError(400, "InvalidBatch", "the batch body contains no requests")
    return requests


def encode_batch_response(boundary: str, parts: list[tuple[int, dict[str, str], bytes]]) -> bytes:
    """Return a ``multipart/mixed`` batch response body with one part per inner response."""
    lines: list[str] = []
    for status, headers, content in parts:
        lines += [f"--{boundary}", "Content-Type: application/http",
                  "Content-Transfer-Encoding: binary", "", f"HTTP/1.1 {status} {_reason(status)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += ["", content.decode()]
    lines.append(f"--{boundary}--")
    return ("\r\n".join(lines) + "\r\n").encode()


def _reason(status: int) -> str:
    return {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 429: "Too Many Requests"}.get(status, "Error")
