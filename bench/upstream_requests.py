"""Count the upstream requests of one GraphQL query with each ERP dialect and data size.

Workloads:

- ``ten-fields``: the 100-customer query of ``query_cost.py`` (``customers(first: N)``
  with 7 CRM and 3 ERP fields, as the finance role), for every customer up to 500.
- ``example``: the README's example query (``fonte demo`` prints it), with contacts,
  orders, shipments and invoices under each customer, for the same N customers, as the
  sales role. The fields that sales may not read come back FORBIDDEN and cause no
  upstream request.

For each ERP dialect and demo data size the script starts the demo CRM and ERP on
loopback ports (``fonte demo --erp``) and a gateway in-process in front of them. It sends
the query once to fetch tokens, log in and reflect tables, then clears the request logs
and sends it again. HTTP requests are counted from the demo servers' request logs, with the parts
of an OData ``$batch`` counted inside their one POST. SQL SELECT statements are counted
with a SQLAlchemy event on the gateway's engine. See ``bench/README.md``.

    .venv/bin/python bench/upstream_requests.py [--sizes 10,100,1000]
        [--dialects odoo,odoo-json2,sql,dataverse,sap,rest] [--workload ten-fields|example]

Exit status: 0 when every query returned without errors, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

from gateway.app import create_app
from gateway.config import Settings
from gateway.demo.data import DemoData, generate
from gateway.demo.launch import ERP_DIALECTS, EXAMPLE_QUERY, start_demo_systems, stop_background
from gateway.graphql_schema import MAX_PAGE_SIZE
from gateway.identity import issue_token, load_or_create_signing_key
from gateway.sources.resilience import ResilientSource
from gateway.sources.sql import SqlSource

log = logging.getLogger("bench.upstream_requests")

# (role, purpose) of each workload's caller.
CALLERS = {"ten-fields": ("finance", "billing"), "example": ("sales", "sales")}
TEN_FIELDS_QUERY = (
    "query CustomerCost($first: Int!) {\n"
    "  customers(first: $first) {\n"
    "    edges { node { id name vatNumber street city postalCode province creditLimit "
    "openBalance iban } }\n"
    "    pageInfo { hasNextPage endCursor }\n"
    "  }\n"
    "}\n"
)
EXAMPLE_FIRST = "customers(first: 3)"
WORKLOADS = ("ten-fields", "example")
DEFAULT_SIZES = (10, 100, 1000)
REQUEST_TIMEOUT_SECONDS = 60.0


class BenchmarkError(Exception):
    """A query failed or returned errors."""


@dataclass
class Count:
    """Upstream requests of one query per system: HTTP requests, or SQL SELECT statements."""

    dialect: str
    customers: int
    rows: int
    requests: dict[str, int] = field(default_factory=dict)

    def total(self) -> int:
        return sum(self.requests.values())


def query_text(workload: str) -> str:
    """Return the query of ``workload``, with the page size as the ``$first`` variable."""
    if workload == "ten-fields":
        return TEN_FIELDS_QUERY
    if EXAMPLE_FIRST not in EXAMPLE_QUERY:
        raise BenchmarkError(f"the example query no longer contains {EXAMPLE_FIRST!r}; update "
                             "bench/upstream_requests.py")
    text = EXAMPLE_QUERY.replace(EXAMPLE_FIRST, "customers(first: $first)")
    return text.replace("query CustomerList {", "query CustomerList($first: Int!) {")


def _sql_source(gateway: Any) -> SqlSource | None:
    source = gateway.sources.get("erp")
    if isinstance(source, ResilientSource):
        source = source.inner
    return source if isinstance(source, SqlSource) else None


@dataclass
class _Statements:
    """The SELECT statements the gateway's SQL engine sent, without session settings."""

    count: int = 0

    def record(self, _connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.count += 1


@contextlib.asynccontextmanager
async def running(dialect: str, data: DemoData, scratch: Path,
                  workload: str) -> AsyncIterator[
        tuple[httpx.AsyncClient, dict[str, httpx.AsyncClient], _Statements, str]]:
    """Start the demo systems on loopback and the gateway in-process in front of them.

    Yields the gateway client, clients for the demo servers' request logs, the SQL
    statement counter and a token for the workload's caller.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    systems, servers = await start_demo_systems(data, dialect, scratch=scratch)
    settings = Settings(systems={"crm": systems.crm, "erp": systems.erp},
                        data_dir=scratch / "data", graphiql=False, development_tokens=True)
    key = load_or_create_signing_key(settings.signing_key_path)
    role, purpose = CALLERS[workload]
    token = issue_token(key, user="bench", roles=[role], purpose=purpose)
    app = create_app(settings)
    statements = _Statements()
    logs = {"crm": systems.crm_url}
    if dialect != "sql":
        logs["erp"] = systems.erp_url
    try:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(app.router.lifespan_context(app))
            sql = _sql_source(app.state.gateway)
            if sql is not None:
                event.listen(sql.engine.sync_engine, "before_cursor_execute", statements.record)
            gateway = await stack.enter_async_context(httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gateway.bench",
                timeout=REQUEST_TIMEOUT_SECONDS))
            clients = {name: await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS))
                for name, url in logs.items()}
            yield gateway, clients, statements, token
    finally:
        for server in reversed(servers):
            await stop_background(server)


async def _query(gateway: httpx.AsyncClient, token: str, text: str, first: int) -> None:
    response = await gateway.post("/graphql", json={"query": text, "variables": {"first": first}},
                                  headers={"Authorization": f"Bearer {token}"})
    if response.status_code != 200:
        raise BenchmarkError(f"the gateway returned HTTP {response.status_code}")
    body = response.json()
    codes = {str(e.get("extensions", {}).get("code")) for e in body.get("errors", [])}
    if codes - {"FORBIDDEN"}:
        raise BenchmarkError(f"the query returned errors {', '.join(sorted(codes))}")
    edges = body["data"]["customers"]["edges"]
    if len(edges) != first:
        raise BenchmarkError(f"the query returned {len(edges)} customers, expected {first}")


async def count_requests(dialect: str, data: DemoData, workload: str,
                         scratch: Path) -> Count:
    """Send the workload's query twice and count the second query's upstream requests."""
    customers = len(data.crm["Account"])
    first = min(customers, MAX_PAGE_SIZE)
    text = query_text(workload)
    async with running(dialect, data, scratch, workload) as (gateway, clients, statements,
                                                             token):
        await _query(gateway, token, text, first)
        for client in clients.values():
            (await client.delete("/__fonte/requests")).raise_for_status()
        statements.count = 0

        await _query(gateway, token, text, first)

        count = Count(dialect, customers, first)
        for system, client in clients.items():
            response = await client.get("/__fonte/requests")
            response.raise_for_status()
            logged = response.json()["requests"]
            count.requests[system] = sum(1 for entry in logged if not entry["in_batch"])
        if dialect == "sql":
            count.requests["erp"] = statements.count
    return count


async def sweep(dialects: Sequence[str], sizes: Sequence[int], workload: str,
                scratch: Path) -> list[Count]:
    """Count the requests of every dialect at every size, generating the data once per size."""
    counts = []
    for size in sizes:
        data = generate(customers=size)
        for dialect in dialects:
            counts.append(await count_requests(dialect, data, workload,
                                               scratch / f"{dialect}-{size}"))
    return counts


def format_table(counts: Sequence[Count], sizes: Sequence[int]) -> str:
    """Return a Markdown table: one row per dialect, CRM + ERP requests per size."""
    header = "| ERP dialect | " + " | ".join(f"{size} customers" for size in sizes) + " |"
    lines = [header, "|---" * (len(sizes) + 1) + "|"]
    for dialect in dict.fromkeys(count.dialect for count in counts):
        cells = []
        for size in sizes:
            found = next(c for c in counts if c.dialect == dialect and c.customers == size)
            cells.append(f"{found.requests['crm']} + {found.requests['erp']}")
        lines.append(f"| {dialect} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what} {text!r} is invalid: use a comma-separated "
                                         f"list of {', '.join(allowed)}")
    return names


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(size < 1 or size > 10_000 for size in sizes):
        raise argparse.ArgumentTypeError(f"sizes {text!r} are invalid: use comma-separated "
                                         "customer counts from 1 to 10000, such as 10,100,1000")
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=list(DEFAULT_SIZES),
                        help="demo customer counts, comma-separated (default: 10,100,1000)")
    parser.add_argument("--dialects", type=lambda t: _names(t, ERP_DIALECTS, "dialects"),
                        default=list(ERP_DIALECTS),
                        help=f"ERP dialects, comma-separated (default: {','.join(ERP_DIALECTS)})")
    parser.add_argument("--workload", choices=WORKLOADS, default="ten-fields",
                        help="the query to send (default: ten-fields)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="fonte-bench-") as scratch:
        try:
            counts = asyncio.run(sweep(args.dialects, args.sizes, args.workload, Path(scratch)))
        except BenchmarkError as exc:
            print(f"upstream_requests: {exc}", file=sys.stderr)
            return 1
    print(f"workload {args.workload}: CRM + ERP upstream requests per query")
    print(format_table(counts, args.sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
