"""The ``fonte`` command line."""

from __future__ import annotations

import asyncio
import getpass
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer
from rich.console import Console
from rich.table import Table

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.audit.export import ExportFilter
    from gateway.catalog import Catalog
    from gateway.policy import PolicyEngine

app = typer.Typer(help="Fonte: a GDPR-aware GraphQL federation gateway.", no_args_is_help=True,
                  add_completion=False)
audit_app = typer.Typer(help="Verify and export the audit log.", no_args_is_help=True)
policy_app = typer.Typer(help="Inspect the field-access policy.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(policy_app, name="policy")

DEFAULT_DATA_DIR = Path(".fonte")
DataDir = Annotated[Path, typer.Option("--data-dir", help="Folder of the audit log and keys.")]
AuditStoreUrl = Annotated[str | None, typer.Option(
    "--store", help="PostgreSQL URL of the audit store, as in [audit] store, with the "
    "password if it needs one; default: the SQLite file in --data-dir.")]
Operator = Annotated[str | None, typer.Option(
    help="User id recorded as the actor of this command's own audit record; default: the "
    "login name.")]
# Messages quote settings such as "[systems.crm]", which rich markup would
# take for style tags, so markup and highlighting are off.
console = Console(markup=False, highlight=False)
errors = Console(stderr=True, markup=False, highlight=False)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _utc(moment: datetime | None) -> datetime | None:
    """Return ``moment`` as an aware UTC time; a time given without a zone is UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _fail(exc: GatewayError) -> typer.Exit:
    errors.print(f"error: {exc}", soft_wrap=True)
    return typer.Exit(2)


@app.command()
def demo(
    port: Annotated[int, typer.Option(
        min=0, max=65535, help="Gateway port on 127.0.0.1; 0 picks a free one.")] = 8000,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    customers: Annotated[int, typer.Option(min=1, max=100_000,
                                           help="Number of demo customers.")] = 2000,
    erp: Annotated[str, typer.Option(
        help="How the gateway reads the demo ERP: odoo (JSON-RPC), odoo-json2, sql, "
        "dataverse (OData v4), sap (SAP OData v2) or rest (plain REST/JSON).")
    ] = "odoo",
    log_level: Annotated[str, typer.Option(help="Log level of the gateway.")] = "warning",
    write_settings: Annotated[Path | None, typer.Option(
        help="Also write a settings file for `fonte serve` that reads this demo's systems.")
    ] = None,
) -> None:
    """Start a demo CRM, a demo ERP and the gateway in front of them."""
    from gateway.demo.launch import ERP_DIALECTS, ERP_LABELS, DemoSystems, graphiql_link, run_demo
    from gateway.serving import event_loop_factory

    _configure_logging(log_level)
    if erp not in ERP_DIALECTS:
        errors.print(f"--erp {erp!r} is not supported; use one of {', '.join(ERP_DIALECTS)}",
                     highlight=False)
        raise typer.Exit(2)

    def announce(base: str, systems: DemoSystems, tokens: dict[str, str]) -> None:
        console.print(f"Fonte demo ready: {customers} customers.", highlight=False)
        console.print(f"  CRM (Salesforce REST): {systems.crm_url}", highlight=False)
        erp_place = systems.erp_database or systems.erp_url
        console.print(f"  ERP ({ERP_LABELS[systems.erp_dialect]}): {erp_place}", highlight=False)
        console.print(f"  GraphQL endpoint:      {base}/graphql", highlight=False)
        console.print(f"  GraphiQL:              {base}/graphql\n", highlight=False)
        console.print("Bearer tokens; paste one into GraphiQL's Headers tab as:")
        console.print('  {"Authorization": "Bearer <token>"}', soft_wrap=True)
        for role, token in tokens.items():
            console.print(f"\n  {role}:\n{token}", highlight=False, soft_wrap=True)
        console.print(f"\nGraphiQL with the example query, as sales:\n"
                      f"{graphiql_link(base, tokens['sales'])}\n", highlight=False,
                      soft_wrap=True)
        if write_settings is not None:
            console.print(f"Settings for `fonte serve` written to {write_settings}")
        console.print("Press Ctrl+C to stop.")

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(run_demo(port=port, data_dir=data_dir, customers=customers, erp=erp,
                                announce=announce, settings_file=write_settings))
    except GatewayError as exc:
        raise _fail(exc) from exc
    except KeyboardInterrupt:
        pass


@app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", exists=True, dir_okay=False,
                                         help="Settings file (TOML).")],
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the gateway against the systems the settings file declares."""
    import uvicorn

    from gateway.app import check_declared_systems, create_app
    from gateway.catalog import load_catalog
    from gateway.config import load_settings
    from gateway.datadir import check_data_dir_free
    from gateway.serving import uvicorn_options

    _configure_logging(log_level)
    # The gateway checks these again at start, where an error ends in uvicorn's
    # start-up traceback instead of one line.
    try:
        settings = load_settings(config)
        check_declared_systems(load_catalog(settings.schema_dir), settings)
        check_data_dir_free(settings.data_dir)
    except GatewayError as exc:
        raise _fail(exc) from exc
    # proxy_headers off: the gateway reads X-Forwarded-For itself, and only
    # from [http] trusted_proxies.
    uvicorn.run(create_app(settings, server_process=True), host=settings.host, port=settings.port,
                log_level=log_level.lower(), access_log=False, proxy_headers=False,
                **uvicorn_options())


@app.command()
def token(
    role: Annotated[list[str], typer.Option("--role", help="Role; repeat for several.")],
    user: Annotated[str | None, typer.Option(help="User id (sub claim).")] = None,
    purpose: Annotated[str | None, typer.Option(
        help="Purpose of processing; defaults to the first role's first purpose.")] = None,
    hours: Annotated[int, typer.Option(min=1, max=720, help="Validity in hours.")] = 12,
    claim: Annotated[list[str] | None, typer.Option(
        "--claim", help="Extra string claim NAME=VALUE for row rules, e.g. region=Centro; "
        "repeat for several.")] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Print a development bearer token that a demo gateway with DATA_DIR accepts."""
    from gateway.identity import issue_token, load_or_create_signing_key

    _, engine = _load_engine()
    unknown = [r for r in role if r not in engine.roles]
    if unknown:
        errors.print(f"role {unknown[0]!r} has no rules in the policy; use one of "
                     f"{', '.join(engine.roles)}")
        raise typer.Exit(2)
    listed = engine.purposes.get(role[0], [])
    if purpose is None:
        purpose = listed[0] if listed else None
    elif purpose not in engine.purposes_of(role):
        errors.print(f"purpose {purpose!r} is not listed for role(s) {', '.join(role)} in "
                     "policies/purposes.toml; use one of "
                     f"{', '.join(sorted(engine.purposes_of(role))) or 'none'}")
        raise typer.Exit(2)
    extra = {}
    for item in claim or []:
        name, separator, value = item.partition("=")
        if not separator or not name:
            errors.print(f"--claim {item!r} is invalid; write NAME=VALUE", highlight=False)
            raise typer.Exit(2)
        extra[name] = value
    key_path = data_dir / "keys" / "token-signing.pem"
    if not key_path.exists():
        errors.print(f"created a new signing key at {key_path}: only a gateway started with "
                     f"--data-dir {data_dir} accepts this token")
    try:
        key = load_or_create_signing_key(key_path)
    except GatewayError as exc:
        raise _fail(exc) from exc
    typer.echo(issue_token(key, user=user or f"demo-{role[0]}", roles=list(role),
                           purpose=purpose, ttl_seconds=hours * 3600, extra=extra))


def _audit_target(data_dir: Path, store: str | None) -> Path | str:
    """Return the audit store's URL, or the path of its SQLite file, which must exist."""
    if store is not None:
        return store
    path = data_dir / "audit.sqlite3"
    if not path.is_file():
        errors.print(f"no audit log at {path}; pass the gateway's --data-dir, or --store "
                     "for a PostgreSQL store", highlight=False)
        raise typer.Exit(2)
    return path


@audit_app.command("verify")
def audit_verify(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    anchor: Annotated[list[Path] | None, typer.Option(
        "--anchor", help="File of checkpoint notes kept outside the gateway to compare with "
        "the log; repeat for several.")] = None,
    store: AuditStoreUrl = None,
) -> None:
    """Check the audit log's hash chain and signed checkpoints; exit 1 naming the first fault."""
    from gateway.audit.keys import load_public_keys
    from gateway.audit.verify import verify_store

    target = _audit_target(data_dir, store)
    try:
        public_keys = load_public_keys(data_dir / "keys" / "audit-checkpoint-public")
        report = asyncio.run(verify_store(target, public_keys=public_keys, anchors=anchor or []))
    except GatewayError as exc:
        raise _fail(exc) from exc
    except ValueError as exc:
        errors.print(f"error: {exc}", soft_wrap=True)
        raise typer.Exit(2) from exc
    if report.ok:
        console.print(f"audit log intact: {report.summary()}")
        return
    errors.print(f"audit log {report.summary()}")
    raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    subject: Annotated[str | None, typer.Option(
        help="Data subject: a customer or contact id, as the CRM knows it.")] = None,
    subject_type: Annotated[str, typer.Option(help="customer or contact.")] = "customer",
    actor: Annotated[str | None, typer.Option(help="Caller's user id.")] = None,
    role: Annotated[str | None, typer.Option(help="One of the caller's roles.")] = None,
    purpose: Annotated[str | None, typer.Option(help="Purpose of processing.")] = None,
    system: Annotated[str | None, typer.Option(help="Source system read, e.g. crm.")] = None,
    field: Annotated[str | None, typer.Option(
        help="Field named by the request, as Type.field.")] = None,
    category: Annotated[str | None, typer.Option(
        help="Data category of a field, or a parent category such as contact.")] = None,
    since: Annotated[datetime | None, typer.Option(
        help="From this time, inclusive; without a zone it is UTC (2026-12-04T08:00).")] = None,
    until: Annotated[datetime | None, typer.Option(
        help="Before this time, exclusive; without a zone it is UTC.")] = None,
    output: Annotated[Path | None, typer.Option(help="File to write; default stdout.")] = None,
    operator: Operator = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    store: AuditStoreUrl = None,
) -> None:
    """Export audit records as JSON Lines or CSV, and record the export in the log."""
    from gateway.audit.export import ExportFilter

    if fmt not in ("jsonl", "csv"):
        errors.print(f"--format {fmt!r} is not supported; use jsonl or csv", highlight=False)
        raise typer.Exit(2)
    path = _audit_target(data_dir, store)
    subject_ref = None if subject is None else _subject_ref(data_dir, subject_type, subject)
    since, until = _utc(since), _utc(until)
    if since is not None and until is not None and since >= until:
        errors.print(f"--since {since.isoformat()} is not before --until {until.isoformat()}; "
                     "swap them or widen the range")
        raise typer.Exit(2)
    filters = ExportFilter(subject_ref=subject_ref, actor=actor, role=role, purpose=purpose,
                           system=system, field=field, category=category, since=since,
                           until=until)
    # No data folder lock: the store reads its head inside BEGIN IMMEDIATE, so this
    # record and a running gateway's records extend one chain.
    try:
        count = _run_export(path, fmt, filters, output)
        from gateway.audit.operations import admin_event, record_admin_event

        details = {"format": fmt, "records": count, **filters.applied()}
        event = admin_event("export", _operator(operator), details)
        asyncio.run(record_admin_event(path, event))
    except GatewayError as exc:
        raise _fail(exc) from exc
    except ValueError as exc:
        errors.print(f"error: {exc}", soft_wrap=True)
        raise typer.Exit(2) from exc
    errors.print(f"{_count(count, 'record')} exported")


def _run_export(path: Path | str, fmt: str, filters: ExportFilter, output: Path | None) -> int:
    """Write the export, with a progress bar when standard error is a terminal."""
    from rich.progress import Progress

    from gateway.audit.export import ExportOutputError, export_records, last_seq, output_error

    def run(handle: TextIO, progress: Callable[[int], None] | None) -> int:
        return asyncio.run(export_records(path, handle, fmt=fmt,  # type: ignore[arg-type]
                                          filters=filters, progress=progress))

    def run_to(progress: Callable[[int], None] | None) -> int:
        if output is None:
            return run(sys.stdout, progress)
        try:
            handle = output.open("w", encoding="utf-8", newline="")
        except OSError as exc:
            raise ExportOutputError(f"cannot write --output {output}: {exc.strerror or exc}; "
                                    "pass a file in an existing, writable folder") from exc
        try:
            with handle:
                return run(handle, progress)
        except BaseException as exc:
            # A partial export would look complete to a later reader.
            output.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                # Closing the file flushes its last buffer, which can fail on a full disk.
                raise output_error(exc) from exc
            raise

    if not errors.is_terminal:
        return run_to(None)
    total = asyncio.run(last_seq(path))
    with Progress(console=errors, transient=True) as bar:
        task = bar.add_task("exporting", total=total)
        return run_to(lambda seq: bar.update(task, completed=seq))


_SUBJECT_TYPES = ("customer", "contact")


def _check_subject_type(subject_type: str) -> None:
    if subject_type not in _SUBJECT_TYPES:
        errors.print(f"--subject-type {subject_type!r} is not supported; use customer or "
                     "contact")
        raise typer.Exit(2)


def _subject_ref(data_dir: Path, subject_type: str, subject: str) -> str:
    from gateway.audit.pseudonym import Pseudonymizer, load_or_create_key

    # A pseudonym of an unknown type matches no record, so a typo would look like
    # a subject that was never consulted.
    _check_subject_type(subject_type)
    key_path = data_dir / "keys" / "audit-pseudonym.key"
    if not key_path.is_file():
        # A new key would give a pseudonym that matches no record, and an erasure
        # or report with it would look successful.
        errors.print(f"pseudonym key {key_path} not found; pass the gateway's --data-dir",
                     soft_wrap=True)
        raise typer.Exit(2)
    try:
        key = load_or_create_key(key_path)
    except GatewayError as exc:
        raise _fail(exc) from exc
    return Pseudonymizer(key).token(subject_type, subject)


@contextmanager
def _claim(data_dir: Path) -> Iterator[None]:
    """Hold the data folder's lock, so that no gateway runs while a command erases a subject."""
    from gateway.datadir import claim_data_dir

    try:
        lock = claim_data_dir(data_dir)
    except GatewayError as exc:
        errors.print(f"error: {exc}. This command deletes rows that a running gateway caches "
                     "and reads; stop the gateway first", soft_wrap=True)
        raise typer.Exit(2) from exc
    try:
        yield
    finally:
        lock.close()


def _operator(operator: str | None) -> str:
    return operator or getpass.getuser()


@audit_app.command("migrate")
def audit_migrate(data_dir: DataDir = DEFAULT_DATA_DIR, store: AuditStoreUrl = None) -> None:
    """Create the audit tables or upgrade them to this release's schema revision."""
    from gateway.audit.maintenance import migrate_store

    if store is None and not data_dir.is_dir():
        errors.print(f"data dir {data_dir} not found; pass the gateway's --data-dir",
                     highlight=False)
        raise typer.Exit(2)
    target: Path | str = store if store is not None else data_dir / "audit.sqlite3"
    try:
        before, after = asyncio.run(migrate_store(target))
    except GatewayError as exc:
        raise _fail(exc) from exc
    except ValueError as exc:
        errors.print(f"error: {exc}", soft_wrap=True)
        raise typer.Exit(2) from exc
    if before == after:
        console.print(f"audit store already at schema revision {after}")
    else:
        console.print(f"audit store migrated from schema revision {before or 'none'} to {after}")


@audit_app.command("purge")
def audit_purge(
    retention_months: Annotated[int | None, typer.Option(
        help="Keep records younger than this many months, at least 6; default: [audit] "
        "retention_months of --config, else 24.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", exists=True, dir_okay=False,
        help="Gateway settings file: its data_dir, [audit] store and retention_months "
        "apply unless the options here are given.")] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    store: AuditStoreUrl = None,
) -> None:
    """Delete records older than the retention period, up to a signed checkpoint.

    The log is verified first, and the purge is recorded as an audit record. An SQLite
    store can be purged only while no gateway uses its data dir.
    """
    from gateway.audit.maintenance import purge_store
    from gateway.config import DEFAULT_RETENTION_MONTHS, MIN_RETENTION_MONTHS, load_settings

    if config is not None:
        try:
            settings = load_settings(config)
        except GatewayError as exc:
            raise _fail(exc) from exc
        data_dir = settings.data_dir if data_dir == DEFAULT_DATA_DIR else data_dir
        store = store if store is not None else settings.audit_store_url
        if retention_months is None:
            retention_months = settings.audit_retention_months
    if retention_months is None:
        retention_months = DEFAULT_RETENTION_MONTHS
    if retention_months < MIN_RETENTION_MONTHS:
        errors.print(f"--retention-months {retention_months} is below the minimum of "
                     f"{MIN_RETENTION_MONTHS} months that access logs must be kept; pass "
                     f"{MIN_RETENTION_MONTHS} or more")
        raise typer.Exit(2)
    target = _audit_target(data_dir, store)
    try:
        result = asyncio.run(purge_store(target, data_dir, retention_months))
    except GatewayError as exc:
        raise _fail(exc) from exc
    except ValueError as exc:
        errors.print(f"error: {exc}", soft_wrap=True)
        raise typer.Exit(2) from exc
    if result.through_seq == 0:
        console.print(f"no records to purge: no signed checkpoint covers only records older "
                      f"than {result.cutoff}")
        return
    console.print(f"purged {_count(result.records, 'record')} through seq "
                  f"{result.through_seq}, older than {result.cutoff}, up to checkpoint "
                  f"{result.checkpoint_id}")


@policy_app.command("matrix")
def policy_matrix(
    purpose: Annotated[str | None, typer.Option(
        help="Purpose to evaluate; default: each role's first purpose.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table or csv.")] = "table",
) -> None:
    """Print the role x field table that the policy files produce."""
    if fmt not in ("table", "csv"):
        errors.print(f"--format {fmt!r} is not supported; use table or csv")
        raise typer.Exit(2)
    catalog, engine = _load_engine()
    purposes = engine.purposes
    if purpose is not None and purpose not in engine.purposes_of(engine.roles):
        errors.print(f"purpose {purpose!r} is not listed for any role in "
                     "policies/purposes.toml, so every personal field shows deny")
    roles = engine.roles
    table = Table(title=f"Field access, policy {engine.version}")
    # Field names never shrink, so a narrow console or a pipe (80 columns)
    # wraps the other columns instead of cutting names short.
    longest = max(len(decl.qualified_name) for decl in catalog.all_fields())
    table.add_column("field", no_wrap=True, min_width=longest)
    table.add_column("category", overflow="fold")
    def purpose_of(role: str) -> str | None:
        listed = purposes.get(role, [])
        return purpose or (listed[0] if listed else None)

    for role in roles:
        role_purpose = purpose_of(role)
        table.add_column(f"{role}\n({role_purpose or 'no purpose'})", overflow="fold",
                         min_width=5)
    rows = []
    for decl in catalog.all_fields():
        cells = [decl.qualified_name, decl.category]
        for role in roles:
            role_purpose = purpose_of(role)
            decision = engine.view([role], role_purpose).decide(decl.qualified_name)
            cells.append(_decision_text(decision.effect, decision.mask))
        rows.append(cells)
    if fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["field", "category", *(f"{r} ({purpose_of(r) or ''})" for r in roles)])
        writer.writerows(rows)
        return
    for cells in rows:
        table.add_row(*cells)
    # A pipe or a file gets the whole table, not one folded to rich's 80 columns.
    out = console if console.is_terminal else Console(markup=False, highlight=False,
                                                      width=1_000)
    out.print(table)


