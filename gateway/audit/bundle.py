"""Audit bundles: a folder that an auditor can verify offline with Python and `cryptography`.

A bundle contains:

- ``records.jsonl``: every stored record, from 1 (or the first after a purge) to the
  newest, as ``fonte audit export`` writes JSON Lines, with subjects sealed;
- ``checkpoints.txt``: the stored signed checkpoints that the records reach, in the
  anchor file format;
- ``keys/<name>.pub``: the public key of every checkpoint key;
- ``verify.py``: a copy of `gateway.audit.offline_verify`, which imports nothing from
  the gateway;
- ``README.md``: what the files are and the command that checks them;
- ``manifest.json``: the record and checkpoint counts, the time of writing and the
  SHA-256 of every other file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from gateway.audit import offline_verify
from gateway.audit.export import ExportFilter, ExportOutputError, export_records
from gateway.audit.postgres import open_reader
from gateway.audit.record import utc_timestamp
from gateway.audit.store import describe_error
from gateway.audit.verify_checkpoints import read_stored_checkpoints
from gateway.errors import AuditError, AuditIntegrityError

RECORDS_FILE = "records.jsonl"
CHECKPOINTS_FILE = "checkpoints.txt"
KEYS_FOLDER = "keys"
VERIFIER_FILE = "verify.py"
README_FILE = "README.md"
MANIFEST_FILE = "manifest.json"

_README = """# Fonte audit bundle

Written {time}. It contains audit records {first} to {last} of one Fonte audit log
and {checkpoints} signed checkpoint(s) of that log.{purged}

| file | content |
| --- | --- |
| `records.jsonl` | one record per line: the hashed body plus its `hash` |
| `checkpoints.txt` | Ed25519-signed notes of a record count and the last record's hash |
| `keys/*.pub` | the public keys of the checkpoint keys, PEM |
| `verify.py` | the verifier; it needs Python 3.11 and the `cryptography` package |
| `manifest.json` | counts and the SHA-256 of each file |

Check the bundle with:

    python verify.py records.jsonl checkpoints.txt keys

It recomputes every record's hash chain and checks each checkpoint's signature
and that each checkpoint's hash equals the chain at its size. It exits 0 when
all hold and 1 naming the first bad record or checkpoint. Compare the public keys
with copies obtained from the controller by another channel: a bundle whose keys
were replaced verifies against the replacement.

A log purged for retention starts after record 1. Its first record must link to
a signed checkpoint of the record before it, and a later purge record must name
that checkpoint. The verifier checks both.

Records after the newest checkpoint are covered by the hash chain only. Data
subjects appear only as sealed values that this bundle cannot open.
"""


@dataclass(frozen=True)
class BundleSummary:
    """Counts and verifier output of a written bundle.

    ``first_seq`` and ``last_seq`` are the seqs of the first and last record, and
    ``first_seq`` is after 1 once a purge deleted the oldest records.
    """

    folder: Path
    records: int
    checkpoints: int
    verifier_output: str
    first_seq: int = 1
    last_seq: int = 0


async def write_bundle(
    target: Path | str, public_keys: Path, folder: Path
) -> BundleSummary:
    """Write a bundle of the store at ``target`` into the new folder ``folder``.

    ``target`` is the path of an SQLite store or the URL of a PostgreSQL store.
    ``public_keys`` is the folder of checkpoint public keys. The bundle is verified
    with its own verifier before this returns. Raises AuditError if ``folder`` exists or
    cannot be written (a partly written folder is removed), the store cannot be read or
    a key is missing, and AuditIntegrityError if the written bundle does not verify.
    """
    if folder.exists():
        raise AuditError(f"bundle folder {folder} already exists; give a new folder")
    key_files = sorted(public_keys.glob("*.pub")) if public_keys.is_dir() else []
    if not key_files:
        raise AuditError(
            f"no checkpoint public key in {public_keys}; the gateway writes them there"
        )

    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise AuditError(f"cannot create bundle folder {folder}: {exc.strerror or exc}; "
                         "give a folder in a writable place") from exc
    try:
        count, notes, first_seq, last_seq = await _write_files(target, key_files, folder)
    except (OSError, AuditError) as exc:
        # A partial bundle would fail its own verifier later, far from the cause.
        shutil.rmtree(folder, ignore_errors=True)
        cause = exc.__cause__ if isinstance(exc, ExportOutputError) else exc
        if isinstance(cause, OSError):
            raise AuditError(f"cannot write bundle folder {folder}: {cause.strerror or cause}; "
                             "it was removed, so free space and run the command again") from exc
        raise

    output = _verify_bundle(folder)
    return BundleSummary(folder, count, len(notes), output, first_seq, last_seq)


async def _write_files(target: Path | str, key_files: list[Path],
                       folder: Path) -> tuple[int, list[str], int, int]:
    records_path = folder / RECORDS_FILE
    seqs: list[int] = []
    with records_path.open("w", encoding="utf-8", newline="") as out:
        count = await export_records(
            target, out, fmt="jsonl", filters=ExportFilter(), progress=seqs.append
        )
    last_seq = seqs[-1] if seqs else 0
    first_seq = last_seq - count + 1
    notes = await _checkpoint_notes(target, last_seq)
    (folder / CHECKPOINTS_FILE).write_text("".join(note + "\n" for note in notes), "utf-8")

    (folder / KEYS_FOLDER).mkdir()
    for key_file in key_files:
        shutil.copyfile(key_file, folder / KEYS_FOLDER / key_file.name)
    shutil.copyfile(Path(offline_verify.__file__), folder / VERIFIER_FILE)
    time = utc_timestamp()
    purged = ""
    if first_seq > 1:
        purged = f"\nRecords 1 to {first_seq - 1} were purged for retention."
    readme = _README.format(
        time=time, first=first_seq, last=last_seq, checkpoints=len(notes), purged=purged
    )
    (folder / README_FILE).write_text(readme, encoding="utf-8")
    _write_manifest(
        folder, time=time, records=count, checkpoints=len(notes), first_seq=first_seq
    )
    return count, notes, first_seq, last_seq


async def _checkpoint_notes(target: Path | str, last_seq: int) -> list[str]:
    engine, location = open_reader(target)
    try:
        async with engine.connect() as connection:
            rows = await read_stored_checkpoints(connection)
    except (SQLAlchemyError, OSError) as exc:
        raise AuditError(f"cannot read checkpoints of {location}: {describe_error(exc)}") from exc
    finally:
        await engine.dispose()
    # A checkpoint signed after the export read its records covers records it lacks.
    return [str(row.note) for row in rows if int(row.size) <= last_seq]


def _write_manifest(
    folder: Path, *, time: str, records: int, checkpoints: int, first_seq: int
) -> None:
    files = {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    manifest = {
        "format": "fonte-audit-bundle-1",
        "written": time,
        "records": records,
        "first_seq": first_seq,
        "checkpoints": checkpoints,
        "sha256": files,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _verify_bundle(folder: Path) -> str:
    try:
        keys = offline_verify.load_public_keys(folder / KEYS_FOLDER)
        text = (folder / CHECKPOINTS_FILE).read_text(encoding="utf-8")
        notes = [
            offline_verify.parse_note(f"checkpoint {position}", note)
            for position, note in enumerate(offline_verify.split_notes(text), start=1)
        ]
        return offline_verify.verify(folder / RECORDS_FILE, notes, keys)
    except (offline_verify.VerifyFailure, offline_verify.InputError) as exc:
        raise AuditIntegrityError(
            f"bundle {folder} does not verify: {exc}; run fonte audit verify on the store"
        ) from exc
