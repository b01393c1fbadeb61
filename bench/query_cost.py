"""Measure the cost of one GraphQL query through the gateway, beside plain graphql-core.

Workload: ``customers(first: N)`` selecting 10 scalar fields that the finance role may
read: 7 from the CRM account and 3 from the ERP (partner and bank account). The script
times the gateway end to end through its ASGI app, the same result shape executed by
plain graphql-core over prepared dicts, counts the upstream calls per query at several
customer counts, and records peak RSS and the machine. See ``bench/README.md``.

    .venv/bin/python bench/query_cost.py [--customers 100] [--iterations 200]
        [--transport asgi|loopback] [--output bench/results/query_cost_asgi.json]

Exit status: 0 when every check passed, 1 when a response or a call count check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import decimal
import importlib.metadata
import io
import logging
import math
import os
import platform
import pstats
import resource
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from graphql import GraphQLScalarType, build_schema, execute_sync, graphql_sync, parse

from gateway.app import Gateway, create_app
from gateway.config import Settings
from gateway.demo.data import generate
from gateway.demo.launch import (
    LOOPBACK,
    serve_in_background,
    start_demo_systems,
    stop_background,
)
from gateway.demo.odoo import create_odoo_app
from gateway.demo.salesforce import create_salesforce_app
from gateway.graphql_schema import MAX_PAGE_SIZE
from gateway.identity import issue_token, load_or_create_signing_key
from gateway.sources import FetchRequest, Row
from gateway.sources.odoo import OdooSettings
from gateway.sources.salesforce import SalesforceSettings

log = logging.getLogger("bench.query_cost")

ROLE, PURPOSE = "finance", "billing"
# Checked with `fonte policy matrix`: finance may read all ten. No role may read more than
# three of the four ERP fields of Customer, so the split is 7 CRM + 3 ERP, not 5 + 5.
CRM_FIELDS = ("id", "name", "vatNumber", "street", "city", "postalCode", "province")
ERP_FIELDS = ("creditLimit", "openBalance", "iban")
FIELDS = CRM_FIELDS + ERP_FIELDS
DECIMAL_FIELDS = ("creditLimit", "openBalance")
QUERY = (
    "query CustomerCost($first: Int!, $after: String) {\n"
    "  customers(first: $first, after: $after) {\n"
    f"    edges {{ node {{ {' '.join(FIELDS)} }} }}\n"
    "    pageInfo { hasNextPage endCursor }\n"
    "  }\n"
    "}\n"
)
# The gateway's types for the selected fields, with the same nullability.
BASELINE_SDL = """
scalar Decimal
type PageInfo { hasNextPage: Boolean! endCursor: String }
type Customer {
  id: ID! name: String vatNumber: String street: String city: String postalCode: String
  province: String creditLimit: Decimal openBalance: Decimal iban: String
}
type CustomerEdge { cursor: String! node: Customer! }
type CustomerConnection { edges: [CustomerEdge!]! pageInfo: PageInfo! }
type Query { customers(first: Int! = 50, after: String = null): CustomerConnection }
"""
PACKAGES = ("strawberry-graphql", "graphql-core", "httpx", "starlette", "uvicorn", "orjson",
            "SQLAlchemy", "aiosqlite")
MAX_ITERATIONS = 100_000
REQUEST_TIMEOUT_SECONDS = 30.0
Timings = list[float]
Fetch = Callable[[FetchRequest], Coroutine[Any, Any, list[Row]]]


class BenchmarkError(Exception):
    """A response or a call count did not match the workload; the numbers are void."""


def dump_json(body: Any) -> bytes:
    """Serialise ``body`` as the gateway's ``_json`` response helper does (orjson)."""
    return orjson.dumps(body, option=orjson.OPT_PASSTHROUGH_DATETIME, default=str)


# --- the gateway over the demo systems ----------------------------------------------------


