"""Signed checkpoints of the audit chain, in the C2SP signed-note format.

A checkpoint note reads (signature shortened):

    fonte.audit/3f0c9a1be27d4410
    20
    q0aXb1r0lJ8M2p3fXQ4wJmH7n9cQ2Kq3JbD1y5vZr0U=
    time 2026-12-04T20:17:39.123Z

    — fonte-audit-1 AbCdEf...

The note text is four lines, each ending in a newline. They are the origin, the decimal
number of records covered (the seq of the last one, so the tree size), the standard
base64 of the 32 bytes of that record's chain hash, and an extension line with the UTC
time of signing. A blank line follows, then one signature line per key: an em dash (U+2014), a
space, the key name, a space, then the standard base64 of the 4-byte key ID followed by
the 64-byte Ed25519 signature over the note text.

Key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte raw Ed25519 public key)[:4], where
0x01 is the signed-note type byte of Ed25519. This is the rule that the C2SP signed-note
specification (c2sp.org/signed-note) recommends.

The origin is ``fonte.audit/`` plus the first 16 hex digits of record 1's chain hash.
It names one log, so a checkpoint of another log, or of a chain rebuilt from record 1,
has a different origin.

An anchor file contains the notes of one log, each followed by one blank line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gateway.audit.chain import is_chain_hash

ORIGIN_PREFIX = "fonte.audit/"
# A key name is also the file name of its public key, so it is restricted further than
# signed-note requires (no spaces, no "+").
KEY_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")

_ED25519_TYPE = b"\x01"
_SIGNATURE_PREFIX = "\u2014 "
_TIME_PREFIX = "time "
_KEY_ID_BYTES = 4
_SIGNATURE_BYTES = 64
_ORIGIN_HASH_DIGITS = 16
_SIZE_PATTERN = re.compile(r"[1-9][0-9]{0,18}")


class CheckpointError(ValueError):
    """A checkpoint note that does not parse or whose signature does not verify."""


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note."""

    key_name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class Checkpoint:
    """A parsed, signed checkpoint. ``head_hash`` is the chain hash in lowercase hex."""

    origin: str
    size: int
    head_hash: str
    time: str
    signatures: tuple[NoteSignature, ...]
    note: str

    @property
    def text(self) -> str:
        """The signed part of the note: the four body lines with their newlines."""
        return format_note_text(self.origin, self.size, self.head_hash, self.time)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(signature.key_name for signature in self.signatures)


def log_origin(first_record_hash: str) -> str:
    """Return the origin line of the log whose record 1 has ``first_record_hash``."""
    return ORIGIN_PREFIX + first_record_hash[:_ORIGIN_HASH_DIGITS]


