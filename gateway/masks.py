"""Mask field values so that a role can recognise a value without reading it.

A policy grants a field as ``mask:<kind>`` instead of ``allow``. ``parse_mask``
turns the text after ``mask:`` into a ``MaskSpec``, ``compatible`` checks it
against the field's GraphQL scalar, and ``masker`` returns the function that
the response builder applies to each value after ``gateway.values`` has
converted it. Every mask maps None to None.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import PolicyError

MaskKind = Literal["last4", "first4", "email_domain", "year", "round", "pseudonym", "null"]

VALID_FORMS = (
    "last4, first4, email_domain, year, round:<positive number>, "
    "pseudonym:<domain name [a-z0-9-]+>, null"
)

_KINDS: frozenset[str] = frozenset(get_args(MaskKind))
_STEP = re.compile(r"[0-9]+(\.[0-9]+)?")
_DOMAIN = re.compile(r"[a-z0-9-]+")
_TEXT_SCALARS = frozenset({"String", "ID"})
_SCALARS: dict[str, frozenset[str]] = {
    "last4": _TEXT_SCALARS,
    "first4": _TEXT_SCALARS,
    "email_domain": _TEXT_SCALARS,
    "pseudonym": _TEXT_SCALARS,
    "year": frozenset({"Date", "DateTime"}),
    "round": frozenset({"Int", "Decimal"}),
}
_SHOWN_CHARACTERS = 4
_CENT = decimal.Decimal("0.01")
_PSEUDONYM_CHARACTERS = 26  # 130 bits of the HMAC, in base32
_MIN_MASTER_KEY_BYTES = 32


def _argument_problem(kind: str, argument: str | None) -> str | None:
    """Return why a mask kind and argument are invalid, or None if they are valid."""
    if kind not in _KINDS:
        return f"unknown mask kind {kind!r}"
    if kind == "round":
        if argument is None or not _STEP.fullmatch(argument) or decimal.Decimal(argument) <= 0:
            return "round needs a positive decimal step, such as round:1000 or round:0.5"
        return None
    if kind == "pseudonym":
        if argument is None or not _DOMAIN.fullmatch(argument):
            return "pseudonym needs a domain name of a-z, 0-9 and '-', such as pseudonym:crm"
        return None
    if argument is not None:
        return f"{kind} takes no argument"
    return None


@dataclass(frozen=True)
class MaskSpec:
    """A mask kind and its argument, which is the step of ``round`` or the domain of ``pseudonym``.

    Construction raises ValueError for an unknown kind or an invalid argument, so
    every instance can be turned into a masker.
    """

    kind: MaskKind
    argument: str | None = None

    def __post_init__(self) -> None:
        problem = _argument_problem(self.kind, self.argument)
        if problem is not None:
            raise ValueError(f"invalid MaskSpec({self.kind!r}, {self.argument!r}): {problem}")

    def __str__(self) -> str:
        if self.argument is None:
            return self.kind
        return f"{self.kind}:{self.argument}"


def parse_mask(text: str) -> MaskSpec:
    """Parse the policy form of a mask, such as ``last4`` or ``round:1000``.

    Surrounding whitespace is ignored. Raises PolicyError naming the text and the valid forms.
    """
    kind, separator, argument = text.strip().partition(":")
    given_argument = argument if separator else None
    problem = _argument_problem(kind, given_argument)
    if problem is not None:
        raise PolicyError(f"invalid mask {text!r}: {problem}. Valid masks: {VALID_FORMS}")
    return MaskSpec(cast(MaskKind, kind), given_argument)


def compatible(spec: MaskSpec, scalar: str) -> bool:
    """Return whether ``spec`` can mask a field of the GraphQL scalar ``scalar``.

    ``null`` fits every scalar. ``round`` on an Int field needs a whole-number
    step, because multiples of a step such as 2.5 are not always whole numbers.
    """
    if spec.kind == "null":
        return True
    if scalar not in _SCALARS[spec.kind]:
        return False
    if spec.kind == "round" and scalar == "Int":
        step = _step(spec)
        return step == step.to_integral_value()
    return True


class PseudonymKeys:
    """Per-domain HMAC keys derived from one master key with HKDF-SHA256.

    A separate key per domain (``crm``, ``it``, ...) makes the pseudonyms of one
    domain useless for joining with those of another.
    """

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) < _MIN_MASTER_KEY_BYTES:
            raise ValueError(
                f"pseudonym master key is {len(master_key)} bytes long; "
                f"use at least {_MIN_MASTER_KEY_BYTES} random bytes"
            )
        self._master_key = master_key
        self._keys: dict[str, bytes] = {}

    def key(self, domain: str) -> bytes:
        """Derive, cache and return the 32-byte key of ``domain`` (``[a-z0-9-]+``)."""
        cached = self._keys.get(domain)
        if cached is not None:
            return cached
        if not _DOMAIN.fullmatch(domain):
            raise ValueError(f"invalid pseudonym domain {domain!r}: use a-z, 0-9 and '-'")
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"fonte-pseudonym:" + domain.encode("ascii"),
        ).derive(self._master_key)
        self._keys[domain] = derived
        return derived


def masker(spec: MaskSpec, scalar: str, keys: PseudonymKeys) -> Callable[[Any], Any]:
    """Build the function that masks converted values of a ``scalar`` field by ``spec``.

    The function maps None to None and raises TypeError for a value whose Python
    type does not belong to ``scalar``. Raises ValueError at once if the mask does
    not fit the scalar (see ``compatible``).
    """
    if not compatible(spec, scalar):
        raise ValueError(
            f"mask {spec} cannot apply to {scalar} fields: {spec.kind} applies to "
            f"{_fitting_scalars(spec.kind)}. Choose another mask or null for this field"
        )
    mask = _build(spec, scalar, keys)

    def apply(value: Any) -> Any:
        if value is None:
            return None
        return mask(value)

    return apply


def _build(spec: MaskSpec, scalar: str, keys: PseudonymKeys) -> Callable[[Any], Any]:
    if spec.kind == "last4":
        return lambda value: _show_edge(_text(value), from_end=True)
    if spec.kind == "first4":
        return lambda value: _show_edge(_text(value), from_end=False)
    if spec.kind == "email_domain":
        return lambda value: _email_domain(_text(value))
    if spec.kind == "year":
        return _year
    if spec.kind == "round":
        step = _step(spec)
        if scalar == "Int":
            return lambda value: _round_int(value, step)
        return lambda value: _round_decimal(value, step)
    if spec.kind == "pseudonym":
        key = keys.key(cast(str, spec.argument))
        return lambda value: _pseudonym(_text(value), key)
    return lambda value: None


def _fitting_scalars(kind: str) -> str:
    scalars = " and ".join(sorted(_SCALARS[kind]))
    if kind == "round":
        return scalars + " fields, with a whole-number step on Int"
    return scalars + " fields"


def _step(spec: MaskSpec) -> decimal.Decimal:
    return decimal.Decimal(cast(str, spec.argument))


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"text masks expected str, got {type(value).__name__}")
    return unicodedata.normalize("NFC", value)


def _show_edge(text: str, from_end: bool) -> str:
    """Apply ``last4`` (``from_end``) or ``first4`` to NFC text.

    Whitespace stays in place so that grouped values such as IBANs stay readable.
    The 4 outermost other characters are shown and the rest become ``*``. A value
    of 4 or fewer non-whitespace characters becomes all ``*``, whitespace included,
    so the mask never shows a whole value. Characters are code points, so a
    grapheme without a precomposed NFC form (an emoji sequence) counts as several.
    """
    if sum(1 for character in text if not character.isspace()) <= _SHOWN_CHARACTERS:
        return "*" * len(text)
    ordered = reversed(text) if from_end else iter(text)
    shown_count = 0
    masked: list[str] = []
    for character in ordered:
        if character.isspace():
            masked.append(character)
        elif shown_count < _SHOWN_CHARACTERS:
            masked.append(character)
            shown_count += 1
        else:
            masked.append("*")
    if from_end:
        masked.reverse()
    return "".join(masked)


def _email_domain(text: str) -> str:
    """Replace the local part by one ``*`` and lower-case the domain.

    A value without exactly one ``@`` between a non-empty local part and a
    non-empty domain is not an address, so it becomes ``*``.
    """
    address = text.strip()
    local, _, domain = address.partition("@")
    if address.count("@") != 1 or not local or not domain:
        return "*"
    return "*@" + domain.lower()


def _year(value: Any) -> datetime.date:
    """Keep only the year: the value becomes 1 January of its year.

    The field keeps its Date or DateTime type, so the month and day read as
    1 January. A datetime becomes midnight in its own tzinfo, and its year is the
    one in that timezone, not in UTC.
    """
    if isinstance(value, datetime.datetime):
        return datetime.datetime(value.year, 1, 1, tzinfo=value.tzinfo)
    if isinstance(value, datetime.date):
        return datetime.date(value.year, 1, 1)
    raise TypeError(f"year mask expected date or datetime, got {type(value).__name__}")


def _nearest_multiple(value: decimal.Decimal, step: decimal.Decimal) -> decimal.Decimal:
    # Half-way values go to the even quotient: with step 1000, 1500 and 2500 both become 2000.
    quotient = (value / step).to_integral_value(rounding=decimal.ROUND_HALF_EVEN)
    return quotient * step


def _round_int(value: Any, step: decimal.Decimal) -> int:
    """Round an int to the nearest multiple of a whole-number ``step``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"round mask on Int expected int, got {type(value).__name__}")
    return int(_nearest_multiple(decimal.Decimal(value), step))


def _round_decimal(value: Any, step: decimal.Decimal) -> decimal.Decimal:
    """Round a Decimal to the nearest multiple of ``step``, quantized to 2 places.

    NaN and infinities carry no amount and are returned unchanged.
    """
    if not isinstance(value, decimal.Decimal):
        raise TypeError(f"round mask on Decimal expected Decimal, got {type(value).__name__}")
    if not value.is_finite():
        return value
    rounded = _nearest_multiple(value, step).quantize(_CENT, rounding=decimal.ROUND_HALF_EVEN)
    # With step 0.5, -0.25 rounds to -0.00, which a client should see as 0.00.
    return rounded.copy_abs() if rounded.is_zero() else rounded


def _pseudonym(text: str, key: bytes) -> str:
    """Return ``pn:`` and 26 base32 characters of HMAC-SHA256 over the casefolded text.

    Values that differ only in case or surrounding whitespace get the same pseudonym.
    """
    canonical = text.casefold().strip()
    # json.loads turns the escape "\ud800" into a lone surrogate, which strict UTF-8 rejects.
    digest = hmac.new(key, canonical.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    encoded = base64.b32encode(digest).decode("ascii").lower()
    return "pn:" + encoded[:_PSEUDONYM_CHARACTERS]
