"""Demo Odoo ERP server: the external JSON-RPC API of Odoo 17/18 over the demo data.

``create_odoo_app`` returns a Starlette app that serves ``POST /jsonrpc``
with the ``common`` service (``version``, ``login``, ``authenticate``) and
the ``object`` service (``execute_kw`` and ``execute`` with ``search_read``,
``search``, ``search_count``, ``read`` and ``fields_get``), plus
``GET /web/version`` and ``POST /web/webclient/version_info``.

It keeps the Odoo behaviours that a connector has to handle:

- Errors come back as HTTP 200 with a JSON-RPC ``error`` member whose
  ``data.name`` is the Python class path of the exception.
- A body that is not a JSON object, or is not sent as ``application/json``,
  is rejected with HTTP 400 and a text body.
- ``fields`` omitted or empty in ``search_read`` and ``read`` returns every
  field, so a test can prove that the gateway always sends ``fields``.
- Empty values read as ``false`` (numbers as ``0``/``0.0``), and a many2one
  reads as ``[id, "display name"]``.
- Every ``execute_kw`` call checks the database, uid and API key.

``app.state.control`` is the ``DemoControl`` that logs each call and
injects faults (see ``gateway.demo.control``).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.demo.control import DemoControl, RequestLogEntry, control_routes
from gateway.demo.data import DemoData
from gateway.demo.odoo_domain import (
    MODEL_FIELDS,
    VALUE_ERROR,
    OdooFault,
    RecordStore,
    Row,
    compile_domain,
    sort_rows,
)

logger = logging.getLogger(__name__)

SERVER_VERSION = "18.0"
SERVER_VERSION_INFO: list[Any] = [18, 0, 0, "final", 0, ""]
ACCESS_DENIED = "odoo.exceptions.AccessDenied"
_JSON_MIMETYPES = ("application/json", "application/json-rpc")
_CLASSIC_READ = "_classic_read"


def _bind_or_raise(function: Callable[..., Any], label: str, args: Any, kwargs: Any) -> None:
    """Raise the TypeError that Python raises when ``label(*args, **kwargs)`` does not bind."""
    if not isinstance(args, list | tuple):
        raise OdooFault("builtins.TypeError", f"{label}() arguments must be a list, not {args!r}")
    if not isinstance(kwargs, Mapping):
        raise OdooFault(
            "builtins.TypeError", f"{label}() keyword arguments must be an object, not {kwargs!r}"
        )
    try:
        inspect.signature(function).bind(*args, **kwargs)
    except TypeError as exc:
        raise OdooFault("builtins.TypeError", f"{label}() {exc}") from None


# --- ORM methods -------------------------------------------------------------


class _Model:
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


class _Users:
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


# --- services ----------------------------------------------------------------


class OdooRpc:
    """The ``common``, ``object`` and ``db`` services of Odoo's ``dispatch_rpc``."""

    def __init__(
        self, store: RecordStore, *, database: str, login: str, api_key: str, uid: int
    ) -> None:
        self.store = store
        self.database = database
        self.login = login
        self.api_key = api_key
        self.uid = uid

    def dispatch(self, service: Any, method: Any, args: Any) -> Any:
        """Run one JSON-RPC call and return its result, or raise OdooFault."""
        if not isinstance(args, list):
            raise OdooFault("builtins.TypeError", f"args must be a list, not {args!r}")
        if service == "common":
            return self._common(method, args)
        if service == "object":
            return self._object(method, args)
        if service == "db":
            # NOTE: behaves like a server started with list_db = False, where
            # the database manager is closed to RPC. A real Odoo still serves
            # a few db methods such as server_version.
            raise OdooFault(ACCESS_DENIED, "Access Denied")
        raise OdooFault("builtins.KeyError", repr(service))

    def _common(self, method: Any, args: list[Any]) -> Any:
        handlers: dict[str, Callable[..., Any]] = {
            "version": self._version,
            "login": self._login,
            "authenticate": self._authenticate,
        }
        handler = handlers.get(method) if isinstance(method, str) else None
        if handler is None:
            raise OdooFault("builtins.Exception", f"Method not found: {method}")
        _bind_or_raise(handler, f"exp_{method}", args, {})
        return handler(*args)

    def _version(self) -> dict[str, Any]:
        return version_info()

    def _login(self, db: Any, login: Any, password: Any) -> int | bool:
        return self._authenticate(db, login, password, None)

    def _authenticate(self, db: Any, login: Any, password: Any, user_agent_env: Any) -> int | bool:
        # NOTE: a real Odoo raises psycopg2.OperationalError for an unknown
        # database; here it is a failed login like a wrong key.
        if db != self.database or login != self.login or not self._key_matches(password):
            return False
        return self.uid

    def _key_matches(self, password: Any) -> bool:
        if not isinstance(password, str):
            return False
        return hmac.compare_digest(password.encode(), self.api_key.encode())

    def _object(self, method: Any, params: list[Any]) -> Any:
        if len(params) < 3:
            raise OdooFault("builtins.IndexError", "list index out of range")
        db, uid, password = params[:3]
        if db != self.database or uid != self.uid or not self._key_matches(password):
            raise OdooFault(ACCESS_DENIED, "Access Denied")

        if method == "execute_kw":
            _bind_or_raise(_execute_kw_signature, "execute_kw", params[3:], {})
            model, name, args = params[3], params[4], params[5]
            kwargs = params[6] if len(params) > 6 and params[6] is not None else {}
        elif method == "execute":
            _bind_or_raise(_execute_signature, "execute", params[3:], {})
            model, name, args, kwargs = params[3], params[4], list(params[5:]), {}
        else:
            raise OdooFault("builtins.NameError", f"Method not available {method}")
        return self._call_kw(model, name, args, kwargs)

    def _call_kw(self, model: Any, name: Any, args: Any, kwargs: Any) -> Any:
        if isinstance(name, str) and name.startswith("_"):
            raise OdooFault(
                "odoo.exceptions.AccessError",
                f"Private methods (such as {name}) cannot be called remotely.",
            )
        methods = self._methods(model)
        method = methods.get(name) if isinstance(name, str) else None
        if method is None:
            raise OdooFault(
                "builtins.AttributeError",
                f"The method '{name}' does not exist on the model '{model}'",
            )
        if name == "read" and isinstance(args, list) and not args:
            # Odoo's call_kw takes the record ids of a record method from args[0].
            raise OdooFault("builtins.IndexError", "list index out of range")
        if isinstance(kwargs, Mapping):
            # Odoo's call_kw takes the context out before binding the arguments.
            kwargs = {key: value for key, value in kwargs.items() if key != "context"}
        _bind_or_raise(method, name, args, kwargs)
        return method(*args, **kwargs)

    def _methods(self, model: Any) -> dict[str, Callable[..., Any]]:
        if model == "res.users":
            return _Users(self.uid).methods()
        if not isinstance(model, str) or not self.store.has_model(model):
            # Odoo 17/18 raise this from odoo/service/model.py for a missing model.
            raise OdooFault("odoo.exceptions.UserError", f"Object {model} doesn't exist")
        return _Model(self.store, model).methods()


