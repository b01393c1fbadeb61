"""Field tables, stored rows and domain evaluation of the demo Odoo server.

``MODEL_FIELDS`` declares each model that the demo data set fills, with the
field names, types and labels of Odoo 17/18. ``RecordStore`` loads the data
set into rows in database form: empty values become None, dates and
datetimes become Odoo's server strings, and every many2one id must point at
an existing record. ``compile_domain`` and ``sort_rows`` evaluate the
``domain`` and ``order`` arguments of the ORM methods.

The domain rules follow ``odoo/osv/expression.py`` of Odoo 17. Prefix
operators combine leaves, and leaves without an operator are AND-ed. Empty
values behave like SQL NULL, so ``!=`` and ``not in`` also match them. A
many2one compares by id, or by the target's name for a string operand, and
a dotted path reads as ``any``. Errors quote the offending leaf as Odoo
does, so they can contain request values.
"""

from __future__ import annotations

import operator as op
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

VALUE_ERROR = "builtins.ValueError"
USER_ERROR = "odoo.exceptions.UserError"

Row = dict[str, Any]
Predicate = Callable[[Row], bool]


class OdooFault(Exception):
    """An error that the demo server sends the way Odoo serialises an exception.

    ``name`` is the Python class path that Odoo puts in ``error.data.name``,
    for example ``odoo.exceptions.AccessDenied``.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


@dataclass(frozen=True)
class FieldSpec:
    """One field as ``fields_get`` describes it."""

    type: str
    string: str
    relation: str | None = None
    selection: tuple[tuple[str, str], ...] = ()


def _char(label: str) -> FieldSpec:
    return FieldSpec("char", label)


def _many2one(relation: str, label: str) -> FieldSpec:
    return FieldSpec("many2one", label, relation=relation)


def _selection(label: str, *choices: tuple[str, str]) -> FieldSpec:
    return FieldSpec("selection", label, selection=choices)


_ID = FieldSpec("integer", "ID")
_MONETARY_TOTAL = FieldSpec("monetary", "Total")
_CURRENCY = _many2one("res.currency", "Currency")

# NOTE: types and names are those of Odoo 17/18 Community with the sale,
# account, stock and delivery modules. The labels are the English `string`
# attributes as best known and may differ from a given release. Fields that
# every real model has (display_name, create_date, ...) are missing here.
MODEL_FIELDS: dict[str, dict[str, FieldSpec]] = {
    "res.partner": {
        "id": _ID,
        "name": _char("Name"),
        "vat": _char("Tax ID"),
        "email": _char("Email"),
        "phone": _char("Phone"),
        "street": _char("Street"),
        "city": _char("City"),
        "zip": _char("Zip"),
        "ref": _char("Reference"),
        "is_company": FieldSpec("boolean", "Is a Company"),
        "customer_rank": FieldSpec("integer", "Customer Rank"),
        "credit_limit": FieldSpec("float", "Credit Limit"),
        "credit": FieldSpec("monetary", "Total Receivable"),
    },
    "res.partner.bank": {
        "id": _ID,
        "partner_id": _many2one("res.partner", "Account Holder"),
        "acc_number": _char("Account Number"),
        "bank_id": _many2one("res.bank", "Bank"),
    },
    "res.bank": {"id": _ID, "name": _char("Name")},
    "res.currency": {"id": _ID, "name": _char("Currency")},
    "delivery.carrier": {"id": _ID, "name": _char("Delivery Method")},
    "sale.order": {
        "id": _ID,
        "name": _char("Order Reference"),
        "partner_id": _many2one("res.partner", "Customer"),
        "date_order": FieldSpec("datetime", "Order Date"),
        "commitment_date": FieldSpec("datetime", "Delivery Date"),
        "state": _selection(
            "Status",
            ("draft", "Quotation"),
            ("sent", "Quotation Sent"),
            ("sale", "Sales Order"),
            ("cancel", "Cancelled"),
        ),
        "amount_untaxed": FieldSpec("monetary", "Untaxed Amount"),
        "amount_total": _MONETARY_TOTAL,
        "currency_id": _CURRENCY,
    },
    "account.move": {
        "id": _ID,
        "name": _char("Number"),
        "move_type": _selection(
            "Type",
            ("entry", "Journal Entry"),
            ("out_invoice", "Customer Invoice"),
            ("out_refund", "Customer Credit Note"),
            ("in_invoice", "Vendor Bill"),
            ("in_refund", "Vendor Credit Note"),
            ("out_receipt", "Sales Receipt"),
            ("in_receipt", "Purchase Receipt"),
        ),
        "state": _selection(
            "Status", ("draft", "Draft"), ("posted", "Posted"), ("cancel", "Cancelled")
        ),
        "partner_id": _many2one("res.partner", "Partner"),
        "invoice_origin": _char("Origin"),
        "invoice_date": FieldSpec("date", "Invoice/Bill Date"),
        "invoice_date_due": FieldSpec("date", "Due Date"),
        "amount_total": _MONETARY_TOTAL,
        "amount_residual": FieldSpec("monetary", "Amount Due"),
        "payment_state": _selection(
            "Payment Status",
            ("not_paid", "Not Paid"),
            ("in_payment", "In Payment"),
            ("paid", "Paid"),
            ("partial", "Partially Paid"),
            ("reversed", "Reversed"),
            ("invoicing_legacy", "Invoicing App Legacy"),
        ),
        "currency_id": _CURRENCY,
    },
    "stock.picking": {
        "id": _ID,
        "name": _char("Reference"),
        "partner_id": _many2one("res.partner", "Contact"),
        "origin": _char("Source Document"),
        "sale_id": _many2one("sale.order", "Sales Order"),
        "picking_type_code": _selection(
            "Type of Operation",
            ("incoming", "Receipt"),
            ("outgoing", "Delivery"),
            ("internal", "Internal Transfer"),
        ),
        "state": _selection(
            "Status",
            ("draft", "Draft"),
            ("waiting", "Waiting Another Operation"),
            ("confirmed", "Waiting"),
            ("assigned", "Ready"),
            ("done", "Done"),
            ("cancel", "Cancelled"),
        ),
        "scheduled_date": FieldSpec("datetime", "Scheduled Date"),
        "date_deadline": FieldSpec("datetime", "Deadline"),
        "date_done": FieldSpec("datetime", "Date of Transfer"),
        "carrier_id": _many2one("delivery.carrier", "Carrier"),
        "carrier_tracking_ref": _char("Tracking Reference"),
    },
}

_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def _to_column(spec: FieldSpec, value: Any) -> Any:
    """Convert a request or data set value to the form stored in a row.

    Raises ValueError or TypeError with Python's own message when the value
    does not fit the field type, as Odoo's ``convert_to_column`` does.
    """
    if spec.type == "boolean":
        return bool(value)
    if value is None or value is False or value == "":
        return None
    if spec.type in ("integer", "many2one"):
        return int(value)
    if spec.type in ("float", "monetary"):
        return float(value)
    if spec.type == "date":
        day = value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
        return day.strftime("%Y-%m-%d")
    if spec.type == "datetime":
        return _datetime_text(value)
    return str(value)


def _datetime_text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime(_DATETIME_FORMAT)
    if isinstance(value, date):
        return f"{value.isoformat()} 00:00:00"
    return datetime.fromisoformat(str(value)).strftime(_DATETIME_FORMAT)


class RecordStore:
    """Rows of every model in ``MODEL_FIELDS``, in id order, in database form."""

    def __init__(self, erp: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        unknown = sorted(set(erp) - set(MODEL_FIELDS))
        if unknown:
            raise ValueError(
                f"data set models {unknown} have no field table in the demo Odoo server. "
                "Add them to MODEL_FIELDS"
            )
        self._rows: dict[str, list[Row]] = {}
        self._by_id: dict[str, dict[int, Row]] = {}
        for model, fields in MODEL_FIELDS.items():
            rows = sorted(
                (_load_row(model, fields, record) for record in erp.get(model, [])),
                key=lambda row: int(row["id"]),
            )
            self._rows[model] = rows
            self._by_id[model] = {row["id"]: row for row in rows}
            if len(self._by_id[model]) != len(rows):
                raise ValueError(f"{model} has two or more records with the same id")
        self._check_references()

    def has_model(self, model: str) -> bool:
        return model in self._rows

    def rows(self, model: str) -> list[Row]:
        return self._rows[model]

    def get(self, model: str, record_id: int) -> Row | None:
        return self._by_id[model].get(record_id)

    def display_name(self, model: str, record_id: int) -> str:
        """Return the name that Odoo shows for a record: its ``name``, else ``model,id``."""
        row = self._by_id[model][record_id]
        name = row.get("name")
        return name if isinstance(name, str) else f"{model},{record_id}"

    def _check_references(self) -> None:
        for model, fields in MODEL_FIELDS.items():
            for name, spec in fields.items():
                if spec.type != "many2one" or spec.relation is None:
                    continue
                targets = self._by_id[spec.relation]
                for row in self._rows[model]:
                    target = row[name]
                    if target is not None and target not in targets:
                        raise ValueError(
                            f"{model} record {row['id']} has {name}={target}, but "
                            f"{spec.relation} has no record with that id"
                        )


def _load_row(model: str, fields: Mapping[str, FieldSpec], record: Mapping[str, Any]) -> Row:
    extra = sorted(set(record) - set(fields))
    if extra:
        raise ValueError(f"{model} record has fields {extra} that MODEL_FIELDS does not declare")
    record_id = record.get("id")
    if not isinstance(record_id, int) or isinstance(record_id, bool):
        raise ValueError(f"{model} record has id {record_id!r}, but ids must be integers")

    row: Row = {}
    for name, spec in fields.items():
        try:
            row[name] = _to_column(spec, record.get(name))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{model} record {record_id} field {name}: {exc}") from exc
        allowed = {key for key, _label in spec.selection}
        if allowed and row[name] is not None and row[name] not in allowed:
            raise ValueError(
                f"{model} record {record_id} field {name} is {row[name]!r}, but "
                f"the allowed values are {sorted(allowed)}"
            )
    return row


# --- domains ---------------------------------------------------------------

_DOMAIN_OPERATORS = {"&": 2, "|": 2, "!": 1}
_TERM_OPERATORS = frozenset(
    {
        "=", "!=", "<>", "<", "<=", ">", ">=", "=?", "=like", "=ilike",
        "like", "not like", "ilike", "not ilike", "in", "not in",
        "child_of", "parent_of", "any", "not any",
    }
)
_NEGATIVE_OPERATORS = frozenset({"!=", "not like", "not ilike", "not in"})
_LIKE_OPERATORS = frozenset({"like", "not like", "ilike", "not ilike", "=like", "=ilike"})
_COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": op.eq, "!=": op.ne, "<": op.lt, "<=": op.le, ">": op.gt, ">=": op.ge,
}
_TRUE_LEAF = (1, "=", 1)
_FALSE_LEAF = (0, "=", 1)


def _always(row: Row) -> bool:
    return True


def _never(row: Row) -> bool:
    return False


class _AllOf:
    def __init__(self, parts: list[Predicate]) -> None:
        self.parts = parts

    def __call__(self, row: Row) -> bool:
        return all(part(row) for part in self.parts)


class _AnyOf:
    def __init__(self, parts: list[Predicate]) -> None:
        self.parts = parts

    def __call__(self, row: Row) -> bool:
        return any(part(row) for part in self.parts)


class _Not:
    def __init__(self, inner: Predicate) -> None:
        self.inner = inner

    def __call__(self, row: Row) -> bool:
        return not self.inner(row)


def _combine(kind: type[_AllOf] | type[_AnyOf], left: Predicate, right: Predicate) -> Predicate:
    # Flattening keeps long '|' chains from nesting one call level per leaf.
    parts: list[Predicate] = []
    for part in (left, right):
        parts.extend(part.parts if isinstance(part, kind) else [part])
    return kind(parts)


def compile_domain(store: RecordStore, model: str, domain: Any) -> Predicate:
    """Compile an Odoo domain on ``model`` into a row predicate.

    Checks every leaf and field before any row is read, as Odoo does, and
    raises OdooFault (``builtins.ValueError``) for a malformed domain.
    """
    if domain is None or domain is False:
        return _always
    if not isinstance(domain, list | tuple):
        raise OdooFault(VALUE_ERROR, f"Invalid domain {domain!r}: a domain is a list of leaves")
    for token in domain:
        if not _is_operator(token) and not _is_leaf(token):
            raise OdooFault(VALUE_ERROR, f"Invalid leaf {token}")

    # A domain is in Polish notation, so it is read right to left: each leaf
    # pushes a predicate and each operator pops its operands.
    stack: list[Predicate] = []
    for token in reversed(domain):
        if not _is_operator(token):
            stack.append(_compile_leaf(store, model, tuple(token)))
            continue
        if len(stack) < _DOMAIN_OPERATORS[token]:
            raise OdooFault(VALUE_ERROR, f"Domain {domain} is syntactically not correct.")
        first = stack.pop()
        if token == "!":
            stack.append(_Not(first))
        else:
            kind = _AllOf if token == "&" else _AnyOf
            stack.append(_combine(kind, first, stack.pop()))

    if not stack:
        return _always
    return stack[0] if len(stack) == 1 else _AllOf(list(reversed(stack)))


def _is_operator(token: Any) -> bool:
    return isinstance(token, str) and token in _DOMAIN_OPERATORS


def _is_leaf(token: Any) -> bool:
    if not isinstance(token, list | tuple) or len(token) != 3:
        return False
    left, operator, _right = token
    if not isinstance(operator, str) or operator not in _TERM_OPERATORS:
        return False
    return (isinstance(left, str) and bool(left)) or tuple(token) in (_TRUE_LEAF, _FALSE_LEAF)


def _compile_leaf(store: RecordStore, model: str, leaf: tuple[Any, ...]) -> Predicate:
    if leaf == _TRUE_LEAF:
        return _always
    if leaf == _FALSE_LEAF:
        return _never
    left, operator, right = leaf
    operator = _normalize_operator(operator, right)

    name, _dot, rest = left.partition(".")
    spec = MODEL_FIELDS[model].get(name)
    if spec is None:
        raise OdooFault(VALUE_ERROR, f"Invalid field {model}.{name} in leaf {leaf}")
    if rest:
        # Odoo 17 reads `partner_id.name op value` as `partner_id any [(name, op, value)]`.
        return _compile_any(store, model, name, spec, "any", [[rest, operator, right]], leaf)
    if operator in ("any", "not any"):
        return _compile_any(store, model, name, spec, operator, right, leaf)
    if operator in ("child_of", "parent_of"):
        # NOTE: the demo models declare no parent field, so hierarchy operators
        # are rejected here although a real Odoo accepts them on res.partner.
        raise OdooFault(
            VALUE_ERROR, f"Operator {operator!r} is not supported by the demo Odoo server"
        )
    if spec.type == "many2one" and _is_name_operand(right):
        return _compile_name_match(store, name, spec, operator, right)
    if operator == "=?":
        if right is None or right is False:
            return _always
        operator = "="
    if operator in ("in", "not in"):
        return _compile_in(name, spec, operator, right, leaf)
    if operator in _LIKE_OPERATORS:
        return _compile_like(name, operator, right)
    return _compile_compare(name, spec, operator, right)


def _normalize_operator(operator: str, right: Any) -> str:
    # The same rewrites as Odoo's normalize_leaf.
    if operator == "<>":
        operator = "!="
    if isinstance(right, bool) and operator in ("in", "not in"):
        return "=" if operator == "in" else "!="
    if isinstance(right, list | tuple) and operator in ("=", "!="):
        return "in" if operator == "=" else "not in"
    return operator


def _is_name_operand(right: Any) -> bool:
    if isinstance(right, str):
        return True
    return isinstance(right, list | tuple) and bool(right) and all(
        isinstance(item, str) for item in right
    )


def _compile_any(
    store: RecordStore,
    model: str,
    name: str,
    spec: FieldSpec,
    operator: str,
    subdomain: Any,
    leaf: tuple[Any, ...],
) -> Predicate:
    if spec.type != "many2one" or spec.relation is None:
        raise OdooFault(
            VALUE_ERROR,
            f"Invalid leaf {leaf}: {model}.{name} is a {spec.type} field, "
            f"and {operator!r} and dotted paths need a relational field",
        )
    matches = compile_domain(store, spec.relation, subdomain)
    target_ids = frozenset(row["id"] for row in store.rows(spec.relation) if matches(row))
    if operator == "any":
        return lambda row: row[name] in target_ids
    return lambda row: row[name] not in target_ids


def _compile_name_match(
    store: RecordStore, name: str, spec: FieldSpec, operator: str, right: Any
) -> Predicate:
    # A string operand on a many2one searches the target's name, like Odoo's
    # name_search; negative operators also match records with no target.
    relation = spec.relation or ""
    if operator in ("<", "<=", ">", ">="):
        operator = "in"
    if operator in ("in", "not in") and isinstance(right, str):
        operator = "=" if operator == "in" else "!="
    name_matches = _compile_leaf(store, relation, ("name", operator, right))
    target_ids = frozenset(row["id"] for row in store.rows(relation) if name_matches(row))
    include_empty = operator in _NEGATIVE_OPERATORS
    return lambda row: row[name] in target_ids or (include_empty and row[name] is None)


def _coerce(spec: FieldSpec, value: Any) -> Any:
    try:
        return _to_column(spec, value)
    except (TypeError, ValueError) as exc:
        raise OdooFault(f"builtins.{type(exc).__name__}", str(exc)) from None


def _compile_in(
    name: str, spec: FieldSpec, operator: str, right: Any, leaf: tuple[Any, ...]
) -> Predicate:
    if not isinstance(right, list | tuple):
        raise OdooFault(VALUE_ERROR, f"Invalid domain term {leaf}")
    if spec.type == "boolean":
        # Rows store an empty boolean as False, which is how Odoo treats NULL.
        flags = frozenset(flag for flag in (True, False) if flag in right)
        if operator == "in":
            return lambda row: row[name] in flags
        return lambda row: row[name] not in flags

    values = [item for item in right if item is not False and item is not None]
    members = frozenset(_coerce(spec, item) for item in values)
    has_empty = len(values) < len(right)
    if operator == "in":
        return lambda row: row[name] in members if row[name] is not None else has_empty
    # `not in` matches empty values unless the list itself contains False.
    return lambda row: row[name] not in members if row[name] is not None else not has_empty


def _compile_like(name: str, operator: str, right: Any) -> Predicate:
    wildcard = operator in ("like", "ilike", "not like", "not ilike")
    text = "" if right is None or right is False else str(right)
    pattern = _like_regex(
        f"%{text}%" if wildcard else text, ignore_case=operator.endswith("ilike")
    )
    negative = operator in _NEGATIVE_OPERATORS
    empty_matches = (wildcard and not right) or (bool(right) and negative)

    def predicate(row: Row) -> bool:
        value = row[name]
        if value is None:
            return empty_matches
        matched = pattern.fullmatch(_like_text(value)) is not None
        return matched != negative

    return predicate


def _like_text(value: Any) -> str:
    # PostgreSQL casts a non-text column to text before LIKE.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _like_regex(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    """Translate a SQL LIKE pattern (``%``, ``_``, backslash escape) to a regex."""
    parts: list[str] = []
    escaped = False
    for char in pattern:
        if escaped:
            parts.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    if escaped:
        parts.append(re.escape("\\"))
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("".join(parts), flags)


def _compile_compare(name: str, spec: FieldSpec, operator: str, right: Any) -> Predicate:
    if right is None or right is False:
        return _compile_empty_test(name, spec, operator)

    if spec.type == "datetime" and isinstance(right, str) and len(right) == 10:
        # Odoo widens a bare date to the first or last second of that day.
        right += " 23:59:59" if operator in (">", "<=") else " 00:00:00"
    value = _coerce(spec, right)
    compare = _COMPARATORS[operator]
    empty_matches = operator == "!="

    def predicate(row: Row) -> bool:
        current = row[name]
        if current is None:
            return empty_matches
        return compare(current, value)

    return predicate


def _compile_empty_test(name: str, spec: FieldSpec, operator: str) -> Predicate:
    # `= False` is IS NULL and `!= False` is IS NOT NULL. Any other operator
    # compares with NULL in SQL, which matches nothing.
    if operator not in ("=", "!="):
        return _never
    wants_empty = operator == "="
    if spec.type == "boolean":
        return lambda row: (not row[name]) == wants_empty
    return lambda row: (row[name] is None) == wants_empty


# --- order -----------------------------------------------------------------

_ORDER_TERM = re.compile(
    r'\s*(?P<quote>"?)(?P<field>[a-z0-9_]+)(?P=quote)'
    r"(?:\s+(?P<direction>asc|desc))?(?:\s+nulls\s+(?P<nulls>first|last))?\s*",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class _OrderTerm:
    field: str
    descending: bool
    nulls_first: bool


def _parse_order(model: str, order: Any) -> list[_OrderTerm]:
    if order is None or order is False or order == "":
        # NOTE: a real Odoo falls back to the model's _order (for sale.order,
        # "date_order desc, id desc"), so callers must send the order they need.
        return [_OrderTerm("id", descending=False, nulls_first=False)]
    invalid = OdooFault(
        USER_ERROR,
        f'Invalid "order" specified ({order}): use a comma-separated list of field '
        "names, each optionally followed by asc or desc",
    )
    if not isinstance(order, str):
        raise invalid

    terms: list[_OrderTerm] = []
    for text in order.split(","):
        match = _ORDER_TERM.fullmatch(text)
        if match is None:
            raise invalid
        name = match["field"]
        if name not in MODEL_FIELDS[model]:
            raise OdooFault(VALUE_ERROR, f"Invalid field {name!r} on model {model!r}")
        descending = (match["direction"] or "asc").lower() == "desc"
        # PostgreSQL puts NULLs last in ascending and first in descending order.
        nulls = (match["nulls"] or ("first" if descending else "last")).lower()
        terms.append(_OrderTerm(name, descending, nulls_first=nulls == "first"))
    return terms


def sort_rows(store: RecordStore, model: str, rows: list[Row], order: Any) -> list[Row]:
    """Sort ``rows`` by an Odoo ``order`` string such as ``"date_order desc, id"``.

    Rows that tie on every term keep id order. A many2one sorts by the
    target's display name.
    """
    # NOTE: Odoo sorts a many2one by the target model's own _order, and text by
    # the database collation. This sorts by the target name and by code point.
    terms = _parse_order(model, order)
    result = list(rows)
    for term in reversed(terms):
        spec = MODEL_FIELDS[model][term.field]
        # With reverse=True a higher rank comes first, so the rank of an
        # empty value depends on both the direction and the NULLS placement.
        empty_rank = 0 if term.nulls_first != term.descending else 1

        def key(
            row: Row, field: str = term.field, relation: str | None = spec.relation,
            empty_rank: int = empty_rank,
        ) -> tuple[int, Any]:
            value = row[field]
            if value is None:
                return (empty_rank, 0)
            if relation is not None:
                value = store.display_name(relation, value)
            return (1 - empty_rank, value)

        result.sort(key=key, reverse=term.descending)
    return result
