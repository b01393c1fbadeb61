"""Tests of export_records: exact JSON Lines and CSV output, filters and errors."""

from __future__ import annotations

import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import cast

import pytest

from gateway.audit.chain import GENESIS_HASH, chain_hash
from gateway.audit.export import ExportFilter, export_records
from gateway.audit.operations import admin_event, record_admin_event
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import AuditEvent, canonical_json
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.errors import AuditError, AuditIntegrityError

PSEUDONYMS = Pseudonymizer(b"export-test-key".ljust(32, b"."))
CUSTOMER_REF = PSEUDONYMS.token("customer", "C-1001")
CONTACT_REF = PSEUDONYMS.token("contact", "K-7")
OPERATION_HASH = "ab" * 32

EVENTS: list[AuditEvent] = [
    cast(
        AuditEvent,
        {
            "time": "2026-12-04T10:00:00.000Z",
            "request_id": "req-1",
            "actor": "emp-1",
            "roles": ["sales", "support"],
            "purpose": "support",
            "client": "crm-web",
            "operation_name": "CustomerCard",
            "operation_hash": OPERATION_HASH,
            "subjects": [{"type": "customer", "ref": CUSTOMER_REF}],
            "fields": [
                {
                    "field": "Customer.email",
                    "category": "contact.email",
                    "decision": "allow",
                    "rule": "sales-read-contact",
                    "mask": None,
                },
                {
                    "field": "Customer.phone",
                    "category": "contact.phone",
                    "decision": "mask",
                    "rule": "support-masked-phone",
                    "mask": "last4",
                },
            ],
            "systems": ["crm"],
            "records": 1,
            "outcome": "success",
            "policy_version": "7",
        },
    ),
    cast(
        AuditEvent,
        {
            "time": "2026-12-04T11:00:00.000Z",
            "request_id": "req-2",
            "actor": "emp-2",
            "roles": ["finance"],
            "purpose": None,
            "client": None,
            "operation_name": None,
            "operation_hash": OPERATION_HASH,
            "subjects": [
                {"type": "customer", "ref": CUSTOMER_REF},
                {"type": "contact", "ref": CONTACT_REF},
            ],
            "fields": [
                {
                    "field": "Customer.iban",
                    "category": "financial.iban",
                    "decision": "deny",
                    "rule": "default-deny",
                    "mask": None,
                },
            ],
            "systems": ["crm", "erp"],
            "records": 2,
            "outcome": "partial",
            "policy_version": "7",
        },
    ),
    cast(
        AuditEvent,
        {
            "time": "2026-12-04T12:00:00.000Z",
            "request_id": "req-3",
            "actor": "emp-1",
            "roles": [],
            "purpose": "marketing",
            "client": "crm-web",
            "operation_name": '=HYPERLINK("x")',
            "operation_hash": OPERATION_HASH,
            "subjects": [{"type": "contact", "ref": CONTACT_REF}],
            "fields": [],
            "systems": [],
            "records": 0,
            "outcome": "denied",
            "policy_version": "7",
        },
    ),
]


@pytest.fixture
async def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    store = await SQLiteAuditStore.open(path)
    try:
        for event in EVENTS:
            await store.append(event)
    finally:
        await store.close()
    return path


