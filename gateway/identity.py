"""Bearer tokens: verify incoming JWTs and issue development ones.

A token names the user (``sub``), the purpose of processing (``purpose``,
or a list ``purposes`` from which the request's ``Fonte-Purpose`` header
picks one) and optionally the client application (``client``). Its roles
come from the claims a ``RoleMapping`` names (``roles`` by default). Other
string claims (``region``, ``team``) become attributes that row rules
compare with record fields.

A token is accepted only when it is signed with an asymmetric algorithm
allowed for its key (see ``gateway.token_keys``), and carries ``exp``,
``sub`` and the configured ``iss`` and ``aud``. ``exp`` and ``nbf`` are
checked with a configurable leeway for clock differences.

A verified token is kept in a bounded in-memory cache until it expires, so
a caller that sends the same token again skips the signature check. A hit
still resolves the token's key, so a key that the identity provider
withdraws, or a JWKS refetch, is seen as without the cache.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.errors import AuthenticationError, ConfigError, PurposeError, quoted
from gateway.principal import Principal
from gateway.role_claims import RoleMapping
from gateway.token_keys import KeyResolver, VerificationKey, check_key_id

DEV_ISSUER = "fonte-dev"
DEV_AUDIENCE = "fonte"
ALGORITHM = "EdDSA"
DEFAULT_LEEWAY_SECONDS = 30
DEFAULT_TOKEN_CACHE_SIZE = 10_000

# Every algorithm any supported key type allows; a header naming another one
# (none, HS256 ...) is rejected before a key is looked up or fetched.
_ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                    "ES256", "ES384", "ES512", "EdDSA"})


@dataclass(frozen=True)
class TokenSettings:
    """The keys, issuer, audience and role claims a valid token must match."""

    keys: KeyResolver
    issuer: str = DEV_ISSUER
    # A token is accepted when its aud contains any one of these.
    audiences: tuple[str, ...] = (DEV_AUDIENCE,)
    leeway_seconds: int = DEFAULT_LEEWAY_SECONDS
    roles: RoleMapping = field(default_factory=RoleMapping)
    # Verified tokens kept in memory; 0 checks every token's signature.
    cache_size: int = DEFAULT_TOKEN_CACHE_SIZE


@dataclass(frozen=True)
class _Verified:
    """A verified token's principal and purposes, with the key and expiry a hit rechecks."""

    key_id: str | None
    key: VerificationKey
    principal: Principal
    purposes: list[str]
    expires_at: float  # int(exp) plus the leeway, in seconds since the epoch


