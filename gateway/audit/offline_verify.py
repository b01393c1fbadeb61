#!/usr/bin/env python3
"""Verify an exported Fonte audit log against its signed checkpoints, offline.

Usage: python offline_verify.py EXPORT.jsonl CHECKPOINTS.txt PUBLIC_KEYS_DIR

EXPORT.jsonl is a JSON Lines export (``fonte audit export --format jsonl`` without
filters) of records 1 to N, or F to N after a purge: each line is a record's stored
body (the event plus ``seq`` and ``prev_hash``) with its ``hash`` added.
CHECKPOINTS.txt contains signed checkpoint notes of this log, each followed by a blank
line, as the gateway's anchor file does. PUBLIC_KEYS_DIR contains one PEM Ed25519
public key per signing key, named ``<key name>.pub``.

The script recomputes every record's chain hash, checks each checkpoint's signature,
and checks that each checkpoint's head hash equals the recomputed hash at its size,
that the export reaches every checkpoint, and that each checkpoint names this log.
A purge deletes the oldest records, so an export may start at a record F after 1.
Record F must then link to the head hash of a signed checkpoint of size F - 1, and
the export must contain the purge record that names that size and hash.

Exit status: 0 when all hold, 1 naming the first bad record or checkpoint, 2 for a
missing or unreadable input.

It needs Python 3.11 and the ``cryptography`` package, and imports nothing from the
gateway, so that an auditor can run it alone. The hashing and note rules repeat those
of ``gateway/audit/chain.py``, ``record.py`` and ``checkpoint.py``, and the gateway's
tests check that both give the same results.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS_HASH = "0" * 64
CHAIN_DOMAIN_PREFIX = b"fonte-audit-chain-v1\x00"
ORIGIN_PREFIX = "fonte.audit/"
ORIGIN_HASH_DIGITS = 16
SIGNATURE_PREFIX = "\u2014 "
TIME_PREFIX = "time "
ED25519_TYPE = b"\x01"
KEY_ID_BYTES = 4
SIGNATURE_BYTES = 64


class VerifyFailure(Exception):
    """The first bad record or checkpoint (exit 1)."""


class InputError(Exception):
    """A missing or unreadable input (exit 2)."""


def canonical_json(value: object) -> bytes:
    """Encode ``value`` as the gateway does before hashing: sorted keys, no spaces, UTF-8."""
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def chain_hash(prev_hash: str, seq: int, body: bytes) -> str:
    """Compute SHA-256(domain prefix || prev_hash bytes || seq as 8 bytes big-endian || body)."""
    digest = hashlib.sha256(CHAIN_DOMAIN_PREFIX)
    digest.update(bytes.fromhex(prev_hash))
    digest.update(seq.to_bytes(8, "big"))
    digest.update(body)
    return digest.hexdigest()


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """Compute SHA-256(key name || 0x0A || 0x01 || raw public key)[:4], the signed-note key ID."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(name.encode("utf-8") + b"\n" + ED25519_TYPE + raw).digest()[:4]


@dataclass(frozen=True)
class Note:
    """A checkpoint note: its signed text, parsed fields and signature lines."""

    label: str
    text: str
    origin: str
    size: int
    head_hash: str
    signatures: tuple[tuple[str, bytes, bytes], ...]


def split_notes(text: str) -> list[str]:
    """Split checkpoint text into notes; each ends at the blank line after its signatures."""
    notes: list[str] = []
    current: list[str] = []
    in_signatures = False
    for number, line in enumerate(text.split("\n"), start=1):
        if not in_signatures:
            if line == "" and not current:
                continue
            in_signatures = line == ""
            current.append(line)
        elif line.startswith(SIGNATURE_PREFIX):
            current.append(line)
        elif line == "" and current[-1] != "":
            notes.append("\n".join(current) + "\n")
            current, in_signatures = [], False
        else:
            raise VerifyFailure(f"checkpoints file line {number}: expected a signature line")
    if current:
        if not in_signatures or current[-1] == "":
            raise VerifyFailure("checkpoints file: the last note has no signature line")
        notes.append("\n".join(current) + "\n")
    return notes


def parse_note(label: str, note: str) -> Note:
    """Parse one checkpoint note. Raises VerifyFailure naming the malformed part."""
    text, separator, block = note.partition("\n\n")
    lines = text.split("\n")
    if not separator or len(lines) != 4:
        raise VerifyFailure(f"{label}: not a note of 4 text lines, a blank line and signatures")
    origin, size_text, root, time_line = lines
    if not origin.startswith(ORIGIN_PREFIX) or not time_line.startswith(TIME_PREFIX):
        raise VerifyFailure(f"{label}: origin or time line is malformed")
    if not size_text.isdigit() or size_text.startswith("0"):
        raise VerifyFailure(f"{label}: size {size_text!r} is not a positive decimal number")
    try:
        head = base64.b64decode(root, validate=True)
        signatures = tuple(_parse_signature(line) for line in block.rstrip("\n").split("\n"))
    except (binascii.Error, ValueError) as exc:
        raise VerifyFailure(f"{label}: {exc or 'invalid base64'}") from exc
    if len(head) != 32:
        raise VerifyFailure(f"{label}: head hash is {len(head)} bytes, expected 32")
    return Note(label, text + "\n", origin, int(size_text), head.hex(), signatures)


