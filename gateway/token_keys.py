"""Public keys that verify bearer tokens: one from a PEM file, or a JWK set fetched from a URL.

Each key carries the JWS algorithms its type allows (RFC 7518 section 3.1):
RSA keys RS256-RS512 and PS256-PS512, EC keys the ES algorithm of their
curve, Ed25519 keys EdDSA. HMAC algorithms and ``none`` are never allowed,
so a token signed with a public key as an HMAC secret is rejected.

A JWK set is cached for ``cache_seconds``. A token whose ``kid`` is not in
the cached set causes one refetch, and at most one fetch starts per
``min_refetch_seconds``, so a flood of made-up key ids costs the identity
provider one request per interval. When the set cannot be fetched and no
unexpired copy is cached, verification raises ``IdentityUnavailable``
(HTTP 503) and no token is accepted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.errors import AuthenticationError, ConfigError, IdentityUnavailable

log = logging.getLogger("gateway.identity")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

# A key id is only a lookup key in the JWK set, never a path or a query, but
# one outside base64 and base64url characters is rejected before any lookup,
# so that it reaches no log line and causes no fetch. 128 characters hold a SHA-512
# thumbprint in base64 with room to spare.
_KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_\-+/=.]{1,128}")
MAX_JWKS_BYTES = 512 * 1024


@dataclass(frozen=True)
class VerificationKey:
    """A public key and the JWS algorithms a token signed with it may name."""

    key: PublicKey
    algorithms: tuple[str, ...]


class KeyResolver(Protocol):
    """Finds the key that verifies a token, given the ``kid`` of its header."""

    async def resolve(self, key_id: str | None) -> VerificationKey: ...

    async def aclose(self) -> None: ...


def algorithms_for(key: object) -> tuple[str, ...]:
    """Return the JWS algorithms allowed for ``key``; empty for an unsupported key type."""
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS if key.key_size >= 2048 else ()
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        return (algorithm,) if algorithm else ()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ("EdDSA",)
    return ()


def check_key_id(key_id: object) -> str | None:
    """Return the ``kid`` header value, or raise ``AuthenticationError`` when it is malformed."""
    if key_id is None:
        return None
    if not isinstance(key_id, str) or not _KEY_ID_PATTERN.fullmatch(key_id) or ".." in key_id:
        raise AuthenticationError("the bearer token's 'kid' header is not a valid key id; "
                                  "expected up to 128 base64 or base64url characters")
    return key_id


class StaticKey:
    """One key from a PEM file, used for every token whatever its ``kid``."""

    def __init__(self, key: PublicKey) -> None:
        algorithms = algorithms_for(key)
        if not algorithms:
            raise ConfigError(f"a {type(key).__name__} cannot verify tokens; use an RSA key of "
                              "2048 bits or more, an EC P-256/P-384/P-521 key or Ed25519")
        self._key = VerificationKey(key, algorithms)

    async def resolve(self, key_id: str | None) -> VerificationKey:
        return self._key

    async def aclose(self) -> None:
        return None


def load_public_key(path: Path) -> PublicKey:
    """Return the RSA, EC or Ed25519 public key in the PEM file at ``path``."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the token public key {str(path)!r}: "
                          f"{type(exc).__name__}; give a PEM public key (RSA, EC or "
                          "Ed25519)") from exc
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey
                      | ed25519.Ed25519PublicKey) or not algorithms_for(key):
        raise ConfigError(f"{path} contains a {type(key).__name__}; tokens are verified with an "
                          "RSA key of 2048 bits or more, an EC P-256/P-384/P-521 key or Ed25519")
    return key


@dataclass(frozen=True)
class JwksSettings:
    """The identity provider's JWK set URL, with the fetch timeout and cache intervals."""

    url: str
    timeout: float = 3.0  # seconds for one whole fetch, connect to last byte
    cache_seconds: float = 300.0
    min_refetch_seconds: float = 30.0


