"""Triggers that make a running gateway reload its policy.

``PolicyWatchers`` starts, from the ``[policy]`` settings, the triggers of
one gateway process and stops them at shutdown:

- a poll of the mtimes of ``model.conf``, ``policy.csv`` and
  ``purposes.toml`` every ``watch_interval`` seconds (``watch_files``),
- a SIGHUP handler, when the process runs its event loop in the main thread,
- a subscription to a Redis channel or a PostgreSQL ``LISTEN`` on
  ``fonte_policy`` (``notify``), reconnected with backoff when the server
  goes away, and reloading after each (re)connection because notifications
  sent while disconnected are lost,
- a reload every ``reload_interval`` seconds, which catches any
  notification that was lost all the same.

Every trigger calls ``PolicyHolder.reload`` or ``request_reload``, which run
one load at a time and fold the triggers that arrive meanwhile into one
more load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from sqlalchemy.engine import make_url

from gateway.catalog import Catalog
from gateway.policy import PolicyEngine
from gateway.policy_reload import Loader, PolicyHolder, PolicySettings, file_loader
from gateway.policy_store import (
    CONNECT_TIMEOUT,
    POSTGRES_CHANNEL,
    load_from_database,
    read_model_files,
    redis_server,
)

log = logging.getLogger("gateway.policy")

Sleep = Callable[[float], Awaitable[None]]
WATCHED_FILES = ("model.conf", "policy.csv", "purposes.toml")
# Seconds between liveness checks of a notification connection. A check
# that gets no reply within the same time counts as a lost connection.
PING_INTERVAL = 30.0
# The name a notification connection shows in Redis CLIENT LIST and in
# PostgreSQL pg_stat_activity.application_name is this prefix and the pid.
CONNECTION_NAME = "fonte-policy-watch"
_MAX_PAYLOAD_LOGGED = 64


def policy_loader(catalog: Catalog, settings: PolicySettings) -> Loader:
    """Return the loader for ``settings.source``.

    The database loader reads ``model.conf`` and ``purposes.toml`` again on
    every load, so a reload also picks up their changes.
    """
    if settings.source == "files":
        return file_loader(catalog, settings.directory)
    url = settings.database_url
    if url is None:
        raise ValueError('PolicySettings(source="database") needs database_url')
    directory = settings.directory

    async def load() -> PolicyEngine:
        model_text, purposes = await asyncio.to_thread(read_model_files, directory)
        return await load_from_database(catalog, url, model_text, purposes)

    return load


async def open_policy(catalog: Catalog, settings: PolicySettings) -> PolicyHolder:
    """Load the policy named by ``settings``, raising ``PolicyError`` when that fails.

    A gateway cannot start without a policy, so the first load has no
    previous version to fall back to.
    """
    loader = policy_loader(catalog, settings)
    return PolicyHolder(await loader(), loader)


def _file_state(directory: Path) -> dict[str, tuple[int, int, int] | None]:
    state: dict[str, tuple[int, int, int] | None] = {}
    for name in WATCHED_FILES:
        try:
            stat = (directory / name).stat()
        except OSError:
            state[name] = None
            continue
        # The inode changes when an editor or a deployment replaces the file
        # by a rename. The size catches writes within one mtime tick.
        state[name] = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    return state


async def watch_files(holder: PolicyHolder, directory: Path, interval: float,
                      sleep: Sleep = asyncio.sleep) -> None:
    """Reload whenever a policy file in ``directory`` is changed, created or removed."""
    log.info("watching the policy files in %s every %g s", directory, interval)
    try:
        seen = _file_state(directory)
        # A change made after the policy was loaded but before this first
        # look at the files would otherwise go unnoticed.
        await holder.reload("watching files")
        while True:
            await sleep(interval)
            current = _file_state(directory)
            changed = [name for name in WATCHED_FILES if current[name] != seen[name]]
            if not changed:
                continue
            # The new state counts as seen even when the reload fails, so a
            # broken file is reported once, not on every poll.
            seen = current
            await holder.reload(f"{', '.join(changed)} changed")
    finally:
        log.info("stopped watching the policy files in %s", directory)


async def reload_periodically(holder: PolicyHolder, interval: float,
                              sleep: Sleep = asyncio.sleep) -> None:
    """Reload every ``interval`` seconds."""
    log.info("reloading the policy every %g s", interval)
    try:
        while True:
            await sleep(interval)
            await holder.reload("periodic")
    finally:
        log.info("stopped the periodic policy reload")


def install_sighup_handler(holder: PolicyHolder) -> Callable[[], None] | None:
    """Make SIGHUP reload the policy, and return the function that removes the handler.

    Returns None, and leaves SIGHUP alone, where the platform has no SIGHUP
    or the event loop runs outside the main thread (asyncio handles signals
    only there).
    """
    if not hasattr(signal, "SIGHUP"):
        log.info("SIGHUP does not reload the policy: this platform has no SIGHUP")
        return None
    if threading.current_thread() is not threading.main_thread():
        log.info("SIGHUP does not reload the policy: the event loop runs outside the main "
                 "thread")
        return None
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, holder.request_reload, "SIGHUP")
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        log.warning("SIGHUP does not reload the policy: %s: %s", type(exc).__name__, exc)
        return None
    log.info("SIGHUP reloads the policy")

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)
        log.info("SIGHUP no longer reloads the policy")

    return remove


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnects, in seconds.

    The delay starts at ``initial``, doubles per consecutive failure up to
    ``maximum``, and is scaled by a random factor from 0.5 to 1 so that many
    gateways do not reconnect in step.
    """

    initial: float = 0.5
    maximum: float = 30.0

    def delay(self, failures: int) -> float:
        doublings = min(max(failures - 1, 0), 30)
        return min(self.maximum, self.initial * 2.0 ** doublings) * random.uniform(0.5, 1.0)


