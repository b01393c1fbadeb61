"""Gateway settings, read from a TOML file for ``fonte serve``.

Secrets never sit in the file: each one is named by an environment
variable (``<name>_env``) or a file (``<name>_file``). A wrong setting
fails at start with a message naming the section, the setting and the fix.
Example::

    [gateway]
    host = "127.0.0.1"
    port = 8000
    data_dir = "/var/lib/fonte"

    [auth]
    # or public_key_file = "/etc/fonte/token-public.pem" (RSA, EC or Ed25519 PEM),
    # or development_tokens = true, to accept `fonte token` tokens
    jwks_url = "https://login.example.com/realms/acme/protocol/openid-connect/certs"
    issuer = "https://login.example.com/realms/acme"
    audience = "fonte"
    role_claims = ["realm_access.roles"]

    [auth.role_map]            # optional; without it claim values are Fonte roles
    "fonte-sales" = "sales"

    [http]                     # optional; these are the defaults
    cors_origins = []          # e.g. ["https://crm.example.com"]
    trusted_proxies = []       # e.g. ["10.0.0.0/8"]; X-Forwarded-For is read only from these

    [systems.crm]
    dialect = "salesforce"
    login_url = "https://example.my.salesforce.com"
    client_id_env = "FONTE_CRM_CLIENT_ID"
    client_secret_env = "FONTE_CRM_CLIENT_SECRET"

    # http_client = "httpx"    # optional; "httptools" (the default), "aiohttp" or "httpx"

    [systems.crm.resilience]   # optional; these are the defaults
    timeout = 30               # seconds for a whole read, retries included
    max_concurrency = 10
    retries = 2

    [systems.erp]
    dialect = "odoo-jsonrpc"   # Odoo 8-18; "odoo-json2" for Odoo 19+ (no login);
                               # "sql" with url and password_env for database views
    base_url = "https://erp.example.com"
    database = "production"
    login = "fonte-gateway"
    api_key_file = "/run/secrets/odoo-api-key"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy.engine import make_url

from gateway.audit.store import MAX_COMMIT_DELAY
from gateway.catalog import default_schema_dir
from gateway.compiled import EXECUTORS
from gateway.errors import ConfigError
from gateway.identity import (
    DEFAULT_LEEWAY_SECONDS,
    DEFAULT_TOKEN_CACHE_SIZE,
    DEV_AUDIENCE,
    DEV_ISSUER,
)
from gateway.limits import OperationLimits
from gateway.persisted import MODES, PersistedQuerySettings
from gateway.policy import default_policy_dir
from gateway.policy_reload import PolicySettings, policy_settings_from_table
from gateway.ratelimit import RateLimit
from gateway.role_claims import RoleMapping, role_mapping_from_table
from gateway.secrets import read_secret
from gateway.sources.client import HttpClient, check_http_client
from gateway.sources.dataverse import DataverseSettings
from gateway.sources.mapping import entities_from_table
from gateway.sources.odoo import OdooJson2Settings, OdooSettings
from gateway.sources.resilience import ResiliencePolicy, policy_from_table
from gateway.sources.rest import RestSettings
from gateway.sources.rest_config import rest_settings
from gateway.sources.salesforce import SalesforceSettings
from gateway.sources.sap import SapSettings
from gateway.sources.sql import SqlSettings
from gateway.token_keys import JwksSettings
from gateway.transport import HttpSettings, http_settings_from_table

# The Italian Garante's provision of 27 November 2008 on system administrators
# requires access logs to be kept at least 6 months, so a shorter retention is
# rejected. The default follows its provision 192 of 12 May 2011 for bank access
# logs: at least 24 months.
MIN_RETENTION_MONTHS = 6
DEFAULT_RETENTION_MONTHS = 24
# A commit waits up to 2 ms for the records of other running requests, if at least 4
# have announced one. bench/README.md ("Commit delay, and sealing per record") has the
# measurements.
DEFAULT_COMMIT_DELAY_MS = 2
DEFAULT_COMMIT_SIBLINGS = 4

SystemSettings = (SalesforceSettings | OdooSettings | OdooJson2Settings | SqlSettings
                  | DataverseSettings | SapSettings | RestSettings)
DIALECTS = ("salesforce", "odoo-jsonrpc", "odoo-json2", "sql", "dataverse", "sap-odata-v2",
            "rest")


@dataclass(frozen=True)
class Settings:
    """Everything one gateway process needs to start."""

    systems: dict[str, SystemSettings]
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    graphiql: bool = True
    schema_dir: Path = field(default_factory=default_schema_dir)
    policy_dir: Path = field(default_factory=default_policy_dir)
    token_public_key_file: Path | None = None
    development_tokens: bool = False
    token_issuer: str = DEV_ISSUER
    # A token must name at least one of these in its aud claim.
    token_audiences: tuple[str, ...] = (DEV_AUDIENCE,)
    token_leeway_seconds: int = DEFAULT_LEEWAY_SECONDS
    token_cache_size: int = DEFAULT_TOKEN_CACHE_SIZE
    # None: keys come from token_public_key_file or the development key.
    jwks: JwksSettings | None = None
    role_mapping: RoleMapping = field(default_factory=RoleMapping)
    http: HttpSettings = field(default_factory=HttpSettings)
    audit_fail_open: bool = False
    audit_checkpoint_interval: float = 60.0
    # Group commit: how long a commit may wait for announced records, and how many
    # running requests must have announced one (GroupCommitStore.set_commit_delay).
    audit_commit_delay_ms: int = DEFAULT_COMMIT_DELAY_MS
    audit_commit_siblings: int = DEFAULT_COMMIT_SIBLINGS
    audit_checkpoint_key_name: str = "fonte-audit-1"
    audit_checkpoint_key_file: Path | None = None
    audit_anchors: tuple[str, ...] = ()
    # PostgreSQL URL of the audit store, password included, or None for the SQLite
    # file in data_dir.
    audit_store_url: str | None = None
    audit_retention_months: int = DEFAULT_RETENTION_MONTHS
    # The gateway purges records older than audit_retention_months once a day.
    audit_auto_purge: bool = True
    max_body_bytes: int = 1_000_000
    max_search_length: int = 100
    operation_limits: OperationLimits = field(default_factory=OperationLimits)
    # Off unless a settings file sets it (fonte serve defaults to 20/s), because
    # the demo, the tests and the benchmarks send bursts from one user.
    rate_limit: RateLimit = field(default_factory=lambda: RateLimit(rate=0))
    resilience: dict[str, ResiliencePolicy] = field(default_factory=dict)
    # The HTTP client of each system that sets one; other HTTP systems use httptools.
    http_clients: dict[str, HttpClient] = field(default_factory=dict)
    # None: the policy is read once from policy_dir, with no reload watchers.
    policy: PolicySettings | None = None
    persisted_queries: PersistedQuerySettings = field(default_factory=PersistedQuerySettings)
    # How responses are assembled from the fetched values: "compiled" or "graphql-core".
    executor: str = "compiled"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.sqlite3"

    @property
    def pseudonym_key_path(self) -> Path:
        return self.data_dir / "keys" / "audit-pseudonym.key"

    @property
    def checkpoint_key_path(self) -> Path:
        """Ed25519 key that signs audit checkpoints."""
        return self.audit_checkpoint_key_file or self.data_dir / "keys" / "audit-checkpoint.pem"

    @property
    def checkpoint_public_key_dir(self) -> Path:
        """Public keys of every checkpoint key used, for ``fonte audit verify``."""
        return self.data_dir / "keys" / "audit-checkpoint-public"

    @property
    def mask_key_path(self) -> Path:
        """Master key of the pseudonym masks; one key per mask domain is derived from it."""
        return self.data_dir / "keys" / "mask-pseudonym.key"

    @property
    def signing_key_path(self) -> Path:
        return self.data_dir / "keys" / "token-signing.pem"


def load_settings(path: Path) -> Settings:
    """Read and check the settings file at ``path``."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {str(path)!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file {str(path)!r} is not valid TOML: {exc}") from exc

    base = path.parent
    unknown = sorted(set(document) - _SECTIONS)
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]} is not a section of the settings file; put "
                          "each setting under one of "
                          f"{', '.join(f'[{name}]' for name in sorted(_SECTIONS))}")
    gateway = _table(document, "gateway")
    _check_known("gateway", gateway, _GATEWAY_SETTINGS)
    auth = _table(document, "auth")
    audit = _table(document, "audit")
    systems = {name: _system(name, spec, base)
               for name, spec in _table(document, "systems").items()}
    if not systems:
        raise ConfigError(f"{path}: no [systems.<name>] section; declare the CRM and ERP the "
                          "schema reads from")
    resilience = _resilience(document, systems)
    limits = _table(document, "limits")
    _check_known("limits", limits, {"max_depth", "max_fields", "max_root_fields",
                                    "max_body_bytes", "max_search_length",
                                    "requests_per_second", "burst", "max_cost",
                                    "request_timeout"})
    policy = _table(document, "policy")
    if "policy_dir" in gateway and "directory" not in policy:
        policy = {**policy, "directory": str(_path(base, gateway["policy_dir"]))}
    _check_known("auth", auth, _AUTH_SETTINGS)
    _check_known("audit", audit, _AUDIT_SETTINGS)
    key_file = auth.get("public_key_file")
    development_tokens = _flag("auth", auth, "development_tokens")
    jwks = _jwks(auth)
    if sum(1 for source in (key_file, development_tokens, jwks) if source) != 1:
        raise ConfigError(f"{path}: [auth] needs exactly one token key source: jwks_url (the "
                          "identity provider's JWK set), public_key_file (a PEM public key), "
                          "or development_tokens = true to accept tokens from `fonte token`")
    return Settings(
        systems=systems,
        data_dir=_path(base, gateway.get("data_dir", "data")),
        host=str(gateway.get("host", "127.0.0.1")),
        port=_integer("gateway", "port", gateway.get("port", 8000), 0, 65535),
        graphiql=_flag("gateway", gateway, "graphiql"),
        schema_dir=_path(base, gateway["schema_dir"]) if "schema_dir" in gateway
        else default_schema_dir(),
        policy_dir=_path(base, gateway["policy_dir"]) if "policy_dir" in gateway
        else default_policy_dir(),
        token_public_key_file=_path(base, key_file) if key_file else None,
        development_tokens=development_tokens,
        token_issuer=str(auth.get("issuer", DEV_ISSUER)),
        token_audiences=_audiences(auth.get("audience", DEV_AUDIENCE)),
        token_leeway_seconds=_integer("auth", "leeway_seconds",
                                      auth.get("leeway_seconds", DEFAULT_LEEWAY_SECONDS), 0, 300),
        token_cache_size=_integer("auth", "token_cache_size",
                                  auth.get("token_cache_size", DEFAULT_TOKEN_CACHE_SIZE), 0,
                                  1_000_000),
        jwks=jwks,
        role_mapping=role_mapping_from_table(auth),
        http=http_settings_from_table(_table(document, "http")),
        audit_fail_open=_flag("audit", audit, "fail_open"),
        audit_checkpoint_interval=_number("audit", "checkpoint_interval",
                                          audit.get("checkpoint_interval", 60)),
        audit_commit_delay_ms=_integer("audit", "commit_delay_ms",
                                       audit.get("commit_delay_ms", DEFAULT_COMMIT_DELAY_MS),
                                       0, round(MAX_COMMIT_DELAY * 1000)),
        audit_commit_siblings=_integer("audit", "commit_siblings",
                                       audit.get("commit_siblings", DEFAULT_COMMIT_SIBLINGS),
                                       1, 10_000),
        audit_checkpoint_key_name=str(audit.get("checkpoint_key_name", "fonte-audit-1")),
        audit_checkpoint_key_file=_path(base, audit["checkpoint_key_file"])
        if "checkpoint_key_file" in audit else None,
        audit_anchors=tuple(a if a == "stdout" else str(_path(base, a))
                            for a in audit.get("anchors", ())),
        audit_store_url=_audit_store(audit, base),
        audit_retention_months=_retention_months(audit.get("retention_months",
                                                           DEFAULT_RETENTION_MONTHS)),
        audit_auto_purge=_auto_purge(audit.get("auto_purge", True)),
        resilience=resilience,
        http_clients=_http_clients(document, systems),
        policy=policy_settings_from_table(policy, base),
        max_body_bytes=_integer("limits", "max_body_bytes",
                                limits.get("max_body_bytes", 1_000_000), 1_000, 100_000_000),
        max_search_length=_integer("limits", "max_search_length",
                                   limits.get("max_search_length", 100), 1, 10_000),
        operation_limits=OperationLimits(
            max_depth=_integer("limits", "max_depth", limits.get("max_depth", 10), 1, 100),
            max_fields=_integer("limits", "max_fields", limits.get("max_fields", 1000), 1,
                                1_000_000),
            max_root_fields=_integer("limits", "max_root_fields",
                                     limits.get("max_root_fields", 10), 1, 1000),
            max_cost=_integer("limits", "max_cost", limits.get("max_cost", 50_000), 1,
                              1_000_000_000),
            request_timeout=_number("limits", "request_timeout",
                                    limits.get("request_timeout", 30))),
        rate_limit=RateLimit(
            rate=_rate("limits", "requests_per_second", limits.get("requests_per_second", 20)),
            burst=_integer("limits", "burst", limits.get("burst", 40), 1, 100_000)),
        persisted_queries=_persisted_queries(_table(document, "persisted_queries"), base),
        executor=_executor(gateway.get("executor", "compiled")),
    )


