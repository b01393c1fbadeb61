"""Policy rows in a database table: loading them into an engine, and publishing them.

The rows live in the ``casbin_rule`` table of casbin's SQLAlchemy adapters
(``ptype``, ``v0`` to ``v5``) and are read and written through
casbin-async-sqlalchemy-adapter 1.17. The table contains the ``p``,
``p2``, ``g`` and ``g3`` rows of ``policy.csv``. The engine adds the ``g2``
links from the schema, and the model and purposes still come from the
policy folder. ``publish_policy`` replaces every row in one transaction, so a
gateway reads either the old policy or the new one and never a mix. It then
notifies the gateways (Redis ``PUBLISH`` or PostgreSQL ``NOTIFY``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis
from casbin_async_sqlalchemy_adapter import Adapter  # type: ignore[import-untyped]
from casbin_async_sqlalchemy_adapter.adapter import Filter  # type: ignore[import-untyped]
from redis.exceptions import RedisError
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from gateway.catalog import Catalog, load_catalog
from gateway.errors import ConfigError, PolicyError
from gateway.policy import PolicyEngine, PolicyText, default_policy_dir, read_policy_dir
from gateway.policy_reload import REDIS_CHANNEL, Loader, NotifyKind
from gateway.sources.sql import describe_cause, is_timeout

log = logging.getLogger("gateway.policy")

TABLE = "casbin_rule"
POSTGRES_CHANNEL = "fonte_policy"
CONNECT_TIMEOUT = 10.0
# Bounds a whole read or publish (connect, statements, commit), in seconds.
STATEMENT_DEADLINE = 30.0
# SQLAlchemy wraps the driver's errors, but a refused connection surfaces as
# OSError. asyncpg's classes are listed in case one escapes the wrapping.
_DATABASE_ERRORS = (sqlalchemy_exc.SQLAlchemyError, asyncpg.PostgresError,
                    asyncpg.InterfaceError, OSError, TimeoutError)
_CONNECT_TIMEOUT_ARGUMENT = {"asyncpg": "timeout", "aiosqlite": "timeout"}
# SQLSTATE codes with a specific fix.
_MISSING_TABLE = "42P01"
_MISSING_DATABASE = "3D000"
_BAD_LOGIN = frozenset({"28000", "28P01"})


@dataclass(frozen=True)
class Notification:
    """The channel through which ``publish_policy`` notifies the gateways of new rows."""

    kind: NotifyKind = "none"
    redis_url: str | None = None
    redis_password: str | None = field(default=None, repr=False)
    redis_channel: str = REDIS_CHANNEL


@dataclass(frozen=True)
class Published:
    """The outcome of ``publish_policy``."""

    version: str
    rows: int
    # Redis subscribers that received the message, or None without a Redis notification.
    receivers: int | None = None


def database_loader(catalog: Catalog, url: str, model_text: str,
                    purposes: dict[str, list[str]]) -> Loader:
    """Return a loader that reads the rows at ``url`` and builds an engine with this model."""

    async def load() -> PolicyEngine:
        return await load_from_database(catalog, url, model_text, purposes)

    return load


async def load_from_database(catalog: Catalog, url: str, model_text: str,
                             purposes: dict[str, list[str]]) -> PolicyEngine:
    """Read the rows at ``url`` and build the engine in a worker thread."""
    rows = await read_rows(url)
    policy = PolicyText(model=model_text, rules=rows, purposes=purposes,
                        origin=describe_database(url))
    return await asyncio.to_thread(PolicyEngine, catalog, policy)


async def read_rows(url: str) -> list[list[str]]:
    """Return every row of the table as ``[ptype, v0, ...]``, in insertion order per ptype.

    Raises ``PolicyError`` when the database fails, the table is empty or a
    row has an empty value.
    """
    collector = _RowCollector()
    engine = _engine(url)
    try:
        async with asyncio.timeout(STATEMENT_DEADLINE):
            # The filtered load orders by id, but the plain load_policy has no
            # ORDER BY, and row order decides between rules of equal rank.
            await Adapter(engine).load_filtered_policy(collector, Filter())
    except _DATABASE_ERRORS as exc:
        raise database_error("read the policy rows from", url, exc) from exc
    finally:
        await engine.dispose()
    rows = collector.rows()
    if not rows:
        raise PolicyError(f"table {TABLE} in {_server(url)} is empty; run `fonte policy push "
                          "--database URL` to store the rules of policy.csv")
    for row in rows:
        if any(not value for value in row):
            raise PolicyError(f"row {', '.join(row)!r} of table {TABLE} in {_server(url)} has an "
                              "empty value; write '-' for no mask and push the policy again")
    return rows


def read_model_files(directory: Path) -> tuple[str, dict[str, list[str]]]:
    """Return the model text and each role's purposes from ``directory``.

    A database-backed gateway reads these two files, and the rows from the
    table, on every reload.
    """
    model = _read_text(directory / "model.conf")
    purposes_path = directory / "purposes.toml"
    if not purposes_path.is_file():
        return model, {}
    try:
        document = tomllib.loads(_read_text(purposes_path))
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{purposes_path}: invalid TOML: {exc}") from exc
    table = document.get("purposes", {})
    if not isinstance(table, dict):
        raise PolicyError(f"{purposes_path}: [purposes] must map each role to a list of purposes")
    return model, {str(role): [str(p) for p in listed] for role, listed in table.items()}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{str(path)!r} is not UTF-8 text; save it as UTF-8") from exc
    except OSError as exc:
        raise PolicyError(f"cannot read {str(path)!r}: {exc.strerror or type(exc).__name__}; "
                          "check [policy] directory and the file's permissions") from exc


async def publish_policy(url: str, directory: Path, notify: Notification, *,
                         catalog: Catalog | None = None) -> Published:
    """Replace the table's rows with those of ``directory/policy.csv``, then notify.

    The policy is built first, as every gateway will build it, so a policy
    the gateways would reject is never stored. ``catalog`` defaults to the
    shipped schema. The table is created when missing. With
    ``notify.kind == "postgres"`` the NOTIFY is part of the transaction, so
    PostgreSQL delivers it only after the commit.
    """
    try:
        policy = await asyncio.to_thread(read_policy_dir, directory)
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read the policy files in {str(directory)!r} "
                          f"({type(exc).__name__}); check the folder and its permissions") from exc
    if catalog is None:
        catalog = await asyncio.to_thread(load_catalog)
    engine = await asyncio.to_thread(PolicyEngine, catalog, policy)
    in_transaction = engine.version if notify.kind == "postgres" else None
    await _replace_rows(url, policy.rules, in_transaction)
    log.info("published policy %s to table %s in %s: %d rows", engine.version, TABLE,
             _server(url), len(policy.rules))
    receivers = None
    if notify.kind == "redis":
        receivers = await _publish_redis(notify, engine.version)
    return Published(version=engine.version, rows=len(policy.rules), receivers=receivers)


async def push(database: str, *, password_env: str | None = None, redis: str | None = None,
               redis_password_env: str | None = None, redis_channel: str = REDIS_CHANNEL,
               pg_notify: bool = False, directory: Path | None = None) -> Published:
    """Run ``fonte policy push``: check the options, then ``publish_policy``.

    Passwords come from the environment variables the options name, never
    from the URLs. Raises ``ConfigError`` for invalid options.
    """
    if redis is not None and pg_notify:
        raise ConfigError("pass --redis URL or --pg-notify, not both")
    try:
        url = make_url(database)
    except sqlalchemy_exc.ArgumentError as exc:
        raise ConfigError("--database is not a valid SQLAlchemy URL; write it as "
                          "postgresql+asyncpg://user@host:port/database") from exc
    if url.password is not None:
        raise ConfigError("--database must not contain a password; pass --password-env NAME")
    if not _is_async_driver(url):
        raise ConfigError(f"--database driver {url.drivername!r} is not an asyncio driver "
                          "that Fonte can load; write postgresql+asyncpg://user@host:port/database")
    if password_env is not None:
        url = url.set(password=_environment("--password-env", password_env))
    if pg_notify and url.get_backend_name() != "postgresql":
        raise ConfigError(f"--pg-notify needs a PostgreSQL database, not {url.drivername}")
    notify = Notification("postgres") if pg_notify else Notification()
    if redis is not None:
        if urlsplit(redis).password is not None:
            raise ConfigError("--redis must not contain a password; pass --redis-password-env")
        password = (_environment("--redis-password-env", redis_password_env)
                    if redis_password_env is not None else None)
        notify = Notification("redis", redis, password, redis_channel)
    return await publish_policy(url.render_as_string(hide_password=False),
                                directory or default_policy_dir(), notify)


def _is_async_driver(url: URL) -> bool:
    try:
        return bool(url.get_dialect().is_async)
    except sqlalchemy_exc.NoSuchModuleError:
        return False


def _environment(option: str, variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"{option} names {variable!r}, which is not set in the environment")
    return value


async def _replace_rows(url: str, rows: list[list[str]], notify_version: str | None) -> None:
    engine = _engine(url)
    try:
        async with asyncio.timeout(STATEMENT_DEADLINE):
            await Adapter(engine).create_table()
            async with AsyncSession(engine) as session, session.begin():
                # With an external session the adapter neither commits nor
                # rolls back, so the delete and the inserts share this transaction.
                writer = Adapter(engine, db_session=session)
                await writer.clear_policy()
                # Consecutive runs keep the file's order, which decides
                # between rules of equal rank.
                for ptype, run in itertools.groupby(rows, key=lambda row: row[0]):
                    await writer.add_policies(ptype[0], ptype, [row[1:] for row in run])
                if notify_version is not None:
                    await session.execute(text("SELECT pg_notify(:channel, :payload)"),
                                          {"channel": POSTGRES_CHANNEL,
                                           "payload": notify_version})
    except _DATABASE_ERRORS as exc:
        raise database_error("replace the policy rows in", url, exc) from exc
    finally:
        await engine.dispose()


async def _publish_redis(notify: Notification, version: str) -> int:
    if notify.redis_url is None:
        raise PolicyError("notification through Redis needs a Redis URL; pass --redis URL")
    client = aioredis.from_url(notify.redis_url, password=notify.redis_password,
                               socket_connect_timeout=CONNECT_TIMEOUT,
                               socket_timeout=CONNECT_TIMEOUT)
    try:
        receivers = int(await client.publish(notify.redis_channel, version))
    except (RedisError, OSError) as exc:
        raise PolicyError(f"the policy rows are stored, but publishing on Redis channel "
                          f"{notify.redis_channel!r} at {redis_server(notify.redis_url)} failed "
                          f"({type(exc).__name__}); gateways load the new policy at their next "
                          "periodic reload, or push again once Redis is back") from exc
    finally:
        await client.aclose()
    log.info("notified %d subscriber(s) of Redis channel %r of policy %s", receivers,
             notify.redis_channel, version)
    return receivers


def database_error(action: str, url: str, error: BaseException) -> PolicyError:
    """Translate a database or driver error, naming the server and never the password."""
    return PolicyError(f"cannot {action} table {TABLE} in {_server(url)} "
                       f"({describe_cause(error)}); {_fix(error)}")


def _fix(error: BaseException) -> str:
    original = getattr(error, "orig", None)
    sqlstate = getattr(original, "sqlstate", None)
    # sqlite3 reports a missing table only in its message.
    if sqlstate == _MISSING_TABLE or "no such table" in str(original or ""):
        return "run `fonte policy push --database URL` to create and fill the table"
    if sqlstate == _MISSING_DATABASE:
        return "create the database or correct its name in [policy] database_url"
    if sqlstate in _BAD_LOGIN:
        return ("check the user in [policy] database_url and the password that "
                "database_password_env or database_password_file names")
    if is_timeout(error):
        return "the database did not answer in time; check that it is reachable and not overloaded"
    if isinstance(error, OSError | sqlalchemy_exc.OperationalError | sqlalchemy_exc.InterfaceError):
        return "check that the database server is running and reachable from this host"
    return "check [policy] database_url and the database server's log"


def describe_database(url: str) -> str:
    """Return where the rows come from, with the password masked, for logs and health."""
    return f"{make_url(url).render_as_string(hide_password=True)} table {TABLE}"


def _server(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite database {parsed.database!r}"
    port = f":{parsed.port}" if parsed.port else ""
    return f"database {parsed.database!r} at {parsed.host}{port}"


def redis_server(url: str) -> str:
    """Return the host and port of a Redis URL, without the password, for messages."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix socket {parts.path}"
    return f"{parts.hostname}:{parts.port or 6379}"


