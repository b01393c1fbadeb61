"""JSON-2 endpoint of the demo Odoo server: ``POST /json/2/<model>/<method>`` of Odoo 19.

The checks follow ``addons/rpc/controllers/json2.py`` and the JSON-2
dispatcher in ``odoo/http.py`` of Odoo 19.0, in the same order:

1. An ``X-Odoo-Database`` header must name the served database (404).
2. The body must be sent as ``application/json`` (415).
3. ``Authorization: bearer <API key>`` must carry the server's key (401).
4. A non-empty body must be a JSON object of named arguments (400).
5. The model (404) and a public method of it (404) must exist.
6. ``ids`` is rejected for an ``@api.model`` method (422), and the other
   arguments must bind to the method's signature (422).

When a method raises, the response has the status of its Odoo exception
class (``UserError`` 422, ``AccessError`` and ``AccessDenied`` 403,
``MissingError`` 404, any other class 500). Every error body is the object
``{"name", "message", "arguments", "context", "debug"}``.
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.demo.odoo_domain import OdooFault, RecordStore
from gateway.demo.odoo_orm import RECORD_METHODS, model_methods

logger = logging.getLogger(__name__)

JSON2_ROUTE_HINT = "Did you mean POST /json/2/<model>/<method>?"
_BEARER = re.compile(r"^bearer\s+(.+)$", re.IGNORECASE)
_JSON_MIMETYPE = "application/json"

# ``http_status`` of the exception classes in ``odoo/exceptions.py`` (Odoo 19.0).
# Any class not listed here is a server error (500).
_FAULT_STATUS = {
    "odoo.exceptions.UserError": 422,
    "odoo.exceptions.ValidationError": 422,
    "odoo.exceptions.AccessError": 403,
    "odoo.exceptions.AccessDenied": 403,
    "odoo.exceptions.MissingError": 404,
}

# Class names of the werkzeug exceptions that the endpoint raises itself.
_HTTP_ERROR_NAMES = {
    400: "werkzeug.exceptions.BadRequest",
    401: "werkzeug.exceptions.Unauthorized",
    404: "werkzeug.exceptions.NotFound",
    415: "werkzeug.exceptions.UnsupportedMediaType",
    422: "werkzeug.exceptions.UnprocessableEntity",
}


class Json2Error(Exception):
    """An error that the endpoint sends as an HTTP status and Odoo's JSON-2 error object."""

    def __init__(
        self,
        status: int,
        name: str,
        message: str,
        arguments: list[Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.name = name
        self.message = message
        self.arguments = arguments
        self.headers = headers


def http_error(status: int, message: str, headers: dict[str, str] | None = None) -> Json2Error:
    """Build the error of a werkzeug HTTP exception, whose arguments are (message, status)."""
    return Json2Error(status, _HTTP_ERROR_NAMES[status], message, [message, status], headers)


def error_response(error: Json2Error) -> JSONResponse:
    """Serialise ``error`` as Odoo's ``serialize_exception`` does.

    The traceback is a placeholder that quotes no request values.
    """
    body = {
        "name": error.name,
        "message": error.message,
        "arguments": error.arguments,
        "context": {},
        "debug": (
            "Traceback (most recent call last):\n"
            '  File "gateway/demo/odoo_json2.py", in respond\n'
            f"{error.name}: (message in the message member)\n"
        ),
    }
    return JSONResponse(body, status_code=error.status, headers=error.headers)


@dataclass(frozen=True)
class Json2Call:
    """One request to ``/json/2/<model>/<method>`` as it came off the wire.

    ``params`` contains the named arguments of the body. It is empty when
    the body is not a JSON object, and ``body_error`` then gives the reason.
    """

    model: str
    method: str
    mimetype: str
    authorization: str | None
    database: str | None
    params: dict[str, Any]
    body_error: str | None


async def read_json2_call(request: Request) -> Json2Call:
    """Read the path, headers and body of a JSON-2 request without checking them."""
    params: dict[str, Any] = {}
    body_error = None
    body = await request.body()
    if body:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            payload, body_error = None, f"could not parse the body as json: {exc}"
        if isinstance(payload, dict):
            params = payload
        elif body_error is None:
            body_error = "could not parse the body, expecting a json object"

    return Json2Call(
        model=request.path_params["model"],
        method=request.path_params["method"],
        mimetype=request.headers.get("content-type", "").split(";")[0].strip().lower(),
        authorization=request.headers.get("authorization"),
        database=request.headers.get("x-odoo-database"),
        params=params,
        body_error=body_error,
    )


class Json2Api:
    """Runs JSON-2 calls against one database with one API key."""

    def __init__(self, store: RecordStore, *, database: str, api_key: str, uid: int) -> None:
        self.store = store
        self.database = database
        self.api_key = api_key
        self.uid = uid

    def respond(self, call: Json2Call) -> Response:
        """Run ``call`` and return its JSON result, or the error object with its status."""
        try:
            result = self._run(call)
        except Json2Error as error:
            # The message can quote request values, so the log names only the class.
            logger.info(
                "Odoo JSON-2 call %s/%s failed with HTTP %d %s",
                call.model, call.method, error.status, error.name,
            )
            return error_response(error)
        return JSONResponse(result)

    def _run(self, call: Json2Call) -> Any:
        if call.database is not None and call.database != self.database:
            # NOTE: inferred from Odoo 19's http.py, not observed: a database that
            # dbfilter rejects leaves the request without a database, where only
            # the catch-all /json/2 route exists.
            raise http_error(404, JSON2_ROUTE_HINT)
        if call.mimetype != _JSON_MIMETYPE:
            raise http_error(
                415, f"Request type {call.mimetype or 'none'!r} is not compatible with the "
                "JSON-2 route. Please verify the Content-Type request header and try again.",
            )
        self._authenticate(call.authorization)
        if call.body_error is not None:
            raise http_error(400, call.body_error)

        methods = model_methods(self.store, self.uid, call.model)
        if methods is None:
            raise http_error(404, f"the model {call.model!r} does not exist")
        if call.method.startswith("_"):
            raise http_error(
                404, f"Private methods (such as {call.method}) cannot be called remotely."
            )
        function = methods.get(call.method)
        if function is None:
            raise http_error(
                404, f"The method {call.method!r} does not exist on the model {call.model!r}"
            )
        return self._call(call, function)

    def _authenticate(self, authorization: str | None) -> None:
        challenge = {"WWW-Authenticate": "Bearer"}
        match = _BEARER.match(authorization or "")
        if match is None:
            raise http_error(401, "Missing Authorization: bearer <API key> header", challenge)
        token = match.group(1).strip()
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise http_error(401, "Invalid apikey", challenge)

    def _call(self, call: Json2Call, function: Any) -> Any:
        ids = call.params.get("ids", [])
        # The controller takes ``ids`` and ``context`` as its own parameters.
        kwargs = {key: value for key, value in call.params.items() if key not in ("ids", "context")}
        if call.method in RECORD_METHODS:
            args: list[Any] = [ids]
        elif ids:
            raise http_error(422, f"cannot call {call.model}.{call.method} with ids")
        else:
            args = []

        try:
            inspect.signature(function).bind(*args, **kwargs)
        except TypeError as exc:
            raise http_error(422, str(exc)) from None
        try:
            return function(*args, **kwargs)
        except OdooFault as fault:
            status = _FAULT_STATUS.get(fault.name, 500)
            raise Json2Error(status, fault.name, fault.message, [fault.message]) from None


def json2_not_found() -> Response:
    """Build the 404 response that Odoo sends for any other path under ``/json/2``."""
    return error_response(http_error(404, JSON2_ROUTE_HINT))
