"""Concurrency test of the PostgreSQL audit store: four gateway processes, one chain.

``fonte demo --write-settings`` serves the demo CRM and ERP. Four ``fonte serve``
processes read them, each with its own port and data dir, and all append to one
throwaway PostgreSQL database and sign checkpoints with one shared key. Clients send
queries that read personal fields to all four for ``FONTE_CONCURRENCY_SECONDS``
seconds (default 60, a full minute; set 15 for a shorter run) and keep the ``X-Request-ID`` of
every HTTP 200 response. After a clean stop, the log must hold seq 1 to N with no
gap, one record per counted request id and no other, and verify with its checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from services import postgres_url
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.audit.keys import load_public_keys
from gateway.audit.verify import verify_store
from gateway.identity import issue_token, load_or_create_signing_key

pytestmark = pytest.mark.loopback

WORKERS = 4
CLIENTS_PER_WORKER = 4
DEFAULT_SECONDS = 60.0
CUSTOMERS = 100
START_SECONDS = 60.0
STOP_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 30.0
TAIL_LINES = 30

# vatNumber and the contacts' e-mail addresses are personal fields, so every
# response has an audit record.
QUERY = """query ConcurrencyLoad($first: Int!) {
  customers(first: $first) { edges { node { id vatNumber contacts { email } } } }
}"""
ENDPOINT_LINE = re.compile(r"GraphQL endpoint:\s+http://127\.0\.0\.1:(\d+)/graphql")


def load_seconds() -> float:
    value = os.environ.get("FONTE_CONCURRENCY_SECONDS", str(DEFAULT_SECONDS))
    try:
        seconds = float(value)
    except ValueError:
        pytest.fail(f"FONTE_CONCURRENCY_SECONDS={value!r} is not a number of seconds")
    if seconds <= 0:
        pytest.fail(f"FONTE_CONCURRENCY_SECONDS={value!r} must be positive")
    return seconds


@dataclass
class Process:
    """A gateway or demo process, the leader of its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def log_tail(self) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            parts.append(f"--- {self.name} {path.name}\n" + "\n".join(lines[-TAIL_LINES:]))
        return "\n".join(parts)

    def stop(self) -> int:
        """Stop with SIGINT, as Ctrl+C does. SIGKILL the group after STOP_SECONDS."""
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_SECONDS)
            return -signal.SIGKILL


