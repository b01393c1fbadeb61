"""Benchmark: how long `fonte audit forget` locks a PostgreSQL store's subject tables.

Forget on PostgreSQL ends with ``VACUUM FULL`` of ``audit_subject_key``,
``audit_subject`` and ``audit_subject_span``, which holds an ACCESS EXCLUSIVE lock on
the three tables, so gateway commits wait for it. The script creates a throwaway
database on the server. It fills ``audit_record`` and ``audit_subject`` with
``--rows`` rows about ``--subjects`` subjects, ``audit_subject_span`` from them, and
``audit_subject_key`` with one key per subject, using ``generate_series``, so the
bodies are placeholders that do not verify. Then it times `forget_subject` on one
subject and drops the database.

    .venv/bin/python bench/audit_forget.py --rows 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.audit.maintenance import migrate_store
from gateway.audit.schema import SUBJECT_SPAN_RECORDS
from gateway.audit.subject_keys import forget_subject

DEFAULT_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"


async def fill(url: str, rows: int, subjects: int) -> str:
    """Fill the store's tables and return the total size of audit_subject as text."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(
                "INSERT INTO audit_record SELECT g, '2026-12-05T00:00:00.000Z', 'r' || g, "
                "'emp-1', NULL, 'success', repeat('x', 600), repeat('0', 64), "
                "repeat('0', 64) FROM generate_series(1, :rows) g"), {"rows": rows})
            await connection.execute(text(
                "INSERT INTO audit_subject SELECT g, 'v1:' || md5((g % :subjects)::text) "
                "FROM generate_series(1, :rows) g"), {"rows": rows, "subjects": subjects})
            await connection.execute(text(
                "INSERT INTO audit_subject_span SELECT DISTINCT ref, seq / :span "
                "FROM audit_subject"), {"span": SUBJECT_SPAN_RECORDS})
            await connection.execute(text(
                "INSERT INTO audit_subject_key SELECT 'v1:' || md5(g::text), "
                "decode(md5(g::text) || md5(g::text), 'hex') "
                "FROM generate_series(0, :last) g"), {"last": subjects - 1})
            size = await connection.execute(text(
                "SELECT pg_size_pretty(pg_total_relation_size('audit_subject') "
                "+ pg_total_relation_size('audit_subject_span'))"))
            return str(size.scalar_one())
    finally:
        await engine.dispose()


async def run(server: str, rows: int, subjects: int) -> dict[str, object]:
    name = f"fonte_bench_{secrets.token_hex(6)}"
    admin = create_async_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f"CREATE DATABASE {name}"))
    url = f"{server}/{name}"
    try:
        await migrate_store(url)
        size = await fill(url, rows, subjects)
        started = time.perf_counter()
        # The pseudonym of subject 7, as the fill writes it.
        ref = "v1:" + hashlib.md5(b"7", usedforsecurity=False).hexdigest()
        result = await forget_subject(url, ref)
        elapsed = time.perf_counter() - started
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        await admin.dispose()
    return {
        "rows": rows,
        "subjects": subjects,
        "audit_subject_size": size,
        "forget_seconds": round(elapsed, 2),
        "records_unlinked": result.records_unlinked,
        "load_average_1m": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="rows of audit_record and audit_subject (default 1,000,000)")
    parser.add_argument("--subjects", type=int, default=10_000,
                        help="distinct subjects, each with one key (default 10,000)")
    parser.add_argument("--server", default=DEFAULT_SERVER,
                        help=f"PostgreSQL server URL without a database (default {DEFAULT_SERVER})")
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(run(arguments.server, arguments.rows, arguments.subjects))))


if __name__ == "__main__":
    main()
