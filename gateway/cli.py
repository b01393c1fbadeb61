"""The ``fonte`` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gateway.errors import GatewayError

app = typer.Typer(help="Fonte: a GDPR-aware GraphQL federation gateway.", no_args_is_help=True,
                  add_completion=False)
audit_app = typer.Typer(help="Verify and export the audit log.", no_args_is_help=True)
policy_app = typer.Typer(help="Inspect the field-access policy.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(policy_app, name="policy")

DEFAULT_DATA_DIR = Path(".fonte")
DataDir = Annotated[Path, typer.Option("--data-dir", help="Folder of the audit log and keys.")]
console = Console()
errors = Console(stderr=True)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(exc: GatewayError) -> typer.Exit:
    errors.print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(2)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Gateway port on 127.0.0.1; 0 picks a free one.")
                    ] = 8000,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    customers: Annotated[int, typer.Option(min=1, max=100_000,
                                           help="Number of demo customers.")] = 2000,
    erp: Annotated[str, typer.Option(
        help="How the gateway reads the demo ERP: odoo (JSON-RPC), odoo-json2 or sql.")
    ] = "odoo",
    log_level: Annotated[str, typer.Option(help="Log level of the gateway.")] = "warning",
) -> None:
    """Start a demo CRM, a demo ERP and the gateway in front of them."""
    from gateway.demo.launch import ERP_DIALECTS, ERP_LABELS, DemoSystems, graphiql_link, run_demo

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
        console.print("Bearer tokens (paste into GraphiQL's Headers tab as "
                      '{"Authorization": "Bearer <token>"}):', highlight=False)
        for role, token in tokens.items():
            console.print(f"\n  {role}:\n{token}", highlight=False, soft_wrap=True)
        console.print(f"\nGraphiQL with the example query, as sales:\n"
                      f"{graphiql_link(base, tokens['sales'])}\n", highlight=False,
                      soft_wrap=True)
        console.print("Press Ctrl+C to stop.", highlight=False)

    try:
        asyncio.run(run_demo(port=port, data_dir=data_dir, customers=customers, erp=erp,
                             announce=announce))
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

    from gateway.app import create_app
    from gateway.config import load_settings

    _configure_logging(log_level)
    try:
        settings = load_settings(config)
    except GatewayError as exc:
        raise _fail(exc) from exc
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=log_level.lower(), access_log=False)


@app.command()
def token(
    role: Annotated[list[str], typer.Option("--role", help="Role; repeat for several.")],
    user: Annotated[str | None, typer.Option(help="User id (sub claim).")] = None,
    purpose: Annotated[str | None, typer.Option(
        help="Purpose of processing; defaults to the first role's first purpose.")] = None,
    hours: Annotated[int, typer.Option(min=1, max=720, help="Validity in hours.")] = 12,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Print a development bearer token that a demo gateway with DATA_DIR accepts."""
    from gateway.demo.launch import role_purposes
    from gateway.identity import issue_token, load_or_create_signing_key

    purposes = role_purposes()
    if purpose is None:
        purpose = (purposes.get(role[0]) or [None])[0]
    key = load_or_create_signing_key(data_dir / "keys" / "token-signing.pem")
    typer.echo(issue_token(key, user=user or f"demo-{role[0]}", roles=list(role),
                           purpose=purpose, ttl_seconds=hours * 3600))


@audit_app.command("verify")
def audit_verify(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Check the audit log's hash chain; exit 1 naming the first bad record."""
    from gateway.audit.verify import verify_store

    path = data_dir / "audit.sqlite3"
    if not path.is_file():
        errors.print(f"no audit log at {path}; pass the gateway's --data-dir", highlight=False)
        raise typer.Exit(2)
    try:
        report = asyncio.run(verify_store(path))
    except GatewayError as exc:
        raise _fail(exc) from exc
    if report.ok:
        console.print(f"audit log intact: {report.records} records verified", highlight=False)
        return
    errors.print(f"audit log BROKEN at record {report.first_bad_seq}: {report.reason} "
                 f"({report.records} records read)", highlight=False)
    raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    subject: Annotated[str | None, typer.Option(
        help="Data subject: a customer or contact id, as the CRM knows it.")] = None,
    subject_type: Annotated[str, typer.Option(help="customer or contact.")] = "customer",
    actor: Annotated[str | None, typer.Option(help="Caller's user id.")] = None,
    since: Annotated[datetime | None, typer.Option(help="From this time (UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Before this time (UTC).")] = None,
    output: Annotated[Path | None, typer.Option(help="File to write; default stdout.")] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Export audit records as JSON Lines or CSV."""
    from gateway.audit.export import ExportFilter, export_records
    from gateway.audit.pseudonym import Pseudonymizer, load_or_create_key

    if fmt not in ("jsonl", "csv"):
        errors.print(f"--format {fmt!r} is not supported; use jsonl or csv", highlight=False)
        raise typer.Exit(2)
    path = data_dir / "audit.sqlite3"
    if not path.is_file():
        errors.print(f"no audit log at {path}; pass the gateway's --data-dir", highlight=False)
        raise typer.Exit(2)
    subject_ref = None
    if subject is not None:
        key = load_or_create_key(data_dir / "keys" / "audit-pseudonym.key")
        subject_ref = Pseudonymizer(key).token(subject_type, subject)
    filters = ExportFilter(subject_ref=subject_ref, actor=actor, since=since, until=until)
    try:
        if output is None:
            count = asyncio.run(export_records(path, sys.stdout, fmt=fmt,  # type: ignore[arg-type]
                                               filters=filters))
        else:
            with output.open("w", encoding="utf-8", newline="") as handle:
                count = asyncio.run(export_records(path, handle, fmt=fmt,  # type: ignore[arg-type]
                                                   filters=filters))
    except GatewayError as exc:
        raise _fail(exc) from exc
    errors.print(f"{count} records exported", highlight=False)


@policy_app.command("matrix")
def policy_matrix(
    purpose: Annotated[str | None, typer.Option(
        help="Purpose to evaluate; default: each role's first purpose.")] = None,
) -> None:
    """Print the role x field table that the policy files produce."""
    from gateway.catalog import load_catalog
    from gateway.demo.launch import role_purposes
    from gateway.policy import PolicyEngine

    try:
        catalog = load_catalog()
        engine = PolicyEngine(catalog)
    except GatewayError as exc:
        raise _fail(exc) from exc
    purposes = role_purposes()
    roles = engine.roles
    table = Table(title=f"Field access, policy {engine.version}")
    # Field names never shrink, so a narrow console or a pipe (80 columns)
    # wraps the other columns instead of cutting names short.
    longest = max(len(decl.qualified_name) for decl in catalog.all_fields())
    table.add_column("field", no_wrap=True, min_width=longest)
    table.add_column("category", overflow="fold")
    for role in roles:
        role_purpose = purpose or (purposes.get(role) or [None])[0]
        table.add_column(f"{role}\n({role_purpose or 'no purpose'})", overflow="fold",
                         min_width=5)
    for decl in catalog.all_fields():
        cells = [decl.qualified_name, decl.category]
        for role in roles:
            role_purpose = purpose or (purposes.get(role) or [None])[0]
            decision = engine.view([role], role_purpose).decide(decl.qualified_name)
            cells.append("allow" if decision.effect == "allow" else
                         f"mask:{decision.mask}" if decision.effect == "mask" else "deny")
        table.add_row(*cells)
    console.print(table)


def main() -> None:
    app()
