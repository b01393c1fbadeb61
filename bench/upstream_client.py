"""CPU time per upstream HTTP request of the real sources, for each HTTP client.

The script starts the demo CRM (Salesforce REST) and the demo ERP (Odoo
JSON-RPC and plain REST over the same records) with uvicorn in a child
process on 127.0.0.1 (``bench/peers_upstreams.py``). In this process it
drives the real source classes, each wrapped in ``ResilientSource`` as the
gateway wraps them, with ``--fetches`` fetches per source at
``--concurrency`` fetches in flight. Each fetch reads ``--keys`` records by
key, as the gateway reads one entity for a page of customers:

- ``salesforce``: ``Account`` by ``Id``, 6 fields (one SOQL query);
- ``odoo``: ``res.partner`` by ``id``, 6 fields (one ``search_read`` call);
- ``rest``: the same partners through the generic REST dialect.

For each HTTP client of ``gateway.sources.client`` and each source, it
reports the process CPU time (``time.process_time``, all threads of this
process, the servers excluded) per fetch and per upstream request, and the
wall time. Rounds alternate between the clients, so drifting load from
other processes hits each client alike. ``--profile FILE`` also runs one
round per client under cProfile and writes the stats to ``FILE.<client>``.

    .venv/bin/python bench/upstream_client.py [--fetches 2000] [--concurrency 16]
        [--rounds 3] [--clients httptools,aiohttp,httpx] [--json FILE] [--profile FILE]

Exit status: 0 when every fetch returned the expected rows, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.demo.mappings import REST_ENTITIES, demo_rest_settings
from gateway.sources import FetchRequest, Source
from gateway.sources.aiohttp_client import AiohttpClient
from gateway.sources.client import HTTP_CLIENTS, HttpClient, UpstreamClient, new_client
from gateway.sources.httptools_client import HttptoolsClient
from gateway.sources.mapping import MappedSource
from gateway.sources.odoo import OdooJsonRpcSource, OdooSettings
from gateway.sources.resilience import ResiliencePolicy, ResilientSource
from gateway.sources.rest import RestSource
from gateway.sources.salesforce import SalesforceSettings, SalesforceSource

BENCH_DIR = Path(__file__).resolve().parent
PACKAGES = ("httpx", "httpcore", "anyio", "aiohttp", "yarl", "multidict", "uvicorn", "uvloop",
            "orjson")
SOURCES = ("salesforce", "odoo", "rest")
STARTUP_TIMEOUT_SECONDS = 120.0
REQUEST_TIMEOUT_SECONDS = 30.0
ACCOUNT_FIELDS = ("Id", "Name", "VAT_Number__c", "BillingCity", "Phone",
                  "ERP_Customer_Number__c")
PARTNER_FIELDS = ("id", "name", "vat", "city", "phone", "credit_limit")


class BenchmarkError(Exception):
    """A fetch returned other rows than expected, or the demo servers did not start."""


@dataclass
class Upstreams:
    """The child process that serves the demo systems, and their addresses and credentials."""

    process: subprocess.Popen[bytes]
    description: dict[str, str]


@dataclass
class Workload:
    """One source and the fetch it repeats, with the rows each fetch must return."""

    name: str
    source: ResilientSource
    request: FetchRequest
    rows: int
    requests_per_fetch: float = 0.0


@dataclass
class Sample:
    """CPU and wall time of one round of fetches through one client and source."""

    client: str
    source: str
    fetches: int
    upstream_requests: float
    cpu_s: float
    wall_s: float


def start_upstreams(customers: int, scratch: Path,
                    latency: tuple[float, float] = (0.0, 0.0)) -> Upstreams:
    """Start ``peers_upstreams.py`` and wait until it has written its addresses.

    ``latency`` is the wait in milliseconds before each CRM and each ERP response.
    """
    output = scratch / "upstreams.json"
    log_path = scratch / "upstreams.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "peers_upstreams.py"), "--customers",
             str(customers), "--crm-latency-ms", str(latency[0]), "--erp-latency-ms",
             str(latency[1]), "--output", str(output)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not (output.exists() and output.stat().st_size > 0):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
            raise BenchmarkError("the demo servers did not start within "
                                 f"{STARTUP_TIMEOUT_SECONDS:g} s; their output ends with:\n"
                                 + "\n".join(tail))
        time.sleep(0.2)
    return Upstreams(process, json.loads(output.read_text(encoding="utf-8")))


def stop_upstreams(upstreams: Upstreams) -> None:
    upstreams.process.terminate()
    try:
        upstreams.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        upstreams.process.kill()


def build_source(name: str, description: dict[str, str], client: UpstreamClient,
                 concurrency: int) -> ResilientSource:
    inner: Source
    if name == "salesforce":
        inner = SalesforceSource("crm", SalesforceSettings(
            login_url=description["crm_url"], client_id=description["crm_client_id"],
            client_secret=description["crm_client_secret"]), client)
    elif name == "odoo":
        inner = OdooJsonRpcSource("erp", OdooSettings(
            base_url=description["erp_url"], database=description["erp_database"],
            login=description["erp_login"], api_key=description["erp_api_key"]), client)
    else:
        settings = demo_rest_settings(description["rest_url"], description["rest_api_key"])
        inner = MappedSource(RestSource("erp", settings, client), REST_ENTITIES)
    return ResilientSource(inner, ResiliencePolicy(max_concurrency=concurrency))


async def build_workloads(description: dict[str, str], http_client: HttpClient, keys: int,
                          concurrency: int) -> list[Workload]:
    """Build the three sources on new clients and learn the keys and request counts."""
    sources = {name: build_source(name, description, new_client(REQUEST_TIMEOUT_SECONDS,
                                                                 http_client), concurrency)
               for name in SOURCES}
    accounts = await sources["salesforce"].fetch(FetchRequest(
        "Account", ("Id", "ERP_Customer_Number__c"), order="Id", limit=keys))
    if len(accounts) != keys:
        raise BenchmarkError(f"the demo CRM has {len(accounts)} accounts, fewer than "
                             f"--keys {keys}; raise --customers")
    account_ids = tuple(str(row["Id"]) for row in accounts)
    partner_ids = tuple(int(row["ERP_Customer_Number__c"]) for row in accounts)
    account_request = FetchRequest("Account", ACCOUNT_FIELDS, match="Id", keys=account_ids)
    partner_request = FetchRequest("res.partner", PARTNER_FIELDS, match="id", keys=partner_ids)
    workloads = [Workload("salesforce", sources["salesforce"], account_request, keys),
                 Workload("odoo", sources["odoo"], partner_request, keys),
                 Workload("rest", sources["rest"], partner_request, keys)]
    for workload in workloads:
        workload.requests_per_fetch = await count_requests(workload)
    return workloads


async def count_requests(workload: Workload) -> float:
    """Return the upstream requests of one fetch, counted by wrapping the client's ``request``."""
    client = http_client_of(workload.source)
    count = 0
    unwrapped = client.request

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        return await unwrapped(*args, **kwargs)

    await run_fetch(workload)  # logs in or gets a token first
    client.request = counted  # type: ignore[method-assign]
    try:
        await run_fetch(workload)
    finally:
        del client.request
    return float(count)