def _parse_signature(line: str) -> tuple[str, bytes, bytes]:
    name, _, encoded = line.removeprefix(SIGNATURE_PREFIX).partition(" ")
    raw = base64.b64decode(encoded, validate=True)
    if not line.startswith(SIGNATURE_PREFIX) or not name or len(raw) != 68:
        raise ValueError(f"signature line {line[:40]!r} is malformed")
    return name, raw[:KEY_ID_BYTES], raw[KEY_ID_BYTES:]


def check_signatures(note: Note, public_keys: Mapping[str, Ed25519PublicKey]) -> None:
    """Apply the signed-note rules: unknown keys are ignored, known ones must verify."""
    verified = 0
    for name, identifier, signature in note.signatures:
        public_key = public_keys.get(name)
        if public_key is None or key_id(name, public_key) != identifier:
            continue
        try:
            public_key.verify(signature, note.text.encode("utf-8"))
        except InvalidSignature as exc:
            raise VerifyFailure(f"{note.label}: signature of key {name!r} is invalid") from exc
        verified += 1
    if not verified:
        names = ", ".join(repr(name) for name, _, _ in note.signatures)
        raise VerifyFailure(f"{note.label}: signed by unknown key {names}")


def load_public_keys(folder: Path) -> dict[str, Ed25519PublicKey]:
    """Read every ``<name>.pub`` PEM Ed25519 public key in ``folder``."""
    if not folder.is_dir():
        raise InputError(f"public key folder {folder} not found")
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(folder.glob("*.pub")):
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read public key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise InputError(f"{path} is not an Ed25519 public key")
        keys[path.name.removesuffix(".pub")] = key
    return keys


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for each line of the export, in file order."""
    try:
        with path.open(encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise VerifyFailure(f"export line {number} is not JSON") from exc
                if not isinstance(record, dict):
                    raise VerifyFailure(f"export line {number} is not a JSON object")
                yield number, record
    except OSError as exc:
        raise InputError(f"cannot read export {path}: {exc.strerror}") from exc


def record_fault(
    record: dict[str, Any], expected_seq: int, prev_hash: str, first_seq: int = 1
) -> str | None:
    """Return what is wrong with the record expected at ``expected_seq``, or None.

    ``first_seq`` is the seq of the export's first record, after 1 in a purged log.
    """
    seq = record.get("seq")
    if seq != expected_seq:
        return f"expected record {expected_seq}, found seq {seq!r}; records are missing or moved"

    body = {key: value for key, value in record.items() if key != "hash"}
    body_prev_hash = body.get("prev_hash")
    if not _is_hash(record.get("hash")) or not _is_hash(body_prev_hash):
        return "content changed"
    try:
        recomputed = chain_hash(str(body_prev_hash), expected_seq, canonical_json(body))
    except ValueError:
        return "content changed"
    if recomputed != record["hash"]:
        return "content changed"

    if body_prev_hash != prev_hash:
        if expected_seq == 1:
            return "chain broken: prev_hash of the first record is not the genesis hash"
        if expected_seq == first_seq:
            return (
                "chain broken: prev_hash does not match the hash that the checkpoint of "
                f"record {expected_seq - 1} signed"
            )
        return f"chain broken: prev_hash does not match the hash of record {expected_seq - 1}"
    return None


def _is_hash(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 64
        and all(character in "0123456789abcdef" for character in value)
    )


@dataclass
class _Chain:
    """The verifier's state: the next expected seq, the previous hash and what is covered.

    ``purge_anchor`` is the (size, head hash) of the checkpoint that a purged export
    continues from, until the purge record that names it is found.
    """

    first_seq: int = 1
    next_seq: int = 1
    prev_hash: str = GENESIS_HASH
    covered: int = 0
    origin: str = ""
    purge_anchor: tuple[int, str] | None = None


def verify(export: Path, notes: list[Note], public_keys: Mapping[str, Ed25519PublicKey]) -> str:
    """Verify the export against ``notes``; return the summary line or raise VerifyFailure."""
    for note in notes:
        check_signatures(note, public_keys)
    by_size: dict[int, list[Note]] = {}
    for note in notes:
        by_size.setdefault(note.size, []).append(note)

    chain = _Chain()
    for number, record in read_records(export):
        if number == 1:
            chain = _start_chain(record, by_size)
        seq = chain.next_seq
        fault = record_fault(record, seq, chain.prev_hash, chain.first_seq)
        if fault is not None:
            raise VerifyFailure(f"record {seq} (export line {number}): {fault}")
        chain.next_seq += 1
        chain.prev_hash = str(record["hash"])
        if seq == 1:
            chain.origin = ORIGIN_PREFIX + chain.prev_hash[:ORIGIN_HASH_DIGITS]
        if chain.purge_anchor is not None and names_purge(record, chain.purge_anchor):
            chain.purge_anchor = None
        for note in by_size.get(seq, ()):
            if note.head_hash != chain.prev_hash:
                raise VerifyFailure(
                    f"{note.label} signed another hash for record {seq}: records "
                    f"{chain.covered + 1}-{seq} were changed and the chain rebuilt after them"
                )
            chain.covered = seq

    return _check_end(notes, chain)


def _start_chain(record: dict[str, Any], by_size: Mapping[int, list[Note]]) -> _Chain:
    """Return the state before the export's first record, which is after 1 in a purged log.

    A purged export continues from the checkpoint of the record before its first.
    """
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq <= 1:
        return _Chain()
    through = seq - 1
    span = "record 1" if through == 1 else f"records 1-{through}"
    anchors = by_size.get(through, [])
    if not anchors:
        raise VerifyFailure(
            f"{span} missing: the export starts at record {seq}, and no checkpoint signed "
            f"record {through}"
        )
    if len({note.head_hash for note in anchors}) > 1:
        labels = " and ".join(note.label for note in anchors)
        raise VerifyFailure(f"{labels} signed different hashes for record {through}")
    anchor = anchors[0]
    return _Chain(
        first_seq=seq,
        next_seq=seq,
        prev_hash=anchor.head_hash,
        covered=through,
        origin=anchor.origin,
        purge_anchor=(through, anchor.head_hash),
    )


def names_purge(record: dict[str, Any], anchor: tuple[int, str]) -> bool:
    """Check that ``record`` is the purge record through the checkpoint ``anchor``, given
    as (size, head hash). `gateway.audit.verify` applies the same rule."""
    details = record.get("details")
    if record.get("kind") != "purge" or not isinstance(details, dict):
        return False
    through_seq = details.get("through_seq")
    return (
        isinstance(through_seq, int)
        and not isinstance(through_seq, bool)
        and (through_seq, details.get("head_hash")) == anchor
    )


def _check_end(notes: list[Note], chain: _Chain) -> str:
    last_seq = chain.next_seq - 1
    longest = max(notes, key=lambda note: note.size, default=None)
    if longest is not None and longest.size > last_seq:
        raise VerifyFailure(
            f"record {last_seq + 1} missing: export ends at record {last_seq} but "
            f"{longest.label} signed {longest.size}; records were removed from the end"
        )
    for note in notes:
        if note.origin != chain.origin:
            source = "record 1 gives" if chain.first_seq == 1 else (
                "the checkpoint that the purged export continues from names"
            )
            raise VerifyFailure(
                f"{note.label} is for log {note.origin}, but {source} {chain.origin}; "
                "the chain was rebuilt from record 1 or the checkpoint is of another log"
            )
    if chain.purge_anchor is not None:
        through = chain.purge_anchor[0]
        span = "record 1" if through == 1 else f"records 1-{through}"
        raise VerifyFailure(
            f"{span} missing: the export continues from a signed checkpoint of record "
            f"{through}, but no purge record names it; records were deleted from the start"
        )

    count = last_seq - chain.first_seq + 1
    summary = f"OK: {_count(count, 'record')} and {_count(len(notes), 'checkpoint')} verified"
    if chain.first_seq > 1:
        summary += f"; records 1-{chain.first_seq - 1} were purged up to a signed checkpoint"
    if chain.covered < last_seq:
        tail = f"records {chain.covered + 1}-{last_seq} are"
        if chain.covered + 1 == last_seq:
            tail = f"record {last_seq} is"
        summary += f"; {tail} after the newest checkpoint and verified by the hash chain only"
    return summary


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def main(argv: list[str]) -> int:
    """Run the command line. Returns the exit status."""
    if len(argv) != 3:
        # A bundle contains this file as verify.py, so the usage names the file that ran.
        usage = __doc__.split("\n\n")[1].replace("offline_verify.py", Path(sys.argv[0]).name)
        print(usage, file=sys.stderr)
        return 2
    export, checkpoints_file, keys_folder = (Path(argument) for argument in argv)
    try:
        public_keys = load_public_keys(keys_folder)
        try:
            checkpoint_text = checkpoints_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read checkpoints {checkpoints_file}: {exc.strerror}") from exc
        notes = [
            parse_note(f"checkpoint {position}", note)
            for position, note in enumerate(split_notes(checkpoint_text), start=1)
        ]
        print(verify(export, notes, public_keys))
        return 0
    except VerifyFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except InputError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
