"""ResilientSource: deadline, concurrency limit, retries and circuit breaker.

Time is a fake clock that only the fake ``sleep`` and the scripted source
move forward, and jitter comes from a seeded ``random.Random``, so no test
depends on wall-clock timing. The deadline test is the one exception: it
needs ``asyncio.timeout`` to fire and uses a 50 ms timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from random import Random
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from gateway.demo.data import DemoData
from gateway.demo.odoo import create_odoo_app
from gateway.errors import (
    ConfigError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest, Row, Source
from gateway.sources.odoo import OdooJsonRpcSource, OdooSettings
from gateway.sources.resilience import ResiliencePolicy, ResilientSource, policy_from_table

SEED = 7
ROWS: list[Row] = [{"id": 1}]
REQUEST = FetchRequest(entity="res.partner", attributes=("id",), match="id",
                       keys=(4711, 4712))
OPEN_MESSAGE = r"^system 'erp' circuit open after {} consecutive failures; next trial in {} s$"
HALF_OPEN_MESSAGE = "circuit half-open while a trial request is in flight"


class FakeClock:
    """Monotonic seconds that move only when a test or a fake moves them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSleep:
    """Record each delay and advance the clock by it instead of waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []
        self.on_sleep: Callable[[], None] = lambda: None

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.clock.advance(delay)
        self.on_sleep()


Step = list[Row] | Exception | asyncio.Event | Callable[[], list[Row]]


class ScriptedSource:
    """A source whose fetches follow a script, one step per call.

    A step returns rows, raises an exception, waits for an event and then
    returns ``ROWS``, or runs a callable. Calls past the script return ``ROWS``.
    """

    name = "erp"
    supports_row_filters = True

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[FetchRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False

    async def fetch(self, request: FetchRequest) -> list[Row]:
        self.requests.append(request)
        step = self.steps.pop(0) if self.steps else ROWS
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if isinstance(step, asyncio.Event):
                await step.wait()
                return ROWS
            if isinstance(step, Exception):
                raise step
            if callable(step):
                return step()
            return step
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        self.closed = True


def unavailable() -> UpstreamUnavailable:
    return UpstreamUnavailable("erp", "system 'erp' answered HTTP 503 for res.partner")


def wrap(inner: Source, clock: FakeClock, **policy: Any) -> tuple[ResilientSource, FakeSleep]:
    sleep = FakeSleep(clock)
    source = ResilientSource(inner, ResiliencePolicy(**policy), clock=clock, sleep=sleep,
                             random=Random(SEED))
    return source, sleep


def expected_delays(count: int, base: float, maximum: float) -> list[float]:
    generator = Random(SEED)
    return [generator.uniform(0, min(maximum, base * 2 ** n)) for n in range(count)]


async def open_circuit(source: ResilientSource, failures: int) -> None:
    for _ in range(failures):
        with pytest.raises(UpstreamUnavailable):
            await source.fetch(REQUEST)


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(10):
        await asyncio.sleep(0)


# --- policy ------------------------------------------------------------------


def test_policy_defaults_valid() -> None:
    policy = ResiliencePolicy()

    assert policy.retries == 2
    assert policy.breaker_failures == 5


@pytest.mark.parametrize(("settings", "message"), [
    ({"timeout": 0}, "timeout = 0 is invalid: use a number of seconds greater than 0 and at "
                     "most 600"),
    ({"timeout": "10"}, "timeout = '10' is invalid: use a number of seconds"),
    ({"max_concurrency": 0}, "max_concurrency = 0 is invalid: use a whole number from 1 to "
                             "1000"),
    ({"max_concurrency": 2.5}, "max_concurrency = 2.5 is invalid"),
    ({"retries": -1}, "retries = -1 is invalid: use a whole number from 0 to 10"),
    ({"retries": True}, "retries = True is invalid"),
    ({"backoff_base": 0.0}, "backoff_base = 0.0 is invalid"),
    ({"backoff_base": 2.0, "backoff_max": 1.0},
     "backoff_max = 1.0 is invalid: use a number of seconds from 2 to 600"),
    ({"breaker_failures": 0}, "breaker_failures = 0 is invalid: use a whole number from 1 to "
                              "1000"),
    ({"breaker_reset": -5}, "breaker_reset = -5 is invalid"),
])
def test_policy_rejects_invalid(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ResiliencePolicy(**settings)

    assert str(info.value).startswith(message)


def test_policy_table_names_section() -> None:
    with pytest.raises(ConfigError, match=r"^\[systems.erp.resilience\] retries = 99 is "):
        policy_from_table("systems.erp.resilience", {"retries": 99})


def test_policy_table_unknown_setting() -> None:
    with pytest.raises(ConfigError, match=r"^\[systems.erp.resilience\] retry is not a "
                                          r"setting; use one of timeout, max_concurrency, "
                                          r"retries"):
        policy_from_table("systems.erp.resilience", {"retry": 3})


def test_policy_table_keeps_defaults() -> None:
    policy = policy_from_table("systems.erp.resilience", {"timeout": 12})

    assert policy == ResiliencePolicy(timeout=12)


# --- retries -----------------------------------------------------------------


async def test_first_attempt_returns_rows() -> None:
    inner = ScriptedSource([{"id": 9}])
    source, sleep = wrap(inner, FakeClock())

    rows = await source.fetch(REQUEST)

    assert rows == [{"id": 9}]
    assert inner.requests == [REQUEST]
    assert source.attempts == 1
    assert source.retries == 0
    assert sleep.delays == []


async def test_unavailable_retried_to_success() -> None:
    inner = ScriptedSource(unavailable(), unavailable(), [{"id": 9}])
    source, sleep = wrap(inner, FakeClock(), backoff_base=0.5, backoff_max=5.0)

    rows = await source.fetch(REQUEST)

    assert rows == [{"id": 9}]
    assert source.attempts == 3
    assert source.retries == 2
    assert source.failures == 2
    assert source.breaker_state == "closed"
    assert sleep.delays == expected_delays(2, 0.5, 5.0)


async def test_backoff_capped_by_max() -> None:
    inner = ScriptedSource(*(unavailable() for _ in range(5)))
    source, sleep = wrap(inner, FakeClock(), retries=5, backoff_base=1.0, backoff_max=3.0,
                         breaker_failures=10)

    await source.fetch(REQUEST)

    assert sleep.delays == expected_delays(5, 1.0, 3.0)
    for attempt, delay in enumerate(sleep.delays):
        assert 0 <= delay <= min(3.0, 2 ** attempt)


async def test_exhausted_retries_raise_last() -> None:
    errors = [unavailable() for _ in range(3)]
    inner = ScriptedSource(*errors)
    source, _ = wrap(inner, FakeClock(), retries=2)

    with pytest.raises(UpstreamUnavailable) as info:
        await source.fetch(REQUEST)

    assert info.value is errors[-1]
    assert source.attempts == 3


async def test_attempt_timeout_retried() -> None:
    inner = ScriptedSource(UpstreamTimeout("erp", "system 'erp' timed out on search_read"))
    source, _ = wrap(inner, FakeClock())

    assert await source.fetch(REQUEST) == ROWS
    assert source.retries == 1


async def test_rejected_not_retried_or_counted() -> None:
    inner = ScriptedSource(*(UpstreamRejected("erp", "rejected") for _ in range(10)))
    source, sleep = wrap(inner, FakeClock(), breaker_failures=3)

    for _ in range(10):
        with pytest.raises(UpstreamRejected):
            await source.fetch(REQUEST)

    assert source.attempts == 10
    assert source.retries == 0
    assert source.failures == 0
    assert source.breaker_state == "closed"
    assert sleep.delays == []


class VendorFault(UpstreamError):
    """An upstream error outside the retryable set, like a dialect's own error class."""