def http_client_of(source: ResilientSource) -> UpstreamClient:
    inner: Any = source.inner
    while isinstance(inner, MappedSource):
        inner = inner.inner
    client = inner._client
    assert isinstance(client, httpx.AsyncClient | AiohttpClient | HttptoolsClient)
    return client


async def run_fetch(workload: Workload) -> None:
    rows = await workload.source.fetch(workload.request)
    if len(rows) != workload.rows:
        raise BenchmarkError(f"{workload.name} returned {len(rows)} rows, expected "
                             f"{workload.rows}")


async def run_round(workload: Workload, fetches: int, concurrency: int) -> tuple[float, float]:
    """Run ``fetches`` fetches, ``concurrency`` at a time, and return (CPU s, wall s)."""
    remaining = fetches

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await run_fetch(workload)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.process_time() - cpu, time.perf_counter() - wall


async def measure(description: dict[str, str], args: argparse.Namespace) -> list[Sample]:
    clients: list[HttpClient] = args.clients
    workloads = {client: await build_workloads(description, client, args.keys,
                                               args.concurrency) for client in clients}
    samples = []
    try:
        for client in clients:  # warm-up round, not recorded
            for workload in workloads[client]:
                await run_round(workload, args.concurrency * 4, args.concurrency)
        for round_number in range(args.rounds):
            order = clients if round_number % 2 == 0 else clients[::-1]
            for client in order:
                for workload in workloads[client]:
                    cpu, wall = await run_round(workload, args.fetches, args.concurrency)
                    samples.append(Sample(client, workload.name, args.fetches,
                                          workload.requests_per_fetch * args.fetches, cpu, wall))
        if args.profile is not None:
            for client in clients:
                await profile_round(workloads[client], args, Path(f"{args.profile}.{client}"))
    finally:
        for client_workloads in workloads.values():
            for workload in client_workloads:
                await workload.source.aclose()
    return samples


