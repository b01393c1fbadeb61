"""Conversion of upstream values to GraphQL scalars."""

from __future__ import annotations

import datetime
import decimal

import pytest

from gateway.sources import Many2one
from gateway.values import converter


def test_int_outside_32_bits_invalid() -> None:
    with pytest.raises(ValueError, match="outside the 32-bit range"):
        converter("Int")(3_123_456_789)


def test_int_limits_accepted() -> None:
    assert converter("Int")(2**31 - 1) == 2**31 - 1
    assert converter("Int")(-(2**31)) == -(2**31)


def test_decimal_from_float_keeps_cents() -> None:
    assert converter("Decimal")(1190.1) == decimal.Decimal("1190.10")


@pytest.mark.parametrize(("value", "expected"), [
    (0.125, "0.12"), (0.135, "0.14"), (-2.675, "-2.68"), (5, "5.00"), ("12.345", "12.34"),
])
def test_decimal_rounds_half_even_to_cents(value: object, expected: str) -> None:
    assert str(converter("Decimal")(value)) == expected


def test_decimal_rejects_text() -> None:
    with pytest.raises(decimal.InvalidOperation):
        converter("Decimal")("n/a")


def test_odoo_datetime_is_utc() -> None:
    assert converter("DateTime")("2026-03-01 10:22:11") == datetime.datetime(
        2026, 3, 1, 10, 22, 11, tzinfo=datetime.UTC)


def test_many2one_text_is_name() -> None:
    assert converter("String")(Many2one(1, "EUR")) == "EUR"
    assert converter("ID")(Many2one(1, "EUR")) == "1"