def _decision_text(effect: str, mask: str | None) -> str:
    return f"mask:{mask}" if effect == "mask" else effect


def _load_engine() -> tuple[Catalog, PolicyEngine]:
    from gateway.catalog import load_catalog
    from gateway.policy import PolicyEngine

    try:
        catalog = load_catalog()
        return catalog, PolicyEngine.from_directory(catalog)
    except GatewayError as exc:
        raise _fail(exc) from exc


@policy_app.command("explain")
def policy_explain(
    role: Annotated[list[str], typer.Option("--role", help="Role; repeat for several.")],
    field: Annotated[str, typer.Option(help="Field as Type.field, e.g. Customer.iban.")],
    purpose: Annotated[str | None, typer.Option(help="Purpose of processing.")] = None,
) -> None:
    """Print the decision on one field for roles and a purpose, and the rule behind it."""
    _, engine = _load_engine()
    unknown = [r for r in role if r not in engine.roles]
    if unknown:
        errors.print(f"role {unknown[0]!r} has no rules in the policy; use one of "
                     f"{', '.join(engine.roles)}", highlight=False)
        raise typer.Exit(2)
    try:
        decision = engine.explain(role, purpose, field)
    except GatewayError as exc:
        raise _fail(exc) from exc
    effective = engine.view(role, purpose).purpose
    console.print(f"{field}: {_decision_text(decision.effect, decision.mask)}", highlight=False)
    listed = ", ".join(sorted(engine.purposes_of(role))) or "none"
    if purpose is None:
        console.print("  no purpose given, so only rules for any purpose (*) apply; pass "
                      f"--purpose, one of: {listed}", highlight=False)
    elif effective is None:
        console.print(f"  purpose {purpose!r} is not listed for role(s) {', '.join(role)} in "
                      "policies/purposes.toml, so it counts as no purpose", highlight=False)
    rule = engine.rules.get(decision.rule)
    if rule is None:
        console.print("  rule: none matched, so the default applies (deny)", highlight=False)
    else:
        console.print(f"  rule {decision.rule}: p, {rule}", highlight=False)
    console.print(f"  policy version {engine.version}", highlight=False)


