"""Tests of the gateway's own purge schedule, with an injected clock and sleep."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import httpx
import pytest
from checkpoint_support import make_event, new_key, publish, run_sql
from conftest import start_harness

from gateway.audit.bundle import write_bundle
from gateway.audit.keys import CheckpointKey, load_or_create_signing_key
from gateway.audit.maintenance import RetentionSchedule
from gateway.audit.record import AuditEvent
from gateway.audit.retention import PurgeResult
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.verify import verify_store
from gateway.config import load_settings
from gateway.demo.data import DemoData
from gateway.errors import ConfigError

NOW = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)


def event_at(index: int, time: str) -> AuditEvent:
    return cast(AuditEvent, {**make_event(index), "time": time})


async def write_log(path: Path, key: CheckpointKey) -> None:
    """Records 1-3 of 2025 with a checkpoint at 3, and records 4-5 of December 2026."""
    store = await SQLiteAuditStore.open(path, checkpoint_key=key)
    for index in range(1, 4):
        await store.append(event_at(index, "2025-01-01T00:00:00.000Z"))
    await store.checkpoint()
    for index in (4, 5):
        await store.append(event_at(index, "2026-12-01T00:00:00.000Z"))
    await store.close()


def bodies(path: Path) -> list[dict[str, object]]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT body FROM audit_record ORDER BY seq").fetchall()
    return [json.loads(body) for (body,) in rows]


class FakeSleep:
    """Records each requested delay and lets the schedule run ``runs`` times, then blocks."""

    def __init__(self, runs: int) -> None:
        self.delays: list[float] = []
        self.blocked = asyncio.Event()
        self._runs = runs

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if len(self.delays) > self._runs:
            self.blocked.set()
            await asyncio.Event().wait()


async def test_schedule_purges_with_clock(tmp_path: Path) -> None:
    path, key = tmp_path / "audit.db", new_key()
    await write_log(path, key)
    public = publish(tmp_path / "public", key)
    schedule = RetentionSchedule(path, public, 12, clock=lambda: NOW)

    result = await schedule.run_once()

    assert result is not None
    assert (result.through_seq, result.records, result.record_seq) == (3, 3, 6)
    assert result.cutoff == "2025-12-05T06:00:00.000Z"
    purge = bodies(path)[-1]
    assert purge["kind"] == "purge"
    assert purge["time"] == "2026-12-05T06:00:00.000Z"
    assert purge["details"] == {
        "through_seq": 3, "head_hash": result.head_hash, "records": 3,
        "cutoff": "2025-12-05T06:00:00.000Z", "retention_months": 12,
    }
    report = await verify_store(path, public_keys={key.name: key.private_key.public_key()})
    assert report.ok, report.reason
    assert report.first_seq == 4


async def test_schedule_skips_young_log(tmp_path: Path) -> None:
    path, key = tmp_path / "audit.db", new_key()
    await write_log(path, key)
    # With the wrong keys the log would not verify, so a skipped run shows no error.
    schedule = RetentionSchedule(path, tmp_path / "no-keys", 24, clock=lambda: NOW)

    result = await schedule.run_once()

    assert result is not None
    assert (result.through_seq, result.cutoff) == (0, "2024-12-05T06:00:00.000Z")
    assert len(bodies(path)) == 5


async def test_schedule_keeps_tampered_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, key = tmp_path / "audit.db", new_key()
    await write_log(path, key)
    run_sql(path, "UPDATE audit_record SET body = replace(body, 'emp-17', 'emp-18') "
            "WHERE seq = 2")
    schedule = RetentionSchedule(path, publish(tmp_path / "public", key), 12,
                                 clock=lambda: NOW)

    with caplog.at_level(logging.ERROR, logger="gateway.audit.maintenance"):
        result = await schedule.run_once()

    assert result is None
    assert len(bodies(path)) == 5
    assert caplog.messages == [
        f"scheduled audit purge of {path} failed: audit log broken at record 2: content "
        "changed (1 record verified before it); nothing was purged, investigate first"
    ]


async def test_schedule_waits_then_repeats(tmp_path: Path) -> None:
    path, key = tmp_path / "audit.db", new_key()
    await write_log(path, key)
    sleep = FakeSleep(runs=2)
    schedule = RetentionSchedule(path, publish(tmp_path / "public", key), 12,
                                 first_delay=600, interval=86_400, clock=lambda: NOW,
                                 sleep=sleep)

    schedule.start()
    await sleep.blocked.wait()
    await schedule.close()

    assert sleep.delays == [600, 86_400, 86_400]
    kinds = [body.get("kind") for body in bodies(path)]
    # The second run finds nothing older than the last checkpoint, so one purge record.
    assert kinds == [None, None, "purge"]


def test_schedule_rejects_bad_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        RetentionSchedule(tmp_path / "audit.db", tmp_path, 24, interval=0)

    assert str(caught.value) == (
        "first_delay must be at least 0 and interval positive, not 600.0 and 0"
    )


def settings_file(tmp_path: Path, audit: str) -> Path:
    path = tmp_path / "fonte.toml"
    path.write_text(
        '[gateway]\ndata_dir = "data"\n[auth]\ndevelopment_tokens = true\n'
        f"[audit]\n{audit}\n"
        '[systems.crm]\ndialect = "salesforce"\nlogin_url = "https://crm.example"\n'
        'client_id_env = "TEST_CRM_ID"\nclient_secret_env = "TEST_CRM_SECRET"\n',
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(("audit", "expected"), [("", True), ("auto_purge = false", False)])
def test_auto_purge_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, audit: str, expected: bool
) -> None:
    monkeypatch.setenv("TEST_CRM_ID", "crm-client")
    monkeypatch.setenv("TEST_CRM_SECRET", "crm-secret")

    settings = load_settings(settings_file(tmp_path, audit))

    assert settings.audit_auto_purge is expected


def test_auto_purge_rejects_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CRM_ID", "crm-client")
    monkeypatch.setenv("TEST_CRM_SECRET", "crm-secret")

    with pytest.raises(ConfigError) as caught:
        load_settings(settings_file(tmp_path, 'auto_purge = "no"'))

    assert str(caught.value) == "[audit] auto_purge = 'no' must be true or false"


@pytest.mark.parametrize("enabled", [True, False])
async def test_gateway_runs_schedule_by_setting(
    demo_data: DemoData, tmp_path: Path, enabled: bool
) -> None:
    overrides = {"audit_auto_purge": enabled}
    async with start_harness(demo_data, tmp_path / "data", overrides=overrides) as harness:
        retention = harness.gateway_app.state.gateway.retention

    assert (retention is not None) is enabled


async def test_schedule_purges_while_gateway_serves(
    demo_data: DemoData, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    key = load_or_create_signing_key(data_dir / "keys" / "audit-checkpoint.pem",
                                     name="fonte-audit-1")
    await write_log(data_dir / "audit.sqlite3", key)
    lookup = "{ customers(first: 1) { edges { node { name } } } }"
    overrides = {"audit_auto_purge": False}
    async with start_harness(demo_data, data_dir, overrides=overrides) as harness:
        schedule = RetentionSchedule(data_dir / "audit.sqlite3",
                                     harness.settings.checkpoint_public_key_dir, 12,
                                     clock=lambda: NOW)
        responses = await asyncio.gather(
            *(harness.query(lookup) for _ in range(5)), schedule.run_once(),
            *(harness.query(lookup) for _ in range(5)))

    result = responses[5]
    assert isinstance(result, PurgeResult)
    assert (result.through_seq, result.records) == (3, 3)
    statuses = [response.status_code for response in responses
                if isinstance(response, httpx.Response)]
    assert statuses == [200] * 10
    kinds = [body.get("kind") for body in bodies(data_dir / "audit.sqlite3")]
    assert kinds.count("purge") == 1
    assert len(kinds) == 13
    report = await verify_store(data_dir / "audit.sqlite3",
                                public_keys={key.name: key.private_key.public_key()})
    assert report.ok, report.reason
    assert (report.first_seq, report.records) == (4, 13)


async def test_second_purge_continues_from_newer_checkpoint(tmp_path: Path) -> None:
    path, key = tmp_path / "audit.db", new_key()
    await write_log(path, key)
    public = publish(tmp_path / "public", key)
    await RetentionSchedule(path, public, 12, clock=lambda: NOW).run_once()
    store = await SQLiteAuditStore.open(path, checkpoint_key=key)
    await store.append(event_at(7, "2026-12-05T07:00:00.000Z"))
    await store.checkpoint()
    await store.append(event_at(8, "2026-12-05T08:00:00.000Z"))
    await store.close()
    later = datetime(2028, 1, 1, tzinfo=UTC)

    result = await RetentionSchedule(path, public, 12, clock=lambda: later).run_once()
    summary = await write_bundle(path, public, tmp_path / "bundle")

    assert result is not None
    # Records 1-3 went in the first purge. Record 6, the first purge record, goes too.
    assert (result.through_seq, result.records, result.record_seq) == (7, 4, 9)
    assert [body["seq"] for body in bodies(path)] == [8, 9]
    report = await verify_store(path, public_keys={key.name: key.private_key.public_key()})
    assert report.ok, report.reason
    assert (report.first_seq, report.records) == (8, 2)
    assert summary.verifier_output == (
        "OK: 2 records and 4 checkpoints verified; records 1-7 were purged up to a signed "
        "checkpoint; record 9 is after the newest checkpoint and verified by the hash "
        "chain only"
    )
