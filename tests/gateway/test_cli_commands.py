"""``fonte token``, the start checks of ``fonte demo`` and ``serve``, and ``fonte policy``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import jwt
import pytest
from conftest import Harness, field_errors
from rich.console import Console
from typer.testing import CliRunner, Result

import gateway.cli
from gateway.catalog import load_catalog
from gateway.cli import app
from gateway.datadir import claim_data_dir

LOOKUP = "query($id: ID!) { customer(id: $id) { name creditLimit } }"


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _cli_token(harness: Harness, *roles: str) -> str:
    role_options = [part for role in roles for part in ("--role", role)]
    result = _run("token", *role_options, "--data-dir", str(harness.data_dir))
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


async def test_token_accepted_by_gateway(harness: Harness) -> None:
    account_id = harness.customer_ids(1)[0]
    token = _cli_token(harness, "sales")
    response = await harness.query(LOOKUP, variables={"id": account_id}, token=token)
    body = response.json()
    name = next(a["Name"] for a in harness.data.crm["Account"] if a["Id"] == account_id)
    assert response.status_code == 200
    assert body["data"] == {"customer": {"name": name, "creditLimit": None}}
    assert field_errors(body) == [(["customer", "creditLimit"], "FORBIDDEN",
                                   "Not authorised to read Customer.creditLimit.")]


async def test_token_default_claims(harness: Harness) -> None:
    claims = jwt.decode(_cli_token(harness, "finance"), options={"verify_signature": False})
    assert claims["sub"] == "demo-finance"
    assert claims["roles"] == ["finance"]
    assert claims["purpose"] == "billing"


async def test_token_role_purpose_applies(harness: Harness) -> None:
    token = _cli_token(harness, "finance")
    response = await harness.query(LOOKUP, variables={"id": harness.customer_ids(1)[0]},
                                   token=token)
    body = response.json()
    assert field_errors(body) == []
    assert body["data"]["customer"]["creditLimit"] is not None


async def test_token_other_data_dir_rejected(harness: Harness, tmp_path_factory:
                                             pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other-data")
    result = _run("token", "--role", "sales", "--data-dir", str(other))
    response = await harness.query(LOOKUP, variables={"id": harness.customer_ids(1)[0]},
                                   token=result.stdout.strip())
    assert response.status_code == 401


def test_matrix_names_every_role(monkeypatch: pytest.MonkeyPatch) -> None:
    # At 80 columns rich folds the role headers ("finan" / "ce"), so the
    # console is wide enough for every column here.
    monkeypatch.setattr(gateway.cli, "console", Console(width=200))
    result = _run("policy", "matrix")
    assert result.exit_code == 0
    for role in ("sales", "sales-rep", "finance", "it", "dpo"):
        # A whole word, so that "it" inside "Credit" or "it-operations" does not count.
        assert re.search(rf"(?<![\w-]){role}(?![\w-])", result.stdout) is not None, role


def test_matrix_piped_keeps_headers_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not a terminal, as with `fonte policy matrix | less`: rich's default of 80
    # columns folded "finance" into "finan" / "ce".
    monkeypatch.setattr(gateway.cli, "console", Console(width=80))
    result = _run("policy", "matrix")

    header = next(line for line in result.stdout.splitlines() if "dpo" in line)
    assert result.exit_code == 0
    assert [cell.strip() for cell in header.split("┃")[3:-1]] == [
        "dpo", "finance", "it", "sales", "sales-rep"]


def test_matrix_names_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    # rich uses 80 columns when stdout is not a terminal and COLUMNS is unset,
    # as with `fonte policy matrix > matrix.txt`. Pinning the width keeps the
    # test independent of the terminal pytest runs in.
    monkeypatch.setattr(gateway.cli, "console", Console(width=80))
    result = _run("policy", "matrix")
    assert result.exit_code == 0
    assert "Customer.iban" in result.stdout
    missing = [decl.qualified_name for decl in load_catalog().all_fields()
               if decl.qualified_name not in result.stdout]
    assert missing == []


def test_matrix_shows_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.cli, "console", Console(width=200))
    result = _run("policy", "matrix")
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[3:-1]]
            for line in result.stdout.splitlines() if line.startswith("│")}
    header = next(line for line in result.stdout.splitlines() if "dpo" in line)
    roles = [cell.strip() for cell in header.split("┃")[3:-1]]
    assert result.exit_code == 0
    assert roles == ["dpo", "finance", "it", "sales", "sales-rep"]
    assert dict(zip(roles, rows["Customer.iban"], strict=True)) == {
        "dpo": "deny", "finance": "allow", "it": "deny", "sales": "mask:last4",
        "sales-rep": "mask:last4"}
    assert dict(zip(roles, rows["Customer.name"], strict=True)) == {
        "dpo": "deny", "finance": "allow", "it": "mask:pseudonym:it", "sales": "allow",
        "sales-rep": "allow"}


def test_token_corrupt_key_named(tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "token-signing.pem"
    key_path.parent.mkdir()
    key_path.write_text("not a key\n", encoding="utf-8")

    result = _run("token", "--role", "sales", "--data-dir", str(tmp_path))

    assert result.exit_code == 2
    assert result.stdout == ""
    assert " ".join(result.stderr.split()) == (
        f"error: {key_path} is not a PEM private key; delete it to create a new "
        "development key")


def test_demo_port_out_of_range() -> None:
    result = _run("demo", "--port", "99999")

    assert result.exit_code == 2
    assert "Invalid value for '--port'" in result.stderr
    assert "Traceback" not in result.stderr


def test_explain_names_missing_purpose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.cli, "console", Console(width=200, markup=False, highlight=False))

    result = _run("policy", "explain", "--role", "sales", "--field", "Customer.name")

    assert result.exit_code == 0
    assert result.stdout.splitlines()[:2] == [
        "Customer.name: deny",
        "  no purpose given, so only rules for any purpose (*) apply; pass --purpose, one "
        "of: sales, support",
    ]


def test_explain_unknown_role_rejected() -> None:
    result = _run("policy", "explain", "--role", "nobody", "--field", "Customer.name")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert " ".join(result.stderr.split()) == (
        "role 'nobody' has no rules in the policy; use one of dpo, finance, it, sales, "
        "sales-rep")


def test_policy_test_reads_byte_order_mark(tmp_path: Path) -> None:
    table = tmp_path / "table.csv"
    table.write_bytes("\ufeffrole,purpose,field,expected\n"
                      "sales,sales,Customer.iban,mask:last4\n".encode())

    result = _run("policy", "test", str(table))

    assert result.exit_code == 0
    assert result.stdout.startswith("1 rows checked, 0 mismatches")


def test_policy_test_not_utf8_named(tmp_path: Path) -> None:
    table = tmp_path / "table.csv"
    table.write_bytes("role,purpose,field,expected\nsales,sales,Città,deny\n".encode("latin-1"))

    result = _run("policy", "test", str(table))

    assert result.exit_code == 2
    assert " ".join(result.stderr.split()) == (
        f"{table} is not UTF-8 text; save it as CSV in UTF-8")


def test_demo_data_dir_in_use(tmp_path: Path) -> None:
    lock = claim_data_dir(tmp_path)
    try:
        result = _run("demo", "--port", "0", "--customers", "5", "--data-dir", str(tmp_path))
    finally:
        lock.close()

    assert result.exit_code == 2
    assert " ".join(result.stderr.split()) == (
        f"error: data dir '{tmp_path}' is in use by another gateway process (pid "
        f"{os.getpid()}); give each gateway its own data dir (--data-dir, or [gateway] "
        "data_dir in the settings file of fonte serve)")


CRM_SECTION = """
[systems.crm]
dialect = "salesforce"
login_url = "http://127.0.0.1:9"
client_id_env = "PATH"
client_secret_env = "PATH"
"""

ERP_SECTION = """
[systems.erp]
dialect = "odoo-jsonrpc"
base_url = "http://127.0.0.1:9"
database = "demo"
login = "gateway"
api_key_env = "PATH"
"""


def _serve_settings(tmp_path: Path, systems: str) -> Path:
    # Port 9 is never opened: serve stops before it connects to any system.
    settings = tmp_path / "fonte.toml"
    settings.write_text(f"""