async def profile_round(workloads: list[Workload], args: argparse.Namespace,
                        path: Path) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        for workload in workloads:
            await run_round(workload, args.fetches, args.concurrency)
    finally:
        profiler.disable()
    profiler.dump_stats(path)
    print(f"profile written to {path}", file=sys.stderr)


def summarise(samples: list[Sample], clients: list[HttpClient]) -> list[dict[str, Any]]:
    table = []
    for source in SOURCES:
        for client in clients:
            mine = [s for s in samples if s.client == client and s.source == source]
            per_request = [1000 * s.cpu_s / s.upstream_requests for s in mine]
            per_fetch = [1000 * s.cpu_s / s.fetches for s in mine]
            table.append({
                "source": source, "client": client, "rounds": len(mine),
                "upstream_requests_per_fetch": mine[0].upstream_requests / mine[0].fetches,
                "cpu_ms_per_request": statistics.median(per_request),
                "cpu_ms_per_request_min": min(per_request),
                "cpu_ms_per_request_max": max(per_request),
                "cpu_ms_per_fetch": statistics.median(per_fetch),
                "fetches_per_s": statistics.median(s.fetches / s.wall_s for s in mine),
            })
    return table


def machine() -> dict[str, Any]:
    cpu_model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "packages": {name: importlib.metadata.version(name) for name in PACKAGES},
    }


def print_table(table: list[dict[str, Any]]) -> None:
    print("| source | client | requests/fetch | CPU ms/request (median, min-max) | "
          "CPU ms/fetch | fetches/s |")
    print("|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row['source']} | {row['client']} | {row['upstream_requests_per_fetch']:g} | "
              f"{row['cpu_ms_per_request']:.3f} ({row['cpu_ms_per_request_min']:.3f}-"
              f"{row['cpu_ms_per_request_max']:.3f}) | {row['cpu_ms_per_fetch']:.3f} | "
              f"{row['fetches_per_s']:.0f} |")


def client_list(text: str) -> list[HttpClient]:
    chosen: list[HttpClient] = []
    for name in text.split(","):
        matching = [client for client in HTTP_CLIENTS if client == name.strip()]
        if not matching:
            raise argparse.ArgumentTypeError(
                f"HTTP client {name.strip()!r} is unknown; use one or more of "
                f"{','.join(HTTP_CLIENTS)}")
        chosen.append(matching[0])
    return chosen


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid; use a whole number of 1 or more")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--fetches", type=positive, default=2000,
                        help="fetches per source in each round (default 2000)")
    parser.add_argument("--concurrency", type=positive, default=16,
                        help="fetches in flight at once (default 16)")
    parser.add_argument("--keys", type=positive, default=20,
                        help="records each fetch reads by key (default 20)")
    parser.add_argument("--customers", type=positive, default=100,
                        help="demo customers the servers generate (default 100)")
    parser.add_argument("--rounds", type=positive, default=3,
                        help="measured rounds per client, alternating (default 3)")
    parser.add_argument("--clients", type=client_list, default=list(HTTP_CLIENTS),
                        help=f"HTTP clients to compare (default {','.join(HTTP_CLIENTS)})")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--profile", type=Path,
                        help="write a cProfile of one extra round per client to FILE.<client>")
    return parser.parse_args(argv)


def run_on_uvloop(measure_in_loop: Callable[[], Coroutine[Any, Any, list[Sample]]]
                  ) -> list[Sample]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(measure_in_loop())
    # The gateway serves on uvloop (gateway/serving.py), so the sources run on it here too.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(measure_in_loop())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fonte-upstream-client-") as scratch:
        try:
            upstreams = start_upstreams(args.customers, Path(scratch))
        except BenchmarkError as exc:
            print(f"upstream_client: {exc}", file=sys.stderr)
            return 1
        try:
            load_before = os.getloadavg()[0]
            samples = run_on_uvloop(lambda: measure(upstreams.description, args))
            load_after = os.getloadavg()[0]
        except BenchmarkError as exc:
            print(f"upstream_client: {exc}", file=sys.stderr)
            return 1
        finally:
            stop_upstreams(upstreams)
    table = summarise(samples, args.clients)
    settings = {"fetches": args.fetches, "concurrency": args.concurrency, "keys": args.keys,
                "customers": args.customers, "rounds": args.rounds}
    results = {"benchmark": "upstream_client",
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), "settings": settings,
               "load_average_1min": {"before": load_before, "after": load_after},
               "results": table}
    print(json.dumps({key: results[key] for key in ("machine", "settings",
                                                    "load_average_1min")}, indent=2))
    print_table(table)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
