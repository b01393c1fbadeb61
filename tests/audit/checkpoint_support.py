"""Shared setup for the checkpoint tests: events, keyed stores, exports and SQL tampering."""

from __future__ import annotations

import hashlib
import io
import sqlite3
from pathlib import Path
from typing import cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.anchor import FileAnchor
from gateway.audit.export import ExportFilter, export_records
from gateway.audit.keys import CheckpointKey, publish_public_key
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import AuditEvent

PSEUDONYMS = Pseudonymizer(b"checkpoint-test-key".ljust(32, b"."))


def make_event(index: int) -> AuditEvent:
    return cast(
        AuditEvent,
        {
            "time": f"2026-12-04T20:17:{index:02d}.000Z",
            "request_id": f"req-{index}",
            "actor": "emp-17",
            "roles": ["finance"],
            "purpose": "billing",
            "client": None,
            "operation_name": "InvoiceList",
            "operation_hash": hashlib.sha256(b"query InvoiceList").hexdigest(),
            "subjects": [{"type": "customer", "ref": PSEUDONYMS.token("customer", f"C-{index}")}],
            "fields": [
                {
                    "field": "Customer.iban",
                    "category": "financial.iban",
                    "decision": "allow",
                    "rule": "finance-read-iban",
                    "mask": None,
                }
            ],
            "systems": ["erp"],
            "records": 1,
            "outcome": "success",
            "policy_version": "2026-12-01",
        },
    )


def new_key(name: str = "fonte-audit-1") -> CheckpointKey:
    return CheckpointKey(name, Ed25519PrivateKey.generate())


def anchor_for(path: Path) -> FileAnchor:
    return FileAnchor(path)


def publish(folder: Path, *keys: CheckpointKey) -> Path:
    for key in keys:
        publish_public_key(key, folder)
    return folder


def run_sql(path: Path, *statements: str, parameters: tuple[object, ...] = ()) -> None:
    connection = sqlite3.connect(path)
    try:
        for statement in statements:
            connection.execute(statement, parameters if "?" in statement else ())
        connection.commit()
    finally:
        connection.close()


def delete_records(path: Path, *seqs: int) -> None:
    listed = ", ".join(str(seq) for seq in seqs)
    run_sql(
        path,
        f"DELETE FROM audit_subject WHERE seq IN ({listed})",
        f"DELETE FROM audit_record WHERE seq IN ({listed})",
    )


async def export_jsonl(store_path: Path, target: Path) -> Path:
    buffer = io.StringIO()
    await export_records(store_path, buffer, fmt="jsonl", filters=ExportFilter())
    target.write_text(buffer.getvalue(), encoding="utf-8")
    return target
