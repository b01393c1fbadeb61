"""The authenticated caller of one request."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Principal:
    """Who calls, in which roles, for which purpose of processing."""

    user: str
    roles: frozenset[str]
    purpose: str | None
    client: str | None = None
    attributes: dict[str, str] = field(default_factory=dict, compare=False)
