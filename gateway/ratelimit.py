"""Requests per caller: a token bucket for each user id.

Each caller may send ``burst`` requests at once and ``rate`` requests per
second on average. A request over the limit gets a 429 response with the
seconds to wait in ``Retry-After``, before any work is done for it. The
buckets live in this process only: several workers each count on their own.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# Buckets of idle callers are dropped beyond this many, oldest first.
MAX_TRACKED_CALLERS = 100_000


@dataclass(frozen=True)
class RateLimit:
    """Requests per second and burst size of one caller; rate 0 turns limiting off."""

    rate: float = 20.0
    burst: int = 40


class RateLimiter:
    """Token buckets keyed by caller."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, caller: str) -> float | None:
        """Take one request for ``caller``; return None, or the seconds to wait."""
        if self._limit.rate <= 0:
            return None
        now = self._clock()
        tokens, updated = self._buckets.pop(caller, (float(self._limit.burst), now))
        tokens = min(float(self._limit.burst), tokens + (now - updated) * self._limit.rate)
        if tokens >= 1.0:
            self._store(caller, tokens - 1.0, now)
            return None
        self._store(caller, tokens, now)
        return (1.0 - tokens) / self._limit.rate

    def peek(self, caller: str) -> float | None:
        """Return the seconds ``caller`` must wait, or None, without taking a request."""
        if self._limit.rate <= 0 or caller not in self._buckets:
            return None
        tokens, updated = self._buckets[caller]
        refilled = tokens + (self._clock() - updated) * self._limit.rate
        if refilled >= 1.0:
            return None
        return (1.0 - refilled) / self._limit.rate

    def _store(self, caller: str, tokens: float, now: float) -> None:
        self._buckets[caller] = (tokens, now)
        while len(self._buckets) > MAX_TRACKED_CALLERS:
            self._buckets.popitem(last=False)


def retry_after_header(seconds: float) -> str:
    """Return ``seconds`` as a Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
