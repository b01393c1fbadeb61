"""Persisted queries (trusted documents): registered operations by SHA-256 id.

In mode ``only`` nothing but the manifest's documents runs; in ``allow``
free text runs too; in ``off`` ids are not accepted. A request names a
document by ``documentId`` (optionally ``sha256:``-prefixed) or by Apollo's
``extensions.persistedQuery.sha256Hash``. A text sent with an id must hash
to it, and sending both never registers the text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, start_harness
from probe import Probe, send

from gateway.demo.data import DemoData
from gateway.errors import ConfigError
from gateway.persisted import PersistedQueries, PersistedQuerySettings, read_manifest

Caplog = pytest.LogCaptureFixture
CARD = "query Card($id: ID!) { customer(id: $id) { id name } }"
UNREGISTERED = "query Other($id: ID!) { customer(id: $id) { id } }"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def apollo_manifest(*documents: str) -> dict[str, Any]:
    return {"format": "apollo-persisted-query-manifest", "version": 1, "operations": [
        {"id": sha(document), "name": "Card", "type": "query", "body": document}
        for document in documents]}


def _write(path: Path, content: Any) -> Path:
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


async def _gateway(demo_data: DemoData, tmp_path: Path, mode: str) -> AsyncIterator[Harness]:
    manifest = _write(tmp_path / "manifest.json", apollo_manifest(CARD))
    persisted = PersistedQuerySettings(mode=mode, manifest=manifest)  # type: ignore[arg-type]
    async with start_harness(demo_data, tmp_path / "data",
                             overrides={"persisted_queries": persisted}) as harness:
        yield harness


@pytest.fixture
async def only(demo_data: DemoData, tmp_path: Path) -> AsyncIterator[Harness]:
    async for harness in _gateway(demo_data, tmp_path, "only"):
        yield harness


@pytest.fixture
async def allow(demo_data: DemoData, tmp_path: Path) -> AsyncIterator[Harness]:
    async for harness in _gateway(demo_data, tmp_path, "allow"):
        yield harness


def _variables(harness: Harness) -> dict[str, str]:
    return {"id": harness.customer_ids(1)[0]}


def _ran(probe: Probe, harness: Harness) -> None:
    account_id = harness.customer_ids(1)[0]
    name = next(a["Name"] for a in harness.data.crm["Account"] if a["Id"] == account_id)
    assert probe.body == {"data": {"customer": {"id": account_id, "name": name}}}
    assert [entry.entity for entry in probe.upstream] == ["Account"]
    assert len(probe.audit) == 1


def _rejected(probe: Probe, code: str) -> None:
    assert probe.status == 400
    assert probe.codes() == [code]
    assert probe.upstream == []
    assert probe.audit == []


# --- mode only ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["documentId", "prefixed", "apollo", "apollo with query"])
async def test_only_runs_registered(only: Harness, caplog: Caplog, shape: str) -> None:
    payload: dict[str, Any] = {"variables": _variables(only)}
    if shape == "documentId":
        payload["documentId"] = sha(CARD)
    elif shape == "prefixed":
        payload["documentId"] = "sha256:" + sha(CARD)
    else:
        payload["extensions"] = {"persistedQuery": {"version": 1, "sha256Hash": sha(CARD)}}
    if shape == "apollo with query":
        payload["query"] = CARD
    probe = await send(only, caplog, payload=payload)

    _ran(probe, only)
    assert probe.audit[0]["operation_name"] == "Card"


async def test_only_rejects_free_text(only: Harness, caplog: Caplog) -> None:
    probe = await send(only, caplog, CARD, variables=_variables(only))

    assert probe.body["errors"][0]["message"] == (
        "this gateway runs only registered operations; send documentId with the id of a "
        "registered operation instead of query")
    _rejected(probe, "PERSISTED_QUERY_REQUIRED")


async def test_only_unknown_id(only: Harness, caplog: Caplog) -> None:
    probe = await send(only, caplog, payload={"documentId": sha(UNREGISTERED),
                                              "variables": _variables(only)})

    assert probe.body["errors"][0]["message"] == (
        f"no registered operation has id {sha(UNREGISTERED)}; register it in the manifest, "
        "since clients cannot register operations")
    _rejected(probe, "PERSISTED_QUERY_NOT_FOUND")


async def test_hash_mismatch_rejected(only: Harness, caplog: Caplog) -> None:
    # A registered id with another text: the text must not run under its name.
    payload = {"query": UNREGISTERED, "variables": _variables(only),
               "extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha(CARD)}}}
    probe = await send(only, caplog, payload=payload)

    assert probe.body["errors"][0]["message"] == (
        f"the SHA-256 of query is {sha(UNREGISTERED)}, not the id sent with it ({sha(CARD)}); "
        "send the id of this exact text")
    _rejected(probe, "PERSISTED_QUERY_HASH_MISMATCH")


async def test_no_automatic_registration(only: Harness, caplog: Caplog) -> None:
    apq = {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha(UNREGISTERED)}},
           "variables": _variables(only)}

    first = await send(only, caplog, payload={**apq, "query": UNREGISTERED})
    again = await send(only, caplog, payload=apq)

    _rejected(first, "PERSISTED_QUERY_NOT_FOUND")
    _rejected(again, "PERSISTED_QUERY_NOT_FOUND")


@pytest.mark.parametrize("document_id", ["abc", 42, "sha1:" + "0" * 40, "g" * 64])
async def test_malformed_id_rejected(only: Harness, caplog: Caplog, document_id: Any) -> None:
    probe = await send(only, caplog, payload={"documentId": document_id})

    _rejected(probe, "BAD_REQUEST")


# --- mode allow and off ---------------------------------------------------------------------

async def test_allow_runs_free_text(allow: Harness, caplog: Caplog) -> None:
    probe = await send(allow, caplog, CARD, variables=_variables(allow))

    _ran(probe, allow)


async def test_allow_runs_registered(allow: Harness, caplog: Caplog) -> None:
    probe = await send(allow, caplog, payload={"documentId": sha(CARD),
                                               "variables": _variables(allow)})

    _ran(probe, allow)


async def test_allow_text_with_hash_not_stored(allow: Harness, caplog: Caplog) -> None:
    apq = {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha(UNREGISTERED)}},
           "variables": _variables(allow)}

    with_text = await send(allow, caplog, payload={**apq, "query": UNREGISTERED})
    id_only = await send(allow, caplog, payload=apq)

    assert with_text.body == {"data": {"customer": {"id": allow.customer_ids(1)[0]}}}
    _rejected(id_only, "PERSISTED_QUERY_NOT_FOUND")


async def test_off_rejects_ids(harness: Harness, caplog: Caplog) -> None:
    probe = await send(harness, caplog, payload={"documentId": sha(CARD)})

    assert probe.body["errors"][0]["message"] == (
        "this gateway has no registered operations; send the document in query")
    _rejected(probe, "PERSISTED_QUERY_NOT_SUPPORTED")


async def test_off_checks_sent_hash(harness: Harness, caplog: Caplog) -> None:
    payload = {"query": CARD, "variables": _variables(harness),
               "extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha(CARD)}}}

    matching = await send(harness, caplog, payload=payload)
    wrong = await send(harness, caplog, payload={**payload, "query": UNREGISTERED})

    _ran(matching, harness)
    _rejected(wrong, "PERSISTED_QUERY_HASH_MISMATCH")


# --- manifests ------------------------------------------------------------------------------

def test_manifest_formats(tmp_path: Path) -> None:
    apollo = _write(tmp_path / "apollo.json", apollo_manifest(CARD, UNREGISTERED))
    codegen = _write(tmp_path / "codegen.json", {"sha256:" + sha(CARD): CARD})

    assert read_manifest(apollo) == {sha(CARD): CARD, sha(UNREGISTERED): UNREGISTERED}
    assert read_manifest(codegen) == {sha(CARD): CARD}


@pytest.mark.parametrize(("content", "message"), [
    ({"0" * 64: CARD}, "is not the SHA-256 of its document"),
    ([CARD], "must be a JSON object"),
    ({"format": "apollo-persisted-query-manifest", "operations": "x"},
     "operations must be a list"),
    ({sha(CARD): 1}, "needs a string id and a string document"),
])
def test_manifest_invalid(tmp_path: Path, content: Any, message: str) -> None:
    path = _write(tmp_path / "manifest.json", content)

    with pytest.raises(ConfigError, match=message):
        read_manifest(path)


def test_manifest_missing(tmp_path: Path) -> None:
    settings = PersistedQuerySettings(mode="only", manifest=tmp_path / "absent.json")

    with pytest.raises(ConfigError, match="cannot read manifest"):
        PersistedQueries.load(settings)


def test_mode_needs_manifest() -> None:
    with pytest.raises(ConfigError, match="mode = 'allow' needs manifest"):
        PersistedQueries.load(PersistedQuerySettings(mode="allow"))
