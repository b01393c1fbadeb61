"""The audit log: a hash-chained, append-only record of every request that reads or is
denied a personal field.

`SQLiteAuditStore` appends records with group commit and signs checkpoints of the
chain with a `CheckpointKey`. `verify_store` checks the chain and the checkpoints,
`export_records` writes records as JSON Lines or CSV, and `Pseudonymizer` turns subject
identifiers into the keyed tokens that the store seals into records, each with the
subject's own key, instead of personal values. `gateway.audit.operations` erases a
subject and records operations on the log.
"""

from gateway.audit.anchor import FileAnchor, StreamAnchor, anchor_from_setting
from gateway.audit.chain import GENESIS_HASH, chain_hash
from gateway.audit.checkpoint import Checkpoint, parse_checkpoint
from gateway.audit.export import CSV_COLUMNS, ExportFilter, export_records
from gateway.audit.keys import (
    CheckpointKey,
    load_or_create_signing_key,
    load_public_keys,
    publish_public_key,
)
from gateway.audit.pseudonym import Pseudonymizer, load_or_create_key
from gateway.audit.record import (
    AuditEvent,
    FieldDecision,
    Subject,
    canonical_json,
    utc_timestamp,
    validate_event,
)
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.store import AuditStore, sqlite_url
from gateway.audit.verify import StoredRow, VerifyReport, verify_rows, verify_store

__all__ = [
    "CSV_COLUMNS",
    "GENESIS_HASH",
    "AuditEvent",
    "AuditStore",
    "Checkpoint",
    "CheckpointKey",
    "ExportFilter",
    "FieldDecision",
    "FileAnchor",
    "Pseudonymizer",
    "SQLiteAuditStore",
    "StoredRow",
    "StreamAnchor",
    "Subject",
    "VerifyReport",
    "anchor_from_setting",
    "canonical_json",
    "chain_hash",
    "export_records",
    "load_or_create_key",
    "load_or_create_signing_key",
    "load_public_keys",
    "parse_checkpoint",
    "publish_public_key",
    "sqlite_url",
    "utc_timestamp",
    "validate_event",
    "verify_rows",
    "verify_store",
]
