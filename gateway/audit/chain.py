"""The hash chain that links audit records.

Record ``seq`` stores ``hash = chain_hash(prev_hash, seq, body)``, where ``prev_hash`` is
the hash of record ``seq - 1`` (`GENESIS_HASH` for record 1). Editing, deleting or
reordering a record other than the last therefore breaks the chain at that record or
the next one. The hash is unkeyed, so someone with write access can rebuild the chain
from the changed record to the end, or delete records at the end. Detecting that needs
checkpoints signed or published outside the database.
"""

from __future__ import annotations

import hashlib
import re

GENESIS_HASH = "0" * 64

# Separates these hashes from any other SHA-256 use of the same bytes. Changing it
# invalidates every stored chain.
_DOMAIN_PREFIX = b"fonte-audit-chain-v1\x00"
_HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
_MAX_SEQ = 2**63 - 1


def is_chain_hash(value: object) -> bool:
    """Return whether ``value`` has the format of a chain hash: 64 lowercase hex digits."""
    return isinstance(value, str) and _HASH_PATTERN.fullmatch(value) is not None


def chain_hash(prev_hash: str, seq: int, body: bytes) -> str:
    """Compute the hash of record ``seq`` as lowercase SHA-256 hex.

    The digest covers the domain prefix, the 32 raw bytes of ``prev_hash``, ``seq`` as an
    8-byte big-endian integer, then ``body``. The first three parts have fixed lengths,
    so no two inputs give the same byte string. Raises ValueError for a malformed
    ``prev_hash`` or a ``seq`` outside 1 to 2**63 - 1.
    """
    if not is_chain_hash(prev_hash):
        raise ValueError("prev_hash must be 64 lowercase hex digits")
    if isinstance(seq, bool) or not 1 <= seq <= _MAX_SEQ:
        raise ValueError(f"seq {seq!r} is outside 1 to 2**63 - 1")

    digest = hashlib.sha256(_DOMAIN_PREFIX)
    digest.update(bytes.fromhex(prev_hash))
    digest.update(seq.to_bytes(8, "big"))
    digest.update(body)
    return digest.hexdigest()


def next_chain_hash(prev_hash: str, seq: int, body: bytes) -> str:
    """Compute `chain_hash` without checking the arguments, for the store's write path.

    The store passes a head hash that `read_head` verified or a hash computed here, and
    a seq after that head, so the checks of `chain_hash` would only repeat them.
    """
    return hashlib.sha256(
        _DOMAIN_PREFIX + bytes.fromhex(prev_hash) + seq.to_bytes(8, "big") + body
    ).hexdigest()
