"""Policy reloads across processes, on the local PostgreSQL and Redis servers.

Each test starts two worker processes that load the policy from a
throwaway PostgreSQL database, as gateways with ``[policy] source =
"database"`` do, and serve their policy status over HTTP on a loopback
port. The test publishes a changed policy and polls both workers until
they report its version, within ``DEADLINE`` seconds. The workers are this
file run as a script (see ``worker_main`` at the bottom).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.catalog import load_catalog
from gateway.policy import default_policy_dir
from gateway.policy_reload import NotifyKind, PolicySettings
from gateway.policy_store import Notification, Published, publish_policy
from gateway.policy_watch import CONNECTION_NAME, Backoff, PolicyWatchers, open_policy

pytestmark = pytest.mark.loopback

# Seconds a test waits for both workers to report a version.
DEADLINE = 20.0
POLL_INTERVAL = 0.05
DPO_ROW = "p, dpo, non_personal, compliance, allow, -"
TESTS_DIR = Path(__file__).resolve().parent.parent


@dataclass
class Worker:
    """One worker process and where it reports."""

    process: subprocess.Popen[bytes]
    port_file: Path
    log_file: Path
    port: int | None = None

    def log_tail(self) -> str:
        lines = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-30:])

    async def status(self, client: httpx.AsyncClient) -> dict[str, Any] | None:
        """Return the worker's policy status, or None while it is not serving yet."""
        if self.process.poll() is not None:
            pytest.fail(f"worker {self.process.pid} exited with {self.process.returncode}:\n"
                        f"{self.log_tail()}")
        if self.port is None:
            if not self.port_file.is_file():
                return None
            self.port = int(self.port_file.read_text(encoding="utf-8"))
        response = await client.get(f"http://127.0.0.1:{self.port}/status")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


@contextmanager
def start_workers(tmp_path: Path, config: dict[str, Any], count: int = 2) -> Iterator[list[Worker]]:
    """Start ``count`` workers with ``config``, and terminate them on exit."""
    workers: list[Worker] = []
    environment = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    try:
        for number in range(count):
            port_file = tmp_path / f"worker-{number}.port"
            log_file = tmp_path / f"worker-{number}.log"
            arguments = json.dumps({**config, "port_file": str(port_file)})
            with log_file.open("wb") as log_handle:
                process = subprocess.Popen([sys.executable, __file__, arguments],
                                           stdout=log_handle, stderr=subprocess.STDOUT,
                                           env=environment)
            workers.append(Worker(process, port_file, log_file))
        yield workers
    finally:
        for worker in workers:
            worker.process.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(timeout=10)


