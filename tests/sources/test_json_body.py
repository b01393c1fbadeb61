"""Upstream JSON bodies decode with orjson and fall back to the standard decoder."""

from __future__ import annotations

import math

import httpx
import pytest

from gateway.errors import UpstreamUnavailable
from gateway.sources.http import json_body


def response(content: bytes, status: int = 200) -> httpx.Response:
    return httpx.Response(status, content=content)


def test_json_body_utf8_object() -> None:
    body = json_body(response('{"city": "Forl\u00ec", "amount": 12.5, "id": 7}'.encode()),
                     "crm", "Account query")
    assert body == {"city": "Forl\u00ec", "amount": 12.5, "id": 7}


def test_json_body_integer_beyond_64_bits() -> None:
    body = json_body(response(b'{"id": 123456789012345678901234567890}'), "erp", "read")
    assert body == {"id": 123456789012345678901234567890}


def test_json_body_nan_and_infinity() -> None:
    body = json_body(response(b'[NaN, Infinity]'), "erp", "read")
    assert math.isnan(body[0])
    assert body[1] == math.inf


def test_json_body_utf16() -> None:
    body = json_body(response('{"city": "Forl\u00ec"}'.encode("utf-16")), "erp", "read")
    assert body == {"city": "Forl\u00ec"}


def test_json_body_not_json() -> None:
    with pytest.raises(UpstreamUnavailable) as info:
        json_body(response(b"<html>busy</html>", status=502), "erp", "res.partner read")
    assert str(info.value) == ("system 'erp' answered res.partner read with HTTP 502 and a "
                               "body that is not JSON")


def test_json_body_invalid_utf8() -> None:
    with pytest.raises(UpstreamUnavailable) as info:
        json_body(response(b'{"name": "\xff"}'), "crm", "Account query")
    assert str(info.value) == ("system 'crm' answered Account query with HTTP 200 and a "
                               "body that is not JSON")


def test_json_body_long_digits_in_string() -> None:
    body = json_body(response(b'{"iban": "IT60X0542811101000000123456", "n": 1}'), "erp", "read")
    assert body == {"iban": "IT60X0542811101000000123456", "n": 1}


def test_json_body_negative_long_integer_in_list() -> None:
    body = json_body(response(b'[1,-98765432109876543210]'), "erp", "read")
    assert body == [1, -98765432109876543210]


def test_json_body_long_integer_after_space() -> None:
    body = json_body(response(b'{"id":\n 12345678901234567890123}'), "erp", "read")
    assert body == {"id": 12345678901234567890123}


def test_json_body_bare_long_integer() -> None:
    assert json_body(response(b"12345678901234567890123"), "erp", "read") == (
        12345678901234567890123)
