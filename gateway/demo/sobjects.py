"""In-memory sObject store that runs parsed SOQL queries for the demo Salesforce server.

The store checks a query the way Salesforce does before it runs it: the
object and every field must exist, and each literal in the WHERE clause must
match the field's type. Text comparisons and LIKE ignore case, ids match in
their 15- or 18-character form, and ORDER BY puts nulls first unless the
query contains NULLS LAST.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from gateway.demo.identifiers import case_safe_id
from gateway.demo.soql import (
    Comparison,
    Condition,
    FieldRef,
    Junction,
    Membership,
    Negation,
    OrderItem,
    Query,
    SoqlError,
    Value,
)

Record = dict[str, Any]
Predicate = Callable[[Record], bool]

# Field API name -> SOAP type of the objects that gateway.demo.data generates.
FIELD_TYPES: dict[str, dict[str, str]] = {
    "Account": {
        "Id": "id", "Name": "string", "VAT_Number__c": "string", "PEC_Email__c": "email",
        "Phone": "phone", "BillingStreet": "textarea", "BillingCity": "string",
        "BillingPostalCode": "string", "BillingState": "string", "BillingCountry": "string",
        "Region__c": "picklist", "OwnerId": "reference", "Industry": "picklist",
        "ERP_Customer_Number__c": "string",
    },
    "Contact": {
        "Id": "id", "AccountId": "reference", "FirstName": "string", "LastName": "string",
        "Email": "email", "Phone": "phone", "Title": "string",
    },
    "Opportunity": {
        "Id": "id", "AccountId": "reference", "Name": "string", "StageName": "picklist",
        "Amount": "currency", "CloseDate": "date", "Probability": "percent",
    },
}
_ID_TYPES = frozenset({"id", "reference"})
_TEXT_TYPES = frozenset({"string", "email", "phone", "picklist", "textarea", "url"}) | _ID_TYPES
_NUMBER_TYPES = frozenset({"double", "currency", "percent", "int"})
_MAX_OFFSET = 2000  # Salesforce's limit on OFFSET
_ID_SHAPE = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-5]{3})?")
_COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda left, right: bool(left < right),
    "<=": lambda left, right: bool(left <= right),
    ">": lambda left, right: bool(left > right),
    ">=": lambda left, right: bool(left >= right),
}


@dataclass(frozen=True)
class QueryResult:
    sobject: str  # canonical API name
    fields: list[str]  # canonical API names in SELECT order, empty for COUNT()
    total_size: int
    records: list[Record]  # matching source records, sorted and sliced, not projected


def _position(field: FieldRef) -> str:
    return f"ERROR at Row:{field.row}:Column:{field.column}\n"


def _infer_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "double"
    return "string"


class SObjectStore:
    """Records per sObject, with the field types that queries are checked against.

    Objects missing from ``FIELD_TYPES`` take their fields and types from
    their records, so a hand-written data set works too.
    """

    def __init__(self, crm: dict[str, list[Record]]) -> None:
        self.records = crm
        self.types: dict[str, dict[str, str]] = {name: dict(fields)
                                                 for name, fields in FIELD_TYPES.items()}
        for name, records in crm.items():
            if name in self.types:
                continue
            inferred: dict[str, str] = {}
            for record in records:
                for field, value in record.items():
                    if field not in inferred or value is not None:
                        inferred[field] = _infer_type(value)
            self.types[name] = inferred
        self.object_names = {name.lower(): name for name in self.types}

    def execute(self, query: Query) -> QueryResult:
        """Run a parsed query, or raise SoqlError with the errorCode that Salesforce returns."""
        sobject = self.resolve_object(query.sobject)
        fields = [self.resolve_field(sobject, field) for field in query.fields]
        seen: set[str] = set()
        for name, field in zip(fields, query.fields, strict=True):
            if name in seen:
                raise SoqlError("MALFORMED_QUERY",
                                f"{_position(field)}duplicate field selected: {name}")
            seen.add(name)
        if query.offset is not None and query.offset > _MAX_OFFSET:
            raise SoqlError("NUMBER_OUTSIDE_VALID_RANGE",
                            f"Maximum SOQL offset allowed is {_MAX_OFFSET}")

        predicate = self.compile(sobject, query.where) if query.where else None
        order = [(self.resolve_field(sobject, item.field), item) for item in query.order_by]
        rows = [record for record in self.records.get(sobject, [])
                if predicate is None or predicate(record)]
        rows = self.sort(sobject, rows, order)
        start = query.offset or 0
        end = None if query.limit is None else start + query.limit
        rows = rows[start:end]
        return QueryResult(sobject, fields, len(rows), [] if query.count_only else rows)

    def resolve_object(self, ref: FieldRef) -> str:
        name = self.object_names.get(ref.name.lower())
        if name is None:
            raise SoqlError("INVALID_TYPE", f"{_position(ref)}sObject type '{ref.name}' is not "
                            "supported. If you are attempting to use a custom object, be sure "
                            "to append the '__c' after the entity name.")
        return name

    def resolve_field(self, sobject: str, ref: FieldRef) -> str:
        if "." in ref.name:
            relationship = ref.name.split(".", 1)[0]
            raise SoqlError("INVALID_FIELD", f"{_position(ref)}Didn't understand relationship "
                            f"'{relationship}' in field path. The demo server answers no "
                            "relationship queries; query the related object by its id.")
        for name in self.types[sobject]:
            if name.lower() == ref.name.lower():
                return name
        raise SoqlError("INVALID_FIELD", f"{_position(ref)}No such column '{ref.name}' on entity "
                        f"'{sobject}'. If you are attempting to use a custom field, be sure to "
                        "append the '__c' after the custom field name.")

    # --- WHERE ---------------------------------------------------------------------------

    def compile(self, sobject: str, condition: Condition) -> Predicate:
        if isinstance(condition, Junction):
            parts = [self.compile(sobject, operand) for operand in condition.operands]
            if condition.connective == "AND":
                return lambda record: all(part(record) for part in parts)
            return lambda record: any(part(record) for part in parts)
        if isinstance(condition, Negation):
            inner = self.compile(sobject, condition.operand)
            return lambda record: not inner(record)
        if isinstance(condition, Membership):
            return self.compile_membership(sobject, condition)
        return self.compile_comparison(sobject, condition)

    def compile_membership(self, sobject: str, condition: Membership) -> Predicate:
        field = self.resolve_field(sobject, condition.field)
        field_type = self.types[sobject][field]
        wanted = [self.literal(field, field_type, value, condition.field)
                  for value in condition.values]
        negated = condition.negated

        def matches(record: Record) -> bool:
            found = _record_key(record.get(field), field_type) in wanted
            return found != negated

        return matches

    def compile_comparison(self, sobject: str, condition: Comparison) -> Predicate:
        field = self.resolve_field(sobject, condition.field)
        field_type = self.types[sobject][field]
        if condition.operator == "LIKE":
            if field_type not in _TEXT_TYPES:
                raise _type_error(condition.field, field, "string", quoted=True)
            pattern = re.compile(condition.like_pattern or "", re.IGNORECASE | re.DOTALL)
            return lambda record: (isinstance(record.get(field), str)
                                   and pattern.fullmatch(record[field]) is not None)

        wanted = self.literal(field, field_type, condition.value, condition.field)
        operator = condition.operator
        if operator == "=":
            return lambda record: _record_key(record.get(field), field_type) == wanted
        if operator == "!=":
            return lambda record: _record_key(record.get(field), field_type) != wanted
        compare = _COMPARATORS[operator]
        if field_type in _ID_TYPES and wanted is not None:
            # Ids order with their case kept, as ORDER BY Id does, so that
            # "Id > last id" pages through an id-ordered result exactly.
            wanted = case_safe_id(str(condition.value.value))

            def ordered_id(record: Record) -> bool:
                actual = record.get(field)
                return isinstance(actual, str) and compare(case_safe_id(actual), wanted)

            return ordered_id

        def ordered(record: Record) -> bool:
            actual = _record_key(record.get(field), field_type)
            return actual is not None and wanted is not None and compare(actual, wanted)

        return ordered

    def literal(self, field: str, field_type: str, value: Value, ref: FieldRef) -> Any:
        """Check a literal against the field's type and return it in comparable form."""
        if value.kind == "null":
            return None
        if field_type in _TEXT_TYPES:
            if value.kind != "string":
                raise _type_error(ref, field, "string", quoted=True)
            if field_type in _ID_TYPES:
                return _id_key(value.value, ref, field)
            return str(value.value).casefold()
        if field_type in _NUMBER_TYPES:
            if value.kind != "number":
                raise _type_error(ref, field, field_type, quoted=False)
            return value.value
        if field_type == "date":
            if value.kind != "date":
                raise _type_error(ref, field, "date", quoted=False)
            return value.value.isoformat() if isinstance(value.value, date) else None
        if field_type == "boolean" and value.kind != "boolean":
            raise _type_error(ref, field, "boolean", quoted=False)
        return value.value

    # --- ORDER BY ------------------------------------------------------------------------

    def sort(self, sobject: str, rows: list[Record],
             order: list[tuple[str, OrderItem]]) -> list[Record]:
        # One stable pass per key, last key first, gives a lexicographic order.
        for field, item in reversed(order):
            field_type = self.types[sobject][field]
            present = [row for row in rows if row.get(field) is not None]
            missing = [row for row in rows if row.get(field) is None]
            present.sort(key=lambda row: _sort_key(row[field], field_type),
                         reverse=item.descending)
            rows = present + missing if item.nulls_last else missing + present
        return rows


