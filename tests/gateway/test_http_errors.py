"""Requests the gateway rejects before running them: 401, 400, 413 and 415.

Authentication comes first, so every body check here sends a valid token.
Each rejection has one error with ``extensions.code`` and no ``data``.
"""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest
from conftest import Harness
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.identity import DEV_AUDIENCE, DEV_ISSUER, issue_token

TYPENAME_QUERY = {"query": "{ __typename }"}


def _token_variants(harness: Harness) -> dict[str, str]:
    """Return Authorization header values that must each be rejected."""

    def signed(**overrides: Any) -> str:
        options: dict[str, Any] = {"user": "u-test", "roles": ["sales"], "purpose": "sales",
                                   **overrides}
        key = options.pop("key", harness.signing_key)
        return "Bearer " + issue_token(key, **options)

    unsigned = jwt.encode({"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "u-test",
                           "roles": ["sales"], "purpose": "sales", "exp": 4_102_444_800},
                          "", algorithm="none")
    return {
        "not_bearer": "Basic dXNlcjpwYXNz",
        "empty_bearer": "Bearer ",
        "garbage": "Bearer not.a.jwt",
        "other_key": signed(key=Ed25519PrivateKey.generate()),
        "expired": signed(ttl_seconds=-100),
        "wrong_audience": signed(audience="another-service"),
        "wrong_issuer": signed(issuer="https://issuer.invalid"),
        "alg_none": "Bearer " + unsigned,
    }


async def _post(harness: Harness, **kwargs: Any) -> httpx.Response:
    return await harness.client.post("/graphql", **kwargs)


def _bearer(harness: Harness) -> dict[str, str]:
    return {"Authorization": f"Bearer {harness.token('sales')}"}


def _single_error(response: httpx.Response) -> tuple[str, str]:
    body = response.json()
    assert "data" not in body
    assert len(body["errors"]) == 1
    return body["errors"][0]["extensions"]["code"], body["errors"][0]["message"]


async def test_missing_authorization_401(harness: Harness) -> None:
    response = await _post(harness, json=TYPENAME_QUERY)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="fonte"'
    assert _single_error(response)[0] == "UNAUTHENTICATED"


@pytest.mark.parametrize("variant", ["not_bearer", "empty_bearer", "garbage", "other_key",
                                     "expired", "wrong_audience", "wrong_issuer", "alg_none"])
