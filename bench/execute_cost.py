"""Measure the CPU time of the execute step with each executor, on the same built values.

For each workload of ``peers_bench.py`` (W1 card, W2 list, W3 nested), the
request is planned and fetched once from the in-process demo systems, and
its values are built once. ``Executor.respond`` then runs over that tree
with the compiled executor and with graphql-core in alternating rounds, so
that a change of machine load hits both alike. Each round times ``--calls`` calls
with ``time.process_time`` (CPU of this process, not wall time). The report
gives the median of the rounds per call. It also checks that both bodies are
the same bytes.

    .venv/bin/python bench/execute_cost.py [--customers 200] [--rounds 15] [--calls 20]

With ``--only compiled`` or ``--only graphql-core`` it runs ``rounds x
calls`` executions of one executor per workload without timing. The
difference of two ``valgrind --tool=callgrind`` totals, with ``--rounds 0``
and with ``--rounds R``, then gives instructions per execution.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from peers_bench import workloads

from gateway.app import create_app
from gateway.build import Builder
from gateway.compiled import EXECUTORS
from gateway.config import Settings
from gateway.demo.data import generate
from gateway.demo.odoo import create_odoo_app
from gateway.demo.salesforce import create_salesforce_app
from gateway.execute import Executor, Fetched, GraphQLRequest, GraphQLResponse
from gateway.limits import OperationLimits
from gateway.masks import PseudonymKeys
from gateway.principal import Principal
from gateway.sources.odoo import OdooSettings
from gateway.sources.salesforce import SalesforceSettings

PURPOSES = {"sales": "sales", "finance": "billing"}


def time_respond(executor: Executor, request: GraphQLRequest, fetched: Fetched,
                 root: dict[str, Any], engine: str, calls: int) -> float:
    """Return the CPU seconds per call of ``calls`` calls of ``respond``."""
    start = time.process_time()
    for _ in range(calls):
        executor.respond(request, fetched, root, engine)
    return (time.process_time() - start) / calls


async def measure(customers: int, rounds: int, calls: int, data_dir: Path,
                  only: str | None) -> list[str]:
    data = generate(customers=customers)
    client_id, client_secret, api_key = (secrets.token_hex(16) for _ in range(3))
    crm_app = create_salesforce_app(data, client_id=client_id, client_secret=client_secret)
    erp_app = create_odoo_app(data, api_key=api_key)
    settings = Settings(
        systems={"crm": SalesforceSettings(login_url="http://crm.bench", client_id=client_id,
                                           client_secret=client_secret),
                 "erp": OdooSettings(base_url="http://erp.bench", database="fonte_demo",
                                     login="gateway", api_key=api_key)},
        data_dir=data_dir, graphiql=False, development_tokens=True,
        # W3 reads every order and invoice of 50 customers, above the default max_cost.
        operation_limits=OperationLimits(max_cost=10**9))
    upstream = {
        "crm": httpx.AsyncClient(transport=httpx.ASGITransport(app=crm_app)),
        "erp": httpx.AsyncClient(transport=httpx.ASGITransport(app=erp_app)),
    }
    app = create_app(settings, upstream)
    lines = ["| workload | graphql-core ms CPU | compiled ms CPU | ratio |",
             "| --- | --- | --- | --- |"]
    first_id = sorted(str(a["Id"]) for a in data.crm["Account"])[0]
    async with app.router.lifespan_context(app):
        executor: Executor = app.state.gateway.executor
        keys = PseudonymKeys(bytes(32))
        for workload in workloads(first_id, customers):
            request = GraphQLRequest(workload.query, workload.variables)
            principal = Principal("bench", frozenset({workload.role}), PURPOSES[workload.role])
            fetched = await executor.fetch(request, principal)
            assert not isinstance(fetched, GraphQLResponse), fetched.body
            root = executor.build_root(fetched.plan, fetched.nodes, Builder(keys))
            bodies = {engine: orjson.dumps(executor.respond(request, fetched, root, engine))
                      for engine in EXECUTORS}
            assert bodies["compiled"] == bodies["graphql-core"], workload.name
            assert b'"errors"' not in bodies["compiled"], bodies["compiled"][:500]
            if only is not None:  # for instruction counts: no timing, one executor
                for _ in range(rounds * calls):
                    executor.respond(request, fetched, root, only)
                continue
            samples: dict[str, list[float]] = {engine: [] for engine in EXECUTORS}
            for _ in range(rounds):
                for engine in EXECUTORS:
                    samples[engine].append(time_respond(executor, request, fetched, root,
                                                        engine, calls))
            core = statistics.median(samples["graphql-core"]) * 1000
            compiled = statistics.median(samples["compiled"]) * 1000
            lines.append(f"| {workload.name} | {core:.3f} | {compiled:.3f} | "
                         f"{core / compiled:.1f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200,
                        help="demo customers (W2 reads 100 of them, W3 50); default 200")
    parser.add_argument("--rounds", type=int, default=15,
                        help="alternating rounds per executor; default 15")
    parser.add_argument("--calls", type=int, default=20,
                        help="calls of the execute step timed per round; default 20")
    parser.add_argument("--only", choices=EXECUTORS,
                        help="run rounds x calls of this executor without timing, for "
                             "valgrind --tool=callgrind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fonte-execute-cost-") as directory:
        lines = asyncio.run(measure(args.customers, args.rounds, args.calls,
                                    Path(directory) / "data", args.only))
    print("\n".join(lines))
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
