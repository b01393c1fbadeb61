"""Tests of the record helpers: canonical JSON, timestamps, event validation and chain_hash."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gateway.audit.chain import GENESIS_HASH, chain_hash
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import TIMESTAMP_PATTERN, canonical_json, utc_timestamp, validate_event

REF = Pseudonymizer(bytes(32)).token("customer", "C-1")


def make_event() -> dict[str, Any]:
    return {
        "time": "2026-12-04T20:17:39.123Z",
        "request_id": "req-1",
        "actor": "emp-17",
        "roles": ["sales"],
        "purpose": None,
        "client": None,
        "operation_name": None,
        "operation_hash": hashlib.sha256(b"{ customer { email } }").hexdigest(),
        "subjects": [{"type": "customer", "ref": REF}],
        "fields": [
            {
                "field": "Customer.email",
                "category": "contact.email",
                "decision": "deny",
                "rule": "default-deny",
                "mask": None,
            }
        ],
        "systems": ["crm"],
        "records": 0,
        "outcome": "denied",
        "policy_version": "7",
    }


def test_canonical_json_sorts_keys_without_spaces() -> None:
    encoded = canonical_json({"b": [1, {"d": None, "c": True}], "a": "x"})

    assert encoded == b'{"a":"x","b":[1,{"c":true,"d":null}]}'


def test_canonical_json_keeps_utf8() -> None:
    assert canonical_json({"k": "Zürich €"}) == '{"k":"Zürich €"}'.encode()


def test_canonical_json_rejects_nan() -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        canonical_json({"k": float("nan")})


def test_canonical_json_rejects_unknown_type() -> None:
    with pytest.raises(TypeError, match="Object of type bytes is not JSON serializable"):
        canonical_json({"k": b"x"})


def test_utc_timestamp_converts_and_truncates() -> None:
    moment = datetime(2026, 12, 4, 21, 17, 39, 123999, tzinfo=timezone(timedelta(hours=1)))

    assert utc_timestamp(moment) == "2026-12-04T20:17:39.123Z"


def test_utc_timestamp_pads_small_values() -> None:
    moment = datetime(987, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)

    assert utc_timestamp(moment) == "0987-01-02T03:04:05.006Z"


def test_utc_timestamp_defaults_to_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)

    stamp = utc_timestamp()

    assert TIMESTAMP_PATTERN.fullmatch(stamp)
    assert stamp >= utc_timestamp(before)


def test_utc_timestamp_rejects_naive_datetime() -> None:
    with pytest.raises(ValueError, match="naive datetime 2026-12-04T20:17:39 has no time zone"):
        utc_timestamp(datetime(2026, 12, 4, 20, 17, 39))


def test_validate_event_accepts_valid_event() -> None:
    validate_event(make_event())


INVALID_EVENTS: list[tuple[str, Any, str]] = [
    ("actor", None, "actor must be a non-empty string"),
    ("actor", "", "actor must be a non-empty string"),
    ("purpose", 3, "purpose must be a non-empty string"),
    ("roles", "sales", "roles must be a list of strings"),
    ("roles", ["sales", 1], "roles item must be a non-empty string"),
    ("time", "2026-12-04 20:17:39", "time '2026-12-04 20:17:39' is not RFC 3339 UTC"),
    ("time", "2026-13-04T20:17:39.123Z", "time '2026-13-04T20:17:39.123Z' is not a valid date"),
    ("operation_hash", "ABC", "operation_hash must be 64 lowercase hex digits"),
    ("records", -1, "records must be a non-negative integer"),
    ("records", True, "records must be a non-negative integer"),
    ("outcome", "ok", "outcome must be one of"),
    ("subjects", {}, "subjects must be a list"),
    ("subjects", [{"type": "customer"}], re.escape("subjects[0] is missing keys ['ref']")),
    ("subjects", [{"type": "customer", "ref": "C-1"}], r"subjects\[0\]\.ref is not a pseudonym"),
    ("fields", [{}], r"fields\[0\] is missing keys"),
    (
        "fields",
        [{"field": "A.b", "category": "c", "decision": "show", "rule": "r", "mask": None}],
        r"fields\[0\]\.decision must be one of \['allow', 'deny', 'mask'\]",
    ),
]


@pytest.mark.parametrize(("key", "value", "message"), INVALID_EVENTS)
def test_validate_event_rejects_bad_value(key: str, value: Any, message: str) -> None:
    event = make_event()
    event[key] = value

    with pytest.raises(ValueError, match=message):
        validate_event(event)


def test_validate_event_rejects_unknown_key() -> None:
    event = make_event()
    event["email"] = "someone@example.org"

    with pytest.raises(ValueError, match=re.escape("has unknown keys ['email']; remove them")):
        validate_event(event)


def test_validate_event_rejects_non_dict() -> None:
    with pytest.raises(ValueError, match="audit event must be a dict, not list"):
        validate_event([])


def test_genesis_hash_is_zeros() -> None:
    assert GENESIS_HASH == "0" * 64


def test_chain_hash_matches_known_answer() -> None:
    # Computed separately as SHA-256 of the prefix, 32 zero bytes, seq 1 as 8 bytes
    # and the body. A change here invalidates every stored chain.
    assert chain_hash(GENESIS_HASH, 1, b"{}") == (
        "587f0bcd2a5c3f3b72baee94aec0c133174e5d27de01e810ff6142436c7d625a"
    )


def test_chain_hash_depends_on_every_input() -> None:
    base = chain_hash(GENESIS_HASH, 1, b"{}")

    assert chain_hash("1" * 64, 1, b"{}") != base
    assert chain_hash(GENESIS_HASH, 2, b"{}") != base
    assert chain_hash(GENESIS_HASH, 1, b"[]") != base


def test_chain_hash_rejects_bad_prev_hash() -> None:
    with pytest.raises(ValueError, match="prev_hash must be 64 lowercase hex digits"):
        chain_hash("A" * 64, 1, b"{}")


def test_chain_hash_rejects_seq_zero() -> None:
    with pytest.raises(ValueError, match=re.escape("seq 0 is outside 1 to 2**63 - 1")):
        chain_hash(GENESIS_HASH, 0, b"{}")
