"""``fonte ropa``: the Art. 30 record built from the shipped schema and policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from gateway.catalog import load_catalog
from gateway.cli import app
from gateway.policy import PolicyEngine
from gateway.ropa import build_ropa, ropa_markdown


@pytest.fixture(scope="module")
def record() -> dict[str, Any]:
    catalog = load_catalog()
    return build_ropa(catalog, PolicyEngine.from_directory(catalog))


def category(record: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in record["categories"] if item["category"] == name)


def recipient(role: str, purpose: str, access: str, fields: int) -> dict[str, Any]:
    return {"role": role, "purpose": purpose, "access": [access], "fields": fields}


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_ropa_lists_purposes(record: dict[str, Any]) -> None:
    assert record["purposes"] == [
        {"purpose": "billing", "roles": ["finance"]},
        {"purpose": "compliance", "roles": ["dpo"]},
        {"purpose": "credit-control", "roles": ["finance"]},
        {"purpose": "it-operations", "roles": ["it"]},
        {"purpose": "sales", "roles": ["sales", "sales-rep"]},
        {"purpose": "support", "roles": ["sales", "sales-rep"]},
    ]


def test_ropa_lists_subjects_and_categories(record: dict[str, Any]) -> None:
    assert record["data_subjects"] == ["contact", "customer"]
    assert [item["category"] for item in record["categories"]] == [
        "commercial.order", "commercial.owner", "commercial.pipeline", "commercial.territory",
        "contact.address", "contact.email", "contact.person", "contact.phone",
        "financial.balance", "financial.bank_account", "financial.credit_limit",
        "financial.invoice", "identity.name", "identity.tax_id", "logistics.carrier",
        "logistics.shipment",
    ]


def test_ropa_bank_account_is_masked_for_sales(record: dict[str, Any]) -> None:
    assert category(record, "financial.bank_account") == {
        "category": "financial.bank_account",
        "description": "Bank account (IBAN)",
        "data_subjects": ["customer"],
        "systems": ["erp"],
        "fields": ["Customer.iban"],
        "recipients": [
            recipient("finance", "billing", "allow", 1),
            recipient("finance", "credit-control", "allow", 1),
            recipient("sales", "sales", "mask:last4", 1),
            recipient("sales", "support", "mask:last4", 1),
            recipient("sales-rep", "sales", "mask:last4", 1),
            recipient("sales-rep", "support", "mask:last4", 1),
        ],
    }


def test_ropa_email_is_pseudonymised_for_it(record: dict[str, Any]) -> None:
    email = category(record, "contact.email")

    assert email["data_subjects"] == ["contact", "customer"]
    assert email["fields"] == ["Contact.email", "Customer.email", "Customer.pec"]
    assert email["recipients"][0] == recipient("it", "it-operations", "mask:pseudonym:it", 3)
    assert [item["role"] for item in email["recipients"]] == [
        "it", "sales", "sales", "sales-rep", "sales-rep"]


def test_ropa_shipments_belong_to_customers(record: dict[str, Any]) -> None:
    shipment = category(record, "logistics.shipment")

    assert shipment["data_subjects"] == ["customer"]
    assert shipment["systems"] == ["erp"]
    assert shipment["fields"] == ["Customer.shipments", "Order.shipments"]
    assert shipment["recipients"][0] == recipient("it", "it-operations", "allow", 2)


def test_ropa_credit_limit_only_for_finance(record: dict[str, Any]) -> None:
    assert category(record, "financial.credit_limit")["recipients"] == [
        recipient("finance", "billing", "allow", 1),
        recipient("finance", "credit-control", "allow", 1),
    ]


def test_ropa_retention_defaults_to_24_months(record: dict[str, Any]) -> None:
    assert record["retention"]["audit_log_months"] == 24


def test_ropa_markdown_section_is_exact(record: dict[str, Any]) -> None:
    text = ropa_markdown(record)

    start = text.index("### financial.bank_account")
    assert text[start:text.index("###", start + 3)] == (
        "### financial.bank_account\n"
        "\n"
        "Bank account (IBAN)\n"
        "\n"
        "- Data subjects: customer\n"
        "- Source systems: erp\n"
        "- Fields: Customer.iban\n"
        "- Recipients:\n"
        "  - finance for billing: allow (1 of 1 fields)\n"
        "  - finance for credit-control: allow (1 of 1 fields)\n"
        "  - sales for sales: mask:last4 (1 of 1 fields)\n"
        "  - sales for support: mask:last4 (1 of 1 fields)\n"
        "  - sales-rep for sales: mask:last4 (1 of 1 fields)\n"
        "  - sales-rep for support: mask:last4 (1 of 1 fields)\n"
        "\n"
    )
    assert text.endswith(
        "## Retention\n\n- Audit log of consultations: 24 months\n"
        "- Personal data: not stored by the gateway; each source system's own retention "
        "applies\n"
    )


def test_ropa_command_reads_retention(tmp_path: Path) -> None:
    settings = tmp_path / "fonte.toml"
    settings.write_text("[audit]\nretention_months = 36\n", encoding="utf-8")

    result = _run("ropa", "--format", "json", "--config", str(settings))

    assert result.exit_code == 0
    assert json.loads(result.stdout)["retention"]["audit_log_months"] == 36


def test_ropa_command_rejects_short_retention(tmp_path: Path) -> None:
    settings = tmp_path / "fonte.toml"
    settings.write_text("[audit]\nretention_months = 3\n", encoding="utf-8")

    result = _run("ropa", "--config", str(settings))

    assert result.exit_code == 2
    assert "[audit] retention_months 3" in " ".join(result.stderr.split())
    assert "at least 6" in " ".join(result.stderr.split())
