"""Demo Odoo ERP server: Odoo's JSON-RPC API (17/18) and JSON-2 API (19) over the demo data.

``create_odoo_app`` returns a Starlette app that serves ``POST /jsonrpc``
with the ``common`` service (``version``, ``login``, ``authenticate``) and
the ``object`` service (``execute_kw`` and ``execute`` with ``search_read``,
``search``, ``search_count``, ``read`` and ``fields_get``), plus
``GET /web/version`` and ``POST /web/webclient/version_info``. The same
methods over the same records are served as ``POST /json/2/<model>/<method>``
(see ``gateway.demo.odoo_json2``), although the version routes report 18.0.

It keeps the Odoo behaviours that a connector has to handle:

- JSON-RPC errors come back as HTTP 200 with a JSON-RPC ``error`` member
  whose ``data.name`` is the Python class path of the exception. JSON-2
  errors come back as a 4xx/5xx status with that same object as the body.
- A JSON-RPC body that is not a JSON object, or is not sent as
  ``application/json``, is rejected with HTTP 400 and a text body.
- ``fields`` omitted or empty in ``search_read`` and ``read`` returns every
  field, so a test can prove that the gateway always sends ``fields``.
- Empty values read as ``false`` (numbers as ``0``/``0.0``), and a many2one
  reads as ``[id, "display name"]``.
- Every ``execute_kw`` call checks the database, uid and API key, and every
  JSON-2 call checks the bearer API key, which is the same key.

``app.state.control`` is the ``DemoControl`` that logs each call of either
API and injects faults into both (see ``gateway.demo.control``).
"""
from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.demo.control import DemoControl, RequestLogEntry, body_fault, control_routes
from gateway.demo.data import DemoData
from gateway.demo.odoo_domain import OdooFault, RecordStore
from gateway.demo.odoo_json2 import Json2Api, json2_not_found, read_json2_call
from gateway.demo.odoo_orm import RECORD_METHODS, model_methods

logger = logging.getLogger(__name__)

SERVER_VERSION = "18.0"
SERVER_VERSION_INFO: list[Any] = [18, 0, 0, "final", 0, ""]
ACCESS_DENIED = "odoo.exceptions.AccessDenied"
_JSON_MIMETYPES = ("application/json", "application/json-rpc")
_JSON2_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]


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
        methods = model_methods(self.store, self.uid, model) if isinstance(model, str) else None
        if methods is None:
            # Odoo 17/18 raise this from odoo/service/model.py for a missing model.
            raise OdooFault("odoo.exceptions.UserError", f"Object {model} doesn't exist")
        return methods


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
        return model, _id_count(argument(0, "ids")), _sent_fields(argument(1, "fields"))
    keys = _first_in_count(argument(0, "domain"))
    fields = _sent_fields(argument(1, "fields")) if args[4] == "search_read" else None
    return model, keys, fields


def _rpc_domain(payload: Any) -> Any:
    """Return the domain of a ``search_read`` or ``search`` object call, or None."""
    params = payload.get("params") if isinstance(payload, dict) else None
    args = params.get("args") if isinstance(params, dict) else None
    if not isinstance(args, list) or len(args) < 6 or args[4] not in ("search_read", "search"):
        return None
    call_args = args[5] if isinstance(args[5], list) else []
    call_kwargs = args[6] if len(args) > 6 and isinstance(args[6], dict) else {}
    return call_args[0] if call_args else call_kwargs.get("domain")


def _domain_text(domain: Any) -> str | None:
    """Return ``domain`` as JSON for the log, each list of over 10 values shortened."""
    if not isinstance(domain, list):
        return None
    shortened = []
    for leaf in domain:
        if (isinstance(leaf, list) and len(leaf) == 3 and isinstance(leaf[2], list)
                and len(leaf[2]) > 10):
            leaf = [leaf[0], leaf[1], f"<{len(leaf[2])} values>"]
        shortened.append(leaf)
    return json.dumps(shortened)


def _json2_summary(method: str, params: Mapping[str, Any]) -> tuple[int, list[str] | None]:
    """Return the key count and ``fields`` of a JSON-2 call, counted as ``_call_summary`` does."""
    if method in RECORD_METHODS:
        return _id_count(params.get("ids")), _sent_fields(params.get("fields"))
    keys = _first_in_count(params.get("domain"))
    fields = _sent_fields(params.get("fields")) if method == "search_read" else None
    return keys, fields


def _id_count(ids: Any) -> int:
    return len(ids) if isinstance(ids, list) else int(ids is not None)


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

    def __init__(self, rpc: OdooRpc, json2: Json2Api, control: DemoControl) -> None:
        self.rpc = rpc
        self.json2_api = json2
        self.control = control

    def routes(self) -> list[Route]:
        return [
            Route("/jsonrpc", self.jsonrpc, methods=["POST"]),
            Route("/json/2/{model}/{method}", self.json2, methods=["POST"]),
            # Odoo returns a 404 for every other path and method under /json/2.
            Route("/json/2", self.json2_other, methods=_JSON2_METHODS),
            Route("/json/2/{subpath:path}", self.json2_other, methods=_JSON2_METHODS),
            Route("/web/webclient/version_info", self.webclient_version_info, methods=["POST"]),
            Route("/web/version", self.web_version, methods=["GET"]),
        ]

    async def jsonrpc(self, request: Request) -> Response:
        payload = await _read_payload(request)
        entity, keys, fields = _call_summary(payload)
        response = await self._fault_response()
        if response is None:
            response = self._jsonrpc_response(payload)
        self._record(request, entity, keys, fields, response, _rpc_domain(payload))
        return response

    async def json2(self, request: Request) -> Response:
        call = await read_json2_call(request)
        keys, fields = _json2_summary(call.method, call.params)
        response = await self._fault_response()
        if response is None:
            response = self.json2_api.respond(call)
        self._record(request, call.model, keys, fields, response, call.params.get("domain"))
        return response

    async def json2_other(self, request: Request) -> Response:
        response = await self._fault_response() or json2_not_found()
        self._record(request, None, 0, None, response)
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
            return body_fault(self.control)
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
        domain: Any = None,
    ) -> None:
        self.control.record(
            RequestLogEntry(
                method=request.method,
                path=request.url.path,
                entity=entity,
                keys=keys,
                fields=fields,
                status=response.status_code,
                filter=_domain_text(domain),
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

    ``login`` and ``api_key`` are the only valid JSON-RPC credentials, and
    ``api_key`` is the only valid JSON-2 bearer key. ``uid`` is the user id
    that ``authenticate`` returns and ``execute_kw`` expects.
    Raises ValueError when ``data.erp`` does not match ``MODEL_FIELDS``.
    """
    store = RecordStore(data.erp)
    rpc = OdooRpc(store, database=database, login=login, api_key=api_key, uid=uid)
    json2 = Json2Api(store, database=database, api_key=api_key, uid=uid)
    control = DemoControl()
    http = _OdooHttp(rpc, json2, control)
    app = Starlette(routes=[*http.routes(), *control_routes(control)])
    app.state.control = control
    return app
