"""Keyed pseudonyms for data subjects in audit records, and the key file they use.

A token is ``"v1:"`` followed by the first 160 bits of HMAC-SHA256(key, kind 0x1F
NFC(value)) in lowercase base32. The same key, kind and value always give the same
token, so a data protection officer can find every record about one subject by
computing its token. Without the key a token cannot be linked back to the value.
Losing or replacing the key breaks that link for every record written with it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import stat
import unicodedata
from pathlib import Path

from gateway.errors import ConfigError

logger = logging.getLogger(__name__)

KEY_BYTES = 32
TOKEN_PATTERN = re.compile(r"v1:[a-z2-7]{32}")

_TOKEN_PREFIX = "v1:"
_SEPARATOR = b"\x1f"
# 20 bytes are exactly 32 base32 characters, so the token needs no padding.
_DIGEST_BYTES = 20
_HMAC_BLOCK_BYTES = 64
# Every pair of lowercase base32 characters, indexed by the 10 bits they encode.
# One lookup per 10 bits gives the text of base64.b32encode, which loops in Python.
_B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_B32_PAIRS = tuple(a + b for a in _B32_ALPHABET for b in _B32_ALPHABET)
_B32_SHIFTS = tuple(range(_DIGEST_BYTES * 8 - 10, -1, -10))


# Tokens kept per Pseudonymizer, about 250 bytes an entry. A full cache is emptied.
DEFAULT_TOKEN_CACHE_SIZE = 16_384


class Pseudonymizer:
    """Keyed generator of stable pseudonym tokens for subject identifiers.

    Recent tokens are cached in memory by (kind, value). The cache keeps subject
    identifiers only in process memory and never writes them out.
    """

    def __init__(self, key: bytes, *, cache_size: int = DEFAULT_TOKEN_CACHE_SIZE) -> None:
        if not isinstance(key, bytes):
            raise TypeError(f"pseudonym key must be bytes, not {type(key).__name__}")
        if len(key) < KEY_BYTES:
            raise ValueError(
                f"pseudonym key is {len(key)} bytes long; it must be at least {KEY_BYTES} bytes"
            )
        self._key = key
        # HMAC (RFC 2104) starts both of its hashes with the padded key. Those two
        # states are kept and copied per token, which gives hmac.new's digest faster.
        block = key if len(key) <= _HMAC_BLOCK_BYTES else hashlib.sha256(key).digest()
        padded = block.ljust(_HMAC_BLOCK_BYTES, b"\x00")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in padded))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in padded))
        self._cache_size = cache_size
        self._tokens: dict[tuple[str, str], str] = {}

    def token(self, kind: str, value: str) -> str:
        """Return the pseudonym token of ``value``, an identifier of subject type ``kind``.

        Only Unicode NFC normalisation is applied to ``value``. Callers that treat other
        spellings as the same subject (letter case, surrounding spaces) must normalise
        them first. ``kind`` must not contain U+001F, because that byte separates kind
        from value in the HMAC input.
        """
        # Only a valid kind enters the cache, so a hit needs no check.
        cached = self._tokens.get((kind, value))
        if cached is not None:
            return cached
        if not kind:
            raise ValueError("pseudonym kind must be a non-empty string such as 'customer'")
        if "\x1f" in kind:
            raise ValueError(f"pseudonym kind {kind!r} must not contain U+001F")

        inner = self._inner.copy()
        inner.update(kind.encode("utf-8") + _SEPARATOR + _nfc_bytes(value))
        outer = self._outer.copy()
        outer.update(inner.digest())
        bits = int.from_bytes(outer.digest()[:_DIGEST_BYTES], "big")
        token = _TOKEN_PREFIX + "".join([_B32_PAIRS[(bits >> shift) & 0x3FF]
                                         for shift in _B32_SHIFTS])
        if len(self._tokens) >= self._cache_size:
            self._tokens.clear()
        self._tokens[(kind, value)] = token
        return token


def _nfc_bytes(value: str) -> bytes:
    return unicodedata.normalize("NFC", value).encode("utf-8")


def load_or_create_key(path: Path) -> bytes:
    """Read the pseudonym key at ``path``, creating a random 32-byte key if it is missing.

    A new key file gets mode 0600. A missing parent directory is created with mode 0700,
    and any missing directories above it with the default mode. The file appears complete
    or not at all, because it is written under a temporary name and then hard-linked into
    place. If two processes create the key at the same time, both end up using the one
    that was linked first.

    Raises ConfigError if the file is shorter than 32 bytes or cannot be read or written.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        created = _create_key(path)
    except OSError as exc:
        raise ConfigError(f"cannot create pseudonym key file {path}: {exc.strerror}") from exc
    if created is not None:
        logger.info("created a new pseudonym key file %s", path)
        return created

    # Another process linked its key first.
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    """Read an existing key file. Raises FileNotFoundError, for the caller to create it."""
    try:
        key = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read pseudonym key file {path}: {exc.strerror}") from exc

    if len(key) < KEY_BYTES:
        raise ConfigError(
            f"pseudonym key file {path} is {len(key)} bytes long; it must contain at least "
            f"{KEY_BYTES} bytes. Restore it from a backup. Delete it only if no audit record "
            "was written with it, because a new key cannot link to earlier pseudonyms."
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "pseudonym key file %s has mode %o; restrict it with chmod 600",
            path,
            stat.S_IMODE(mode),
        )
    return key


def _create_key(path: Path) -> bytes | None:
    """Write a new random key to ``path`` and return it, or None if ``path`` already exists."""
    key = secrets.token_bytes(KEY_BYTES)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")

    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(key)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    except FileExistsError:
        return None
    finally:
        temporary.unlink(missing_ok=True)

    _fsync_directory(path.parent)
    return key


def _fsync_directory(directory: Path) -> None:
    # Makes the new directory entry durable, so that a crash cannot lose a key that
    # audit records were already written with.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