def _execute_kw_signature(obj: Any, method: Any, args: Any, kw: Any = None) -> None:
    """Parameters of Odoo's ``execute_kw`` after ``db, uid, password``."""


def _execute_signature(obj: Any, method: Any, *args: Any) -> None:
    """Parameters of Odoo's ``execute`` after ``db, uid, password``."""


def version_info() -> dict[str, Any]:
    """Return what ``common.version`` returns on Odoo 18.0."""
    return {
        "server_version": SERVER_VERSION,
        "server_version_info": list(SERVER_VERSION_INFO),
        "server_serie": SERVER_VERSION,
        "protocol_version": 1,
    }


# --- request log -------------------------------------------------------------


def _call_summary(payload: Any) -> tuple[str | None, int, list[str] | None]:
    """Return the model, key count and ``fields`` of an ``object`` call, for the log.

    ``keys`` counts the values of the first ``in`` leaf of the domain, or the
    ids of a ``read``. Anything that is not a well-formed object call gives
    ``(None, 0, None)`` or as much as can be read.
    """
    params = payload.get("params") if isinstance(payload, dict) else None
    if not isinstance(params, dict) or params.get("service") != "object":
        return None, 0, None
    args = params.get("args")
    if not isinstance(args, list) or len(args) < 5:
        return None, 0, None
    model = args[3] if isinstance(args[3], str) else None
    if params.get("method") == "execute_kw":
        call_args = args[5] if len(args) > 5 and isinstance(args[5], list) else []
        call_kwargs = args[6] if len(args) > 6 and isinstance(args[6], dict) else {}
    else:
        call_args, call_kwargs = args[5:], {}

    def argument(position: int, name: str) -> Any:
        if len(call_args) > position:
            return call_args[position]
        return call_kwargs.get(name)

    if args[4] == "read":
        ids = argument(0, "ids")
        keys = len(ids) if isinstance(ids, list) else int(ids is not None)
        return model, keys, _sent_fields(argument(1, "fields"))
    keys = _first_in_count(argument(0, "domain"))
    fields = _sent_fields(argument(1, "fields")) if args[4] == "search_read" else None
    return model, keys, fields


