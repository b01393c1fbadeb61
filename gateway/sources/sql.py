"""SQL dialect: an ERP read through tables or views, with SQLAlchemy 2 Core.

Each read is one short read-only transaction on one pooled connection. It
reflects the column types of the entity's table or view once per source,
then sends one ``SELECT`` with an explicit column list per chunk of at most
``MAX_KEYS_PER_STATEMENT`` keys. Keys and values always travel as bound
parameters. Identifiers are checked against ``NAME_PATTERN`` before any SQL
is built and are quoted by SQLAlchemy.

The reflected types serve two purposes. Request values are converted to the
column's Python type, because asyncpg binds parameters with the server's
types and rejects the string ``"1001"`` for an integer column. SQLAlchemy
also applies the types to results, so SQLite returns ``Decimal``, ``date``
and ``datetime`` as PostgreSQL and MariaDB do. Reflection results are
cached for the life of the source, so a view whose columns change needs a
gateway restart.

Supported URLs: ``postgresql+asyncpg``, ``mysql+asyncmy`` or
``mariadb+asyncmy``, and ``sqlite+aiosqlite``.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Select, exc, func, inspect, or_, select, table, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import ColumnClause, TableClause, column
from sqlalchemy.types import Boolean, Date, DateTime, Float, Integer, Numeric, String, TypeEngine

from gateway.catalog import Condition
from gateway.errors import (
    ConfigError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest, Row, order_terms

NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
"""Entity and attribute names the source accepts; dots allow Odoo model names."""
TABLE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Keys per statement, which bounds each statement and its result. asyncpg
# 0.32 rejects more than 32,767 parameters (asyncpg/protocol/prepared_stmt.pyx).
# NOTE: a SQLite library built with the pre-3.32 default limit of 999
# parameters rejects a full chunk; sqlite3's getlimit() shows the limit.
MAX_KEYS_PER_STATEMENT = 1000

# The database cancels a statement after the configured timeout. The
# asyncio deadline is longer, so the server's cancel normally arrives first
# and leaves the connection reusable. The deadline covers connect and
# network stalls.
CANCEL_GRACE = 2.0

# SQLite calls the progress handler every this many virtual machine instructions.
SQLITE_PROGRESS_STEPS = 100_000

DRIVERS = {"postgresql": "asyncpg", "mysql": "asyncmy", "mariadb": "asyncmy",
           "sqlite": "aiosqlite"}
# The connect-timeout argument of each driver's connect().
# asyncmy 0.2 applies it to the TCP connect only, so a server that accepts
# and then sends nothing is cut off by the asyncio deadline instead.
_CONNECT_TIMEOUT_ARGUMENT = {"asyncpg": "timeout", "asyncmy": "connect_timeout",
                             "aiosqlite": "timeout"}

# Codes that mean "the statement timeout cancelled the query".
_TIMEOUT_SQLSTATES = frozenset({"57014"})  # PostgreSQL query_canceled
_TIMEOUT_ERRNOS = frozenset({1969, 3024})  # MariaDB max_statement_time, MySQL max_execution_time
_SQLITE_INTERRUPT = 9

_REJECTED = (exc.NoSuchTableError, exc.ProgrammingError, exc.DataError, exc.IntegrityError,
             exc.NotSupportedError, exc.CompileError, exc.ArgumentError)
_UNREACHABLE = (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError, OSError)

ColumnTypes = dict[str, TypeEngine[Any]]


@dataclass(frozen=True)
class SqlSettings:
    """Connection and read settings of one ERP database.

    ``url`` is a complete SQLAlchemy async URL, password included, so it is
    left out of ``repr``. ``tables`` maps an entity to its table or view;
    an unmapped entity reads the table named like the entity with dots
    replaced by underscores (``res.partner`` -> ``res_partner``), which is
    also Odoo's own table name. ``timeout`` (seconds) bounds each statement
    and each connect; ``pool_size`` is the maximum number of connections.
    """

    url: str = field(repr=False)
    tables: Mapping[str, str] = field(default_factory=dict)
    schema: str | None = None
    timeout: float = 10.0
    pool_size: int = 5

    def __post_init__(self) -> None:
        self.backend()
        for entity, table_name in self.tables.items():
            if not NAME_PATTERN.match(entity):
                raise ConfigError(f"tables: entity name {entity!r} is invalid; use letters, "
                                  "digits, underscores and dots")
            if not TABLE_PATTERN.match(table_name):
                raise ConfigError(f"tables: table name {table_name!r} for {entity!r} is "
                                  "invalid; use letters, digits and underscores, and set "
                                  "schema for a schema name")
        if self.schema is not None and not TABLE_PATTERN.match(self.schema):
            raise ConfigError(f"schema {self.schema!r} is invalid; use letters, digits and "
                              "underscores")
        if not self.timeout > 0:
            raise ConfigError(f"timeout {self.timeout!r} must be a positive number of seconds")
        if self.pool_size < 1:
            raise ConfigError(f"pool_size {self.pool_size!r} must be at least 1")

    def backend(self) -> str:
        """Return the URL's backend name, or raise ``ConfigError`` for an unsupported URL."""
        try:
            url = make_url(self.url)
        except exc.ArgumentError as error:
            raise ConfigError("url is not a valid SQLAlchemy URL; write it as "
                              "dialect+driver://user@host:port/database") from error
        backend, driver = url.get_backend_name(), url.get_driver_name()
        if DRIVERS.get(backend) != driver:
            supported = ", ".join(f"{name}+{DRIVERS[name]}" for name in DRIVERS)
            raise ConfigError(f"url uses {backend}+{driver}, which is not supported; use one "
                              f"of {supported}")
        return backend

    def table_for(self, entity: str) -> str:
        """Return the table or view that stores the rows of ``entity``."""
        return self.tables.get(entity, entity.replace(".", "_"))