async def test_other_error_counted_not_retried() -> None:
    inner = ScriptedSource(VendorFault("erp", "system 'erp' answered with a vendor fault"))
    source, _ = wrap(inner, FakeClock())

    with pytest.raises(VendorFault):
        await source.fetch(REQUEST)

    assert source.attempts == 1
    assert source.failures == 1


async def test_dialect_bug_not_counted() -> None:
    inner = ScriptedSource(KeyError("id"))
    source, _ = wrap(inner, FakeClock(), breaker_failures=1)

    with pytest.raises(KeyError):
        await source.fetch(REQUEST)

    assert source.failures == 0
    assert source.breaker_state == "closed"


async def test_retry_after_honoured() -> None:
    inner = ScriptedSource(UpstreamRateLimited("erp", "slow down", retry_after=3.0))
    source, sleep = wrap(inner, FakeClock(), timeout=10, backoff_base=0.1)

    assert await source.fetch(REQUEST) == ROWS
    assert sleep.delays == [3.0]


async def test_retry_after_past_deadline() -> None:
    error = UpstreamRateLimited("erp", "slow down", retry_after=60.0)
    inner = ScriptedSource(error)
    source, sleep = wrap(inner, FakeClock(), timeout=10)

    with pytest.raises(UpstreamRateLimited) as info:
        await source.fetch(REQUEST)

    assert info.value is error
    assert sleep.delays == []
    assert source.attempts == 1


