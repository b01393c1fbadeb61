"""Tests of Pseudonymizer tokens and the pseudonym key file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import stat
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.pseudonym import TOKEN_PATTERN, Pseudonymizer, load_or_create_key
from gateway.errors import ConfigError

KEY = bytes(range(32))


def test_token_matches_known_answer() -> None:
    # Computed separately as HMAC-SHA256(key, b"customer\x1fC-1001"), first 20 bytes,
    # lowercase base32. A change here orphans every pseudonym already stored.
    token = Pseudonymizer(KEY).token("customer", "C-1001")

    assert token == "v1:ywd2osczrl6czew7p66qqreiuzvefzrm"


def reference_token(key: bytes, kind: str, value: str) -> str:
    """The token as the module docstring defines it, with the standard library's HMAC."""
    message = kind.encode() + b"\x1f" + unicodedata.normalize("NFC", value).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()[:20]
    return "v1:" + base64.b32encode(digest).decode("ascii").lower()


@settings(max_examples=500, deadline=None)
@given(key=st.binary(min_size=32, max_size=200),
       kind=st.sampled_from(("customer", "contact", "ü")),
       value=st.text(max_size=40))
def test_token_equals_hmac_definition(key: bytes, kind: str, value: str) -> None:
    # Keys up to 200 bytes: HMAC hashes a key longer than SHA-256's 64-byte block.
    assert Pseudonymizer(key).token(kind, value) == reference_token(key, kind, value)


def test_token_is_stable() -> None:
    first = Pseudonymizer(KEY).token("customer", "C-1001")
    second = Pseudonymizer(bytes(KEY)).token("customer", "C-1001")

    assert first == second
    assert TOKEN_PATTERN.fullmatch(first)


def test_token_differs_by_kind() -> None:
    pseudonyms = Pseudonymizer(KEY)

    assert pseudonyms.token("customer", "1001") != pseudonyms.token("contact", "1001")


def test_token_differs_by_key() -> None:
    other_key = bytes(range(1, 33))

    assert Pseudonymizer(KEY).token("customer", "C-1001") != Pseudonymizer(other_key).token(
        "customer", "C-1001"
    )


def test_token_differs_by_value() -> None:
    pseudonyms = Pseudonymizer(KEY)

    assert pseudonyms.token("customer", "C-1001") != pseudonyms.token("customer", "C-1002")


def test_token_normalises_to_nfc() -> None:
    pseudonyms = Pseudonymizer(KEY)
    composed = "Ren\u00e9e"
    decomposed = "Rene\u0301e"

    assert composed != decomposed
    assert pseudonyms.token("contact", composed) == pseudonyms.token("contact", decomposed)


def test_token_keeps_letter_case() -> None:
    pseudonyms = Pseudonymizer(KEY)

    assert pseudonyms.token("contact", "ABC") != pseudonyms.token("contact", "abc")


def test_short_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="pseudonym key is 31 bytes long; it must be at least 32"):
        Pseudonymizer(bytes(31))


def test_text_key_is_rejected() -> None:
    with pytest.raises(TypeError, match="pseudonym key must be bytes, not str"):
        Pseudonymizer("k" * 32)  # type: ignore[arg-type]


def test_kind_with_separator_is_rejected() -> None:
    with pytest.raises(ValueError, match="must not contain U\\+001F"):
        Pseudonymizer(KEY).token("customer\x1fx", "1")


def test_empty_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="pseudonym kind must be a non-empty string"):
        Pseudonymizer(KEY).token("", "1")


def test_key_file_is_created(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "nested" / "pseudonym.key"

    key = load_or_create_key(path)

    assert len(key) == 32
    assert path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(item.name for item in path.parent.iterdir()) == ["pseudonym.key"]


def test_key_file_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"

    first = load_or_create_key(path)
    second = load_or_create_key(path)

    assert first == second


def test_new_keys_differ(tmp_path: Path) -> None:
    first = load_or_create_key(tmp_path / "a.key")
    second = load_or_create_key(tmp_path / "b.key")

    assert first != second


def test_longer_key_file_is_used_whole(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(bytes(range(48)))
    path.chmod(0o600)

    assert load_or_create_key(path) == bytes(range(48))


def test_short_key_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(b"short")

    with pytest.raises(
        ConfigError,
        match=r"pseudonym key file .*pseudonym\.key is 5 bytes long.*Restore it from a backup",
    ):
        load_or_create_key(path)

    assert path.read_bytes() == b"short"


def test_key_directory_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    path.mkdir()

    with pytest.raises(ConfigError, match=r"cannot read pseudonym key file .*pseudonym\.key"):
        load_or_create_key(path)


def test_readable_key_file_logs_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(KEY)
    path.chmod(0o644)

    with caplog.at_level(logging.WARNING, logger="gateway.audit.pseudonym"):
        key = load_or_create_key(path)

    assert key == KEY
    assert [record.getMessage() for record in caplog.records] == [
        f"pseudonym key file {path} has mode 644; restrict it with chmod 600"
    ]


def test_cached_token_matches_fresh_token() -> None:
    cached = Pseudonymizer(KEY, cache_size=3)
    values = [f"C-{index % 5}" for index in range(20)]

    tokens = [cached.token("customer", value) for value in values]

    assert tokens == [Pseudonymizer(KEY).token("customer", value) for value in values]


def test_token_cache_bounded() -> None:
    pseudonyms = Pseudonymizer(KEY, cache_size=3)
    for index in range(7):
        pseudonyms.token("customer", f"C-{index}")

    assert len(pseudonyms._tokens) == 1


def test_token_cache_separates_kinds() -> None:
    pseudonyms = Pseudonymizer(KEY)

    customer = pseudonyms.token("customer", "42")
    contact = pseudonyms.token("contact", "42")

    assert customer != contact
    assert pseudonyms.token("customer", "42") == customer


def test_token_cache_follows_key() -> None:
    first = Pseudonymizer(KEY)
    second = Pseudonymizer(bytes(reversed(KEY)))

    assert first.token("customer", "C-1") != second.token("customer", "C-1")


def test_invalid_kind_rejected_after_cache() -> None:
    pseudonyms = Pseudonymizer(KEY)
    pseudonyms.token("customer", "C-1")

    with pytest.raises(ValueError, match="must not contain U"):
        pseudonyms.token("customer\x1f", "C-1")