def create_engine(settings: SqlSettings) -> AsyncEngine:
    """Create the connection pool for ``settings``; raise ``ConfigError`` without the driver."""
    backend = settings.backend()
    driver = DRIVERS[backend]
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        "connect_args": {_CONNECT_TIMEOUT_ARGUMENT[driver]: settings.timeout},
    }
    if backend != "sqlite":
        # aiosqlite opens a local file, and SQLAlchemy picks its pool class.
        options.update(pool_size=settings.pool_size, max_overflow=0,
                       pool_timeout=settings.timeout)
    try:
        return create_async_engine(settings.url, **options)
    except ImportError as error:
        raise ConfigError(f"the {driver} driver is not installed; run pip install "
                          f"{driver}") from error


class SqlSource:
    """Reads one ERP database through SQL tables or views.

    The source owns ``engine`` and disposes of it in ``aclose``. On SQLite
    the source leaves each connection it used in ``query_only`` mode, so a
    passed-in engine must not be shared with a writer.
    """

    supports_row_filters = True

    def __init__(self, name: str, settings: SqlSettings,
                 engine: AsyncEngine | None = None) -> None:
        self.name = name
        self._settings = settings
        self.engine = engine if engine is not None else create_engine(settings)
        self._column_types: dict[str, ColumnTypes] = {}

    async def aclose(self) -> None:
        await self.engine.dispose()

    async def fetch(self, request: FetchRequest) -> list[Row]:
        table_name = self._settings.table_for(request.entity)
        operation = f"{request.entity} read of {len(request.keys)} keys"
        check_request(self.name, request)
        if request.match is not None and not request.keys:
            return []
        chunks = key_chunks(request)
        if request.limit is not None and len(chunks) > 1:
            raise UpstreamRejected(self.name, f"system {self.name!r} cannot apply a limit to "
                                   f"{operation}: a limit needs at most "
                                   f"{MAX_KEYS_PER_STATEMENT} keys, because each chunk is "
                                   "limited on its own")
        try:
            async with asyncio.timeout(self._settings.timeout + CANCEL_GRACE):
                return await self._read(request, table_name, chunks)
        except UpstreamError:
            raise
        except (exc.SQLAlchemyError, OSError) as error:
            raise upstream_error(self.name, operation, error) from error

    async def _read(self, request: FetchRequest, table_name: str,
                    chunks: list[tuple[str | int, ...]]) -> list[Row]:
        rows: list[Row] = []
        async with self.engine.connect() as connection, read_only_transaction(
                connection, self._settings.timeout):
            types = await self._types(connection, request.entity, table_name)
            source = self._table(request, table_name, types)
            for keys in chunks:
                statement = build_select(self.name, request, source, keys)
                if statement is None:
                    continue
                result = await connection.execute(statement)
                rows.extend(dict(row._mapping) for row in result)
        return rows

    def _table(self, request: FetchRequest, table_name: str,
               types: ColumnTypes) -> TableClause:
        """Build the table construct with a typed column for each name ``request`` uses."""
        columns = []
        for name in referenced_names(request):
            if name not in types:
                raise UpstreamRejected(self.name, f"system {self.name!r}: table {table_name!r} "
                                       f"has no column {name!r} for entity "
                                       f"{request.entity!r}; add it to the view or fix the "
                                       "schema declaration")
            columns.append(column(name, types[name]))
        return table(table_name, *columns, schema=self._settings.schema)

    async def _types(self, connection: AsyncConnection, entity: str,
                     table_name: str) -> ColumnTypes:
        cached = self._column_types.get(table_name)
        if cached is not None:
            return cached
        schema = self._settings.schema

        def reflect(sync_connection: Connection) -> list[Any]:
            return list(inspect(sync_connection).get_columns(table_name, schema=schema))

        try:
            columns = await connection.run_sync(reflect)
        except exc.NoSuchTableError as error:
            raise self._missing_table(entity, table_name) from error
        if not columns:
            raise self._missing_table(entity, table_name)
        types: ColumnTypes = {str(spec["name"]): spec["type"] for spec in columns}
        self._column_types[table_name] = types
        return types

    def _missing_table(self, entity: str, table_name: str) -> UpstreamRejected:
        return UpstreamRejected(self.name, f"system {self.name!r} has no table or view "
                                f"{table_name!r} for entity {entity!r}; create it, or map the "
                                "entity to another table in the system's tables setting")


