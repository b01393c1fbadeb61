"""Settings file loading: every wrong setting fails with the fix named."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.persisted import PersistedQuerySettings
from gateway.sources.odoo import OdooSettings
from gateway.sources.salesforce import SalesforceSettings

VALID = """
[gateway]
port = 8100
data_dir = "state"

[auth]
development_tokens = true

[systems.crm]
dialect = "salesforce"
login_url = "https://crm.example"
client_id_env = "TEST_CRM_ID"
client_secret_file = "crm-secret.txt"

[systems.erp]
dialect = "odoo-jsonrpc"
base_url = "https://erp.example"
database = "prod"
login = "gateway"
api_key_env = "TEST_ERP_KEY"
timeout = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fonte.toml"
    path.write_text(text, encoding="utf-8")
    (tmp_path / "crm-secret.txt").write_text("file-secret\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def secrets_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CRM_ID", "crm-client")
    monkeypatch.setenv("TEST_ERP_KEY", "erp-key")


def test_valid_file_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, VALID))

    assert settings.port == 8100
    assert settings.data_dir == tmp_path / "state"
    assert settings.development_tokens is True
    assert settings.systems["crm"] == SalesforceSettings(
        login_url="https://crm.example", client_id="crm-client", client_secret="file-secret")
    assert settings.systems["erp"] == OdooSettings(
        base_url="https://erp.example", database="prod", login="gateway", api_key="erp-key",
        timeout=3.0)


def test_secret_in_file_rejected(tmp_path: Path) -> None:
    text = VALID.replace('api_key_env = "TEST_ERP_KEY"', 'api_key = "plain"')
    with pytest.raises(ConfigError, match=r"\[systems.erp\] api_key must not be written"):
        load_settings(write(tmp_path, text))


def test_unset_variable_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_ERP_KEY")
    with pytest.raises(ConfigError, match="api_key_env names 'TEST_ERP_KEY', which is not set"):
        load_settings(write(tmp_path, VALID))


def test_unknown_dialect_named(tmp_path: Path) -> None:
    text = VALID.replace('dialect = "odoo-jsonrpc"', 'dialect = "sap"')
    with pytest.raises(ConfigError, match=r"\[systems.erp\] dialect = 'sap' is not supported"):
        load_settings(write(tmp_path, text))


def test_missing_url_named(tmp_path: Path) -> None:
    text = VALID.replace('login_url = "https://crm.example"\n', "")
    with pytest.raises(ConfigError, match=r"\[systems.crm\] login_url is missing"):
        load_settings(write(tmp_path, text))


def test_bad_port_named(tmp_path: Path) -> None:
    text = VALID.replace("port = 8100", "port = 70000")
    with pytest.raises(ConfigError, match=r"\[gateway\] port = 70000 must be a whole number"):
        load_settings(write(tmp_path, text))


def test_executor_defaults_to_compiled(tmp_path: Path) -> None:
    default = load_settings(write(tmp_path, VALID))
    chosen = load_settings(write(tmp_path, VALID.replace(
        "port = 8100", 'port = 8100\nexecutor = "graphql-core"')))

    assert default.executor == "compiled"
    assert chosen.executor == "graphql-core"


def test_unknown_executor_named(tmp_path: Path) -> None:
    text = VALID.replace("port = 8100", 'port = 8100\nexecutor = "fast"')
    with pytest.raises(ConfigError, match=r"\[gateway\] executor is 'fast'; set it to "
                                          r"\"compiled\" \(the default\) or \"graphql-core\""):
        load_settings(write(tmp_path, text))


def test_bad_timeout_named(tmp_path: Path) -> None:
    text = VALID.replace("timeout = 3", "timeout = -1")
    with pytest.raises(ConfigError, match=r"\[systems.erp\] timeout = -1 must be a positive"):
        load_settings(write(tmp_path, text))


def test_token_key_required(tmp_path: Path) -> None:
    text = VALID.replace("development_tokens = true", "")
    with pytest.raises(ConfigError, match=r"\[auth\] needs exactly one token key source"):
        load_settings(write(tmp_path, text))


def test_invalid_toml_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(write(tmp_path, "[gateway\nport = 1"))


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read settings file"):
        load_settings(tmp_path / "absent.toml")


def test_audit_defaults_to_sqlite_and_24_months(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, VALID))

    assert settings.audit_store_url is None
    assert settings.audit_retention_months == 24


