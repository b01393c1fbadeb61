"""Identity attacks: forged, confused or expired tokens, and a JWKS endpoint that misbehaves.

The gateway reads its token keys from ``JwksServer``, a real HTTP endpoint
on loopback. Each rejected request is checked for its status and error
code, for the absence of upstream calls and audit records, and for log
lines free of the token. Cache expiry is tested on ``JwksKeys`` with a
fake clock, so no test waits for a TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from conftest import Harness, read_audit_records, start_harness
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwks_server import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    Mode,
    hmac_token,
    new_key,
    raw_token,
    running_jwks_server,
    token_claims,
    unsigned_token,
)

from gateway.config import load_settings
from gateway.demo.data import DemoData
from gateway.errors import (
    AuthenticationError,
    ConfigError,
    IdentityUnavailable,
    NoRoleError,
    PurposeError,
)
from gateway.identity import TokenSettings, TokenVerifier
from gateway.role_claims import RoleMapping
from gateway.token_keys import JwksKeys, JwksSettings, check_key_id, load_public_key

CUSTOMER_QUERY = "{ customers(first: 1) { edges { node { id email } } } }"
AZURE_SALES_GROUP = "3f2a8c1e-5b7d-4e9a-8c6f-1d2e3f4a5b6c"
AZURE_OTHER_GROUP = "9b8a7c6d-1e2f-4a3b-9c8d-7e6f5a4b3c2d"


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with running_jwks_server("key-1") as server:
        yield server


def jwks_changes(server: JwksServer, *, min_refetch: float = 0.0,
                 roles: RoleMapping | None = None) -> dict[str, Any]:
    return {"development_tokens": False, "token_issuer": ISSUER, "token_audiences": (AUDIENCE,),
            "jwks": JwksSettings(url=server.url, timeout=0.5, cache_seconds=300.0,
                                 min_refetch_seconds=min_refetch),
            "role_mapping": roles or RoleMapping()}


@pytest.fixture
async def idp(jwks: JwksServer, demo_data: DemoData, tmp_path: Path) -> AsyncIterator[Harness]:
    async with start_harness(demo_data, tmp_path / "data",
                             overrides=jwks_changes(jwks)) as harness:
        yield harness


async def send(harness: Harness, token: str) -> tuple[int, str, dict[str, Any]]:
    """Post the customer query with ``token``; return the status, first error code and body."""
    response = await harness.query(CUSTOMER_QUERY, token=token)
    body = response.json()
    errors = body.get("errors") or [{}]
    return response.status_code, errors[0].get("extensions", {}).get("code", ""), body


async def assert_nothing_read(harness: Harness) -> None:
    assert harness.crm_requests() == []
    assert harness.erp_requests() == []
    assert await read_audit_records(harness.data_dir) == []


# --- tokens from the JWKS endpoint ------------------------------------------------


async def test_jwks_token_accepted(idp: Harness, jwks: JwksServer) -> None:
    status, _, body = await send(idp, jwks.sign())

    assert status == 200
    assert len(body["data"]["customers"]["edges"]) == 1
    assert jwks.fetches == 1
    records = await read_audit_records(idp.data_dir)
    assert records[0]["actor"] == "u-idp"


async def test_keys_cached_between_requests(idp: Harness, jwks: JwksServer) -> None:
    for _ in range(3):
        assert (await send(idp, jwks.sign()))[0] == 200

    assert jwks.fetches == 1


async def test_rotated_key_one_refetch(idp: Harness, jwks: JwksServer) -> None:
    assert (await send(idp, jwks.sign()))[0] == 200
    jwks.rotate("key-2")

    status, _, _ = await send(idp, jwks.sign())

    assert status == 200
    assert jwks.fetches == 2


async def test_old_key_refused_once_refetched(idp: Harness, jwks: JwksServer) -> None:
    old = jwks.current
    assert (await send(idp, jwks.sign()))[0] == 200
    jwks.rotate("key-2")
    assert (await send(idp, jwks.sign()))[0] == 200  # refetches, so key-1 leaves the cache

    status, code, body = await send(idp, jwks.sign(key=old))

    assert (status, code) == (401, "UNAUTHENTICATED")
    assert "does not publish" in body["errors"][0]["message"]


@pytest.mark.parametrize("mode", ["slow", "error", "malformed", "nested"])
async def test_jwks_failure_503(idp: Harness, jwks: JwksServer, mode: Mode,
                                caplog: pytest.LogCaptureFixture) -> None:
    jwks.mode = mode
    token = jwks.sign()

    with caplog.at_level(logging.INFO, logger="gateway"):
        response = await idp.query(CUSTOMER_QUERY, token=token)

    assert response.status_code == 503
    assert response.json()["errors"][0]["extensions"]["code"] == "AUTH_UNAVAILABLE"
    assert response.headers["retry-after"] == "5"
    assert jwks.fetches == 1
    await assert_nothing_read(idp)
    assert token not in caplog.text
    assert f"JWKS fetch from {jwks.url}" in caplog.text or f"JWKS at {jwks.url}" in caplog.text


async def test_jwks_down_503(jwks: JwksServer, demo_data: DemoData, tmp_path: Path) -> None:
    token = jwks.sign()
    jwks.stop()  # connection refused from now on

    async with start_harness(demo_data, tmp_path / "data",
                             overrides=jwks_changes(jwks)) as harness:
        status, code, _ = await send(harness, token)

        assert (status, code) == (503, "AUTH_UNAVAILABLE")
        await assert_nothing_read(harness)


async def test_jwks_recovers_after_outage(idp: Harness, jwks: JwksServer) -> None:
    jwks.mode = "error"
    assert (await send(idp, jwks.sign()))[:2] == (503, "AUTH_UNAVAILABLE")
    jwks.mode = "ok"

    status, _, _ = await send(idp, jwks.sign())

    assert status == 200
    assert jwks.fetches == 2


async def test_unknown_kid_flood_bounded(jwks: JwksServer, demo_data: DemoData,
                                         tmp_path: Path) -> None:
    intruder = new_key("intruder")
    async with start_harness(demo_data, tmp_path / "data",
                             overrides=jwks_changes(jwks, min_refetch=60.0)) as harness:
        assert (await send(harness, jwks.sign()))[0] == 200

        for index in range(30):
            intruder.kid = f"made-up-{index}"
            status, code, _ = await send(harness, jwks.sign(key=intruder))
            assert (status, code) == (401, "UNAUTHENTICATED")

        assert jwks.fetches == 1


async def test_concurrent_cold_start_one_fetch(jwks: JwksServer, demo_data: DemoData,
                                               tmp_path: Path) -> None:
    intruder = new_key("made-up")
    tokens = [jwks.sign() for _ in range(10)] + [jwks.sign(key=intruder) for _ in range(10)]
    async with start_harness(demo_data, tmp_path / "data",
                             overrides=jwks_changes(jwks, min_refetch=60.0)) as harness:
        results = await asyncio.gather(*(send(harness, token) for token in tokens))

    assert [status for status, _, _ in results] == [200] * 10 + [401] * 10
    assert jwks.fetches == 1


# --- forged and invalid tokens ----------------------------------------------------------


def forged_tokens(jwks: JwksServer) -> dict[str, str]:
    """Return tokens that must each get 401, by the kind of forgery."""
    key = jwks.current
    now = token_claims()["iat"]
    return {
        "alg_none": unsigned_token(token_claims(), key.kid),
        "hs256_with_public_key": hmac_token(token_claims(), key.public_pem(), key.kid),
        "alg_not_declared_for_key": jwt.encode(token_claims(), key.private_key,
                                               algorithm="RS512", headers={"kid": key.kid}),
        "other_key_same_kid": jwks.sign(key=new_key(key.kid)),
        "expired": jwks.sign(exp=now - 100),
        "not_yet_valid": jwks.sign(nbf=now + 100),
        "wrong_issuer": jwks.sign(iss="https://evil.test"),
        "wrong_audience": jwks.sign(aud="another-service"),
        "no_issuer": jwt.encode({k: v for k, v in token_claims().items() if k != "iss"},
                                key.private_key, algorithm="RS256", headers={"kid": key.kid}),
        "no_audience": jwt.encode({k: v for k, v in token_claims().items() if k != "aud"},
                                  key.private_key, algorithm="RS256", headers={"kid": key.kid}),
        "no_expiry": jwt.encode({k: v for k, v in token_claims().items() if k != "exp"},
                                key.private_key, algorithm="RS256", headers={"kid": key.kid}),
        "eddsa_header_rsa_key": jwt.encode(token_claims(), Ed25519PrivateKey.generate(),
                                           algorithm="EdDSA", headers={"kid": key.kid}),
        # The gateway never follows a key URL that the token itself names.
        "jku_header": jwks.sign(key=new_key(key.kid),
                                headers={"jku": "http://127.0.0.1:9/jwks"}),
        "alg_list": raw_token({"alg": ["RS256"], "kid": key.kid}, token_claims(),
                              key.private_key),
        "alg_object": raw_token({"alg": {"name": "RS256"}, "kid": key.kid}, token_claims(),
                                key.private_key),
        "crit_header": raw_token({"alg": "RS256", "kid": key.kid, "crit": ["exp"]},
                                 token_claims(), key.private_key),
    }


@pytest.mark.parametrize("kind", ["alg_none", "hs256_with_public_key", "alg_not_declared_for_key",
                                  "other_key_same_kid", "expired", "not_yet_valid",
                                  "wrong_issuer", "wrong_audience", "no_issuer", "no_audience",
                                  "no_expiry", "eddsa_header_rsa_key", "jku_header", "alg_list",
                                  "alg_object", "crit_header"])
async def test_forged_token_401(idp: Harness, jwks: JwksServer, kind: str,
                                caplog: pytest.LogCaptureFixture) -> None:
    token = forged_tokens(jwks)[kind]

    with caplog.at_level(logging.DEBUG, logger="gateway"):
        status, code, body = await send(idp, token)

    assert (status, code) == (401, "UNAUTHENTICATED")
    assert "data" not in body
    await assert_nothing_read(idp)
    assert token not in caplog.text


@pytest.mark.parametrize("kind", ["alg_none", "hs256_with_public_key"])
async def test_unsigned_tokens_fetch_no_keys(idp: Harness, jwks: JwksServer, kind: str) -> None:
    status, _, body = await send(idp, forged_tokens(jwks)[kind])

    assert status == 401
    assert "'alg' header is not an accepted signature algorithm" in body["errors"][0]["message"]
    assert jwks.fetches == 0


async def test_undeclared_algorithm_message(idp: Harness, jwks: JwksServer) -> None:
    _, _, body = await send(idp, forged_tokens(jwks)["alg_not_declared_for_key"])

    assert body["errors"][0]["message"] == (
        "the bearer token is signed with RS512, but its key accepts only RS256")


@pytest.mark.parametrize("kid", ["../../etc/passwd", "' OR '1'='1", "k" * 129, "key\nforged",
                                 "key 1", ".."])
async def test_injected_kid_rejected(idp: Harness, jwks: JwksServer, kid: Any,
                                     caplog: pytest.LogCaptureFixture) -> None:
    token = jwt.encode(token_claims(), jwks.current.private_key, algorithm="RS256",
                       headers={"kid": kid})

    with caplog.at_level(logging.DEBUG, logger="gateway"):
        status, code, body = await send(idp, token)

    assert (status, code) == (401, "UNAUTHENTICATED")
    assert "'kid' header is not a valid key id" in body["errors"][0]["message"]
    assert jwks.fetches == 0
    await assert_nothing_read(idp)
    if isinstance(kid, str) and len(kid) > 3:
        assert kid not in caplog.text


async def test_numeric_kid_rejected(idp: Harness, jwks: JwksServer) -> None:
    token = raw_token({"alg": "RS256", "kid": 7}, token_claims(), jwks.current.private_key)

    status, code, body = await send(idp, token)

    assert (status, code) == (401, "UNAUTHENTICATED")
    assert body["errors"][0]["message"] == (
        "the bearer token is invalid: Key ID header parameter must be a string")
    assert jwks.fetches == 0


@pytest.mark.parametrize("claim", ["exp", "nbf"])
async def test_leeway_accepts_small_skew(idp: Harness, jwks: JwksServer, claim: str) -> None:
    now = token_claims()["iat"]
    skewed = now - 10 if claim == "exp" else now + 10  # within the default 30 s

    status, _, _ = await send(idp, jwks.sign(**{claim: skewed}))

    assert status == 200


def test_kid_check_accepts_provider_formats() -> None:
    keycloak = "Zq3bC-9h7Jx_2V4oK1mN8sT6uR5wY0aE3dF1gH2iL"
    cognito = "abcd1234/efgh5678+ijkl=="
    azure = "nOo3ZDrODXEK1jKWhXslHR_KXEg"

    assert check_key_id(keycloak) == keycloak
    assert check_key_id(cognito) == cognito
    assert check_key_id(azure) == azure
    assert check_key_id(None) is None


# --- a static key file ---------------------------------------------------------------------


async def test_static_rsa_key_file(jwks: JwksServer, demo_data: DemoData,
                                   tmp_path: Path) -> None:
    key_file = tmp_path / "idp-public.pem"
    key_file.write_bytes(jwks.current.public_pem())
    changes = {"development_tokens": False, "token_public_key_file": key_file,
               "token_issuer": ISSUER, "token_audiences": (AUDIENCE,)}
    confused = hmac_token(token_claims(), jwks.current.public_pem(), jwks.current.kid)
    async with start_harness(demo_data, tmp_path / "data", overrides=changes) as harness:
        accepted = await send(harness, jwks.sign())
        rejected = await send(harness, confused)

    assert accepted[0] == 200
    assert rejected[:2] == (401, "UNAUTHENTICATED")
    assert jwks.fetches == 0


def test_weak_rsa_key_file_rejected(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "weak.pem"
    path.write_bytes(weak.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    with pytest.raises(ConfigError, match="RSA key of 2048 bits or more"):
        load_public_key(path)


# --- JwksKeys cache, with a fake clock ----------------------------------------------------


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def jwks_keys(server: JwksServer, clock: FakeClock, *, cache: float = 300.0,
              min_refetch: float = 30.0) -> JwksKeys:
    return JwksKeys(JwksSettings(url=server.url, timeout=0.5, cache_seconds=cache,
                                 min_refetch_seconds=min_refetch), clock=clock)


async def test_cache_expiry_refetches(jwks: JwksServer) -> None:
    clock = FakeClock()
    keys = jwks_keys(jwks, clock)
    await keys.resolve("key-1")
    clock.now += 299
    await keys.resolve("key-1")
    assert jwks.fetches == 1

    clock.now += 2
    await keys.resolve("key-1")

    assert jwks.fetches == 2
    await keys.aclose()


async def test_old_kid_rejected_after_expiry(jwks: JwksServer) -> None:
    clock = FakeClock()
    keys = jwks_keys(jwks, clock)
    await keys.resolve("key-1")
    jwks.rotate("key-2")
    # Until the cache expires the withdrawn key still verifies; this is the
    # window jwks_cache_seconds sets.
    assert (await keys.resolve("key-1")).algorithms == ("RS256",)

    clock.now += 301
    with pytest.raises(AuthenticationError, match="does not publish"):
        await keys.resolve("key-1")

    assert (await keys.resolve("key-2")).algorithms == ("RS256",)
    assert jwks.fetches == 2
    await keys.aclose()


async def test_unknown_kid_refetch_interval(jwks: JwksServer) -> None:
    clock = FakeClock()
    keys = jwks_keys(jwks, clock, min_refetch=30.0)
    await keys.resolve("key-1")
    jwks.rotate("key-2")

    with pytest.raises(AuthenticationError, match="does not publish"):
        await keys.resolve("key-2")  # 0 s after the last fetch: no refetch yet
    clock.now += 30
    resolved = await keys.resolve("key-2")

    assert resolved.algorithms == ("RS256",)
    assert jwks.fetches == 2
    await keys.aclose()


async def test_failed_fetch_backs_off(jwks: JwksServer) -> None:
    clock = FakeClock()
    keys = jwks_keys(jwks, clock, min_refetch=30.0)
    jwks.mode = "error"

    for _ in range(5):
        with pytest.raises(IdentityUnavailable, match="could not be fetched"):
            await keys.resolve("key-1")
    assert jwks.fetches == 1

    jwks.mode = "ok"
    clock.now += 30
    await keys.resolve("key-1")
    assert jwks.fetches == 2
    await keys.aclose()


async def test_expired_cache_not_used_when_down(jwks: JwksServer) -> None:
    clock = FakeClock()
    keys = jwks_keys(jwks, clock)
    await keys.resolve("key-1")
    jwks.mode = "error"
    clock.now += 301

    with pytest.raises(IdentityUnavailable, match="could not be fetched"):
        await keys.resolve("key-1")
    await keys.aclose()


async def test_unusable_keys_skipped(jwks: JwksServer, caplog: pytest.LogCaptureFixture) -> None:
    jwks.extra_jwks = [{"kty": "oct", "kid": "shared", "k": "c2VjcmV0"},
                       {**jwks.current.public_jwk(), "kid": "enc-1", "use": "enc"},
                       {"kty": "RSA", "kid": "broken", "n": "AQAB"}]
    keys = jwks_keys(jwks, FakeClock())

    with caplog.at_level(logging.INFO, logger="gateway.identity"):
        assert (await keys.resolve("key-1")).algorithms == ("RS256",)
        for kid in ("shared", "enc-1", "broken"):
            with pytest.raises(AuthenticationError, match="does not publish"):
                await keys.resolve(kid)

    assert "key shared is not an asymmetric signing key; skipped" in caplog.text
    assert "key enc-1 is not an asymmetric signing key; skipped" in caplog.text
    assert "key broken cannot be read (InvalidKeyError); skipped" in caplog.text
    assert jwks.fetches == 1
    await keys.aclose()


async def test_invalid_jwks_url_unavailable() -> None:
    keys = JwksKeys(JwksSettings(url="http://idp .test/certs"), clock=FakeClock())

    with pytest.raises(IdentityUnavailable, match="could not be fetched"):
        await keys.resolve("key-1")
    await keys.aclose()


async def test_missing_kid_single_key(jwks: JwksServer) -> None:
    keys = jwks_keys(jwks, FakeClock())

    assert (await keys.resolve(None)).algorithms == ("RS256",)
    await keys.aclose()


# --- verified-token cache -----------------------------------------------------------------


class DecodeCounter:
    """Counts PyJWT's signature checks, each still done by the real ``jwt.decode``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = jwt.decode

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(jwt, "decode", counted)


