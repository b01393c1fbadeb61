"""Policy reloads in one process: the holder, the triggers, the settings and the SQL store.

Watchers get a fake ``sleep`` that returns only when the test steps it, so
every poll happens at a point the test chooses and no test waits for a
clock. The SQL store runs on SQLite here; tests/integration covers
PostgreSQL, Redis and several processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.catalog import Catalog, load_catalog
from gateway.errors import ConfigError, PolicyError
from gateway.policy import PolicyEngine, default_policy_dir
from gateway.policy_reload import (
    REDIS_CHANNEL,
    PolicyHolder,
    PolicySettings,
    file_loader,
    policy_settings_from_table,
)
from gateway.policy_store import (
    Notification,
    database_loader,
    publish_policy,
    push,
    read_model_files,
    read_rows,
)
from gateway.policy_watch import (
    Backoff,
    Listener,
    PolicyWatchers,
    PostgresListener,
    RedisListener,
    install_sighup_handler,
    open_policy,
    reload_periodically,
    watch_files,
)

# Bounds every wait on a watcher, so a broken watcher fails the test instead
# of hanging it. No assert depends on it.
WAIT = 10.0
DPO_ROW = "p, dpo, non_personal, compliance, allow, -"
BROKEN_ROW = "p, sales, no_such_category, *, allow, -"


class StepSleep:
    """A fake ``asyncio.sleep`` that returns only when the test calls ``step``."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self._entered: asyncio.Queue[float] = asyncio.Queue()
        self._release: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self._entered.put_nowait(seconds)
        await self._release.get()

    async def sleeping(self) -> float:
        """Wait until the watcher sleeps, and return the seconds it requested."""
        return await asyncio.wait_for(self._entered.get(), WAIT)

    async def step(self) -> None:
        """Let the watcher run one round, returning when it sleeps again."""
        self._release.put_nowait(None)
        await self.sleeping()