async def test_backoff_past_deadline() -> None:
    clock = FakeClock()
    error = unavailable()

    def slow_failure() -> list[Row]:
        clock.advance(10.0)
        raise error

    inner = ScriptedSource(slow_failure)
    source, sleep = wrap(inner, clock, timeout=10)

    with pytest.raises(UpstreamUnavailable) as info:
        await source.fetch(REQUEST)

    assert info.value is error
    assert sleep.delays == []


# --- deadline and concurrency ------------------------------------------------


async def test_deadline_raises_timeout() -> None:
    inner = ScriptedSource(asyncio.Event())
    source, _ = wrap(inner, FakeClock(), timeout=0.05)

    with pytest.raises(UpstreamTimeout) as info:
        await source.fetch(REQUEST)

    assert str(info.value) == ("system 'erp' timed out after 0.05 s on res.partner fetch of "
                               "2 keys (attempts: 1)")
    assert source.failures == 1
    assert inner.in_flight == 0


async def test_concurrency_limit_queues() -> None:
    release = asyncio.Event()
    inner = ScriptedSource(*(release for _ in range(5)))
    source, _ = wrap(inner, FakeClock(), max_concurrency=2)

    tasks = [asyncio.create_task(source.fetch(REQUEST)) for _ in range(5)]
    await settle()
    waiting = inner.in_flight
    release.set()
    results = await asyncio.gather(*tasks)

    assert waiting == 2
    assert inner.max_in_flight == 2
    assert results == [ROWS] * 5
    assert source.attempts == 5


# --- circuit breaker ---------------------------------------------------------


async def test_breaker_opens_after_failures() -> None:
    inner = ScriptedSource(*(unavailable() for _ in range(5)))
    source, _ = wrap(inner, FakeClock(), retries=0, breaker_failures=5, breaker_reset=30)
    await open_circuit(source, 5)

    with pytest.raises(UpstreamUnavailable, match=OPEN_MESSAGE.format(5, 30)):
        await source.fetch(REQUEST)

    assert source.breaker_state == "open"
    assert len(inner.requests) == 5
    assert source.failures == 5


async def test_open_message_counts_down() -> None:
    clock = FakeClock()
    inner = ScriptedSource(*(unavailable() for _ in range(5)))
    source, _ = wrap(inner, clock, retries=0, breaker_failures=5, breaker_reset=30)
    await open_circuit(source, 5)
    clock.advance(18)

    with pytest.raises(UpstreamUnavailable, match=OPEN_MESSAGE.format(5, 12)):
        await source.fetch(REQUEST)


async def test_success_resets_failure_count() -> None:
    steps: list[Step] = [unavailable() for _ in range(4)]
    steps.append(ROWS)
    steps.extend(unavailable() for _ in range(4))
    source, _ = wrap(ScriptedSource(*steps), FakeClock(), retries=0, breaker_failures=5)

    await open_circuit(source, 4)
    assert await source.fetch(REQUEST) == ROWS
    await open_circuit(source, 4)

    assert source.breaker_state == "closed"


async def test_open_circuit_stops_retries() -> None:
    errors = [unavailable() for _ in range(5)]
    inner = ScriptedSource(*errors)
    source, sleep = wrap(inner, FakeClock(), retries=5, breaker_failures=2)

    with pytest.raises(UpstreamUnavailable) as info:
        await source.fetch(REQUEST)

    assert info.value is errors[1]
    assert source.attempts == 2
    assert len(sleep.delays) == 1
    assert source.breaker_state == "open"


async def test_trial_success_closes() -> None:
    clock = FakeClock()
    trial_gate = asyncio.Event()
    inner = ScriptedSource(*(unavailable() for _ in range(5)), trial_gate)
    source, _ = wrap(inner, clock, retries=0, breaker_failures=5, breaker_reset=30)
    await open_circuit(source, 5)
    clock.advance(30)

    trial = asyncio.create_task(source.fetch(REQUEST))
    await settle()
    state_during_trial = source.breaker_state
    with pytest.raises(UpstreamUnavailable, match=HALF_OPEN_MESSAGE):
        await source.fetch(REQUEST)
    trial_gate.set()

    assert await trial == ROWS
    assert state_during_trial == "half_open"
    assert source.breaker_state == "closed"
    assert len(inner.requests) == 6