def referenced_names(request: FetchRequest) -> list[str]:
    """Return every attribute name ``request`` uses, the projection first, without repeats."""
    names = list(request.attributes)
    if request.match is not None:
        names.append(request.match)
    names.extend(condition.attribute for condition in request.where)
    names.extend(condition.attribute for condition in request.any_of)
    if request.after is not None:
        names.append(request.after[0])
    if request.search is not None:
        names.append(request.search[0])
    names.extend(name for name, _descending in order_terms(request.order))
    return list(dict.fromkeys(names))


def check_request(system: str, request: FetchRequest) -> None:
    """Raise ``UpstreamRejected`` for a request that must not become SQL."""
    if not request.attributes:
        raise UpstreamRejected(system, f"refusing to read {request.entity!r} without a column "
                               "list: the SQL dialect never selects every column")
    for part in request.order.split(",") if request.order else ():
        words = part.split()
        if not 1 <= len(words) <= 2 or (len(words) == 2
                                         and words[1].lower() not in ("asc", "desc")):
            raise UpstreamRejected(system, f"order term {part.strip()!r} in a read of "
                                   f"{request.entity!r} is invalid; write 'attribute [asc|desc]'")
    for name in (request.entity, *referenced_names(request)):
        if not NAME_PATTERN.match(name):
            raise UpstreamRejected(system, f"name {name!r} in a read of {request.entity!r} is "
                                   "not a valid SQL identifier; use letters, digits, "
                                   "underscores and dots")


def key_chunks(request: FetchRequest) -> list[tuple[str | int, ...]]:
    """Split the keys into statements of at most ``MAX_KEYS_PER_STATEMENT``; one without keys."""
    if request.match is None:
        return [()]
    return [request.keys[start:start + MAX_KEYS_PER_STATEMENT]
            for start in range(0, len(request.keys), MAX_KEYS_PER_STATEMENT)]


def build_select(system: str, request: FetchRequest, source: TableClause,
                 keys: tuple[str | int, ...]) -> Select[Any] | None:
    """Build the ``SELECT`` of ``request`` for ``keys``; None if no key fits the column type.

    ``source`` must carry a typed column for every name the request uses.
    """
    columns = source.c
    statement = select(*(columns[name] for name in dict.fromkeys(request.attributes)))
    if request.match is not None:
        match = columns[request.match]
        typed_keys = [key for key in (_key(value, match.type) for value in keys)
                      if key is not None]
        if not typed_keys:
            return None
        statement = statement.where(match.in_(typed_keys))
    for condition in request.where:
        statement = statement.where(_condition(system, request, columns[condition.attribute],
                                               condition))
    if request.any_of:
        statement = statement.where(or_(*(
            _condition(system, request, columns[condition.attribute], condition)
            for condition in request.any_of)))
    if request.after is not None:
        attribute, value = request.after
        statement = statement.where(
            columns[attribute] > _value(system, request, columns[attribute], value))
    if request.search is not None:
        # NOTE: SQLite's lower() folds ASCII letters only, so there the search
        # is case-sensitive for accented letters.
        attribute, search_text = request.search
        statement = statement.where(func.lower(columns[attribute]).like(
            func.lower(contains_pattern(search_text)), escape=LIKE_ESCAPE))
    for name, descending in order_terms(request.order):
        statement = statement.order_by(columns[name].desc() if descending
                                       else columns[name].asc())
    if request.limit is not None:
        statement = statement.limit(request.limit)
    return statement