def _first_in_count(domain: Any) -> int:
    if not isinstance(domain, list):
        return 0
    for leaf in domain:
        if isinstance(leaf, list) and len(leaf) == 3 and leaf[1] == "in":
            return len(leaf[2]) if isinstance(leaf[2], list) else 1
    return 0


def _sent_fields(fields: Any) -> list[str] | None:
    if not isinstance(fields, list) or not fields:
        return None
    return [str(name) for name in fields]


# --- HTTP --------------------------------------------------------------------


class _OdooHttp:
    """The Starlette endpoints, with the request log and fault injection around them."""

    def __init__(self, rpc: OdooRpc, control: DemoControl) -> None:
        self.rpc = rpc
        self.control = control

    def routes(self) -> list[Route]:
        return [
            Route("/jsonrpc", self.jsonrpc, methods=["POST"]),
            Route("/web/webclient/version_info", self.webclient_version_info, methods=["POST"]),
            Route("/web/version", self.web_version, methods=["GET"]),
        ]

    async def jsonrpc(self, request: Request) -> Response:
        payload = await _read_payload(request)
        entity, keys, fields = _call_summary(payload)
        response = await self._fault_response()
        if response is None:
            response = self._jsonrpc_response(payload)
        self._record(request, entity, keys, fields, response)
        return response

    async def webclient_version_info(self, request: Request) -> Response:
        payload = await _read_payload(request)
        response = await self._fault_response()
        if response is None:
            response = _bad_request(payload) or _rpc_result(payload, version_info())
        self._record(request, None, 0, None, response)
        return response

    async def web_version(self, request: Request) -> Response:
        response = await self._fault_response()
        if response is None:
            response = JSONResponse(
                {"version_info": list(SERVER_VERSION_INFO), "version": SERVER_VERSION}
            )
        self._record(request, None, 0, None, response)
        return response

    def _jsonrpc_response(self, payload: Any) -> Response:
        rejected = _bad_request(payload)
        if rejected is not None:
            return rejected
        params = payload.get("params", {})
        try:
            result = self._dispatch(params)
        except OdooFault as fault:
            # The message can quote request values, so the log names only the class.
            call = params if isinstance(params, dict) else {}
            service, method = call.get("service"), call.get("method")
            logger.info("Odoo call %s.%s failed with %s", service, method, fault.name)
            return _rpc_error(payload, fault)
        return _rpc_result(payload, result)

    def _dispatch(self, params: Any) -> Any:
        if not isinstance(params, dict):
            raise OdooFault("builtins.TypeError", "params must be a JSON object")
        missing = [key for key in ("service", "method", "args") if key not in params]
        if missing:
            raise OdooFault(
                "builtins.TypeError", f"jsonrpc() missing required arguments: {', '.join(missing)}"
            )
        return self.rpc.dispatch(params["service"], params["method"], params["args"])

    async def _fault_response(self) -> Response | None:
        if self.control.fault_delay > 0:
            await asyncio.sleep(self.control.fault_delay)
        status = self.control.fault_status
        if status is None:
            return None
        # A reverse proxy in front of Odoo returns a short text page like this one.
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        return PlainTextResponse(f"{status} {phrase}\n", status_code=status)

    def _record(
        self,
        request: Request,
        entity: str | None,
        keys: int,
        fields: list[str] | None,
        response: Response,
    ) -> None:
        self.control.record(
            RequestLogEntry(
                method=request.method,
                path=request.url.path,
                entity=entity,
                keys=keys,
                fields=fields,
                status=response.status_code,
            )
        )