def _engine(url: str) -> AsyncEngine:
    parsed: URL = make_url(url)
    argument = _CONNECT_TIMEOUT_ARGUMENT.get(parsed.get_driver_name())
    connect_args: dict[str, Any] = {argument: CONNECT_TIMEOUT} if argument else {}
    # One connection per read: reloads are minutes apart, and an idle pool
    # would hold a server connection in every gateway process.
    return create_async_engine(parsed, poolclass=NullPool, connect_args=connect_args)


class _RowCollector:
    """A stand-in for a casbin ``Model`` that keeps every row, whatever its ptype.

    ``casbin.persist.load_policy_line`` (pycasbin 2.8) silently drops a row
    whose ptype the model does not define, and only reads
    ``model.model[section][ptype].policy``. Keeping such rows lets the engine
    reject them, as it rejects them in ``policy.csv``.
    """

    def __init__(self) -> None:
        self.model = _AnyKey(lambda: _AnyKey(_Assertion))

    def rows(self) -> list[list[str]]:
        return [[ptype, *values] for section in self.model.values()
                for ptype, assertion in section.items() for values in assertion.policy]


class _Assertion:
    def __init__(self) -> None:
        self.policy: list[list[str]] = []


class _Everything:
    def __contains__(self, key: object) -> bool:
        return True


class _AnyKey(dict[str, Any]):
    """A dict whose ``keys()`` contains every key and that creates missing values."""

    def __init__(self, factory: Any) -> None:
        super().__init__()
        self._factory = factory

    def keys(self) -> Any:
        return _Everything()

    def __missing__(self, key: str) -> Any:
        value = self[key] = self._factory()
        return value
