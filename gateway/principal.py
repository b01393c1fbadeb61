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
    # IP address of the caller, after trusted proxies' X-Forwarded-For; None when unknown.
    address: str | None = None
    # String claims of the token beyond the registered ones (region, team ...),
    # which row rules compare with record fields.
    attributes: dict[str, str] = field(default_factory=dict, compare=False)

    def claims(self) -> dict[str, str]:
        """Return the attributes row rules may name; "user" is the token subject."""
        return {**self.attributes, "user": self.user}