class _Malformed:
    """The reason a body cannot be a JSON-RPC request."""

    def __init__(self, text: str) -> None:
        self.text = text


async def _read_payload(request: Request) -> Any:
    mimetype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if mimetype not in _JSON_MIMETYPES:
        return _Malformed(
            f"Bad Request: this route takes a JSON-RPC body with Content-Type "
            f"application/json, not {mimetype or 'none'!r}"
        )
    try:
        payload = json.loads(await request.body())
    except ValueError:
        return _Malformed("Invalid JSON data")
    if not isinstance(payload, dict):
        return _Malformed("Invalid JSON-RPC data")
    return payload


def _bad_request(payload: Any) -> Response | None:
    # Odoo aborts with a plain 400 page here, before any JSON-RPC envelope exists.
    if isinstance(payload, _Malformed):
        logger.info("Odoo request rejected with HTTP 400: %s", payload.text)
        return Response(payload.text, status_code=400, media_type="text/html")
    return None


def _rpc_result(payload: Mapping[str, Any], result: Any) -> Response:
    return JSONResponse({"jsonrpc": "2.0", "id": payload.get("id"), "result": result})


def _rpc_error(payload: Mapping[str, Any], fault: OdooFault) -> Response:
    # Odoo sends JSON-RPC code 200 for every server error other than a 404 or an
    # expired session. The traceback is a placeholder that quotes no values.
    error = {
        "code": 200,
        "message": "Odoo Server Error",
        "data": {
            "name": fault.name,
            "message": fault.message,
            "arguments": [fault.message],
            "context": {},
            "debug": (
                "Traceback (most recent call last):\n"
                '  File "gateway/demo/odoo.py", in dispatch\n'
                f"{fault.name}: (message in error.data.message)\n"
            ),
        },
    }
    return JSONResponse({"jsonrpc": "2.0", "id": payload.get("id"), "error": error})


def create_odoo_app(
    data: DemoData,
    *,
    database: str = "fonte_demo",
    login: str = "gateway",
    api_key: str,
    uid: int = 2,
) -> Starlette:
    """Build the demo Odoo server over ``data.erp``.

    ``login`` and ``api_key`` are the only valid credentials, and ``uid`` is
    the user id that ``authenticate`` returns and ``execute_kw`` expects.
    Raises ValueError when ``data.erp`` does not match ``MODEL_FIELDS``.
    """
    store = RecordStore(data.erp)
    rpc = OdooRpc(store, database=database, login=login, api_key=api_key, uid=uid)
    control = DemoControl()
    http = _OdooHttp(rpc, control)
    app = Starlette(routes=[*http.routes(), *control_routes(control)])
    app.state.control = control
    return app
