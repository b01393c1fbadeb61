"""Transport attacks: cross-site requests, content-type tricks, tokens in URLs, spoofed hops.

Every rejected request carries a valid bearer token, so the rejection comes
from the transport check itself. Each test also checks that no upstream was
called and no audit record was written.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from conftest import Harness, read_audit_records, start_harness
from typer.testing import CliRunner

from gateway import cli
from gateway.config import load_settings
from gateway.demo.data import DemoData
from gateway.errors import ConfigError
from gateway.ratelimit import RateLimit
from gateway.transport import HttpSettings, client_address, http_settings_from_table

CUSTOMER_QUERY = "{ customers(first: 1) { edges { node { id email } } } }"
BODY = b'{"query": "{ customers(first: 1) { edges { node { id email } } } }"}'
CRM_ORIGIN = "https://crm.example.com"
EVIL_ORIGIN = "https://evil.example.net"


def bearer(harness: Harness) -> dict[str, str]:
    return {"Authorization": f"Bearer {harness.token('sales')}"}


async def assert_nothing_read(harness: Harness) -> None:
    assert harness.crm_requests() == []
    assert harness.erp_requests() == []
    assert await read_audit_records(harness.data_dir) == []


def error_code(body: dict[str, Any]) -> str:
    code: str = body["errors"][0]["extensions"]["code"]
    return code


@pytest.fixture
async def cors_harness(demo_data: DemoData, tmp_path: Path) -> AsyncIterator[Harness]:
    changes = {"http": HttpSettings(cors_origins=(CRM_ORIGIN,))}
    async with start_harness(demo_data, tmp_path / "data", overrides=changes) as harness:
        yield harness


def preflight(origin: str) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"}


# --- CORS --------------------------------------------------------------------------------


async def test_cors_default_no_preflight(harness: Harness) -> None:
    response = await harness.client.options("/graphql", headers=preflight(CRM_ORIGIN))

    assert response.status_code == 405
    assert "access-control-allow-origin" not in response.headers


async def test_cors_default_no_allow_header(harness: Harness) -> None:
    response = await harness.query(CUSTOMER_QUERY, headers={"Origin": CRM_ORIGIN})

    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


async def test_cors_allowed_preflight(cors_harness: Harness) -> None:
    response = await cors_harness.client.options("/graphql", headers=preflight(CRM_ORIGIN))

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == CRM_ORIGIN
    assert response.headers["access-control-allow-methods"] == "POST"
    assert "Authorization" in response.headers["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in response.headers


async def test_cors_other_origin_preflight(cors_harness: Harness) -> None:
    response = await cors_harness.client.options("/graphql", headers=preflight(EVIL_ORIGIN))

    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_cors_allowed_post(cors_harness: Harness) -> None:
    response = await cors_harness.query(CUSTOMER_QUERY, headers={"Origin": CRM_ORIGIN})

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == CRM_ORIGIN
    assert "access-control-allow-credentials" not in response.headers


async def test_cors_other_origin_post(cors_harness: Harness) -> None:
    response = await cors_harness.query(CUSTOMER_QUERY, headers={"Origin": EVIL_ORIGIN})

    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(("table", "message"), [
    ({"cors_origins": ["*"]}, r"cors_origins entry '\*' is not an origin"),
    ({"cors_origins": ["https://*.example.com"]}, r"wildcards are not accepted"),
    ({"cors_origins": ["https://crm.example.com/app"]}, r"write each allowed origin in full"),
    ({"cors_origins": ["crm.example.com"]}, r"'crm.example.com' is not an origin"),
    ({"cors_origins": "https://crm.example.com"}, r"must be a list of strings"),
    ({"trusted_proxies": ["10.0.0.0/33"]}, r"'10.0.0.0/33' is not an IP address or CIDR"),
    ({"trusted_proxy": ["10.0.0.1"]}, r"\[http\] trusted_proxy is not a setting"),
])
def test_http_settings_rejected(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        http_settings_from_table(table)


def test_http_settings_read() -> None:
    settings = http_settings_from_table({"cors_origins": ["https://CRM.example.com/"],
                                         "trusted_proxies": ["10.0.0.0/8", "192.0.2.7"]})

    assert settings.cors_origins == ("https://crm.example.com",)
    assert settings.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),
                                        ipaddress.ip_network("192.0.2.7/32"))


# --- GET, tokens in URLs, content types ---------------------------------------------------


async def test_get_query_405(harness: Harness) -> None:
    response = await harness.client.get("/graphql", params={"query": CUSTOMER_QUERY},
                                        headers=bearer(harness))

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert error_code(response.json()) == "METHOD_NOT_ALLOWED"
    await assert_nothing_read(harness)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("name", ["access_token", "token", "id_token"])
async def test_token_in_url_400(harness: Harness, method: str, name: str,
                                caplog: pytest.LogCaptureFixture) -> None:
    token = harness.token("sales")

    with caplog.at_level(logging.DEBUG, logger="gateway"):
        response = await harness.client.request(
            method, "/graphql", params={name: token}, content=BODY,
            headers={"Content-Type": "application/json", **bearer(harness)})

    assert response.status_code == 400
    assert error_code(response.json()) == "TOKEN_IN_URL"
    assert response.json()["errors"][0]["message"] == (
        "a token in the URL is not accepted, because URLs are logged and kept in browser "
        "history; send it in the header 'Authorization: Bearer <JWT>'")
    assert token not in caplog.text
    await assert_nothing_read(harness)


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/x-www-form-urlencoded", b"query=%7B+customers%28first%3A+1%29+%7D"),
    ("multipart/form-data; boundary=x",
     b'--x\r\nContent-Disposition: form-data; name="query"\r\n\r\n{ __typename }\r\n--x--\r\n'),
    ("text/plain", BODY),
    ("application/json, text/plain", BODY),
    ("application/json; charset=utf-16", BODY.decode().encode("utf-16")),
    ("application/json; charset=latin-1", BODY),
])
async def test_content_type_trick_415(harness: Harness, content_type: str, body: bytes,
                                      caplog: pytest.LogCaptureFixture) -> None:
    headers = bearer(harness)

    with caplog.at_level(logging.DEBUG, logger="gateway"):
        response = await harness.client.post("/graphql", content=body,
                                             headers={"Content-Type": content_type, **headers})

    assert response.status_code == 415
    assert error_code(response.json()) == "BAD_REQUEST"
    await assert_nothing_read(harness)
    assert headers["Authorization"].removeprefix("Bearer ") not in caplog.text
    assert "status=415" in caplog.text


async def test_utf16_body_message(harness: Harness) -> None:
    response = await harness.client.post(
        "/graphql", content=BODY.decode().encode("utf-16"),
        headers={"Content-Type": "application/json; charset=UTF-16", **bearer(harness)})

    assert response.json()["errors"][0]["message"] == (
        "charset 'utf-16' is not supported; send the JSON body as UTF-8")


async def test_streamed_oversized_body_413(harness: Harness) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"query": "{ __typename }", "variables": {"v": "'
        for _ in range(20):
            yield b"x" * 100_000
        yield b'"}}'

    response = await harness.client.post("/graphql", content=chunks(),
                                         headers={"Content-Type": "application/json",
                                                  **bearer(harness)})

    assert response.status_code == 413
    await assert_nothing_read(harness)


@pytest.mark.parametrize(("accept", "media_type"), [
    ("application/graphql-response+json", "application/graphql-response+json"),
    ("application/graphql-response+json, application/json;q=0.9",
     "application/graphql-response+json"),
    ("application/json", "application/json"),
    ("*/*", "application/json"),
])
async def test_accept_negotiated(harness: Harness, accept: str, media_type: str) -> None:
    response = await harness.query(CUSTOMER_QUERY, headers={"Accept": accept})

    assert response.status_code == 200
    assert response.headers["content-type"] == media_type


async def test_accept_unsupported_406(harness: Harness) -> None:
    response = await harness.query(CUSTOMER_QUERY, headers={"Accept": "text/html"})

    assert response.status_code == 406
    assert error_code(response.json()) == "NOT_ACCEPTABLE"
    await assert_nothing_read(harness)


async def test_graphiql_disabled_404(demo_data: DemoData, tmp_path: Path) -> None:
    async with start_harness(demo_data, tmp_path / "data",
                             overrides={"graphiql": False}) as harness:
        response = await harness.client.get("/graphql")

    assert response.status_code == 404
    assert "GraphiQL is disabled" in response.text


async def test_graphiql_enabled_in_demo(harness: Harness) -> None:
    response = await harness.client.get("/graphql")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")


def write_serve_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("FONTE_TEST_ID", "FONTE_TEST_SECRET", "FONTE_TEST_ERP_KEY"):
        monkeypatch.setenv(name, "x")
    path = tmp_path / "fonte.toml"
    path.write_text("""