def _executor(value: Any) -> str:
    if value not in EXECUTORS:
        raise ConfigError(f"[gateway] executor is {value!r}; set it to \"compiled\" (the "
                          "default) or \"graphql-core\"")
    return str(value)


_SECTIONS = {"gateway", "auth", "audit", "systems", "limits", "policy", "http",
             "persisted_queries"}
_GATEWAY_SETTINGS = {"data_dir", "host", "port", "graphiql", "schema_dir", "policy_dir",
                     "executor"}
_AUDIT_SETTINGS = {"fail_open", "checkpoint_interval", "checkpoint_key_name",
                   "checkpoint_key_file", "anchors", "store", "store_password",
                   "store_password_env", "store_password_file", "retention_months",
                   "auto_purge", "commit_delay_ms", "commit_siblings"}

_AUTH_SETTINGS = {"public_key_file", "development_tokens", "jwks_url", "jwks_timeout",
                  "jwks_cache_seconds", "jwks_min_refetch_seconds", "issuer", "audience",
                  "leeway_seconds", "token_cache_size", "role_claims", "role_map"}


def _jwks(auth: dict[str, Any]) -> JwksSettings | None:
    url = auth.get("jwks_url")
    if url is None:
        return None
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise ConfigError(f"[auth] jwks_url = {url!r} must be the http(s) URL of the identity "
                          "provider's JWK set")
    jwks = JwksSettings(
        url=url,
        timeout=_number("auth", "jwks_timeout", auth.get("jwks_timeout", 3.0)),
        cache_seconds=_number("auth", "jwks_cache_seconds", auth.get("jwks_cache_seconds", 300)),
        min_refetch_seconds=_number("auth", "jwks_min_refetch_seconds",
                                    auth.get("jwks_min_refetch_seconds", 30)))
    if jwks.cache_seconds < jwks.min_refetch_seconds:
        raise ConfigError(f"[auth] jwks_cache_seconds = {jwks.cache_seconds:g} is shorter than "
                          f"jwks_min_refetch_seconds = {jwks.min_refetch_seconds:g}; raise it, "
                          "or keys would expire before they may be fetched again")
    return jwks