async def wait_for(workers: list[Worker], client: httpx.AsyncClient, version: str, *,
                   listening: bool) -> list[dict[str, Any]]:
    """Poll every worker until each reports ``version`` (and a connected listener)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        statuses = [await worker.status(client) for worker in workers]
        if all(_reached(status, version, listening) for status in statuses):
            return [status for status in statuses if status is not None]
        if loop.time() > deadline:
            logs = "\n\n".join(worker.log_tail() for worker in workers)
            pytest.fail(f"workers did not reach policy {version} within {DEADLINE:g} s: "
                        f"{statuses}\n{logs}")
        await asyncio.sleep(POLL_INTERVAL)


def _reached(status: dict[str, Any] | None, version: str, listening: bool) -> bool:
    if status is None or status["version"] != version:
        return False
    states = list(status["notifications"].values())
    return not listening or (bool(states) and all(state == "listening" for state in states))


@pytest.fixture
async def database() -> AsyncIterator[str]:
    from services import postgres_url

    async with postgres_url() as url:
        yield url


@pytest.fixture
def changed_policy(tmp_path: Path) -> Path:
    directory = tmp_path / "changed"
    shutil.copytree(default_policy_dir(), directory)
    with (directory / "policy.csv").open("a", encoding="utf-8") as rules:
        rules.write(DPO_ROW + "\n")
    return directory


@asynccontextmanager
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    # With trust_env=False, a proxy from the environment never sees loopback traffic.
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        yield client


def worker_config(database_url: str, notify: NotifyKind, reload_interval: float,
                  redis_url: str | None = None, channel: str = "") -> dict[str, Any]:
    return {"database_url": database_url, "notify": notify, "redis_url": redis_url,
            "redis_channel": channel, "reload_interval": reload_interval,
            "directory": str(default_policy_dir())}


async def test_redis_notification_reaches_workers(database: str, tmp_path: Path,
                                                  changed_policy: Path) -> None:
    from services import redis_url

    async with redis_url() as redis_target, http_client() as client:
        import redis.asyncio as aioredis

        channel = redis_target.prefix + "policy"
        notify = Notification("redis", redis_target.url, redis_channel=channel)
        first = await publish_policy(database, default_policy_dir(), Notification())
        config = worker_config(database, "redis", 0, redis_target.url, channel)
        admin = aioredis.from_url(redis_target.url)
        try:
            with start_workers(tmp_path, config) as workers:
                await wait_for(workers, client, first.version, listening=True)

                changed = await publish_policy(database, changed_policy, notify)
                assert changed.receivers == 2
                await wait_for(workers, client, changed.version, listening=False)

                # Drop both subscriptions, so the workers must subscribe again.
                names = {f"{CONNECTION_NAME}-{worker.process.pid}" for worker in workers}
                assert await _kill_redis_clients(admin, names) == 2
                await _wait_for_subscribers(admin, channel, 2)
                restored = await publish_policy(database, default_policy_dir(), notify)
                assert restored.receivers == 2
                await wait_for(workers, client, restored.version, listening=True)
        finally:
            await admin.aclose()


async def _kill_redis_clients(admin: Any, names: set[str]) -> int:
    killed = 0
    for entry in await admin.client_list(_type="pubsub"):
        if entry.get("name") in names:
            killed += int(await admin.execute_command("CLIENT", "KILL", "ID", entry["id"]))
    return killed


async def _wait_for_subscribers(admin: Any, channel: str, expected: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        counts = dict(await admin.pubsub_numsub(channel))
        count = next(iter(counts.values()), 0)
        if count == expected:
            return
        if loop.time() > deadline:
            pytest.fail(f"Redis channel {channel!r} has {count} subscribers after "
                        f"{DEADLINE:g} s, expected {expected}")
        await asyncio.sleep(POLL_INTERVAL)


async def test_postgres_notification_reaches_workers(database: str, tmp_path: Path,
                                                     changed_policy: Path) -> None:
    notify = Notification("postgres")
    first = await publish_policy(database, default_policy_dir(), Notification())
    async with http_client() as client:
        with start_workers(tmp_path, worker_config(database, "postgres", 0)) as workers:
            await wait_for(workers, client, first.version, listening=True)

            changed = await publish_policy(database, changed_policy, notify)
            await wait_for(workers, client, changed.version, listening=False)

            # End both listening sessions, so the workers must listen again.
            old = await _listener_pids(database)
            assert len(old) == 2
            await _execute(database, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND application_name LIKE "
                           f"'{CONNECTION_NAME}-%'")
            await _wait_for_new_listeners(database, old)
            restored = await publish_policy(database, default_policy_dir(), notify)
            await wait_for(workers, client, restored.version, listening=True)


async def _execute(url: str, statement: str) -> list[Any]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            return list((await connection.execute(text(statement))).all())
    finally:
        await engine.dispose()


async def _listener_pids(url: str) -> set[int]:
    rows = await _execute(url, "SELECT pid FROM pg_stat_activity WHERE datname = "
                          f"current_database() AND application_name LIKE '{CONNECTION_NAME}-%'")
    return {int(row[0]) for row in rows}


async def _wait_for_new_listeners(url: str, old: set[int]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        new = await _listener_pids(url) - old
        if len(new) == len(old):
            return
        if loop.time() > deadline:
            pytest.fail(f"{len(new)} of {len(old)} workers listen again after {DEADLINE:g} s")
        await asyncio.sleep(POLL_INTERVAL)


async def test_periodic_reload_without_notification(database: str, tmp_path: Path,
                                                    changed_policy: Path) -> None:
    first = await publish_policy(database, default_policy_dir(), Notification())
    async with http_client() as client:
        with start_workers(tmp_path, worker_config(database, "none", 0.5)) as workers:
            await wait_for(workers, client, first.version, listening=False)

            changed: Published = await publish_policy(database, changed_policy, Notification())

            statuses = await wait_for(workers, client, changed.version, listening=False)
            assert [status["last_error"] for status in statuses] == [None, None]


# The worker process


def worker_main(arguments: str) -> None:
    """Serve one worker's policy status at ``GET /status`` until SIGTERM."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    config = json.loads(arguments)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    settings = PolicySettings(
        source="database", directory=Path(config["directory"]),
        database_url=config["database_url"], notify=config["notify"],
        redis_url=config["redis_url"], redis_channel=config["redis_channel"] or "fonte:policy",
        watch_files=False, reload_interval=config["reload_interval"])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    # Listening now queues the test's first request until uvicorn serves,
    # which it starts only after the lifespan has written the port file.
    listener.listen()
    port = listener.getsockname()[1]
    port_file = Path(config["port_file"])

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The same start-up and shut-down as the gateway's lifespan.
        holder = await open_policy(load_catalog(), settings)
        watchers = PolicyWatchers(holder, settings, backoff=Backoff(initial=0.1, maximum=1.0))
        watchers.start()
        app.state.holder, app.state.watchers = holder, watchers
        staged = port_file.with_suffix(".tmp")
        staged.write_text(str(port), encoding="utf-8")
        staged.replace(port_file)
        try:
            yield
        finally:
            await watchers.stop()
            await holder.aclose()

    async def status(request: Request) -> JSONResponse:
        current = request.app.state.holder.status()
        return JSONResponse({"version": current.version, "last_error": current.last_error,
                             "notifications": request.app.state.watchers.status()})

    app = Starlette(routes=[Route("/status", status)], lifespan=lifespan)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    server.run(sockets=[listener])


if __name__ == "__main__":
    worker_main(sys.argv[1])