@policy_app.command("test")
def policy_test(
    table: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=(
        "CSV with the header role,purpose,field,expected; expected is allow, deny or "
        "mask:<kind>; roles joined with '+' hold several roles."))],
) -> None:
    """Check a truth table against the policy; exit 1 listing every mismatch."""
    import csv

    _, engine = _load_engine()
    # utf-8-sig also reads the byte order mark that spreadsheet programs write.
    try:
        with table.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames != ["role", "purpose", "field", "expected"]:
                errors.print(f"{table}: the header must be role,purpose,field,expected; found "
                             f"{','.join(reader.fieldnames or [])}", highlight=False)
                raise typer.Exit(2)
            rows = list(reader)
    except UnicodeDecodeError as exc:
        errors.print(f"{table} is not UTF-8 text; save it as CSV in UTF-8",
                     highlight=False)
        raise typer.Exit(2) from exc
    mismatches = 0
    for line, row in enumerate(rows, start=2):
        roles = [r for r in row["role"].split("+") if r]
        purpose = row["purpose"] or None
        try:
            decision = engine.explain(roles, purpose, row["field"])
        except GatewayError as exc:
            errors.print(f"{table}:{line}: {exc}", highlight=False)
            mismatches += 1
            continue
        actual = _decision_text(decision.effect, decision.mask)
        if actual != row["expected"]:
            mismatches += 1
            console.print(f"{table}:{line}: {row['role']} / {purpose or 'no purpose'} / "
                          f"{row['field']}: expected {row['expected']}, policy gives {actual} "
                          f"({engine.rules.get(decision.rule, decision.rule)})", highlight=False)
    console.print(f"{len(rows)} rows checked, {mismatches} mismatches, policy {engine.version}",
                  highlight=False)
    if mismatches:
        raise typer.Exit(1)