def _audiences(value: Any) -> tuple[str, ...]:
    audiences = [value] if isinstance(value, str) else value
    if not isinstance(audiences, list) or not audiences or not all(
            isinstance(a, str) and a for a in audiences):
        raise ConfigError(f"[auth] audience = {value!r} must be a string or a list of strings "
                          "naming this gateway in the tokens' aud claim")
    return tuple(audiences)


def _persisted_queries(table: dict[str, Any], base: Path) -> PersistedQuerySettings:
    _check_known("persisted_queries", table, {"mode", "manifest"})
    mode = table.get("mode", "off")
    if mode not in MODES:
        raise ConfigError(f"[persisted_queries] mode = {mode!r} is not a mode; use one of "
                          f"{', '.join(MODES)}")
    manifest = table.get("manifest")
    if manifest is not None and not isinstance(manifest, str):
        raise ConfigError(f"[persisted_queries] manifest = {manifest!r} must be the path of "
                          "a JSON file")
    return PersistedQuerySettings(mode=mode, manifest=_path(base, manifest) if manifest
                                  else None)


def _resilience(document: dict[str, Any], systems: dict[str, SystemSettings]
                ) -> dict[str, ResiliencePolicy]:
    policies = {}
    for name, spec in _table(document, "systems").items():
        policy = policy_from_table(f"systems.{name}.resilience", _table(spec, "resilience"))
        if policy.timeout < systems[name].timeout:
            raise ConfigError(
                f"[systems.{name}.resilience] timeout = {policy.timeout:g} is shorter than "
                f"[systems.{name}] timeout = {systems[name].timeout:g}; set it to at least that "
                "so one attempt can finish")
        policies[name] = policy
    return policies


