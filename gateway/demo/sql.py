"""Load the demo ERP into a SQL database, for the SQL dialect of ``gateway.sources.sql``.

Each Odoo model becomes a table named like Odoo's own PostgreSQL table
(``sale.order`` -> ``sale_order``) with the demo data's fields as columns.
Money is ``numeric(14,2)``, dates are ``date`` and datetimes ``timestamp``.
The schema shows three many2one fields as names (``currency_id``,
``carrier_id``, ``bank_id``), so those columns hold the referenced record's
name, as a view over Odoo would. Join columns (``partner_id``, ``sale_id``)
keep the integer id.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.demo.data import DemoData, Record

INSERT_BATCH_SIZE = 1000

_metadata = MetaData()


def _money(name: str) -> Column[Decimal]:
    return Column(name, Numeric(14, 2), nullable=False)


TABLES: dict[str, Table] = {
    "res.partner": Table(
        "res_partner", _metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("name", String(255), nullable=False),
        Column("vat", String(32)),
        Column("email", String(255)),
        Column("phone", String(64)),
        Column("street", String(255)),
        Column("city", String(128)),
        Column("zip", String(16)),
        Column("ref", String(32)),
        Column("is_company", Boolean, nullable=False),
        Column("customer_rank", Integer, nullable=False),
        _money("credit_limit"),
        _money("credit"),
    ),
    "res.partner.bank": Table(
        "res_partner_bank", _metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("partner_id", Integer, nullable=False, index=True),
        Column("acc_number", String(64), nullable=False),
        Column("bank_id", String(255)),
    ),
    "sale.order": Table(
        "sale_order", _metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("name", String(32), nullable=False),
        Column("partner_id", Integer, nullable=False, index=True),
        Column("date_order", DateTime, nullable=False),
        Column("commitment_date", DateTime),
        Column("state", String(16), nullable=False),
        _money("amount_untaxed"),
        _money("amount_total"),
        Column("currency_id", String(16)),
    ),
    "account.move": Table(
        "account_move", _metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("name", String(32), nullable=False),
        Column("move_type", String(16), nullable=False),
        Column("state", String(16), nullable=False),
        Column("partner_id", Integer, nullable=False, index=True),
        Column("invoice_origin", String(32), index=True),
        Column("invoice_date", Date),
        Column("invoice_date_due", Date),
        _money("amount_total"),
        _money("amount_residual"),
        Column("payment_state", String(16), nullable=False),
        Column("currency_id", String(16)),
    ),
    "stock.picking": Table(
        "stock_picking", _metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("name", String(32), nullable=False),
        Column("partner_id", Integer, nullable=False, index=True),
        Column("origin", String(32)),
        Column("sale_id", Integer, index=True),
        Column("picking_type_code", String(16), nullable=False),
        Column("state", String(16), nullable=False),
        Column("scheduled_date", DateTime, nullable=False),
        Column("date_deadline", DateTime),
        Column("date_done", DateTime),
        Column("carrier_id", String(64)),
        Column("carrier_tracking_ref", String(32)),
    ),
}

# (model, field) -> the model whose record name the column stores in place of its id.
NAME_REFERENCES = {
    ("sale.order", "currency_id"): "res.currency",
    ("account.move", "currency_id"): "res.currency",
    ("stock.picking", "carrier_id"): "delivery.carrier",
    ("res.partner.bank", "bank_id"): "res.bank",
}


async def load_demo_erp(engine: AsyncEngine, data: DemoData) -> None:
    """Create the demo ERP tables in ``engine``'s database and insert ``data.erp``.

    The tables must not exist yet. Rows go in batches of ``INSERT_BATCH_SIZE``
    within one transaction. Raises ``ValueError`` if a record has a field that
    its table lacks, so a new demo field cannot be dropped silently.
    """
    names = {model: {record["id"]: record["name"] for record in data.erp.get(model, [])}
             for model in set(NAME_REFERENCES.values())}
    async with engine.begin() as connection:
        await connection.run_sync(_metadata.create_all)
        for model, target in TABLES.items():
            rows = [_row(model, target, record, names) for record in data.erp.get(model, [])]
            for start in range(0, len(rows), INSERT_BATCH_SIZE):
                await connection.execute(target.insert(), rows[start:start + INSERT_BATCH_SIZE])


def _row(model: str, target: Table, record: Record,
         names: dict[str, dict[int, str]]) -> dict[str, Any]:
    unknown = sorted(set(record) - set(target.columns.keys()))
    if unknown:
        raise ValueError(f"{model} records have fields {unknown} that table {target.name} "
                         "lacks; add the columns to gateway/demo/sql.py")
    row: dict[str, Any] = {}
    for table_column in target.columns:
        value = record.get(table_column.name)
        referenced = NAME_REFERENCES.get((model, table_column.name))
        if referenced is not None and value is not None:
            value = names[referenced][value]
        row[table_column.name] = _database_value(value, table_column)
    return row


def _database_value(value: Any, table_column: Column[Any]) -> Any:
    """Convert a demo value (float money, ISO date and datetime strings) to the column's type."""
    if value is None:
        return None
    column_type = table_column.type
    if isinstance(column_type, Numeric):
        return Decimal(str(value))
    if isinstance(column_type, DateTime):
        return datetime.fromisoformat(value)
    if isinstance(column_type, Date):
        return date.fromisoformat(value)
    return value
