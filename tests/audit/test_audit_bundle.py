"""Tests of audit bundles, checked by their own verifier in a Python that has only
`cryptography` (and the packages it imports) besides the standard library."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from bundle_support import isolated_path, run_isolated, run_verifier
from checkpoint_support import make_event, new_key, publish

from gateway.audit.bundle import write_bundle
from gateway.audit.checkpoint import parse_checkpoint, sign_checkpoint, split_notes
from gateway.audit.keys import CheckpointKey
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.errors import AuditError

__all__ = ["isolated_path"]

async def signed_store(folder: Path, key: CheckpointKey) -> Path:
    """Six records, with checkpoint 1 at size 3 and checkpoint 2 at size 6."""
    path = folder / "audit.sqlite3"
    store = await SQLiteAuditStore.open(path, checkpoint_key=key, checkpoint_interval=3600)
    try:
        for index in range(1, 7):
            await store.append(make_event(index))
            if index == 3:
                await store.checkpoint()
    finally:
        await store.close()
    return path


@pytest.fixture
async def bundle(tmp_path: Path) -> tuple[Path, CheckpointKey]:
    key = new_key()
    path = await signed_store(tmp_path, key)
    public = publish(tmp_path / "public", key)
    await write_bundle(path, public, tmp_path / "bundle")
    return tmp_path / "bundle", key


def lines_of(bundle: Path) -> list[str]:
    return (bundle / "records.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)


def write_lines(bundle: Path, lines: list[str]) -> None:
    (bundle / "records.jsonl").write_text("".join(lines), encoding="utf-8")


def test_isolated_python_lacks_gateway(isolated_path: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.util\n"
        "print([name for name in ('gateway', 'sqlalchemy', 'cryptography')"
        " if importlib.util.find_spec(name)])\n"
    )

    result = run_isolated(isolated_path, code, cwd=tmp_path)

    assert result.stdout.strip() == "['cryptography']"


async def test_bundle_holds_its_files(bundle: tuple[Path, CheckpointKey]) -> None:
    folder, key = bundle
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))

    assert sorted(path.name for path in folder.iterdir()) == [
        "README.md", "checkpoints.txt", "keys", "manifest.json", "records.jsonl", "verify.py"
    ]
    assert [path.name for path in (folder / "keys").iterdir()] == [f"{key.name}.pub"]
    assert manifest["records"] == 6
    assert manifest["checkpoints"] == 2
    assert manifest["sha256"]["records.jsonl"] == hashlib.sha256(
        (folder / "records.jsonl").read_bytes()
    ).hexdigest()
    assert sorted(manifest["sha256"]) == [
        "README.md", "checkpoints.txt", f"keys/{key.name}.pub", "records.jsonl", "verify.py"
    ]


async def test_bundle_verifies_offline(
    bundle: tuple[Path, CheckpointKey], isolated_path: Path
) -> None:
    status, output = run_verifier(isolated_path, bundle[0])

    assert output == "OK: 6 records and 2 checkpoints verified"
    assert status == 0


def edit_record(bundle: Path) -> None:
    lines = lines_of(bundle)
    lines[1] = lines[1].replace('"records":1', '"records":2')
    write_lines(bundle, lines)


def delete_record(bundle: Path) -> None:
    lines = lines_of(bundle)
    del lines[2]
    write_lines(bundle, lines)


def insert_record(bundle: Path) -> None:
    lines = lines_of(bundle)
    lines.insert(2, lines[1])
    write_lines(bundle, lines)


def reorder_records(bundle: Path) -> None:
    lines = lines_of(bundle)
    lines[3], lines[4] = lines[4], lines[3]
    write_lines(bundle, lines)


def truncate_records(bundle: Path) -> None:
    write_lines(bundle, lines_of(bundle)[:4])


TAMPER_CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("edited", edit_record, "FAILED: record 2 (export line 2): content changed"),
    (
        "deleted",
        delete_record,
        "FAILED: record 3 (export line 3): expected record 3, found seq 4; "
        "records are missing or moved",
    ),
    (
        "inserted",
        insert_record,
        "FAILED: record 3 (export line 3): expected record 3, found seq 2; "
        "records are missing or moved",
    ),
    (
        "reordered",
        reorder_records,
        "FAILED: record 4 (export line 4): expected record 4, found seq 5; "
        "records are missing or moved",
    ),
    (
        "truncated",
        truncate_records,
        "FAILED: record 5 missing: export ends at record 4 but checkpoint 2 signed 6; "
        "records were removed from the end",
    ),
]


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [(case[1], case[2]) for case in TAMPER_CASES],
    ids=[case[0] for case in TAMPER_CASES],
)
async def test_offline_verifier_names_bad_record(
    bundle: tuple[Path, CheckpointKey],
    isolated_path: Path,
    tamper: Callable[[Path], None],
    expected: str,
) -> None:
    tamper(bundle[0])

    status, output = run_verifier(isolated_path, bundle[0])

    assert output == expected
    assert status == 1


def replace_second_checkpoint(bundle: Path, key: CheckpointKey, size: int, seq: int) -> None:
    """Replace checkpoint 2 with a note of ``size`` records that signs record ``seq``'s hash."""
    records = [json.loads(line) for line in lines_of(bundle)]
    first, second = split_notes((bundle / "checkpoints.txt").read_text(encoding="utf-8"))
    replacement = sign_checkpoint(
        key.private_key,
        key.name,
        origin=parse_checkpoint(second).origin,
        size=size,
        head_hash=records[seq - 1]["hash"],
        time="2026-12-04T21:00:00.000Z",
    )
    text = first + "\n" + replacement.note + "\n"
    (bundle / "checkpoints.txt").write_text(text, encoding="utf-8")


async def test_replaced_checkpoint_names_records(
    bundle: tuple[Path, CheckpointKey], isolated_path: Path
) -> None:
    folder, key = bundle
    # Signed with the real key, as after a key leak: size 5 with the hash of record 4.
    replace_second_checkpoint(folder, key, size=5, seq=4)

    status, output = run_verifier(isolated_path, folder)

    assert output == (
        "FAILED: checkpoint 2 signed another hash for record 5: records 4-5 were changed "
        "and the chain rebuilt after them"
    )
    assert status == 1


async def test_wrong_key_checkpoint_is_rejected(
    bundle: tuple[Path, CheckpointKey], isolated_path: Path
) -> None:
    folder, key = bundle
    impostor = new_key(key.name)
    replace_second_checkpoint(folder, impostor, size=6, seq=6)

    status, output = run_verifier(isolated_path, folder)

    assert output == "FAILED: checkpoint 2: signed by unknown key 'fonte-audit-1'"
    assert status == 1


async def test_bundle_rejects_existing_folder(tmp_path: Path) -> None:
    key = new_key()
    path = await signed_store(tmp_path, key)
    (tmp_path / "bundle").mkdir()

    with pytest.raises(AuditError, match=r"bundle folder .*bundle already exists"):
        await write_bundle(path, publish(tmp_path / "public", key), tmp_path / "bundle")


async def test_bundle_needs_public_keys(tmp_path: Path) -> None:
    path = await signed_store(tmp_path, new_key())

    with pytest.raises(AuditError, match=r"no checkpoint public key in .*public"):
        await write_bundle(path, tmp_path / "public", tmp_path / "bundle")