class GatedLoader:
    """A loader that counts its calls and blocks each one until ``gate`` is set."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        self.calls = 0
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def __call__(self) -> PolicyEngine:
        self.calls += 1
        self.entered.set()
        await self.gate.wait()
        return self.engine


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    shutil.copytree(default_policy_dir(), directory)
    return directory


def append_row(directory: Path, row: str) -> None:
    path = directory / "policy.csv"
    path.write_text(path.read_text(encoding="utf-8") + row + "\n", encoding="utf-8")


def dpo_reads_ids(engine: PolicyEngine) -> bool:
    return engine.explain(["dpo"], "compliance", "Customer.id").allowed


@pytest.fixture
async def file_holder(catalog: Catalog, policy_dir: Path) -> AsyncIterator[PolicyHolder]:
    loader = file_loader(catalog, policy_dir)
    holder = PolicyHolder(await loader(), loader)
    yield holder
    await holder.aclose()


async def start(watcher: Any) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(watcher)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# The holder


async def test_reload_swaps_changed_policy(file_holder: PolicyHolder, policy_dir: Path) -> None:
    before = file_holder.current
    append_row(policy_dir, DPO_ROW)

    assert await file_holder.reload("test") is True

    assert file_holder.current.version != before.version
    assert dpo_reads_ids(file_holder.current)
    assert not dpo_reads_ids(before)
    assert file_holder.status().last_error is None


async def test_reload_keeps_engine_when_unchanged(file_holder: PolicyHolder) -> None:
    before = file_holder.current
    before.view(["sales"], "sales")

    assert await file_holder.reload("test") is True

    assert file_holder.current is before


async def test_purposes_change_is_a_change(file_holder: PolicyHolder, policy_dir: Path) -> None:
    before = file_holder.current
    path = policy_dir / "purposes.toml"
    path.write_text(path.read_text(encoding="utf-8").replace(
        'dpo = ["compliance"]', 'dpo = ["compliance", "support"]'), encoding="utf-8")

    await file_holder.reload("test")

    assert file_holder.current is not before
    assert file_holder.current.purposes["dpo"] == ["compliance", "support"]


async def test_broken_policy_keeps_previous(file_holder: PolicyHolder, policy_dir: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    before = file_holder.current
    append_row(policy_dir, BROKEN_ROW)

    with caplog.at_level(logging.ERROR, logger="gateway.policy"):
        assert await file_holder.reload("test") is False

    assert file_holder.current is before
    last_error = file_holder.status().last_error
    assert last_error is not None
    assert "no_such_category" in last_error
    assert f"policy {before.version} stays in force" in caplog.text


async def test_fixed_policy_clears_last_error(file_holder: PolicyHolder,
                                              policy_dir: Path) -> None:
    original = (policy_dir / "policy.csv").read_text(encoding="utf-8")
    append_row(policy_dir, BROKEN_ROW)
    await file_holder.reload("broken")
    (policy_dir / "policy.csv").write_text(original + DPO_ROW + "\n", encoding="utf-8")

    assert await file_holder.reload("fixed") is True

    assert file_holder.status().last_error is None
    assert dpo_reads_ids(file_holder.current)


async def test_unreadable_folder_keeps_previous(file_holder: PolicyHolder,
                                                policy_dir: Path) -> None:
    before = file_holder.current
    shutil.rmtree(policy_dir)

    assert await file_holder.reload("test") is False

    assert file_holder.current is before
    assert "policy.csv" in (file_holder.status().last_error or "")


async def test_loader_bug_keeps_previous(file_holder: PolicyHolder) -> None:
    before = file_holder.current

    async def broken() -> PolicyEngine:
        raise RuntimeError("loader bug")

    holder = PolicyHolder(before, broken)

    assert await holder.reload("test") is False
    assert holder.current is before
    assert holder.status().last_error == ("unexpected RuntimeError while loading the policy; "
                                          "see the gateway log")


async def test_reload_without_loader_returns_false(file_holder: PolicyHolder) -> None:
    holder = PolicyHolder(file_holder.current)

    assert await holder.reload("test") is False
    holder.request_reload("test")


async def test_concurrent_reloads_coalesce(file_holder: PolicyHolder) -> None:
    loader = GatedLoader(file_holder.current)
    holder = PolicyHolder(file_holder.current, loader)
    first = asyncio.create_task(holder.reload("first"))
    await asyncio.wait_for(loader.entered.wait(), WAIT)

    # Three triggers while the first load runs: they share one more load.
    later = [asyncio.create_task(holder.reload(f"later {n}")) for n in range(2)]
    holder.request_reload("signal")
    await asyncio.sleep(0)
    loader.gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *later), WAIT)

    assert results == [True, True, True]
    assert loader.calls == 2


async def test_request_during_load_runs_one_more(file_holder: PolicyHolder) -> None:
    loader = GatedLoader(file_holder.current)
    holder = PolicyHolder(file_holder.current, loader)
    holder.request_reload("first")
    await asyncio.wait_for(loader.entered.wait(), WAIT)

    for n in range(5):
        holder.request_reload(f"during {n}")
    loader.gate.set()
    # A reload requested now waits for the queued load, then for none more.
    assert await asyncio.wait_for(holder.reload("after"), WAIT) is True

    assert loader.calls == 3


async def test_aclose_cancels_waiting_reloads(file_holder: PolicyHolder) -> None:
    loader = GatedLoader(file_holder.current)
    holder = PolicyHolder(file_holder.current, loader)
    waiting = asyncio.create_task(holder.reload("test"))
    await asyncio.wait_for(loader.entered.wait(), WAIT)

    await holder.aclose()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, WAIT)
    assert holder.current is file_holder.current


# Triggers


async def test_file_change_triggers_reload(file_holder: PolicyHolder,
                                           policy_dir: Path) -> None:
    sleep = StepSleep()
    task = await start(watch_files(file_holder, policy_dir, 2.0, sleep))
    try:
        assert await sleep.sleeping() == 2.0
        before = file_holder.current

        await sleep.step()
        assert file_holder.current is before

        append_row(policy_dir, DPO_ROW)
        await sleep.step()
        assert file_holder.current is not before
        assert dpo_reads_ids(file_holder.current)
    finally:
        await stop(task)


async def test_change_before_first_poll_noticed(file_holder: PolicyHolder,
                                                policy_dir: Path) -> None:
    append_row(policy_dir, DPO_ROW)
    sleep = StepSleep()
    task = await start(watch_files(file_holder, policy_dir, 2.0, sleep))
    try:
        await sleep.sleeping()

        assert dpo_reads_ids(file_holder.current)
    finally:
        await stop(task)


async def test_file_replaced_by_rename_triggers_reload(file_holder: PolicyHolder,
                                                       policy_dir: Path) -> None:
    sleep = StepSleep()
    task = await start(watch_files(file_holder, policy_dir, 2.0, sleep))
    try:
        await sleep.sleeping()
        staged = policy_dir / "policy.csv.new"
        staged.write_text((policy_dir / "policy.csv").read_text(encoding="utf-8") + DPO_ROW
                          + "\n", encoding="utf-8")
        staged.replace(policy_dir / "policy.csv")

        await sleep.step()

        assert dpo_reads_ids(file_holder.current)
    finally:
        await stop(task)


async def test_broken_file_reported_once(file_holder: PolicyHolder, policy_dir: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    sleep = StepSleep()
    task = await start(watch_files(file_holder, policy_dir, 2.0, sleep))
    try:
        await sleep.sleeping()
        append_row(policy_dir, BROKEN_ROW)
        with caplog.at_level(logging.ERROR, logger="gateway.policy"):
            await sleep.step()
            await sleep.step()

        failures = [r for r in caplog.records if "stays in force" in r.getMessage()]
        assert len(failures) == 1
        assert file_holder.status().last_error is not None
    finally:
        await stop(task)


async def test_periodic_reload_each_interval(file_holder: PolicyHolder) -> None:
    loader = GatedLoader(file_holder.current)
    loader.gate.set()
    holder = PolicyHolder(file_holder.current, loader)
    sleep = StepSleep()
    task = await start(reload_periodically(holder, 60.0, sleep))
    try:
        assert await sleep.sleeping() == 60.0
        assert loader.calls == 0

        await sleep.step()
        await sleep.step()

        assert loader.calls == 2
    finally:
        await stop(task)


async def test_sighup_triggers_reload(file_holder: PolicyHolder) -> None:
    loader = GatedLoader(file_holder.current)
    loader.gate.set()
    holder = PolicyHolder(file_holder.current, loader)
    remove = install_sighup_handler(holder)
    if remove is None:
        pytest.skip("no SIGHUP handler here: no SIGHUP, or the loop is not in the main thread")
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(loader.entered.wait(), WAIT)
    finally:
        remove()

    assert loader.calls == 1
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


async def test_watchers_start_and_stop(file_holder: PolicyHolder, policy_dir: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    settings = PolicySettings(directory=policy_dir, watch_interval=2.0, reload_interval=60.0)
    watchers = PolicyWatchers(file_holder, settings, sleep=StepSleep())

    with caplog.at_level(logging.INFO, logger="gateway.policy"):
        watchers.start()
        await asyncio.sleep(0)
        await watchers.stop()

    assert f"watching the policy files in {policy_dir} every 2 s" in caplog.text
    assert "reloading the policy every 60 s" in caplog.text
    assert "stopped watching the policy files" in caplog.text
    assert "stopped the periodic policy reload" in caplog.text
    assert watchers.status() == {}
    if hasattr(signal, "SIGHUP"):
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


async def test_watchers_start_twice_raises(file_holder: PolicyHolder, policy_dir: Path) -> None:
    settings = PolicySettings(directory=policy_dir, watch_files=False, reload_interval=0)
    watchers = PolicyWatchers(file_holder, settings)
    watchers.start()
    try:
        with pytest.raises(RuntimeError, match="twice"):
            watchers.start()
    finally:
        await watchers.stop()


def closed_port() -> int:
    """Return a loopback port that nothing listens on (it was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


ListenerFactory = Callable[[PolicyHolder, Any], Listener]


@pytest.mark.parametrize("make_listener", [
    lambda holder, sleep: RedisListener(holder, f"redis://127.0.0.1:{closed_port()}/0",
                                        "fonte-test", None, backoff=Backoff(0.5, 4.0),
                                        sleep=sleep),
    lambda holder, sleep: PostgresListener(
        holder, f"postgresql+asyncpg://fonte:s3cret-pw@127.0.0.1:{closed_port()}/fonte",
        backoff=Backoff(0.5, 4.0), sleep=sleep),
], ids=["redis", "postgres"])
async def test_listener_retries_with_backoff(file_holder: PolicyHolder,
                                             make_listener: ListenerFactory,
                                             caplog: pytest.LogCaptureFixture) -> None:
    sleep = StepSleep()
    listener = make_listener(file_holder, sleep)
    with caplog.at_level(logging.WARNING, logger="gateway.policy"):
        task = await start(listener.run())
        try:
            delays = [await sleep.sleeping()]
            for _ in range(4):
                sleep._release.put_nowait(None)
                delays.append(await sleep.sleeping())
            assert listener.state == "reconnecting"
            assert not task.done()
        finally:
            await stop(task)

    maxima = [0.5, 1.0, 2.0, 4.0, 4.0]
    for delay, maximum in zip(delays, maxima, strict=True):
        assert maximum / 2 <= delay <= maximum
    assert "attempt 5" in caplog.text
    assert "s3cret-pw" not in caplog.text


def test_backoff_doubles_up_to_maximum() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0)

    for failures, maximum in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (500, 8.0)]:
        delay = backoff.delay(failures)
        assert maximum / 2 <= delay <= maximum, (failures, delay)


