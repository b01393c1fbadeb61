"""MappedSource: schema names in, system names on the wire, schema names back."""

from __future__ import annotations

import pytest

from gateway.catalog import Condition
from gateway.errors import ConfigError
from gateway.sources import FetchRequest, Row
from gateway.sources.mapping import EntityMap, MappedSource, entities_from_table

PARTNERS = EntityMap("accounts", {"id": "fonte_partnerid", "credit_limit": "creditlimit",
                                  "name": "name"})


class Recorder:
    """A source that records each request and returns fixed rows."""

    name = "erp"

    def __init__(self, rows: list[Row], row_filters: bool = True) -> None:
        self.rows = rows
        self.requests: list[FetchRequest] = []
        self.row_filters = row_filters
        self.closed = False

    @property
    def supports_row_filters(self) -> bool:
        return self.row_filters

    async def fetch(self, request: FetchRequest) -> list[Row]:
        self.requests.append(request)
        return self.rows

    async def aclose(self) -> None:
        self.closed = True


async def test_request_renamed() -> None:
    inner = Recorder([])
    source = MappedSource(inner, {"res.partner": PARTNERS})

    await source.fetch(FetchRequest(
        "res.partner", ("id", "credit_limit", "email"), match="id", keys=(1, 2),
        where=(Condition("credit_limit", "!=", 0),), any_of=(Condition("id", "=", 3),),
        order="credit_limit desc, id", after=("id", "5"), search=("name", "acme")))

    sent = inner.requests[0]
    assert sent.entity == "accounts"
    assert sent.attributes == ("fonte_partnerid", "creditlimit", "email")
    assert sent.match == "fonte_partnerid"
    assert sent.keys == (1, 2)
    assert sent.where == (Condition("creditlimit", "!=", 0),)
    assert sent.any_of == (Condition("fonte_partnerid", "=", 3),)
    assert sent.order == "creditlimit desc, fonte_partnerid"
    assert sent.after == ("fonte_partnerid", "5")
    assert sent.search == ("name", "acme")


async def test_rows_renamed_back() -> None:
    inner = Recorder([{"fonte_partnerid": 1, "creditlimit": 10.0, "email": None}])
    source = MappedSource(inner, {"res.partner": PARTNERS})

    rows = await source.fetch(FetchRequest("res.partner", ("id", "credit_limit", "email")))

    assert rows == [{"id": 1, "credit_limit": 10.0, "email": None}]


async def test_two_names_one_column() -> None:
    mapping = EntityMap("accounts", {"id": "accountnumber", "ref": "accountnumber"})
    source = MappedSource(Recorder([{"accountnumber": "C1"}]), {"res.partner": mapping})

    rows = await source.fetch(FetchRequest("res.partner", ("id", "ref")))

    assert rows == [{"id": "C1", "ref": "C1"}]


async def test_unmapped_entity_passes_through() -> None:
    inner = Recorder([{"id": 7}])
    source = MappedSource(inner, {"res.partner": PARTNERS})
    request = FetchRequest("sale.order", ("id",), match="partner_id", keys=(1,))

    rows = await source.fetch(request)

    assert inner.requests == [request]
    assert rows == [{"id": 7}]


async def test_proxies_flags_and_close() -> None:
    inner = Recorder([], row_filters=False)
    source = MappedSource(inner, {})

    await source.aclose()

    assert source.supports_row_filters is False
    assert source.name == "erp"
    assert inner.closed


def test_table_read() -> None:
    entities = entities_from_table("systems.erp", {
        "res.partner": {"name": "accounts", "attributes": {"credit_limit": "creditlimit"}},
        "sale.order": {"attributes": {"name": "ordernumber"}},
    })

    assert entities["res.partner"] == EntityMap("accounts", {"credit_limit": "creditlimit"})
    assert entities["sale.order"].name == "sale.order"


@pytest.mark.parametrize(("table", "message"), [
    ([], r"\[systems.erp.entities\] must be a table"),
    ({"res.partner": "accounts"}, r'\[systems.erp.entities."res.partner"\] must be a table'),
    ({"res.partner": {"name": ""}}, r"name = '' is invalid"),
    ({"res.partner": {"nme": "accounts"}}, r"nme is not a setting; use one of attributes, name"),
    ({"res.partner": {"attributes": ["x"]}}, r"attributes must be a table"),
    ({"res.partner": {"attributes": {"credit_limit": 5}}}, r"attributes.credit_limit = 5"),
])
def test_table_errors(table: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        entities_from_table("systems.erp", table)
