"""Circuit breaker for one upstream system.

States follow the usual pattern: ``closed`` sends every attempt, ``open``
rejects every attempt without calling the system, and ``half_open`` lets
exactly one trial attempt through after ``reset_after`` seconds open. The
trial's success closes the circuit and its failure opens it again for
another ``reset_after`` seconds.

The breaker has no lock: every method runs without an ``await``, so on one
event loop no other task can interleave between a check and its state change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from gateway.errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Failure count and circuit state of one system.

    Callers must report every admitted attempt's outcome exactly once, with the
    ``trial`` flag that ``admit`` returned: ``record_success``,
    ``record_failure``, or ``release`` when the attempt ended without a
    verdict on the system's health (a rejected request, a cancelled task).
    """

    def __init__(self, system: str, failure_threshold: int, reset_after: float,
                 clock: Callable[[], float]) -> None:
        self.system = system
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self._clock = clock
        self._state: BreakerState = "closed"
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._cause: type[UpstreamError] = UpstreamUnavailable

    @property
    def state(self) -> BreakerState:
        """Current state. ``half_open`` means a trial attempt is in flight."""
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failed attempts since the last success. The circuit opens at the threshold."""
        return self._consecutive_failures

    def seconds_until_trial(self) -> float:
        """Return the seconds until an open circuit admits its trial attempt, or 0."""
        if self._state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.reset_after - self._clock())

    def check(self) -> None:
        """Raise the error of the failure that opened the circuit if ``admit`` would reject now.

        It changes no state, so a request can fail fast before it waits for a
        concurrency slot.
        """
        if self._state == "half_open":
            raise self._half_open_error()
        if self._state == "open" and self.seconds_until_trial() > 0:
            raise self._open_error()

    def admit(self) -> bool:
        """Admit one attempt, or raise like ``check`` while the circuit rejects attempts.

        Returns True when the attempt is the half-open trial, whose outcome
        decides the next state.
        """
        self.check()
        if self._state == "closed":
            return False
        self._state = "half_open"
        return True

    def record_success(self, *, trial: bool) -> BreakerState | None:
        """Count a successful attempt and return the new state if it changed."""
        if self._state == "closed":
            self._consecutive_failures = 0
            return None
        if self._state == "half_open" and trial:
            self._consecutive_failures = 0
            self._state = "closed"
            return self._state
        # An attempt admitted before the circuit opened proves nothing about
        # the system after the failures that opened it.
        return None

    def record_failure(self, *, trial: bool,
                       error: UpstreamError | None = None) -> BreakerState | None:
        """Count a failed attempt and return the new state if it changed.

        The kind of the last failure (timeout, rate limit, unavailable) is kept,
        so that requests failing fast report the cause with its error code.
        """
        if error is not None:
            self._cause = _fail_fast_class(error)
        if self._state == "closed":
            self._consecutive_failures += 1
            if self._consecutive_failures < self.failure_threshold:
                return None
            return self._open()
        if self._state == "half_open" and trial:
            self._consecutive_failures += 1
            return self._open()
        return None

    def release(self, *, trial: bool) -> BreakerState | None:
        """End an attempt that gives no verdict and return the new state if it changed.

        A released trial leaves the circuit open. The reset delay has already
        passed, so the next attempt becomes the trial at once.
        """
        if self._state == "half_open" and trial:
            self._state = "open"
            return self._state
        return None

    def _open(self) -> BreakerState:
        self._state = "open"
        self._opened_at = self._clock()
        return self._state

    def _open_error(self) -> UpstreamError:
        # Rounded to milliseconds first so float noise cannot turn 30 s into 31 s.
        seconds = max(1, math.ceil(round(self.seconds_until_trial(), 3)))
        return self._cause(
            self.system, f"system {self.system!r} circuit open after "
            f"{self._consecutive_failures} consecutive failures; next trial in {seconds} s")

    def _half_open_error(self) -> UpstreamError:
        return self._cause(
            self.system, f"system {self.system!r} circuit half-open while a trial request is in "
            "flight; try again after it completes")


def _fail_fast_class(error: UpstreamError) -> type[UpstreamError]:
    for kind in (UpstreamTimeout, UpstreamRateLimited):
        if isinstance(error, kind):
            return kind
    return UpstreamUnavailable