class PhaseClock:
    """Wall time that one request spends in upstream fetches and in the audit append.

    Installed by replacing ``fetch`` and ``record`` on the gateway's own source and
    recorder objects with timed wrappers. Fetches of one level run concurrently, so the
    upstream time is the union of their intervals, not their sum.
    """

    def __init__(self) -> None:
        self.intervals: list[tuple[float, float]] = []
        self.audit_seconds = 0.0

    def reset(self) -> None:
        self.intervals.clear()
        self.audit_seconds = 0.0

    def upstream_seconds(self) -> float:
        covered, reach = 0.0, -math.inf
        for start, end in sorted(self.intervals):
            covered += max(0.0, end - max(start, reach))
            reach = max(reach, end)
        return covered

    def install(self, gateway: Gateway) -> None:
        for source in gateway.sources.values():
            source.fetch = self._timed_fetch(source.fetch)  # type: ignore[method-assign]
        record = gateway.recorder.record

        async def timed_record(**kwargs: Any) -> int:
            started = time.perf_counter()
            try:
                return await record(**kwargs)
            finally:
                self.audit_seconds += time.perf_counter() - started

        gateway.recorder.record = timed_record  # type: ignore[method-assign]

    def _timed_fetch(self, fetch: Fetch) -> Fetch:
        async def timed_fetch(request: FetchRequest) -> list[Row]:
            started = time.perf_counter()
            try:
                return await fetch(request)
            finally:
                self.intervals.append((started, time.perf_counter()))

        return timed_fetch


@dataclass
class Stack:
    """A running gateway, clients for it and for the demo systems' request logs."""

    gateway: httpx.AsyncClient
    crm: httpx.AsyncClient
    erp: httpx.AsyncClient
    token: str
    clock: PhaseClock

    async def query(self, first: int, after: str | None = None) -> httpx.Response:
        body = {"query": QUERY, "variables": {"first": first, "after": after}}
        return await self.gateway.post("/graphql", json=body,
                                       headers={"Authorization": f"Bearer {self.token}"})

    async def clear_logs(self) -> None:
        for client in (self.crm, self.erp):
            (await client.delete("/__fonte/requests")).raise_for_status()

    async def upstream_calls(self) -> Counter[str]:
        """Count the logged vendor API calls per ``system entity``, logins left out."""
        calls: Counter[str] = Counter()
        for system, client in (("crm", self.crm), ("erp", self.erp)):
            response = await client.get("/__fonte/requests")
            response.raise_for_status()
            for entry in response.json()["requests"]:
                if entry["entity"] is not None:
                    calls[f"{system} {entry['entity']}"] += 1
        return calls


def _settings(crm: SalesforceSettings, erp: OdooSettings, data_dir: Path) -> Settings:
    return Settings(systems={"crm": crm, "erp": erp}, data_dir=data_dir, graphiql=False)


def _token(settings: Settings) -> str:
    key = load_or_create_signing_key(settings.signing_key_path)
    return issue_token(key, user="bench", roles=[ROLE], purpose=PURPOSE)


@contextlib.asynccontextmanager
async def asgi_stack(customers: int, data_dir: Path) -> AsyncIterator[Stack]:
    """Run the demo systems and the gateway in-process, connected by ASGI transports."""
    data = generate(customers=customers)
    client_id, client_secret, api_key = (secrets.token_hex(16) for _ in range(3))
    crm_app = create_salesforce_app(data, client_id=client_id, client_secret=client_secret)
    erp_app = create_odoo_app(data, api_key=api_key)
    settings = _settings(
        SalesforceSettings(login_url="http://crm.bench", client_id=client_id,
                           client_secret=client_secret),
        OdooSettings(base_url="http://erp.bench", database="fonte_demo", login="gateway",
                     api_key=api_key),
        data_dir)
    token = _token(settings)
    upstream = {
        "crm": httpx.AsyncClient(transport=httpx.ASGITransport(app=crm_app),
                                 base_url="http://crm.bench"),
        "erp": httpx.AsyncClient(transport=httpx.ASGITransport(app=erp_app),
                                 base_url="http://erp.bench"),
    }
    app = create_app(settings, upstream)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway.bench",
            timeout=REQUEST_TIMEOUT_SECONDS) as client:
        clock = PhaseClock()
        clock.install(app.state.gateway)
        yield Stack(client, upstream["crm"], upstream["erp"], token, clock)


