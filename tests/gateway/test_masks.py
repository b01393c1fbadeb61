"""Field masks: exact outputs, policy parsing, scalar compatibility and pseudonym keys."""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import hmac
import re
import unicodedata
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import PolicyError
from gateway.masks import (
    VALID_FORMS,
    MaskSpec,
    PseudonymKeys,
    compatible,
    masker,
    parse_mask,
)

MASTER_KEY = bytes(range(32))
KEYS = PseudonymKeys(MASTER_KEY)
SCALARS = ["ID", "String", "Int", "Boolean", "Decimal", "Date", "DateTime"]
TEXT_MASKS = ["last4", "first4", "email_domain", "pseudonym:crm"]
IBAN_GROUPED = "IT60 X054 2811 1010 0000 0123 456"
IBAN_PLAIN = "IT60X0542811101000000123456"
PLUS_TWO = datetime.timezone(datetime.timedelta(hours=2))
PLUS_ONE = datetime.timezone(datetime.timedelta(hours=1))
D = decimal.Decimal


def apply(text: str, scalar: str, value: Any) -> Any:
    return masker(parse_mask(text), scalar, KEYS)(value)


# --- last4 and first4 -----------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("", ""),
    ("a", "*"),
    ("ab", "**"),
    ("abc", "***"),
    ("abcd", "****"),
    ("abcde", "*bcde"),
    ("   ", "***"),
    ("ab cd", "*****"),
    ("abcd  ", "******"),
    ("ab cde", "*b cde"),
    ("1234\t5678", "****\t5678"),
    (IBAN_PLAIN, "*" * 23 + "3456"),
    (IBAN_GROUPED, "**** **** **** **** **** ***3 456"),
    ("Zoë", "***"),
    ("Zoe\u0308", "***"),
    ("Niccolò Ðorđević", "******* ****ević"),
    ("山田太郎", "****"),
    ("山田太郎様", "*田太郎様"),
])
def test_last4_exact(value: str, expected: str) -> None:
    assert apply("last4", "String", value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("", ""),
    ("abcd", "****"),
    ("abcde", "abcd*"),
    ("   ", "***"),
    ("ab cde", "ab cd*"),
    (IBAN_PLAIN, "IT60" + "*" * 23),
    (IBAN_GROUPED, "IT60 **** **** **** **** **** ***"),
    ("Zoë Smith", "Zoë S****"),
    ("Niccolò Ðorđević", "Nicc*** ********"),
    ("山田太郎様", "山田太郎*"),
])
def test_first4_exact(value: str, expected: str) -> None:
    assert apply("first4", "String", value) == expected


def test_last4_counts_nfc_characters() -> None:
    decomposed = "Zoe\u0308 Smith"

    masked = apply("last4", "String", decomposed)

    assert masked == "*** *mith"
    assert len(masked) == len(unicodedata.normalize("NFC", decomposed))


def test_last4_on_id_field() -> None:
    assert apply("last4", "ID", "0015g00000XyZaBAAV") == "**************BAAV"


# --- email_domain ---------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("mario.rossi@pec.acme.it", "*@pec.acme.it"),
    ("Mario.Rossi@PEC.Acme.IT", "*@pec.acme.it"),
    ("  mario@acme.it \n", "*@acme.it"),
    ("zoë@café.it", "*@café.it"),
    ("ZOË@CAFÉ.IT", "*@café.it"),
    ("zoe@cafe\u0301.it", "*@café.it"),
    ("a@b", "*@b"),
])
def test_email_domain_exact(value: str, expected: str) -> None:
    assert apply("email_domain", "String", value) == expected


@pytest.mark.parametrize("value", [
    "", "   ", "mario", "@acme.it", "mario@", "@", "a@b@acme.it", "mario@@acme.it",
])
def test_email_domain_invalid_is_star(value: str) -> None:
    assert apply("email_domain", "String", value) == "*"


# --- year -----------------------------------------------------------------------------------

def test_year_of_date() -> None:
    masked = apply("year", "Date", datetime.date(1984, 7, 23))

    assert masked == datetime.date(1984, 1, 1)
    assert type(masked) is datetime.date


def test_year_of_aware_datetime() -> None:
    masked = apply("year", "DateTime", datetime.datetime(2024, 5, 6, 7, 8, 9, 10, PLUS_TWO))

    assert masked == datetime.datetime(2024, 1, 1, tzinfo=PLUS_TWO)
    assert masked.tzinfo is PLUS_TWO


