"""The same read cases against every source dialect and its fake or database.

Each case runs once per adapter of ``dialect_adapters``: Salesforce, Odoo
JSON-RPC, Odoo JSON-2, Dataverse, SAP OData v2, generic REST/JSON, and SQL
on SQLite, PostgreSQL and MariaDB. A case that cannot apply to a dialect is skipped
with the reason its adapter gives, so ``pytest -rs`` lists every gap.
How to add a dialect is in the docstring of ``dialect_adapters``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from dialect_adapters import (
    ADAPTERS,
    SQL_BACKENDS,
    TIMEOUT,
    Adapter,
    Case,
    EmptyForm,
    SqlAdapter,
    load_sql_database,
    pages,
)
from services import mariadb_url, postgres_url

from gateway.demo.data import DemoData
from gateway.errors import (
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.sources import FetchRequest, Row, Source
from gateway.sources.client import HTTP_CLIENTS, HttpClient

ADAPTER_NAMES = [*ADAPTERS, *(f"sql-{backend}" for backend in SQL_BACKENDS)]


def _database(backend: str, data: DemoData, scratch: pytest.TempPathFactory) -> Iterator[str]:
    # A sync generator with its own event loop, so the module-wide database
    # outlives the per-test loops of pytest-asyncio.
    with asyncio.Runner() as runner:
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{scratch.mktemp('conformance') / 'erp.db'}"
            runner.run(load_sql_database(url, data))
            yield url
            return
        server = postgres_url() if backend == "postgresql" else mariadb_url()
        url = runner.run(server.__aenter__())
        try:
            runner.run(load_sql_database(url, data))
            yield url
        finally:
            runner.run(server.__aexit__(None, None, None))


@pytest.fixture(scope="module")
def sql_sqlite(demo_data: DemoData, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _database("sqlite", demo_data, tmp_path_factory)


@pytest.fixture(scope="module")
def sql_postgresql(demo_data: DemoData,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _database("postgresql", demo_data, tmp_path_factory)


@pytest.fixture(scope="module")
def sql_mariadb(demo_data: DemoData, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _database("mariadb", demo_data, tmp_path_factory)


@pytest.fixture(params=ADAPTER_NAMES)
def dialect(request: pytest.FixtureRequest, demo_data: DemoData) -> Adapter:
    name: str = request.param
    if name.startswith("sql-"):
        backend = name.removeprefix("sql-")
        return SqlAdapter(demo_data, backend, request.getfixturevalue(name.replace("-", "_")))
    return ADAPTERS[name](demo_data)


@pytest.fixture
async def adapter(dialect: Adapter, request: pytest.FixtureRequest) -> AsyncIterator[Adapter]:
    """The started adapter; tests marked ``loopback`` get their HTTP fake on a real socket."""
    await dialect.start(socket=request.node.get_closest_marker("loopback") is not None)
    yield dialect
    await dialect.stop()


def applies(adapter: Adapter, case: Case) -> None:
    """Skip the test, with the adapter's reason, when ``case`` cannot apply to its dialect."""
    reason = adapter.reason(case)
    if reason is not None:
        pytest.skip(f"not applicable to {adapter.name}: {reason}")


def one_key(adapter: Adapter, data: DemoData, attributes: tuple[str, ...] = ()) -> FetchRequest:
    sample = adapter.sample
    return FetchRequest(sample.entity, attributes or sample.attributes, match=sample.key,
                        keys=sample.keys(data, 1))


async def warm_up(adapter: Adapter, source: Source, data: DemoData) -> None:
    """Read once, so token, login and reflection requests are out of the counted log."""
    await source.fetch(one_key(adapter, data))
    adapter.clear()


def by_key(rows: list[Row], key: str) -> list[Row]:
    return sorted(rows, key=lambda row: row[key])


# --- batching, paging, projection -------------------------------------------------------


@pytest.mark.parametrize("count", [1, 200, 5000])
async def test_batch_reads_every_key(adapter: Adapter, demo_data: DemoData, count: int) -> None:
    sample = adapter.sample
    source = adapter.source()
    await warm_up(adapter, source, demo_data)
    keys = sample.keys(demo_data, count)

    rows = await source.fetch(FetchRequest(sample.entity, sample.attributes, match=sample.key,
                                           keys=keys))

    assert by_key(rows, sample.key) == sample.expected(demo_data, keys, sample.attributes)
    assert adapter.request_count() == adapter.batch_requests[count]
    assert sum(read.keys for read in adapter.reads()) == count


async def test_paging_reads_every_page(adapter: Adapter, demo_data: DemoData) -> None:
    applies(adapter, "paging")
    assert adapter.page_size is not None
    sample = adapter.sample
    parents = tuple(record[sample.parent_key] for record in sample.parents(demo_data))
    attributes = (sample.key, sample.child_key)
    source = adapter.source(paged=True)
    await warm_up(adapter, source, demo_data)

    rows = await source.fetch(FetchRequest(sample.child, attributes, match=sample.child_key,
                                           keys=parents))

    expected = {record[sample.key] for record in sample.children(demo_data)
                if record[sample.child_key] in set(parents)}
    assert pages(len(expected), adapter.page_size) >= 3
    assert len(rows) == len(expected)
    assert {row[sample.key] for row in rows} == expected
    assert len(adapter.reads()) == pages(len(expected), adapter.page_size)