class TokenVerifier:
    """Turns an ``Authorization`` header into a ``Principal`` or raises.

    Raises ``AuthenticationError`` (401) for a missing or invalid token,
    ``IdentityUnavailable`` (503) when its key cannot be fetched,
    ``NoRoleError`` (403) when it maps to no role and ``PurposeError`` (403)
    when the purpose header names a purpose the token does not allow.
    """

    def __init__(self, settings: TokenSettings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        # Insertion order is age order: the oldest entry is evicted first.
        self._verified: dict[str, _Verified] = {}

    async def verify(self, authorization: str | None,
                     purpose: str | None = None) -> Principal:
        """Return the caller; ``purpose`` is the purpose header, one the token must allow."""
        token = _bearer_token(authorization)
        verified = await self._cached(token)
        if verified is None:
            verified = await self._verify(token)
        principal, allowed = verified.principal, verified.purposes
        # Each request gets its own attributes, so none can change a cached principal.
        if purpose is None:
            chosen = allowed[0] if len(allowed) == 1 else None
            return replace(principal, purpose=chosen, attributes=dict(principal.attributes))
        if purpose not in allowed:
            raise PurposeError(f"purpose {quoted(purpose)} is not one the bearer token allows "
                               f"({', '.join(allowed) or 'none'}); request a token for it")
        return replace(principal, purpose=purpose, attributes=dict(principal.attributes))

    async def aclose(self) -> None:
        await self._settings.keys.aclose()

    async def _cached(self, token: str) -> _Verified | None:
        """Return the cached verification of ``token`` if its key and expiry still hold."""
        verified = self._verified.get(token)
        if verified is None:
            return None
        if self._clock() < verified.expires_at:
            try:
                key = await self._settings.keys.resolve(verified.key_id)
            except AuthenticationError:
                key = None
            if key == verified.key:
                return verified
        # Expired, or its key changed or was withdrawn: the full check decides.
        self._verified.pop(token, None)
        return None

    async def _verify(self, token: str) -> _Verified:
        key_id, key, claims = await self._claims(token)
        verified = _Verified(key_id=key_id, key=key,
                             principal=_principal(claims, self._settings.roles),
                             purposes=token_purposes(claims),
                             # PyJWT compares int(exp), so a fractional exp expires as its
                             # integer part does.
                             expires_at=int(claims["exp"]) + self._settings.leeway_seconds)
        size = self._settings.cache_size
        if size > 0:
            if len(self._verified) >= size:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = verified
        return verified

    async def _claims(self, token: str) -> tuple[str | None, VerificationKey, dict[str, Any]]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"the bearer token is invalid: {_reason(exc)}") from exc
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in _ASYMMETRIC_ALGORITHMS:
            raise AuthenticationError("the bearer token's 'alg' header is not an accepted "
                                      "signature algorithm; use one of "
                                      f"{', '.join(sorted(_ASYMMETRIC_ALGORITHMS))}")
        key_id = check_key_id(header.get("kid"))
        key = await self._settings.keys.resolve(key_id)
        if algorithm not in key.algorithms:
            raise AuthenticationError(f"the bearer token is signed with {algorithm}, but its key "
                                      f"accepts only {', '.join(key.algorithms)}")
        settings = self._settings
        try:
            claims = jwt.decode(
                token, key.key, algorithms=list(key.algorithms),
                audience=list(settings.audiences), issuer=settings.issuer,
                leeway=settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("the bearer token has expired; request a new one") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"the bearer token is invalid: {_reason(exc)}") from exc
        return key_id, key, dict(claims)


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationError("missing bearer token; send 'Authorization: Bearer <JWT>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("the Authorization header must be 'Bearer <JWT>'")
    return token.strip()


def _reason(exc: Exception) -> str:
    # PyJWT messages name claims and algorithms, never claim values.
    return str(exc) or type(exc).__name__


_RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "roles",
                              "purpose", "purposes", "client", "user"})


def _principal(claims: dict[str, Any], mapping: RoleMapping) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip() or not subject.isprintable():
        raise AuthenticationError("the token's 'sub' claim must be a non-empty user id of "
                                  "printable characters")
    roles = mapping.roles(claims)
    purpose = claims.get("purpose")
    client = claims.get("client")
    reserved = _RESERVED_CLAIMS | mapping.top_level_claims()
    attributes = {name: value for name, value in claims.items()
                  if name not in reserved and isinstance(value, str)}
    return Principal(user=subject, roles=roles,
                     purpose=purpose if isinstance(purpose, str) else None,
                     client=client if isinstance(client, str) else None,
                     attributes=attributes)


def token_purposes(claims: dict[str, Any]) -> list[str]:
    """Return the purposes a token allows: its 'purposes' list, else its 'purpose'."""
    listed = claims.get("purposes")
    if isinstance(listed, list):
        return [p for p in listed if isinstance(p, str)]
    purpose = claims.get("purpose")
    return [purpose] if isinstance(purpose, str) else []


def issue_token(private_key: Ed25519PrivateKey, *, user: str, roles: list[str],
                purpose: str | None, ttl_seconds: int = 12 * 3600,
                issuer: str = DEV_ISSUER, audience: str = DEV_AUDIENCE,
                extra: dict[str, str] | None = None) -> str:
    """Return a signed JWT for development and tests; ``extra`` adds string claims."""
    now = int(time.time())
    claims: dict[str, Any] = {**(extra or {}), "iss": issuer, "aud": audience, "sub": user,
                              "roles": roles, "iat": now, "nbf": now, "exp": now + ttl_seconds}
    if purpose is not None:
        claims["purpose"] = purpose
    return jwt.encode(claims, private_key, algorithm=ALGORITHM)


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Return the development signing key at ``path``, creating it on first use."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError as exc:
            raise ConfigError(f"{path} is not a PEM private key; delete it to create a new "
                              "development key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} contains a {type(key).__name__}; the gateway signs "
                              "development tokens with Ed25519")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    """Return the PEM of the public half of ``key``."""
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