def _type_error(ref: FieldRef, field: str, expected: str, *, quoted: bool) -> SoqlError:
    quoting = "should be enclosed in quotes" if quoted else "should not be enclosed in quotes"
    return SoqlError("INVALID_FIELD", f"{_position(ref)}value of filter criterion for field "
                     f"'{field}' must be of type {expected} and {quoting}")


def _id_key(text: str, ref: FieldRef, field: str) -> str:
    if not _ID_SHAPE.fullmatch(text):
        # Salesforce quotes the bad id here, but the demo server echoes no literals.
        raise SoqlError("INVALID_QUERY_FILTER_OPERATOR",
                        f"{_position(ref)}invalid ID field in the filter on '{field}'. "
                        "Use a 15- or 18-character Salesforce id.")
    return case_safe_id(text).casefold()


def _record_key(value: Any, field_type: str) -> Any:
    """Return a record value in the form that ``SObjectStore.literal`` returns."""
    if isinstance(value, str) and field_type in _TEXT_TYPES:
        return value.casefold()
    return value


def _sort_key(value: Any, field_type: str) -> Any:
    # Salesforce sorts text case-insensitively; ids keep their case.
    if isinstance(value, str) and field_type in _TEXT_TYPES - _ID_TYPES:
        return value.casefold()
    return value
