"""ORM methods of the demo Odoo server, shared by its JSON-RPC and JSON-2 endpoints.

``model_methods`` returns the callable methods of one model. Each method
takes its arguments as Odoo's ``odoo.models.BaseModel`` does, reads the
``RecordStore`` and returns values in Odoo's wire form (``false`` for empty
values, ``[id, "display name"]`` for a many2one). Errors are ``OdooFault``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gateway.demo.odoo_domain import (
    MODEL_FIELDS,
    VALUE_ERROR,
    OdooFault,
    RecordStore,
    Row,
    compile_domain,
    sort_rows,
)

_CLASSIC_READ = "_classic_read"

# Methods that run on a record set, so JSON-2 passes them ``ids``. Every
# other served method is an ``@api.model`` method in Odoo and rejects ``ids``.
RECORD_METHODS = frozenset({"read"})


def model_methods(store: RecordStore, uid: int, model: str) -> dict[str, Callable[..., Any]] | None:
    """Return the public methods of ``model`` by name, or None when the model does not exist.

    ``uid`` is the user id that ``res.users.context_get`` returns.
    """
    if model == "res.users":
        return OrmUsers(uid).methods()
    if not store.has_model(model):
        return None
    return OrmModel(store, model).methods()


class OrmModel:
    """The ORM methods that the demo server serves for one model.

    Parameter names and defaults are those of ``odoo.models.BaseModel`` in
    Odoo 17, so positional and keyword arguments bind the same way. Only
    ``search_read`` names ``load``, which Odoo passes on to ``read``.
    """

    def __init__(self, store: RecordStore, model: str) -> None:
        self.store = store
        self.model = model
        self.fields = MODEL_FIELDS[model]

    def methods(self) -> dict[str, Callable[..., Any]]:
        return {
            "search_read": self.search_read,
            "search": self.search,
            "search_count": self.search_count,
            "read": self.read,
            "fields_get": self.fields_get,
        }

    def search_read(
        self,
        domain: Any = None,
        fields: Any = None,
        offset: Any = 0,
        limit: Any = None,
        order: Any = None,
        load: Any = _CLASSIC_READ,
    ) -> list[dict[str, Any]]:
        names = self._field_names(fields)
        rows = self._search_rows(domain, offset, limit, order)
        return [self._read_row(row, names, load) for row in rows]

    def search(
        self, domain: Any, offset: Any = 0, limit: Any = None, order: Any = None
    ) -> list[int]:
        return [row["id"] for row in self._search_rows(domain, offset, limit, order)]

    def search_count(self, domain: Any, limit: Any = None) -> int:
        matches = compile_domain(self.store, self.model, domain)
        count = sum(1 for row in self.store.rows(self.model) if matches(row))
        cap = _limit_value(limit)
        return count if cap is None else min(count, cap)

    def read(self, ids: Any, fields: Any = None, load: Any = _CLASSIC_READ) -> list[dict[str, Any]]:
        names = self._field_names(fields)
        # Odoo's read() drops ids whose record does not exist.
        rows = (self.store.get(self.model, record_id) for record_id in _id_list(ids))
        return [self._read_row(row, names, load) for row in rows if row is not None]

    def fields_get(self, allfields: Any = None, attributes: Any = None) -> dict[str, Any]:
        result: dict[str, Any] = {}
        selected = allfields if isinstance(allfields, list | tuple) and allfields else None
        for name, spec in self.fields.items():
            if selected is not None and name not in selected:
                continue
            description: dict[str, Any] = {"type": spec.type, "string": spec.string}
            if spec.relation is not None:
                description["relation"] = spec.relation
            if spec.selection:
                description["selection"] = [list(choice) for choice in spec.selection]
            if isinstance(attributes, list | tuple) and attributes:
                description = {
                    key: value for key, value in description.items() if key in attributes
                }
            result[name] = description
        return result

    def _field_names(self, fields: Any) -> list[str]:
        if not fields:
            return [name for name in self.fields if name != "id"]
        if not isinstance(fields, list | tuple):
            raise OdooFault(VALUE_ERROR, f"fields must be a list of field names, not {fields!r}")
        for name in fields:
            if not isinstance(name, str) or name not in self.fields:
                raise OdooFault(VALUE_ERROR, f"Invalid field {name!r} on model {self.model!r}")
        return [name for name in fields if name != "id"]

    def _search_rows(self, domain: Any, offset: Any, limit: Any, order: Any) -> list[Row]:
        matches = compile_domain(self.store, self.model, domain)
        rows = [row for row in self.store.rows(self.model) if matches(row)]
        rows = sort_rows(self.store, self.model, rows, order)
        start = _offset_value(offset)
        cap = _limit_value(limit)
        return rows[start:] if cap is None else rows[start : start + cap]

    def _read_row(self, row: Row, names: Sequence[str], load: Any) -> dict[str, Any]:
        values: dict[str, Any] = {"id": row["id"]}
        for name in names:
            values[name] = self._read_value(name, row[name], load)
        return values

    def _read_value(self, name: str, value: Any, load: Any) -> Any:
        spec = self.fields[name]
        if spec.type == "integer":
            return value or 0
        if spec.type in ("float", "monetary"):
            return float(value or 0.0)
        if value is None:
            return False
        if spec.type == "many2one" and spec.relation is not None and load == _CLASSIC_READ:
            return [value, self.store.display_name(spec.relation, value)]
        return value


class OrmUsers:
    """``res.users`` as far as a client needs it right after login.

    NOTE: the demo server has no user records; ``context_get`` is the only
    method, so that clients such as odoorpc can log in.
    """

    def __init__(self, uid: int) -> None:
        self.uid = uid

    def methods(self) -> dict[str, Callable[..., Any]]:
        return {"context_get": self.context_get}

    def context_get(self) -> dict[str, Any]:
        return {"lang": "en_US", "tz": "Europe/Rome", "uid": self.uid}


def _limit_value(limit: Any) -> int | None:
    # Odoo treats a missing, False or 0 limit as no limit.
    if limit is None or limit is False or limit == 0:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise OdooFault(VALUE_ERROR, f"Invalid limit {limit!r}: use a non-negative integer")
    return limit


def _offset_value(offset: Any) -> int:
    if offset is None or offset is False:
        return 0
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise OdooFault(VALUE_ERROR, f"Invalid offset {offset!r}: use a non-negative integer")
    return offset


def _id_list(ids: Any) -> list[int]:
    values = ids if isinstance(ids, list | tuple) else [ids]
    for value in values:
        if not isinstance(value, int) or isinstance(value, bool):
            raise OdooFault(VALUE_ERROR, f"Invalid record id {value!r}: ids are integers")
    return list(values)