def test_audit_commit_delay_defaults_and_settings(tmp_path: Path) -> None:
    defaults = load_settings(write(tmp_path, VALID))
    text = VALID + "\n[audit]\ncommit_delay_ms = 0\ncommit_siblings = 9\n"

    settings = load_settings(write(tmp_path, text))

    assert (defaults.audit_commit_delay_ms, defaults.audit_commit_siblings) == (2, 4)
    assert (settings.audit_commit_delay_ms, settings.audit_commit_siblings) == (0, 9)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("commit_delay_ms = 101",
         "[audit] commit_delay_ms = 101 must be a whole number from 0 to 100"),
        ("commit_delay_ms = 1.5",
         "[audit] commit_delay_ms = 1.5 must be a whole number from 0 to 100"),
        ("commit_siblings = 0",
         "[audit] commit_siblings = 0 must be a whole number from 1 to 10000"),
        ("commit_siblings = true",
         "[audit] commit_siblings = True must be a whole number from 1 to 10000"),
        ("commit_dealy_ms = 5",
         "[audit] commit_dealy_ms is not a setting; use one of anchors, auto_purge, "
         "checkpoint_interval, checkpoint_key_file, checkpoint_key_name, commit_delay_ms, "
         "commit_siblings, fail_open, retention_months, store, store_password, "
         "store_password_env, store_password_file"),
    ],
)
def test_audit_commit_delay_out_of_range_rejected(tmp_path: Path, line: str,
                                                  message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, VALID + f"\n[audit]\n{line}\n"))

    assert str(caught.value) == message


def test_audit_retention_below_minimum_rejected(tmp_path: Path) -> None:
    text = VALID + "\n[audit]\nretention_months = 5\n"

    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))

    assert str(caught.value) == (
        "[audit] retention_months = 5 is below the minimum of 6 months that access logs "
        "must be kept; set it to 6 or more"
    )


def test_audit_store_takes_password_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_AUDIT_PASSWORD", "s3cret")
    text = VALID + (
        '\n[audit]\nstore = "postgresql+asyncpg://fonte@127.0.0.1:5432/audit"\n'
        'store_password_env = "TEST_AUDIT_PASSWORD"\nretention_months = 6\n'
    )

    settings = load_settings(write(tmp_path, text))

    assert settings.audit_store_url == "postgresql+asyncpg://fonte:s3cret@127.0.0.1:5432/audit"
    assert settings.audit_retention_months == 6


@pytest.mark.parametrize(
    ("store", "message"),
    [
        (
            "postgresql://fonte:pw@127.0.0.1/audit",
            "[audit] store must not contain a password; set store_password_env or "
            "store_password_file",
        ),
        (
            "mysql+asyncmy://root@127.0.0.1/audit",
            "[audit] store = 'mysql+asyncmy://root@127.0.0.1/audit' is not a PostgreSQL URL; "
            "use postgresql+asyncpg://user@host:port/database, or remove it to keep the "
            "SQLite file in data_dir",
        ),
    ],
)
def test_audit_store_rejects_bad_url(tmp_path: Path, store: str, message: str) -> None:
    text = VALID + f'\n[audit]\nstore = "{store}"\n'

    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))

    assert str(caught.value) == message


def test_cost_and_time_limits(tmp_path: Path) -> None:
    text = VALID + "\n[limits]\nmax_cost = 800\nrequest_timeout = 2.5\n"
    settings = load_settings(write(tmp_path, text))

    assert settings.operation_limits.max_cost == 800
    assert settings.operation_limits.request_timeout == 2.5


def test_cost_and_time_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, VALID))

    assert settings.operation_limits.max_cost == 50_000
    assert settings.operation_limits.request_timeout == 30.0
    assert settings.persisted_queries == PersistedQuerySettings(mode="off", manifest=None)


@pytest.mark.parametrize(("line", "message"), [
    ("max_cost = 0", r"\[limits\] max_cost = 0 must be a whole number from 1"),
    ("max_cost = 1.5", r"\[limits\] max_cost = 1.5 must be a whole number"),
    ("request_timeout = 0", r"\[limits\] request_timeout = 0 must be a positive number"),
])
def test_bad_cost_or_time_named(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, VALID + f"\n[limits]\n{line}\n"))


def test_persisted_queries_section(tmp_path: Path) -> None:
    text = VALID + '\n[persisted_queries]\nmode = "only"\nmanifest = "ops.json"\n'
    settings = load_settings(write(tmp_path, text))

    assert settings.persisted_queries == PersistedQuerySettings(
        mode="only", manifest=tmp_path / "ops.json")


@pytest.mark.parametrize(("lines", "message"), [
    ('mode = "strict"', r"\[persisted_queries\] mode = 'strict' is not a mode; use one of "
                        "off, allow, only"),
    ("manifest = 3", r"\[persisted_queries\] manifest = 3 must be the path of a JSON file"),
    ('mode = "only"\nfile = "x"', r"\[persisted_queries\] file is not a setting"),
])
def test_bad_persisted_queries_named(tmp_path: Path, lines: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, VALID + f"\n[persisted_queries]\n{lines}\n"))


