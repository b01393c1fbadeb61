"""Gateway roles from token claims: which claims name roles, and how their names map.

Identity providers put roles in different places: Keycloak in
``realm_access.roles`` (or ``resource_access.<client>.roles``), Azure AD in
``roles`` (app roles) and ``groups`` (group object ids), OAuth servers in
the space-separated ``scope`` string. ``RoleMapping`` reads the claims it is
given by dotted path, and maps each name found through ``names``. Without
``names`` the names are the gateway roles themselves. A name with no mapping
is ignored, and only the count of such names is logged, because group names
can identify a person.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import AuthenticationError, ConfigError, NoRoleError

log = logging.getLogger("gateway.identity")


@dataclass(frozen=True)
class RoleMapping:
    """The claims that carry role names, and the gateway roles each name grants."""

    claims: tuple[str, ...] = ("roles",)
    # External name -> gateway roles; None means each name is a gateway role.
    names: Mapping[str, tuple[str, ...]] | None = field(default=None)

    def roles(self, token_claims: Mapping[str, Any]) -> frozenset[str]:
        """Return the gateway roles of a verified token; raise ``NoRoleError`` for none."""
        found = [name for path in self.claims for name in _claim_names(token_claims, path)]
        if self.names is None:
            roles = frozenset(found)
        else:
            mapped = [self.names[name] for name in found if name in self.names]
            roles = frozenset(role for group in mapped for role in group)
            unmapped = len(found) - len(mapped)
            if unmapped:
                log.debug("token carries %d name(s) in claims %s with no role mapping",
                          unmapped, ", ".join(self.claims))
        if not roles:
            raise NoRoleError(f"the bearer token carries no role this gateway accepts in claims "
                              f"{', '.join(self.claims)}; ask the identity provider's "
                              "administrator to assign a Fonte role")
        return roles

    def top_level_claims(self) -> frozenset[str]:
        """Return the first segment of each role claim path, which are not row-rule attributes."""
        return frozenset(path.split(".", 1)[0] for path in self.claims)


def _claim_names(token_claims: Mapping[str, Any], path: str) -> list[str]:
    value: Any = token_claims
    for segment in path.split("."):
        if not isinstance(value, Mapping) or segment not in value:
            return []
        value = value[segment]
    if isinstance(value, str):
        # RFC 6749 section 3.3: a scope is a space-delimited list of names.
        return value.split()
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise AuthenticationError(f"the token's {path!r} claim must be a list of names or a "
                              "space-separated string")


def role_mapping_from_table(auth: Mapping[str, Any]) -> RoleMapping:
    """Read ``role_claims`` and the ``[auth.role_map]`` table of the ``[auth]`` settings."""
    claims = auth.get("role_claims", ["roles"])
    if (not isinstance(claims, list) or not claims
            or not all(isinstance(c, str) and _valid_path(c) for c in claims)):
        raise ConfigError(f"[auth] role_claims = {claims!r} must be a non-empty list of claim "
                          'paths such as ["realm_access.roles", "groups", "scope"]')
    table = auth.get("role_map")
    if table is None:
        return RoleMapping(claims=tuple(claims))
    if not isinstance(table, Mapping) or not table:
        raise ConfigError("[auth.role_map] must be a table mapping names from the token to "
                          'Fonte roles, such as "fonte-sales" = "sales"')
    names: dict[str, tuple[str, ...]] = {}
    for name, roles in table.items():
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not roles or not all(
                isinstance(r, str) and r for r in roles):
            raise ConfigError(f"[auth.role_map] {name!r} = {roles!r} must be a role name or a "
                              "non-empty list of role names")
        names[str(name)] = tuple(roles)
    return RoleMapping(claims=tuple(claims), names=names)


def _valid_path(path: str) -> bool:
    return all(segment.strip() == segment and segment for segment in path.split("."))