def sealed_subjects(path: Path) -> dict[int, list[dict[str, str]]]:
    """Read the sealed subjects of each stored body, the only random part of a record."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT seq, body FROM audit_record ORDER BY seq").fetchall()
    return {seq: json.loads(body)["subjects"] for seq, body in rows}


def expected_records(path: Path) -> list[dict[str, object]]:
    """Compute the exported records independently of the store, from the sealed subjects."""
    sealed = sealed_subjects(path)
    records: list[dict[str, object]] = []
    prev_hash = GENESIS_HASH
    for seq, event in enumerate(EVENTS, start=1):
        body = {**event, "subjects": sealed[seq], "seq": seq, "prev_hash": prev_hash}
        record_hash = chain_hash(prev_hash, seq, canonical_json(body))
        records.append({**body, "hash": record_hash})
        prev_hash = record_hash
    return records


async def export_text(path: Path, fmt: str, filters: ExportFilter) -> tuple[int, str]:
    out = io.StringIO()
    count = await export_records(path, out, fmt=fmt, filters=filters)  # type: ignore[arg-type]
    return count, out.getvalue()


async def test_jsonl_export_is_exact(store_path: Path) -> None:
    count, output = await export_text(store_path, "jsonl", ExportFilter())
    expected = expected_records(store_path)
    hash_1 = expected[0]["hash"]
    sealed_1 = sealed_subjects(store_path)[1][0]["seq_sealed"]

    lines = output.split("\n")
    assert count == 3
    assert len(lines) == 4
    assert lines[3] == ""
    assert lines[0] == (
        '{"actor":"emp-1","client":"crm-web","fields":['
        '{"category":"contact.email","decision":"allow","field":"Customer.email",'
        '"mask":null,"rule":"sales-read-contact"},'
        '{"category":"contact.phone","decision":"mask","field":"Customer.phone",'
        '"mask":"last4","rule":"support-masked-phone"}],'
        f'"hash":"{hash_1}","operation_hash":"{OPERATION_HASH}",'
        '"operation_name":"CustomerCard","outcome":"success","policy_version":"7",'
        f'"prev_hash":"{GENESIS_HASH}","purpose":"support","records":1,'
        '"request_id":"req-1","roles":["sales","support"],"seq":1,'
        f'"subjects":[{{"seq_sealed":"{sealed_1}","type":"customer"}}],'
        '"systems":["crm"],"time":"2026-12-04T10:00:00.000Z"}'
    )
    assert lines[1] == canonical_json(expected[1]).decode("utf-8")
    assert lines[2] == canonical_json(expected[2]).decode("utf-8")


async def test_jsonl_export_holds_no_pseudonym(store_path: Path) -> None:
    _, output = await export_text(store_path, "jsonl", ExportFilter())

    assert CUSTOMER_REF not in output
    assert CONTACT_REF not in output


async def test_csv_export_is_exact(store_path: Path) -> None:
    count, output = await export_text(store_path, "csv", ExportFilter())
    hash_1, hash_2, hash_3 = (record["hash"] for record in expected_records(store_path))
    both_refs = ";".join(sorted([CUSTOMER_REF, CONTACT_REF]))

    assert count == 3
    assert output.split("\n") == [
        "seq,kind,time,request_id,actor,roles,purpose,client,client_address,operation_name,"
        "operation_hash,subjects,fields,systems,records,outcome,policy_version,details,hash",
        f"1,access,2026-12-04T10:00:00.000Z,req-1,emp-1,sales;support,support,crm-web,,"
        f"CustomerCard,{OPERATION_HASH},{CUSTOMER_REF},Customer.email=allow;Customer.phone=mask,"
        f"crm,1,success,7,,{hash_1}",
        f"2,access,2026-12-04T11:00:00.000Z,req-2,emp-2,finance,,,,,{OPERATION_HASH},"
        f"{both_refs},Customer.iban=deny,crm;erp,2,partial,7,,{hash_2}",
        f"3,access,2026-12-04T12:00:00.000Z,req-3,emp-1,,marketing,crm-web,,"
        f'"\'=HYPERLINK(""x"")",{OPERATION_HASH},{CONTACT_REF},,,0,denied,7,,{hash_3}',
        "",
    ]


async def test_csv_export_lists_admin_event(store_path: Path) -> None:
    event = admin_event("export", "dpo-1", {"format": "csv", "subject": True})
    await record_admin_event(store_path, event)

    _, output = await export_text(store_path, "csv", ExportFilter(actor="dpo-1"))

    row = output.split("\n")[1].split(",")
    assert row[:5] == ["4", "export", event["time"], event["request_id"], "dpo-1"]
    assert output.split("\n")[1].endswith(
        ',,,,,,,,,,success,,"{""format"":""csv"",""subject"":true}",' + row[-1]
    )


async def test_csv_export_of_no_records_has_header(store_path: Path) -> None:
    count, output = await export_text(store_path, "csv", ExportFilter(actor="nobody"))

    assert count == 0
    assert output == (
        "seq,kind,time,request_id,actor,roles,purpose,client,client_address,operation_name,"
        "operation_hash,subjects,fields,systems,records,outcome,policy_version,details,hash\n"
    )


def exported_seqs(output: str) -> list[int]:
    return [int(line.split('"seq":')[1].split(",")[0]) for line in output.splitlines()]


FILTER_CASES = [
    (ExportFilter(subject_ref=CUSTOMER_REF), [1, 2]),
    (ExportFilter(subject_ref=CONTACT_REF), [2, 3]),
    (ExportFilter(subject_ref="v1:" + "a" * 32), []),
    (ExportFilter(actor="emp-1"), [1, 3]),
    (ExportFilter(actor="emp-2"), [2]),
    (ExportFilter(since=datetime(2026, 12, 4, 11, tzinfo=UTC)), [2, 3]),
    (ExportFilter(until=datetime(2026, 12, 4, 11, tzinfo=UTC)), [1]),
    (
        ExportFilter(
            since=datetime(2026, 12, 4, 10, 30, tzinfo=UTC),
            until=datetime(2026, 12, 4, 12, tzinfo=UTC),
        ),
        [2],
    ),
    # 13:00 in UTC+2 is 11:00 UTC, so the time zone must be converted before comparing.
    (ExportFilter(since=datetime(2026, 12, 4, 13, tzinfo=timezone(timedelta(hours=2)))), [2, 3]),
    (ExportFilter(subject_ref=CONTACT_REF, actor="emp-1"), [3]),
    (ExportFilter(role="sales"), [1]),
    (ExportFilter(role="finance"), [2]),
    (ExportFilter(role="dpo"), []),
    (ExportFilter(purpose="support"), [1]),
    (ExportFilter(purpose="marketing"), [3]),
    (ExportFilter(system="erp"), [2]),
    (ExportFilter(system="crm"), [1, 2]),
    (ExportFilter(field="Customer.iban"), [2]),
    (ExportFilter(field="Customer"), []),
    (ExportFilter(category="contact"), [1]),
    (ExportFilter(category="contact.phone"), [1]),
    (ExportFilter(category="financial"), [2]),
    # A category matches at a dot boundary only.
    (ExportFilter(category="cont"), []),
    (ExportFilter(role="sales", system="erp"), []),
]


@pytest.mark.parametrize(("filters", "seqs"), FILTER_CASES)
async def test_export_filter_selects_records(
    store_path: Path, filters: ExportFilter, seqs: list[int]
) -> None:
    count, output = await export_text(store_path, "jsonl", filters)

    assert exported_seqs(output) == seqs
    assert count == len(seqs)


async def test_export_rejects_unknown_format(store_path: Path) -> None:
    with pytest.raises(ValueError, match="export format 'xml' is not supported"):
        await export_text(store_path, "xml", ExportFilter())


async def test_export_rejects_naive_datetime(store_path: Path) -> None:
    filters = ExportFilter(since=datetime(2026, 12, 4, 11))

    with pytest.raises(ValueError, match="export filter since: naive datetime"):
        await export_text(store_path, "jsonl", filters)


async def test_export_rejects_empty_time_range(store_path: Path) -> None:
    moment = datetime(2026, 12, 4, 11, tzinfo=UTC)
    filters = ExportFilter(since=moment, until=moment)

    with pytest.raises(ValueError, match=r"since 2026-12-04T11:00:00\.000Z must be before until"):
        await export_text(store_path, "jsonl", filters)


async def test_export_of_missing_store_fails(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match=r"audit store .*absent\.db not found"):
        await export_text(tmp_path / "absent.db", "csv", ExportFilter())


async def test_export_rejects_body_that_is_not_json(store_path: Path) -> None:
    connection = sqlite3.connect(store_path)
    try:
        connection.execute("UPDATE audit_record SET body = 'garbage' WHERE seq = 2")
        connection.commit()
    finally:
        connection.close()

    with pytest.raises(AuditIntegrityError, match="audit record 2 has a body that is not"):
        await export_text(store_path, "jsonl", ExportFilter())


async def test_export_reports_progress_per_batch(store_path: Path) -> None:
    seen: list[int] = []
    out = io.StringIO()

    count = await export_records(
        store_path, out, fmt="jsonl", filters=ExportFilter(role="finance"), progress=seen.append
    )

    assert count == 1
    assert seen == [3]


def test_applied_filters_hide_subject() -> None:
    filters = ExportFilter(
        subject_ref=CUSTOMER_REF,
        role="sales",
        category="contact",
        since=datetime(2026, 12, 4, 11, tzinfo=UTC),
    )

    assert filters.applied() == {
        "subject": True,
        "role": "sales",
        "category": "contact",
        "since": "2026-12-04T11:00:00.000Z",
    }
