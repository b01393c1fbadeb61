"""Malformed bodies and unusable tokens get a clear 4xx and cost no upstream call.

The attacks by kind (shapes, oracles, discovery, amplification, leakage,
audit gaps) are tested in ``tests/security``.
"""

from __future__ import annotations

import pytest
from conftest import Harness

from gateway.identity import issue_token


@pytest.mark.parametrize("body", [
    b'{"query": "{ __typename }", "variables": {"v": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
    b'{"query": "{ __typename }", "variables": {"v": ' + b"9" * 5000 + b"}}",
])
async def test_pathological_json_rejected(harness: Harness, body: bytes) -> None:
    response = await harness.client.post(
        "/graphql", content=body, headers={"Authorization": f"Bearer {harness.token('sales')}",
                                           "Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.json()["errors"][0]["message"] == "request body is not valid JSON"


async def test_declared_length_over_limit(harness: Harness) -> None:
    response = await harness.client.post(
        "/graphql", content=b"{}", headers={
            "Authorization": f"Bearer {harness.token('sales')}",
            "Content-Type": "application/json", "Content-Length": "999999999"})

    assert response.status_code == 413


@pytest.mark.parametrize("subject", ["", "   ", "user\ninjected"])
async def test_unusable_subject_unauthenticated(harness: Harness, subject: str) -> None:
    token = issue_token(harness.signing_key, user=subject, roles=["sales"], purpose="sales")

    response = await harness.query("{ __typename }", token=token)

    assert response.status_code == 401
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
