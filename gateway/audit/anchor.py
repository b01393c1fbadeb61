"""Anchors: copies of each checkpoint kept outside the audit database.

Someone who can rewrite the database can also replace or delete its checkpoint rows.
A copy elsewhere (a file on another volume or host, or the process output collected by
a log system) lets the verifier notice.

NOTE: an HTTP destination (a witness or a timestamp service) is not built yet.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Protocol, TextIO

from gateway.audit.checkpoint import CheckpointError, split_notes
from gateway.errors import AuditError, ConfigError

STDOUT_DESTINATION = "stdout"


class CheckpointAnchor(Protocol):
    """A destination that receives every checkpoint note before the store saves it."""

    description: str

    def publish(self, note: str) -> None:
        """Write ``note`` durably. Raises OSError if it could not."""
        ...


class FileAnchor:
    """An append-only text file of notes, each followed by one blank line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"anchor file {path}"

    def publish(self, note: str) -> None:
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(note + "\n")
            file.flush()
            os.fsync(file.fileno())


class StreamAnchor:
    """A text stream, standard output by default, that a log collector keeps."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self.description = "standard output"

    def publish(self, note: str) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write(note + "\n")
        stream.flush()


def anchor_from_setting(destination: str, base: Path) -> CheckpointAnchor:
    """Build the anchor that a settings value names: ``stdout`` or a file path.

    A relative path is taken from ``base``. Raises ConfigError for a URL, which is not
    supported yet.
    """
    if destination == STDOUT_DESTINATION:
        return StreamAnchor()
    if "://" in destination:
        raise ConfigError(
            f"checkpoint anchor {destination!r}: URL destinations are not supported yet; "
            "give a file path or 'stdout'"
        )
    path = Path(destination)
    return FileAnchor(path if path.is_absolute() else base / path)


def read_anchor_file(path: Path) -> list[str]:
    """Read the notes of the anchor file at ``path``, in file order.

    Raises AuditError if the file cannot be read or a note in it is malformed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AuditError(f"cannot read anchor file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise AuditError(f"anchor file {path} is not UTF-8 text") from exc
    try:
        return split_notes(text)
    except CheckpointError as exc:
        raise AuditError(f"anchor file {path}: {exc}") from exc