# Settings


def test_settings_default_to_files(tmp_path: Path) -> None:
    settings = policy_settings_from_table({}, tmp_path)

    assert settings == PolicySettings()
    assert settings.source == "files"
    assert settings.directory == default_policy_dir()
    assert settings.notify == "none"
    assert settings.watch_files is True
    assert settings.watch_interval == 2.0
    assert settings.reload_interval == 60.0
    assert settings.redis_channel == REDIS_CHANNEL


def test_settings_database_with_password_env(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(default_policy_dir(), tmp_path / "rules")
    monkeypatch.setenv("FONTE_TEST_POLICY_PASSWORD", "p@ss/word")
    settings = policy_settings_from_table({
        "source": "database", "directory": "rules",
        "database_url": "postgresql+asyncpg://fonte@db.test:5432/fonte",
        "database_password_env": "FONTE_TEST_POLICY_PASSWORD", "notify": "postgres",
        "watch_files": False, "reload_interval": 0,
    }, tmp_path)

    assert settings.source == "database"
    assert settings.directory == tmp_path / "rules"
    assert settings.database_url == "postgresql+asyncpg://fonte:p%40ss%2Fword@db.test:5432/fonte"
    assert settings.notify == "postgres"
    assert settings.watch_files is False
    assert settings.reload_interval == 0.0
    assert "p@ss" not in repr(settings)


def test_settings_redis_with_password_file(tmp_path: Path) -> None:
    (tmp_path / "redis.secret").write_text("hunter2\n", encoding="utf-8")
    settings = policy_settings_from_table({
        "notify": "redis", "redis_url": "redis://cache.test:6379/1",
        "redis_password_file": "redis.secret", "redis_channel": "policy:eu",
        "watch_interval": 0.5,
    }, tmp_path)

    assert settings.redis_url == "redis://cache.test:6379/1"
    assert settings.redis_password == "hunter2"
    assert settings.redis_channel == "policy:eu"
    assert settings.watch_interval == 0.5
    assert "hunter2" not in repr(settings)


PG = "postgresql+asyncpg://fonte@db.test/fonte"
INVALID_SETTINGS: list[tuple[dict[str, Any], str]] = [
    ({"sorce": "files"}, "[policy] sorce is not a setting"),
    ({"source": "ldap"}, "[policy] source = 'ldap' is not supported"),
    ({"notify": "kafka"}, "[policy] notify = 'kafka' is not supported"),
    ({"directory": "missing"}, "[policy] directory = 'missing'"),
    ({"directory": 3}, "[policy] directory = 3 must be a path"),
    ({"source": "database"}, "[policy] database_url is missing"),
    ({"database_url": PG}, '[policy] database_url is set but source = "files"'),
    ({"database_password_env": "X"}, '[policy] database_password_env is set but source'),
    ({"notify": "postgres"}, '[policy] notify = "postgres" listens on the policy database'),
    ({"source": "database", "database_url": "not a url"}, "not a valid SQLAlchemy URL"),
    ({"source": "database", "database_url": "postgresql+asyncpg://u:pw@db.test/fonte"},
     "[policy] database_url must not contain a password"),
    ({"source": "database", "database_url": "postgresql://fonte@db.test/fonte"},
     "names a synchronous driver"),
    ({"source": "database", "database_url": "postgresql+nosuchdriver://fonte@db.test/f"},
     "driver 'postgresql+nosuchdriver' is not installed"),
    ({"source": "database", "database_url": "sqlite+aiosqlite:///policy.db",
      "notify": "postgres"}, 'notify = "postgres" needs a PostgreSQL database_url'),
    ({"source": "database", "database_url": PG, "database_password": "pw"},
     "[policy] database_password must not be written in the settings file"),
    ({"source": "database", "database_url": PG, "database_password_env": "FONTE_TEST_UNSET"},
     "[policy] database_password_env names 'FONTE_TEST_UNSET', which is not set"),
    ({"source": "database", "database_url": PG, "database_password_file": "none.secret"},
     "[policy] database_password_file 'none.secret' cannot be read"),
    ({"notify": "redis"}, "[policy] redis_url is missing"),
    ({"redis_url": "redis://cache.test"}, '[policy] redis_url is set but notify = "none"'),
    ({"notify": "redis", "redis_url": "http://cache.test"}, "must start with redis://"),
    ({"notify": "redis", "redis_url": "redis://:pw@cache.test"},
     "[policy] redis_url must not contain a password"),
    ({"notify": "redis", "redis_url": "redis://cache.test", "redis_password": "pw"},
     "[policy] redis_password must not be written"),
    ({"notify": "redis", "redis_url": "redis://cache.test", "redis_channel": ""},
     "[policy] redis_channel = '' must be a non-empty string"),
    ({"watch_files": "yes"}, "[policy] watch_files = 'yes' must be true or false"),
    ({"watch_interval": 0}, "[policy] watch_interval = 0 must be a number of seconds, more"),
    ({"watch_interval": True}, "[policy] watch_interval = True must be a number"),
    ({"reload_interval": -1}, "[policy] reload_interval = -1 must be a number of seconds, 0"),
    ({"reload_interval": float("inf")}, "[policy] reload_interval = inf must be"),
]


@pytest.mark.parametrize(("table", "message"), INVALID_SETTINGS,
                         ids=[message[:40] for _, message in INVALID_SETTINGS])
def test_settings_invalid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          table: dict[str, Any], message: str) -> None:
    monkeypatch.delenv("FONTE_TEST_UNSET", raising=False)

    with pytest.raises(ConfigError) as raised:
        policy_settings_from_table(table, tmp_path)

    assert message in str(raised.value)
    assert "pw" not in str(raised.value).replace("password", "")