async def test_projection_sends_exact_fields(adapter: Adapter, demo_data: DemoData) -> None:
    sample = adapter.sample
    attribute = sample.attributes[1]
    source = adapter.source()
    await warm_up(adapter, source, demo_data)
    keys = sample.keys(demo_data, 3)

    rows = await source.fetch(FetchRequest(sample.entity, (attribute,), match=sample.key,
                                           keys=keys))

    assert [list(row) for row in rows] == [[attribute]] * 3
    expected_values = [row[attribute] for row in sample.expected(demo_data, keys, (sample.key,
                                                                                   attribute))]
    assert sorted(row[attribute] for row in rows) == sorted(expected_values)
    assert [read.fields for read in adapter.reads()] == [
        [adapter.wire_name(sample.entity, attribute)]]


@pytest.mark.parametrize("form", ["false", "null", "missing"])
async def test_empty_value_reads_none(adapter: Adapter, demo_data: DemoData,
                                      form: EmptyForm) -> None:
    applies(adapter, "empty_false" if form == "false" else
            "empty_null" if form == "null" else "empty_missing")
    sample = adapter.sample
    # Records whose value is empty in the demo data, so that a dialect that
    # reads real empty values (SQL NULL) meets them too.
    empty = [r for r in sample.records(demo_data) if r[sample.empty] is None][:3]
    records = empty or sample.records(demo_data)[:3]
    source = adapter.source(empty=form)

    rows = await source.fetch(FetchRequest(sample.entity, (sample.key, sample.empty),
                                           match=sample.key,
                                           keys=tuple(r[sample.key] for r in records)))

    assert len(rows) == 3
    for row in rows:
        assert sample.empty in row, f"{sample.empty} is missing from {row}"
        assert row[sample.empty] is None


# --- errors and throttling ------------------------------------------------------------


async def test_documented_statuses_map(adapter: Adapter, demo_data: DemoData) -> None:
    applies(adapter, "status_error")
    assert adapter.status_errors, f"{adapter.name} documents no error status"

    for status, expected in adapter.status_errors.items():
        source = adapter.source()
        await warm_up(adapter, source, demo_data)
        await adapter.inject(status)

        with pytest.raises(expected.error, match=expected.match) as caught:
            await source.fetch(one_key(adapter, demo_data))

        assert not isinstance(caught.value, UpstreamRateLimited), status
        await adapter.reset_faults()


async def test_throttle_is_rate_limited(adapter: Adapter, demo_data: DemoData) -> None:
    applies(adapter, "throttle")
    assert adapter.throttle is not None
    status, retry_after = adapter.throttle
    source = adapter.source()
    await warm_up(adapter, source, demo_data)
    await adapter.inject(status)

    with pytest.raises(UpstreamRateLimited, match=f"HTTP {status}") as caught:
        await source.fetch(one_key(adapter, demo_data))

    assert caught.value.retry_after == retry_after


async def test_unknown_attribute_rejected(adapter: Adapter, demo_data: DemoData) -> None:
    applies(adapter, "unknown_attribute")
    source = adapter.source()

    with pytest.raises(UpstreamRejected):
        await source.fetch(one_key(adapter, demo_data, (adapter.sample.key, "no_such_field")))


async def test_unknown_entity_rejected(adapter: Adapter, demo_data: DemoData) -> None:
    applies(adapter, "unknown_entity")
    source = adapter.source()
    request = one_key(adapter, demo_data)

    with pytest.raises(UpstreamRejected):
        await source.fetch(FetchRequest("no_such_entity", request.attributes,
                                        match=request.match, keys=request.keys))


async def test_bad_credentials_auth_failed(adapter: Adapter, demo_data: DemoData) -> None:
    applies(adapter, "bad_credentials")
    adapter.secret = "wrong-secret"  # type: ignore[attr-defined]
    source = adapter.source()

    with pytest.raises(UpstreamAuthFailed):
        await source.fetch(one_key(adapter, demo_data))


# --- faults on the wire ---------------------------------------------------------------


@pytest.mark.loopback
@pytest.mark.parametrize("http_client", HTTP_CLIENTS)
async def test_slow_upstream_times_out(adapter: Adapter, demo_data: DemoData,
                                       http_client: HttpClient) -> None:
    applies(adapter, "slow")
    source = adapter.source(timeout=TIMEOUT, http_client=http_client)
    await warm_up(adapter, source, demo_data)
    replaced = await adapter.inject("slow")

    with pytest.raises(UpstreamTimeout):
        await source.fetch(replaced or one_key(adapter, demo_data))


@pytest.mark.loopback
@pytest.mark.parametrize("http_client", HTTP_CLIENTS)
async def test_dropped_connection_unavailable(adapter: Adapter, demo_data: DemoData,
                                              http_client: HttpClient) -> None:
    applies(adapter, "drop")
    source = adapter.source(http_client=http_client)
    await warm_up(adapter, source, demo_data)
    replaced = await adapter.inject("drop")

    with pytest.raises(UpstreamUnavailable) as caught:
        await source.fetch(replaced or one_key(adapter, demo_data))

    assert type(caught.value) is UpstreamUnavailable


@pytest.mark.loopback
@pytest.mark.parametrize("http_client", HTTP_CLIENTS)
async def test_malformed_json_unavailable(adapter: Adapter, demo_data: DemoData,
                                          http_client: HttpClient) -> None:
    applies(adapter, "malformed")
    source = adapter.source(http_client=http_client)
    await warm_up(adapter, source, demo_data)
    await adapter.inject("malformed")

    with pytest.raises(UpstreamUnavailable, match="not JSON"):
        await source.fetch(one_key(adapter, demo_data))