class Listener:
    """A notification channel kept connected, where each notification requests a reload.

    ``state`` is ``connecting``, ``listening`` or ``reconnecting``.
    """

    errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)

    def __init__(self, name: str, holder: PolicyHolder, backoff: Backoff, sleep: Sleep,
                 ping_interval: float) -> None:
        self.name = name
        self.state = "connecting"
        self._holder = holder
        self._backoff = backoff
        self._sleep = sleep
        self._ping_interval = ping_interval

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after every error in ``errors``."""
        log.info("%s: listening for policy notifications", self.name)
        failures = 0
        try:
            while True:
                try:
                    await self._listen()
                except self.errors as exc:
                    failures = 1 if self.state == "listening" else failures + 1
                    self.state = "reconnecting"
                    delay = self._backoff.delay(failures)
                    log.warning("%s: connection failed or lost (%s); reconnecting in %.1f s, "
                                "attempt %d", self.name, _describe(exc), delay, failures)
                    await self._sleep(delay)
        finally:
            log.info("%s: stopped listening for policy notifications", self.name)

    async def _listen(self) -> None:
        raise NotImplementedError

    def _connected(self) -> None:
        self.state = "listening"
        log.info("%s: connected", self.name)
        # Notifications sent while this listener was not connected are lost.
        self._holder.request_reload(f"{self.name} connected")

    def _notified(self, payload: object) -> None:
        if isinstance(payload, bytes):
            payload = payload.decode("utf-8", errors="replace")
        excerpt = str(payload)[:_MAX_PAYLOAD_LOGGED]
        log.info("%s: notified of policy %r", self.name, excerpt)
        self._holder.request_reload(f"{self.name} notified {excerpt!r}")


class RedisListener(Listener):
    """Subscribes to a Redis pub/sub channel."""

    errors = (RedisError, OSError, TimeoutError)

    def __init__(self, holder: PolicyHolder, url: str, channel: str, password: str | None, *,
                 backoff: Backoff, sleep: Sleep, ping_interval: float = PING_INTERVAL) -> None:
        super().__init__(f"Redis channel {channel!r} at {redis_server(url)}", holder, backoff,
                         sleep, ping_interval)
        self._url = url
        self._channel = channel
        self._password = password

    async def _listen(self) -> None:
        # redis-py must not retry here, because its silent reconnect would
        # skip the reload that covers the notifications lost meanwhile.
        client = aioredis.from_url(self._url, password=self._password,
                                   client_name=connection_name(),
                                   socket_connect_timeout=CONNECT_TIMEOUT,
                                   socket_keepalive=True, retry=Retry(NoBackoff(), 0))
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            self._connected()
            while True:
                await self._receive_until_next_ping(pubsub)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def _receive_until_next_ping(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        await pubsub.ping()
        deadline = loop.time() + self._ping_interval
        answered = False
        while (remaining := deadline - loop.time()) > 0:
            message = await pubsub.get_message(timeout=remaining)
            if message is None:
                continue
            if message["type"] == "pong":
                answered = True
            elif message["type"] == "message":
                self._notified(message["data"])
        if not answered:
            raise TimeoutError(f"no reply to PING within {self._ping_interval:g} s")


class PostgresListener(Listener):
    """Runs ``LISTEN fonte_policy`` on its own asyncpg connection."""

    errors = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

    def __init__(self, holder: PolicyHolder, url: str, *, backoff: Backoff, sleep: Sleep,
                 ping_interval: float = PING_INTERVAL) -> None:
        parsed = make_url(url)
        super().__init__(f"PostgreSQL channel {POSTGRES_CHANNEL!r} at {parsed.host}:"
                         f"{parsed.port or 5432}/{parsed.database}", holder, backoff, sleep,
                         ping_interval)
        self._arguments = asyncpg_arguments(url)

    async def _listen(self) -> None:
        connection = await asyncpg.connect(
            **self._arguments, timeout=CONNECT_TIMEOUT,
            server_settings={"application_name": connection_name()})
        closed = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _connection: closed.set())
            await connection.add_listener(POSTGRES_CHANNEL, self._on_notify)
            self._connected()
            while not closed.is_set():
                try:
                    await asyncio.wait_for(closed.wait(), self._ping_interval)
                except TimeoutError:
                    await connection.execute("SELECT 1", timeout=self._ping_interval)
            raise ConnectionResetError("the server closed the connection")
        finally:
            await _close_quietly(connection)

    def _on_notify(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self._notified(payload)


async def _close_quietly(connection: Any) -> None:
    if connection.is_closed():
        return
    try:
        await connection.close(timeout=CONNECT_TIMEOUT)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
        connection.terminate()


def connection_name() -> str:
    """Return the name this process gives its notification connections."""
    return f"{CONNECTION_NAME}-{os.getpid()}"


def asyncpg_arguments(url: str) -> dict[str, Any]:
    """Return ``asyncpg.connect`` keyword arguments for a SQLAlchemy PostgreSQL URL.

    NOTE: of the URL's query options only ``ssl`` is passed on.
    """
    parsed = make_url(url)
    arguments: dict[str, Any] = {"host": parsed.host, "port": parsed.port,
                                 "user": parsed.username, "password": parsed.password,
                                 "database": parsed.database}
    ssl = parsed.query.get("ssl")
    if ssl:
        arguments["ssl"] = ssl if isinstance(ssl, str) else ssl[0]
    return {name: value for name, value in arguments.items() if value is not None}


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


class PolicyWatchers:
    """The reload triggers of one gateway process, started and stopped together."""

    def __init__(self, holder: PolicyHolder, settings: PolicySettings, *,
                 sleep: Sleep = asyncio.sleep, backoff: Backoff | None = None,
                 ping_interval: float = PING_INTERVAL) -> None:
        self._holder = holder
        self._settings = settings
        self._sleep = sleep
        self._backoff = backoff or Backoff()
        self._ping_interval = ping_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[Listener] = []
        self._remove_sighup: Callable[[], None] | None = None

    def start(self) -> None:
        """Start every trigger the settings enable. Call it with the event loop running."""
        if self._tasks or self._remove_sighup is not None:
            raise RuntimeError("PolicyWatchers.start() was called twice")
        settings = self._settings
        if settings.watch_files:
            self._spawn("files", watch_files(self._holder, settings.directory,
                                             settings.watch_interval, self._sleep))
        self._remove_sighup = install_sighup_handler(self._holder)
        listener = self._listener()
        if listener is not None:
            self._listeners.append(listener)
            self._spawn("notifications", listener.run())
        if settings.reload_interval > 0:
            self._spawn("periodic", reload_periodically(self._holder, settings.reload_interval,
                                                        self._sleep))

    def status(self) -> dict[str, str]:
        """Return each notification listener's state by its name, for health."""
        return {listener.name: listener.state for listener in self._listeners}

    async def stop(self) -> None:
        """Remove the SIGHUP handler and cancel every watcher task."""
        if self._remove_sighup is not None:
            self._remove_sighup()
            self._remove_sighup = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _listener(self) -> Listener | None:
        settings = self._settings
        if settings.notify == "redis":
            if settings.redis_url is None:
                raise ValueError('PolicySettings(notify="redis") needs redis_url')
            return RedisListener(self._holder, settings.redis_url, settings.redis_channel,
                                 settings.redis_password, backoff=self._backoff,
                                 sleep=self._sleep, ping_interval=self._ping_interval)
        if settings.notify == "postgres":
            if settings.database_url is None:
                raise ValueError('PolicySettings(notify="postgres") needs database_url')
            return PostgresListener(self._holder, settings.database_url, backoff=self._backoff,
                                    sleep=self._sleep, ping_interval=self._ping_interval)
        return None

    def _spawn(self, name: str, watcher: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(watcher, name=f"policy-watch-{name}")
        task.add_done_callback(_report_end)
        self._tasks.append(task)


def _report_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("policy watcher %s stopped by an unexpected error", task.get_name(),
                  exc_info=error)
