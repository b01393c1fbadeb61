"""The SQL dialect against real SQLite, PostgreSQL and MariaDB databases.

Each database gets the demo ERP (``gateway.demo.sql``) plus ``key_rows``,
a 6,000-row table for batching and value checks, and ``slow_rows``, a view
that takes seconds per read, for statement timeouts. The ``database``
fixture is created once per module and dialect; every test builds its own
source over it and only reads.
"""

from __future__ import annotations

import asyncio
import inspect as pyinspect
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from services import mariadb_url, postgres_url
from sqlalchemy import (
    Column,
    Date,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    event,
    make_url,
    text,
)
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.catalog import Condition
from gateway.demo.data import DemoData
from gateway.demo.sql import load_demo_erp
from gateway.errors import (
    ConfigError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest
from gateway.sources.sql import (
    CANCEL_GRACE,
    MAX_KEYS_PER_STATEMENT,
    SqlSettings,
    SqlSource,
    contains_pattern,
    read_only_transaction,
    upstream_error,
)

KEY_ROWS = 6000
SLOW_SECONDS = 8
# Long enough for a full read of the demo tables on a busy machine, and with
# CANCEL_GRACE still well under SLOW_SECONDS.
STATEMENT_TIMEOUT = 1.5
MAX_MONEY = Decimal("999999999999.99")  # the largest numeric(14,2) value

_metadata = MetaData()
_key_rows = Table(
    "key_rows", _metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("code", String(16), nullable=False),
    Column("amount", Numeric(14, 2), nullable=False),
    Column("note", String(64)),
    Column("created", Date),
)

# Views that take SLOW_SECONDS or more for any read. SQLite has no sleep
# function, so its view counts to two billion instead.
_SLOW_VIEWS = {
    "postgresql": f"CREATE VIEW slow_rows AS SELECT k.id FROM key_rows k "
                  f"CROSS JOIN pg_sleep({SLOW_SECONDS}) AS s",
    "mysql": f"CREATE VIEW slow_rows AS SELECT id FROM key_rows WHERE SLEEP({SLOW_SECONDS}) = 0",
    "sqlite": "CREATE VIEW slow_rows AS WITH RECURSIVE c(id) AS (SELECT 1 UNION ALL "
              "SELECT id + 1 FROM c WHERE id < 2000000000) SELECT id FROM c",
}


def key_row(key: int) -> dict[str, Any]:
    """Return the ``key_rows`` row with id ``key``: odd ids have a note, id 7 a LIKE wildcard."""
    amounts = {1: MAX_MONEY, 2: Decimal("0.01")}
    note = None if key % 2 == 0 else f"note {key}"
    if key == 7:
        note = "50% off_now"
    return {"id": key, "code": f"K{key:05d}", "amount": amounts.get(key, Decimal(key) / 100),
            "note": note, "created": date(2026, 1, 1 + key % 28)}


@dataclass(frozen=True)
class Database:
    """A loaded test database: its dialect name and SQLAlchemy async URL."""

    dialect: str
    url: str


async def _load(url: str, data: DemoData) -> None:
    engine = create_async_engine(url)
    try:
        await load_demo_erp(engine, data)
        async with engine.begin() as connection:
            await connection.run_sync(_metadata.create_all)
            rows = [key_row(key) for key in range(1, KEY_ROWS + 1)]
            await connection.execute(_key_rows.insert(), rows)
            await connection.execute(text(_SLOW_VIEWS[engine.dialect.name]))
    finally:
        await engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mariadb"])
def database(request: pytest.FixtureRequest, demo_data: DemoData,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    # A sync fixture with its own event loop, so the module-wide database
    # outlives the per-test loops of pytest-asyncio.
    with asyncio.Runner() as runner:
        if request.param == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sql') / 'erp.db'}"
            runner.run(_load(url, demo_data))
            yield Database("sqlite", url)
            return
        server = postgres_url() if request.param == "postgresql" else mariadb_url()
        url = runner.run(server.__aenter__())
        try:
            runner.run(_load(url, demo_data))
            yield Database(request.param, url)
        finally:
            runner.run(server.__aexit__(None, None, None))


@pytest.fixture
async def source(database: Database) -> AsyncIterator[SqlSource]:
    erp = SqlSource("erp", SqlSettings(url=database.url, timeout=STATEMENT_TIMEOUT))
    yield erp
    await erp.aclose()


Statements = list[tuple[str, Any]]


@pytest.fixture
def statements(source: SqlSource) -> Iterator[Statements]:
    """Collect every (SQL text, parameters) the source sends."""
    sent: Statements = []

    def record(_connection: Any, _cursor: Any, statement: str, parameters: Any,
               _context: Any, _executemany: bool) -> None:
        sent.append((statement, parameters))

    event.listen(source.engine.sync_engine, "before_cursor_execute", record)
    yield sent
    event.remove(source.engine.sync_engine, "before_cursor_execute", record)


def selects_from(sent: Statements, table_name: str) -> Statements:
    """Return the SELECT statements that read ``table_name``, reflection queries left out."""
    pattern = re.compile(rf"^\s*SELECT\s.*?\sFROM\s+[`\"]?{table_name}[`\"]?(\s|$)",
                         re.S | re.I)
    return [(sql, parameters) for sql, parameters in sent if pattern.match(sql)]


def select_list(statement: str) -> list[str]:
    """Return the column list of a SELECT, identifier quotes removed."""
    found = re.match(r"\s*SELECT\s+(.*?)\s+FROM\s", statement, re.S | re.I)
    assert found is not None, statement
    return [part.strip().replace('"', "").replace("`", "") for part in found[1].split(",")]


def free_port() -> int:
    """Return a loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def with_port(url: str, port: int) -> str:
    return make_url(url).set(port=port).render_as_string(hide_password=False)


# --- batching and projection -------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 200, 5000])
async def test_batch_returns_exact_rows(source: SqlSource, statements: Statements,
                                        count: int) -> None:
    keys = tuple(range(1, count + 1))
    request = FetchRequest(entity="key_rows", attributes=("id", "code"), match="id", keys=keys)

    rows = await source.fetch(request)

    sent = selects_from(statements, "key_rows")
    assert sorted(row["id"] for row in rows) == list(keys)
    assert all(row == {"id": row["id"], "code": f"K{row['id']:05d}"} for row in rows)
    assert len(sent) == -(-count // MAX_KEYS_PER_STATEMENT)
    assert max(len(parameters) for _sql, parameters in sent) <= MAX_KEYS_PER_STATEMENT


async def test_projection_is_explicit(source: SqlSource, statements: Statements,
                                      demo_data: DemoData) -> None:
    partner = demo_data.erp["res.partner"][0]
    request = FetchRequest(entity="res.partner", attributes=("id", "credit_limit"), match="id",
                           keys=(partner["id"],))

    rows = await source.fetch(request)

    sent = selects_from(statements, "res_partner")
    assert rows == [{"id": partner["id"], "credit_limit": Decimal(str(partner["credit_limit"]))}]
    assert len(sent) == 1
    assert select_list(sent[0][0]) == ["res_partner.id", "res_partner.credit_limit"]
    assert "*" not in sent[0][0]


async def test_keys_are_bound_parameters(source: SqlSource, statements: Statements) -> None:
    request = FetchRequest(entity="key_rows", attributes=("id",), match="code",
                           keys=("K00003", "' OR '1'='1"))

    rows = await source.fetch(request)

    sql, parameters = selects_from(statements, "key_rows")[0]
    assert rows == [{"id": 3}]
    assert "K00003" not in sql
    assert "K00003" in list(parameters)


async def test_string_key_matches_integer_column(source: SqlSource,
                                                 statements: Statements) -> None:
    request = FetchRequest(entity="key_rows", attributes=("id",), match="id", keys=("12",))

    rows = await source.fetch(request)

    assert rows == [{"id": 12}]


async def test_key_of_wrong_type_sends_nothing(source: SqlSource,
                                               statements: Statements) -> None:
    request = FetchRequest(entity="key_rows", attributes=("id",), match="id", keys=("abc",))

    rows = await source.fetch(request)

    assert rows == []
    assert selects_from(statements, "key_rows") == []


async def test_schema_and_table_mapping(database: Database) -> None:
    schema = {"sqlite": "main", "postgresql": "public",
              "mariadb": make_url(database.url).database}[database.dialect]
    settings = SqlSettings(url=database.url, schema=schema, tables={"demo.key": "key_rows"})
    erp = SqlSource("erp", settings)
    sent: list[str] = []
    event.listen(erp.engine.sync_engine, "before_cursor_execute",
                 lambda *arguments: sent.append(arguments[2]))
    try:
        rows = await erp.fetch(FetchRequest(entity="demo.key", attributes=("id",), match="id",
                                            keys=(3,)))
    finally:
        await erp.aclose()

    assert rows == [{"id": 3}]
    assert any(re.search(rf"FROM [`\"]?{schema}[`\"]?\.[`\"]?key_rows", sql) for sql in sent)


# --- where, after, search, order, limit --------------------------------------------------


async def test_where_conditions(source: SqlSource, demo_data: DemoData) -> None:
    pickings = demo_data.erp["stock.picking"]
    partner_id = pickings[0]["partner_id"]
    request = FetchRequest(
        entity="stock.picking", attributes=("id",), match="partner_id", keys=(partner_id,),
        where=(Condition("picking_type_code", "=", "outgoing"),
               Condition("state", "in", ("done", "assigned")),
               Condition("carrier_tracking_ref", "!=", "0")))

    rows = await source.fetch(request)

    expected = [p["id"] for p in pickings if p["partner_id"] == partner_id
                and p["state"] in ("done", "assigned")]
    assert sorted(row["id"] for row in rows) == sorted(expected)


async def test_not_equal_keeps_nulls(source: SqlSource) -> None:
    request = FetchRequest(entity="key_rows", attributes=("id", "note"), match="id",
                           keys=(1, 2, 3, 4), where=(Condition("note", "!=", "note 1"),))

    rows = await source.fetch(request)

    assert sorted(row["id"] for row in rows) == [2, 3, 4]


async def test_after_order_and_limit(source: SqlSource, demo_data: DemoData) -> None:
    ids = sorted(p["id"] for p in demo_data.erp["res.partner"])
    request = FetchRequest(entity="res.partner", attributes=("id",), order="id",
                           limit=5, after=("id", str(ids[10])))

    rows = await source.fetch(request)

    assert [row["id"] for row in rows] == ids[11:16]


async def test_order_by_two_terms(source: SqlSource, demo_data: DemoData) -> None:
    orders = demo_data.erp["sale.order"]
    partner_id = max({o["partner_id"] for o in orders},
                     key=lambda p: sum(o["partner_id"] == p for o in orders))
    request = FetchRequest(entity="sale.order", attributes=("id", "date_order"),
                           match="partner_id", keys=(partner_id,), order="state, id desc",
                           limit=4)

    rows = await source.fetch(request)

    mine = [o for o in orders if o["partner_id"] == partner_id]
    mine.sort(key=lambda o: -o["id"])
    mine.sort(key=lambda o: o["state"])
    assert [row["id"] for row in rows] == [o["id"] for o in mine[:4]]


async def test_search_ignores_case(source: SqlSource, demo_data: DemoData) -> None:
    names = {p["id"]: p["name"] for p in demo_data.erp["res.partner"]}
    word = next(w for name in names.values() for w in name.split()
                if len(w) >= 4 and w.isascii() and w.isalpha())
    needle = word[1:4].upper()
    request = FetchRequest(entity="res.partner", attributes=("id",), order="id",
                           search=("name", needle))

    rows = await source.fetch(request)

    expected = sorted(i for i, name in names.items() if needle.lower() in name.lower())
    assert expected
    assert [row["id"] for row in rows] == expected


@pytest.mark.parametrize(("needle", "expected"), [("%", [7]), ("_", [7]), ("0% O", [7]),
                                                  ("/", [])])
async def test_search_wildcards_are_literal(source: SqlSource, needle: str,
                                            expected: list[int]) -> None:
    request = FetchRequest(entity="key_rows", attributes=("id",), match="id",
                           keys=tuple(range(1, 40)), search=("note", needle))

    rows = await source.fetch(request)

    assert [row["id"] for row in rows] == expected


def test_contains_pattern_escapes() -> None:
    assert contains_pattern("5%_a/b") == "%5/%/_a//b%"


async def test_limit_over_one_chunk_rejected(source: SqlSource) -> None:
    request = FetchRequest(entity="key_rows", attributes=("id",), match="id",
                           keys=tuple(range(1, MAX_KEYS_PER_STATEMENT + 2)), limit=3)

    with pytest.raises(UpstreamRejected, match="limit"):
        await source.fetch(request)


async def test_empty_keys_return_nothing(source: SqlSource, statements: Statements) -> None:
    request = FetchRequest(entity="key_rows", attributes=("id",), match="id", keys=())

    assert await source.fetch(request) == []
    assert statements == []


# --- values ------------------------------------------------------------------------------


async def test_null_is_none(source: SqlSource, demo_data: DemoData) -> None:
    undone = next(p for p in demo_data.erp["stock.picking"] if p["date_done"] is None)
    request = FetchRequest(entity="stock.picking", attributes=("id", "date_done",
                                                                "carrier_tracking_ref"),
                           match="id", keys=(undone["id"],))

    rows = await source.fetch(request)

    assert rows == [{"id": undone["id"], "date_done": None, "carrier_tracking_ref": None}]


async def test_decimal_values_exact(source: SqlSource) -> None:
    request = FetchRequest(entity="key_rows", attributes=("id", "amount"), match="id",
                           keys=(1, 2, 3, 4321))

    rows = {row["id"]: row["amount"] for row in await source.fetch(request)}

    assert all(isinstance(amount, Decimal) for amount in rows.values())
    assert rows[1] == MAX_MONEY
    assert rows[2] == Decimal("0.01")
    assert rows[3] == Decimal("0.03")
    assert rows[4321] == Decimal("43.21")


async def test_money_matches_demo_data(source: SqlSource, demo_data: DemoData) -> None:
    orders = {o["id"]: o for o in demo_data.erp["sale.order"]}
    request = FetchRequest(entity="sale.order", attributes=("id", "amount_total"),
                           match="id", keys=tuple(orders))

    rows = await source.fetch(request)

    assert len(rows) == len(orders)
    assert all(row["amount_total"] == Decimal(str(orders[row["id"]]["amount_total"]))
               for row in rows)


async def test_dates_and_datetimes(source: SqlSource, demo_data: DemoData) -> None:
    move = demo_data.erp["account.move"][0]
    order = demo_data.erp["sale.order"][0]

    [move_row] = await source.fetch(FetchRequest(
        entity="account.move", attributes=("invoice_date",), match="id", keys=(move["id"],)))
    [order_row] = await source.fetch(FetchRequest(
        entity="sale.order", attributes=("date_order",), match="id", keys=(order["id"],)))

    assert move_row["invoice_date"] == date.fromisoformat(move["invoice_date"])
    assert order_row["date_order"] == datetime.fromisoformat(order["date_order"])


async def test_demo_references_hold_names(source: SqlSource, demo_data: DemoData) -> None:
    erp = demo_data.erp
    banks = {b["id"]: b["name"] for b in erp["res.bank"]}
    carriers = {c["id"]: c["name"] for c in erp["delivery.carrier"]}
    account = erp["res.partner.bank"][0]
    picking = erp["stock.picking"][0]

    [bank_row] = await source.fetch(FetchRequest(
        entity="res.partner.bank", attributes=("bank_id", "partner_id"), match="id",
        keys=(account["id"],)))
    [picking_row] = await source.fetch(FetchRequest(
        entity="stock.picking", attributes=("carrier_id", "sale_id"), match="id",
        keys=(picking["id"],)))
    currencies = await source.fetch(FetchRequest(
        entity="account.move", attributes=("currency_id",), order="id", limit=50))

    assert bank_row == {"bank_id": banks[account["bank_id"]], "partner_id": account["partner_id"]}
    assert picking_row == {"carrier_id": carriers[picking["carrier_id"]],
                           "sale_id": picking["sale_id"]}
    assert {row["currency_id"] for row in currencies} == {"EUR"}


async def test_demo_tables_have_every_record(source: SqlSource, demo_data: DemoData) -> None:
    for model in ("res.partner", "res.partner.bank", "sale.order", "account.move",
                  "stock.picking"):
        rows = await source.fetch(FetchRequest(entity=model, attributes=("id",), order="id"))

        assert [row["id"] for row in rows] == sorted(r["id"] for r in demo_data.erp[model])


# --- read-only ---------------------------------------------------------------------------


async def test_read_only_rejects_writes(source: SqlSource) -> None:
    async with source.engine.connect() as connection:
        async with read_only_transaction(connection, STATEMENT_TIMEOUT):
            with pytest.raises(sqlalchemy.exc.DBAPIError):
                await connection.execute(text("UPDATE key_rows SET code = 'X' WHERE id = 5"))
        await connection.rollback()

    rows = await source.fetch(FetchRequest(entity="key_rows", attributes=("code",),
                                           match="id", keys=(5,)))
    assert rows == [{"code": "K00005"}]


async def test_fetch_starts_read_only(source: SqlSource, statements: Statements,
                                      database: Database) -> None:
    await source.fetch(FetchRequest(entity="key_rows", attributes=("id",), match="id",
                                    keys=(1,)))

    texts = [sql.strip().upper() for sql, _parameters in statements]
    marker = {"sqlite": "PRAGMA QUERY_ONLY = ON", "postgresql": "SET TRANSACTION READ ONLY",
              "mariadb": "START TRANSACTION READ ONLY"}[database.dialect]
    first_select = next(i for i, sql in enumerate(texts) if "FROM KEY_ROWS" in sql)
    assert marker in texts[:first_select]


# --- errors ------------------------------------------------------------------------------


async def test_unknown_table_rejected(source: SqlSource) -> None:
    request = FetchRequest(entity="no.such.model", attributes=("id",), match="id", keys=(1,))

    with pytest.raises(UpstreamRejected, match="no_such_model"):
        await source.fetch(request)


async def test_unknown_column_rejected(source: SqlSource) -> None:
    request = FetchRequest(entity="key_rows", attributes=("id", "missing"), match="id",
                           keys=(1,))

    with pytest.raises(UpstreamRejected, match="'missing'"):
        await source.fetch(request)


@pytest.mark.parametrize("request_", [
    FetchRequest(entity="key_rows; DROP TABLE key_rows", attributes=("id",)),
    FetchRequest(entity="key_rows", attributes=("id", "code) FROM x --")),
    FetchRequest(entity="key_rows", attributes=("id",), order="id; DELETE"),
    FetchRequest(entity="key_rows", attributes=("id",), order="id desc nulls"),
    FetchRequest(entity="key_rows", attributes=("id",), search=("1=1 OR note", "x")),
    FetchRequest(entity="key_rows", attributes=()),
], ids=["entity", "attribute", "order-name", "order-words", "search", "no-attributes"])
async def test_invalid_names_send_no_sql(source: SqlSource, statements: Statements,
                                         request_: FetchRequest) -> None:
    with pytest.raises(UpstreamRejected):
        await source.fetch(request_)
    assert statements == []


async def test_wrong_port_unavailable(database: Database, tmp_path: Path) -> None:
    if database.dialect == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'erp.db'}"
    else:
        url = with_port(database.url, free_port())
    erp = SqlSource("erp", SqlSettings(url=url, timeout=STATEMENT_TIMEOUT))
    request = FetchRequest(entity="key_rows", attributes=("id",), match="id", keys=(1, 2))

    try:
        with pytest.raises(UpstreamUnavailable) as caught:
            await erp.fetch(request)
    finally:
        await erp.aclose()
        await _join_aiosqlite_threads()
    assert "system 'erp' could not be reached for key_rows read of 2 keys" in str(caught.value)


async def _join_aiosqlite_threads() -> None:
    # After a failed connect, aiosqlite 0.22 stops its worker thread without
    # awaiting it. The thread then reports to the event loop, so the loop must
    # stay open until the thread ends, or the thread raises "Event loop is closed".
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            await asyncio.to_thread(thread.join, 5.0)


async def test_silent_server_times_out(database: Database) -> None:
    if database.dialect == "sqlite":
        pytest.skip("SQLite opens a local file; there is no server to wait for")

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # sends nothing and returns when the client disconnects
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    erp = SqlSource("erp", SqlSettings(url=with_port(database.url, port),
                                       timeout=STATEMENT_TIMEOUT))
    request = FetchRequest(entity="key_rows", attributes=("id",), match="id", keys=(1,))
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="timed out on key_rows read"):
            await erp.fetch(request)
        elapsed = time.monotonic() - started
    finally:
        await erp.aclose()
        server.close()
        await server.wait_closed()
    # asyncmy's connect_timeout covers only the TCP connect, so for MariaDB
    # the asyncio deadline (timeout plus CANCEL_GRACE) ends the handshake wait.
    assert elapsed < STATEMENT_TIMEOUT + CANCEL_GRACE + 1.0


async def test_statement_timeout(source: SqlSource) -> None:
    request = FetchRequest(entity="slow_rows", attributes=("id",), match="id", keys=(1, 2))

    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as caught:
        await source.fetch(request)
    elapsed = time.monotonic() - started

    # The database cancelled the statement: the asyncio deadline would need CANCEL_GRACE more.
    assert elapsed < STATEMENT_TIMEOUT + CANCEL_GRACE
    assert "timed out on slow_rows read of 2 keys" in str(caught.value)
    after = await source.fetch(FetchRequest(entity="key_rows", attributes=("id",),
                                            match="id", keys=(1,)))
    assert after == [{"id": 1}]


async def test_error_message_has_no_values(source: SqlSource) -> None:
    request = FetchRequest(entity="key_rows", attributes=("id",), match="id",
                           keys=("secret-key",), search=("missing", "secret-text"))

    with pytest.raises(UpstreamRejected) as caught:
        await source.fetch(request)

    message = str(caught.value)
    assert "secret" not in message
    assert "SELECT" not in message


def _instances() -> Iterator[sqlalchemy.exc.SQLAlchemyError]:
    """Yield one instance of every SQLAlchemyError class, built with SQL text and a value."""
    for _name, cls in pyinspect.getmembers(sqlalchemy.exc, pyinspect.isclass):
        if issubclass(cls, sqlalchemy.exc.SQLAlchemyError):
            yield _build(cls)


def _build(cls: type[sqlalchemy.exc.SQLAlchemyError]) -> sqlalchemy.exc.SQLAlchemyError:
    statement, parameters = "SELECT name FROM res_partner WHERE vat = %s", ("IT-value",)
    try:
        return cls(statement, parameters, Exception("IT-value"))
    except TypeError:
        pass
    try:
        return cls(f"{statement} IT-value")
    except TypeError:
        return cls.__new__(cls)


def test_every_sqlalchemy_error_maps() -> None:
    instances = list(_instances())

    assert len(instances) > 30
    for error in instances:
        mapped = upstream_error("erp", "key_rows read of 1 keys", error)

        assert isinstance(mapped, UpstreamError), type(error)
        assert mapped.system == "erp"
        assert "IT-value" not in str(mapped), type(error)
        assert "SELECT" not in str(mapped), type(error)


@pytest.mark.parametrize(("error", "expected"), [
    (sqlalchemy.exc.ProgrammingError("SELECT", {}, Exception()), UpstreamRejected),
    (sqlalchemy.exc.NoSuchTableError("key_rows"), UpstreamRejected),
    (sqlalchemy.exc.OperationalError("SELECT", {}, Exception()), UpstreamUnavailable),
    (sqlalchemy.exc.InterfaceError("SELECT", {}, Exception()), UpstreamUnavailable),
    (sqlalchemy.exc.TimeoutError("pool"), UpstreamTimeout),
    (ConnectionRefusedError(111, "refused"), UpstreamUnavailable),
    (OSError(113, "no route"), UpstreamUnavailable),
    (TimeoutError(), UpstreamTimeout),
])
def test_error_classes_map(error: BaseException, expected: type[UpstreamError]) -> None:
    assert type(upstream_error("erp", "a read", error)) is expected


# --- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "message"), [
    ({"url": "oracle+oracledb://u@h/db"}, "not supported"),
    ({"url": "postgresql://postgres@127.0.0.1/test"}, "postgresql\\+asyncpg"),
    ({"url": "not a url"}, "not a valid SQLAlchemy URL"),
    ({"tables": {"res.partner": "erp.partners"}}, "set schema"),
    ({"tables": {"res partner": "partners"}}, "entity name"),
    ({"schema": "erp; drop"}, "schema"),
    ({"timeout": 0}, "positive"),
    ({"pool_size": 0}, "at least 1"),
])
def test_settings_rejected(changes: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {"url": "sqlite+aiosqlite:///erp.db", **changes}
    with pytest.raises(ConfigError, match=message):
        SqlSettings(**options)


def test_settings_repr_hides_url() -> None:
    settings = SqlSettings(url="postgresql+asyncpg://gateway:s3cret@127.0.0.1/erp")

    assert "s3cret" not in repr(settings)


def test_default_table_name() -> None:
    settings = SqlSettings(url="sqlite+aiosqlite:///erp.db", tables={"sale.order": "orders"})

    assert settings.table_for("res.partner") == "res_partner"
    assert settings.table_for("sale.order") == "orders"
