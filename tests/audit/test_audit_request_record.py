"""Tests of prepare_request: the same prepared record as prepare_event, byte for byte."""

from __future__ import annotations

import hashlib
import random
import secrets
from typing import Any, cast

import pytest

from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import AuditEvent, canonical_json, validate_event
from gateway.audit.request_record import prepare_request
from gateway.audit.store import prepare_event
from gateway.audit.subject_keys import SubjectSealer

PSEUDONYMS = Pseudonymizer(b"request-record-test-key".ljust(32, b"."))
# Text that JSON must escape or keep as UTF-8: quotes, backslashes, control
# characters, accents, a character outside the BMP and a separator U+2028.
HARD_TEXT = ['a"b', "back\\slash", "line\nbreak\r\t", "\x00\x1f\x7f", "caffè", "日本",
             "\U0001f600", "\u2028", "", " "]


def _text(rng: random.Random) -> str:
    pieces = [rng.choice(HARD_TEXT) for _ in range(rng.randint(0, 3))]
    return "x" + "".join(pieces) + str(rng.randint(0, 999))


def _optional_text(rng: random.Random) -> str | None:
    return None if rng.random() < 0.3 else _text(rng)


def _random_values(rng: random.Random) -> dict[str, Any]:
    """Return keyword arguments of prepare_request, except fields_json, and the fields list."""
    kinds = ["customer", "contact", "tipo-è"]
    # A pseudonym token is made for one type, as Pseudonymizer.token makes it.
    chosen = [rng.choice(kinds) for _ in range(rng.randint(0, 6))]
    subjects = [(kind, PSEUDONYMS.token(kind, f"C-{rng.randint(0, 20)}")) for kind in chosen]
    fields = [
        {"field": f"Customer.{_text(rng)}", "category": _text(rng),
         "decision": rng.choice(["allow", "mask", "deny"]), "rule": _text(rng),
         "mask": _optional_text(rng)}
        for _ in range(rng.randint(0, 4))
    ]
    return {
        "time": "2026-12-05T09:17:39.123Z",
        "request_id": _text(rng),
        "actor": _text(rng),
        "roles": sorted(_text(rng) for _ in range(rng.randint(0, 3))),
        "purpose": _optional_text(rng),
        "client": _optional_text(rng),
        "client_address": rng.choice([None, "127.0.0.1", "2001:db8::1"]),
        "operation_name": _optional_text(rng),
        "operation_hash": hashlib.sha256(_text(rng).encode()).hexdigest(),
        "subjects": subjects,
        "fields": fields,
        "systems": sorted(rng.sample(["crm", "erp", "rest"], rng.randint(0, 3))),
        "records": rng.randint(0, 10_000),
        "outcome": rng.choice(["success", "partial", "denied", "error"]),
        "policy_version": _text(rng),
    }


def _as_event(values: dict[str, Any]) -> AuditEvent:
    event = dict(values)
    event["subjects"] = [{"type": kind, "ref": ref} for kind, ref in values["subjects"]]
    return cast(AuditEvent, event)


def _prepare(values: dict[str, Any]) -> Any:
    arguments = {key: value for key, value in values.items() if key != "fields"}
    return prepare_request(**arguments,
                           fields_json=canonical_json(values["fields"]).decode("utf-8"))


@pytest.mark.parametrize("seed", range(200))
def test_matches_prepare_event(seed: int) -> None:
    values = _random_values(random.Random(seed))
    event = _as_event(values)
    validate_event(event)

    assert _prepare(values) == prepare_event(event)


@pytest.mark.parametrize("seed", range(20))
def test_body_matches_prepare_event(seed: int) -> None:
    values = _random_values(random.Random(seed))
    keys = {ref: secrets.token_bytes(32) for _kind, ref in values["subjects"]}

    fast = _prepare(values).body(41, "ab" * 32, keys, SubjectSealer())
    reference = prepare_event(_as_event(values)).body(41, "ab" * 32, keys, SubjectSealer())

    assert fast == reference


@pytest.mark.parametrize(("key", "value", "message"), [
    ("actor", "", "actor must be a non-empty string"),
    ("request_id", None, "request_id must be a non-empty string"),
    ("purpose", "", "purpose must be a non-empty string"),
    ("roles", ["sales", ""], "roles item must be a non-empty string"),
    ("client_address", "localhost", "client_address must be an IPv4 or IPv6 address"),
    ("records", True, "records must be a non-negative integer"),
])
def test_rejects_invalid_request_value(key: str, value: object, message: str) -> None:
    values = _random_values(random.Random(1))
    values[key] = value

    with pytest.raises(ValueError, match=message):
        _prepare(values)


def test_rejects_lone_surrogate() -> None:
    values = _random_values(random.Random(2))
    values["client"] = "crm\ud800"

    with pytest.raises(UnicodeEncodeError, match="surrogates not allowed"):
        _prepare(values)
