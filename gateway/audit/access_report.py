"""The report for a data subject's access request: every consultation of their data.

The Court of Justice of the EU held (case C-579/21, 22 June 2023) that a data subject
may learn the dates and purposes of the consultations of their data. The identities of
the employees who consulted it need not be given as a rule. So the
report lists, per record, the time, purpose, roles, data categories and systems, and
the caller only when asked.

A consultation is a record that names the subject and allowed or masked at least one
field. A record whose fields were all denied showed no data and is left out. An
erased subject has no index rows and no key, so its report is empty.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from gateway.audit.migrate import require_head_revision
from gateway.audit.postgres import open_reader
from gateway.audit.record import utc_timestamp
from gateway.audit.schema import subject_seqs
from gateway.audit.store import audit_record, audit_subject_key, describe_error
from gateway.audit.subject_keys import SealedSubjects
from gateway.errors import AuditError, AuditIntegrityError

_FETCH_ROWS = 500


@dataclass(frozen=True)
class Consultation:
    """One request that showed data of the subject. ``caller`` is None when withheld."""

    time: str
    purpose: str | None
    roles: list[str]
    categories: list[str]
    systems: list[str]
    caller: str | None


async def read_consultations(
    target: Path | str, ref: str, *, include_callers: bool = False
) -> list[Consultation]:
    """Read the consultations of the subject with pseudonym ``ref``, oldest first.

    ``target`` is the path of an SQLite store or the URL of a PostgreSQL store. Raises
    AuditError if the store cannot be read, ValueError for a URL that is not
    PostgreSQL, and AuditIntegrityError if the subject index names a record whose body
    does not name the subject.
    """
    engine, location = open_reader(target)
    consultations: list[Consultation] = []
    try:
        async with engine.connect() as connection:
            await require_head_revision(connection, location)
            key = (
                await connection.execute(
                    select(audit_subject_key.c.key).where(audit_subject_key.c.ref == ref)
                )
            ).scalar()
            seqs = subject_seqs(ref)
            statement = (
                select(audit_record.c.seq, audit_record.c.body)
                .where(audit_record.c.seq.in_(seqs))
                .order_by(audit_record.c.seq)
                .execution_options(yield_per=_FETCH_ROWS)
            )
            async with connection.stream(statement) as result:
                async for row in result:
                    record = _checked_record(int(row.seq), str(row.body), ref, key)
                    consultation = _consultation(record, include_callers)
                    if consultation is not None:
                        consultations.append(consultation)
    except (SQLAlchemyError, OSError) as exc:
        raise AuditError(f"cannot read audit store {location}: {describe_error(exc)}") from exc
    finally:
        await engine.dispose()
    return consultations


def _checked_record(seq: int, body: str, ref: str, key: bytes | None) -> dict[str, Any]:
    """Decode a body and check that it names the subject, plainly or sealed with ``key``."""
    try:
        record = json.loads(body)
    except ValueError:
        record = None
    subjects = record.get("subjects") if isinstance(record, dict) else None
    if isinstance(record, dict) and isinstance(subjects, list):
        entries = [subject for subject in subjects if isinstance(subject, dict)]
        if any(subject.get("ref") == ref for subject in entries):
            return record
        if key is not None and SealedSubjects(entries, seq).opens(ref, key):
            return record
    raise AuditIntegrityError(
        f"the subject index lists audit record {seq}, which does not name the subject; "
        "run fonte audit verify"
    )


def _consultation(record: dict[str, Any], include_callers: bool) -> Consultation | None:
    visible_fields = [
        item
        for item in record.get("fields") or []
        if isinstance(item, dict) and item.get("decision") in ("allow", "mask")
    ]
    if not visible_fields:
        return None
    return Consultation(
        time=str(record.get("time")),
        purpose=record.get("purpose"),
        roles=sorted(record.get("roles") or []),
        categories=sorted({str(item.get("category")) for item in visible_fields}),
        systems=sorted(record.get("systems") or []),
        caller=str(record.get("actor")) if include_callers else None,
    )


def report_document(
    subject_type: str, consultations: list[Consultation], *, include_callers: bool
) -> dict[str, Any]:
    """Build the JSON document of the report. The subject appears only by its type."""
    entries = []
    for consultation in consultations:
        entry = asdict(consultation)
        if not include_callers:
            del entry["caller"]
        entries.append(entry)
    return {
        "report": "consultations of personal data",
        "subject_type": subject_type,
        "generated": utc_timestamp(),
        "callers_included": include_callers,
        "consultations": entries,
    }


_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #111; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #999; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }
th { background: #eee; }
@media print { body { margin: 0; } th { background: none; } }
"""


def report_html(document: Mapping[str, Any], category_names: Mapping[str, str]) -> str:
    """Render the report as one HTML page with inline style and no external resource.

    Every value is escaped. ``category_names`` gives a description to show beside each
    category id.
    """
    include_callers = bool(document["callers_included"])
    headers = ["Date and time (UTC)", "Purpose", "Roles", "Data categories", "Systems"]
    if include_callers:
        headers.append("Caller")
    rows = []
    for entry in document["consultations"]:
        categories = "<br>".join(
            _escape(f"{name} ({category_names[name]})" if name in category_names else name)
            for name in entry["categories"]
        )
        cells = [
            _escape(entry["time"]),
            _escape(entry["purpose"] or "none stated"),
            _escape(", ".join(entry["roles"])),
            categories,
            _escape(", ".join(entry["systems"])),
        ]
        if include_callers:
            cells.append(_escape(entry["caller"]))
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")

    callers = (
        "The identity of each caller is included."
        if include_callers
        else "The identities of the employees who consulted the data are withheld."
    )
    header_row = "".join(f"<th>{_escape(header)}</th>" for header in headers)
    body_rows = "\n".join(rows) or f'<tr><td colspan="{len(headers)}">None recorded.</td></tr>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>Consultations of personal data</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n"
        "<h1>Consultations of personal data</h1>\n"
        f"<p>Data subject type: {_escape(document['subject_type'])}. "
        f"Generated {_escape(document['generated'])}. "
        f"{len(document['consultations'])} consultation(s). {callers}</p>\n"
        f"<table>\n<thead><tr>{header_row}</tr></thead>\n<tbody>\n{body_rows}\n</tbody>\n"
        "</table>\n</body>\n</html>\n"
    )


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)
