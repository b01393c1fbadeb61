"""Benchmark: export of a large audit log to JSON Lines, with its time and peak memory.

The script fills a new SQLite audit store, then a child process exports the whole
store with `export_records`. The export's wall time and the child's peak resident set
size (``ru_maxrss`` from ``os.wait4``) are the measured numbers, so the memory used to
fill the store does not count. The results go to a JSON file.

``--fill append`` writes through `SQLiteAuditStore.append`, as the gateway does, in
commits of ``--batch`` records. ``--fill rows`` (the default, several times faster)
builds the same rows with the store's own functions (`seal_subjects`, `chain_hash`,
canonical JSON bodies) and inserts them in transactions of ``--batch`` rows, skipping
the per-event validation and the writer task. Both give a real chain, which the store
checks when it opens, and ``--verify`` runs the full verifier before the export.

    .venv/bin/python bench/audit_export.py
    .venv/bin/python bench/audit_export.py --records 100000 --data-dir /dev/shm
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import orjson

from gateway.audit.chain import GENESIS_HASH, chain_hash
from gateway.audit.export import ExportFilter, export_records
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import AuditEvent, utc_timestamp
from gateway.audit.schema import subject_span
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.subject_keys import SUBJECT_KEY_BYTES, seal_subjects
from gateway.audit.verify import verify_store

RESULTS = Path(__file__).parent / "results" / "audit_export.json"
START = datetime(2026, 1, 1, tzinfo=UTC)
OPERATION_HASH = hashlib.sha256(b"query CustomerCard").hexdigest()


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records to write")
    parser.add_argument("--subjects", type=int, default=1000, help="distinct data subjects")
    parser.add_argument("--batch", type=int, default=5000, help="records per commit")
    parser.add_argument("--fill", choices=("rows", "append"), default="rows",
                        help="how to write the records (see the module docstring)")
    parser.add_argument("--verify", action="store_true",
                        help="verify the whole chain before the export")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder for the store and the export; default: system temp dir")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results file")
    parser.add_argument("--export-only", nargs=2, metavar=("STORE", "TARGET"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_event(index: int, refs: list[str]) -> AuditEvent:
    return cast(AuditEvent, {
        "time": utc_timestamp(START + timedelta(milliseconds=index)),
        "request_id": f"bench-{index}",
        "actor": f"emp-{index % 50}",
        "roles": ["sales"],
        "purpose": "support",
        "client": "crm-web",
        "operation_name": "CustomerCard",
        "operation_hash": OPERATION_HASH,
        "subjects": [{"type": "customer", "ref": refs[index % len(refs)]}],
        "fields": [
            {"field": "Customer.email", "category": "contact.email", "decision": "allow",
             "rule": "p:0123456789ab", "mask": None},
            {"field": "Customer.iban", "category": "financial.bank_account",
             "decision": "mask", "rule": "p:ba9876543210", "mask": "last4"},
        ],
        "systems": ["crm", "erp"],
        "records": 1,
        "outcome": "success",
        "policy_version": "6feda20736077f9b",
    })


async def fill_store(path: Path, records: int, subjects: int, batch: int) -> float:
    """Append ``records`` events in groups of ``batch``; return the seconds it took."""
    pseudonyms = Pseudonymizer(b"bench-audit-export-key".ljust(32, b"."))
    refs = [pseudonyms.token("customer", f"C-{number}") for number in range(subjects)]
    store = await SQLiteAuditStore.open(path, max_batch=batch)
    started = time.perf_counter()
    try:
        for first in range(0, records, batch):
            last = min(first + batch, records)
            await asyncio.gather(*(store.append(make_event(i, refs)) for i in range(first, last)))
            print(f"\rwritten {last:,} of {records:,}", end="", file=sys.stderr, flush=True)
    finally:
        await store.close()
    print(file=sys.stderr)
    return time.perf_counter() - started


def fill_rows(path: Path, records: int, subjects: int, batch: int) -> float:
    """Insert ``records`` chained rows in transactions of ``batch``; return the seconds."""
    pseudonyms = Pseudonymizer(b"bench-audit-export-key".ljust(32, b"."))
    refs = [pseudonyms.token("customer", f"C-{number}") for number in range(subjects)]
    keys = {ref: secrets.token_bytes(SUBJECT_KEY_BYTES) for ref in refs}
    asyncio.run(_create_schema(path))

    started = time.perf_counter()
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        with connection:
            connection.executemany(
                "INSERT INTO audit_subject_key (ref, key) VALUES (?, ?)", keys.items())
        prev_hash = GENESIS_HASH
        for first in range(0, records, batch):
            rows, index_rows = [], []
            for index in range(first, min(first + batch, records)):
                seq = index + 1
                event = make_event(index, refs)
                ref = event["subjects"][0]["ref"]
                sealed = seal_subjects(event["subjects"], keys, seq)
                body = orjson.dumps(
                    {**event, "subjects": sealed, "seq": seq, "prev_hash": prev_hash},
                    option=orjson.OPT_SORT_KEYS,
                )
                record_hash = chain_hash(prev_hash, seq, body)
                rows.append((seq, event["time"], event["request_id"], event["actor"],
                             event["purpose"], event["outcome"], body.decode("utf-8"),
                             prev_hash, record_hash))
                index_rows.append((seq, ref))
                prev_hash = record_hash
            with connection:
                connection.executemany(
                    "INSERT INTO audit_record (seq, time, request_id, actor, purpose, outcome, "
                    "body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                connection.executemany(
                    "INSERT INTO audit_subject (seq, ref) VALUES (?, ?)", index_rows)
                connection.executemany(
                    "INSERT OR IGNORE INTO audit_subject_span (ref, span) VALUES (?, ?)",
                    {(ref, subject_span(seq)) for seq, ref in index_rows})
            print(f"\rwritten {seq:,} of {records:,}", end="", file=sys.stderr, flush=True)
    finally:
        connection.close()
    print(file=sys.stderr)
    seconds = time.perf_counter() - started
    # Opening checks that the last record verifies and that the tables are the store's.
    asyncio.run(_open_and_close(path))
    return seconds


async def _create_schema(path: Path) -> None:
    store = await SQLiteAuditStore.open(path)
    await store.close()


async def _open_and_close(path: Path) -> None:
    store = await SQLiteAuditStore.open(path)
    await store.close()


def export_only(store: Path, target: Path) -> None:
    """Export the whole store to ``target`` and print the count; runs in the child process."""
    with target.open("w", encoding="utf-8", newline="") as out:
        count = asyncio.run(export_records(store, out, fmt="jsonl", filters=ExportFilter()))
    print(count)


def measure_export(store: Path, target: Path) -> dict[str, Any]:
    """Run the export in a child process; return its wall time, peak RSS and count."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, "--export-only", str(store), str(target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"export child failed with status {child.returncode}")
    # ru_maxrss is in KiB on Linux.
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "records": int(output.strip()),
        "bytes": target.stat().st_size,
    }


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_1_5_15": [round(value, 2) for value in load],
        "platform": platform.platform(),
    }


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
    if arguments.export_only:
        store, target = (Path(value) for value in arguments.export_only)
        export_only(store, target)
        return 0

    folder = Path(tempfile.mkdtemp(prefix="fonte-bench-export-", dir=arguments.data_dir))
    try:
        store = folder / "audit.sqlite3"
        if arguments.fill == "append":
            fill_seconds = asyncio.run(
                fill_store(store, arguments.records, arguments.subjects, arguments.batch))
        else:
            fill_seconds = fill_rows(store, arguments.records, arguments.subjects,
                                     arguments.batch)
        store_bytes = store.stat().st_size
        verified = None
        if arguments.verify:
            started = time.perf_counter()
            report = asyncio.run(verify_store(store))
            verified = {"ok": report.ok, "records": report.records,
                        "seconds": round(time.perf_counter() - started, 1)}
            if not report.ok:
                print(f"verify failed: {report.summary()}", file=sys.stderr)
                return 1
        export = measure_export(store, folder / "export.jsonl")
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    if export["records"] != arguments.records:
        print(f"exported {export['records']} records, expected {arguments.records}",
              file=sys.stderr)
        return 1
    results = {
        "finished": utc_timestamp(),
        "records": arguments.records,
        "subjects": arguments.subjects,
        "batch": arguments.batch,
        "fill": arguments.fill,
        "fill_seconds": round(fill_seconds, 1),
        "fill_records_per_second": round(arguments.records / fill_seconds),
        "store_bytes": store_bytes,
        "verify": verified,
        "export": export,
        "machine": machine(),
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
