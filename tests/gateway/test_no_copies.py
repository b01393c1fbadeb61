"""The gateway keeps no copy of personal data: not in its data folder, not in its logs.

A workload of every role, lists and lookups, denied and masked fields, an
upstream failure and malformed requests runs with every logger at DEBUG.
Afterwards no personal string of the demo data may appear in any file under
the data folder (the SQLite WAL and shared-memory files included), in any
formatted log record, or in what ``fonte audit export`` prints. The responses
to the ``it`` role contain no personal string either, because it reads names
and e-mail addresses only as pseudonyms, and no response to sales contains an
IBAN.

Values are also searched in the encodings they would have inside a URL or a
JSON document, because a leaked search term shows up percent-encoded in a
logged request URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from conftest import Harness, start_harness
from typer.testing import CliRunner

from gateway.cli import app
from gateway.demo.data import DemoData

LIST_QUERY = """{ customers(first: 5) { edges { node {
  id name vatNumber pec phone street city email creditLimit openBalance iban
  contacts { firstName lastName email phone title }
  opportunities { name amount }
  orders(first: 2) { number amountTotal customer { name pec } shipments { carrier }
                     invoices { number } }
  invoices(first: 2) { number amountResidual }
} } } }"""
LOOKUP_QUERY = """query Card($id: ID!) { customer(id: $id) {
  name vatNumber pec iban creditLimit contacts(first: 2) { email phone } } }"""


def _encodings(values: list[str]) -> dict[str, set[str]]:
    """Map each value to its raw, percent-encoded and JSON-escaped forms."""
    return {value: {value, quote(value), quote_plus(value), json.dumps(value)[1:-1]}
            for value in values}


def _leaks(text: str, forms: dict[str, set[str]]) -> list[str]:
    return [value for value, encoded in forms.items() if any(form in text for form in encoded)]


def _file_leaks(data_dir: Path, forms: dict[str, set[str]]) -> list[str]:
    encoded = {value: [form.encode("utf-8") for form in variants]
               for value, variants in forms.items()}
    found: list[str] = []
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        content = path.read_bytes()
        found.extend(f"{path.relative_to(data_dir)}: {value!r}"
                     for value, needles in encoded.items()
                     if any(needle in content for needle in needles))
    return found


def _log_leaks(caplog: pytest.LogCaptureFixture, forms: dict[str, set[str]]) -> list[str]:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [f"{record.name}: {value!r}" for record in caplog.records
            for value in _leaks(formatter.format(record), forms)]


async def _run_workload(harness: Harness) -> dict[str, list[str]]:
    """Run the workload; return the response bodies of each role's own requests."""
    ids = harness.customer_ids(3)
    bodies: dict[str, list[str]] = defaultdict(list)
    for role in ("sales", "finance", "it", "dpo"):
        listed = await harness.query(LIST_QUERY, role=role)
        card = await harness.query(LOOKUP_QUERY, role=role, variables={"id": ids[1]},
                                   operation_name="Card")
        bodies[role] += [listed.text, card.text]

    owner = next(a for a in harness.data.crm["Account"] if a["Id"] == ids[1])
    rep = harness.token_with("sales-rep", user=str(owner["OwnerId"]), purpose="sales",
                             region=str(owner["Region__c"]))
    listed = await harness.query(LIST_QUERY, token=rep)
    card = await harness.query(LOOKUP_QUERY, variables={"id": ids[1]}, token=rep)
    bodies["sales-rep"] += [listed.text, card.text]
    both = harness.token_with("sales", "finance", purposes=["sales", "billing"])
    for purpose in ("sales", "billing", "compliance"):
        answer = await harness.query(LOOKUP_QUERY, variables={"id": ids[1]}, token=both,
                                     headers={"Fonte-Purpose": purpose})
        bodies[f"sales+finance/{purpose}"].append(answer.text)

    harness.erp_app.state.control.fault_status = 503
    await harness.query(LIST_QUERY, role="finance")
    harness.erp_app.state.control.fault_status = None

    account = next(a for a in harness.data.crm["Account"] if a["Id"] == ids[2])
    await harness.query("{ customers(first: 2) { edges { node { nam } } } }")
    await harness.query("{ customers(first: 2 { edges } }")
    await harness.query(LOOKUP_QUERY, variables={"id": {"name": account["Name"]}})
    await harness.client.post("/graphql", json={"query": LIST_QUERY},
                              headers={"Authorization": f"Bearer {account['Name']}"})
    return bodies


def _export_outputs(data_dir: Path, account_id: str) -> list[str]:
    runner = CliRunner()
    outputs = []
    for extra in ([], ["--format", "csv"], ["--subject", account_id]):
        result = runner.invoke(app, ["audit", "export", "--data-dir", str(data_dir), *extra])
        assert result.exit_code == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    return outputs


def test_workload_leaves_no_copies(demo_data: DemoData, tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    # The export command calls asyncio.run, so this test is synchronous and
    # runs the gateway in an event loop of its own.
    caplog.set_level(logging.DEBUG)
    values = demo_data.personal_values()
    forms = _encodings(values)
    data_dir = tmp_path / "data"
    leaks_while_running: list[str] = []
    bodies: dict[str, list[str]] = {}

    async def serve_workload() -> None:
        async with start_harness(demo_data, data_dir) as harness:
            bodies.update(await _run_workload(harness))
            leaks_while_running.extend(_file_leaks(data_dir, forms))

    asyncio.run(serve_workload())
    account_id = sorted(a["Id"] for a in demo_data.crm["Account"])[1]

    assert len(values) > 1000
    assert leaks_while_running == []
    assert _file_leaks(data_dir, forms) == []
    assert _log_leaks(caplog, forms) == []
    for output in _export_outputs(data_dir, account_id):
        assert _leaks(output, forms) == []
    _check_masked_responses(demo_data, bodies)


def _check_masked_responses(data: DemoData, bodies: dict[str, list[str]]) -> None:
    """Check that no response shows a value its role reads only masked."""
    ibans = _encodings(sorted({str(bank["acc_number"]) for bank in data.erp["res.partner.bank"]}))
    personal = _encodings(data.personal_values())
    it_bodies = bodies["it"]
    sales_bodies = bodies["sales"] + bodies["sales-rep"] + bodies["sales+finance/sales"]

    assert [body for body in it_bodies if '"pn:' not in body] == []
    assert [_leaks(body, personal) for body in it_bodies] == [[], []]
    assert [body for body in sales_bodies if '"*******' not in body] == []
    assert [_leaks(body, ibans) for body in sales_bodies] == [[]] * len(sales_bodies)
    # With billing the finance rules apply and the IBAN is served whole.
    assert any(_leaks(body, ibans) for body in bodies["sales+finance/billing"])


async def test_name_search_not_logged(harness: Harness,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    account = next(a for a in harness.data.crm["Account"]
                   if a["Id"] == harness.customer_ids(1)[0])
    response = await harness.query(
        "query($s: String!) { customers(first: 2, search: $s) { edges { node { id } } } }",
        variables={"s": account["Name"]})
    assert response.json()["data"]["customers"]["edges"] == [{"node": {"id": account["Id"]}}]
    assert _log_leaks(caplog, _encodings([account["Name"]])) == []
