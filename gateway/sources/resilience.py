"""Deadline, concurrency limit, retries and circuit breaker around any source.

``ResilientSource`` wraps one system's dialect and keeps its ``Source``
interface. A fetch runs under one deadline, ``policy.timeout`` seconds for
all its attempts, backoff sleeps and waits for a slot together. Each attempt
takes one of ``policy.max_concurrency`` slots, so extra requests wait for a
free slot. A failed attempt is retried up to ``policy.retries`` times with
full-jitter exponential backoff.

Retrying is safe because the ``Source`` protocol only reads. An attempt that
failed after the upstream did its work changed nothing there, so sending it
again cannot duplicate an effect.

Only errors that can succeed on a second attempt are retried:
``UpstreamUnavailable``, ``UpstreamTimeout`` of one attempt and
``UpstreamRateLimited``. ``UpstreamRejected`` means the gateway sent an
invalid request, so it is neither retried nor counted by the circuit
breaker. Any other ``UpstreamError`` subclass is counted by the breaker but
not retried, because it is not known to be transient.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from random import Random
from typing import Any, Literal

from gateway.errors import (
    ConfigError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest, Row, Source
from gateway.sources.breaker import BreakerState, CircuitBreaker

log = logging.getLogger("gateway.upstream")

RETRYABLE_ERRORS = (UpstreamUnavailable, UpstreamTimeout, UpstreamRateLimited)

# Sanity bounds that catch a unit mistake (milliseconds written as seconds)
# or a typo, not tuned limits.
MAX_TIMEOUT = 600.0
MAX_CONCURRENCY = 1000
MAX_RETRIES = 10
MAX_BACKOFF = 600.0
MAX_BREAKER_FAILURES = 1000
MAX_BREAKER_RESET = 3600.0


def _check_count(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} = {value!r} is invalid: use a whole number from {low} to "
                          f"{high}")


def _check_seconds(name: str, value: object, high: float, low: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} = {value!r} is invalid: use a number of seconds")
    if low is None and not 0 < value <= high:
        raise ConfigError(f"{name} = {value!r} is invalid: use a number of seconds greater "
                          f"than 0 and at most {high:g}")
    if low is not None and not low <= value <= high:
        raise ConfigError(f"{name} = {value!r} is invalid: use a number of seconds from "
                          f"{low:g} to {high:g}")


@dataclass(frozen=True)
class ResiliencePolicy:
    """Deadline, concurrency, retry and circuit breaker settings of one system.

    ``timeout`` is the deadline in seconds for a whole fetch, retries and
    backoff sleeps included. A retry sleeps ``uniform(0, min(backoff_max,
    backoff_base * 2**n))`` seconds after the failed attempt ``n`` (0 for the
    first attempt). ``breaker_failures`` consecutive failed attempts open the
    circuit, and ``breaker_reset`` seconds later one trial attempt is let
    through. Invalid values raise ``ConfigError`` naming the setting and its
    allowed range.
    """

    timeout: float = 30.0
    max_concurrency: int = 10
    retries: int = 2
    backoff_base: float = 0.2
    backoff_max: float = 5.0
    breaker_failures: int = 5
    breaker_reset: float = 30.0

    def __post_init__(self) -> None:
        _check_seconds("timeout", self.timeout, MAX_TIMEOUT)
        _check_count("max_concurrency", self.max_concurrency, 1, MAX_CONCURRENCY)
        _check_count("retries", self.retries, 0, MAX_RETRIES)
        _check_seconds("backoff_base", self.backoff_base, MAX_BACKOFF)
        _check_seconds("backoff_max", self.backoff_max, MAX_BACKOFF, low=self.backoff_base)
        _check_count("breaker_failures", self.breaker_failures, 1, MAX_BREAKER_FAILURES)
        _check_seconds("breaker_reset", self.breaker_reset, MAX_BREAKER_RESET)


def policy_from_table(section: str, table: Mapping[str, Any]) -> ResiliencePolicy:
    """Build a policy from a TOML table; settings it does not name keep their defaults.

    Raises ``ConfigError`` prefixed with ``[section]`` for an unknown setting
    or an invalid value.
    """
    known = [item.name for item in fields(ResiliencePolicy)]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"[{section}] {unknown[0]} is not a setting; use one of "
                          f"{', '.join(known)}")
    try:
        return ResiliencePolicy(**table)
    except ConfigError as exc:
        raise ConfigError(f"[{section}] {exc}") from None


@dataclass
class _Call:
    """Progress of one fetch through its attempts."""

    request: FetchRequest
    deadline: float  # in the injected clock's time
    attempts: int = 0
    in_flight: bool = False
    trial: bool = False

    @property
    def what(self) -> str:
        return f"{self.request.entity} fetch of {len(self.request.keys)} keys"


Outcome = Literal["success", "failure", "release"]


class ResilientSource:
    """A source wrapped with a fetch deadline, a concurrency limit, retries and a breaker.

    ``clock`` returns monotonic seconds and drives backoff budgets and the
    breaker's reset delay. The deadline itself is enforced with
    ``asyncio.timeout`` on the event loop's clock. ``sleep`` and ``random``
    are injectable so tests run without real waits.
    """

    def __init__(self, inner: Source, policy: ResiliencePolicy, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 random: Random | None = None) -> None:
        self.name = inner.name
        self.inner = inner
        self.policy = policy
        self._clock = clock
        self._sleep = sleep
        self._random = random if random is not None else Random()
        self._slots = asyncio.Semaphore(policy.max_concurrency)
        self._breaker = CircuitBreaker(inner.name, policy.breaker_failures,
                                       policy.breaker_reset, clock)
        self._attempts = 0
        self._retries = 0
        self._failures = 0

    @property
    def supports_row_filters(self) -> bool:
        return self.inner.supports_row_filters

    @property
    def breaker_state(self) -> BreakerState:
        """Circuit state: ``closed``, ``open``, or ``half_open`` while a trial is in flight."""
        return self._breaker.state

    @property
    def attempts(self) -> int:
        """Calls made to the wrapped source since start."""
        return self._attempts

    @property
    def retries(self) -> int:
        """Attempts that repeated a failed attempt, since start."""
        return self._retries

    @property
    def failures(self) -> int:
        """Attempts that failed in a way the circuit breaker counts, since start."""
        return self._failures

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def fetch(self, request: FetchRequest) -> list[Row]:
        """Fetch through the wrapped source within the deadline, retrying transient errors.

        Raises the last attempt's error when retries are exhausted, when the
        next backoff delay would pass the deadline, or when the circuit
        opened meanwhile. Raises ``UpstreamTimeout`` when the deadline
        expires, and ``UpstreamUnavailable`` at once while the circuit is open.
        """
        self._breaker.check()
        call = _Call(request, deadline=self._clock() + self.policy.timeout)
        try:
            async with asyncio.timeout(self.policy.timeout):
                return await self._retry(call)
        except TimeoutError as exc:
            # The deadline cancelled the attempt in flight, if any. The system
            # did not respond in time, which counts as a failure.
            self._settle_interrupted(call, "failure")
            raise UpstreamTimeout(
                self.name, f"system {self.name!r} timed out after {self.policy.timeout:g} s on "
                f"{call.what} (attempts: {call.attempts})") from exc
        except BaseException:
            # A cancelled task or a bug in the dialect is no evidence about the
            # system's health.
            self._settle_interrupted(call, "release")
            raise

    async def _retry(self, call: _Call) -> list[Row]:
        while True:
            try:
                return await self._attempt(call)
            except RETRYABLE_ERRORS as exc:
                delay = self._retry_delay(call, exc)
                if delay is None:
                    raise
                self._retries += 1
                log.warning("system %r: %s attempt %d failed (%s), retrying in %.3f s",
                            self.name, call.what, call.attempts, exc, delay)
            await self._sleep(delay)

    async def _attempt(self, call: _Call) -> list[Row]:
        async with self._slots:
            call.trial = self._breaker.admit()
            call.attempts += 1
            if call.trial:
                self._log_transition(call, "half_open")
            call.in_flight = True
            self._attempts += 1
            try:
                rows = await self.inner.fetch(call.request)
            except UpstreamRejected:
                self._settle(call, "release")
                raise
            except UpstreamError as exc:
                self._settle(call, "failure", exc)
                raise
            self._settle(call, "success")
            return rows

    def _retry_delay(self, call: _Call, error: UpstreamError) -> float | None:
        """Return the backoff delay before the next attempt, or None to stop retrying."""
        if call.attempts == 0 or call.attempts > self.policy.retries:
            return None
        if self._breaker.state != "closed":
            return None
        ceiling = min(self.policy.backoff_max,
                      self.policy.backoff_base * 2 ** (call.attempts - 1))
        delay = self._random.uniform(0, ceiling)
        if isinstance(error, UpstreamRateLimited) and error.retry_after is not None:
            delay = max(delay, error.retry_after)
        remaining = call.deadline - self._clock()
        if delay >= remaining:
            log.warning("system %r: %s attempt %d failed (%s), not retrying because a %.3f s "
                        "delay would pass the fetch deadline", self.name, call.what,
                        call.attempts, error, delay)
            return None
        return delay

    def _settle(self, call: _Call, outcome: Outcome, error: UpstreamError | None = None) -> None:
        call.in_flight = False
        if outcome == "success":
            changed = self._breaker.record_success(trial=call.trial)
        elif outcome == "failure":
            self._failures += 1
            changed = self._breaker.record_failure(trial=call.trial, error=error)
        else:
            changed = self._breaker.release(trial=call.trial)
        if changed is not None:
            self._log_transition(call, changed, outcome)

    def _settle_interrupted(self, call: _Call, outcome: Outcome) -> None:
        if call.in_flight:
            self._settle(call, outcome)

    def _log_transition(self, call: _Call, state: BreakerState,
                        outcome: Outcome | None = None) -> None:
        breaker = self._breaker
        if state == "half_open":
            log.warning("system %r: circuit half-open, %s attempt %d is the trial request",
                        self.name, call.what, call.attempts)
        elif state == "closed":
            log.warning("system %r: circuit closed, trial %s attempt %d succeeded",
                        self.name, call.what, call.attempts)
        elif outcome == "release":
            log.warning("system %r: circuit open again because trial %s attempt %d was "
                        "rejected or cancelled, so the next attempt is the trial", self.name,
                        call.what, call.attempts)
        else:
            log.warning("system %r: circuit open after %d consecutive failures, last on %s "
                        "attempt %d, next trial in %.0f s", self.name,
                        breaker.consecutive_failures, call.what, call.attempts,
                        breaker.seconds_until_trial())