def test_year_uses_value_timezone() -> None:
    # 2023-12-31T23:30 in UTC, but 2024 in the value's own timezone.
    masked = apply("year", "DateTime", datetime.datetime(2024, 1, 1, 0, 30, tzinfo=PLUS_ONE))

    assert masked == datetime.datetime(2024, 1, 1, tzinfo=PLUS_ONE)


def test_year_of_naive_datetime() -> None:
    masked = apply("year", "DateTime", datetime.datetime(1999, 12, 31, 23, 59))

    assert masked == datetime.datetime(1999, 1, 1)
    assert masked.tzinfo is None


# --- round ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (0, 0),
    (1234, 1000),
    (1499, 1000),
    (1500, 2000),
    (2500, 2000),
    (3500, 4000),
    (-499, 0),
    (-1500, -2000),
    (-2500, -2000),
    (-2501, -3000),
])
def test_round_int_step_1000(value: int, expected: int) -> None:
    masked = apply("round:1000", "Int", value)

    assert masked == expected
    assert type(masked) is int


@pytest.mark.parametrize(("text", "value", "expected"), [
    ("round:1000", "1234.56", "1000.00"),
    ("round:1000", "2500.00", "2000.00"),
    ("round:1000", "-2500.00", "-2000.00"),
    ("round:1000", "499.99", "0.00"),
    ("round:0.5", "7.25", "7.00"),
    ("round:0.5", "7.75", "8.00"),
    ("round:0.5", "7.26", "7.50"),
    ("round:0.5", "-0.25", "0.00"),
    ("round:0.5", "-0.26", "-0.50"),
    ("round:0.001", "1.2345", "1.23"),
])
def test_round_decimal_exact(text: str, value: str, expected: str) -> None:
    masked = apply(text, "Decimal", D(value))

    assert isinstance(masked, decimal.Decimal)
    assert str(masked) == expected


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_round_decimal_non_finite_unchanged(value: str) -> None:
    masked = apply("round:1000", "Decimal", D(value))

    assert str(masked) == str(D(value))


@given(st.integers(min_value=-10**15, max_value=10**15), st.sampled_from([1, 7, 1000]))
def test_round_int_nearest_multiple(value: int, step: int) -> None:
    masked = apply(f"round:{step}", "Int", value)

    assert masked % step == 0
    assert abs(masked - value) * 2 <= step


# --- pseudonym ------------------------------------------------------------------------------

def expected_pseudonym(master_key: bytes, domain: str, value: str) -> str:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None,
        info=b"fonte-pseudonym:" + domain.encode(),
    ).derive(master_key)
    canonical = unicodedata.normalize("NFC", value).casefold().strip()
    digest = hmac.new(key, canonical.encode(), hashlib.sha256).digest()
    return "pn:" + base64.b32encode(digest).decode().lower()[:26]


def test_pseudonym_pinned_value() -> None:
    # Pinned because a changed derivation gives every value a new pseudonym, so pseudonyms
    # recorded earlier would no longer match.
    assert apply("pseudonym:crm", "String", "ACME S.p.A.") == "pn:h3e2whp7oh37qal734khoitgaw"


@pytest.mark.parametrize("value", ["ACME S.p.A.", "", "Niccolò Ðorđević", "山田太郎"])
def test_pseudonym_matches_definition(value: str) -> None:
    assert apply("pseudonym:crm", "String", value) == expected_pseudonym(MASTER_KEY, "crm", value)


def test_pseudonym_format() -> None:
    masked = apply("pseudonym:it", "ID", "0015g00000XyZaBAAV")

    assert re.fullmatch(r"pn:[a-z2-7]{26}", masked)


@pytest.mark.parametrize("variant", [
    "acme s.p.a.", "  Acme S.P.A. \t", "ACME S.P.A.\n",
])
def test_pseudonym_ignores_case_and_spaces(variant: str) -> None:
    assert apply("pseudonym:crm", "String", variant) == apply("pseudonym:crm", "String",
                                                               "ACME S.p.A.")


def test_pseudonym_equal_for_nfc_forms() -> None:
    assert apply("pseudonym:crm", "String", "Zoe\u0308") == apply("pseudonym:crm", "String", "ZOË")


def test_pseudonym_differs_by_domain() -> None:
    assert apply("pseudonym:crm", "String", "ACME S.p.A.") != apply("pseudonym:erp", "String",
                                                                    "ACME S.p.A.")


def test_pseudonym_differs_by_master_key() -> None:
    other = masker(parse_mask("pseudonym:crm"), "String", PseudonymKeys(b"\x01" * 32))

    assert other("ACME S.p.A.") != apply("pseudonym:crm", "String", "ACME S.p.A.")