[auth]
development_tokens = true

[systems.crm]
dialect = "salesforce"
login_url = "https://crm.example.com"
client_id_env = "FONTE_TEST_ID"
client_secret_env = "FONTE_TEST_SECRET"

[systems.erp]
dialect = "odoo-jsonrpc"
base_url = "https://erp.example.com"
database = "prod"
login = "gateway"
api_key_env = "FONTE_TEST_ERP_KEY"
""", encoding="utf-8")
    return path


def test_serve_graphiql_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(write_serve_settings(tmp_path, monkeypatch))

    assert settings.graphiql is False
    assert settings.http == HttpSettings()


def test_serve_ignores_uvicorn_proxy_headers(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(options))
    # basicConfig on CliRunner's stream would outlive the test.
    monkeypatch.setattr(cli, "_configure_logging", lambda level: None)

    result = CliRunner().invoke(cli.app, ["serve", "--config",
                                          str(write_serve_settings(tmp_path, monkeypatch))])

    assert result.exit_code == 0, result.output
    assert calls[0]["proxy_headers"] is False


# --- X-Forwarded-For ----------------------------------------------------------------------


PROXIES = tuple(ipaddress.ip_network(n) for n in ("127.0.0.1/32", "10.0.0.0/8"))


@pytest.mark.parametrize(("peer", "forwarded", "trusted", "client"), [
    ("127.0.0.1", ["203.0.113.9"], (), "127.0.0.1"),
    ("127.0.0.1", ["203.0.113.9"], PROXIES, "203.0.113.9"),
    ("127.0.0.1", ["203.0.113.9, 10.1.2.3"], PROXIES, "203.0.113.9"),
    ("127.0.0.1", ["198.51.100.1, 203.0.113.9"], PROXIES, "203.0.113.9"),
    ("127.0.0.1", ["198.51.100.1", "203.0.113.9"], PROXIES, "203.0.113.9"),
    ("127.0.0.1", ["not-an-ip"], PROXIES, "127.0.0.1"),
    ("127.0.0.1", ["203.0.113.9, not-an-ip, 10.1.2.3"], PROXIES, "10.1.2.3"),
    ("127.0.0.1", ["10.1.2.3"], PROXIES, "10.1.2.3"),
    ("127.0.0.1", [], PROXIES, "127.0.0.1"),
    ("198.51.100.1", ["203.0.113.9"], PROXIES, "198.51.100.1"),
    ("::1", ["2001:db8::7"], (ipaddress.ip_network("::1/128"),), "2001:db8::7"),
    (None, ["203.0.113.9"], PROXIES, None),
])
def test_client_address_table(peer: str | None, forwarded: list[str],
                              trusted: tuple[Any, ...], client: str | None) -> None:
    assert client_address(peer, forwarded, trusted) == client


async def audit_address(demo_data: DemoData, tmp_path: Path, trusted: tuple[str, ...],
                        forwarded: str) -> str | None:
    proxies = tuple(ipaddress.ip_network(n) for n in trusted)
    changes = {"http": HttpSettings(trusted_proxies=proxies)}
    async with start_harness(demo_data, tmp_path / "data", overrides=changes) as harness:
        response = await harness.query(CUSTOMER_QUERY, headers={"X-Forwarded-For": forwarded})
        assert response.status_code == 200
        records = await read_audit_records(harness.data_dir)
    address: str | None = records[0]["client_address"]
    return address


async def test_spoofed_forwarded_for_ignored(demo_data: DemoData, tmp_path: Path) -> None:
    # The test client's TCP peer is 127.0.0.1, which is not a trusted proxy here.
    address = await audit_address(demo_data, tmp_path, (), "203.0.113.9")

    assert address == "127.0.0.1"


async def test_trusted_proxy_forwarded_for(demo_data: DemoData, tmp_path: Path) -> None:
    address = await audit_address(demo_data, tmp_path, ("127.0.0.1/32",),
                                  "198.51.100.1, 203.0.113.9")

    assert address == "203.0.113.9"


async def test_failed_tokens_limited_per_address(demo_data: DemoData, tmp_path: Path) -> None:
    changes = {"http": HttpSettings(trusted_proxies=PROXIES),
               "rate_limit": RateLimit(rate=0.001, burst=2)}
    async with start_harness(demo_data, tmp_path / "data", overrides=changes) as harness:
        statuses = []
        for _ in range(3):
            response = await harness.query(CUSTOMER_QUERY, token="not.a.jwt",
                                           headers={"X-Forwarded-For": "203.0.113.9"})
            statuses.append(response.status_code)
        other = await harness.query(CUSTOMER_QUERY, token="not.a.jwt",
                                    headers={"X-Forwarded-For": "203.0.113.10"})

        assert statuses == [401, 401, 429]
        assert response.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        assert int(response.headers["retry-after"]) >= 1
        assert other.status_code == 401
        await assert_nothing_read(harness)
