"""Request log and fault injection shared by the demo Salesforce and Odoo servers.

Tests of the gateway read the log to check how many upstream calls a GraphQL
request caused and which fields each call asked for. The ``/__fonte/...``
routes are test hooks and are no part of either vendor's API.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class RequestLogEntry:
    """One upstream call as the gateway's tests see it.

    ``fields`` is the exact list of attributes the request asked for, in
    order, or None when it named none (for Odoo that means all fields).
    ``keys`` is the number of key values in the request's IN clause (0 when none).
    ``filter`` is the request's condition as the vendor received it (the SOQL
    WHERE clause, the Odoo domain as JSON) with long value lists shortened
    to their length, so tests can see which conditions were pushed down.
    """

    method: str
    path: str
    entity: str | None
    keys: int
    fields: list[str] | None
    status: int
    filter: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DemoControl:
    """Mutable state that a test changes through the control routes.

    When ``fault_status`` is set, every vendor API call returns that HTTP
    status with an error body in the vendor's format. ``fault_delay`` is the
    number of seconds a vendor API call sleeps before it responds.
    """

    log: list[RequestLogEntry] = field(default_factory=list)
    fault_status: int | None = None
    fault_delay: float = 0.0

    def record(self, entry: RequestLogEntry) -> None:
        self.log.append(entry)

    def clear(self) -> None:
        self.log.clear()


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def control_routes(control: DemoControl) -> list[Route]:
    """Build the test-hook routes that read the log and set the fault.

    ``GET /__fonte/requests`` returns ``{"requests": [...]}``, ``DELETE`` on
    the same path clears the log, and ``PUT /__fonte/fault`` takes
    ``{"status": int | null, "delay": float}``.
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
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            return _bad_request(f"fault status {status!r} is invalid. Use an HTTP status 100-599 "
                                "or null")
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            return _bad_request(f"fault delay {delay!r} is invalid. Use a number of seconds >= 0")

        control.fault_status = status
        control.fault_delay = float(delay)
        return JSONResponse({"status": control.fault_status, "delay": control.fault_delay})

    return [
        Route("/__fonte/requests", list_requests, methods=["GET"]),
        Route("/__fonte/requests", clear_requests, methods=["DELETE"]),
        Route("/__fonte/fault", set_fault, methods=["PUT"]),
    ]
