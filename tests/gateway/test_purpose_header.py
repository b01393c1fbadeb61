"""The ``Fonte-Purpose`` request header and the purposes a token allows.

A token names one purpose (``purpose``) or several (``purposes``). The header
picks one of them for the request; a purpose the token does not allow is
rejected with HTTP 403 before anything is read. Without the header, a token
with several purposes states none, so only rows for any purpose (``*``) apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Harness,
    field_errors,
    last4,
    read_audit_records,
    seeded_iban,
    start_harness,
    write_policy_dir,
)

from gateway.demo.data import DemoData

CARD = "query($id: ID!) { customer(id: $id) { name pec creditLimit iban } }"


def _card_errors(body: dict[str, Any]) -> set[str]:
    return {str(path[-1]) for path, code, _ in field_errors(body) if code == "FORBIDDEN"}


async def test_header_picks_billing(harness: Harness) -> None:
    token = harness.token_with("sales", "finance", purposes=["sales", "billing"])
    account_id = harness.customer_ids(1)[0]
    response = await harness.query(CARD, variables={"id": account_id}, token=token,
                                   headers={"Fonte-Purpose": "billing"})
    body = response.json()
    records = await read_audit_records(harness.data_dir)
    assert response.status_code == 200
    assert _card_errors(body) == {"pec"}
    assert body["data"]["customer"]["creditLimit"] is not None
    assert body["data"]["customer"]["iban"] == seeded_iban(harness.data, account_id)
    assert [record["purpose"] for record in records] == ["billing"]


async def test_header_picks_sales(harness: Harness) -> None:
    token = harness.token_with("sales", "finance", purposes=["sales", "billing"])
    account_id = harness.customer_ids(1)[0]
    response = await harness.query(CARD, variables={"id": account_id}, token=token,
                                   headers={"Fonte-Purpose": "sales"})
    body = response.json()
    records = await read_audit_records(harness.data_dir)
    assert response.status_code == 200
    assert _card_errors(body) == {"creditLimit"}
    assert body["data"]["customer"]["pec"] is not None
    assert body["data"]["customer"]["iban"] == last4(seeded_iban(harness.data, account_id))
    assert [record["purpose"] for record in records] == ["sales"]


@pytest.mark.parametrize(("claims", "header"), [
    ({"purposes": ["sales", "support"]}, "billing"),
    ({"purpose": "sales"}, "support"),
    ({}, "sales"),
])
async def test_header_not_in_token(harness: Harness, claims: dict[str, Any],
                                   header: str) -> None:
    token = harness.token_with("sales", **claims)
    response = await harness.query(CARD, variables={"id": harness.customer_ids(1)[0]},
                                   token=token, headers={"Fonte-Purpose": header})
    body = response.json()
    assert response.status_code == 403
    assert [error["extensions"]["code"] for error in body["errors"]] == ["FORBIDDEN"]
    assert header in body["errors"][0]["message"]
    assert "data" not in body
    assert harness.crm_requests() == []
    assert await read_audit_records(harness.data_dir) == []


async def test_long_header_cut_in_error(harness: Harness) -> None:
    token = harness.token_with("sales", purpose="sales")
    header = "p" * 5000
    response = await harness.query(CARD, variables={"id": harness.customer_ids(1)[0]},
                                   token=token, headers={"Fonte-Purpose": header})
    message = response.json()["errors"][0]["message"]
    assert response.status_code == 403
    assert message.startswith(f"purpose {'p' * 80!r}... (5000 characters) is not one the "
                              "bearer token allows (sales)")
    assert len(message) < 200


async def test_header_matches_single_purpose(harness: Harness) -> None:
    token = harness.token_with("sales", purpose="sales")
    response = await harness.query(CARD, variables={"id": harness.customer_ids(1)[0]},
                                   token=token, headers={"Fonte-Purpose": "sales"})
    assert response.status_code == 200
    assert _card_errors(response.json()) == {"creditLimit"}


async def test_header_purpose_unlisted_for_role(harness: Harness) -> None:
    # The token allows billing, but purposes.toml does not list it for sales.
    token = harness.token_with("sales", purposes=["sales", "billing"])
    response = await harness.query(CARD, variables={"id": harness.customer_ids(1)[0]},
                                   token=token, headers={"Fonte-Purpose": "billing"})
    body = response.json()
    assert response.status_code == 200
    assert body["data"] == {"customer": None}
    assert field_errors(body) == [(["customer"], "FORBIDDEN",
                                   "Not authorised to read Query.customer.")]


# A clerk reads ids for any purpose and names only for sales.
CLERK_RULES = """\
p, clerk, non_personal, *, allow, -
p, clerk, identity, sales, allow, -
"""
CLERK_PURPOSES = """\
[purposes]
clerk = ["sales", "support"]
"""


@pytest.mark.parametrize(("claims", "header", "name_served"), [
    ({"purposes": ["sales", "support"]}, None, False),
    ({"purposes": ["sales", "support"]}, "sales", True),
    ({"purposes": ["support", "sales"]}, "support", False),
    ({"purposes": ["sales"]}, None, True),
    ({}, None, False),
], ids=["list, no header", "list, header", "list, other header", "list of one",
        "no purpose claim"])
async def test_purpose_list_and_header(demo_data: DemoData, tmp_path: Path,
                                       claims: dict[str, Any], header: str | None,
                                       name_served: bool) -> None:
    policy_dir = write_policy_dir(tmp_path / "policy", CLERK_RULES, CLERK_PURPOSES)
    async with start_harness(demo_data, tmp_path / "data", policy_dir=policy_dir) as harness:
        account_id = harness.customer_ids(1)[0]
        headers = {} if header is None else {"Fonte-Purpose": header}
        response = await harness.query("query($id: ID!) { customer(id: $id) { id name } }",
                                       variables={"id": account_id},
                                       token=harness.token_with("clerk", **claims),
                                       headers=headers)
    body = response.json()
    assert response.status_code == 200
    assert body["data"]["customer"]["id"] == account_id
    if name_served:
        assert field_errors(body) == []
        assert body["data"]["customer"]["name"] is not None
    else:
        assert body["data"]["customer"]["name"] is None
        assert field_errors(body) == [(["customer", "name"], "FORBIDDEN",
                                       "Not authorised to read Customer.name.")]