def _http_clients(document: dict[str, Any], systems: dict[str, SystemSettings]
                  ) -> dict[str, HttpClient]:
    chosen = {}
    for name, spec in _table(document, "systems").items():
        if "http_client" not in spec:
            continue
        if isinstance(systems[name], SqlSettings):
            raise ConfigError(f"[systems.{name}] http_client is not a setting of dialect sql, "
                              "which sends no HTTP requests; remove it")
        chosen[name] = check_http_client(f"systems.{name}", spec["http_client"])
    return chosen


def _table(document: dict[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table of settings")
    return value


def _path(base: Path, value: Any) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else base / path


def _integer(section: str, name: str, value: Any, low: int, high: int) -> int:
    # TOML's true and false load as bool, which Python counts as an int.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"[{section}] {name} = {value!r} must be a whole number from {low} to "
                          f"{high}")
    return value


def _check_known(section: str, table: dict[str, Any], known: set[str] | frozenset[str],
                 dialect: str | None = None) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        setting = f"a setting of dialect {dialect}" if dialect else "a setting"
        raise ConfigError(f"[{section}] {unknown[0]} is not {setting}; use one of "
                          f"{', '.join(sorted(known))}")


def _secrets(*names: str) -> frozenset[str]:
    # The bare name is known too, so that read_secret's own error, which names the
    # variable and file settings to use instead, reaches the user.
    return frozenset(f"{name}{suffix}" for name in names for suffix in ("", "_env", "_file"))


# Settings every dialect but rest accepts; rest checks its own (gateway.sources.rest_config).
_SYSTEM_SETTINGS = frozenset({"dialect", "timeout", "resilience", "http_client"})
# "login" stays known to odoo-json2 and "http_client" to sql, so that the messages
# that explain why those settings do not apply reach the user.
_DIALECT_SETTINGS: dict[str, frozenset[str]] = {
    "salesforce": frozenset({"login_url", "api_version", "auth", "username", "audience"})
    | _secrets("client_id", "client_secret", "private_key"),
    "odoo-jsonrpc": frozenset({"base_url", "database", "login"}) | _secrets("api_key"),
    "odoo-json2": frozenset({"base_url", "database", "login"}) | _secrets("api_key"),
    "sql": frozenset({"url", "tables", "schema", "pool_size"}) | _secrets("password"),
    "sap-odata-v2": frozenset({"base_url", "service", "client", "entities"})
    | _secrets("user", "password"),
    "dataverse": frozenset({"base_url", "token_url", "scope", "page_size", "entities"})
    | _secrets("client_id", "client_secret"),
}


def _rate(section: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"[{section}] {name} = {value!r} must be a number of requests per "
                          "second, 0 to turn rate limiting off")
    return float(value)


def _number(section: str, name: str, value: Any) -> float:
    if not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"[{section}] {name} = {value!r} must be a positive number of seconds")
    return float(value)


