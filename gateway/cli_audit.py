"""The ``fonte audit bundle``, ``forget`` and ``access-report`` commands, and ``fonte ropa``.

Each audit command here appends its own record to the log. Bundle and access-report may
run while a gateway appends to the same store. Forget on an SQLite store holds the data
folder's lock, so it fails while a gateway runs on that folder. Each command reads the
SQLite store in the data folder, or the PostgreSQL store that ``--store`` names.
"""

from __future__ import annotations

import asyncio
import json
import os
import tomllib
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from gateway.cli import (
    DEFAULT_DATA_DIR,
    AuditStoreUrl,
    DataDir,
    Operator,
    _audit_target,
    _check_subject_type,
    _claim,
    _count,
    _fail,
    _load_engine,
    _operator,
    _subject_ref,
    app,
    audit_app,
    console,
    errors,
)
from gateway.errors import ConfigError, GatewayError

if TYPE_CHECKING:
    from gateway.audit.subject_keys import ForgetResult

SubjectType = Annotated[str, typer.Option(help="customer or contact.")]


@audit_app.command("bundle")
def audit_bundle(
    folder: Annotated[Path, typer.Argument(help="New folder to write the bundle into.")],
    key_name: Annotated[str, typer.Option(
        help="Name of the checkpoint key, as the gateway's [audit] checkpoint_key_name.")
    ] = "fonte-audit-1",
    key_file: Annotated[Path | None, typer.Option(
        help="Checkpoint private key, PEM; default: keys/audit-checkpoint.pem in the data "
        "dir, or the FONTE_AUDIT_CHECKPOINT_KEY variable.")] = None,
    operator: Operator = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    store: AuditStoreUrl = None,
) -> None:
    """Write the whole log, its signed checkpoints, public keys and an offline verifier."""
    from gateway.audit.bundle import write_bundle
    from gateway.audit.keys import KEY_ENV_VAR, load_or_create_signing_key, publish_public_key
    from gateway.audit.operations import admin_event, record_admin_event

    target = _audit_target(data_dir, store)
    # Checked before the bundle record is appended, so that the log does not state a
    # bundle that was never written. write_bundle checks again.
    if folder.exists():
        errors.print(f"error: bundle folder {folder} already exists; give a new folder",
                     soft_wrap=True)
        raise typer.Exit(2)
    key_path = key_file or data_dir / "keys" / "audit-checkpoint.pem"
    if not key_path.is_file() and not os.environ.get(KEY_ENV_VAR):
        errors.print(f"checkpoint key {key_path} not found; pass --key-file or set "
                     f"{KEY_ENV_VAR}, because the bundle's last checkpoint is signed now",
                     soft_wrap=True)
        raise typer.Exit(2)
    public_keys = data_dir / "keys" / "audit-checkpoint-public"
    try:
        key = load_or_create_signing_key(key_path, name=key_name)
        publish_public_key(key, public_keys)
        event = admin_event("bundle", _operator(operator), {"folder": folder.name})
        # Closing the store signs a checkpoint that covers this record.
        asyncio.run(record_admin_event(target, event, checkpoint_key=key))
        summary = asyncio.run(write_bundle(target, public_keys, folder))
    except (GatewayError, ValueError) as exc:
        raise _fail(ConfigError(str(exc)) if isinstance(exc, ValueError) else exc) from exc
    console.print(f"bundle written to {folder}: {_count(summary.records, 'record')} and "
                  f"{_count(summary.checkpoints, 'checkpoint')}; {summary.verifier_output}",
                  soft_wrap=True)


@audit_app.command("forget")
def audit_forget(
    subject: Annotated[str, typer.Argument(help="Customer or contact id, as the CRM knows it.")],
    subject_type: SubjectType = "customer",
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    operator: Operator = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    store: AuditStoreUrl = None,
) -> None:
    """Destroy a data subject's key, so that the log no longer leads to them (GDPR Art. 17).

    Exits with status 3 if the erasure is done and recorded, but old copies of the
    deleted rows may remain in an SQLite store's files. Run the command again then.
    """
    from gateway.audit.operations import ErasureIncomplete, forget

    _check_subject_type(subject_type)
    target = _audit_target(data_dir, store)
    if not yes and not typer.confirm(
        f"Erase this {subject_type} from the audit log? This cannot be undone"
    ):
        raise typer.Exit(1)
    ref = _subject_ref(data_dir, subject_type, subject)
    # A PostgreSQL store caches no subject key and erases under its advisory lock, so
    # gateways may keep running. An SQLite store needs its gateway stopped.
    with nullcontext() if store is not None else _claim(data_dir):
        try:
            result, seq = asyncio.run(forget(target, ref, _operator(operator)))
        except ErasureIncomplete as exc:
            _print_erasure(exc.result, exc.seq)
            errors.print(f"warning: {exc}", soft_wrap=True)
            raise typer.Exit(3) from exc
        except GatewayError as exc:
            raise _fail(exc) from exc
        except ValueError as exc:
            errors.print(f"error: {exc}", soft_wrap=True)
            raise typer.Exit(2) from exc
    _print_erasure(result, seq)