# "/" rather than a backslash, which MySQL string literals treat as an escape themselves.
LIKE_ESCAPE = "/"


def contains_pattern(search_text: str) -> str:
    """Return the ``LIKE`` pattern that matches values containing ``search_text`` literally."""
    escaped = (search_text.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2)
               .replace("%", LIKE_ESCAPE + "%").replace("_", LIKE_ESCAPE + "_"))
    return f"%{escaped}%"


def _condition(system: str, request: FetchRequest, target: ColumnClause[Any],
               condition: Condition) -> ColumnElement[bool]:
    if condition.operator == "in":
        values = condition.value if isinstance(condition.value, tuple) else (condition.value,)
        return target.in_([_value(system, request, target, value) for value in values])
    value = _value(system, request, target, condition.value)
    if condition.operator == "!=":
        # Odoo and SOQL both count an empty value as different from any value.
        return or_(target != value, target.is_(None))
    return target == value


def _key(value: object, type_: TypeEngine[Any]) -> object | None:
    # A key that cannot have the column's type matches no row, so it is dropped.
    try:
        return to_column_type(value, type_)
    except (ValueError, TypeError):
        return None


def _value(system: str, request: FetchRequest, target: ColumnClause[Any],
           value: object) -> object:
    try:
        return to_column_type(value, target.type)
    except (ValueError, TypeError) as error:
        raise UpstreamRejected(system, f"a value compared with {target.name!r} in a read of "
                               f"{request.entity!r} does not fit the column type "
                               f"{type(target.type).__name__}; fix the schema declaration"
                               ) from error


def to_column_type(value: object, type_: TypeEngine[Any]) -> object:
    """Convert a request value to the Python type the column's driver binds.

    Raises ``ValueError`` or ``TypeError`` if the value cannot have that type.
    """
    if isinstance(type_, Boolean):
        return _to_bool(value)
    if isinstance(type_, Integer):
        return _to_int(value)
    if isinstance(type_, Float):
        return float(str(value))
    if isinstance(type_, Numeric):
        return _to_decimal(value)
    if isinstance(type_, DateTime):
        return _to_datetime(value, timezone=bool(type_.timezone))
    if isinstance(type_, Date):
        return _to_date(value)
    if isinstance(type_, String):
        return str(value)
    return value


def _to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text_value = str(value).strip().lower()
    if text_value in ("true", "1"):
        return True
    if text_value in ("false", "0"):
        return False
    raise ValueError("not a boolean")


def _to_int(value: object) -> int:
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value)
    raise ValueError("not an integer")


def _to_decimal(value: object) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation as error:
        raise ValueError("not a number") from error
    if not number.is_finite():
        raise ValueError("not a finite number")
    return number


def _to_date(value: object) -> date:
    if isinstance(value, datetime):
        raise TypeError("a datetime is not a date")
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def _to_datetime(value: object, *, timezone: bool) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        moment = datetime.fromisoformat(str(value))
    # asyncpg 0.32 rejects an aware datetime for a timestamp column. The
    # gateway's naive datetimes are UTC, so timestamptz gets them with UTC attached.
    if timezone and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    if not timezone and moment.tzinfo is not None:
        return moment.astimezone(UTC).replace(tzinfo=None)
    return moment


