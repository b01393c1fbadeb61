"""Export of audit records as JSON Lines or CSV, for data protection officers and auditors."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from sqlalchemy import Select, select
from sqlalchemy.exc import SQLAlchemyError

from gateway.audit.record import canonical_json, utc_timestamp
from gateway.audit.store import audit_record, audit_subject, describe_error, open_reader_engine
from gateway.errors import AuditError, AuditIntegrityError

CSV_COLUMNS = (
    "seq",
    "time",
    "request_id",
    "actor",
    "roles",
    "purpose",
    "client",
    "client_address",
    "operation_name",
    "operation_hash",
    "subjects",
    "fields",
    "systems",
    "records",
    "outcome",
    "policy_version",
    "hash",
)

# Rows fetched per round trip. Memory use depends on this, not on the store size.
_FETCH_ROWS = 500
# Spreadsheet programs run a cell that starts with one of these as a formula, and a
# client chooses its own operation name.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class ExportFilter:
    """Conditions that an exported record must meet. None means no condition.

    ``since`` is inclusive and ``until`` exclusive. Both are compared at millisecond
    resolution, the resolution of the stored times, and must be timezone-aware.
    """

    subject_ref: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def export_records(
    path: Path, out: TextIO, *, fmt: Literal["jsonl", "csv"], filters: ExportFilter
) -> int:
    """Write the records of the store at ``path`` that match ``filters`` to ``out``, in seq order.

    ``jsonl`` writes one canonical JSON object per line: the stored event plus ``seq``,
    ``prev_hash`` and ``hash``. ``csv`` writes a header row of `CSV_COLUMNS`, then one row
    per record, with ``\\n`` line ends. In CSV, list columns are joined with ``;``, subjects
    as their refs and fields as ``Type.field=decision``. A text cell that starts with
    ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``, so that
    spreadsheets show it as text instead of running it as a formula.

    Streams the rows, so memory use does not grow with the store. Returns the number of
    records written. Raises ValueError for a bad ``fmt`` or filter, AuditError if the
    store cannot be read, and AuditIntegrityError if a stored body is not a JSON object.
    """
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"export format {fmt!r} is not supported; use 'jsonl' or 'csv'")
    statement = _filtered_query(filters).execution_options(yield_per=_FETCH_ROWS)

    engine = open_reader_engine(path)
    csv_writer = None
    if fmt == "csv":
        csv_writer = csv.writer(out, lineterminator="\n")
        csv_writer.writerow(CSV_COLUMNS)

    count = 0
    try:
        async with engine.connect() as connection, connection.stream(statement) as result:
            async for row in result:
                record = _decode_record(row.seq, row.body, row.hash)
                if csv_writer is None:
                    out.write(canonical_json(record).decode("utf-8") + "\n")
                else:
                    csv_writer.writerow(_csv_row(record))
                count += 1
    except SQLAlchemyError as exc:
        raise AuditError(f"cannot read audit store {path}: {describe_error(exc)}") from exc
    finally:
        await engine.dispose()
    return count


def _filtered_query(filters: ExportFilter) -> Select[Any]:
    statement = select(audit_record.c.seq, audit_record.c.body, audit_record.c.hash)

    if filters.subject_ref is not None:
        subject_seqs = select(audit_subject.c.seq).where(audit_subject.c.ref == filters.subject_ref)
        statement = statement.where(audit_record.c.seq.in_(subject_seqs))
    if filters.actor is not None:
        statement = statement.where(audit_record.c.actor == filters.actor)

    # Stored times all have the form of utc_timestamp(), so string order is time order.
    since = _filter_timestamp("since", filters.since)
    until = _filter_timestamp("until", filters.until)
    if since is not None and until is not None and since >= until:
        raise ValueError(f"since {since} must be before until {until}")
    if since is not None:
        statement = statement.where(audit_record.c.time >= since)
    if until is not None:
        statement = statement.where(audit_record.c.time < until)

    return statement.order_by(audit_record.c.seq)


def _filter_timestamp(name: str, moment: datetime | None) -> str | None:
    if moment is None:
        return None
    try:
        return utc_timestamp(moment)
    except ValueError as exc:
        raise ValueError(f"export filter {name}: {exc}") from exc


def _decode_record(seq: int, body: str, record_hash: str) -> dict[str, Any]:
    try:
        record = json.loads(body)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise AuditIntegrityError(
            f"audit record {seq} has a body that is not a JSON object; run the audit verifier"
        )
    record["hash"] = record_hash
    return record


def _csv_row(record: dict[str, Any]) -> list[str]:
    try:
        return _format_csv_row(record)
    except (AttributeError, KeyError, TypeError) as exc:
        raise AuditIntegrityError(
            f"audit record {record.get('seq')!r} does not have the fields of an audit event; "
            "run the audit verifier"
        ) from exc


def _format_csv_row(record: dict[str, Any]) -> list[str]:
    values: dict[str, object] = dict(record)
    values["roles"] = ";".join(record.get("roles") or [])
    values["systems"] = ";".join(record.get("systems") or [])
    values["subjects"] = ";".join(subject["ref"] for subject in record.get("subjects") or [])
    values["fields"] = ";".join(
        f"{decision['field']}={decision['decision']}" for decision in record.get("fields") or []
    )
    return [_csv_cell(values.get(column)) for column in CSV_COLUMNS]


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    cell = str(value)
    if isinstance(value, str) and cell.startswith(_FORMULA_PREFIXES):
        return "'" + cell
    return cell
