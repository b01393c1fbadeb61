"""Tests of export_records: exact JSON Lines and CSV output, filters and errors."""

from __future__ import annotations

import io
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import cast

import pytest

from gateway.audit.chain import GENESIS_HASH, chain_hash
from gateway.audit.export import ExportFilter, export_records
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import AuditEvent, canonical_json
from gateway.audit.store import SQLiteAuditStore
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


def expected_hashes() -> list[str]:
    """Compute the chain independently of the store."""
    hashes = []
    prev_hash = GENESIS_HASH
    for seq, event in enumerate(EVENTS, start=1):
        body = canonical_json({**event, "seq": seq, "prev_hash": prev_hash})
        prev_hash = chain_hash(prev_hash, seq, body)
        hashes.append(prev_hash)
    return hashes


HASH_1, HASH_2, HASH_3 = expected_hashes()


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


async def export_text(path: Path, fmt: str, filters: ExportFilter) -> tuple[int, str]:
    out = io.StringIO()
    count = await export_records(path, out, fmt=fmt, filters=filters)  # type: ignore[arg-type]
    return count, out.getvalue()


async def test_jsonl_export_is_exact(store_path: Path) -> None:
    count, output = await export_text(store_path, "jsonl", ExportFilter())

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
        f'"hash":"{HASH_1}","operation_hash":"{OPERATION_HASH}",'
        '"operation_name":"CustomerCard","outcome":"success","policy_version":"7",'
        f'"prev_hash":"{GENESIS_HASH}","purpose":"support","records":1,'
        '"request_id":"req-1","roles":["sales","support"],"seq":1,'
        f'"subjects":[{{"ref":"{CUSTOMER_REF}","type":"customer"}}],'
        '"systems":["crm"],"time":"2026-12-04T10:00:00.000Z"}'
    )
    assert lines[1] == canonical_json(
        {**EVENTS[1], "seq": 2, "prev_hash": HASH_1, "hash": HASH_2}
    ).decode("utf-8")
    assert lines[2] == canonical_json(
        {**EVENTS[2], "seq": 3, "prev_hash": HASH_2, "hash": HASH_3}
    ).decode("utf-8")


async def test_csv_export_is_exact(store_path: Path) -> None:
    count, output = await export_text(store_path, "csv", ExportFilter())

    assert count == 3
    assert output.split("\n") == [
        "seq,time,request_id,actor,roles,purpose,client,client_address,operation_name,"
        "operation_hash,"
        "subjects,fields,systems,records,outcome,policy_version,hash",
        f"1,2026-12-04T10:00:00.000Z,req-1,emp-1,sales;support,support,crm-web,,CustomerCard,"
        f"{OPERATION_HASH},{CUSTOMER_REF},Customer.email=allow;Customer.phone=mask,crm,1,"
        f"success,7,{HASH_1}",
        f"2,2026-12-04T11:00:00.000Z,req-2,emp-2,finance,,,,,{OPERATION_HASH},"
        f"{CUSTOMER_REF};{CONTACT_REF},Customer.iban=deny,crm;erp,2,partial,7,{HASH_2}",
        f"3,2026-12-04T12:00:00.000Z,req-3,emp-1,,marketing,crm-web,,"
        f'"\'=HYPERLINK(""x"")",{OPERATION_HASH},{CONTACT_REF},,,0,denied,7,{HASH_3}',
        "",
    ]


async def test_csv_export_of_no_records_has_header(store_path: Path) -> None:
    count, output = await export_text(store_path, "csv", ExportFilter(actor="nobody"))

    assert count == 0
    assert output == (
        "seq,time,request_id,actor,roles,purpose,client,client_address,operation_name,"
        "operation_hash,"
        "subjects,fields,systems,records,outcome,policy_version,hash\n"
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
