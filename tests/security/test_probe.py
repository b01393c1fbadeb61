"""The probe's shared checks fail on the faults they exist to catch."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import httpx
import pytest
from probe import Probe, check_invariants, leaked, personal_forms

from gateway.demo.data import DemoData

REQUEST_ID = "r1"


def _probe(body: dict[str, Any], *, audit: list[dict[str, Any]] | None = None,
           messages: tuple[tuple[str, str], ...] = ()) -> Probe:
    response = httpx.Response(200, json=body, headers={"X-Request-ID": REQUEST_ID})
    logs = [logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None)
            for name, message in messages]
    return Probe(response=response, crm=[], erp=[], audit=audit or [], logs=logs)


def _name(data: DemoData) -> str:
    return str(data.crm["Account"][0]["Name"])


def test_clean_probe_passes(demo_data: DemoData) -> None:
    probe = _probe({"data": {"customer": {"name": _name(demo_data)}}},
                   audit=[{"request_id": REQUEST_ID}],
                   messages=(("gateway.access", "request r1 status=200"),))

    check_invariants(probe, demo_data, sent="{}")


def test_personal_value_in_log_fails(demo_data: DemoData) -> None:
    probe = _probe({"data": None}, messages=(("gateway.upstream", f"read {_name(demo_data)}"),))

    with pytest.raises(AssertionError, match=re.escape(_name(demo_data))):
        check_invariants(probe, demo_data, sent="{}")


def test_control_character_in_log_fails(demo_data: DemoData) -> None:
    probe = _probe({"data": None}, messages=(("gateway.access", "operation=Card\nforged"),))

    with pytest.raises(AssertionError, match="forged"):
        check_invariants(probe, demo_data, sent="{}")


def test_personal_value_in_error_fails(demo_data: DemoData) -> None:
    probe = _probe({"errors": [{"message": f"no {_name(demo_data)}"}]})

    with pytest.raises(AssertionError, match=re.escape(_name(demo_data))):
        check_invariants(probe, demo_data, sent="{}")


def test_echoed_value_in_error_passes(demo_data: DemoData) -> None:
    probe = _probe({"errors": [{"message": f"no {_name(demo_data)}"}]})

    check_invariants(probe, demo_data, sent=json.dumps({"variables": {"s": _name(demo_data)}}))


def test_unaudited_personal_value_fails(demo_data: DemoData) -> None:
    probe = _probe({"data": {"customer": {"name": _name(demo_data)}}})

    with pytest.raises(AssertionError, match="personal values returned with 0 records"):
        check_invariants(probe, demo_data, sent="{}")


def test_other_request_record_fails(demo_data: DemoData) -> None:
    probe = _probe({"data": None}, audit=[{"request_id": "r0"}])

    with pytest.raises(AssertionError, match="r0"):
        check_invariants(probe, demo_data, sent="{}")


def test_encoded_forms_found(demo_data: DemoData) -> None:
    name = _name(demo_data)
    forms = personal_forms(demo_data)

    assert leaked(json.dumps(name), forms) == [name]
    assert leaked(httpx.URL("http://x/", params={"q": name}).query.decode(), forms) == [name]
    assert leaked("nothing here", forms) == []
