"""Masked values the shipped policy serves, checked against the seeded demo data.

Sales reads ``Customer.iban`` as ``last4``: every character but the last 4
becomes ``*``. The ``it`` role reads customer names and e-mail addresses as
``pseudonym:it``: ``pn:`` and 26 base32 characters of an HMAC whose key is
derived from ``<data-dir>/keys/mask-pseudonym.key``. So the same customer gets
the same pseudonym in every request and after a restart with the same data
dir, and a different one under another data dir.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from conftest import (
    Harness,
    field_errors,
    last4,
    read_audit_records,
    seeded_iban,
    start_harness,
    write_policy_dir,
)

from gateway.audit.pseudonym import load_or_create_key
from gateway.demo.data import DemoData
from gateway.masks import PseudonymKeys, masker, parse_mask

IBAN_LIST = "{ customers(first: 50) { edges { node { id iban } } } }"
IT_LIST = "{ customers(first: 50) { edges { node { id name pec email } } } }"
PSEUDONYM = re.compile(r"pn:[a-z2-7]{26}")


def _nodes(body: dict[str, Any]) -> list[dict[str, Any]]:
    assert field_errors(body) == []
    return [edge["node"] for edge in body["data"]["customers"]["edges"]]


def _account(data: DemoData, account_id: str) -> dict[str, Any]:
    return next(a for a in data.crm["Account"] if a["Id"] == account_id)


def _partner(data: DemoData, account_id: str) -> dict[str, Any]:
    partner_id = int(_account(data, account_id)["ERP_Customer_Number__c"])
    return next(p for p in data.erp["res.partner"] if p["id"] == partner_id)


async def test_sales_iban_last4(harness: Harness) -> None:
    nodes = _nodes((await harness.query(IBAN_LIST)).json())
    assert len(nodes) == 50
    for node in nodes:
        iban = seeded_iban(harness.data, node["id"])
        assert node["iban"] == "*" * (len(iban) - 4) + iban[-4:], node["id"]


async def test_sales_iban_lookup(harness: Harness) -> None:
    account_id = harness.customer_ids(1)[0]
    response = await harness.query("query($id: ID!) { customer(id: $id) { iban } }",
                                   variables={"id": account_id})
    assert response.json() == {"data": {"customer": {
        "iban": last4(seeded_iban(harness.data, account_id))}}}


async def test_sales_rep_iban_last4(harness: Harness) -> None:
    account = _account(harness.data, harness.customer_ids(1)[0])
    token = harness.token_with("sales-rep", user=str(account["OwnerId"]), purpose="sales")
    response = await harness.query("query($id: ID!) { customer(id: $id) { iban } }",
                                   variables={"id": account["Id"]}, token=token)
    assert response.json() == {"data": {"customer": {
        "iban": last4(seeded_iban(harness.data, account["Id"]))}}}


async def test_it_pseudonyms_match_key(harness: Harness) -> None:
    keys = PseudonymKeys(load_or_create_key(harness.settings.mask_key_path))
    pseudonymise = masker(parse_mask("pseudonym:it"), "String", keys)
    nodes = _nodes((await harness.query(IT_LIST, role="it")).json())
    for node in nodes:
        account = _account(harness.data, node["id"])
        partner = _partner(harness.data, node["id"])
        assert node["name"] == pseudonymise(account["Name"])
        assert node["pec"] == pseudonymise(account["PEC_Email__c"])
        assert node["email"] == pseudonymise(partner["email"])
    names = [node["name"] for node in nodes]
    assert all(PSEUDONYM.fullmatch(name) for name in names)
    assert len(set(names)) == len(names)


async def test_it_pseudonym_repeats(harness: Harness) -> None:
    first = _nodes((await harness.query(IT_LIST, role="it")).json())
    second = _nodes((await harness.query(IT_LIST, role="it")).json())
    assert first == second


async def _it_names(data: DemoData, data_dir: Path) -> dict[str, str]:
    async with start_harness(data, data_dir) as harness:
        body = (await harness.query(IT_LIST, role="it")).json()
    return {node["id"]: node["name"] for node in _nodes(body)}


async def test_it_pseudonym_survives_restart(demo_data: DemoData, tmp_path: Path) -> None:
    before = await _it_names(demo_data, tmp_path / "data")
    after = await _it_names(demo_data, tmp_path / "data")
    assert len(before) == 50
    assert after == before


async def test_it_pseudonym_per_data_dir(demo_data: DemoData, tmp_path: Path) -> None:
    first_dir = await _it_names(demo_data, tmp_path / "first")
    second_dir = await _it_names(demo_data, tmp_path / "second")
    assert first_dir.keys() == second_dir.keys()
    assert [account_id for account_id, name in first_dir.items()
            if second_dir[account_id] == name] == []


async def test_it_search_by_masked_name(harness: Harness) -> None:
    # Searching by a masked name would confirm a guessed name, so the search is rejected.
    name = _account(harness.data, harness.customer_ids(1)[0])["Name"]
    response = await harness.query(
        "query($s: String!) { customers(first: 2, search: $s) { edges { node { id } } } }",
        role="it", variables={"s": name})
    body = response.json()
    assert body["data"] == {"customers": None}
    assert field_errors(body) == [(["customers"], "FORBIDDEN",
                                   "search needs read access to Customer.name.")]


async def test_masked_values_not_audited(harness: Harness) -> None:
    it_body = (await harness.query(IT_LIST, role="it")).json()
    sales_body = (await harness.query(IBAN_LIST)).json()
    text = json.dumps(await read_audit_records(harness.data_dir), ensure_ascii=False)
    served = [value for node in _nodes(it_body) + _nodes(sales_body)
              for key, value in node.items() if key != "id"]
    assert served
    assert [value for value in served if value in text] == []


# A category-wide mask meets a field of another scalar: last4 cannot show a
# Decimal, so the credit limit is served as null, with no error.
CATEGORY_MASK_RULES = """\
p, masker, non_personal, *, allow, -
p, masker, financial, *, allow, last4
"""


async def test_category_mask_unfit_scalar(demo_data: DemoData, tmp_path: Path) -> None:
    policy_dir = write_policy_dir(tmp_path / "policy", CATEGORY_MASK_RULES)
    async with start_harness(demo_data, tmp_path / "data", policy_dir=policy_dir) as harness:
        body = (await harness.query(
            "{ customers(first: 5) { edges { node { id iban creditLimit } } } }",
            token=harness.token("masker"))).json()
        records = await read_audit_records(harness.data_dir)

    nodes = _nodes(body)
    assert [node["creditLimit"] for node in nodes] == [None] * 5
    assert [node["iban"] for node in nodes] == [
        last4(seeded_iban(demo_data, node["id"])) for node in nodes]
    decisions = {entry["field"]: (entry["decision"], entry["mask"])
                 for entry in records[-1]["fields"]}
    assert decisions["Customer.creditLimit"] == ("mask", "last4")
