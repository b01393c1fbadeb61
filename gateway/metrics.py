"""Prometheus metrics of one gateway process, served at ``GET /metrics``.

Labels are system names, HTTP statuses and outcomes only: never a user,
a record id or a value. Upstream and circuit figures are read from the
sources when Prometheus scrapes, so the request path only counts requests.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.sources import Source
from gateway.sources.resilience import ResilientSource
from gateway.sources.salesforce import SalesforceSource

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class GatewayMetrics:
    """The registry of one gateway, with the counters the request path updates."""

    def __init__(self, sources: Mapping[str, Source]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("fonte_requests", "GraphQL requests by HTTP status.",
                                ["status"], registry=self.registry)
        self.duration = Histogram("fonte_request_duration_seconds",
                                  "Time to answer a GraphQL request.", registry=self.registry)
        self.registry.register(_SourceCollector(sources))

    def observe(self, status: int, seconds: float) -> None:
        self.requests.labels(status=str(status)).inc()
        self.duration.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SourceCollector(Collector):
    """Reads circuit state, attempts and API usage from the sources at scrape time."""

    def __init__(self, sources: Mapping[str, Source]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        circuit = GaugeMetricFamily("fonte_upstream_circuit_state",
                                    "Circuit breaker per system: 0 closed, 1 half-open, 2 open.",
                                    labels=["system"])
        attempts = CounterMetricFamily("fonte_upstream_attempts",
                                       "Upstream read attempts, retries included.",
                                       labels=["system"])
        failures = CounterMetricFamily("fonte_upstream_failures",
                                       "Upstream read attempts that failed.", labels=["system"])
        usage = GaugeMetricFamily("fonte_salesforce_api_usage",
                                  "Salesforce API requests used, from Sforce-Limit-Info.",
                                  labels=["system"])
        limit = GaugeMetricFamily("fonte_salesforce_api_limit",
                                  "Salesforce API request allowance, from Sforce-Limit-Info.",
                                  labels=["system"])
        for name, source in self._sources.items():
            inner = source
            if isinstance(source, ResilientSource):
                circuit.add_metric([name], _CIRCUIT_STATES[source.breaker_state])
                attempts.add_metric([name], source.attempts)
                failures.add_metric([name], source.failures)
                inner = source.inner
            if isinstance(inner, SalesforceSource) and inner.api_usage is not None:
                usage.add_metric([name], inner.api_usage[0])
                limit.add_metric([name], inner.api_usage[1])
        yield from (circuit, attempts, failures, usage, limit)
