"""Persisted queries ("trusted documents"): operations registered ahead of time by id.

The manifest is a JSON file written at build time by the client's tooling,
in one of two formats:

- Apollo's persisted query manifest: ``{"format":
  "apollo-persisted-query-manifest", "version": 1, "operations": [{"id":
  ..., "name": ..., "type": "query", "body": ...}]}``;
- a flat map of id to document, as GraphQL Code Generator's client preset
  writes it (``persisted-documents.json`` with ``hashAlgorithm: "sha256"``).

Every id is the hexadecimal SHA-256 of its document, optionally prefixed
with ``sha256:`` as in the GraphQL-over-HTTP persisted documents appendix,
and is checked when the manifest is loaded. A request names a registered
document by ``documentId`` or by Apollo's
``extensions.persistedQuery.sha256Hash``.

Clients cannot register documents. Apollo's automatic persisted queries
store the text of a request that sends both the hash and the text, which
would let any caller add operations to the list that mode ``only`` fixes.
So a document sent with its hash is checked, and run unless the mode is
``only``, but never stored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.errors import ConfigError

Mode = Literal["off", "allow", "only"]
MODES: tuple[Mode, ...] = ("off", "allow", "only")
_PREFIX = "sha256:"
_APOLLO_FORMAT = "apollo-persisted-query-manifest"


@dataclass(frozen=True)
class PersistedQuerySettings:
    """``[persisted_queries]``: which documents may run, and where registered ones are."""

    mode: Mode = "off"
    manifest: Path | None = None


class PersistedQueryError(Exception):
    """The request names a persisted query that cannot run; the response is HTTP 400."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PersistedQueries:
    """The registered documents by SHA-256 id, and the mode that decides what runs.

    - ``off``: free text runs; a registered id cannot be used.
    - ``allow``: free text and registered ids run.
    - ``only``: only registered ids run.
    """

    mode: Mode = "off"
    documents: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, settings: PersistedQuerySettings) -> PersistedQueries:
        """Read and check the manifest that ``settings`` names."""
        if settings.mode == "off":
            return cls()
        if settings.manifest is None:
            raise ConfigError(f"[persisted_queries] mode = {settings.mode!r} needs manifest, "
                              "the path of a JSON file of registered operations")
        return cls(settings.mode, read_manifest(settings.manifest))

    def query_of(self, payload: dict[str, Any]) -> Any:
        """Return the document text that a request body requests to run.

        Returns the ``query`` member unchanged when the body names no
        persisted query, so the caller keeps checking its type. Raises
        ``PersistedQueryError`` when the named id is malformed, unknown or
        does not match the text sent with it, or when mode ``only`` receives
        free text.
        """
        query = payload.get("query")
        document_id = _requested_id(payload)
        if document_id is None:
            if self.mode == "only":
                raise PersistedQueryError(
                    "PERSISTED_QUERY_REQUIRED", "this gateway runs only registered operations; "
                    "send documentId with the id of a registered operation instead of query")
            return query
        if isinstance(query, str):
            actual = sha256_id(query)
            if actual != document_id:
                raise PersistedQueryError(
                    "PERSISTED_QUERY_HASH_MISMATCH", f"the SHA-256 of query is {actual}, not "
                    f"the id sent with it ({document_id}); send the id of this exact text")
            if self.mode != "only":
                return query
        elif self.mode == "off":
            raise PersistedQueryError(
                "PERSISTED_QUERY_NOT_SUPPORTED", "this gateway has no registered operations; "
                "send the document in query")
        registered = self.documents.get(document_id)
        if registered is None:
            raise PersistedQueryError(
                "PERSISTED_QUERY_NOT_FOUND", f"no registered operation has id {document_id}; "
                "register it in the manifest, since clients cannot register operations")
        return registered


def sha256_id(document: str) -> str:
    """Return the id of a document: the hexadecimal SHA-256 of its UTF-8 text."""
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


def read_manifest(path: Path) -> dict[str, str]:
    """Return the registered documents of the manifest at ``path`` by id."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"[persisted_queries] cannot read manifest {str(path)!r}: "
                          f"{exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"[persisted_queries] manifest {str(path)!r} is not valid JSON: "
                          f"{exc}") from exc
    entries = _manifest_entries(content, path)
    documents: dict[str, str] = {}
    for raw_id, body in entries:
        if not isinstance(raw_id, str) or not isinstance(body, str):
            raise ConfigError(f"[persisted_queries] manifest {str(path)!r}: each operation "
                              "needs a string id and a string document")
        document_id = _normalise_id(raw_id)
        if document_id != sha256_id(body):
            raise ConfigError(f"[persisted_queries] manifest {str(path)!r}: id {raw_id!r} is "
                              "not the SHA-256 of its document; generate the manifest with "
                              "SHA-256 ids")
        documents[document_id] = body
    return documents


def _manifest_entries(content: Any, path: Path) -> list[tuple[Any, Any]]:
    if isinstance(content, dict) and content.get("format") == _APOLLO_FORMAT:
        operations = content.get("operations")
        if not isinstance(operations, list) or not all(isinstance(o, dict)
                                                        for o in operations):
            raise ConfigError(f"[persisted_queries] manifest {str(path)!r}: operations must "
                              "be a list of objects with id and body")
        return [(operation.get("id"), operation.get("body")) for operation in operations]
    if isinstance(content, dict):
        return list(content.items())
    raise ConfigError(f"[persisted_queries] manifest {str(path)!r} must be a JSON object: an "
                      f"Apollo manifest (format {_APOLLO_FORMAT!r}) or a map of id to document")


def _normalise_id(raw_id: str) -> str:
    return raw_id[len(_PREFIX):] if raw_id.startswith(_PREFIX) else raw_id


def _requested_id(payload: dict[str, Any]) -> str | None:
    """Return the id a request body names, or None when it names none."""
    document_id = payload.get("documentId")
    extensions = payload.get("extensions")
    persisted = extensions.get("persistedQuery") if isinstance(extensions, dict) else None
    if document_id is None and persisted is None:
        return None
    if document_id is None:
        document_id = persisted.get("sha256Hash") if isinstance(persisted, dict) else None
    if not isinstance(document_id, str):
        raise PersistedQueryError(
            "BAD_REQUEST", "documentId and extensions.persistedQuery.sha256Hash must be "
            "strings: the SHA-256 of a document in hexadecimal")
    normalised = _normalise_id(document_id).lower()
    if len(normalised) != 64 or any(c not in "0123456789abcdef" for c in normalised):
        raise PersistedQueryError(
            "BAD_REQUEST", f"document id {document_id[:80]!r} is not a SHA-256 in hexadecimal "
            "(64 characters, optionally prefixed with sha256:)")
    return normalised