def start(name: str, arguments: list[str], log_dir: Path) -> Process:
    stdout_path, stderr_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
    command = [sys.executable, "-c", "from gateway.cli import main; main()", *arguments]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=environment,
                                   start_new_session=True)
    return Process(name, process, stdout_path, stderr_path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_demo(demo: Process) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        text_out = demo.stdout_path.read_text(encoding="utf-8", errors="replace")
        if ENDPOINT_LINE.search(text_out):
            return
        if demo.process.poll() is not None:
            pytest.fail(f"demo exited with {demo.process.returncode}:\n{demo.log_tail()}")
        time.sleep(0.1)
    pytest.fail(f"demo printed no endpoint within {START_SECONDS:g} s:\n{demo.log_tail()}")


def wait_for_health(worker: Process, port: int) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            pytest.fail(f"{worker.name} exited with {worker.process.returncode}:\n"
                        f"{worker.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"{worker.name} was not healthy within {START_SECONDS:g} s:\n"
                f"{worker.log_tail()}")


def worker_settings(demo_settings: str, *, port: int, data_dir: Path, public_key: Path,
                    store_url: str, checkpoint_key: Path) -> str:
    """Turn the demo's settings into one worker's: its port, data dir and the shared audit."""
    settings = demo_settings.replace("port = 8001", f"port = {port}")
    settings = re.sub(r'data_dir = ".*"', f'data_dir = "{data_dir}"', settings)
    settings = settings.replace("development_tokens = true",
                                f'public_key_file = "{public_key}"')
    return settings + "\n".join([
        "", "[limits]", "requests_per_second = 0", "",
        "[audit]", f'store = "{store_url}"', f'checkpoint_key_file = "{checkpoint_key}"',
        "checkpoint_interval = 1", "",
    ])


@dataclass
class Observed:
    """What the clients saw: the request ids of HTTP 200 responses, and other statuses."""

    request_ids: list[str] = field(default_factory=list)
    other: Counter[str] = field(default_factory=Counter)


async def run_client(client: httpx.AsyncClient, port: int, token: str, deadline: float,
                     observed: Observed) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    payload = {"query": QUERY, "variables": {"first": 5}}
    while time.monotonic() < deadline:
        try:
            response = await client.post(f"http://127.0.0.1:{port}/graphql", json=payload,
                                         headers=headers)
        except httpx.HTTPError as error:
            observed.other[type(error).__name__] += 1
            continue
        body = response.json()
        if response.status_code == 200 and "errors" not in body:
            observed.request_ids.append(response.headers["X-Request-ID"])
        else:
            observed.other[f"HTTP {response.status_code} {body.get('errors')!r}"[:200]] += 1


async def drive_load(ports: list[int], token: str, seconds: float) -> Observed:
    observed = Observed()
    deadline = time.monotonic() + seconds
    timeout = httpx.Timeout(REQUEST_TIMEOUT_SECONDS)
    async with httpx.AsyncClient(timeout=timeout) as client:
        await asyncio.gather(*(
            run_client(client, port, token, deadline, observed)
            for port in ports for _ in range(CLIENTS_PER_WORKER)
        ))
    return observed


async def read_log(url: str) -> list[tuple[int, str]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT seq, request_id FROM audit_record ORDER BY seq"))
            return [(int(seq), str(request_id)) for seq, request_id in rows]
    finally:
        await engine.dispose()


@contextlib.contextmanager
def running(processes: list[Process]) -> Iterator[list[Process]]:
    try:
        yield processes
    finally:
        for process in reversed(processes):
            process.stop()


async def test_four_workers_write_one_chain(tmp_path: Path) -> None:
    seconds = load_seconds()
    async with postgres_url() as store_url:
        logs = tmp_path / "logs"
        logs.mkdir()
        settings_file = tmp_path / "demo-settings.toml"
        demo = start("demo", ["demo", "--port", "0", "--customers", str(CUSTOMERS),
                              "--data-dir", str(tmp_path / "demo-data"),
                              "--write-settings", str(settings_file)], logs)
        with running([demo]) as processes:
            await asyncio.to_thread(wait_for_demo, demo)
            token_key = load_or_create_signing_key(tmp_path / "token-signing.pem")
            public_key = tmp_path / "token-public.pem"
            public_key.write_bytes(token_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
            checkpoint_key = tmp_path / "audit-checkpoint.pem"
            demo_settings = settings_file.read_text(encoding="utf-8")

            ports = []
            for number in range(WORKERS):
                port = free_port()
                config = tmp_path / f"worker-{number}.toml"
                config.write_text(worker_settings(
                    demo_settings, port=port, data_dir=tmp_path / f"worker-{number}",
                    public_key=public_key, store_url=store_url,
                    checkpoint_key=checkpoint_key), encoding="utf-8")
                # One at a time, so that the first creates the shared checkpoint key.
                worker = start(f"worker-{number}", ["serve", "--config", str(config),
                                                    "--log-level", "warning"], logs)
                processes.append(worker)
                await asyncio.to_thread(wait_for_health, worker, port)
                ports.append(port)

            token = issue_token(token_key, user="concurrency-test", roles=["sales"],
                                purpose="sales")
            observed = await drive_load(ports, token, seconds)

            for worker in processes[1:]:
                code = worker.stop()
                assert code == 0, f"{worker.name} exited with {code}:\n{worker.log_tail()}"

        log = await read_log(store_url)
        public_keys = load_public_keys(tmp_path / "worker-0" / "keys" / "audit-checkpoint-public")
        report = await verify_store(store_url, public_keys=public_keys)

    counted = len(observed.request_ids)
    print(f"{WORKERS} workers, {seconds:g} s: {counted} audited responses, "
          f"{counted / seconds:.0f} per second, other outcomes {dict(observed.other)}; "
          f"verify: {report.summary()}")
    assert observed.other == Counter()
    assert counted > 0
    assert [seq for seq, _ in log] == list(range(1, counted + 1))
    assert len(set(observed.request_ids)) == counted
    assert sorted(request_id for _, request_id in log) == sorted(observed.request_ids)
    assert report.ok, report.summary()
    assert report.records == counted
    assert report.covered == counted