# The SQL store, on SQLite


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'policy.db'}"


async def execute(url: str, statement: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def test_published_rows_load_as_files(catalog: Catalog, sqlite_url: str) -> None:
    published = await publish_policy(sqlite_url, default_policy_dir(), Notification(),
                                     catalog=catalog)
    model_text, purposes = read_model_files(default_policy_dir())

    engine = await database_loader(catalog, sqlite_url, model_text, purposes)()

    from_files = PolicyEngine.from_directory(catalog)
    assert engine.version == from_files.version == published.version
    assert list(engine.rules) == list(from_files.rules)
    assert engine.purposes == from_files.purposes
    assert published.receivers is None
    assert engine.origin.endswith("policy.db table casbin_rule")


async def test_publish_replaces_all_rows(catalog: Catalog, sqlite_url: str,
                                         policy_dir: Path) -> None:
    await publish_policy(sqlite_url, default_policy_dir(), Notification(), catalog=catalog)
    append_row(policy_dir, DPO_ROW)

    published = await publish_policy(sqlite_url, policy_dir, Notification(), catalog=catalog)

    rows = await read_rows(sqlite_url)
    assert len(rows) == published.rows
    assert rows.count(["p", "dpo", "non_personal", "compliance", "allow", "-"]) == 1


async def test_publish_rejects_broken_policy(catalog: Catalog, sqlite_url: str,
                                             policy_dir: Path) -> None:
    first = await publish_policy(sqlite_url, default_policy_dir(), Notification(),
                                 catalog=catalog)
    append_row(policy_dir, BROKEN_ROW)

    with pytest.raises(PolicyError, match="no_such_category"):
        await publish_policy(sqlite_url, policy_dir, Notification(), catalog=catalog)

    assert len(await read_rows(sqlite_url)) == first.rows


async def test_missing_table_names_fix(sqlite_url: str) -> None:
    with pytest.raises(PolicyError) as raised:
        await read_rows(sqlite_url)

    assert "table casbin_rule" in str(raised.value)
    assert "fonte policy push" in str(raised.value)


async def test_empty_table_raises(catalog: Catalog, sqlite_url: str) -> None:
    await publish_policy(sqlite_url, default_policy_dir(), Notification(), catalog=catalog)
    await execute(sqlite_url, "DELETE FROM casbin_rule")

    with pytest.raises(PolicyError, match="is empty; run `fonte policy push"):
        await read_rows(sqlite_url)


async def test_unknown_ptype_row_rejected(catalog: Catalog, sqlite_url: str) -> None:
    await publish_policy(sqlite_url, default_policy_dir(), Notification(), catalog=catalog)
    await execute(sqlite_url, "INSERT INTO casbin_rule (ptype, v0, v1, v2, v3, v4) "
                              "VALUES ('P', 'dpo', 'financial', '*', 'deny', '-')")
    model_text, purposes = read_model_files(default_policy_dir())

    with pytest.raises(PolicyError, match="starts with 'P'"):
        await database_loader(catalog, sqlite_url, model_text, purposes)()


async def test_empty_value_row_rejected(catalog: Catalog, sqlite_url: str) -> None:
    await publish_policy(sqlite_url, default_policy_dir(), Notification(), catalog=catalog)
    await execute(sqlite_url, "INSERT INTO casbin_rule (ptype, v0, v1, v2, v3, v4) "
                              "VALUES ('p', 'dpo', 'financial', '*', 'allow', '')")

    with pytest.raises(PolicyError, match="has an empty value"):
        await read_rows(sqlite_url)


async def test_unreachable_database_hides_password(catalog: Catalog) -> None:
    url = f"postgresql+asyncpg://fonte:s3cret-pw@127.0.0.1:{closed_port()}/fonte"

    with pytest.raises(PolicyError) as raised:
        await read_rows(url)

    message = str(raised.value)
    assert "database 'fonte' at 127.0.0.1:" in message
    assert "check that the database server is running" in message
    assert "s3cret-pw" not in message


async def test_database_policy_opens_and_reloads(catalog: Catalog, sqlite_url: str,
                                                 policy_dir: Path) -> None:
    await publish_policy(sqlite_url, default_policy_dir(), Notification(), catalog=catalog)
    settings = PolicySettings(source="database", directory=policy_dir, database_url=sqlite_url)
    holder = await open_policy(catalog, settings)
    try:
        append_row(policy_dir, DPO_ROW)
        await publish_policy(sqlite_url, policy_dir, Notification(), catalog=catalog)
        await holder.reload("test")
        assert dpo_reads_ids(holder.current)

        await execute(sqlite_url, "DROP TABLE casbin_rule")
        assert await holder.reload("test") is False
        assert dpo_reads_ids(holder.current)
        assert "fonte policy push" in (holder.status().last_error or "")
    finally:
        await holder.aclose()


async def test_redis_failure_keeps_stored_rows(catalog: Catalog, sqlite_url: str,
                                               policy_dir: Path) -> None:
    append_row(policy_dir, DPO_ROW)
    notify = Notification("redis", f"redis://127.0.0.1:{closed_port()}/0",
                          redis_password="s3cret-pw")

    with pytest.raises(PolicyError) as raised:
        await publish_policy(sqlite_url, policy_dir, notify, catalog=catalog)

    assert "the policy rows are stored, but publishing on Redis channel" in str(raised.value)
    assert "s3cret-pw" not in str(raised.value)
    assert ["p", "dpo", "non_personal", "compliance", "allow", "-"] in await read_rows(sqlite_url)


async def test_push_stores_policy(sqlite_url: str) -> None:
    published = await push(sqlite_url)

    assert published.rows == len(await read_rows(sqlite_url))
    assert published.receivers is None


INVALID_PUSH: list[tuple[dict[str, Any], str]] = [
    ({"redis": "redis://cache.test", "pg_notify": True}, "not both"),
    ({"pg_notify": True}, "--pg-notify needs a PostgreSQL database"),
    ({"password_env": "FONTE_TEST_UNSET"}, "--password-env names 'FONTE_TEST_UNSET'"),
    ({"redis": "redis://:pw@cache.test"}, "--redis must not contain a password"),
    ({"redis": "redis://cache.test", "redis_password_env": "FONTE_TEST_UNSET"},
     "--redis-password-env names 'FONTE_TEST_UNSET', which is not set"),
]


@pytest.mark.parametrize(("options", "message"), INVALID_PUSH,
                         ids=[message[:30] for _, message in INVALID_PUSH])
async def test_push_invalid_options(sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
                                    options: dict[str, Any], message: str) -> None:
    monkeypatch.delenv("FONTE_TEST_UNSET", raising=False)

    with pytest.raises(ConfigError, match=message):
        await push(sqlite_url, **options)

    with pytest.raises(PolicyError, match="table casbin_rule"):
        await read_rows(sqlite_url)


@pytest.mark.parametrize(("database", "message"), [
    ("not a url", "--database is not a valid SQLAlchemy URL"),
    ("postgresql+asyncpg://fonte:pw@db.test/fonte", "--database must not contain a password"),
    ("sqlite:///policy.db", "--database driver 'sqlite' is not an asyncio driver"),
    ("postgresql://fonte@db.test/fonte", "--database driver 'postgresql' is not an asyncio"),
    ("nosuch://db.test/fonte", "--database driver 'nosuch' is not an asyncio driver"),
])
async def test_push_invalid_database(database: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        await push(database)