def validate_key_name(name: str) -> None:
    """Raise ValueError unless ``name`` can name a checkpoint key and its public key file."""
    if not isinstance(name, str) or not KEY_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"checkpoint key name {name!r} is invalid; use 1 to 64 letters, digits, "
            "'.', '_' or '-', for example 'fonte-audit-2'"
        )


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """Compute the 4-byte signed-note key ID of an Ed25519 key with ``name``."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + _ED25519_TYPE + raw).digest()
    return digest[:_KEY_ID_BYTES]


def format_note_text(origin: str, size: int, head_hash: str, time: str) -> str:
    """Build the signed text of a checkpoint. Raises ValueError for a malformed field."""
    if not origin or any(character.isspace() for character in origin):
        raise ValueError(f"checkpoint origin {origin!r} must be non-empty without spaces")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"checkpoint size {size!r} must be a positive integer")
    if not is_chain_hash(head_hash):
        raise ValueError("checkpoint head hash must be 64 lowercase hex digits")
    if not time or "\n" in time:
        raise ValueError("checkpoint time must be one non-empty line")

    root = base64.b64encode(bytes.fromhex(head_hash)).decode("ascii")
    return f"{origin}\n{size}\n{root}\n{_TIME_PREFIX}{time}\n"


def sign_checkpoint(
    key: Ed25519PrivateKey, key_name: str, *, origin: str, size: int, head_hash: str, time: str
) -> Checkpoint:
    """Sign a checkpoint of ``size`` records whose last chain hash is ``head_hash``."""
    validate_key_name(key_name)
    text = format_note_text(origin, size, head_hash, time)
    signature = NoteSignature(
        key_name=key_name,
        key_id=key_id(key_name, key.public_key()),
        signature=key.sign(text.encode("utf-8")),
    )
    note = text + "\n" + _format_signature(signature) + "\n"
    return Checkpoint(origin, size, head_hash, time, (signature,), note)


def _format_signature(signature: NoteSignature) -> str:
    encoded = base64.b64encode(signature.key_id + signature.signature).decode("ascii")
    return f"{_SIGNATURE_PREFIX}{signature.key_name} {encoded}"


def parse_checkpoint(note: str) -> Checkpoint:
    """Parse a signed checkpoint note without checking its signatures.

    Raises CheckpointError naming the first malformed part.
    """
    if not note.endswith("\n"):
        raise CheckpointError("checkpoint note does not end in a newline")
    text, separator, signature_block = note.partition("\n\n")
    if not separator:
        raise CheckpointError("checkpoint note has no blank line before its signatures")

    lines = text.split("\n")
    if len(lines) != 4:
        raise CheckpointError(f"checkpoint note has {len(lines)} text lines, expected 4")
    origin, size_text, root, time_line = lines
    if not origin.startswith(ORIGIN_PREFIX):
        raise CheckpointError(f"checkpoint origin {origin!r} does not start with {ORIGIN_PREFIX}")
    if not _SIZE_PATTERN.fullmatch(size_text):
        raise CheckpointError(f"checkpoint size {size_text!r} is not a positive decimal number")
    if not time_line.startswith(_TIME_PREFIX):
        raise CheckpointError(f"checkpoint extension line {time_line!r} is not 'time <UTC time>'")

    head_hash = _decode_root(root)
    signatures = tuple(
        _parse_signature(line) for line in signature_block.removesuffix("\n").split("\n")
    )
    checkpoint = Checkpoint(
        origin, int(size_text), head_hash, time_line[len(_TIME_PREFIX) :], signatures, note
    )
    if checkpoint.text != text + "\n":
        raise CheckpointError("checkpoint text is not in canonical form")
    return checkpoint


def _decode_root(root: str) -> str:
    try:
        raw = base64.b64decode(root, validate=True)
    except binascii.Error as exc:
        raise CheckpointError(f"checkpoint head hash {root!r} is not base64") from exc
    if len(raw) != 32:
        raise CheckpointError(f"checkpoint head hash is {len(raw)} bytes, expected 32")
    return raw.hex()


def _parse_signature(line: str) -> NoteSignature:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise CheckpointError(f"signature line {line[:40]!r} does not start with an em dash")
    name, _, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    if not name or not encoded or " " in encoded:
        raise CheckpointError(f"signature line {line[:40]!r} is not '— <key name> <base64>'")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise CheckpointError(f"signature of key {name!r} is not base64") from exc
    if len(raw) != _KEY_ID_BYTES + _SIGNATURE_BYTES:
        raise CheckpointError(f"signature of key {name!r} is {len(raw)} bytes, expected 68")
    return NoteSignature(name, raw[:_KEY_ID_BYTES], raw[_KEY_ID_BYTES:])


def find_signature_fault(
    checkpoint: Checkpoint, public_keys: Mapping[str, Ed25519PublicKey]
) -> str | None:
    """Check the signatures of ``checkpoint``; return the fault, or None when it verifies.

    Follows the signed-note rules: a signature whose name and key ID match no known key
    is ignored, every signature of a known key must verify, and at least one must.
    """
    message = checkpoint.text.encode("utf-8")
    verified = 0
    for signature in checkpoint.signatures:
        public_key = public_keys.get(signature.key_name)
        if public_key is None or key_id(signature.key_name, public_key) != signature.key_id:
            continue
        try:
            public_key.verify(signature.signature, message)
        except InvalidSignature:
            return f"signature of key {signature.key_name!r} is invalid"
        verified += 1

    if verified:
        return None
    names = ", ".join(repr(name) for name in checkpoint.key_names)
    return (
        f"signed by unknown key {names}; add its public key to the folder of "
        "checkpoint public keys"
    )


def split_notes(text: str) -> list[str]:
    """Split the text of an anchor file into its notes, in file order.

    Raises CheckpointError naming the line number of a malformed or cut-off note.
    """
    if text and not text.endswith("\n"):
        raise CheckpointError("anchor text does not end in a newline; the last note is cut off")

    notes: list[str] = []
    current: list[str] = []
    in_signatures = False
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        if not in_signatures:
            if line == "" and not current:
                continue
            in_signatures = line == ""
            current.append(line)
            continue
        if line.startswith(_SIGNATURE_PREFIX):
            current.append(line)
            continue
        if line != "" or current[-1] == "":
            raise CheckpointError(f"line {number}: expected a signature line starting with '— '")
        notes.append("\n".join(current) + "\n")
        current = []
        in_signatures = False

    if current:
        if current[-1] == "" or not in_signatures:
            raise CheckpointError("the last note has no signature line; it is cut off")
        notes.append("\n".join(current) + "\n")
    return notes
