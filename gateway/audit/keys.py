"""The Ed25519 keys that sign audit checkpoints, and the folder of their public keys.

A gateway signs with one key, named in each signature line. To rotate, give the
gateway a new key file and a new name: the public key of every key ever used stays in
the public-key folder as ``<name>.pub``, so checkpoints signed by earlier keys still
verify.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gateway.audit.checkpoint import validate_key_name
from gateway.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_KEY_NAME = "fonte-audit-1"
KEY_ENV_VAR = "FONTE_AUDIT_CHECKPOINT_KEY"
PUBLIC_KEY_SUFFIX = ".pub"


@dataclass(frozen=True)
class CheckpointKey:
    """A named Ed25519 private key that signs checkpoints."""

    name: str
    private_key: Ed25519PrivateKey

    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()


def load_or_create_signing_key(
    path: Path,
    *,
    name: str = DEFAULT_KEY_NAME,
    environ: Mapping[str, str] | None = None,
) -> CheckpointKey:
    """Load the checkpoint key named ``name`` from the environment or from ``path``.

    When the variable ``FONTE_AUDIT_CHECKPOINT_KEY`` in ``environ`` (default
    ``os.environ``) contains a PEM private key, that key is used and ``path`` is not read
    or written. Otherwise the PEM file at ``path`` is read, or created with a new key and
    mode 0600 (its directory with mode 0700) if it is missing.

    Raises ValueError for an invalid name, and ConfigError if the key is not a PEM
    Ed25519 private key or the file cannot be read or written.
    """
    validate_key_name(name)
    environment = os.environ if environ is None else environ
    pem = environment.get(KEY_ENV_VAR)
    if pem:
        return CheckpointKey(name, _parse_private_key(pem.encode("utf-8"), KEY_ENV_VAR))

    try:
        return CheckpointKey(name, _read_key_file(path))
    except FileNotFoundError:
        pass
    return CheckpointKey(name, _create_key_file(path))


def _read_key_file(path: Path) -> Ed25519PrivateKey:
    """Read an existing key file. Raises FileNotFoundError, for the caller to create it."""
    try:
        pem = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read checkpoint key file {path}: {exc.strerror}") from exc

    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "checkpoint key file %s has mode %o; restrict it with chmod 600",
            path,
            stat.S_IMODE(mode),
        )
    return _parse_private_key(pem, str(path))


def _create_key_file(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process created it between our read and this open.
        return _read_key_file(path)
    except OSError as exc:
        raise ConfigError(f"cannot create checkpoint key file {path}: {exc.strerror}") from exc

    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
        file.flush()
        os.fsync(file.fileno())
    logger.info("created a new checkpoint key file %s", path)
    return key


def _parse_private_key(pem: bytes, source: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{source} does not hold an unencrypted PEM private key; give an Ed25519 key "
            "in PKCS#8 PEM"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"{source} contains a {type(key).__name__}, not an Ed25519 key; checkpoints "
            "are signed with Ed25519"
        )
    return key


def public_key_path(folder: Path, name: str) -> Path:
    """Return the path of the public key file of the key ``name`` in ``folder``."""
    validate_key_name(name)
    return folder / f"{name}{PUBLIC_KEY_SUFFIX}"


def publish_public_key(key: CheckpointKey, folder: Path) -> Path:
    """Write the public half of ``key`` to ``folder/<name>.pub`` unless it is there already.

    Raises ConfigError if that file contains another key, because reusing a name for a new
    key would make the checkpoints signed by the old one fail to verify.
    """
    path = public_key_path(folder, key.name)
    raw = _raw(key.public_key())
    if path.exists():
        if _raw(_read_public_key(path)) != raw:
            raise ConfigError(
                f"public key file {path} contains another key than checkpoint key {key.name!r}; "
                "give the new key a new name, for example by raising its number"
            )
        return path

    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        raise ConfigError(f"cannot write checkpoint public key {path}: {exc.strerror}") from exc
    logger.info("published checkpoint public key %s", path)
    return path


def load_public_keys(folder: Path) -> dict[str, Ed25519PublicKey]:
    """Read every ``<name>.pub`` PEM file in ``folder``, keyed by name.

    A missing folder gives an empty mapping. Raises ConfigError for a file that is not
    an Ed25519 public key or whose name is not a valid key name.
    """
    if not folder.is_dir():
        return {}
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(folder.glob(f"*{PUBLIC_KEY_SUFFIX}")):
        name = path.name.removesuffix(PUBLIC_KEY_SUFFIX)
        try:
            validate_key_name(name)
        except ValueError as exc:
            raise ConfigError(f"public key file {path}: {exc}") from exc
        keys[name] = _read_public_key(path)
    return keys


def _read_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read checkpoint public key {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM public key; restore it from a backup") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(
            f"{path} contains a {type(key).__name__}, not an Ed25519 public key; "
            "replace it with the public key of the checkpoint key"
        )
    return key


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
