"""The OpenAPI 3.0 description of the demo REST ERP and CRM (``gateway.demo.rest``).

Tools that build a GraphQL schema from OpenAPI (GraphQL Mesh, Hive Gateway)
read it from ``/openapi.json``, so it names every parameter, response body
and error body that the fake serves, and nothing else. Every field except
``id`` is nullable, because the demo data leaves some of them empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OPENAPI_VERSION = "3.0.3"

# The OpenAPI type of each field that the REST ERP and the REST CRM
# (``gateway.demo.rest_crm``) serve; any other field is a string.
_INTEGER_FIELDS = frozenset({"id", "customer_id", "order_id"})
_NUMBER_FIELDS = frozenset({"credit_limit", "balance", "amount_untaxed", "amount_total",
                            "amount_due", "amount"})
_DATETIME_FIELDS = frozenset({"ordered_at", "promised_at", "scheduled_at", "deadline",
                              "done_at"})
_DATE_FIELDS = frozenset({"invoice_date", "due_date", "close_date"})

_ERP_SUMMARY = ("A plain REST/JSON ERP over the Fonte demo data: customers, bank accounts, "
                "orders, invoices and shipments, read in batches by id or by parent key.")

_ERROR_STATUSES = {
    "400": "An invalid parameter: an unknown field, too many ids, a bad limit, offset or cursor.",
    "401": "The API key is missing or invalid.",
    "414": "The request URL is too long; send fewer ids per request.",
    "429": "Too many requests; retry after the delay in the Retry-After header.",
    "500": "An unexpected server error.",
    "503": "The service is unavailable for now.",
}


def schema_name(resource: str) -> str:
    """Return the schema name of one record of ``resource``, such as ``BankAccount``."""
    name = "".join(word.capitalize() for word in resource.split("-"))
    if name.endswith("ies"):
        return name.removesuffix("ies") + "y"  # opportunities -> Opportunity
    return name.removesuffix("s")


def field_schema(name: str, integer_fields: frozenset[str] = _INTEGER_FIELDS) -> dict[str, Any]:
    """Return the JSON schema of one field's value."""
    schema: dict[str, Any]
    if name in integer_fields:
        schema = {"type": "integer"}
    elif name in _NUMBER_FIELDS:
        schema = {"type": "number"}
    elif name in _DATETIME_FIELDS:
        schema = {"type": "string", "format": "date-time"}
    elif name in _DATE_FIELDS:
        schema = {"type": "string", "format": "date"}
    else:
        schema = {"type": "string"}
    if name != "id":
        schema["nullable"] = True
    return schema


def openapi_document(resources: Mapping[str, list[str]], *, api_path: str, max_ids: int,
                     max_page_size: int, default_page_size: int, api_key_header: str,
                     title: str = "Fonte demo ERP",
                     summary: str = _ERP_SUMMARY,
                     integer_fields: frozenset[str] = _INTEGER_FIELDS) -> dict[str, Any]:
    """Build the document for ``resources``, each a resource name and its field names.

    ``integer_fields`` are the fields typed as integers, ids included. Every
    other field gets the type that its name has in the ERP's resources.
    """
    schemas: dict[str, Any] = {
        "PageMeta": {"type": "object", "required": ["next_cursor"], "properties": {
            "next_cursor": {"type": "string", "nullable": True, "description":
                            "Pass as cursor to read the next page; null on the last page."}}},
        "PageLinks": {"type": "object", "required": ["next"], "properties": {
            "next": {"type": "string", "nullable": True, "description":
                     "Absolute URL of the next page; null on the last page."}}},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["status", "code", "message"], "properties": {
                "status": {"type": "integer"}, "code": {"type": "string"},
                "message": {"type": "string"}}}}},
    }
    paths: dict[str, Any] = {}
    for resource, fields in resources.items():
        name = schema_name(resource)
        schemas[name] = {"type": "object", "required": ["id"], "additionalProperties": False,
                         "properties": {field: field_schema(field, integer_fields)
                                        for field in fields}}
        schemas[f"{name}Page"] = {
            "type": "object", "required": ["data", "meta", "links"], "properties": {
                "data": {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}},
                "meta": {"$ref": "#/components/schemas/PageMeta"},
                "links": {"$ref": "#/components/schemas/PageLinks"}}}
        schemas[f"{name}Item"] = {"type": "object", "required": ["data"], "properties": {
            "data": {"$ref": f"#/components/schemas/{name}"}}}
        paths[f"/{resource}"] = {"get": _list_operation(resource, name, fields, max_ids,
                                                        max_page_size, default_page_size,
                                                        integer_fields)}
        paths[f"/{resource}/{{id}}"] = {"get": _item_operation(resource, name, fields,
                                                               integer_fields)}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": "1.0.0", "description": summary},
        "servers": [{"url": api_path}],
        "security": [{"bearerAuth": []}, {"apiKeyAuth": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "apiKeyAuth": {"type": "apiKey", "in": "header", "name": api_key_header}},
            "headers": {"Retry-After": {"description": "Seconds to wait before retrying.",
                                        "schema": {"type": "integer"}}},
            "responses": _error_responses(),
        },
    }