@pytest.mark.parametrize(("section", "name", "text"), [
    ("auth", "development_tokens",
     VALID.replace("development_tokens = true", 'development_tokens = "false"')),
    ("gateway", "graphiql", VALID.replace("port = 8100", 'port = 8100\ngraphiql = "false"')),
    ("audit", "fail_open", VALID + '\n[audit]\nfail_open = "false"\n'),
])
def test_quoted_boolean_rejected(tmp_path: Path, section: str, name: str, text: str) -> None:
    # The string "false" is truthy, so reading it as a flag would turn the setting on.
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))

    assert str(caught.value) == (
        f"[{section}] {name} = 'false' must be true or false, written without quotes")


def test_boolean_flags_read(tmp_path: Path) -> None:
    text = VALID.replace("port = 8100", "port = 8100\ngraphiql = true")
    settings = load_settings(write(tmp_path, text + "\n[audit]\nfail_open = false\n"))

    assert settings.graphiql is True
    assert settings.audit_fail_open is False
    assert settings.development_tokens is True


@pytest.mark.parametrize(("old", "new", "message"), [
    ('base_url = "https://erp.example"', 'base_url = "not a url"',
     "[systems.erp] base_url = 'not a url' is invalid; set it to an http or https URL such "
     'as "https://erp.example.com"'),
    ('login_url = "https://crm.example"', 'login_url = "ftp://crm.example"',
     "[systems.crm] login_url = 'ftp://crm.example' is invalid; set it to an http or https "
     'URL such as "https://erp.example.com"'),
])
def test_system_url_checked(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, VALID.replace(old, new)))

    assert str(caught.value) == message


def test_salesforce_error_names_section_once(tmp_path: Path) -> None:
    text = VALID.replace('client_id_env = "TEST_CRM_ID"', 'client_id_env = "FONTE_TEST_UNSET"')

    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))

    assert str(caught.value) == (
        "[systems.crm] client_id_env names 'FONTE_TEST_UNSET', which is not set in the "
        "environment")


def test_http_client_per_system(tmp_path: Path) -> None:
    text = VALID.replace("timeout = 3", 'timeout = 3\nhttp_client = "httpx"')
    settings = load_settings(write(tmp_path, text))

    assert settings.http_clients == {"erp": "httpx"}
    assert load_settings(write(tmp_path, VALID)).http_clients == {}


def test_bad_http_client_named(tmp_path: Path) -> None:
    text = VALID.replace("timeout = 3", 'timeout = 3\nhttp_client = "urllib3"')
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))

    assert str(caught.value) == ("[systems.erp] http_client = 'urllib3' is not supported; use "
                                 "'httptools', 'aiohttp' or 'httpx'")