@contextlib.asynccontextmanager
async def loopback_stack(customers: int, data_dir: Path) -> AsyncIterator[Stack]:
    """Run the demo systems and the gateway with uvicorn on free 127.0.0.1 ports."""
    systems, servers = await start_demo_systems(generate(customers=customers))
    settings = _settings(systems.crm, systems.erp, data_dir)
    token = _token(settings)
    app = create_app(settings)
    try:
        gateway_server, port = await serve_in_background(app)
        servers.append(gateway_server)
        async with (
            httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{port}",
                              timeout=REQUEST_TIMEOUT_SECONDS) as gateway,
            httpx.AsyncClient(base_url=systems.crm_url, timeout=REQUEST_TIMEOUT_SECONDS) as crm,
            httpx.AsyncClient(base_url=systems.erp_url, timeout=REQUEST_TIMEOUT_SECONDS) as erp,
        ):
            clock = PhaseClock()
            clock.install(app.state.gateway)
            yield Stack(gateway, crm, erp, token, clock)
    finally:
        for server in reversed(servers):
            await stop_background(server)


def open_stack(transport: str, customers: int,
               data_dir: Path) -> contextlib.AbstractAsyncContextManager[Stack]:
    if transport == "loopback":
        return loopback_stack(customers, data_dir)
    return asgi_stack(customers, data_dir)


def check_response(response: httpx.Response, edges: int) -> dict[str, Any]:
    """Return the response's ``data`` after checking status, errors and the edge count."""
    if response.status_code != 200:
        raise BenchmarkError(f"gateway returned HTTP {response.status_code}, expected 200; "
                             f"body starts {response.text[:200]!r}")
    body = response.json()
    if body.get("errors"):
        codes = sorted({str(e.get("extensions", {}).get("code")) for e in body["errors"]})
        raise BenchmarkError(f"response has {len(body['errors'])} errors with codes {codes}; "
                             "check the role's field access with `fonte policy matrix`")
    connection = body["data"]["customers"]
    if len(connection["edges"]) != edges:
        raise BenchmarkError(f"response has {len(connection['edges'])} edges, expected {edges}")
    data: dict[str, Any] = body["data"]
    return data


def check_fields_filled(data: dict[str, Any]) -> None:
    """Raise unless every selected field is non-null in at least one row.

    A field that is null in every row means the gateway served it without reading
    it (a masked field or an empty join), so the query would cost less than it should.
    """
    nodes = [edge["node"] for edge in data["customers"]["edges"]]
    empty = [name for name in FIELDS if all(node.get(name) is None for node in nodes)]
    if empty:
        raise BenchmarkError(f"fields {empty} are null in all {len(nodes)} rows; the "
                             "workload must read real values from both systems")


# --- measurements ---------------------------------------------------------------------------


def summarise(seconds: Sequence[float]) -> dict[str, float]:
    """Return median, p95 (nearest rank), mean, min and max in milliseconds."""
    ordered = sorted(seconds)
    rank = max(1, math.ceil(0.95 * len(ordered)))
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[rank - 1] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
        "min_ms": ordered[0] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


@dataclass
class GatewayRun:
    """Per-iteration seconds of the gateway and the response used as the baseline's input."""

    total: Timings = field(default_factory=list)
    upstream: Timings = field(default_factory=list)
    audit: Timings = field(default_factory=list)
    calls_per_query: Counter[str] = field(default_factory=Counter)
    data: dict[str, Any] = field(default_factory=dict)


async def measure_gateway(stack: Stack, customers: int, iterations: int,
                          warmup: int) -> GatewayRun:
    """Time ``iterations`` queries after ``warmup`` and check the calls of every one."""
    run = GatewayRun()
    await stack.clear_logs()
    run.data = check_response(await stack.query(customers), customers)
    check_fields_filled(run.data)
    run.calls_per_query = await stack.upstream_calls()
    for _ in range(warmup):
        check_response(await stack.query(customers), customers)

    await stack.clear_logs()
    for _ in range(iterations):
        stack.clock.reset()
        started = time.perf_counter()
        response = await stack.query(customers)
        run.total.append(time.perf_counter() - started)
        run.upstream.append(stack.clock.upstream_seconds())
        run.audit.append(stack.clock.audit_seconds)
        check_response(response, customers)

    expected = Counter({key: count * iterations for key, count in run.calls_per_query.items()})
    logged = await stack.upstream_calls()
    if logged != expected:
        raise BenchmarkError(f"{iterations} queries made upstream calls {dict(logged)}, "
                             f"expected {dict(expected)}: the call count varies per query")
    return run


