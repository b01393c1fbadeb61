"""Schema declarations: loading, and errors that name the file and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.catalog import default_schema_dir, load_catalog
from gateway.errors import SchemaError


def copy_schema(tmp_path: Path) -> Path:
    target = tmp_path / "schema"
    shutil.copytree(default_schema_dir(), target)
    return target


def test_shipped_schema_loads() -> None:
    catalog = load_catalog()

    assert sorted(catalog.types) == ["Contact", "Customer", "Invoice", "Opportunity", "Order",
                                     "Shipment"]
    assert catalog.systems == frozenset({"crm", "erp"})
    assert catalog.field("Customer.creditLimit").category == "financial.credit_limit"
    assert catalog.field("Customer.creditLimit").link == "partner"


def test_every_field_has_known_category() -> None:
    catalog = load_catalog()
    for decl in catalog.all_fields():
        assert decl.category in catalog.categories, decl.qualified_name


def test_new_field_needs_no_code(tmp_path: Path) -> None:
    directory = copy_schema(tmp_path)
    with (directory / "customer.toml").open("a", encoding="utf-8") as handle:
        handle.write('\n[Customer.fields.ref]\ntype = "String"\nlink = "partner"\n'
                     'attribute = "ref"\ncategory = "non_personal.identifier"\n')

    catalog = load_catalog(directory)

    assert catalog.field("Customer.ref").attribute == "ref"


def test_unknown_category_rejected(tmp_path: Path) -> None:
    directory = copy_schema(tmp_path)
    text = (directory / "contact.toml").read_text(encoding="utf-8")
    (directory / "contact.toml").write_text(
        text.replace('category = "contact.phone"', 'category = "contact.fax"'), encoding="utf-8")

    with pytest.raises(SchemaError, match=r"Contact.phone: category 'contact.fax' is not in"):
        load_catalog(directory)


def test_unknown_link_rejected(tmp_path: Path) -> None:
    directory = copy_schema(tmp_path)
    text = (directory / "customer.toml").read_text(encoding="utf-8")
    (directory / "customer.toml").write_text(
        text.replace('link = "bank"', 'link = "banca"'), encoding="utf-8")

    with pytest.raises(SchemaError, match=r"Customer.iban: link 'banca' is not declared"):
        load_catalog(directory)


def test_unknown_target_rejected(tmp_path: Path) -> None:
    directory = copy_schema(tmp_path)
    text = (directory / "order.toml").read_text(encoding="utf-8")
    (directory / "order.toml").write_text(
        text.replace('target = "Shipment"', 'target = "Parcel"'), encoding="utf-8")

    with pytest.raises(SchemaError, match=r"Order.shipments: target type 'Parcel'"):
        load_catalog(directory)


def test_missing_folder_named(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"schema folder .* not found"):
        load_catalog(tmp_path / "nowhere")
