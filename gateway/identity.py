"""Bearer tokens: verify incoming JWTs and issue development ones.

A token names the user (``sub``), the roles (``roles``), the purpose of
processing (``purpose``, or a list ``purposes`` from which the request's
``Fonte-Purpose`` header picks one) and optionally the client application
(``client``). Other string claims (``region``, ``team``) become attributes
that row rules compare with record fields. The gateway accepts only the algorithm and key it is
configured with, and requires ``exp``, ``iss`` and ``aud``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gateway.errors import AuthenticationError, ConfigError, PurposeError
from gateway.principal import Principal

DEV_ISSUER = "fonte-dev"
DEV_AUDIENCE = "fonte"
ALGORITHM = "EdDSA"
_LEEWAY_SECONDS = 30


@dataclass(frozen=True)
class TokenSettings:
    """The key, issuer and audience a valid token must have."""

    public_key: Ed25519PublicKey
    issuer: str = DEV_ISSUER
    audience: str = DEV_AUDIENCE


class TokenVerifier:
    """Turns an ``Authorization`` header into a ``Principal`` or raises."""

    def __init__(self, settings: TokenSettings) -> None:
        self._settings = settings

    def verify(self, authorization: str | None, purpose: str | None = None) -> Principal:
        """Return the caller; ``purpose`` is the purpose header, one the token must allow."""
        claims = self._claims(authorization)
        principal = _principal(claims)
        allowed = token_purposes(claims)
        if purpose is None:
            chosen = allowed[0] if len(allowed) == 1 else None
            return replace(principal, purpose=chosen)
        if purpose not in allowed:
            raise PurposeError(f"purpose {purpose!r} is not one the bearer token allows "
                               f"({', '.join(allowed) or 'none'}); request a token for it")
        return replace(principal, purpose=purpose)

    def _claims(self, authorization: str | None) -> dict[str, Any]:
        if not authorization:
            raise AuthenticationError("missing bearer token; send 'Authorization: Bearer <JWT>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("the Authorization header must be 'Bearer <JWT>'")
        try:
            claims = jwt.decode(
                token.strip(), self._settings.public_key, algorithms=[ALGORITHM],
                audience=self._settings.audience, issuer=self._settings.issuer,
                leeway=_LEEWAY_SECONDS, options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("the bearer token has expired; request a new one") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"the bearer token is invalid: {_reason(exc)}") from exc
        return dict(claims)


def _reason(exc: Exception) -> str:
    # PyJWT messages name claims and algorithms, never claim values.
    return str(exc) or type(exc).__name__


_RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "roles",
                              "purpose", "purposes", "client", "user"})


def _principal(claims: dict[str, Any]) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip() or not subject.isprintable():
        raise AuthenticationError("the token's 'sub' claim must be a non-empty user id of "
                                  "printable characters")
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise AuthenticationError("the token's 'roles' claim must be a list of role names")
    purpose = claims.get("purpose")
    client = claims.get("client")
    attributes = {name: value for name, value in claims.items()
                  if name not in _RESERVED_CLAIMS and isinstance(value, str)}
    return Principal(user=subject, roles=frozenset(roles),
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


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Return the Ed25519 public key in the PEM file at ``path``."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the token public key {str(path)!r}: "
                          f"{type(exc).__name__}; give a PEM Ed25519 public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} contains a {type(key).__name__}; tokens are verified with an "
                          "Ed25519 public key")
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    """Return the PEM of the public half of ``key``."""
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
