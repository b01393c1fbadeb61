"""Export of audit records as JSON Lines or CSV, for data protection officers and auditors.

JSON Lines carries each stored body unchanged, with its hash, so that an export can be
verified offline: its subjects stay sealed. CSV is for reading, and lists in its
``subjects`` column the pseudonyms of the record's subjects that are not erased.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO

import orjson
from sqlalchemy import Select, func, null, select
from sqlalchemy.exc import SQLAlchemyError

from gateway.audit.migrate import require_head_revision
from gateway.audit.postgres import open_reader
from gateway.audit.record import canonical_json, utc_timestamp
from gateway.audit.schema import join_text, subject_seqs
from gateway.audit.store import audit_record, audit_subject, describe_error
from gateway.errors import AuditError, AuditIntegrityError

CSV_COLUMNS = (
    "seq",
    "kind",
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
    "details",
    "hash",
)

# Rows fetched per round trip. Memory use depends on this, not on the store size.
_FETCH_ROWS = 500
# Spreadsheet programs run a cell that starts with one of these as a formula, and a
# client chooses its own operation name.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class ExportOutputError(AuditError):
    """A failed write to the file or stream of an export, for example on a full disk."""


@dataclass(frozen=True)
class ExportFilter:
    """Conditions that an exported record must meet. None means no condition.

    ``since`` is inclusive and ``until`` exclusive. Both are compared at millisecond
    resolution, the resolution of the stored times, and must be timezone-aware.
    ``role``, ``system`` and ``field`` match one item of the record's list.
    ``category`` matches a field's category or any category below it, so
    ``contact`` matches ``contact.email``. ``subject_ref`` finds only subjects that
    are not erased.
    """

    subject_ref: str | None = None
    actor: str | None = None
    role: str | None = None
    purpose: str | None = None
    system: str | None = None
    field: str | None = None
    category: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def applied(self) -> dict[str, str | bool]:
        """Return the conditions that are set, for the export's own audit record.

        The subject condition appears only as ``True``: its pseudonym would link the
        record of the export to the subject.
        """
        conditions: dict[str, str | bool] = {}
        if self.subject_ref is not None:
            conditions["subject"] = True
        for name in ("actor", "role", "purpose", "system", "field", "category"):
            value = getattr(self, name)
            if value is not None:
                conditions[name] = value
        for name in ("since", "until"):
            moment = _filter_timestamp(name, getattr(self, name))
            if moment is not None:
                conditions[name] = moment
        return conditions

    def matches_body(self, record: dict[str, Any]) -> bool:
        """Check the conditions on list items, which the SQL query does not apply."""
        list_conditions = (self.role, self.system, self.field, self.category)
        if all(condition is None for condition in list_conditions):
            return True
        if self.role is not None and self.role not in (record.get("roles") or []):
            return False
        if self.system is not None and self.system not in (record.get("systems") or []):
            return False
        fields = [item for item in record.get("fields") or [] if isinstance(item, dict)]
        if self.field is not None and not any(item.get("field") == self.field for item in fields):
            return False
        if self.category is not None:
            prefix = self.category + "."
            return any(
                item.get("category") == self.category
                or str(item.get("category")).startswith(prefix)
                for item in fields
            )
        return True


async def export_records(
    target: Path | str,
    out: TextIO,
    *,
    fmt: Literal["jsonl", "csv"],
    filters: ExportFilter,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the records of the store at ``target`` that match ``filters`` to ``out``, in seq order.

    ``target`` is the path of an SQLite store or the URL of a PostgreSQL store.

    ``jsonl`` writes one canonical JSON object per line: the stored event plus ``seq``,
    ``prev_hash`` and ``hash``. ``csv`` writes a header row of `CSV_COLUMNS`, then one row
    per record, with ``\\n`` line ends. In CSV, list columns are joined with ``;``, subjects
    as their refs and fields as ``Type.field=decision``. A text cell that starts with
    ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``, so that
    spreadsheets show it as text instead of running it as a formula.

    Streams the rows, so memory use does not grow with the store. ``progress`` is called
    after each batch of rows that the query returned, with the seq of the batch's last
    row, including rows that the list conditions then drop.
    Returns the number of records written. Raises ValueError for a bad ``fmt`` or
    filter, ExportOutputError if ``out`` cannot be written, AuditError if the store cannot
    be read, and AuditIntegrityError if a stored body is not a JSON object.
    """
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"export format {fmt!r} is not supported; use 'jsonl' or 'csv'")
    engine, location = open_reader(target)
    statement = _filtered_query(filters, with_refs=fmt == "csv", dialect_name=engine.dialect.name)
    statement = statement.execution_options(yield_per=_FETCH_ROWS)

    csv_writer = None
    if fmt == "csv":
        csv_writer = csv.writer(out, lineterminator="\n")
        try:
            csv_writer.writerow(CSV_COLUMNS)
        except OSError as exc:
            raise output_error(exc) from exc

    count = 0
    try:
        async with engine.connect() as connection:
            await require_head_revision(connection, location)
            async with connection.stream(statement) as result:
                # One await per batch of rows instead of per row keeps the driver's
                # thread hand-offs out of the per-record cost.
                async for rows in result.partitions(_FETCH_ROWS):
                    for row in rows:
                        record = _decode_record(row.seq, row.body, row.hash)
                        if not filters.matches_body(record):
                            continue
                        try:
                            if csv_writer is None:
                                out.write(_json_line(record))
                            else:
                                csv_writer.writerow(_csv_row(record, row.subject_refs))
                        except OSError as exc:
                            raise output_error(exc) from exc
                        count += 1
                    if progress is not None and rows:
                        progress(rows[-1].seq)
    except (SQLAlchemyError, OSError) as exc:
        raise AuditError(f"cannot read audit store {location}: {describe_error(exc)}") from exc
    finally:
        await engine.dispose()
    return count