[gateway]
data_dir = "{tmp_path / 'data'}"

[auth]
development_tokens = true
{systems}""", encoding="utf-8")
    return settings


def test_serve_data_dir_in_use(tmp_path: Path) -> None:
    settings = _serve_settings(tmp_path, CRM_SECTION + ERP_SECTION)
    lock = claim_data_dir(tmp_path / "data")
    try:
        result = _run("serve", "--config", str(settings))
    finally:
        lock.close()

    assert result.exit_code == 2
    assert "Traceback" not in result.stderr
    assert " ".join(result.stderr.split()) == (
        f"error: data dir '{tmp_path / 'data'}' is in use by another gateway process (pid "
        f"{os.getpid()}); give each gateway its own data dir (--data-dir, or [gateway] "
        "data_dir in the settings file of fonte serve)")


def test_serve_missing_system_named(tmp_path: Path) -> None:
    result = _run("serve", "--config", str(_serve_settings(tmp_path, CRM_SECTION)))

    assert result.exit_code == 2
    assert "Traceback" not in result.stderr
    assert " ".join(result.stderr.split()) == (
        "error: the schema reads from system(s) erp but the settings declare no "
        "[systems.<name>] section for them")


@pytest.mark.parametrize(("erp", "message"), [
    ('[systems.erp]\ndialect = "sql"\nurl = "sqlite+aiosqlite:///erp.db"\n'
     '[systems.erp.tables]\n"res.partnr" = "v_customer"\n',
     "error: [systems.erp.tables] names entity 'res.partnr', which the schema does not read "
     "from system erp; use one of "),
    ('[systems.erp]\ndialect = "dataverse"\nbase_url = "http://127.0.0.1:9/api/data/v9.2"\n'
     'token_url = "http://127.0.0.1:9/token"\nscope = "s"\nclient_id_env = "PATH"\n'
     'client_secret_env = "PATH"\n[systems.erp.entities."res.partnr"]\nname = "accounts"\n',
     "error: [systems.erp.entities] names entity 'res.partnr', which the schema does not "
     "read from system erp; use one of "),
])
def test_serve_misspelt_entity_named(tmp_path: Path, erp: str, message: str) -> None:
    result = _run("serve", "--config", str(_serve_settings(tmp_path, CRM_SECTION + erp)))

    assert result.exit_code == 2
    assert "Traceback" not in result.stderr
    error = " ".join(result.stderr.split())
    assert error.startswith(message)
    assert error.split("use one of ")[1].split(", ")[:2] == ["account.move", "res.partner"]