def test_pseudonym_differs_by_value() -> None:
    assert apply("pseudonym:crm", "String", "ACME S.p.A.") != apply("pseudonym:crm", "String",
                                                                    "ACME S.r.l.")


def test_pseudonym_of_lone_surrogate() -> None:
    masked = apply("pseudonym:crm", "String", "ab\ud800c")

    assert re.fullmatch(r"pn:[a-z2-7]{26}", masked)
    assert masked != apply("pseudonym:crm", "String", "abc")


# --- null and None --------------------------------------------------------------------------

@pytest.mark.parametrize(("scalar", "value"), [
    ("ID", "42"), ("String", "Zoë"), ("Int", 7), ("Boolean", True), ("Decimal", D("1.00")),
    ("Date", datetime.date(2024, 5, 6)), ("DateTime", datetime.datetime(2024, 5, 6)),
])
def test_null_mask_returns_none(scalar: str, value: Any) -> None:
    assert apply("null", scalar, value) is None


COMPATIBLE_PAIRS = [
    (text, scalar)
    for text in [*TEXT_MASKS, "year", "round:1000", "null"]
    for scalar in SCALARS
    if compatible(parse_mask(text), scalar)
]


@pytest.mark.parametrize(("text", "scalar"), COMPATIBLE_PAIRS)
def test_none_stays_none(text: str, scalar: str) -> None:
    assert apply(text, scalar, None) is None


# --- wrong value types ----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "scalar", "value"), [
    ("last4", "String", 1234567),
    ("email_domain", "String", b"a@b.it"),
    ("pseudonym:crm", "ID", 42),
    ("year", "Date", "2024-05-06"),
    ("round:1000", "Int", D("1500")),
    ("round:1000", "Int", True),
    ("round:1000", "Decimal", 1500),
    ("round:1000", "Decimal", 1500.0),
])
def test_wrong_value_type_raises(text: str, scalar: str, value: Any) -> None:
    with pytest.raises(TypeError, match="expected"):
        apply(text, scalar, value)


# --- parse_mask and MaskSpec ----------------------------------------------------------------

@pytest.mark.parametrize(("text", "kind", "argument"), [
    ("last4", "last4", None),
    ("first4", "first4", None),
    ("email_domain", "email_domain", None),
    ("year", "year", None),
    ("null", "null", None),
    ("round:1000", "round", "1000"),
    ("round:0.5", "round", "0.5"),
    ("round:007", "round", "007"),
    ("pseudonym:it", "pseudonym", "it"),
    ("pseudonym:crm-eu2", "pseudonym", "crm-eu2"),
])
def test_parse_mask_valid(text: str, kind: str, argument: str | None) -> None:
    spec = parse_mask(text)

    assert spec == MaskSpec(cast(Any, kind), argument)
    assert str(spec) == text


def test_parse_mask_strips_whitespace() -> None:
    assert parse_mask("  round:1000 ") == MaskSpec("round", "1000")


@pytest.mark.parametrize(("text", "reason"), [
    ("", "unknown mask kind"),
    ("last", "unknown mask kind"),
    ("LAST4", "unknown mask kind"),
    ("mask:last4", "unknown mask kind"),
    ("last4:2", "last4 takes no argument"),
    ("last4:", "last4 takes no argument"),
    ("year:2024", "year takes no argument"),
    ("null:x", "null takes no argument"),
    ("round", "positive decimal step"),
    ("round:", "positive decimal step"),
    ("round:0", "positive decimal step"),
    ("round:0.00", "positive decimal step"),
    ("round:-5", "positive decimal step"),
    ("round:+5", "positive decimal step"),
    ("round:1e3", "positive decimal step"),
    ("round:.5", "positive decimal step"),
    ("round:5.", "positive decimal step"),
    ("round:1_000", "positive decimal step"),
    ("round:١٠٠٠", "positive decimal step"),
    ("round: 1000", "positive decimal step"),
    ("round:NaN", "positive decimal step"),
    ("pseudonym", "pseudonym needs a domain name"),
    ("pseudonym:", "pseudonym needs a domain name"),
    ("pseudonym:IT", "pseudonym needs a domain name"),
    ("pseudonym:crm eu", "pseudonym needs a domain name"),
    ("pseudonym:crm_eu", "pseudonym needs a domain name"),
    ("pseudonym:crm\neu", "pseudonym needs a domain name"),
])
def test_parse_mask_invalid(text: str, reason: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(f"invalid mask {text!r}: ")) as raised:
        parse_mask(text)

    assert reason in str(raised.value)
    assert VALID_FORMS in str(raised.value)