def _system(name: str, spec: Any, base: Path) -> SystemSettings:
    section = f"systems.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"[{section}] must be a table of settings")
    dialect = spec.get("dialect")
    if dialect is None:
        raise ConfigError(f"[{section}] dialect is missing; set it to one of "
                          f"{', '.join(DIALECTS)}")
    if dialect in _DIALECT_SETTINGS:
        _check_known(section, spec, _SYSTEM_SETTINGS | _DIALECT_SETTINGS[dialect], dialect)
    timeout = _number(section, "timeout", spec.get("timeout", 10.0))
    if dialect == "salesforce":
        return _salesforce(section, spec, base, timeout)
    if dialect == "odoo-jsonrpc":
        return OdooSettings(
            base_url=_http_url(section, spec, "base_url"),
            database=_text(section, spec, "database"),
            login=_text(section, spec, "login"), api_key=_secret(section, spec, "api_key", base),
            timeout=timeout)
    if dialect == "odoo-json2":
        return _odoo_json2(section, spec, base, timeout)
    if dialect == "sql":
        return _sql(section, spec, base, timeout)
    if dialect == "sap-odata-v2":
        return _sap(section, spec, base, timeout)
    if dialect == "rest":
        return rest_settings(section, spec, base, timeout)
    if dialect == "dataverse":
        return DataverseSettings(
            base_url=_http_url(section, spec, "base_url"),
            token_url=_http_url(section, spec, "token_url"),
            client_id=_secret(section, spec, "client_id", base),
            client_secret=_secret(section, spec, "client_secret", base),
            scope=_text(section, spec, "scope"),
            page_size=_integer(section, "page_size", spec.get("page_size", 5000), 1, 5000),
            timeout=timeout, entities=entities_from_table(section, spec.get("entities", {})))
    raise ConfigError(f"[{section}] dialect = {dialect!r} is not supported; use one of "
                      f"{', '.join(DIALECTS)}")


