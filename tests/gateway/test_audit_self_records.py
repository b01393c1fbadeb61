"""The gateway records changes to itself in the audit log: policy reloads and key rotations."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from conftest import start_harness

from gateway.app import Gateway
from gateway.audit.keys import load_public_keys
from gateway.audit.verify import verify_store
from gateway.demo.data import DemoData
from gateway.policy import default_policy_dir

DPO_ROW = "p, dpo, non_personal, compliance, allow, -"


def bodies(data_dir: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(data_dir / "audit.sqlite3") as connection:
        rows = connection.execute("SELECT body FROM audit_record ORDER BY seq").fetchall()
    return [json.loads(body) for (body,) in rows]


async def test_policy_reload_is_recorded(demo_data: DemoData, tmp_path: Path) -> None:
    policy_dir = tmp_path / "policies"
    shutil.copytree(default_policy_dir(), policy_dir)
    data_dir = tmp_path / "data"

    async with start_harness(demo_data, data_dir, policy_dir=policy_dir) as harness:
        gateway: Gateway = harness.gateway_app.state.gateway
        before = gateway.policy.current.version
        policy_file = policy_dir / "policy.csv"
        policy_file.write_text(policy_file.read_text(encoding="utf-8") + DPO_ROW + "\n",
                               encoding="utf-8")
        assert await gateway.policy.reload("test") is True
        after = gateway.policy.current.version

    records = bodies(data_dir)
    assert len(records) == 1
    assert records[0]["kind"] == "policy_change"
    assert records[0]["actor"] == "fonte-gateway"
    assert records[0]["details"] == {
        "previous_version": before, "version": after, "reason": "test"}


async def test_unchanged_policy_is_not_recorded(demo_data: DemoData, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    async with start_harness(demo_data, data_dir) as harness:
        gateway: Gateway = harness.gateway_app.state.gateway
        assert await gateway.policy.reload("test") is True

    assert bodies(data_dir) == []


async def test_key_rotation_is_recorded(demo_data: DemoData, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with start_harness(demo_data, data_dir) as harness:
        await harness.query("{ customers(first: 1) { edges { node { name } } } }")
        first_key = harness.settings.audit_checkpoint_key_name

    # A second run signs with a new key under a new name, as a rotation does.
    rotated = ("fonte-audit-2", tmp_path / "rotated.pem")
    async with start_harness(demo_data, data_dir, checkpoint_key=rotated):
        pass

    records = bodies(data_dir)
    report = await verify_store(data_dir / "audit.sqlite3", public_keys=load_public_keys(
        data_dir / "keys" / "audit-checkpoint-public"))
    assert records[1]["kind"] == "key_rotation"
    assert records[1]["details"] == {"previous_key": first_key, "key": "fonte-audit-2"}
    assert report.ok is True
    assert report.checkpoints == 2
