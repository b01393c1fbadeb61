"""The policy in force, and the reloads that replace it without a restart.

``PolicyHolder.current`` is the engine every request reads. A reload builds
a new engine first and swaps it in only when it loaded completely, so a
broken policy leaves the previous one in force; the failure is logged and
shown in health.

Reloads run one at a time. Requests that arrive while a load runs share one
more load, which starts after all of them and so sees every change they
announce. ``gateway.policy_watch`` turns file changes, SIGHUP and
notifications into such requests; the ``[policy]`` settings below say which
of them a gateway uses.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy.engine import URL, make_url

from gateway.catalog import Catalog
from gateway.errors import ConfigError, GatewayError, PolicyError
from gateway.policy import PolicyEngine, default_policy_dir, read_policy_dir
from gateway.secrets import read_secret

log = logging.getLogger("gateway.policy")

Loader = Callable[[], Awaitable[PolicyEngine]]
Source = Literal["files", "database"]
NotifyKind = Literal["none", "redis", "postgres"]
SOURCES: tuple[Source, ...] = ("files", "database")
NOTIFY_KINDS: tuple[NotifyKind, ...] = ("none", "redis", "postgres")
REDIS_CHANNEL = "fonte:policy"


@dataclass(frozen=True)
class PolicyStatus:
    """The policy state that health reports."""

    version: str
    origin: str
    loaded_at: float
    last_error: str | None


class PolicyHolder:
    """Holds the engine in force and reloads it through ``loader``."""

    def __init__(self, engine: PolicyEngine, loader: Loader | None = None) -> None:
        self._engine = engine
        self._loader = loader
        self._loaded_at = time.time()
        self._last_error: str | None = None
        # The load that starts after every request made so far, shared by
        # those requests. It is None while no request waits for a load to start.
        self._next: asyncio.Future[bool] | None = None
        self._next_reason = ""
        self._runner: asyncio.Task[None] | None = None
        # Awaited with the previous engine, the new one and the reason after each
        # replacement. The gateway records the change in the audit log there.
        self.on_change: Callable[[PolicyEngine, PolicyEngine, str], Awaitable[None]] | None = None

    @property
    def current(self) -> PolicyEngine:
        return self._engine

    def status(self) -> PolicyStatus:
        return PolicyStatus(version=self._engine.version, origin=self._engine.origin,
                            loaded_at=self._loaded_at, last_error=self._last_error)

    async def reload(self, reason: str = "request") -> bool:
        """Load the policy again; keep the previous one when loading fails.

        Returns whether the load succeeded. Concurrent calls share a load:
        each call waits for the first load that starts after it was made.
        """
        if self._loader is None:
            return False
        return await asyncio.shield(self._request(reason))

    def request_reload(self, reason: str) -> None:
        """Schedule a reload without waiting for it, for signal handlers and callbacks.

        Must be called from the event loop's thread, with the loop running.
        """
        if self._loader is not None:
            self._request(reason)

    async def aclose(self) -> None:
        """Cancel a running or scheduled reload. The engine in force stays."""
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        if self._next is not None:
            self._next.cancel()
            self._next = None

    def _request(self, reason: str) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        if self._next is None:
            self._next = loop.create_future()
            self._next_reason = reason
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run(), name="policy-reload")
        return self._next

    async def _run(self) -> None:
        while self._next is not None:
            waiting, reason = self._next, self._next_reason
            self._next = None
            try:
                result = await self._load(reason)
            except BaseException:
                waiting.cancel()
                raise
            if not waiting.done():
                waiting.set_result(result)

    async def _load(self, reason: str) -> bool:
        assert self._loader is not None
        previous = self._engine
        try:
            engine = await self._loader()
        except GatewayError as exc:
            self._last_error = str(exc)
            log.error("policy reload (%s) failed, policy %s stays in force: %s", reason,
                      previous.version, exc)
            return False
        except Exception as exc:  # a loader bug must not stop the watchers that reload
            self._last_error = (f"unexpected {type(exc).__name__} while loading the policy; "
                                "see the gateway log")
            log.exception("policy reload (%s) failed unexpectedly, policy %s stays in force",
                          reason, previous.version)
            return False
        self._loaded_at = time.time()
        self._last_error = None
        if _same_policy(previous, engine):
            # Keeping the engine keeps its compiled views warm.
            log.info("policy reload (%s): policy %s unchanged", reason, previous.version)
            return True
        self._engine = engine
        log.info("policy reload (%s): policy %s replaced by %s", reason, previous.version,
                 engine.version)
        if self.on_change is not None:
            await self.on_change(previous, engine, reason)
        return True


def _same_policy(current: PolicyEngine, loaded: PolicyEngine) -> bool:
    # NOTE: PolicyEngine.version hashes the model and the rows but not the
    # purposes, so equal versions alone do not mean an equal policy.
    return current.version == loaded.version and current.purposes == loaded.purposes


def file_loader(catalog: Catalog, directory: Path) -> Loader:
    """Return a loader that reads ``model.conf``, ``policy.csv`` and ``purposes.toml``.

    Reading and the engine build run in a worker thread, so a reload does not
    stall the requests being served.
    """

    async def load() -> PolicyEngine:
        return await asyncio.to_thread(_engine_from_directory, catalog, directory)

    return load


def _engine_from_directory(catalog: Catalog, directory: Path) -> PolicyEngine:
    try:
        text = read_policy_dir(directory)
    except UnicodeDecodeError as exc:
        raise PolicyError(f"a policy file in {str(directory)!r} is not UTF-8 text; save it "
                          "as UTF-8") from exc
    except OSError as exc:
        raise PolicyError(f"cannot read the policy files in {str(directory)!r}: "
                          f"{exc.strerror or type(exc).__name__}; check that the gateway's "
                          "user can read them") from exc
    return PolicyEngine(catalog, text)


@dataclass(frozen=True)
class PolicySettings:
    """The ``[policy]`` section: where the policy comes from and what reloads it.

    With ``source = "database"`` the rows come from the ``casbin_rule``
    table at ``database_url`` and the model and purposes still come from
    ``directory``. ``reload_interval`` is in seconds, and 0 turns the
    periodic reload off. ``database_url`` and ``redis_password`` hold
    secrets read from the environment or a file, so they stay out of repr.
    """

    source: Source = "files"
    directory: Path = field(default_factory=default_policy_dir)
    database_url: str | None = field(default=None, repr=False)
    notify: NotifyKind = "none"
    redis_url: str | None = None
    redis_password: str | None = field(default=None, repr=False)
    redis_channel: str = REDIS_CHANNEL
    watch_files: bool = True
    watch_interval: float = 2.0
    reload_interval: float = 60.0


_SETTING_NAMES = frozenset({
    "source", "directory", "database_url", "database_password", "database_password_env",
    "database_password_file", "notify", "redis_url", "redis_password", "redis_password_env",
    "redis_password_file", "redis_channel", "watch_files", "watch_interval", "reload_interval",
})
_SECTION = "[policy]"


def policy_settings_from_table(table: dict[str, Any], base: Path) -> PolicySettings:
    """Read and check the ``[policy]`` section, resolving relative paths against ``base``.

    Raises ``ConfigError`` naming the setting, its value and the fix.
    """
    unknown = sorted(set(table) - _SETTING_NAMES)
    if unknown:
        raise ConfigError(f"{_SECTION} {unknown[0]} is not a setting; use one of "
                          f"{', '.join(sorted(_SETTING_NAMES))}")
    source = cast(Source, _choice(table, "source", SOURCES))
    notify = cast(NotifyKind, _choice(table, "notify", NOTIFY_KINDS))
    database_url = _database_url(table, base, source, notify)
    redis_url, redis_password = _redis(table, base, notify)
    channel = table.get("redis_channel", REDIS_CHANNEL)
    if not isinstance(channel, str) or not channel:
        raise ConfigError(f"{_SECTION} redis_channel = {channel!r} must be a non-empty string")
    return PolicySettings(
        source=source, directory=_directory(table, base), database_url=database_url,
        notify=notify, redis_url=redis_url, redis_password=redis_password,
        redis_channel=channel, watch_files=_flag(table, "watch_files", True),
        watch_interval=_seconds(table, "watch_interval", 2.0, allow_zero=False),
        reload_interval=_seconds(table, "reload_interval", 60.0, allow_zero=True))


def _choice(table: dict[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value = table.get(name, choices[0])
    if value not in choices:
        raise ConfigError(f"{_SECTION} {name} = {value!r} is not supported; use one of "
                          f"{', '.join(repr(choice) for choice in choices)}")
    return str(value)


def _directory(table: dict[str, Any], base: Path) -> Path:
    if "directory" not in table:
        return default_policy_dir()
    value = table["directory"]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{_SECTION} directory = {value!r} must be a path to the folder of "
                          "model.conf")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not (path / "model.conf").is_file():
        raise ConfigError(f"{_SECTION} directory = {value!r}: {str(path)!r} holds no "
                          "model.conf; set it to the folder with model.conf, policy.csv and "
                          "purposes.toml")
    return path


def _database_url(table: dict[str, Any], base: Path, source: str, notify: str) -> str | None:
    value = table.get("database_url")
    if source != "database":
        _reject_unused(table, "database_", f'source = "{source}"', 'source = "database"')
        if notify == "postgres":
            raise ConfigError(f'{_SECTION} notify = "postgres" listens on the policy database; '
                              'set source = "database" and database_url')
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f'{_SECTION} database_url is missing; source = "database" needs it, '
                          "for example postgresql+asyncpg://fonte@db.example.com:5432/fonte")
    try:
        url = make_url(value)
    except sqlalchemy_exc.ArgumentError as exc:
        raise ConfigError(f"{_SECTION} database_url is not a valid SQLAlchemy URL; write it as "
                          "dialect+driver://user@host:port/database") from exc
    if url.password is not None:
        raise ConfigError(f"{_SECTION} database_url must not contain a password; set "
                          "database_password_env or database_password_file")
    _check_async_driver(url)
    if notify == "postgres" and url.get_backend_name() != "postgresql":
        raise ConfigError(f'{_SECTION} notify = "postgres" needs a PostgreSQL database_url, '
                          f"not {url.drivername}; use notify = \"redis\" or \"none\"")
    password = _secret(table, "database_password", base)
    if password is not None:
        url = url.set(password=password)
    return url.render_as_string(hide_password=False)


def _check_async_driver(url: URL) -> None:
    shown = url.render_as_string()
    try:
        dialect = url.get_dialect()
    except sqlalchemy_exc.NoSuchModuleError as exc:
        raise ConfigError(f"{_SECTION} database_url = {shown!r}: driver {url.drivername!r} is "
                          "not installed; use postgresql+asyncpg") from exc
    if not getattr(dialect, "is_async", False):
        raise ConfigError(f"{_SECTION} database_url = {shown!r} names a synchronous driver; "
                          "use an asyncio one such as postgresql+asyncpg")


def _redis(table: dict[str, Any], base: Path, notify: str) -> tuple[str | None, str | None]:
    value = table.get("redis_url")
    if notify != "redis":
        _reject_unused(table, "redis_", f'notify = "{notify}"', 'notify = "redis"')
        return None, None
    if not isinstance(value, str) or not value:
        raise ConfigError(f'{_SECTION} redis_url is missing; notify = "redis" needs it, for '
                          "example redis://redis.example.com:6379/0")
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{_SECTION} redis_url must start with redis://, rediss:// or "
                          f"unix://, not {parts.scheme or 'nothing'!r}")
    if parts.password is not None:
        raise ConfigError(f"{_SECTION} redis_url must not contain a password; set "
                          "redis_password_env or redis_password_file")
    return value, _secret(table, "redis_password", base)


def _reject_unused(table: dict[str, Any], prefix: str, current: str, needed: str) -> None:
    unused = sorted(name for name in table if name.startswith(prefix))
    if unused:
        raise ConfigError(f"{_SECTION} {unused[0]} is set but {current}; set {needed} or "
                          f"remove {unused[0]}")


def _secret(table: dict[str, Any], name: str, base: Path) -> str | None:
    return read_secret(_SECTION, table, name, base)


def _flag(table: dict[str, Any], name: str, default: bool) -> bool:
    value = table.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{_SECTION} {name} = {value!r} must be true or false")
    return value


def _seconds(table: dict[str, Any], name: str, default: float, *, allow_zero: bool) -> float:
    value = table.get(name, default)
    valid = (isinstance(value, int | float) and not isinstance(value, bool)
             and math.isfinite(value) and (value > 0 or (allow_zero and value == 0)))
    if not valid:
        lowest = "0 (off) or more" if allow_zero else "more than 0"
        raise ConfigError(f"{_SECTION} {name} = {value!r} must be a number of seconds, "
                          f"{lowest}")
    return float(value)
