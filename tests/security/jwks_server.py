"""A JWKS endpoint on loopback that rotates keys and fails on demand.

``JwksServer`` serves ``GET /jwks`` from ``http.server`` in a thread on
127.0.0.1 and a free port, so the gateway's JWKS client goes through real
TCP and HTTP. Its ``mode`` selects the response: the key set, a delay longer
than the client's timeout, HTTP 500, a body that is not JSON, or JSON nested
deeper than a recursive parser can go. ``fetches`` counts every request it
received, so a test can bound the gateway's fetches.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

Mode = Literal["ok", "slow", "error", "malformed", "nested"]

ISSUER = "https://idp.test/realms/acme"
AUDIENCE = "fonte"


@dataclass
class SigningKey:
    """A private key the fake identity provider signs with, and its key id."""

    kid: str
    private_key: rsa.RSAPrivateKey

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(
            self.private_key.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def new_key(kid: str) -> SigningKey:
    return SigningKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))


class JwksServer:
    """The fake identity provider's key endpoint; see the module docstring."""

    def __init__(self, key: SigningKey) -> None:
        self.keys = [key]
        # Published after the signing keys as they are, such as keys of other types.
        self.extra_jwks: list[dict[str, Any]] = []
        self.mode: Mode = "ok"
        self.slow_seconds = 2.0
        self.fetches = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/jwks"

    @property
    def current(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self, kid: str) -> SigningKey:
        """Publish a new key named ``kid`` and withdraw every older one."""
        key = new_key(kid)
        self.keys = [key]
        return key

    def sign(self, claims: dict[str, Any] | None = None, *, key: SigningKey | None = None,
             headers: dict[str, Any] | None = None, **overrides: Any) -> str:
        """Return an RS256 token with valid default claims, ``overrides`` replacing them."""
        signer = key or self.current
        return jwt.encode(token_claims(claims, **overrides), signer.private_key,
                          algorithm="RS256", headers={"kid": signer.kid, **(headers or {})})

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _body(self) -> tuple[int, bytes]:
        with self._lock:
            self.fetches += 1
        if self.mode == "slow":
            time.sleep(self.slow_seconds)
        if self.mode == "error":
            return 500, b'{"error": "internal"}'
        if self.mode == "malformed":
            return 200, b'{"keys": [ {"kty": "RSA",'
        if self.mode == "nested":
            return 200, b"[" * 100_000 + b"]" * 100_000
        published = [k.public_jwk() for k in self.keys] + self.extra_jwks
        return 200, json.dumps({"keys": published}).encode()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = server._body()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # The client may have given up waiting, as the slow mode intends.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler


@contextmanager
def running_jwks_server(kid: str = "key-1") -> Iterator[JwksServer]:
    server = JwksServer(new_key(kid))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def token_claims(claims: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Return valid claims of the fake provider: iss, aud, sub, exp, nbf, roles and purpose.

    A claim given as None in ``claims`` or ``overrides`` is left out.
    """
    now = int(time.time())
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-idp", "iat": now,
                            "nbf": now, "exp": now + 600, "roles": ["sales"],
                            "purpose": "sales"}
    merged = {**base, **(claims or {}), **overrides}
    return {name: value for name, value in merged.items() if value is not None}


def _base64url(part: bytes) -> bytes:
    return base64.urlsafe_b64encode(part).rstrip(b"=")


def hmac_token(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """Return an HS256 token signed with ``secret``, which PyJWT refuses to do for a PEM."""
    header = _base64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _base64url(json.dumps(claims).encode())
    signature = _base64url(hmac.new(secret, header + b"." + payload, hashlib.sha256).digest())
    return (header + b"." + payload + b"." + signature).decode()


def raw_token(header: dict[str, Any], claims: dict[str, Any],
              private_key: rsa.RSAPrivateKey) -> str:
    """Return an RS256 token with ``header`` as given, which PyJWT would validate first."""
    signing_input = (_base64url(json.dumps(header).encode()) + b"."
                     + _base64url(json.dumps(claims).encode()))
    signature = private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return (signing_input + b"." + _base64url(signature)).decode()


def unsigned_token(claims: dict[str, Any], kid: str) -> str:
    """Return a token with ``alg: none`` and an empty signature."""
    return jwt.encode(claims, "", algorithm="none", headers={"kid": kid})