def _odoo_json2(section: str, spec: dict[str, Any], base: Path,
                timeout: float) -> OdooJson2Settings:
    database = spec.get("database", "")
    if not isinstance(database, str):
        raise ConfigError(f"[{section}] database = {database!r} must be a string naming the "
                          "Odoo database, or be left out when the host serves one database")
    if "login" in spec:
        raise ConfigError(f"[{section}] login is not used by dialect odoo-json2; remove it, "
                          "because the API key alone identifies the user")
    return OdooJson2Settings(base_url=_http_url(section, spec, "base_url"), database=database,
                             api_key=_secret(section, spec, "api_key", base), timeout=timeout)


def _audit_store(audit: dict[str, Any], base: Path) -> str | None:
    """Return the PostgreSQL URL of ``[audit] store`` with its password, or None."""
    if "store" not in audit:
        return None
    try:
        url = make_url(_text("audit", audit, "store"))
    except sqlalchemy_exc.ArgumentError as exc:
        raise ConfigError("[audit] store is not a valid URL; write it as "
                          "postgresql+asyncpg://user@host:port/database") from exc
    if url.drivername not in ("postgresql", "postgresql+asyncpg"):
        raise ConfigError(f"[audit] store = {url.render_as_string(hide_password=True)!r} is "
                          "not a PostgreSQL URL; use postgresql+asyncpg://user@host:port/"
                          "database, or remove it to keep the SQLite file in data_dir")
    if url.password is not None:
        raise ConfigError("[audit] store must not contain a password; set store_password_env "
                          "or store_password_file")
    if any(key in audit for key in ("store_password_env", "store_password_file")):
        url = url.set(password=_secret("audit", audit, "store_password", base))
    return url.render_as_string(hide_password=False)


def _auto_purge(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"[audit] auto_purge = {value!r} must be true or false")
    return value


def _retention_months(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"[audit] retention_months = {value!r} must be a whole number of "
                          "months, for example 24")
    if value < MIN_RETENTION_MONTHS:
        raise ConfigError(f"[audit] retention_months = {value} is below the minimum of "
                          f"{MIN_RETENTION_MONTHS} months that access logs must be kept; set "
                          f"it to {MIN_RETENTION_MONTHS} or more")
    return value