async def test_trial_failure_reopens() -> None:
    clock = FakeClock()
    inner = ScriptedSource(*(unavailable() for _ in range(6)))
    source, _ = wrap(inner, clock, retries=2, breaker_failures=5, breaker_reset=30)
    await open_circuit(source, 2)  # 3 + 2 attempts: the fifth failure opens the circuit
    clock.advance(30)

    with pytest.raises(UpstreamUnavailable, match="answered HTTP 503"):
        await source.fetch(REQUEST)
    with pytest.raises(UpstreamUnavailable, match=OPEN_MESSAGE.format(6, 30)):
        await source.fetch(REQUEST)

    assert source.breaker_state == "open"
    assert source.attempts == 6


async def test_cancelled_trial_releases() -> None:
    clock = FakeClock()
    inner = ScriptedSource(*(unavailable() for _ in range(5)), asyncio.Event(), [{"id": 2}])
    source, _ = wrap(inner, clock, retries=0, breaker_failures=5, breaker_reset=30)
    await open_circuit(source, 5)
    clock.advance(30)

    trial = asyncio.create_task(source.fetch(REQUEST))
    await settle()
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    state_after_cancel = source.breaker_state
    rows = await source.fetch(REQUEST)

    assert state_after_cancel == "open"
    assert rows == [{"id": 2}]
    assert source.breaker_state == "closed"


async def test_rejected_trial_releases() -> None:
    clock = FakeClock()
    inner = ScriptedSource(*(unavailable() for _ in range(5)), UpstreamRejected("erp", "bad"))
    source, _ = wrap(inner, clock, retries=0, breaker_failures=5, breaker_reset=30)
    await open_circuit(source, 5)
    clock.advance(30)

    with pytest.raises(UpstreamRejected):
        await source.fetch(REQUEST)
    state_after_rejection = source.breaker_state

    assert state_after_rejection == "open"
    assert await source.fetch(REQUEST) == ROWS
    assert source.breaker_state == "closed"


# --- logs and delegation -----------------------------------------------------


async def test_logs_retry_and_state(caplog: pytest.LogCaptureFixture) -> None:
    inner = ScriptedSource(unavailable(), unavailable())
    source, sleep = wrap(inner, FakeClock(), retries=1, breaker_failures=2)

    with caplog.at_level(logging.WARNING, logger="gateway.upstream"), \
            pytest.raises(UpstreamUnavailable):
        await source.fetch(REQUEST)

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("system 'erp': res.partner fetch of 2 keys attempt 1 failed")
    assert messages[0].endswith(f"retrying in {sleep.delays[0]:.3f} s")
    assert messages[1] == ("system 'erp': circuit open after 2 consecutive failures, last on "
                           "res.partner fetch of 2 keys attempt 2, next trial in 30 s")
    for record in caplog.records:
        assert record.levelno == logging.WARNING
        assert "4711" not in record.getMessage()


async def test_name_and_aclose_delegate() -> None:
    inner = ScriptedSource()
    source, _ = wrap(inner, FakeClock())

    await source.aclose()

    assert source.name == "erp"
    assert inner.closed


# --- against the demo Odoo server --------------------------------------------


ODOO_SETTINGS = OdooSettings(base_url="http://erp.test", database="fonte_demo",
                             login="gateway", api_key="key")


async def test_odoo_fault_retried_to_success(demo_data: DemoData) -> None:
    erp: Starlette = create_odoo_app(demo_data, api_key="key")
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=erp))
    source, sleep = wrap(OdooJsonRpcSource("erp", ODOO_SETTINGS, client), FakeClock())
    partner = demo_data.erp["res.partner"][0]
    request = FetchRequest(entity="res.partner", attributes=("id",), match="id",
                           keys=(partner["id"],))
    erp.state.control.fault_status = 503

    def clear_fault() -> None:
        erp.state.control.fault_status = None

    sleep.on_sleep = clear_fault
    rows = await source.fetch(request)

    statuses = [entry.status for entry in erp.state.control.log]
    assert rows == [{"id": partner["id"]}]
    assert statuses == [503, 200, 200]
    assert source.retries == 1
    assert source.breaker_state == "closed"
    await source.aclose()


async def test_connect_error_opens_breaker() -> None:
    sent: list[httpx.Request] = []

    def reject_connection(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(reject_connection))
    source, _ = wrap(OdooJsonRpcSource("erp", ODOO_SETTINGS, client), FakeClock(),
                     retries=2, breaker_failures=5)

    # 3 attempts, then 2 more until the fifth consecutive failure opens the circuit.
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable, match=r"could not be reached.*ConnectError"):
            await source.fetch(REQUEST)
    with pytest.raises(UpstreamUnavailable, match=OPEN_MESSAGE.format(5, 30)):
        await source.fetch(REQUEST)

    assert len(sent) == 5
    assert source.breaker_state == "open"
    await source.aclose()

