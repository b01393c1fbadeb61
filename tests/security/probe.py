"""Send one request and collect everything it caused; check what holds for every attack.

``send`` posts a request to a harness and returns a ``Probe``: the
response, the upstream requests that the demo CRM and ERP logged, the
audit records written for it, and the log records captured meanwhile.
Before it returns, it asserts the invariants shared by every section of
the security suite:

- no log record contains a personal value of the seeded demo data, and
  no message of the gateway's loggers contains a control character, so
  client text cannot forge a log line;
- no error of the response contains one, unless the request itself sent it;
- a response that contains a personal value has exactly one audit record;
- every audit record written meanwhile belongs to this request.

Personal values are searched raw, percent-encoded and JSON-escaped, as in
``tests/gateway/test_no_copies.py``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
from conftest import Harness, read_audit_records

from gateway.demo.control import RequestLogEntry
from gateway.demo.data import DemoData

_FORMATTER = logging.Formatter("%(name)s %(levelname)s %(message)s")
_FORMS: dict[int, dict[str, set[str]]] = {}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class Probe:
    """One request and what it caused."""

    response: httpx.Response
    crm: list[RequestLogEntry]
    erp: list[RequestLogEntry]
    audit: list[dict[str, Any]]
    logs: list[logging.LogRecord]

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = self.response.json()
        return body

    @property
    def upstream(self) -> list[RequestLogEntry]:
        """Return the CRM's and then the ERP's logged API calls."""
        return self.crm + self.erp

    def codes(self) -> list[str]:
        """Return the ``extensions.code`` of each error, in order."""
        return [error["extensions"]["code"] for error in self.body.get("errors", [])]

    def requested_attributes(self) -> set[str]:
        """Return every attribute any upstream call asked for."""
        return {name for entry in self.upstream for name in entry.fields or ()}

    def decisions(self) -> dict[str, str]:
        """Return the field decisions of the request's only audit record."""
        assert len(self.audit) == 1, f"{len(self.audit)} audit records"
        return {entry["field"]: entry["decision"] for entry in self.audit[0]["fields"]}

    def log_lines(self) -> list[str]:
        return [_FORMATTER.format(record) for record in self.logs]


async def send(harness: Harness, caplog: pytest.LogCaptureFixture, query: str | None = None,
               *, role: str = "sales", variables: dict[str, Any] | None = None,
               operation_name: str | None = None, token: str | None = None,
               headers: dict[str, str] | None = None, payload: Any = None) -> Probe:
    """Send ``query`` (or the JSON ``payload`` as the whole body) and check the invariants."""
    caplog.set_level(logging.DEBUG)
    harness.clear_logs()
    logged_before = len(caplog.records)
    audited_before = len(await read_audit_records(harness.data_dir))

    if payload is None:
        payload = {"query": query}
        if variables is not None:
            payload["variables"] = variables
        if operation_name is not None:
            payload["operationName"] = operation_name
    bearer = token if token is not None else harness.token(role)
    response = await harness.client.post(
        "/graphql", json=payload, headers={"Authorization": f"Bearer {bearer}",
                                           **(headers or {})})

    # The logs end with the response, before the audit store is read here.
    logs = caplog.records[logged_before:]
    probe = Probe(response=response, crm=harness.crm_requests(), erp=harness.erp_requests(),
                  audit=(await read_audit_records(harness.data_dir))[audited_before:],
                  logs=logs)
    check_invariants(probe, harness.data, json.dumps(payload))
    return probe


def personal_forms(data: DemoData) -> dict[str, set[str]]:
    """Return each seeded personal value with its raw, URL and JSON encodings."""
    forms = _FORMS.get(id(data))
    if forms is None:
        forms = {value: {value, quote(value), quote_plus(value), json.dumps(value)[1:-1]}
                 for value in data.personal_values()}
        _FORMS[id(data)] = forms
    return forms


def leaked(text: str, forms: dict[str, set[str]]) -> list[str]:
    """Return the personal values that appear in ``text`` in any of their forms."""
    return [value for value, encoded in forms.items() if any(form in text for form in encoded)]


def check_invariants(probe: Probe, data: DemoData, sent: str) -> None:
    """Assert the checks of every request; ``sent`` is the request body as JSON."""
    forms = personal_forms(data)
    request_id = probe.response.headers.get("X-Request-ID")

    # The messages matter: pytest rewrites the asserts of test files only.
    leaking_lines = [line for line in probe.log_lines() if leaked(line, forms)]
    assert leaking_lines == [], f"personal values in log lines: {leaking_lines}"
    forged = [record.getMessage() for record in probe.logs
              if record.name.startswith("gateway.") and _CONTROL.search(record.getMessage())]
    assert forged == [], f"control characters in log messages: {forged}"
    errors = json.dumps(probe.body.get("errors", []), ensure_ascii=False)
    in_errors = [value for value in leaked(errors, forms) if value not in sent]
    assert in_errors == [], f"personal values in errors: {in_errors}"
    others = [r["request_id"] for r in probe.audit if r["request_id"] != request_id]
    assert others == [], f"audit records of other requests: {others}"
    returned = leaked(json.dumps(probe.body.get("data"), ensure_ascii=False), forms)
    if returned:
        assert len(probe.audit) == 1, f"personal values returned with {len(probe.audit)} records"