@pytest.mark.parametrize(("kind", "argument"), [
    ("upper", None), ("round", None), ("round", "-1"), ("pseudonym", "A"), ("last4", "4"),
])
def test_mask_spec_rejects_invalid(kind: str, argument: str | None) -> None:
    with pytest.raises(ValueError, match="invalid MaskSpec"):
        MaskSpec(cast(Any, kind), argument)


# --- compatible -----------------------------------------------------------------------------

# Columns follow SCALARS: ID, String, Int, Boolean, Decimal, Date, DateTime.
COMPATIBILITY = {
    "last4":         [True, True, False, False, False, False, False],
    "first4":        [True, True, False, False, False, False, False],
    "email_domain":  [True, True, False, False, False, False, False],
    "pseudonym:crm": [True, True, False, False, False, False, False],
    "year":          [False, False, False, False, False, True, True],
    "round:1000":    [False, False, True, False, True, False, False],
    "round:0.5":     [False, False, False, False, True, False, False],
    "round:2.0":     [False, False, True, False, True, False, False],
    "null":          [True, True, True, True, True, True, True],
}


@pytest.mark.parametrize("text", list(COMPATIBILITY))
@pytest.mark.parametrize("column", range(len(SCALARS)))
def test_compatible_truth_table(text: str, column: int) -> None:
    assert compatible(parse_mask(text), SCALARS[column]) is COMPATIBILITY[text][column]


def test_compatible_unknown_scalar() -> None:
    assert compatible(parse_mask("null"), "Float") is True
    assert compatible(parse_mask("last4"), "Float") is False


INCOMPATIBLE_PAIRS = [
    (text, scalar)
    for text, row in COMPATIBILITY.items()
    for scalar, fits in zip(SCALARS, row, strict=True)
    if not fits
]


@pytest.mark.parametrize(("text", "scalar"), INCOMPATIBLE_PAIRS)
def test_masker_rejects_incompatible(text: str, scalar: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"mask {text} cannot apply to {scalar} fields")):
        masker(parse_mask(text), scalar, KEYS)


# --- PseudonymKeys --------------------------------------------------------------------------

@pytest.mark.parametrize("domain", ["crm", "erp", "it", "a", "crm-eu2"])
def test_pseudonym_key_length(domain: str) -> None:
    assert len(KEYS.key(domain)) == 32


def test_pseudonym_key_is_hkdf() -> None:
    expected = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"fonte-pseudonym:crm",
    ).derive(MASTER_KEY)

    assert KEYS.key("crm") == expected


def test_pseudonym_key_cached() -> None:
    keys = PseudonymKeys(MASTER_KEY)

    assert keys.key("crm") is keys.key("crm")


def test_pseudonym_keys_differ_by_domain() -> None:
    assert KEYS.key("crm") != KEYS.key("erp")


def test_pseudonym_keys_accept_long_master() -> None:
    assert len(PseudonymKeys(b"\x02" * 64).key("crm")) == 32


@pytest.mark.parametrize("length", [0, 16, 31])
def test_pseudonym_keys_short_master(length: int) -> None:
    with pytest.raises(ValueError, match=f"is {length} bytes long; use at least 32"):
        PseudonymKeys(b"\x03" * length)


@pytest.mark.parametrize("domain", ["", "CRM", "crm eu", "crm\n"])
def test_pseudonym_key_invalid_domain(domain: str) -> None:
    with pytest.raises(ValueError, match="invalid pseudonym domain"):
        KEYS.key(domain)


# --- properties over random text ------------------------------------------------------------

# "*" is left out because an input of stars and 4 other characters is its own last4 mask.
RANDOM_TEXT = st.text(alphabet=st.characters(exclude_characters="*"), max_size=40)


@given(RANDOM_TEXT, st.sampled_from(TEXT_MASKS))
def test_text_masks_deterministic_and_hide_input(value: str, text: str) -> None:
    masked = apply(text, "String", value)
    again = masker(parse_mask(text), "String", PseudonymKeys(MASTER_KEY))(value)

    assert masked == again
    if len(value) >= 6:
        assert value not in masked


@given(RANDOM_TEXT, st.sampled_from(["last4", "first4"]))
def test_edge_masks_keep_length_and_spaces(value: str, text: str) -> None:
    normalised = unicodedata.normalize("NFC", value)

    masked = apply(text, "String", value)

    assert len(masked) == len(normalised)
    if sum(not character.isspace() for character in normalised) > 4:
        spaces = [i for i, character in enumerate(normalised) if character.isspace()]
        assert [i for i, character in enumerate(masked) if character.isspace()] == spaces