def _print_erasure(result: ForgetResult, seq: int) -> None:
    key_state = "key destroyed" if result.key_deleted else "no key was stored"
    console.print(f"{key_state}; {_count(result.records_unlinked, 'record')} unlinked; "
                  f"erasure recorded as record {seq}")


@audit_app.command("access-report")
def audit_access_report(
    subject: Annotated[str, typer.Argument(help="Customer or contact id, as the CRM knows it.")],
    subject_type: SubjectType = "customer",
    fmt: Annotated[str, typer.Option("--format", help="json or html.")] = "json",
    include_callers: Annotated[bool, typer.Option(
        "--include-callers", help="Name the caller of each consultation.")] = False,
    output: Annotated[Path | None, typer.Option(help="File to write; default stdout.")] = None,
    operator: Operator = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    store: AuditStoreUrl = None,
) -> None:
    """Report the dates, purposes and roles of every consultation of a subject's data."""
    from gateway.audit.access_report import read_consultations, report_document, report_html
    from gateway.audit.operations import admin_event, record_admin_event
    from gateway.audit.record import DetailValue

    _check_subject_type(subject_type)
    if fmt not in ("json", "html"):
        errors.print(f"--format {fmt!r} is not supported; use json or html")
        raise typer.Exit(2)
    target = _audit_target(data_dir, store)
    ref = _subject_ref(data_dir, subject_type, subject)
    catalog, _ = _load_engine()
    # Open the output before the report is recorded, so that a wrong path stops the
    # command before the log states that a report was made.
    handle = None if output is None else _open_output(output)
    try:
        consultations = asyncio.run(
            read_consultations(target, ref, include_callers=include_callers))
        details: dict[str, DetailValue] = {
            "format": fmt, "consultations": len(consultations),
            "callers_included": include_callers}
        seq = asyncio.run(record_admin_event(
            target, admin_event("access_report", _operator(operator), details)))
    except GatewayError as exc:
        if output is not None and handle is not None:
            handle.close()
            output.unlink(missing_ok=True)
        raise _fail(exc) from exc
    except ValueError as exc:
        raise _fail(ConfigError(str(exc))) from exc
    document = report_document(subject_type, consultations, include_callers=include_callers)
    if fmt == "json":
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    else:
        text = report_html(document, catalog.categories)
    if output is None or handle is None:
        typer.echo(text, nl=False)
    else:
        try:
            with handle:
                handle.write(text)
        except OSError as exc:
            output.unlink(missing_ok=True)
            errors.print(f"error: cannot write --output {output}: {exc.strerror or exc}; "
                         f"audit record {seq} already records this report, so free space "
                         "and run the command again", soft_wrap=True)
            raise typer.Exit(2) from exc
    errors.print(f"{_count(len(consultations), 'consultation')} reported")


def _open_output(output: Path) -> TextIO:
    try:
        return output.open("w", encoding="utf-8")
    except OSError as exc:
        errors.print(f"error: cannot write --output {output}: {exc.strerror or exc}; pass a "
                     "file in an existing, writable folder", soft_wrap=True)
        raise typer.Exit(2) from exc


@app.command("ropa")
def ropa(
    fmt: Annotated[str, typer.Option("--format", help="markdown or json.")] = "markdown",
    config: Annotated[Path | None, typer.Option(
        "--config", exists=True, dir_okay=False,
        help="Settings file (TOML) whose [audit] retention_months sets the retention; "
        "default 24 months.")] = None,
) -> None:
    """Print the GDPR Art. 30 record of processing built from the schema and the policy."""
    from gateway.ropa import DEFAULT_RETENTION_MONTHS, build_ropa, ropa_markdown

    if fmt not in ("markdown", "json"):
        errors.print(f"--format {fmt!r} is not supported; use markdown or json")
        raise typer.Exit(2)
    retention = DEFAULT_RETENTION_MONTHS if config is None else _retention_months(config)
    catalog, engine = _load_engine()
    record = build_ropa(catalog, engine, retention_months=retention)
    if fmt == "json":
        typer.echo(json.dumps(record, indent=2, ensure_ascii=False))
    else:
        typer.echo(ropa_markdown(record), nl=False)


def _retention_months(config: Path) -> int:
    from gateway.ropa import DEFAULT_RETENTION_MONTHS

    try:
        document = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise _fail(ConfigError(f"cannot read settings file {config}: {exc}")) from exc
    value = document.get("audit", {}).get("retention_months", DEFAULT_RETENTION_MONTHS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 6:
        raise _fail(ConfigError(
            f"[audit] retention_months {value!r} in {config} is invalid; give whole months, "
            "at least 6 (the minimum for access logs)"))
    return value