def _fields_parameter(fields: list[str]) -> dict[str, Any]:
    return {"name": "fields", "in": "query", "required": False, "style": "form",
            "explode": False, "description": "Fields to return, comma-separated; id is always "
            "returned. All fields when absent.",
            "schema": {"type": "array", "items": {"type": "string", "enum": fields}}}


def _list_operation(resource: str, name: str, fields: list[str], max_ids: int,
                    max_page_size: int, default_page_size: int,
                    integer_fields: frozenset[str]) -> dict[str, Any]:
    id_type = "integer" if "id" in integer_fields else "string"
    parameters: list[dict[str, Any]] = [
        {"name": "ids", "in": "query", "required": False, "style": "form", "explode": False,
         "description": f"Return only the records with these ids, at most {max_ids}.",
         "schema": {"type": "array", "maxItems": max_ids, "items": {"type": id_type}}},
        _fields_parameter(fields),
        {"name": "sort", "in": "query", "required": False, "style": "form", "explode": False,
         "description": "Sort terms, comma-separated: a field, or -field for descending. "
         "Empty values come last in ascending order. Id order when absent.",
         "schema": {"type": "array", "items": {"type": "string", "enum": [
             f"{prefix}{field}" for field in fields for prefix in ("", "-")]}}},
        {"name": "limit", "in": "query", "required": False, "description": "Page size.",
         "schema": {"type": "integer", "minimum": 1, "maximum": max_page_size,
                    "default": default_page_size}},
        {"name": "cursor", "in": "query", "required": False, "description":
         "meta.next_cursor of the previous page; no other filter applies with it.",
         "schema": {"type": "string"}},
        {"name": "offset", "in": "query", "required": False, "description":
         "Records to skip before the page starts; not with cursor.",
         "schema": {"type": "integer", "minimum": 0, "default": 0}},
    ]
    for field in fields:
        if field == "id":
            continue
        item_type = "integer" if field in integer_fields else "string"
        parameters.append({"name": field, "in": "query", "required": False, "style": "form",
                           "explode": False, "description": f"Return only the records whose "
                           f"{field} is one of these values.",
                           "schema": {"type": "array", "items": {"type": item_type}}})
    responses: dict[str, Any] = {"200": {"description": f"One page of {resource}.", "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{name}Page"}}}}}
    responses.update({status: {"$ref": f"#/components/responses/Error{status}"}
                      for status in _ERROR_STATUSES})
    return {"operationId": f"list{name}s", "summary": f"List {resource}",
            "parameters": parameters, "responses": responses}


def _item_operation(resource: str, name: str, fields: list[str],
                    integer_fields: frozenset[str]) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": f"One record of {resource}.", "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{name}Item"}}}},
        "404": {"description": "No record has this id.", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}}
    responses.update({status: {"$ref": f"#/components/responses/Error{status}"}
                      for status in _ERROR_STATUSES if status != "414"})
    return {"operationId": f"get{name}", "summary": f"Read one record of {resource}",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {
                "type": "integer" if "id" in integer_fields else "string"}},
                _fields_parameter(fields)],
            "responses": responses}


def _error_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, description in _ERROR_STATUSES.items():
        response: dict[str, Any] = {"description": description, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        if status == "429":
            response["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
        responses[f"Error{status}"] = response
    return responses
