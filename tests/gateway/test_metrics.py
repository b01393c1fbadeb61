"""GET /metrics: request counts, circuit state and Salesforce API usage, without values."""

from __future__ import annotations

from conftest import Harness


async def test_metrics_count_requests(harness: Harness) -> None:
    await harness.query("{ customers(first: 2) { edges { node { name openBalance } } } }")
    await harness.client.post("/graphql", json={"query": "{ __typename }"})

    text = (await harness.client.get("/metrics")).text

    assert 'fonte_requests_total{status="200"} 1.0' in text
    assert 'fonte_requests_total{status="401"} 1.0' in text
    assert 'fonte_upstream_circuit_state{system="crm"} 0.0' in text
    assert 'fonte_upstream_circuit_state{system="erp"} 0.0' in text


async def test_metrics_read_api_usage(harness: Harness) -> None:
    await harness.query("{ customers(first: 2) { edges { node { id } } } }")

    text = (await harness.client.get("/metrics")).text

    assert 'fonte_salesforce_api_usage{system="crm"}' in text
    assert 'fonte_salesforce_api_limit{system="crm"} 15000.0' in text
    assert 'fonte_upstream_attempts_total{system="crm"} 1.0' in text


async def test_metrics_open_circuit(harness: Harness) -> None:
    harness.erp_app.state.control.fault_status = 503
    for _ in range(5):
        await harness.query("{ customers(first: 1) { edges { node { openBalance } } } }")

    text = (await harness.client.get("/metrics")).text

    assert 'fonte_upstream_circuit_state{system="erp"} 2.0' in text


async def test_metrics_hold_no_values(harness: Harness) -> None:
    await harness.query("{ customers(first: 20) { edges { node { name pec phone iban } } } }")

    text = (await harness.client.get("/metrics")).text

    leaks = [value for value in harness.data.personal_values() if value in text]
    assert leaks == []