def cached_verifier(server: JwksServer, clock: FakeClock, *, size: int = 10,
                    leeway: int = 30) -> TokenVerifier:
    return TokenVerifier(TokenSettings(keys=jwks_keys(server, clock), issuer=ISSUER,
                                       audiences=(AUDIENCE,), leeway_seconds=leeway,
                                       cache_size=size), clock=clock)


async def test_repeated_token_checked_once(jwks: JwksServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    decode = DecodeCounter(monkeypatch)
    verifier = cached_verifier(jwks, FakeClock(time.time()))
    token = jwks.sign(purposes=["sales", "marketing"], purpose=None, region="nord")

    first = await verifier.verify(f"Bearer {token}", "sales")
    second = await verifier.verify(f"Bearer {token}", "marketing")

    assert decode.calls == 1
    assert (first.user, first.roles, first.purpose) == ("u-idp", frozenset({"sales"}), "sales")
    assert (second.user, second.purpose, second.attributes) == ("u-idp", "marketing",
                                                                 {"region": "nord"})
    with pytest.raises(PurposeError, match="'billing' is not one the bearer token allows"):
        await verifier.verify(f"Bearer {token}", "billing")
    second.attributes["region"] = "sud"
    assert (await verifier.verify(f"Bearer {token}", "sales")).attributes == {"region": "nord"}
    await verifier.aclose()


async def test_cached_token_rechecked_after_expiry(jwks: JwksServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    decode = DecodeCounter(monkeypatch)
    now = time.time()
    clock = FakeClock(now)
    verifier = cached_verifier(jwks, clock, leeway=30)
    token = jwks.sign(exp=int(now) + 60)
    await verifier.verify(f"Bearer {token}")
    clock.now = int(now) + 60 + 29
    await verifier.verify(f"Bearer {token}")
    assert decode.calls == 1

    clock.now = int(now) + 60 + 30
    await verifier.verify(f"Bearer {token}")

    # The entry is dropped at exp plus the leeway, so PyJWT checked the token again.
    assert decode.calls == 2
    await verifier.aclose()


async def test_cached_fractional_exp_truncated(jwks: JwksServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    decode = DecodeCounter(monkeypatch)
    now = int(time.time())
    clock = FakeClock(now)
    verifier = cached_verifier(jwks, clock, leeway=30)
    token = jwks.sign(exp=now + 60.9)
    await verifier.verify(f"Bearer {token}")
    clock.now = now + 60 + 30

    await verifier.verify(f"Bearer {token}")

    # PyJWT takes int(exp), so the token expired at now + 60 plus the leeway.
    assert decode.calls == 2
    await verifier.aclose()


async def test_cached_token_refused_once_key_withdrawn(jwks: JwksServer) -> None:
    clock = FakeClock(time.time())
    verifier = cached_verifier(jwks, clock)
    token = jwks.sign()
    await verifier.verify(f"Bearer {token}")
    jwks.rotate("key-2")
    clock.now += 301  # past jwks_cache_seconds, so the key set is fetched again

    with pytest.raises(AuthenticationError, match="does not publish"):
        await verifier.verify(f"Bearer {token}")

    assert jwks.fetches == 2
    assert (await verifier.verify(f"Bearer {jwks.sign()}")).user == "u-idp"
    await verifier.aclose()


async def test_cached_token_kid_reassigned(jwks: JwksServer) -> None:
    clock = FakeClock(time.time())
    verifier = cached_verifier(jwks, clock)
    token = jwks.sign()
    await verifier.verify(f"Bearer {token}")
    jwks.keys = [new_key("key-1")]  # the same kid, now for a new key
    clock.now += 301  # past jwks_cache_seconds, so the key set is fetched again

    with pytest.raises(AuthenticationError,
                       match="the bearer token is invalid: Signature verification failed"):
        await verifier.verify(f"Bearer {token}")
    await verifier.aclose()


async def test_token_cache_bounded(jwks: JwksServer, monkeypatch: pytest.MonkeyPatch) -> None:
    decode = DecodeCounter(monkeypatch)
    verifier = cached_verifier(jwks, FakeClock(time.time()), size=2)
    tokens = [jwks.sign(sub=f"u-{index}") for index in range(3)]
    for token in tokens:
        await verifier.verify(f"Bearer {token}")
    assert decode.calls == 3

    await verifier.verify(f"Bearer {tokens[2]}")
    assert decode.calls == 3
    await verifier.verify(f"Bearer {tokens[0]}")  # the oldest entry was dropped

    assert decode.calls == 4
    await verifier.aclose()


async def test_token_cache_off(jwks: JwksServer, monkeypatch: pytest.MonkeyPatch) -> None:
    decode = DecodeCounter(monkeypatch)
    verifier = cached_verifier(jwks, FakeClock(time.time()), size=0)
    token = jwks.sign()

    for _ in range(3):
        await verifier.verify(f"Bearer {token}")

    assert decode.calls == 3
    await verifier.aclose()


async def test_invalid_token_not_cached(jwks: JwksServer,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    decode = DecodeCounter(monkeypatch)
    verifier = cached_verifier(jwks, FakeClock(time.time()))
    token = jwks.sign(aud="someone-else")

    for _ in range(2):
        with pytest.raises(AuthenticationError, match="Audience doesn't match"):
            await verifier.verify(f"Bearer {token}")

    assert decode.calls == 2
    await verifier.aclose()


# --- claims to roles ----------------------------------------------------------------------


KEYCLOAK = RoleMapping(claims=("realm_access.roles", "resource_access.fonte.roles"),
                       names={"fonte-sales": ("sales",), "fonte-finance": ("finance",)})
AZURE = RoleMapping(claims=("roles", "groups"),
                    names={"Finance.Read": ("finance",), AZURE_SALES_GROUP: ("sales",)})
SCOPES = RoleMapping(claims=("scope",), names={"fonte:finance": ("finance",)})


@pytest.mark.parametrize(("mapping", "claims", "roles"), [
    (KEYCLOAK, {"realm_access": {"roles": ["offline_access", "fonte-sales"]}}, {"sales"}),
    (KEYCLOAK, {"resource_access": {"fonte": {"roles": ["fonte-finance"]}}}, {"finance"}),
    (KEYCLOAK, {"realm_access": {"roles": ["fonte-sales"]},
                "resource_access": {"fonte": {"roles": ["fonte-finance"]}}},
     {"sales", "finance"}),
    (AZURE, {"roles": ["Finance.Read"], "groups": [AZURE_OTHER_GROUP]}, {"finance"}),
    (AZURE, {"groups": [AZURE_SALES_GROUP, AZURE_OTHER_GROUP]}, {"sales"}),
    (SCOPES, {"scope": "openid profile fonte:finance"}, {"finance"}),
    (RoleMapping(), {"roles": ["sales", "dpo"]}, {"sales", "dpo"}),
])
def test_role_mapping_table(mapping: RoleMapping, claims: dict[str, Any],
                            roles: set[str]) -> None:
    assert mapping.roles(claims) == frozenset(roles)


@pytest.mark.parametrize(("mapping", "claims"), [
    (KEYCLOAK, {"realm_access": {"roles": ["offline_access"]}}),
    (KEYCLOAK, {"realm_access": "fonte-finance-admins"}),
    (AZURE, {"groups": [AZURE_OTHER_GROUP]}),
    (SCOPES, {"scope": "openid profile"}),
    (RoleMapping(), {}),
])
def test_role_mapping_no_role(mapping: RoleMapping, claims: dict[str, Any]) -> None:
    with pytest.raises(NoRoleError, match="carries no role this gateway accepts in claims"):
        mapping.roles(claims)


def test_role_claim_wrong_type() -> None:
    with pytest.raises(AuthenticationError, match=r"'realm_access\.roles' claim must be a list"):
        KEYCLOAK.roles({"realm_access": {"roles": 5}})


@pytest.mark.parametrize(("mapping", "claims", "audit_roles"), [
    (KEYCLOAK, {"realm_access": {"roles": ["offline_access", "fonte-sales"]}}, ["sales"]),
    (AZURE, {"roles": ["Finance.Read"], "groups": [AZURE_OTHER_GROUP], "purpose": "billing"},
     ["finance"]),
    (SCOPES, {"scope": "openid fonte:finance", "purpose": "billing"}, ["finance"]),
])
async def test_provider_token_roles(jwks: JwksServer, demo_data: DemoData, tmp_path: Path,
                                    mapping: RoleMapping, claims: dict[str, Any],
                                    audit_roles: list[str],
                                    caplog: pytest.LogCaptureFixture) -> None:
    token = jwt.encode(token_claims({"roles": None, **claims}), jwks.current.private_key,
                       algorithm="RS256", headers={"kid": jwks.current.kid})
    async with start_harness(demo_data, tmp_path / "data",
                             overrides=jwks_changes(jwks, roles=mapping)) as harness:
        with caplog.at_level(logging.DEBUG, logger="gateway"):
            status, _, _ = await send(harness, token)

        assert status == 200
        records = await read_audit_records(harness.data_dir)
        assert records[0]["roles"] == audit_roles
    assert AZURE_OTHER_GROUP not in caplog.text
    assert token not in caplog.text


async def test_unmapped_token_403(jwks: JwksServer, demo_data: DemoData, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    token = jwks.sign(roles=None, groups=[AZURE_OTHER_GROUP])
    async with start_harness(demo_data, tmp_path / "data",
                             overrides=jwks_changes(jwks, roles=AZURE)) as harness:
        with caplog.at_level(logging.DEBUG, logger="gateway"):
            status, code, body = await send(harness, token)

        assert (status, code) == (403, "NO_ROLE")
        assert body["errors"][0]["message"] == (
            "the bearer token carries no role this gateway accepts in claims roles, groups; "
            "ask the identity provider's administrator to assign a Fonte role")
        await assert_nothing_read(harness)
    assert "1 name(s) in claims roles, groups with no role mapping" in caplog.text
    assert AZURE_OTHER_GROUP not in caplog.text


# --- settings ---------------------------------------------------------------------------


SETTINGS = """
[gateway]
data_dir = "data"

[auth]
{auth}

[systems.crm]
dialect = "salesforce"
login_url = "https://crm.example.com"
client_id_env = "FONTE_TEST_ID"
client_secret_env = "FONTE_TEST_SECRET"

[systems.erp]
dialect = "odoo-jsonrpc"
base_url = "https://erp.example.com"
database = "production"
login = "fonte"
api_key_env = "FONTE_TEST_KEY"
"""


def write_settings(tmp_path: Path, auth: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("FONTE_TEST_ID", "FONTE_TEST_SECRET", "FONTE_TEST_KEY"):
        monkeypatch.setenv(name, "x")
    path = tmp_path / "fonte.toml"
    path.write_text(SETTINGS.format(auth=auth), encoding="utf-8")
    return path


def test_auth_settings_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = """jwks_url = "https://idp.example.com/certs"
jwks_timeout = 2
jwks_cache_seconds = 600
jwks_min_refetch_seconds = 60
issuer = "https://idp.example.com"
audience = ["fonte", "api://fonte"]
leeway_seconds = 5
token_cache_size = 0
role_claims = ["realm_access.roles", "scope"]

[auth.role_map]
"fonte-sales" = "sales"
"fonte:all" = ["sales", "finance"]
"""
    settings = load_settings(write_settings(tmp_path, auth, monkeypatch))

    assert settings.jwks == JwksSettings(url="https://idp.example.com/certs", timeout=2.0,
                                         cache_seconds=600.0, min_refetch_seconds=60.0)
    assert settings.token_audiences == ("fonte", "api://fonte")
    assert settings.token_leeway_seconds == 5
    assert settings.token_cache_size == 0
    assert settings.role_mapping == RoleMapping(
        claims=("realm_access.roles", "scope"),
        names={"fonte-sales": ("sales",), "fonte:all": ("sales", "finance")})


@pytest.mark.parametrize(("auth", "message"), [
    ('jwks_url = "ftp://idp/certs"', r"jwks_url = 'ftp://idp/certs' must be the http\(s\) URL"),
    ('jwks_url = "https://idp/certs"\ndevelopment_tokens = true',
     r"needs exactly one token key source"),
    ('jwks_url = "https://idp/certs"\njwks_cache_seconds = 10',
     r"jwks_cache_seconds = 10 is shorter than jwks_min_refetch_seconds = 30"),
    ('development_tokens = true\nleeway_seconds = 3600',
     r"leeway_seconds = 3600 must be a whole number from 0 to 300"),
    ('development_tokens = true\ntoken_cache_size = -1',
     r"token_cache_size = -1 must be a whole number from 0 to 1000000"),
    ('development_tokens = true\naudience = []', r"audience = \[\] must be a string or a list"),
    ('development_tokens = true\nrole_claims = "roles"', r"role_claims = 'roles' must be a"),
    ('development_tokens = true\nrole_claims = ["realm_access..roles"]', r"must be a non-empty"),
    ('development_tokens = true\n[auth.role_map]\n"x" = []', r"\[auth.role_map\] 'x' = \[\]"),
    ('development_tokens = true\njwks_ttl = 5', r"\[auth\] jwks_ttl is not a setting"),
])
def test_auth_settings_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth: str,
                                message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write_settings(tmp_path, auth, monkeypatch))