async def test_bad_token_401(harness: Harness, variant: str) -> None:
    header = _token_variants(harness)[variant]
    response = await _post(harness, json=TYPENAME_QUERY, headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="fonte"'
    assert _single_error(response)[0] == "UNAUTHENTICATED"


async def test_expired_token_message(harness: Harness) -> None:
    header = _token_variants(harness)["expired"]
    response = await _post(harness, json=TYPENAME_QUERY, headers={"Authorization": header})
    assert _single_error(response) == ("UNAUTHENTICATED",
                                       "the bearer token has expired; request a new one")


async def test_rejected_token_reads_nothing(harness: Harness) -> None:
    header = _token_variants(harness)["other_key"]
    await _post(harness, json={"query": "{ customers(first: 1) { edges { node { name } } } }"},
                headers={"Authorization": header})
    assert harness.crm_requests() == []


async def test_valid_token_accepted(harness: Harness) -> None:
    response = await _post(harness, json=TYPENAME_QUERY, headers=_bearer(harness))
    assert response.status_code == 200
    assert response.json() == {"data": {"__typename": "Query"}}


BAD_DOCUMENTS = {
    "syntax_error": {"query": "{ customers(first: 1) { edges { node { name } }"},
    "unknown_field": {"query": "{ customers(first: 1) { edges { node { nam } } } }"},
    "several_operations": {"query": "query A { __typename } query B { __typename }"},
    "unknown_operation": {"query": "query A { __typename }", "operationName": "B"},
    "variable_wrong_type": {
        "query": "query($n: Int!) { customers(first: $n) { edges { cursor } } }",
        "variables": {"n": "ten"}},
    "variable_missing": {"query": "query($id: ID!) { customer(id: $id) { id } }"},
    "query_not_string": {"query": 42},
    "query_empty": {"query": "  "},
    "variables_not_object": {"query": "{ __typename }", "variables": [1]},
    "operation_name_not_string": {"query": "{ __typename }", "operationName": 7},
}


@pytest.mark.parametrize("case", sorted(BAD_DOCUMENTS))
async def test_bad_document_400(harness: Harness, case: str) -> None:
    response = await _post(harness, json=BAD_DOCUMENTS[case], headers=_bearer(harness))
    assert response.status_code == 400
    assert _single_error(response)[0] == "BAD_REQUEST"


async def test_unknown_field_no_suggestion(harness: Harness) -> None:
    response = await _post(harness, json=BAD_DOCUMENTS["unknown_field"], headers=_bearer(harness))
    code, message = _single_error(response)
    assert code == "BAD_REQUEST"
    assert message == "Cannot query field 'nam' on type 'Customer'."
    assert "Did you mean" not in message


async def test_several_operations_message(harness: Harness) -> None:
    response = await _post(harness, json=BAD_DOCUMENTS["several_operations"],
                           headers=_bearer(harness))
    assert _single_error(response) == (
        "BAD_REQUEST", "The document has several operations; name one with operationName.")


async def test_operation_name_selects(harness: Harness) -> None:
    body = {"query": "query A { a: __typename } query B { b: __typename }", "operationName": "B"}
    response = await _post(harness, json=body, headers=_bearer(harness))
    assert response.status_code == 200
    assert response.json() == {"data": {"b": "Query"}}


async def test_body_not_json_400(harness: Harness) -> None:
    response = await _post(harness, content=b'{"query": ',
                           headers={**_bearer(harness), "Content-Type": "application/json"})
    assert response.status_code == 400
    assert _single_error(response) == ("BAD_REQUEST", "request body is not valid JSON")


SURROGATE_BODIES = {
    "search": (b'{"query": "query($s: String) { customers(first: 2, search: $s) '
               b'{ edges { node { name } } } }", "variables": {"s": "a\\ud800"}}',
               "variables.s"),
    "list_item": (b'{"query": "{ __typename }", "variables": {"v": ["ok", "\\udfff"]}}',
                  "variables.v[1]"),
    "member_name": (b'{"query": "{ __typename }", "variables": {"\\ud800": 1}}',
                    "a member name in variables"),
}


@pytest.mark.parametrize("case", SURROGATE_BODIES)
async def test_lone_surrogate_400(harness: Harness, case: str) -> None:
    # JSON allows a lone \ud800 escape, but no UTF-8 text or upstream query can carry it.
    body, path = SURROGATE_BODIES[case]

    response = await _post(harness, content=body,
                           headers={**_bearer(harness), "Content-Type": "application/json"})

    assert response.status_code == 400
    assert _single_error(response) == (
        "BAD_REQUEST",
        f"{path} contains a lone UTF-16 surrogate escape (\\ud800 to \\udfff), which is "
        "not a Unicode character; escape characters outside the BMP as a pair or send them "
        "as UTF-8")
    assert harness.crm_requests() == []


async def test_surrogate_pair_accepted(harness: Harness) -> None:
    response = await _post(
        harness, content=b'{"query": "query($s: String) { customers(first: 2, search: $s) '
                         b'{ edges { node { name } } } }", "variables": {"s": "\\ud83d\\ude00"}}',
        headers={**_bearer(harness), "Content-Type": "application/json"})

    assert response.status_code == 200
    assert response.json() == {"data": {"customers": {"edges": []}}}


@pytest.mark.parametrize("payload", [[{"query": "{ __typename }"}], "{ __typename }", 42])
async def test_body_not_object_400(harness: Harness, payload: Any) -> None:
    response = await _post(harness, json=payload, headers=_bearer(harness))
    assert response.status_code == 400
    assert _single_error(response) == (
        "BAD_REQUEST", "request body must be a JSON object with a 'query' member")


@pytest.mark.parametrize("content_type", ["text/plain", "application/graphql",
                                          "application/x-www-form-urlencoded"])
async def test_wrong_content_type_415(harness: Harness, content_type: str) -> None:
    response = await _post(harness, content=b'{"query": "{ __typename }"}',
                           headers={**_bearer(harness), "Content-Type": content_type})
    assert response.status_code == 415
    assert _single_error(response)[0] == "BAD_REQUEST"


async def test_charset_parameter_accepted(harness: Harness) -> None:
    response = await _post(harness, content=b'{"query": "{ __typename }"}',
                           headers={**_bearer(harness),
                                    "Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200


async def test_oversized_body_413(harness: Harness) -> None:
    padding = " " * harness.settings.max_body_bytes
    response = await _post(harness, json={"query": "{ __typename }" + padding},
                           headers=_bearer(harness))
    assert response.status_code == 413
    assert _single_error(response)[0] == "BAD_REQUEST"


async def test_bad_request_reads_nothing(harness: Harness) -> None:
    await _post(harness, json=BAD_DOCUMENTS["unknown_field"], headers=_bearer(harness))
    assert harness.crm_requests() == []
    assert harness.erp_requests() == []