@policy_app.command("push")
def policy_push(
    database: Annotated[str, typer.Option(
        help="SQLAlchemy URL of the policy database, without a password.")],
    password_env: Annotated[str | None, typer.Option(
        help="Environment variable holding the database password.")] = None,
    redis: Annotated[str | None, typer.Option(help="Redis URL to notify the gateways on.")
                     ] = None,
    redis_password_env: Annotated[str | None, typer.Option(
        help="Environment variable holding the Redis password.")] = None,
    redis_channel: Annotated[str, typer.Option(help="Redis channel the gateways listen on.")
                             ] = "fonte:policy",
    pg_notify: Annotated[bool, typer.Option(
        help="Notify the gateways with PostgreSQL NOTIFY fonte_policy.")] = False,
    policy_dir: Annotated[Path | None, typer.Option(
        help="Folder with policy.csv; default: the shipped policies/.")] = None,
) -> None:
    """Replace the rules in the policy database with policy.csv, then notify the gateways."""
    from gateway.policy_store import push

    try:
        published = asyncio.run(push(
            database, password_env=password_env, redis=redis,
            redis_password_env=redis_password_env, redis_channel=redis_channel,
            pg_notify=pg_notify, directory=policy_dir))
    except GatewayError as exc:
        raise _fail(exc) from exc
    notified = ("" if published.receivers is None
                else f", {published.receivers} Redis subscribers notified")
    console.print(f"policy {published.version} pushed: {published.rows} rows{notified}")


def main() -> None:
    app()


# The audit commands that need more than a few lines live in their own module, which
# registers them on audit_app and app when imported.
from gateway import cli_audit  # noqa: E402,F401
