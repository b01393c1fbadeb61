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
from graphql import (
    ExecutionResult,
    GraphQLScalarType,
    build_schema,
    execute_sync,
    graphql_sync,
    parse,
)

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
from gateway.serving import tune_garbage_collector
from gateway.sources import FetchRequest, Row
from gateway.sources.odoo import OdooSettings
from gateway.sources.salesforce import SalesforceSettings

log = logging.getLogger("bench.query_cost")

ROLE, PURPOSE = "finance", "billing"
# `fonte policy matrix` shows that finance may read all ten. No role may read more than
# three of the four ERP fields of Customer, so the split is 7 CRM + 3 ERP, not 5 + 5.
CRM_FIELDS = ("id", "name", "vatNumber", "street", "city", "postalCode", "province")
ERP_FIELDS = ("creditLimit", "openBalance", "iban")
FIELDS = CRM_FIELDS + ERP_FIELDS
DECIMAL_FIELDS = ("creditLimit", "openBalance")
QUERY = (
    "query CustomerCost($first: Int!) {\n"
    "  customers(first: $first) {\n"
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
    """A response or a call count that does not match the workload, which invalidates the run."""


def response_json(result: ExecutionResult) -> bytes:
    """Serialise ``result`` as ``Executor.run`` and the gateway's ``_json`` helper do."""
    body: dict[str, Any] = {"data": result.data}
    if result.errors:
        body["errors"] = [error.formatted for error in result.errors]
    return orjson.dumps(body, option=orjson.OPT_PASSTHROUGH_DATETIME, default=str)


# --- the gateway over the demo systems ----------------------------------------------------


class PhaseClock:
    """Wall time that one request spends in upstream fetches and in the audit append.

    ``install`` replaces ``fetch`` and ``record`` on the gateway's own source and recorder
    objects with timed wrappers. Fetches of one level run concurrently, so the
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
            source.fetch = self._timed_fetch(source.fetch)  # type: ignore[method-assign, assignment]
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

    async def query(self, first: int) -> httpx.Response:
        body = {"query": QUERY, "variables": {"first": first}}
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


def _settings(crm: SalesforceSettings, erp: OdooSettings, data_dir: Path,
              policy_dir: Path | None = None) -> Settings:
    extra = {} if policy_dir is None else {"policy_dir": policy_dir}
    return Settings(systems={"crm": crm, "erp": erp}, data_dir=data_dir, graphiql=False,
                    development_tokens=True, **extra)


def _token(settings: Settings) -> str:
    key = load_or_create_signing_key(settings.signing_key_path)
    return issue_token(key, user="bench", roles=[ROLE], purpose=PURPOSE)


@contextlib.asynccontextmanager
async def asgi_stack(customers: int, data_dir: Path,
                     policy_dir: Path | None = None) -> AsyncIterator[Stack]:
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
        data_dir, policy_dir)
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
        raise BenchmarkError(f"gateway returned HTTP {response.status_code}, expected 200. "
                             f"The body starts {response.text[:200]!r}")
    body = response.json()
    if body.get("errors"):
        codes = sorted({str(e.get("extensions", {}).get("code")) for e in body["errors"]})
        raise BenchmarkError(f"response has {len(body['errors'])} errors with codes {codes}. "
                             "Check the role's field access with `fonte policy matrix`")
    data: dict[str, Any] = body.get("data") or {}
    connection = data.get("customers")
    if connection is None:
        raise BenchmarkError(f"response data is missing customers, expected {edges} edges")
    if len(connection["edges"]) != edges:
        raise BenchmarkError(f"response has {len(connection['edges'])} edges, expected {edges}")
    return data


def check_fields_filled(data: dict[str, Any]) -> None:
    """Raise unless every selected field is non-null in at least one row.

    A field that is null in every row means the gateway served it without reading
    it (a masked field or an empty join), so the query would cost less than it should.
    """
    nodes = [edge["node"] for edge in data["customers"]["edges"]]
    empty = [name for name in FIELDS if all(node.get(name) is None for node in nodes)]
    if empty:
        raise BenchmarkError(f"fields {empty} are null in all {len(nodes)} rows. The "
                             "workload must read real values from both systems")


# --- measurements ---------------------------------------------------------------------------


def summarise(seconds: Sequence[float]) -> dict[str, float]:
    """Return median, p95 (nearest rank), mean, min and max in milliseconds, to 1 µs."""
    ordered = sorted(seconds)
    rank = max(1, math.ceil(0.95 * len(ordered)))
    values = {
        "median_ms": statistics.median(ordered),
        "p95_ms": ordered[rank - 1],
        "mean_ms": statistics.fmean(ordered),
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
    }
    return {name: round(value * 1000, 3) for name, value in values.items()}


@dataclass
class Samples:
    """Per-iteration seconds of the gateway, its phases and the graphql-core baseline."""

    total: Timings = field(default_factory=list)
    upstream: Timings = field(default_factory=list)
    audit: Timings = field(default_factory=list)
    core_execute: Timings = field(default_factory=list)
    core_full: Timings = field(default_factory=list)
    calls_per_query: Counter[str] = field(default_factory=Counter)


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


def baseline_runs(data: dict[str, Any],
                  customers: int) -> tuple[Callable[[], bytes], Callable[[], bytes]]:
    """Return two runs of plain graphql-core over dicts that give the gateway's output.

    The first executes a document parsed and validated once, as the gateway's parse
    cache does. The second runs ``graphql_sync`` on the query text every time.
    """
    schema = build_schema(BASELINE_SDL)
    decimal_type = schema.type_map["Decimal"]
    assert isinstance(decimal_type, GraphQLScalarType)
    decimal_type.serialize = _decimal_text  # type: ignore[method-assign]
    document = parse(QUERY)
    root = baseline_root(data)
    variables = {"first": customers}

    def execute_once() -> bytes:
        return response_json(execute_sync(schema, document, root_value=root,
                                          variable_values=variables))

    def full_once() -> bytes:
        return response_json(graphql_sync(schema, QUERY, root_value=root,
                                          variable_values=variables))

    for run_once in (execute_once, full_once):
        if orjson.loads(run_once()) != {"data": data}:
            raise BenchmarkError("graphql-core output differs from the gateway's response "
                                 "data. Update BASELINE_SDL to match the workload's fields")
    return execute_once, full_once


def _timed(run_once: Callable[[], bytes], samples: Timings) -> None:
    started = time.perf_counter()
    run_once()
    samples.append(time.perf_counter() - started)


async def measure(stack: Stack, customers: int, iterations: int, warmup: int) -> Samples:
    """Time the gateway and the baseline, interleaved, and check every gateway query.

    Each iteration runs one gateway query, then each baseline once, so a change in the
    machine's load during the run affects both sides alike.
    """
    samples = Samples()
    await stack.clear_logs()
    data = check_response(await stack.query(customers), customers)
    check_fields_filled(data)
    samples.calls_per_query = await stack.upstream_calls()
    execute_once, full_once = baseline_runs(data, customers)
    for _ in range(warmup):
        check_response(await stack.query(customers), customers)
        execute_once()
        full_once()

    await stack.clear_logs()
    for _ in range(iterations):
        stack.clock.reset()
        started = time.perf_counter()
        response = await stack.query(customers)
        samples.total.append(time.perf_counter() - started)
        samples.upstream.append(stack.clock.upstream_seconds())
        samples.audit.append(stack.clock.audit_seconds)
        check_response(response, customers)
        _timed(execute_once, samples.core_execute)
        _timed(full_once, samples.core_full)

    expected = Counter({key: n * iterations for key, n in samples.calls_per_query.items()})
    logged = await stack.upstream_calls()
    if logged != expected:
        raise BenchmarkError(f"{iterations} queries made upstream calls {dict(logged)}, "
                             f"expected {dict(expected)}: the call count varies per query")
    return samples


async def sweep_call_counts(transport: str, sizes: Sequence[int],
                            data_dir: Path) -> list[dict[str, Any]]:
    """Count the upstream calls of one query for demo data sets of ``sizes`` customers.

    The query requests every customer, or the first ``MAX_PAGE_SIZE`` when there are
    more, so the rows per query grow with the size while the calls should not.
    """
    rows = []
    for size in sizes:
        page_size = min(size, MAX_PAGE_SIZE)
        async with open_stack(transport, size, data_dir / f"sweep-{size}") as stack:
            await stack.clear_logs()
            check_response(await stack.query(page_size), page_size)
            calls = await stack.upstream_calls()
        rows.append({"customers": size, "rows": page_size, "calls": dict(sorted(calls.items()))})
    return rows


async def profile_gateway(stack: Stack, customers: int, iterations: int) -> str:
    """Profile ``iterations`` queries and return the top 10 functions by two orders.

    The profiler records the whole thread: the event loop, the benchmark's HTTP client and
    the demo systems, which run in this process with either transport. So the cumulative
    list keeps only functions under a ``/gateway/`` path (gateway and demo systems), and
    the own-time list keeps all.
    """
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(iterations):
        check_response(await stack.query(customers), customers)
    profiler.disable()
    output = io.StringIO()
    stats = pstats.Stats(profiler, stream=output)
    stats.sort_stats("cumulative").print_stats(r"/gateway/", 10)
    stats.sort_stats("tottime").print_stats(10)
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
    """Return the type of the file system that contains ``path``, from /proc/mounts."""
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


def build_results(args: argparse.Namespace, samples: Samples, sweep: list[dict[str, Any]],
                  rss: dict[str, float], filesystem: str | None) -> dict[str, Any]:
    rest = [t - u - a for t, u, a in
            zip(samples.total, samples.upstream, samples.audit, strict=True)]
    gateway = {"end_to_end": summarise(samples.total), "upstream": summarise(samples.upstream),
               "audit": summarise(samples.audit), "rest": summarise(rest)}
    core = {"execute": summarise(samples.core_execute),
            "parse_validate_execute": summarise(samples.core_full)}
    ratios = [t / c for t, c in zip(samples.total, samples.core_execute, strict=True)]
    distinct = {tuple(row["calls"].items()) for row in sweep}
    return {
        "benchmark": "query_cost",
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": [Path(sys.executable).name, *sys.argv],
        "workload": {"query": QUERY, "role": ROLE, "purpose": PURPOSE,
                     "crm_fields": list(CRM_FIELDS), "erp_fields": list(ERP_FIELDS),
                     "customers": args.customers, "iterations": args.iterations,
                     "warmup": args.warmup, "transport": args.transport,
                     "server_gc": args.server_gc},
        "gateway_ms": gateway,
        "graphql_core_ms": core,
        # Median over iterations of (gateway query time / graphql-core execute time).
        "ratio_gateway_to_graphql_core_execute": round(statistics.median(ratios), 2),
        "upstream_calls_per_query": dict(sorted(samples.calls_per_query.items())),
        "call_count_sweep": sweep,
        "calls_constant": len(distinct) == 1,
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
    ratio = results["ratio_gateway_to_graphql_core_execute"]
    lines += ["", f"gateway / graphql-core execute, median of per-iteration ratios: "
              f"{ratio:.1f}x", "",
              "upstream calls per query: " + ", ".join(
                  f"{key} {count}" for key, count in results["upstream_calls_per_query"].items()),
              f"{'customers':>10}{'rows':>6}  upstream calls of one query"]
    for row in results["call_count_sweep"]:
        calls = ", ".join(f"{key} {count}" for key, count in row["calls"].items())
        lines.append(f"{row['customers']:>10}{row['rows']:>6}  {calls}")
    constant = "yes" if results["calls_constant"] else "NO"
    rss = results["peak_rss_mib"]
    lines += [f"same calls at every size: {constant}",
              f"peak RSS: {rss['after_measurement']:.0f} MiB after the measurement, "
              f"{rss['after_sweep']:.0f} MiB after the sweep",
              f"audit store file system: {results['audit_store_filesystem']}"]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Run every measurement and return the results and the profile text (may be empty)."""
    with tempfile.TemporaryDirectory(prefix="fonte-bench-", dir=args.data_dir) as temp:
        data_dir = Path(temp)
        async with open_stack(args.transport, args.customers, data_dir / "main") as stack:
            if args.server_gc:
                # As fonte serve does once the gateway has started; graphql-core's
                # baseline runs in this process too, under the same settings.
                tune_garbage_collector()
            samples = await measure(stack, args.customers, args.iterations, args.warmup)
            rss = {"after_measurement": peak_rss_mib()}
            profile = ""
            if args.profile:
                profile = await profile_gateway(stack, args.customers, args.profile)
        sweep = await sweep_call_counts(args.transport, args.sweep, data_dir)
        rss["after_sweep"] = peak_rss_mib()
        filesystem = filesystem_of(data_dir.resolve())
    return build_results(args, samples, sweep, rss, filesystem), profile


# --- command line -------------------------------------------------------------------------


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def integer(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range. Use {low} to {high}")
        return value

    return integer


def _sizes(text: str) -> list[int]:
    sizes = [_bounded(1, 100_000)(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError(f"{text!r} contains no customer count. Use e.g. 10,1000")
    return sizes


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    count = _bounded(0, MAX_ITERATIONS)

    parser.add_argument("--customers", metavar="N", type=_bounded(1, MAX_PAGE_SIZE),
                        default=100,
                        help="demo customers and page size of the timed query (default 100)")
    parser.add_argument("--iterations", metavar="N", type=_bounded(1, MAX_ITERATIONS),
                        default=200,
                        help="timed iterations, each one gateway query and one run of each "
                        "graphql-core variant (default 200)")
    parser.add_argument("--warmup", metavar="N", type=count, default=20,
                        help="untimed iterations before the timed ones (default 20)")
    parser.add_argument("--transport", choices=("asgi", "loopback"), default="asgi",
                        help="asgi connects the gateway and the demo systems in-process over "
                        "ASGI transports, loopback serves each with uvicorn on 127.0.0.1 "
                        "(default asgi)")
    parser.add_argument("--sweep", metavar="COUNTS", type=_sizes, default=[10, 100, 1000],
                        help="comma-separated demo customer counts at which the upstream "
                        f"calls of one query for min(count, {MAX_PAGE_SIZE}) customers are "
                        "counted (default 10,100,1000)")

    parser.add_argument("--output", metavar="FILE", type=Path, default=None,
                        help="results JSON file (default bench/results/query_cost_"
                        "<transport>.json)")
    parser.add_argument("--profile", metavar="N", type=count, default=0,
                        help="also run this many queries under cProfile and print the top 10 "
                        "functions by cumulative time (default 0: off)")
    parser.add_argument("--data-dir", metavar="DIR", type=Path, default=None,
                        help="directory for the temporary gateway data (audit store, keys). "
                        "Its file system decides the cost of the durable commit "
                        "(default: the system temp directory)")
    parser.add_argument("--server-gc", action="store_true",
                        help="freeze the process's objects out of the garbage collector as "
                        "fonte serve does once the gateway has started, for the gateway and "
                        "the graphql-core baseline alike (default: off)")
    parser.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=900.0,
                        help="seconds the whole run may take before it is stopped "
                        "(default 900)")

    args = parser.parse_args(argv)
    if args.output is None:
        args.output = Path(__file__).parent / "results" / f"query_cost_{args.transport}.json"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        results, profile = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except BenchmarkError as exc:
        log.error("benchmark check failed: %s", exc)
        return 1
    except TimeoutError:
        log.error("benchmark timed out after %.0f s. Raise --timeout or lower --iterations",
                  args.timeout)
        return 1

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(format_report(results))
    print(f"results written to {args.output}")
    if profile:
        print(f"\ncProfile of {args.profile} more queries:\n{profile}")
    if not results["calls_constant"]:
        log.error("upstream calls per query differ between customer counts. See "
                  "call_count_sweep in %s", args.output)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
