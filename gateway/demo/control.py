"""Request log and fault injection shared by every demo vendor server.

Tests of the gateway read the log to check how many upstream calls a GraphQL
request caused and which fields each call asked for. The ``/__fonte/...``
routes are test hooks and are no part of any vendor's API.

Every fake applies the faults in the same order before its handler runs:
first the delay, then (after its own authentication check, where it has
one) the fault status with an error body in the vendor's format, then the
fault body (``malformed`` or ``drop``, see ``body_fault``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

FaultBody = Literal["malformed", "drop"]
FAULT_BODIES: tuple[str, ...] = get_args(FaultBody)

# A JSON body cut off in the middle, as a proxy that times out mid-stream sends it.
MALFORMED_JSON = b'{"result": [{"id": 1, "name": "trunc'
# Bytes a dropped response promises in Content-Length, although it sends fewer.
_DROPPED_LENGTH = 4096


class DroppedResponse(Response):
    """A 200 response that ends before its body is complete.

    The app returns after the first chunk. Over a socket, uvicorn then closes
    the connection ("ASGI callable returned without completing response"),
    so the client sees the peer close mid-body. Through httpx's
    ``ASGITransport`` there is no connection to close, and the client gets
    the partial body, which reads as malformed JSON.
    """

    def __init__(self) -> None:
        super().__init__(status_code=200, media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(_DROPPED_LENGTH).encode())]})
        await send({"type": "http.response.body", "body": MALFORMED_JSON, "more_body": True})


@dataclass
class RequestLogEntry:
    """One upstream call as the gateway's tests see it.

    ``fields`` is the exact list of attributes the request asked for, in
    order, or None when it named none (for Odoo that means all fields).
    ``keys`` is the number of key values in the request's IN clause (0 when none).
    ``filter`` is the request's condition as the vendor received it (the SOQL
    WHERE clause, the Odoo domain as JSON) with long value lists shortened
    to their length, so tests can see which conditions were pushed down.
    ``in_batch`` is True for a request that travelled inside an OData
    ``$batch`` body, so it is no HTTP request of its own.
    """

    method: str
    path: str
    entity: str | None
    keys: int
    fields: list[str] | None
    status: int
    filter: str | None = None
    in_batch: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DemoControl:
    """Mutable state that a test changes through the control routes.

    When ``fault_status`` is set, every vendor API call returns that HTTP
    status with an error body in the vendor's format. ``fault_delay`` is the
    number of seconds a vendor API call sleeps before it responds.
    ``fault_body`` makes every vendor API call answer 200 with a truncated
    JSON body (``malformed``) or end the connection mid-body (``drop``).
    """

    log: list[RequestLogEntry] = field(default_factory=list)
    fault_status: int | None = None
    fault_delay: float = 0.0
    fault_body: FaultBody | None = None

    def record(self, entry: RequestLogEntry) -> None:
        self.log.append(entry)

    def clear(self) -> None:
        self.log.clear()

    def http_requests(self) -> list[RequestLogEntry]:
        """Return the logged requests that were HTTP requests of their own, not ``$batch`` parts."""
        return [entry for entry in self.log if not entry.in_batch]


def body_fault(control: DemoControl) -> Response | None:
    """Return the response that ``control.fault_body`` sets, or None when it is unset."""
    if control.fault_body == "malformed":
        return Response(MALFORMED_JSON, status_code=200, media_type="application/json")
    if control.fault_body == "drop":
        return DroppedResponse()
    return None


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def control_routes(control: DemoControl) -> list[Route]:
    """Build the test-hook routes that read the log and set the fault.

    ``GET /__fonte/requests`` returns ``{"requests": [...]}``, ``DELETE`` on
    the same path clears the log, and ``PUT /__fonte/fault`` takes
    ``{"status": int | null, "delay": float, "body": "malformed" | "drop" | null}``.
    """

    async def list_requests(request: Request) -> Response:
        return JSONResponse({"requests": [entry.to_json() for entry in control.log]})

    async def clear_requests(request: Request) -> Response:
        control.clear()
        return Response(status_code=204)

    async def set_fault(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _bad_request(
                "fault body is not JSON. Send {\"status\": int|null, \"delay\": float}")
        if not isinstance(body, dict):
            return _bad_request("fault body must be a JSON object with keys status and delay")

        status = body.get("status")
        delay = body.get("delay", 0.0)
        fault_body = body.get("body")
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            return _bad_request(f"fault status {status!r} is invalid. Use an HTTP status 100-599 "
                                "or null")
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            return _bad_request(f"fault delay {delay!r} is invalid. Use a number of seconds >= 0")
        if fault_body is not None and fault_body not in FAULT_BODIES:
            return _bad_request(f"fault body {fault_body!r} is invalid. Use "
                                f"{' or '.join(map(repr, FAULT_BODIES))} or null")

        control.fault_status = status
        control.fault_delay = float(delay)
        control.fault_body = fault_body
        return JSONResponse({"status": control.fault_status, "delay": control.fault_delay,
                             "body": control.fault_body})

    return [
        Route("/__fonte/requests", list_requests, methods=["GET"]),
        Route("/__fonte/requests", clear_requests, methods=["DELETE"]),
        Route("/__fonte/fault", set_fault, methods=["PUT"]),
    ]
