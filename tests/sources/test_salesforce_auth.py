"""The Salesforce dialect's OAuth2 JWT bearer flow against the demo Salesforce server."""

from __future__ import annotations

import time
from dataclasses import replace
from functools import cache
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette

from gateway.demo.data import DemoData
from gateway.demo.salesforce import JwtBearerSettings, create_salesforce_app
from gateway.errors import ConfigError, UpstreamAuthFailed
from gateway.sources import FetchRequest
from gateway.sources import salesforce as salesforce_module
from gateway.sources.resilience import ResiliencePolicy, ResilientSource
from gateway.sources.salesforce import JWT_BEARER_GRANT, SalesforceSettings, SalesforceSource

LOGIN_URL = "http://crm.test"
CLIENT_ID = "connected-app-key"
USERNAME = "integration.user"
TOKEN_PATH = "/services/oauth2/token"


@cache
def private_key(name: str) -> rsa.RSAPrivateKey:
    """Return one 2048-bit RSA key per name, generated once per test session."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(name: str) -> str:
    return private_key(name).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()


def public_pem(name: str) -> str:
    return private_key(name).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def jwt_settings(**changes: Any) -> SalesforceSettings:
    settings = SalesforceSettings(login_url=LOGIN_URL, client_id=CLIENT_ID, auth="jwt_bearer",
                                  username=USERNAME, private_key_pem=private_pem("app"))
    return replace(settings, **changes)


class Recorder(httpx.AsyncBaseTransport):
    """Pass requests to the app and keep every assertion the dialect sent."""

    def __init__(self, app: Starlette) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.assertions: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == TOKEN_PATH:
            form = dict(httpx.QueryParams(request.content.decode()))
            self.assertions.append(form.get("assertion", ""))
        return await self.inner.handle_async_request(request)


@pytest.fixture
def crm(demo_data: DemoData) -> Starlette:
    return create_salesforce_app(demo_data, client_id=CLIENT_ID, client_secret="unused",
                                 jwt_bearer=JwtBearerSettings(public_key_pem=public_pem("app"),
                                                              username=USERNAME))


# A SOQL read: the first account by id.
ACCOUNT_REQUEST = FetchRequest(entity="Account", attributes=("Id",), order="Id", limit=1)


def first_account_id(demo_data: DemoData) -> str:
    return min(str(a["Id"]) for a in demo_data.crm["Account"])


def paths(app: Starlette) -> list[str]:
    return [entry.path for entry in app.state.control.log]


async def test_good_assertion_accepted(crm: Starlette, demo_data: DemoData) -> None:
    recorder = Recorder(crm)
    source = SalesforceSource("crm", jwt_settings(), httpx.AsyncClient(transport=recorder))

    rows = await source.fetch(ACCOUNT_REQUEST)

    assert rows == [{"Id": first_account_id(demo_data)}]
    assert paths(crm) == [TOKEN_PATH, "/services/data/v62.0/query"]
    assert [entry.status for entry in crm.state.control.log] == [200, 200]
    assert len(recorder.assertions) == 1


async def test_assertion_claims(crm: Starlette, demo_data: DemoData) -> None:
    recorder = Recorder(crm)
    source = SalesforceSource("crm", jwt_settings(), httpx.AsyncClient(transport=recorder))
    await source.fetch(ACCOUNT_REQUEST)

    assertion = recorder.assertions[0]
    header = jwt.get_unverified_header(assertion)
    claims = jwt.decode(assertion, public_pem("app"), algorithms=["RS256"], audience=LOGIN_URL)

    assert header["alg"] == "RS256"
    assert claims["iss"] == CLIENT_ID
    assert claims["sub"] == USERNAME
    assert claims["aud"] == LOGIN_URL
    assert 0 < claims["exp"] - time.time() <= 180


async def test_configured_audience_sent(demo_data: DemoData) -> None:
    app = create_salesforce_app(demo_data, client_id=CLIENT_ID, client_secret="unused",
                                jwt_bearer=JwtBearerSettings(
                                    public_key_pem=public_pem("app"), username=USERNAME,
                                    audience="https://login.salesforce.com"))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    settings = jwt_settings(audience="https://login.salesforce.com/")

    rows = await SalesforceSource("crm", settings, client).fetch(ACCOUNT_REQUEST)

    assert rows == [{"Id": first_account_id(demo_data)}]


async def test_token_refreshed_once_on_expiry(crm: Starlette, demo_data: DemoData) -> None:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=crm))
    source = SalesforceSource("crm", jwt_settings(), client)
    await source.fetch(ACCOUNT_REQUEST)
    crm.state.expire_tokens()

    rows = await source.fetch(ACCOUNT_REQUEST)

    statuses = [(entry.path, entry.status) for entry in crm.state.control.log]
    assert rows == [{"Id": first_account_id(demo_data)}]
    assert statuses == [(TOKEN_PATH, 200), ("/services/data/v62.0/query", 200),
                        ("/services/data/v62.0/query", 401), (TOKEN_PATH, 200),
                        ("/services/data/v62.0/query", 200)]


@pytest.mark.parametrize(("changes", "setting"), [
    ({"audience": "https://wrong.example.com"}, "audience setting"),
    ({"private_key_pem": "other"}, "private_key_file or private_key_env setting"),
    ({"username": "unknown.user"}, "username setting"),
    ({"client_id": "other-app"}, "client_id setting"),
])
async def test_rejected_assertion_names_setting(crm: Starlette, demo_data: DemoData,
                                                changes: dict[str, str], setting: str) -> None:
    if changes.get("private_key_pem") == "other":
        changes = {"private_key_pem": private_pem("other")}
    recorder = Recorder(crm)
    source = ResilientSource(
        SalesforceSource("crm", jwt_settings(**changes), httpx.AsyncClient(transport=recorder)),
        ResiliencePolicy(retries=2))

    with pytest.raises(UpstreamAuthFailed) as caught:
        await source.fetch(ACCOUNT_REQUEST)

    message = str(caught.value)
    assert "rejected the gateway's JWT bearer assertion (invalid_grant)" in message
    assert setting in message
    assert recorder.assertions[0] not in message
    assert paths(crm) == [TOKEN_PATH]


async def test_expired_assertion_names_clock(crm: Starlette, demo_data: DemoData,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(salesforce_module, "JWT_LIFETIME_SECONDS", -60)
    recorder = Recorder(crm)
    source = ResilientSource(
        SalesforceSource("crm", jwt_settings(), httpx.AsyncClient(transport=recorder)),
        ResiliencePolicy(retries=2))

    with pytest.raises(UpstreamAuthFailed, match="check its gateway host's clock") as caught:
        await source.fetch(ACCOUNT_REQUEST)

    assert recorder.assertions[0] not in str(caught.value)
    assert paths(crm) == [TOKEN_PATH]


def fake_assertion(key: str, **claims: object) -> str:
    values: dict[str, object] = {"iss": CLIENT_ID, "sub": USERNAME, "aud": LOGIN_URL,
                                 "exp": int(time.time()) + 120, **claims}
    return jwt.encode(values, private_key(key), algorithm="RS256")


@pytest.mark.parametrize(("assertion", "description"), [
    (lambda: fake_assertion("app"), None),
    (lambda: fake_assertion("app", exp=int(time.time()) - 60), "expired authorization code"),
    (lambda: fake_assertion("app", exp=int(time.time()) + 3600),
     "invalid assertion: exp is more than 3 minutes ahead"),
    (lambda: fake_assertion("app", aud="https://wrong.example.com"), "audience is invalid"),
    (lambda: fake_assertion("other"), "invalid assertion"),
    (lambda: "not.a.jwt", "invalid assertion"),
    (lambda: fake_assertion("app", sub="unknown.user"), "user hasn't approved this consumer"),
    (lambda: fake_assertion("app", iss="other-app"), "client identifier invalid"),
])
async def test_fake_checks_assertion(crm: Starlette, assertion: object,
                                     description: str | None) -> None:
    assert callable(assertion)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=crm),
                                 base_url=LOGIN_URL) as client:
        response = await client.post(TOKEN_PATH, data={"grant_type": JWT_BEARER_GRANT,
                                                       "assertion": assertion()})

    body = response.json()
    if description is None:
        assert response.status_code == 200
        assert body["instance_url"] == LOGIN_URL
        assert "refresh_token" not in body
        return
    assert response.status_code == 400
    assert body == {"error": "invalid_grant", "error_description": description}


async def test_fake_without_jwt_settings(demo_data: DemoData) -> None:
    app = create_salesforce_app(demo_data, client_id=CLIENT_ID, client_secret="s")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url=LOGIN_URL) as client:
        response = await client.post(TOKEN_PATH, data={
            "grant_type": JWT_BEARER_GRANT, "assertion": fake_assertion("app")})

    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def ec_private_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def encrypted_pem() -> str:
    return private_key("app").private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")).decode()


@pytest.mark.parametrize(("values", "setting"), [
    ({"auth": "password"}, "auth = 'password' is not supported"),
    ({"client_secret": ""}, "client_secret is missing"),
    ({"client_secret": "s", "username": USERNAME}, "username is only used with"),
    ({"client_secret": "s", "audience": "https://login.salesforce.com"},
     "audience is only used with"),
    ({"auth": "jwt_bearer", "client_secret": "s"}, "client_secret is not used"),
    ({"auth": "jwt_bearer", "private_key_pem": "KEY"}, "username is missing"),
    ({"auth": "jwt_bearer", "username": USERNAME}, "the private key is missing"),
    ({"auth": "jwt_bearer", "username": USERNAME, "private_key_pem": "not a key"},
     r"the private key \(private_key_file or private_key_env\) is not an unencrypted"),
    ({"auth": "jwt_bearer", "username": USERNAME, "private_key_pem": "ENCRYPTED"},
     r"the private key \(private_key_file or private_key_env\) is not an unencrypted"),
    ({"auth": "jwt_bearer", "username": USERNAME, "private_key_pem": "EC"},
     "needs an RSA private key"),
    ({"auth": "jwt_bearer", "username": USERNAME, "private_key_pem": "KEY",
      "audience": "login.salesforce.com"}, "audience = 'login.salesforce.com' is not a URL"),
])
def test_invalid_settings_named(values: dict[str, Any], setting: str) -> None:
    pems = {"KEY": private_pem("app"), "ENCRYPTED": encrypted_pem(), "EC": ec_private_pem()}
    if "private_key_pem" in values:
        values = {**values, "private_key_pem": pems.get(values["private_key_pem"],
                                                        values["private_key_pem"])}

    with pytest.raises(ConfigError, match=setting):
        SalesforceSettings(login_url=LOGIN_URL, client_id=CLIENT_ID, **values)


def test_settings_repr_hides_secrets() -> None:
    settings = jwt_settings()

    assert "PRIVATE KEY" not in repr(settings)
    assert settings.jwt_audience == LOGIN_URL
