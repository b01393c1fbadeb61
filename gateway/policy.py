"""Field access decisions: casbin behind one small typed facade.

casbin holds the rules (``policies/model.conf`` and ``policy.csv``). The
gateway never calls it per value or per row: ``PolicyEngine.view`` compiles
every field's decision for one (roles, purpose) pair once per policy
version and caches the result, so a request costs one dictionary lookup per
field it names.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import casbin

from gateway.catalog import Catalog
from gateway.errors import PolicyError

log = logging.getLogger("gateway.policy")

Effect = Literal["allow", "deny", "mask"]
DEFAULT_DENY = "default-deny"


@dataclass(frozen=True)
class Decision:
    """The outcome for one field: its effect and the rule that decided it."""

    effect: Effect
    rule: str
    mask: str | None = None

    @property
    def allowed(self) -> bool:
        return self.effect != "deny"


@dataclass(frozen=True)
class PolicyView:
    """Every field's decision for one (roles, purpose) pair and policy version."""

    roles: frozenset[str]
    purpose: str | None
    version: str
    decisions: Mapping[str, Decision]

    def decide(self, qualified_name: str) -> Decision:
        return self.decisions.get(qualified_name, Decision("deny", DEFAULT_DENY))


def default_policy_dir() -> Path:
    """Return the ``policies/`` folder shipped beside the package."""
    return Path(__file__).resolve().parent.parent / "policies"


def rule_id(row: Iterable[str]) -> str:
    """Return a stable id for a policy row: casbin rows carry none of their own."""
    text = ", ".join(row)
    return "p:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


class PolicyEngine:
    """Loads the casbin model and rules and compiles cached per-caller views."""

    def __init__(self, catalog: Catalog, directory: Path | None = None) -> None:
        directory = directory or default_policy_dir()
        self._catalog = catalog
        self._fields = [decl.qualified_name for decl in catalog.all_fields()]
        self._enforcer = _load_enforcer(directory, catalog)
        self.purposes = _load_purposes(directory / "purposes.toml")
        self.version = _policy_version(directory, self._enforcer)
        self._rules = {
            tuple(row): rule_id(row) for row in self._enforcer.get_policy()
        }
        self._views: dict[tuple[frozenset[str], str | None], PolicyView] = {}
        self._lock = threading.Lock()
        log.info("policy %s loaded: %d rules, %d fields", self.version, len(self._rules),
                 len(self._fields))

    @property
    def roles(self) -> list[str]:
        """Return the roles that have rules or purposes, in a stable order."""
        named = {row[0] for row in self._rules} | set(self.purposes)
        return sorted(named)

    def view(self, roles: Iterable[str], purpose: str | None) -> PolicyView:
        """Return the compiled decisions for a caller, computing them at most once."""
        key = (frozenset(roles), purpose)
        cached = self._views.get(key)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._views.get(key)
            if cached is None:
                cached = self._compile(*key)
                self._views[key] = cached
        return cached

    def explain(self, role: str, purpose: str, field: str) -> Decision:
        """Return the decision of one role for one field, as the matrix shows it."""
        return self.view([role], purpose).decide(field)

    def _compile(self, roles: frozenset[str], purpose: str | None) -> PolicyView:
        decisions = {field: self._decide(roles, purpose, field) for field in self._fields}
        return PolicyView(roles=roles, purpose=purpose, version=self.version,
                          decisions=decisions)

    def _decide(self, roles: frozenset[str], purpose: str | None, field: str) -> Decision:
        if purpose is None:
            return Decision("deny", DEFAULT_DENY)
        allow: Decision | None = None
        for role in sorted(roles):
            allowed, explain = self._enforce(role, field, purpose)
            if not explain:
                continue
            decision = Decision("allow" if allowed else "deny", self._rules[tuple(explain)])
            if not allowed:
                return decision
            allow = allow or decision
        return allow or Decision("deny", DEFAULT_DENY)

    def _enforce(self, role: str, field: str, purpose: str) -> tuple[bool, list[str]]:
        try:
            allowed, explain = self._enforcer.enforce_ex(role, field, purpose)
        except Exception as exc:  # casbin raises bare exceptions from its matcher evaluator
            raise PolicyError(f"policy evaluation failed for role {role!r}, field {field!r}, "
                              f"purpose {purpose!r}: {type(exc).__name__}") from exc
        return bool(allowed), list(explain)


def _load_enforcer(directory: Path, catalog: Catalog) -> casbin.Enforcer:
    model = directory / "model.conf"
    rules = directory / "policy.csv"
    for path in (model, rules):
        if not path.is_file():
            raise PolicyError(f"policy file {str(path)!r} not found; pass the folder that holds "
                              "model.conf and policy.csv")
    try:
        enforcer = casbin.Enforcer(str(model), str(rules))
    except Exception as exc:  # casbin reports model and CSV errors as plain exceptions
        raise PolicyError(f"cannot load policy from {str(directory)!r}: {exc}") from exc
    _check_rules(enforcer, catalog)

    links = [[decl.qualified_name, decl.category] for decl in catalog.all_fields()]
    links += [list(pair) for pair in catalog.category_parents()]
    enforcer.add_named_grouping_policies("g2", links)
    return enforcer


def _check_rules(enforcer: casbin.Enforcer, catalog: Catalog) -> None:
    known = set(catalog.categories) | {decl.qualified_name for decl in catalog.all_fields()}
    for row in enforcer.get_policy():
        if len(row) != 4 or row[3] not in ("allow", "deny"):
            raise PolicyError(f"policy row {', '.join(row)!r} must be: p, role, field or "
                              "category, purpose, allow|deny")
        if row[1] not in known:
            raise PolicyError(f"policy row {', '.join(row)!r} names {row[1]!r}, which is neither "
                              "a field (Type.field) nor a category of schema/taxonomy.toml")


def _load_purposes(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: invalid TOML: {exc}") from exc
    table = document.get("purposes", {})
    return {str(role): [str(p) for p in purposes] for role, purposes in table.items()}


def _policy_version(directory: Path, enforcer: casbin.Enforcer) -> str:
    digest = hashlib.sha256()
    digest.update((directory / "model.conf").read_bytes())
    for row in sorted(enforcer.get_policy()):
        digest.update(("|".join(row) + "\n").encode("utf-8"))
    for row in sorted(enforcer.get_named_grouping_policy("g2")):
        digest.update(("g2|" + "|".join(row) + "\n").encode("utf-8"))
    return digest.hexdigest()[:16]