def baseline_root(data: dict[str, Any]) -> dict[str, Any]:
    """Return the gateway's response data as Python values: Decimal fields as Decimal."""
    connection = data["customers"]
    edges = []
    for edge in connection["edges"]:
        node = dict(edge["node"])
        for name in DECIMAL_FIELDS:
            if node[name] is not None:
                node[name] = decimal.Decimal(node[name])
        edges.append({"node": node})
    return {"customers": {"edges": edges, "pageInfo": dict(connection["pageInfo"])}}


def _decimal_text(value: Any) -> str:
    # strawberry's Decimal scalar serialises with str() as well.
    return str(value)


def measure_baseline(data: dict[str, Any], customers: int, iterations: int,
                     warmup: int) -> dict[str, Timings]:
    """Time plain graphql-core over prepared dicts that give the gateway's exact output.

    ``execute`` parses and validates once, as the gateway's parse cache does;
    ``parse_validate_execute`` runs ``graphql_sync`` on the query text every time.
    """
    schema = build_schema(BASELINE_SDL)
    decimal_type = schema.type_map["Decimal"]
    assert isinstance(decimal_type, GraphQLScalarType)
    decimal_type.serialize = _decimal_text  # type: ignore[method-assign]
    document = parse(QUERY)
    root = baseline_root(data)
    variables = {"first": customers, "after": None}

    def execute_once() -> bytes:
        result = execute_sync(schema, document, root_value=root, variable_values=variables)
        return dump_json({"data": result.data, **({"errors": result.errors} if result.errors
                                                   else {})})

    def full_once() -> bytes:
        result = graphql_sync(schema, QUERY, root_value=root, variable_values=variables)
        return dump_json({"data": result.data})

    if orjson.loads(execute_once()) != {"data": data}:
        raise BenchmarkError("graphql-core output differs from the gateway's response data; "
                             "BASELINE_SDL no longer matches the workload")
    timings: dict[str, Timings] = {}
    for name, run_once in (("execute", execute_once), ("parse_validate_execute", full_once)):
        for _ in range(warmup):
            run_once()
        samples: Timings = []
        for _ in range(iterations):
            started = time.perf_counter()
            run_once()
            samples.append(time.perf_counter() - started)
        timings[name] = samples
    return timings


async def sweep_call_counts(transport: str, sizes: Sequence[int],
                            data_dir: Path) -> list[dict[str, Any]]:
    """Read every customer of demo data sets of ``sizes``, counting calls per page."""
    rows = []
    for size in sizes:
        page_size = min(size, MAX_PAGE_SIZE)
        pages: list[Counter[str]] = []
        after: str | None = None
        async with open_stack(transport, size, data_dir / f"sweep-{size}") as stack:
            for remaining in range(size, 0, -page_size):
                await stack.clear_logs()
                data = check_response(await stack.query(page_size, after),
                                      min(page_size, remaining))
                pages.append(await stack.upstream_calls())
                after = data["customers"]["pageInfo"]["endCursor"]
        rows.append({"customers": size, "page_size": page_size, "pages": len(pages),
                     "calls_per_page": [dict(sorted(page.items())) for page in pages]})
    return rows


async def profile_gateway(stack: Stack, customers: int, iterations: int) -> str:
    """Return the top 10 functions by cumulative time over ``iterations`` queries.

    The profiler sees the whole thread, so the in-process demo systems (asgi transport)
    and the benchmark's own HTTP client appear in it too.
    """
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(iterations):
        check_response(await stack.query(customers), customers)
    profiler.disable()
    output = io.StringIO()
    pstats.Stats(profiler, stream=output).sort_stats("cumulative").print_stats(10)
    return output.getvalue()