def test_http_client_rejected_for_sql(tmp_path: Path) -> None:
    erp = VALID[VALID.index("[systems.erp]"):]
    text = VALID.replace(erp, '[systems.erp]\ndialect = "sql"\nurl = "sqlite+aiosqlite:///erp.db"\n'
                         'http_client = "httpx"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))

    assert str(caught.value) == ("[systems.erp] http_client is not a setting of dialect sql, "
                                 "which sends no HTTP requests; remove it")


def erp_table(text: str) -> str:
    """Return VALID with its [systems.erp] table replaced by ``text``."""
    return VALID[:VALID.index("[systems.erp]")] + "[systems.erp]\n" + text


# One table per dialect with every setting it accepts, so that the check of
# unknown keys is seen to accept each of them. Salesforce's client_secret, which
# the JWT-bearer flow refuses, is in VALID's [systems.crm].
EVERY_SETTING = {
    "salesforce": 'dialect = "salesforce"\nlogin_url = "https://crm.example"\n'
                  'api_version = "61.0"\nclient_id_env = "TEST_CRM_ID"\n'
                  'auth = "jwt_bearer"\n'
                  'username = "gw@example.com"\nprivate_key_file = "jwt-key.pem"\n'
                  'audience = "https://login.example"\n',
    "odoo-jsonrpc": 'dialect = "odoo-jsonrpc"\nbase_url = "https://erp.example"\n'
                    'database = "prod"\nlogin = "gateway"\napi_key_env = "TEST_ERP_KEY"\n',
    "odoo-json2": 'dialect = "odoo-json2"\nbase_url = "https://erp.example"\n'
                  'database = "prod"\napi_key_file = "crm-secret.txt"\n',
    "sql": 'dialect = "sql"\nurl = "postgresql+asyncpg://reader@db.example/erp"\n'
           'password_env = "TEST_ERP_KEY"\nschema = "views"\npool_size = 3\n'
           '[systems.erp.tables]\n"res.partner" = "v_customer"\n',
    "sap-odata-v2": 'dialect = "sap-odata-v2"\nbase_url = "https://s4.example"\n'
                    'service = "API_BUSINESS_PARTNER"\nclient = "100"\n'
                    'user_env = "TEST_ERP_KEY"\npassword_file = "crm-secret.txt"\n'
                    '[systems.erp.entities."res.partner"]\nname = "A_Customer"\n',
    "dataverse": 'dialect = "dataverse"\nbase_url = "https://d.example/api/data/v9.2"\n'
                 'token_url = "https://login.example/token"\nscope = "https://d.example/.default"\n'
                 'client_id_env = "TEST_ERP_KEY"\nclient_secret_file = "crm-secret.txt"\n'
                 'page_size = 500\n'
                 '[systems.erp.entities."res.partner"]\nname = "accounts"\n',
}
COMMON = 'timeout = 4\nhttp_client = "httpx"\n[systems.erp.resilience]\nretries = 1\n'


@pytest.mark.parametrize("dialect", sorted(EVERY_SETTING))
def test_dialect_accepts_every_setting(tmp_path: Path, dialect: str) -> None:
    table = EVERY_SETTING[dialect]
    head, sep, tail = table.partition("[systems.erp.")
    common = COMMON if dialect != "sql" else COMMON.replace('http_client = "httpx"\n', "")
    path = write(tmp_path, erp_table(head + common + sep + tail))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "jwt-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    settings = load_settings(path)

    assert settings.systems["erp"].timeout == 4
    assert settings.resilience["erp"].retries == 1


@pytest.mark.parametrize(("dialect", "key"), [
    ("salesforce", "client_secret_envv"), ("odoo-jsonrpc", "http_clinet"),
    ("odoo-json2", "api_version"), ("sql", "tables_schema"), ("sap-odata-v2", "sap_client"),
    ("dataverse", "pagesize"),
])
def test_unknown_system_setting_named(tmp_path: Path, dialect: str, key: str) -> None:
    text = erp_table(EVERY_SETTING[dialect].replace("\n", f'\n{key} = "x"\n', 1))
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))

    message = str(caught.value)
    assert message.startswith(f"[systems.erp] {key} is not a setting of dialect {dialect}; "
                              "use one of ")
    known = message.split("use one of ")[1].split(", ")
    assert known == sorted(known)
    assert "dialect" in known
    assert "timeout" in known
    assert key not in known


@pytest.mark.parametrize(("dialect", "line", "message"), [
    ("odoo-json2", 'login = "gateway"',
     "[systems.erp] login is not used by dialect odoo-json2; remove it, because the API key "
     "alone identifies the user"),
    ("salesforce", 'client_secret = "s3cr3t"',
     "[systems.erp] client_secret must not be written in the settings file; set "
     "client_secret_env to an environment variable or client_secret_file to a file"),
    ("sql", 'http_client = "httpx"',
     "[systems.erp] http_client is not a setting of dialect sql, which sends no HTTP "
     "requests; remove it"),
])
def test_specific_message_wins(tmp_path: Path, dialect: str, line: str,
                               message: str) -> None:
    text = erp_table(EVERY_SETTING[dialect].replace("\n", f"\n{line}\n", 1))
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))

    assert str(caught.value) == message


@pytest.mark.parametrize(("old", "new", "message"), [
    ("timeout = 3", "timeout = 3\nmax_ids = 50",
     "[systems.erp] max_ids is not a setting of dialect odoo-jsonrpc; use one of api_key, "
     "api_key_env, api_key_file, base_url, database, dialect, http_client, login, "
     "resilience, timeout"),
    ("port = 8100", 'port = 8100\nhttp_client = "httpx"',
     "[gateway] http_client is not a setting; use one of data_dir, executor, graphiql, host, "
     "policy_dir, port, schema_dir"),
])
def test_unknown_setting_lists_the_valid_ones(tmp_path: Path, old: str, new: str,
                                               message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, VALID.replace(old, new)))

    assert str(caught.value) == message


@pytest.mark.parametrize("text", ['[gatway]\nport = 8000\n', 'port = 8000\n'])
def test_unknown_section_named(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text + VALID)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    name = "gatway" if text.startswith("[") else "port"
    assert str(caught.value) == (
        f"{path}: {name} is not a section of the settings file; put each setting under one "
        "of [audit], [auth], [gateway], [http], [limits], [persisted_queries], [policy], "
        "[systems]")


def test_missing_dialect_named(tmp_path: Path) -> None:
    text = VALID.replace('dialect = "odoo-jsonrpc"', 'dialet = "odoo-jsonrpc"')
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))

    assert str(caught.value) == ("[systems.erp] dialect is missing; set it to one of "
                                 "salesforce, odoo-jsonrpc, odoo-json2, sql, dataverse, "
                                 "sap-odata-v2, rest")
