"""CPU time of the audit path per request, without the rest of the gateway.

Concurrent tasks call `AuditRecorder.record` in a loop, as the requests of one gateway
process do, on an SQLite store in a temporary folder. One record covers what the
gateway does after it built the response: the event with its pseudonyms, its
validation and encoding, and the store's share of the group commit (chaining, sealing,
insert and commit). The shapes follow bench/peers_bench.py: W1 is the CRM card of one
customer (19 judged fields, 1 subject), W2 a list of 100 customers (10 judged fields,
100 subjects).

The result is the process's CPU time (`time.process_time`, all threads) per record,
the best of ``--rounds`` rounds, after one warm-up round, and the event loop's
thread's share of that round (`time.thread_time`); the rest is the store's writer
thread.

Run: ``.venv/bin/python bench/audit_request_cost.py --workload W2 --users 4``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit_events import AuditRecorder
from gateway.build import AuditFacts
from gateway.catalog import FieldDecl
from gateway.fetch import FetchStats
from gateway.plan import Plan
from gateway.policy import Decision, PolicyView
from gateway.principal import Principal

CARD_FIELDS = ("id", "name", "vatNumber", "pec", "phone", "street", "city", "postalCode",
               "province", "region", "industry", "openBalance")
ORDER_FIELDS = ("number", "orderDate", "status", "amountTotal", "dueDate", "amountResidual",
                "paymentStatus")
LIST_FIELDS = ("id", "name", "vatNumber", "street", "city", "postalCode", "province",
               "creditLimit", "openBalance", "iban")
PERSONAL_FIELDS = {"name", "pec", "phone", "iban"}
QUERY = "query CrmCard($id: ID!) { customer(id: $id) { id name } }"


def workload_plan(workload: str) -> tuple[Plan, int]:
    """Return the plan of ``workload`` and the number of subjects its response names."""
    customer_fields = CARD_FIELDS if workload == "W1" else LIST_FIELDS
    other_fields = ORDER_FIELDS if workload == "W1" else ()
    judged = {}
    for name in customer_fields:
        category = "identity.name" if name in PERSONAL_FIELDS else "non_personal.customer"
        decl = FieldDecl(owner="Customer", name=name, graphql_type="String",
                         category=category, description="")
        mask = "last4" if name == "iban" else None
        decision = Decision("mask" if mask else "allow", "p:0123456789ab", mask)
        judged[decl.qualified_name] = (decl, decision)
    for name in other_fields:
        decl = FieldDecl(owner="Order", name=name, graphql_type="String",
                         category="non_personal.order", description="")
        judged[decl.qualified_name] = (decl, Decision("allow", "p:abcdefabcdef"))
    view = PolicyView(frozenset({"sales"}), "crm", "policy-v1", {}, {})
    return Plan(roots=[], judged=judged, view=view), 1 if workload == "W1" else 100


async def measure(workload: str, users: int, records: int,
                  rounds: int) -> tuple[float, float]:
    """Return the best CPU seconds per record over ``rounds`` timed rounds, and the
    event loop thread's seconds per record in that round."""
    plan, subject_count = workload_plan(workload)
    facts = AuditFacts()
    facts.subjects = {("customer", f"C-{index:05d}"): None for index in range(subject_count)}
    facts.records = subject_count
    stats = FetchStats()
    stats.requests.update({"crm": 1, "erp": 3})
    principal = Principal(user="emp-17", roles=frozenset({"sales"}), purpose="crm",
                          client="crm-web", address="127.0.0.1")

    with tempfile.TemporaryDirectory(prefix="audit-request-cost-") as folder:
        store = await SQLiteAuditStore.open(Path(folder) / "audit.db")
        recorder = AuditRecorder(store, Pseudonymizer(bytes(range(32))),
                                 operation_key=b"k" * 32)

        async def user(count: int) -> None:
            for index in range(count):
                await recorder.record(
                    principal=principal, request_id=f"req-{index}", query=QUERY,
                    operation_name="CrmCard", plan=plan, facts=facts, stats=stats,
                    policy_version="policy-v1")

        per_user = max(1, records // users)
        best = (float("inf"), float("inf"))
        try:
            for round_number in range(rounds + 1):
                started, loop_started = time.process_time(), time.thread_time()
                await asyncio.gather(*(user(per_user) for _ in range(users)))
                elapsed = time.process_time() - started
                loop_elapsed = time.thread_time() - loop_started
                if round_number > 0:  # the first round creates the subject keys
                    count = per_user * users
                    best = min(best, (elapsed / count, loop_elapsed / count))
        finally:
            await store.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("W1", "W2"), default="W1")
    parser.add_argument("--users", type=int, default=16,
                        help="concurrent tasks that record (default 16)")
    parser.add_argument("--records", type=int, default=640,
                        help="records per round (default 640)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    args = parser.parse_args()
    if args.rounds < 1 or args.users < 1 or args.records < 1:
        parser.error("--rounds, --users and --records must each be at least 1")

    seconds, loop_seconds = asyncio.run(
        measure(args.workload, args.users, args.records, args.rounds))
    print(f"{args.workload} users={args.users}: {seconds * 1e6:.1f} us CPU per record, "
          f"{loop_seconds * 1e6:.1f} us of it in the event loop's thread")


if __name__ == "__main__":
    main()