# --- machine and report -----------------------------------------------------------------


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (getrusage(2)).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_value(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    return None


def filesystem_of(path: Path) -> str | None:
    """Return the type of the file system that holds ``path``, from /proc/mounts."""
    best, best_type = "", None
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text(encoding="utf-8").splitlines():
            _, mount_point, fs_type, *_ = line.split()
            inside = str(path).startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) > len(best):
                best, best_type = mount_point, fs_type
    return best_type


def machine() -> dict[str, Any]:
    memory = _proc_value("/proc/meminfo", "MemTotal")
    return {
        "cpu_model": _proc_value("/proc/cpuinfo", "model name"),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "ram_gib": round(int(memory.split()[0]) / 1024**2, 1) if memory else None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "packages": {name: importlib.metadata.version(name) for name in PACKAGES},
    }


def build_results(args: argparse.Namespace, run: GatewayRun, baseline: dict[str, Timings],
                  sweep: list[dict[str, Any]], rss: dict[str, float],
                  filesystem: str | None) -> dict[str, Any]:
    rest = [t - u - a for t, u, a in zip(run.total, run.upstream, run.audit, strict=True)]
    gateway = {"end_to_end": summarise(run.total), "upstream": summarise(run.upstream),
               "audit": summarise(run.audit), "rest": summarise(rest)}
    core = {name: summarise(samples) for name, samples in baseline.items()}
    distinct = {tuple(sorted(page.items())) for row in sweep for page in row["calls_per_page"]}
    return {
        "benchmark": "query_cost",
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": [Path(sys.executable).name, *sys.argv],
        "workload": {"query": QUERY, "role": ROLE, "purpose": PURPOSE,
                     "crm_fields": list(CRM_FIELDS), "erp_fields": list(ERP_FIELDS),
                     "customers": args.customers, "iterations": args.iterations,
                     "warmup": args.warmup, "transport": args.transport},
        "gateway_ms": gateway,
        "graphql_core_ms": core,
        "median_ratio_gateway_to_graphql_core_execute": (
            gateway["end_to_end"]["median_ms"] / core["execute"]["median_ms"]),
        "upstream_calls_per_query": dict(sorted(run.calls_per_query.items())),
        "call_count_sweep": sweep,
        "calls_per_page_constant": len(distinct) == 1,
        "peak_rss_mib": rss,
        "audit_store_filesystem": filesystem,
        "machine": machine(),
    }


