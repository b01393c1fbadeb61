"""Throwaway databases on the local PostgreSQL and MariaDB servers, for tests.

``postgres_url()`` and ``mariadb_url()`` create a database named
``fonte_test_<random hex>``, yield its SQLAlchemy async URL and drop the
database on exit, so parallel test runs never share one. If the server is
not reachable, the test is skipped, or failed when ``FONTE_REQUIRE_SERVICES=1``
is set (as CI should, so a missing server cannot pass silently).

``redis_url()`` checks that Redis replies to PING and yields its URL with a
random prefix for the test's channels and keys. Keys with that prefix are
deleted on exit.

Servers: PostgreSQL at 127.0.0.1:5432 (trust authentication, user
``postgres``), MariaDB at 127.0.0.1:3306 (user ``root``, empty password) and
Redis at 127.0.0.1:6379 (no password).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple, NoReturn

import pytest
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import create_async_engine

POSTGRES_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
MARIADB_SERVER = "mysql+asyncmy://root@127.0.0.1:3306"
REDIS_SERVER = "redis://127.0.0.1:6379/0"
CONNECT_TIMEOUT = 5.0


def unavailable(service: str, reason: str) -> NoReturn:
    """Skip the test because ``service`` is down, or fail it under ``FONTE_REQUIRE_SERVICES=1``."""
    message = (f"{service} is not reachable: {reason}; start it or unset "
               "FONTE_REQUIRE_SERVICES")
    if os.environ.get("FONTE_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


# MySQL client errors for a server that cannot be reached: no socket, no
# TCP connection, connection lost (CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR,
# CR_SERVER_GONE_ERROR, CR_SERVER_LOST).
_MYSQL_UNREACHABLE = frozenset({2002, 2003, 2006, 2013})


def _unreachable_reason(error: BaseException) -> str | None:
    """Return why the server could not be reached, or None for any other failure."""
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {error}"
    original = getattr(error, "orig", None)
    code = original.args[0] if original is not None and original.args else None
    if code in _MYSQL_UNREACHABLE:
        return f"MySQL client error {code}"
    return None


@asynccontextmanager
async def _database(service: str, server: str, connect_timeout: dict[str, float],
                    drop_suffix: str) -> AsyncIterator[str]:
    name = f"fonte_test_{secrets.token_hex(6)}"
    admin_url = server + ("/postgres" if server.startswith("postgresql") else "/")
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT",
                                connect_args=connect_timeout)
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f"CREATE DATABASE {name}"))
    except (exc.SQLAlchemyError, OSError) as error:
        await admin.dispose()
        reason = _unreachable_reason(error)
        if reason is None:
            raise
        unavailable(service, reason)
    try:
        yield f"{server}/{name}"
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS {name}{drop_suffix}"))
        await admin.dispose()


@asynccontextmanager
async def postgres_url() -> AsyncIterator[str]:
    """Create a fresh PostgreSQL database; yield its URL; drop it, closing its sessions."""
    async with _database("PostgreSQL at 127.0.0.1:5432", POSTGRES_SERVER,
                         {"timeout": CONNECT_TIMEOUT}, " WITH (FORCE)") as url:
        yield url


@asynccontextmanager
async def mariadb_url() -> AsyncIterator[str]:
    """Create a fresh MariaDB database; yield its URL; drop it."""
    async with _database("MariaDB at 127.0.0.1:3306", MARIADB_SERVER,
                         {"connect_timeout": CONNECT_TIMEOUT}, "") as url:
        yield url


class RedisTarget(NamedTuple):
    """A Redis server for one test, and the prefix its channels and keys must start with."""

    url: str
    prefix: str


@asynccontextmanager
async def redis_url() -> AsyncIterator[RedisTarget]:
    """Yield the local Redis URL and a fresh prefix; delete the prefix's keys on exit."""
    try:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError
    except ImportError as error:
        unavailable("Redis at 127.0.0.1:6379", f"the redis package is missing ({error})")
    client = aioredis.from_url(REDIS_SERVER, socket_connect_timeout=CONNECT_TIMEOUT,
                               socket_timeout=CONNECT_TIMEOUT)
    try:
        await client.ping()
    except (RedisError, OSError) as error:
        await client.aclose()
        unavailable("Redis at 127.0.0.1:6379", f"{type(error).__name__}: {error}")
    prefix = f"fonte_test_{secrets.token_hex(6)}:"
    try:
        yield RedisTarget(REDIS_SERVER, prefix)
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
