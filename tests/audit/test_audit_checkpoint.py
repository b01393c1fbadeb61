"""Tests of checkpoint notes, checkpoint keys and when the store writes checkpoints."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from checkpoint_support import (
    anchor_for,
    delete_records,
    make_event,
    new_key,
    publish,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.checkpoint import (
    CheckpointError,
    find_signature_fault,
    key_id,
    log_origin,
    parse_checkpoint,
    sign_checkpoint,
    split_notes,
)
from gateway.audit.keys import (
    KEY_ENV_VAR,
    load_or_create_signing_key,
    load_public_keys,
    publish_public_key,
)
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.verify import verify_store
from gateway.errors import AuditError, AuditIntegrityError, ConfigError

HEAD = hashlib.sha256(b"head").hexdigest()


def signed(size: int = 7) -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    checkpoint = sign_checkpoint(
        key, "fonte-audit-1", origin=log_origin(HEAD), size=size, head_hash=HEAD,
        time="2026-12-04T20:17:39.123Z",
    )
    return key, checkpoint.note


def checkpoint_rows(path: Path) -> list[tuple[int, int, str, str]]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT id, size, key_name, note FROM audit_checkpoint ORDER BY id"
        ).fetchall()
    return [(int(row[0]), int(row[1]), str(row[2]), str(row[3])) for row in rows]


def test_note_has_signed_note_layout() -> None:
    _, note = signed()
    root = base64.b64encode(bytes.fromhex(HEAD)).decode()

    text, signatures = note.split("\n\n")

    assert text.split("\n") == [
        f"fonte.audit/{HEAD[:16]}", "7", root, "time 2026-12-04T20:17:39.123Z"
    ]
    assert signatures.startswith("\u2014 fonte-audit-1 ")
    assert signatures.endswith("\n")


def test_key_id_follows_signed_note_rule() -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )

    expected = hashlib.sha256(b"fonte-audit-1\n\x01" + raw).digest()[:4]

    assert key_id("fonte-audit-1", key.public_key()) == expected


def test_parsed_note_verifies() -> None:
    key, note = signed()

    checkpoint = parse_checkpoint(note)

    assert checkpoint.size == 7
    assert checkpoint.head_hash == HEAD
    assert find_signature_fault(checkpoint, {"fonte-audit-1": key.public_key()}) is None


def test_edited_note_fails_signature() -> None:
    key, note = signed()
    edited = parse_checkpoint(note.replace("\n7\n", "\n8\n"))

    fault = find_signature_fault(edited, {"fonte-audit-1": key.public_key()})

    assert fault == "signature of key 'fonte-audit-1' is invalid"


def test_same_name_other_key_is_unknown() -> None:
    _, note = signed()
    other = Ed25519PrivateKey.generate()

    fault = find_signature_fault(parse_checkpoint(note), {"fonte-audit-1": other.public_key()})

    assert fault is not None
    assert fault.startswith("signed by unknown key 'fonte-audit-1'")


@pytest.mark.parametrize(
    ("note", "message"),
    [
        ("a\nb\n", "no blank line"),
        ("fonte.audit/x\n0\nAA==\ntime t\n\n\u2014 k AA==\n", "not a positive decimal"),
        ("other/x\n1\nAA==\ntime t\n\n\u2014 k AA==\n", "does not start with fonte.audit/"),
        ("fonte.audit/x\n1\nAA==\ntime t\n\n\u2014 k AA==\n", "head hash is 1 bytes"),
    ],
)
def test_malformed_note_is_rejected(note: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        parse_checkpoint(note)


def test_split_notes_returns_each_note() -> None:
    _, first = signed(3)
    _, second = signed(5)

    assert split_notes(first + "\n" + second + "\n") == [first, second]


def test_split_notes_rejects_cut_off_note() -> None:
    _, note = signed()

    with pytest.raises(CheckpointError, match="no signature line"):
        split_notes(note.split("\n\n")[0] + "\n\n")


def test_signing_key_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit-checkpoint.pem"

    created = load_or_create_signing_key(path, environ={})
    loaded = load_or_create_signing_key(path, environ={})

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert created.name == "fonte-audit-1"
    assert key_id("n", created.public_key()) == key_id("n", loaded.public_key())


def test_signing_key_from_environment(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp_path / "audit-checkpoint.pem"

    loaded = load_or_create_signing_key(path, name="hsm-2", environ={KEY_ENV_VAR: pem})

    assert loaded.name == "hsm-2"
    assert key_id("n", loaded.public_key()) == key_id("n", key.public_key())
    assert not path.exists()


def test_invalid_key_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="key name 'a b' is invalid"):
        load_or_create_signing_key(tmp_path / "k.pem", name="a b", environ={})


def test_reused_key_name_is_rejected(tmp_path: Path) -> None:
    publish_public_key(new_key("fonte-audit-1"), tmp_path)

    with pytest.raises(ConfigError, match="contains another key"):
        publish_public_key(new_key("fonte-audit-1"), tmp_path)


def test_public_keys_load_by_name(tmp_path: Path) -> None:
    first, second = new_key("fonte-audit-1"), new_key("fonte-audit-2")
    publish(tmp_path, first, second)

    keys = load_public_keys(tmp_path)

    assert sorted(keys) == ["fonte-audit-1", "fonte-audit-2"]


async def test_checkpoint_written_on_interval(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = await SQLiteAuditStore.open(
        path, checkpoint_key=new_key(), checkpoint_interval=0.05
    )
    try:
        await store.append(make_event(1))
        await store.append(make_event(2))
        for _ in range(100):
            if checkpoint_rows(path):
                break
            await asyncio.sleep(0.02)
        rows = checkpoint_rows(path)
    finally:
        await store.close()

    assert [row[1] for row in rows] == [2]


async def test_checkpoint_written_at_close(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    anchor = tmp_path / "anchor.txt"
    store = await SQLiteAuditStore.open(
        path, checkpoint_key=new_key(), anchors=[anchor_for(anchor)], checkpoint_interval=3600
    )
    for index in range(1, 4):
        await store.append(make_event(index))

    await store.close()

    rows = checkpoint_rows(path)
    assert [(row[1], row[2]) for row in rows] == [(3, "fonte-audit-1")]
    assert anchor.read_text(encoding="utf-8") == rows[0][3] + "\n"


async def test_checkpoint_call_covers_earlier_appends(tmp_path: Path) -> None:
    moment = datetime(2026, 12, 4, 20, 17, 39, 123000, tzinfo=UTC)
    store = await SQLiteAuditStore.open(
        tmp_path / "audit.db", checkpoint_key=new_key(), checkpoint_interval=3600,
        clock=lambda: moment,
    )
    try:
        appended = asyncio.ensure_future(store.append(make_event(1)))
        await asyncio.sleep(0)  # lets the append queue its event before the request
        checkpoint = await store.checkpoint()
        seq = await appended
        repeated = await store.checkpoint()
    finally:
        await store.close()

    assert checkpoint is not None
    assert checkpoint.size == seq == 1
    assert checkpoint.time == "2026-12-04T20:17:39.123Z"
    assert repeated is None


async def test_checkpoint_without_key_raises(tmp_path: Path) -> None:
    store = await SQLiteAuditStore.open(tmp_path / "audit.db")
    try:
        with pytest.raises(AuditError, match="without a checkpoint key"):
            await store.checkpoint()
    finally:
        await store.close()


async def test_failed_anchor_skips_checkpoint(tmp_path: Path) -> None:
    missing_folder = tmp_path / "absent" / "anchor.txt"
    store = await SQLiteAuditStore.open(
        tmp_path / "audit.db", checkpoint_key=new_key(), anchors=[anchor_for(missing_folder)],
        checkpoint_interval=3600,
    )
    try:
        await store.append(make_event(1))
        with pytest.raises(AuditError, match="cannot write the checkpoint of seq 1 to anchor"):
            await store.checkpoint()
        second = await store.append(make_event(2))
    finally:
        await store.close()

    assert second == 2
    assert checkpoint_rows(tmp_path / "audit.db") == []


async def test_open_rejects_truncated_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = await SQLiteAuditStore.open(path, checkpoint_key=new_key())
    for index in range(1, 4):
        await store.append(make_event(index))
    await store.close()
    delete_records(path, 3)

    with pytest.raises(AuditIntegrityError, match="has 2 records but checkpoint 1 signed 3"):
        await SQLiteAuditStore.open(path, checkpoint_key=new_key())


async def test_rotated_keys_both_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    first, second = new_key("fonte-audit-1"), new_key("fonte-audit-2")
    for key, index in ((first, 1), (second, 2)):
        store = await SQLiteAuditStore.open(path, checkpoint_key=key)
        await store.append(make_event(index))
        await store.close()
    folder = publish(tmp_path / "public", first, second)

    report = await verify_store(path, public_keys=load_public_keys(folder))

    assert report.ok, report.reason
    assert report.checkpoints == 2
    assert [row[2] for row in checkpoint_rows(path)] == ["fonte-audit-1", "fonte-audit-2"]


async def test_retired_key_missing_fails(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    first, second = new_key("fonte-audit-1"), new_key("fonte-audit-2")
    for key, index in ((first, 1), (second, 2)):
        store = await SQLiteAuditStore.open(path, checkpoint_key=key)
        await store.append(make_event(index))
        await store.close()
    folder = publish(tmp_path / "public", second)

    report = await verify_store(path, public_keys=load_public_keys(folder))

    assert not report.ok
    assert report.reason is not None
    assert report.reason.startswith("checkpoint 1: signed by unknown key 'fonte-audit-1'")
