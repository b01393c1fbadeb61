"""Durable audit records per second, for the SQLite store and for PostgreSQL with 4 writers.

Each writer is a process with one audit store and ``--concurrency`` tasks that append
events in a loop, as concurrent requests of one gateway process do. An append counts
once `append` returned, which is after its commit. The rate is the records appended
during the timed ``--seconds`` (plus the appends in flight at its end) divided by the
longest writer's window. The writers open their stores before the window starts.
After the run the store is verified: seq 1 to N with no gap, N equal to the counted
appends, and every checkpoint valid.

The writers' CPU time (``time.process_time``, all threads of each writer process) is
recorded too. Records per writer CPU second do not depend on how many other programs
share the cores, but leave out the database server's own work.

SQLite runs with one writer, because one gateway process owns an SQLite store.
PostgreSQL runs with ``--writers`` processes (4 by default) on one throwaway database
on the server at ``--postgres-server``, dropped at the end.

Run: ``.venv/bin/python bench/audit_throughput.py [--seconds 10] [--backend both]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))

from query_cost import machine

from gateway.audit.keys import CheckpointKey
from gateway.audit.postgres import PostgresAuditStore
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import AuditEvent, utc_timestamp
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.store import GroupCommitStore
from gateway.audit.verify import verify_store

DEFAULT_POSTGRES_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
RESULTS = Path(__file__).resolve().parent / "results" / "audit_throughput.json"
# Computed once: the pseudonyms are the gateway's work, not the store's.
SUBJECT_REFS = [Pseudonymizer(b"bench-audit-key".ljust(32, b".")).token("customer", f"C-{n}")
                for n in range(997)]
OPEN_TIMEOUT_SECONDS = 120.0
OPERATION_HASH = hashlib.sha256(b"query CustomerCard { customer { email iban } }").hexdigest()


def make_event(writer: int, task: int, index: int) -> AuditEvent:
    """Build an event of the size the gateway writes for one customer card: 2 fields, 1 subject."""
    return cast(AuditEvent, {
        "time": utc_timestamp(),
        "request_id": f"w{writer}-t{task}-{index}",
        "actor": "emp-17",
        "roles": ["finance"],
        "purpose": "billing",
        "client": "crm-web",
        "operation_name": "CustomerCard",
        "operation_hash": OPERATION_HASH,
        "subjects": [{"type": "customer", "ref": SUBJECT_REFS[index % len(SUBJECT_REFS)]}],
        "fields": [
            {"field": "Customer.email", "category": "contact.email", "decision": "allow",
             "rule": "finance-read-contact", "mask": None},
            {"field": "Customer.iban", "category": "financial.iban", "decision": "mask",
             "rule": "finance-mask-iban", "mask": "last4"},
        ],
        "systems": ["crm", "erp"],
        "records": 1,
        "outcome": "success",
        "policy_version": "2026-12-01",
    })


async def open_store(target: str, key: CheckpointKey, max_batch: int) -> GroupCommitStore:
    if target.startswith("postgresql"):
        return await PostgresAuditStore.open(target, checkpoint_key=key, max_batch=max_batch)
    return await SQLiteAuditStore.open(Path(target), checkpoint_key=key, max_batch=max_batch)


async def run_writer(writer: int, target: str, key_bytes: bytes, args: argparse.Namespace,
                     ready: Queue[int], go: EventType) -> dict[str, Any]:
    key = CheckpointKey("bench-audit", Ed25519PrivateKey.from_private_bytes(key_bytes))
    store = await open_store(target, key, args.max_batch)
    counts = [0] * args.concurrency
    ready.put(writer)
    await asyncio.to_thread(go.wait)
    started = time.monotonic()
    cpu_started = time.process_time()
    stop_at = started + args.seconds

    async def append_loop(task: int) -> None:
        index = 0
        while time.monotonic() < stop_at:
            await store.append(make_event(writer, task, index))
            index += 1
            counts[task] += 1

    await asyncio.gather(*(append_loop(task) for task in range(args.concurrency)))
    # The appends in flight at stop_at finish after it, so the window is a little longer.
    elapsed = time.monotonic() - started
    cpu_seconds = time.process_time() - cpu_started
    commits = store.commits
    await store.close()
    return {"writer": writer, "records": sum(counts), "commits": commits,
            "elapsed_seconds": round(elapsed, 3), "cpu_seconds": round(cpu_seconds, 3)}


def writer_process(writer: int, target: str, key_bytes: bytes, args: argparse.Namespace,
                   ready: Queue[int], go: EventType, results: Queue[dict[str, Any]]) -> None:
    results.put(asyncio.run(run_writer(writer, target, key_bytes, args, ready, go)))


def run_writers(target: str, writers: int, args: argparse.Namespace,
                key: Ed25519PrivateKey) -> list[dict[str, Any]]:
    """Run ``writers`` processes against ``target`` and return each one's counts.

    The processes open their stores first, and all start appending when the last one
    is ready, so that imports and opens on a loaded machine stay out of the window.
    """
    key_bytes = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption())
    context = multiprocessing.get_context("spawn")
    ready: Queue[int] = context.Queue()
    results: Queue[dict[str, Any]] = context.Queue()
    go = context.Event()
    processes = [
        context.Process(target=writer_process,
                        args=(writer, target, key_bytes, args, ready, go, results))
        for writer in range(writers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=OPEN_TIMEOUT_SECONDS)
    go.set()
    rows = [results.get(timeout=args.seconds + OPEN_TIMEOUT_SECONDS) for _ in processes]
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"writer process {process.pid} exited with {process.exitcode}")
    return sorted(rows, key=lambda row: int(row["writer"]))


async def check_store(target: Path | str, key: Ed25519PrivateKey,
                      appended: int) -> dict[str, Any]:
    """Verify the store and compare its length with the counted appends."""
    report = await verify_store(target, public_keys={"bench-audit": key.public_key()})
    return {"verified": report.ok, "reason": report.reason, "records": report.records,
            "checkpoints": report.checkpoints,
            "records_equal_counted": report.records == appended}


@asynccontextmanager
async def throwaway_database(server: str) -> AsyncIterator[str]:
    name = f"fonte_bench_{secrets.token_hex(6)}"
    admin = create_async_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield f"{server}/{name}"
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        await admin.dispose()


def summarise(backend: str, rows: list[dict[str, Any]], check: dict[str, Any]) -> dict[str, Any]:
    records = sum(int(row["records"]) for row in rows)
    commits = sum(int(row["commits"]) for row in rows)
    seconds = max(float(row["elapsed_seconds"]) for row in rows)
    cpu_seconds = sum(float(row["cpu_seconds"]) for row in rows)
    return {"backend": backend, "writers": len(rows), "seconds": seconds,
            "records": records, "records_per_second": round(records / seconds),
            "writer_cpu_seconds": round(cpu_seconds, 3),
            "records_per_writer_cpu_second": round(records / cpu_seconds) if cpu_seconds else None,
            "records_per_commit": round(records / commits, 1) if commits else None,
            "per_writer": rows, "check": check}


def bench_sqlite(args: argparse.Namespace) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory(prefix="fonte-bench-audit-", dir=args.data_dir) as folder:
        path = Path(folder) / "audit.sqlite3"
        rows = run_writers(str(path), 1, args, key)
        appended = sum(int(row["records"]) for row in rows)
        check = asyncio.run(check_store(path, key, appended))
    return summarise("sqlite", rows, check)


def bench_postgres(args: argparse.Namespace) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()

    async def run() -> dict[str, Any]:
        async with throwaway_database(args.postgres_server) as url:
            # The first open migrates; the writers then open at the same revision.
            await (await PostgresAuditStore.open(url)).close()
            rows = await asyncio.to_thread(run_writers, url, args.writers, args, key)
            appended = sum(int(row["records"]) for row in rows)
            check = await check_store(url, key, appended)
            return summarise("postgresql", rows, check)

    return asyncio.run(run())


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="timed seconds of load per backend (default 10)")
    parser.add_argument("--writers", type=int, default=4,
                        help="PostgreSQL writer processes (default 4)")
    parser.add_argument("--concurrency", type=int, default=512,
                        help="appending tasks per writer process (default 512)")
    parser.add_argument("--max-batch", type=int, default=1024,
                        help="max records per commit (default 1024)")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER,
                        help=f"server URL without database (default {DEFAULT_POSTGRES_SERVER})")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder of the temporary SQLite store (default: system temp dir)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results file (JSON)")
    return parser.parse_args()


def main() -> int:
    args = parse_arguments()
    runs = []
    if args.backend in ("sqlite", "both"):
        runs.append(bench_sqlite(args))
    if args.backend in ("postgresql", "both"):
        runs.append(bench_postgres(args))
    results = {"benchmark": "audit_throughput",
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "settings": {"seconds": args.seconds, "writers": args.writers,
                            "concurrency": args.concurrency, "max_batch": args.max_batch},
               "machine": machine(), "runs": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    failed = False
    for run in runs:
        check = run["check"]
        ok = check["verified"] and check["records_equal_counted"]
        failed = failed or not ok
        print(f"{run['backend']}: {run['writers']} writer(s), {run['records']} records in "
              f"{run['seconds']:g} s = {run['records_per_second']} records/s "
              f"({run['records_per_writer_cpu_second']} per writer CPU second), "
              f"{run['records_per_commit']} records per commit; verify "
              f"{'passed' if ok else 'FAILED: ' + str(check['reason'])}")
    print(f"results written to {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