def format_report(results: dict[str, Any]) -> str:
    work, host = results["workload"], results["machine"]
    gateway, core = results["gateway_ms"], results["graphql_core_ms"]
    lines = [
        f"{work['customers']} customers x {len(FIELDS)} fields ({len(CRM_FIELDS)} CRM, "
        f"{len(ERP_FIELDS)} ERP), role {ROLE}, transport {work['transport']}, "
        f"{work['iterations']} iterations after {work['warmup']} warm-up",
        f"{host['cpu_model']}, {host['usable_cpus']} CPUs, {host['ram_gib']} GiB, "
        f"{host['python']}",
        "",
        f"{'per query (ms)':<52}{'median':>9}{'p95':>9}{'mean':>9}",
    ]
    rows = [
        ("gateway, end to end", gateway["end_to_end"]),
        ("  upstream fetches (wall time inside the request)", gateway["upstream"]),
        ("  audit append and durable commit", gateway["audit"]),
        ("  rest of the gateway and the HTTP path", gateway["rest"]),
        ("graphql-core execute + JSON (document parsed once)", core["execute"]),
        ("graphql-core parse + validate + execute + JSON", core["parse_validate_execute"]),
    ]
    for label, stats in rows:
        lines.append(f"{label:<52}{stats['median_ms']:>9.3f}{stats['p95_ms']:>9.3f}"
                     f"{stats['mean_ms']:>9.3f}")
    ratio = results["median_ratio_gateway_to_graphql_core_execute"]
    lines += ["", f"median gateway / graphql-core execute: {ratio:.1f}x", "",
              "upstream calls per query: " + ", ".join(
                  f"{key} {count}" for key, count in results["upstream_calls_per_query"].items()),
              f"{'customers':>10}{'page size':>11}{'pages':>7}  calls of each page"]
    for row in results["call_count_sweep"]:
        pages = "; ".join(", ".join(f"{k} {v}" for k, v in page.items())
                          for page in row["calls_per_page"])
        lines.append(f"{row['customers']:>10}{row['page_size']:>11}{row['pages']:>7}  {pages}")
    constant = "yes" if results["calls_per_page_constant"] else "NO"
    rss = results["peak_rss_mib"]
    lines += [f"same calls on every page of every size: {constant}",
              f"peak RSS: {rss['after_measurement']:.0f} MiB after the measurement, "
              f"{rss['after_sweep']:.0f} MiB after the sweep",
              f"audit store file system: {results['audit_store_filesystem']}"]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Run every measurement and return the results and the profile text (may be empty)."""
    with tempfile.TemporaryDirectory(prefix="fonte-bench-", dir=args.data_dir) as temp:
        data_dir = Path(temp)
        async with open_stack(args.transport, args.customers, data_dir / "main") as stack:
            gateway_run = await measure_gateway(stack, args.customers, args.iterations,
                                                args.warmup)
            profile = ""
            if args.profile:
                profile = await profile_gateway(stack, args.customers, args.profile)
        baseline = measure_baseline(gateway_run.data, args.customers, args.iterations,
                                    args.warmup)
        rss = {"after_measurement": peak_rss_mib()}
        sweep = await sweep_call_counts(args.transport, args.sweep, data_dir)
        rss["after_sweep"] = peak_rss_mib()
        filesystem = filesystem_of(data_dir.resolve())
    return build_results(args, gateway_run, baseline, sweep, rss, filesystem), profile


# --- command line -------------------------------------------------------------------------


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def parse_int(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; use {low} to {high}")
        return value

    return parse_int


def _sizes(text: str) -> list[int]:
    sizes = [_bounded(1, 100_000)(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError(f"{text!r} names no customer count; use e.g. 10,1000")
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--customers", type=_bounded(1, MAX_PAGE_SIZE), default=100,
                        help="demo customers and page size of the timed query (default 100)")
    parser.add_argument("--iterations", type=_bounded(1, MAX_ITERATIONS), default=200,
                        help="timed queries per measurement (default 200)")
    parser.add_argument("--warmup", type=_bounded(0, MAX_ITERATIONS), default=20,
                        help="untimed queries before each measurement (default 20)")
    parser.add_argument("--transport", choices=("asgi", "loopback"), default="asgi",
                        help="asgi: in-process ASGI transports; loopback: uvicorn on "
                        "127.0.0.1 for the demo systems and the gateway (default asgi)")
    parser.add_argument("--output", type=Path, default=None,
                        help="results JSON file (default bench/results/query_cost_"
                        "<transport>.json)")
    parser.add_argument("--sweep", type=_sizes, default=[10, 100, 1000],
                        help="comma-separated demo customer counts whose upstream calls per "
                        f"page are counted; pages hold at most {MAX_PAGE_SIZE} "
                        "(default 10,100,1000)")
    parser.add_argument("--profile", type=_bounded(0, MAX_ITERATIONS), default=0,
                        help="also run this many queries under cProfile and print the top 10 "
                        "functions by cumulative time (default 0: off)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds the whole run may take before it is stopped "
                        "(default 900)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="directory for the temporary gateway data (audit store, keys); "
                        "its file system decides the cost of the durable commit "
                        "(default: the system temp directory)")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = Path(__file__).parent / "results" / f"query_cost_{args.transport}.json"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The gateway warns that it accepts development tokens; here that is intended.
    logging.getLogger("gateway.app").setLevel(logging.ERROR)
    try:
        results, profile = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except BenchmarkError as exc:
        log.error("benchmark check failed: %s", exc)
        return 1
    except TimeoutError:
        log.error("benchmark did not finish within %.0f s; raise --timeout or lower "
                  "--iterations", args.timeout)
        return 1

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(format_report(results))
    print(f"results written to {args.output}")
    if profile:
        print("\ncProfile, top 10 by cumulative time:\n" + profile)
    if not results["calls_per_page_constant"]:
        log.error("upstream calls per page differ between pages or customer counts; see "
                  "call_count_sweep in %s", args.output)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