class JwksKeys:
    """Keys of a JWK set fetched from an HTTP(S) URL, cached, refetched on an unknown ``kid``."""

    def __init__(self, settings: JwksSettings, client: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: dict[str, VerificationKey] | None = None
        self._expires_at = 0.0
        self._last_attempt: float | None = None
        self._attempts = 0

    async def resolve(self, key_id: str | None) -> VerificationKey:
        """Return the key named ``key_id``; raise 401 for an unknown one, 503 when unfetchable."""
        if self._keys is None or self._clock() >= self._expires_at:
            await self._refresh()
        found = self._lookup(key_id)
        if found is None and self._may_fetch():
            await self._refresh()
            found = self._lookup(key_id)
        if found is None:
            raise AuthenticationError("the bearer token is signed with a key the identity "
                                      "provider does not publish; request a new token")
        return found

    async def aclose(self) -> None:
        await self._client.aclose()

    def _lookup(self, key_id: str | None) -> VerificationKey | None:
        keys = self._keys or {}
        if key_id is None:
            # RFC 7515 makes kid optional; without it only a set of one key is unambiguous.
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(key_id)

    def _may_fetch(self) -> bool:
        last = self._last_attempt
        return last is None or self._clock() - last >= self._settings.min_refetch_seconds

    async def _refresh(self) -> None:
        attempts_seen = self._attempts
        async with self._lock:
            if self._attempts != attempts_seen:
                # Another request fetched while this one waited for the lock.
                self._raise_if_unusable()
                return
            if not self._may_fetch():
                self._raise_if_unusable()
                return
            self._attempts += 1
            self._last_attempt = self._clock()
            try:
                keys = await self._fetch()
            except IdentityUnavailable:
                self._raise_if_unusable()
                return
            self._keys = keys
            self._expires_at = self._clock() + self._settings.cache_seconds

    def _raise_if_unusable(self) -> None:
        if self._keys is None or self._clock() >= self._expires_at:
            raise IdentityUnavailable(
                f"the token keys at {self._settings.url} could not be fetched; "
                "no token can be checked until the identity provider answers")

    async def _fetch(self) -> dict[str, VerificationKey]:
        url = self._settings.url
        try:
            async with asyncio.timeout(self._settings.timeout):
                body = await self._download(url)
        except TimeoutError as exc:
            log.error("JWKS fetch from %s timed out after %g s", url, self._settings.timeout)
            raise IdentityUnavailable(f"JWKS fetch from {url} timed out") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            log.error("JWKS fetch from %s failed: %s", url, type(exc).__name__)
            raise IdentityUnavailable(f"JWKS fetch from {url} failed") from exc
        keys = _parse_jwk_set(body, url)
        log.info("fetched %d token keys from %s", len(keys), url)
        return keys

    async def _download(self, url: str) -> bytes:
        async with self._client.stream("GET", url, headers={"Accept": "application/json"},
                                       timeout=self._settings.timeout) as response:
            if response.status_code != 200:
                log.error("JWKS fetch from %s returned HTTP %d", url, response.status_code)
                raise IdentityUnavailable(f"JWKS at {url} returned HTTP {response.status_code}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_JWKS_BYTES:
                    log.error("JWKS at %s is larger than %d bytes", url, MAX_JWKS_BYTES)
                    raise IdentityUnavailable(f"JWKS at {url} is too large")
                chunks.append(chunk)
        return b"".join(chunks)


def _parse_jwk_set(body: bytes, url: str) -> dict[str, VerificationKey]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError includes invalid UTF-8
        log.error("JWKS at %s is not valid JSON", url)
        raise IdentityUnavailable(f"JWKS at {url} is not valid JSON") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        log.error("JWKS at %s has no 'keys' list", url)
        raise IdentityUnavailable(f"JWKS at {url} has no 'keys' list")
    keys: dict[str, VerificationKey] = {}
    for index, entry in enumerate(entries):
        parsed = _parse_jwk(entry, index, url)
        if parsed is not None:
            keys[parsed[0]] = parsed[1]
    if not keys:
        log.error("JWKS at %s has no usable signing key", url)
        raise IdentityUnavailable(f"JWKS at {url} has no usable signing key")
    return keys


def _parse_jwk(entry: Any, index: int, url: str) -> tuple[str, VerificationKey] | None:
    """Return (kid, key) for one JWK, or None after logging why it is skipped."""
    if not isinstance(entry, Mapping):
        log.warning("JWKS at %s: keys[%d] is not an object; skipped", url, index)
        return None
    key_id = entry.get("kid", f"#{index}")
    try:
        key_id = check_key_id(key_id) or f"#{index}"
    except AuthenticationError:
        log.warning("JWKS at %s: keys[%d] has an invalid kid; skipped", url, index)
        return None
    if entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
        log.info("JWKS at %s: key %s is not an asymmetric signing key; skipped", url, key_id)
        return None
    try:
        key = jwt.PyJWK(dict(entry)).key
    except jwt.PyJWTError as exc:
        # The exception text quotes the JWK, so only its type is logged.
        log.warning("JWKS at %s: key %s cannot be read (%s); skipped", url, key_id,
                    type(exc).__name__)
        return None
    algorithms = algorithms_for(key)
    declared = entry.get("alg")
    if declared is not None:
        algorithms = tuple(a for a in algorithms if a == declared)
    if not algorithms:
        log.warning("JWKS at %s: key %s has an unsupported type or algorithm; skipped", url,
                    key_id)
        return None
    return key_id, VerificationKey(key, algorithms)