def _sql(section: str, spec: dict[str, Any], base: Path, timeout: float) -> SqlSettings:
    try:
        url = make_url(_text(section, spec, "url"))
    except sqlalchemy_exc.ArgumentError as exc:
        raise ConfigError(f"[{section}] url is not a valid SQLAlchemy URL; write it as "
                          "dialect+driver://user@host:port/database") from exc
    if url.password is not None:
        raise ConfigError(f"[{section}] url must not contain a password; set password_env "
                          "or password_file")
    if any(key in spec for key in ("password", "password_env", "password_file")):
        url = url.set(password=_secret(section, spec, "password", base))
    tables = spec.get("tables", {})
    if not isinstance(tables, dict) or not all(isinstance(v, str) for v in tables.values()):
        raise ConfigError(f"[{section}.tables] must map entity names to table or view names")
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, str):
        raise ConfigError(f"[{section}] schema = {schema!r} must be a string")
    pool_size = _integer(section, "pool_size", spec.get("pool_size", 5), 1, 100)
    try:
        return SqlSettings(url=url.render_as_string(hide_password=False), tables=tables,
                           schema=schema, timeout=timeout, pool_size=pool_size)
    except ConfigError as exc:
        raise ConfigError(f"[{section}] {exc}") from exc


def _salesforce(section: str, spec: dict[str, Any], base: Path,
                timeout: float) -> SalesforceSettings:
    for name in ("username", "audience", "auth"):
        if name in spec and not isinstance(spec[name], str):
            raise ConfigError(f"[{section}] {name} = {spec[name]!r} must be a string")
    # These errors already name the section, so they stay outside the try that adds it.
    login_url = _http_url(section, spec, "login_url")
    client_id = _secret(section, spec, "client_id", base)
    client_secret = read_secret(f"[{section}]", spec, "client_secret", base) or ""
    private_key_pem = read_secret(f"[{section}]", spec, "private_key", base)
    try:
        return SalesforceSettings(
            login_url=login_url, client_id=client_id, client_secret=client_secret,
            api_version=str(spec.get("api_version", "62.0")), timeout=timeout,
            auth=spec.get("auth", "client_credentials"),
            username=spec.get("username"),
            private_key_pem=private_key_pem,
            audience=spec.get("audience"))
    except ConfigError as exc:
        raise ConfigError(f"[{section}] {exc}") from exc


def _sap(section: str, spec: dict[str, Any], base: Path, timeout: float) -> SapSettings:
    client = spec.get("client")
    if client is not None and not (isinstance(client, str) and client.isdigit()):
        raise ConfigError(f"[{section}] client = {client!r} must be the SAP client number as a "
                          'string, such as "100"')
    return SapSettings(
        base_url=_http_url(section, spec, "base_url"), service=_text(section, spec, "service"),
        user=_secret(section, spec, "user", base),
        password=_secret(section, spec, "password", base), client=client, timeout=timeout,
        entities=entities_from_table(section, spec.get("entities", {})))


def _flag(section: str, spec: dict[str, Any], name: str) -> bool:
    # bool() would read the string "false" as true, which turns on fail_open or
    # development tokens by mistake.
    value = spec.get(name, False)
    if not isinstance(value, bool):
        raise ConfigError(f"[{section}] {name} = {value!r} must be true or false, written "
                          "without quotes")
    return value


def _http_url(section: str, spec: dict[str, Any], name: str) -> str:
    value = _text(section, spec, name)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"[{section}] {name} = {value!r} is invalid; set it to an http or "
                          "https URL such as \"https://erp.example.com\"")
    return value


def _text(section: str, spec: dict[str, Any], name: str) -> str:
    value = spec.get(name)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"[{section}] {name} is missing; set it to a non-empty string")
    return value


def _secret(section: str, spec: dict[str, Any], name: str, base: Path) -> str:
    value = read_secret(f"[{section}]", spec, name, base)
    if value is None:
        raise ConfigError(f"[{section}] needs {name}_env or {name}_file")
    return value