@asynccontextmanager
async def read_only_transaction(connection: AsyncConnection,
                                timeout: float) -> AsyncIterator[None]:
    """Make the transaction on ``connection`` read-only and bound each statement by ``timeout``.

    PostgreSQL: ``SET TRANSACTION READ ONLY`` and ``SET LOCAL
    statement_timeout``. MariaDB and MySQL: the session's statement time
    limit, then ``START TRANSACTION READ ONLY``. SQLite: ``PRAGMA
    query_only`` on the connection and a progress handler that interrupts a
    statement past its deadline. Must be entered before the first statement
    of the transaction.
    """
    dialect = connection.dialect
    if dialect.name == "postgresql":
        await connection.execute(text("SET TRANSACTION READ ONLY"))
        milliseconds = max(1, math.ceil(timeout * 1000))
        await connection.execute(text(f"SET LOCAL statement_timeout = {milliseconds}"))
        yield
    elif dialect.name == "mysql":
        if getattr(dialect, "is_mariadb", False):
            limit = f"max_statement_time = {timeout:.3f}"
        else:
            # NOTE: untested; the tests run MariaDB only.
            limit = f"max_execution_time = {max(1, math.ceil(timeout * 1000))}"
        await connection.execute(text(f"SET SESSION {limit}"))
        await connection.execute(text("START TRANSACTION READ ONLY"))
        yield
    elif dialect.name == "sqlite":
        deadline = await _sqlite_deadline(connection)
        deadline.at = time.monotonic() + timeout
        try:
            yield
        finally:
            deadline.at = math.inf
    else:
        raise ConfigError(f"database dialect {dialect.name!r} is not supported")


class _Deadline:
    """A statement deadline in ``time.monotonic()`` seconds, read by SQLite's worker thread."""

    def __init__(self) -> None:
        self.at = math.inf

    def passed(self) -> int:
        # A non-zero return makes SQLite abort the statement with SQLITE_INTERRUPT.
        return 1 if time.monotonic() > self.at else 0


async def _sqlite_deadline(connection: AsyncConnection) -> _Deadline:
    """Return the connection's deadline, installing it and ``query_only`` on first use."""
    raw = await connection.get_raw_connection()
    deadline = raw.info.get("fonte_deadline")
    if isinstance(deadline, _Deadline):
        return deadline
    await connection.execute(text("PRAGMA query_only = ON"))
    deadline = _Deadline()
    driver: Any = raw.driver_connection  # aiosqlite.Connection
    await driver.set_progress_handler(deadline.passed, SQLITE_PROGRESS_STEPS)
    raw.info["fonte_deadline"] = deadline
    return deadline


def upstream_error(system: str, operation: str, error: BaseException) -> UpstreamError:
    """Map a SQLAlchemy, driver or socket error to the gateway's error.

    The message names the system, the read, and the driver's error class and
    code. It leaves out the SQL text, the bound values and the database's own
    message, because these may contain personal values.
    """
    cause = describe_cause(error)
    if is_timeout(error):
        return UpstreamTimeout(system, f"system {system!r} timed out on {operation} "
                               f"({cause})")
    if isinstance(error, _REJECTED):
        return UpstreamRejected(system, f"system {system!r} rejected {operation} ({cause}); "
                                "check the table or view and the schema declaration")
    if isinstance(error, _UNREACHABLE):
        return UpstreamUnavailable(system, f"system {system!r} could not be reached for "
                                   f"{operation} ({cause})")
    return UpstreamUnavailable(system, f"system {system!r} failed on {operation} ({cause})")


def is_timeout(error: BaseException) -> bool:
    """Tell whether ``error`` means a connect, pool or statement timeout."""
    if isinstance(error, TimeoutError | exc.TimeoutError):
        return True
    original = getattr(error, "orig", None)
    if original is None:
        return False
    if getattr(original, "sqlstate", None) in _TIMEOUT_SQLSTATES:
        return True
    if getattr(original, "sqlite_errorcode", None) == _SQLITE_INTERRUPT:
        return True
    arguments: tuple[Any, ...] = getattr(original, "args", ())
    return bool(arguments) and arguments[0] in _TIMEOUT_ERRNOS


def describe_cause(error: BaseException) -> str:
    """Name the driver's error class and code, without its message."""
    original = getattr(error, "orig", None)
    if original is None:
        return type(error).__name__
    # SQLAlchemy's asyncpg adapter wraps asyncpg's exception, which has the specific class.
    driver_error = original.__cause__ or original
    parts = [type(driver_error).__name__]
    sqlstate = getattr(original, "sqlstate", None)
    if isinstance(sqlstate, str):
        parts.append(f"SQLSTATE {sqlstate}")
    arguments = getattr(original, "args", ())
    if arguments and isinstance(arguments[0], int):
        parts.append(f"error {arguments[0]}")
    sqlite_name = getattr(original, "sqlite_errorname", None)
    if isinstance(sqlite_name, str):
        parts.append(sqlite_name)
    return ", ".join(parts)
