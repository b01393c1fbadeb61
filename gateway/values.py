"""Convert upstream values to the GraphQL scalar a field declares."""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Callable
from typing import Any

from gateway.sources import Many2one

_CENT = decimal.Decimal("0.01")


def _text(value: Any) -> str:
    if isinstance(value, Many2one):
        return value.name
    return str(value)


def _identifier(value: Any) -> str:
    if isinstance(value, Many2one):
        return str(value.id)
    return str(value)


def _decimal(value: Any) -> decimal.Decimal:
    # Upstreams send money as JSON numbers; str() keeps the shortest decimal
    # form of the float, so 1190.1 stays 1190.10 rather than 1190.0999...
    # Positional rounding: the keyword form costs a third more in CPython 3.11.
    return decimal.Decimal(str(value)).quantize(_CENT, decimal.ROUND_HALF_EVEN)


def _date(value: Any) -> datetime.date:
    if isinstance(value, datetime.date):
        return value
    return datetime.date.fromisoformat(str(value)[:10])


def _datetime(value: Any) -> datetime.datetime:
    # Odoo writes "YYYY-MM-DD HH:MM:SS" in UTC; Salesforce ISO 8601 with an offset.
    text = str(value).replace(" ", "T", 1)
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment


_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def _integer(value: Any) -> int:
    # GraphQL Int is a signed 32-bit integer; a larger upstream value is invalid.
    number = int(value)
    if not _INT_MIN <= number <= _INT_MAX:
        raise ValueError("outside the 32-bit range of GraphQL Int")
    return number


def _boolean(value: Any) -> bool:
    return bool(value)


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "ID": _identifier,
    "String": _text,
    "Int": _integer,
    "Boolean": _boolean,
    "Decimal": _decimal,
    "Date": _date,
    "DateTime": _datetime,
}


def converter(scalar: str) -> Callable[[Any], Any]:
    """Return the conversion of upstream values to ``scalar``."""
    return CONVERTERS[scalar]
