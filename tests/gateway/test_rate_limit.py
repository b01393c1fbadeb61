"""Requests per caller: token buckets, 429 with Retry-After, and the [limits] settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import start_harness

from gateway.config import load_settings
from gateway.demo.data import DemoData
from gateway.errors import ConfigError
from gateway.ratelimit import RateLimit, RateLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(rate=2.0, burst=3), clock)

    assert [limiter.acquire("u1") for _ in range(3)] == [None, None, None]
    assert limiter.acquire("u1") == pytest.approx(0.5)
    clock.now = 0.5
    assert limiter.acquire("u1") is None


def test_callers_counted_apart() -> None:
    limiter = RateLimiter(RateLimit(rate=1.0, burst=1), Clock())

    assert limiter.acquire("u1") is None
    assert limiter.acquire("u2") is None
    assert limiter.acquire("u1") == pytest.approx(1.0)


def test_zero_rate_turns_off() -> None:
    limiter = RateLimiter(RateLimit(rate=0, burst=1), Clock())

    assert [limiter.acquire("u1") for _ in range(100)] == [None] * 100


def test_retry_after_whole_seconds() -> None:
    assert retry_after_header(0.2) == "1"
    assert retry_after_header(2.5) == "3"


async def test_gateway_answers_429(demo_data: DemoData, tmp_path: Path) -> None:
    async with start_harness(demo_data, tmp_path / "data") as harness:
        harness.gateway_app.state.gateway.limiter = RateLimiter(RateLimit(rate=0.001, burst=2))
        statuses = [(await harness.query("{ __typename }")).status_code for _ in range(3)]
        response = await harness.query("{ __typename }")

    assert statuses == [200, 200, 429]
    assert response.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert int(response.headers["Retry-After"]) >= 1


SETTINGS = """
[auth]
development_tokens = true

[limits]
{limits}

[systems.crm]
dialect = "salesforce"
login_url = "https://crm.example"
client_id_file = "secret"
client_secret_file = "secret"

[systems.erp]
dialect = "odoo-jsonrpc"
base_url = "https://erp.example"
database = "prod"
login = "gateway"
api_key_file = "secret"
"""


def settings_file(tmp_path: Path, limits: str) -> Path:
    (tmp_path / "secret").write_text("s", encoding="utf-8")
    path = tmp_path / "fonte.toml"
    path.write_text(SETTINGS.format(limits=limits), encoding="utf-8")
    return path


def test_limits_from_settings(tmp_path: Path) -> None:
    settings = load_settings(settings_file(tmp_path, "max_depth = 6\nrequests_per_second = 5"))

    assert settings.operation_limits.max_depth == 6
    assert settings.operation_limits.max_fields == 1000
    assert settings.rate_limit == RateLimit(rate=5.0, burst=40)


def test_serve_limits_by_default(tmp_path: Path) -> None:
    settings = load_settings(settings_file(tmp_path, ""))

    assert settings.rate_limit == RateLimit(rate=20.0, burst=40)


def test_unknown_limit_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[limits\] max_dept is not a setting"):
        load_settings(settings_file(tmp_path, "max_dept = 6"))


def test_negative_rate_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"requests_per_second = -1 must be a number"):
        load_settings(settings_file(tmp_path, "requests_per_second = -1"))
