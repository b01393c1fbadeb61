"""The W1 critical path as the demo systems serve it: its dependent upstream calls alone.

The peer benchmark's latency target compares Fonte's median W1 latency with
the critical path, the slowest chain of dependent upstream calls. With
``--crm-latency-ms 20 --erp-latency-ms 30`` the injected waits add up to
50 ms, but the fakes also parse, filter and encode, and the client sends and
reads. This script measures the chain itself, without any gateway. It
starts ``bench/peers_upstreams.py`` with the given latencies. Through the
gateway's own Salesforce and Odoo sources, it then repeats the W1 calls in
the gateway's order: the account by id, then the ERP partner, its orders
and its invoices at the same time. It prints the median, p95 and minimum
of the whole chain and of each of its two steps.

    .venv/bin/python bench/critical_path.py [--crm-latency-ms 20] [--erp-latency-ms 30]
        [--iterations 60]

Exit status: 0 when every call returned rows, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from upstream_client import BenchmarkError, build_source, start_upstreams, stop_upstreams

from gateway.sources import FetchRequest
from gateway.sources.client import new_client
from gateway.sources.resilience import ResilientSource

CARD_FIELDS = ("Id", "Name", "VAT_Number__c", "PEC_Email__c", "Phone", "BillingStreet",
               "BillingCity", "BillingPostalCode", "BillingState", "Region__c", "Industry",
               "ERP_Customer_Number__c")
TIMEOUT_SECONDS = 30.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered)) - 1))]


async def measure(description: dict[str, str], iterations: int) -> dict[str, list[float]]:
    crm = build_source("salesforce", description, new_client(TIMEOUT_SECONDS, "aiohttp"), 10)
    erp = build_source("odoo", description, new_client(TIMEOUT_SECONDS, "aiohttp"), 10)
    try:
        return await _chains(crm, erp, iterations)
    finally:
        await crm.aclose()
        await erp.aclose()


async def _chains(crm: ResilientSource, erp: ResilientSource,
                  iterations: int) -> dict[str, list[float]]:
    first = await crm.fetch(FetchRequest("Account", ("Id",), order="Id", limit=1))
    account_id = str(first[0]["Id"])
    times: dict[str, list[float]] = {"chain": [], "account": [], "erp level": []}
    # The first two rounds get the token, log in and open connections, so they are not timed.
    for index in range(iterations + 2):
        start = time.perf_counter()
        accounts = await crm.fetch(FetchRequest("Account", CARD_FIELDS, match="Id",
                                                keys=(account_id,)))
        middle = time.perf_counter()
        partner = int(accounts[0]["ERP_Customer_Number__c"])
        rows = await asyncio.gather(
            erp.fetch(FetchRequest("res.partner", ("id", "credit"), match="id",
                                   keys=(partner,))),
            erp.fetch(FetchRequest("sale.order", ("id", "partner_id", "name", "date_order",
                                                  "state", "amount_total"),
                                   match="partner_id", keys=(partner,))),
            erp.fetch(FetchRequest("account.move", ("id", "partner_id", "name",
                                                    "invoice_date_due", "amount_residual",
                                                    "payment_state"),
                                   match="partner_id", keys=(partner,))))
        end = time.perf_counter()
        if not accounts or not all(rows):
            raise BenchmarkError(f"a W1 call returned no rows for account {account_id}")
        if index >= 2:
            times["chain"].append((end - start) * 1000)
            times["account"].append((middle - start) * 1000)
            times["erp level"].append((end - middle) * 1000)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crm-latency-ms", type=float, default=20.0)
    parser.add_argument("--erp-latency-ms", type=float, default=30.0)
    parser.add_argument("--iterations", type=int, default=60)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fonte-critical-") as scratch:
        upstreams = start_upstreams(100, Path(scratch), latency=(args.crm_latency_ms,
                                                                   args.erp_latency_ms))
        try:
            times = asyncio.run(measure(upstreams.description, args.iterations))
        except BenchmarkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            stop_upstreams(upstreams)
    print(f"injected: CRM {args.crm_latency_ms:g} ms, ERP {args.erp_latency_ms:g} ms; "
          f"{args.iterations} timed chains")
    for name, values in times.items():
        print(f"{name:10} median {statistics.median(values):6.1f} ms   "
              f"p95 {percentile(values, 0.95):6.1f} ms   min {min(values):6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