async def last_seq(target: Path | str) -> int:
    """Return the seq of the newest record in the store at ``target``, or 0 when it is empty."""
    engine, location = open_reader(target)
    try:
        async with engine.connect() as connection:
            value = (await connection.execute(select(func.max(audit_record.c.seq)))).scalar()
    except (SQLAlchemyError, OSError) as exc:
        raise AuditError(f"cannot read audit store {location}: {describe_error(exc)}") from exc
    finally:
        await engine.dispose()
    return int(value or 0)


def output_error(exc: OSError) -> ExportOutputError:
    """Return the error for a failed write of an export, naming the system's reason."""
    return ExportOutputError(f"cannot write the export: {exc.strerror or exc}; free space "
                             "or write it to another file")


def _filtered_query(filters: ExportFilter, *, with_refs: bool, dialect_name: str) -> Select[Any]:
    refs: Any = None
    if with_refs:
        refs = (
            select(join_text(audit_subject.c.ref, dialect_name))
            .where(audit_subject.c.seq == audit_record.c.seq)
            .scalar_subquery()
        )
    statement = select(
        audit_record.c.seq,
        audit_record.c.body,
        audit_record.c.hash,
        (refs if refs is not None else null()).label("subject_refs"),
    )

    if filters.subject_ref is not None:
        seqs = subject_seqs(filters.subject_ref)
        statement = statement.where(audit_record.c.seq.in_(seqs))
    if filters.actor is not None:
        statement = statement.where(audit_record.c.actor == filters.actor)
    if filters.purpose is not None:
        statement = statement.where(audit_record.c.purpose == filters.purpose)

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


def _json_line(record: dict[str, Any]) -> str:
    # orjson with sorted keys gives the same bytes as canonical_json for the values a body
    # contains (text, integers, booleans, null), and it is faster. Anything it cannot
    # encode, such as an integer above 64 bits, goes through canonical_json.
    try:
        encoded = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        encoded = canonical_json(record)
    return encoded.decode("utf-8") + "\n"


def _decode_record(seq: int, body: str, record_hash: str) -> dict[str, Any]:
    try:
        record = orjson.loads(body)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise AuditIntegrityError(
            f"audit record {seq} has a body that is not a JSON object; run the audit verifier"
        )
    record["hash"] = record_hash
    return record


def _csv_row(record: dict[str, Any], subject_refs: str | None) -> list[str]:
    try:
        return _format_csv_row(record, sorted((subject_refs or "").split()))
    except (AttributeError, KeyError, TypeError) as exc:
        raise AuditIntegrityError(
            f"audit record {record.get('seq')!r} does not have the fields of an audit event; "
            "run the audit verifier"
        ) from exc


def _format_csv_row(record: dict[str, Any], subject_refs: list[str]) -> list[str]:
    values: dict[str, object] = dict(record)
    values["kind"] = record.get("kind", "access")
    values["roles"] = ";".join(record.get("roles") or [])
    values["systems"] = ";".join(record.get("systems") or [])
    values["subjects"] = ";".join(subject_refs)
    if "details" in record:
        values["details"] = canonical_json(record["details"]).decode("utf-8")
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
