"""Oracles on hidden fields: no response may tell a caller what it cannot read.

A caller learns a hidden value or a hidden record's existence if filtering,
sorting, searching or paging depends on it, if a cursor carries it, or if
the response, the upstream traffic or the audit record differ between a
record it may not see and a record that does not exist. Responses are
compared structurally, never by timing.

The schema has no filter or order argument: ``customers`` takes only
``first``, ``after`` and ``search``, and pages in CRM account id order.
``test_list_arguments_fixed`` fails when an argument is added, so that its
oracle gets a test here.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from conftest import Harness, field_errors
from probe import Probe, send

from gateway.demo.control import RequestLogEntry

Caplog = pytest.LogCaptureFixture
LIST = "query($after: String) { customers(first: 2, after: $after) { edges { node { id } } } }"
LOOKUP = "query($id: ID!) { customer(id: $id) { id name } }"
SEARCH = "query($s: String) { customers(first: 5, search: $s) { edges { node { id } } } }"
# The valid form of an account id (prefix 001, 18 characters) that no demo account has.
MISSING_ID = "001000000000000AAA"
_IDS = re.compile(r"'001[0-9A-Za-z]{15}'")


def forged_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(b"\0" * 12 + ("c2:" + key).encode()).decode()


def _account(harness: Harness, index: int = 0) -> dict[str, Any]:
    account_id = harness.customer_ids(index + 1)[index]
    return next(a for a in harness.data.crm["Account"] if a["Id"] == account_id)


def _traffic(entries: list[RequestLogEntry]) -> list[tuple[Any, ...]]:
    """Return the upstream calls with account ids and searched text replaced by placeholders."""
    shapes = []
    for entry in entries:
        text = _IDS.sub("'<id>'", entry.filter or "")
        text = re.sub(r"LIKE '%[^%]*%'", "LIKE '%<text>%'", text)
        shapes.append((entry.entity, entry.keys, tuple(entry.fields or ()), text))
    return shapes


def _audit_shape(probe: Probe) -> list[dict[str, Any]]:
    """Return the audit records without the members that differ on every request."""
    varying = {"time", "request_id", "hash", "prev_hash", "seq"}
    return [{key: value for key, value in record.items() if key not in varying}
            for record in probe.audit]


def _same_observation(hidden: Probe, missing: Probe) -> None:
    assert hidden.status == missing.status
    assert hidden.body == missing.body
    assert _traffic(hidden.upstream) == _traffic(missing.upstream)
    assert _audit_shape(hidden) == _audit_shape(missing)


def _rep_token(harness: Harness) -> tuple[str, dict[str, Any]]:
    """Return a sales-rep token of the first account's owner and region, and an account
    of another region and owner, which the rep may not see."""
    own = _account(harness)
    hidden = next(a for a in harness.data.crm["Account"]
                  if a["Region__c"] != own["Region__c"] and a["OwnerId"] != own["OwnerId"])
    token = harness.token_with("sales-rep", user=str(own["OwnerId"]), purpose="sales",
                               region=str(own["Region__c"]))
    return token, hidden


# --- existing but hidden records look like missing ones ----------------------------------

async def test_rep_lookup_hidden_like_missing(harness: Harness, caplog: Caplog) -> None:
    token, hidden = _rep_token(harness)

    seen_hidden = await send(harness, caplog, LOOKUP, token=token, variables={"id": hidden["Id"]})
    seen_missing = await send(harness, caplog, LOOKUP, token=token, variables={"id": MISSING_ID})

    assert seen_hidden.body == {"data": {"customer": None}}
    assert [entry.entity for entry in seen_hidden.upstream] == ["Account"]
    assert seen_hidden.audit[0]["subjects"] == []
    _same_observation(seen_hidden, seen_missing)


async def test_rep_search_hidden_like_missing(harness: Harness, caplog: Caplog) -> None:
    token, hidden = _rep_token(harness)

    seen_hidden = await send(harness, caplog, SEARCH, token=token, variables={"s": hidden["Name"]})
    seen_missing = await send(harness, caplog, SEARCH, token=token,
                              variables={"s": "Nessuna Azienda Srl"})

    assert seen_hidden.body == {"data": {"customers": {"edges": []}}}
    assert seen_hidden.audit[0]["subjects"] == []
    assert seen_hidden.audit[0]["records"] == 0
    _same_observation(seen_hidden, seen_missing)


async def test_denied_root_same_for_missing(harness: Harness, caplog: Caplog) -> None:
    seen_existing = await send(harness, caplog, LOOKUP, role="dpo",
                               variables={"id": _account(harness)["Id"]})
    seen_missing = await send(harness, caplog, LOOKUP, role="dpo", variables={"id": MISSING_ID})

    assert field_errors(seen_existing.body) == [
        (["customer"], "FORBIDDEN", "Not authorised to read Query.customer.")]
    assert seen_existing.upstream == []
    assert seen_existing.audit[0]["outcome"] == "denied"
    _same_observation(seen_existing, seen_missing)


# --- searching and paging by hidden values ----------------------------------------------

async def test_search_on_masked_field(harness: Harness, caplog: Caplog) -> None:
    # it reads Customer.name only as a pseudonym, so a search by name would
    # confirm or deny a guessed name.
    probe = await send(harness, caplog, SEARCH, role="it",
                       variables={"s": _account(harness)["Name"]})

    assert probe.body["data"] == {"customers": None}
    assert field_errors(probe.body) == [
        (["customers"], "FORBIDDEN", "search needs read access to Customer.name.")]
    assert probe.upstream == []
    assert probe.decisions()["Customer.name"] == "mask"


async def test_search_on_denied_field(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog, SEARCH, role="dpo",
                       variables={"s": _account(harness)["Name"]})

    assert field_errors(probe.body) == [
        (["customers"], "FORBIDDEN", "Not authorised to read Query.customers.")]
    assert probe.upstream == []
    assert probe.audit[0]["outcome"] == "denied"


async def test_list_arguments_fixed(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog,
                       '{ __type(name: "Query") { fields { name args { name } } } }')

    fields = {f["name"]: [a["name"] for a in f["args"]]
              for f in probe.body["data"]["__type"]["fields"]}
    assert fields == {"customer": ["id"], "customers": ["first", "after", "search"]}
    assert probe.upstream == []
    assert probe.audit == []


async def test_page_order_ignores_hidden(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog, "{ customers(first: 5) { edges { node { id } } } }")

    ids = [edge["node"]["id"] for edge in probe.body["data"]["customers"]["edges"]]
    assert ids == harness.customer_ids(5)
    assert probe.crm[0].fields == ["Id"]
    assert probe.erp == []


async def test_cursor_carries_only_id(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog,
                       "{ customers(first: 1) { edges { cursor node { id } } } }", role="finance")

    edge = probe.body["data"]["customers"]["edges"][0]
    raw = base64.urlsafe_b64decode(edge["cursor"])
    assert raw[12:] == ("c2:" + edge["node"]["id"]).encode()
    assert probe.audit == []


@pytest.mark.parametrize("key", ["a" * 20_000, "0", "' OR Id != '"])
async def test_forged_cursor_rejected(harness: Harness, caplog: Caplog, key: str) -> None:
    probe = await send(harness, caplog, LIST, role="it", variables={"after": forged_cursor(key)})

    assert probe.status == 200
    assert field_errors(probe.body)[0][:2] == (["customers"], "BAD_REQUEST")
    assert probe.upstream == []
    assert probe.audit == []


async def test_issued_cursor_accepted(harness: Harness, caplog: Caplog) -> None:
    first = await send(harness, caplog, "{ customers(first: 2) { pageInfo { endCursor } } }")
    cursor = first.body["data"]["customers"]["pageInfo"]["endCursor"]

    probe = await send(harness, caplog, LIST, variables={"after": cursor})

    ids = [edge["node"]["id"] for edge in probe.body["data"]["customers"]["edges"]]
    assert ids == harness.customer_ids(4)[2:]
    assert len(probe.crm) == 1
    assert probe.crm[0].filter == f"Id > '{harness.customer_ids(2)[1]}'"
