"""sObject Collections retrieve for the demo Salesforce server.

``POST /services/data/vNN.N/composite/sobjects/{Type}`` with the body
``{"ids": [...], "fields": [...]}`` returns one entry per id, in the order
of the ids: the record with the requested fields, or ``null`` when no
record of that type has the id. As Salesforce documents it, a request
takes at most 2,000 ids, and a field that does not exist rejects the whole
request with 400 ``INVALID_FIELD``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.demo.identifiers import case_safe_id
from gateway.demo.sobjects import SObjectStore

MAX_RETRIEVE_IDS = 2_000


class CollectionError(Exception):
    """A retrieve request the demo server rejects, with the status and ``errorCode`` to return.

    NOTE: Salesforce documents the 400 ``INVALID_FIELD`` answer. The codes for a
    body of the wrong shape or too many ids are this server's choice.
    """

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class RetrieveRequest:
    """A checked retrieve request: canonical object and field names, ids as sent."""

    sobject: str
    ids: list[str]
    fields: list[str]


def parse_retrieve(store: SObjectStore, type_name: str, body: Any) -> RetrieveRequest:
    """Check a retrieve request body against ``store``, or raise ``CollectionError``."""
    sobject = store.object_names.get(type_name.lower())
    if sobject is None:
        raise CollectionError(404, "NOT_FOUND", "The requested resource does not exist")
    if not isinstance(body, dict):
        raise CollectionError(400, "JSON_PARSER_ERROR",
                              "The request body must be a JSON object with ids and fields.")
    ids, fields = body.get("ids"), body.get("fields")
    if not _is_text_list(ids) or not ids:
        raise CollectionError(400, "INVALID_FIELD",
                              "ids is required: a non-empty list of record id strings.")
    if not _is_text_list(fields) or not fields:
        raise CollectionError(400, "INVALID_FIELD",
                              "fields is required: a non-empty list of field names.")
    if len(ids) > MAX_RETRIEVE_IDS:
        raise CollectionError(400, "LIMIT_EXCEEDED",
                              f"The request has {len(ids)} ids, above the maximum of "
                              f"{MAX_RETRIEVE_IDS}. Split it into several requests.")
    return RetrieveRequest(sobject, ids, [_resolve_field(store, sobject, f) for f in fields])


def retrieve(store: SObjectStore, request: RetrieveRequest,
             version: str) -> list[dict[str, Any] | None]:
    """Return the projected record or None for each id of ``request``, in order."""
    by_id = {case_safe_id(record["Id"]).casefold(): record
             for record in store.records.get(request.sobject, [])
             if isinstance(record.get("Id"), str)}
    results: list[dict[str, Any] | None] = []
    for record_id in request.ids:
        key = _id_key(record_id)
        record = by_id.get(key) if key is not None else None
        results.append(None if record is None else _project(request, record, version))
    return results


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _resolve_field(store: SObjectStore, sobject: str, name: str) -> str:
    for field in store.types[sobject]:
        if field.lower() == name.lower():
            return field
    # The message names the field, which is a schema name and never a data value.
    raise CollectionError(400, "INVALID_FIELD",
                          f"No such column '{name}' on entity '{sobject}'. If you are "
                          "attempting to use a custom field, be sure to append the '__c' "
                          "after the custom field name.")


def _id_key(record_id: str) -> str | None:
    # An id of the wrong length gets null, as Salesforce returns for an invalid id.
    try:
        return case_safe_id(record_id).casefold()
    except ValueError:
        return None


def _project(request: RetrieveRequest, record: dict[str, Any],
             version: str) -> dict[str, Any]:
    projected: dict[str, Any] = {"attributes": {
        "type": request.sobject,
        "url": f"/services/data/{version}/sobjects/{request.sobject}/{record['Id']}",
    }}
    for field in request.fields:
        projected[field] = record.get(field)
    return projected
