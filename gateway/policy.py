"""Field access decisions: casbin behind one small typed facade.

casbin evaluates the rules (``policies/model.conf`` and ``policy.csv``). The
gateway never calls it per value or per row: ``PolicyEngine.view`` compiles
every field's decision and every type's row rules for one (roles, purpose)
pair once per policy version and caches the result, so a request costs one
dictionary lookup per field it names.

A decision is reached in two steps. The hierarchical matcher ``m`` says
whether any deny row matches (deny wins) and whether any allow row matches.
When one does, the exact matcher ``m2`` is asked level by level, from the
field up its category chain, and the most specific allow row decides the
mask. A user holding several roles gets the least restrictive allow of them,
unless any role meets a deny row.
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
from casbin.core_enforcer import EnforceContext
from casbin.model import Model

from gateway.catalog import Catalog, FieldDecl
from gateway.errors import PolicyError
from gateway.masks import parse_mask
from gateway.resources import shipped_dir

log = logging.getLogger("gateway.policy")

# casbin logs every loaded rule and, when enabled, every decision at INFO;
# the gateway logs its own summary instead.
logging.getLogger("casbin").setLevel(logging.WARNING)

Effect = Literal["allow", "deny", "mask"]
DEFAULT_DENY = "default-deny"
NO_MASK = "-"
USER_CLAIM = "user"
_EXACT = EnforceContext(rtype="r", ptype="p", etype="e", mtype="m2")


@dataclass(frozen=True)
class Decision:
    """The outcome for one field: its effect, the rule that decided it, the mask."""

    effect: Effect
    rule: str
    mask: str | None = None

    @property
    def allowed(self) -> bool:
        return self.effect != "deny"


# The decision on a field no rule names. Decisions are frozen, so one serves every caller.
DENIED_BY_DEFAULT = Decision("deny", DEFAULT_DENY)

@dataclass(frozen=True)
class RowRule:
    """Records of a type are visible only where ``field`` equals the caller's ``claim``."""

    type_name: str
    field: str
    claim: str
    rule: str


@dataclass(frozen=True)
class PolicyView:
    """Every field's decision and every type's row rules for one (roles, purpose)."""

    roles: frozenset[str]
    purpose: str | None
    version: str
    decisions: Mapping[str, Decision]
    row_rules: Mapping[str, tuple[RowRule, ...]]

    def decide(self, qualified_name: str) -> Decision:
        return self.decisions.get(qualified_name, DENIED_BY_DEFAULT)

    def rows_of(self, type_name: str) -> tuple[RowRule, ...] | None:
        """Return the row rules limiting ``type_name`` (alternatives), or None for no limit."""
        return self.row_rules.get(type_name)


@dataclass(frozen=True)
class PolicyText:
    """A policy as text and rows, wherever it was loaded from."""

    model: str
    rules: list[list[str]]
    purposes: dict[str, list[str]]
    origin: str


def default_policy_dir() -> Path:
    """Return the shipped ``policies/`` folder."""
    return shipped_dir("policies")


def rule_id(row: Iterable[str]) -> str:
    """Return a stable id for a policy row: casbin rows carry none of their own."""
    text = ", ".join(row)
    return "p:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def read_policy_dir(directory: Path) -> PolicyText:
    """Read ``model.conf``, ``policy.csv`` and ``purposes.toml`` from ``directory``."""
    model, rules = directory / "model.conf", directory / "policy.csv"
    for path in (model, rules):
        if not path.is_file():
            raise PolicyError(f"policy file {str(path)!r} not found; pass the folder that contains "
                              "model.conf and policy.csv")
    rows = []
    for number, line in enumerate(rules.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        row = [token.strip() for token in text.split(",")]
        if any(not token for token in row):
            raise PolicyError(f"{rules}:{number}: empty value in {text!r}; write '-' for no mask")
        rows.append(row)
    return PolicyText(model=model.read_text(encoding="utf-8"), rules=rows,
                      purposes=_load_purposes(directory / "purposes.toml"),
                      origin=str(directory))


class PolicyEngine:
    """One loaded policy version; compiles and caches per-caller views."""

    def __init__(self, catalog: Catalog, policy: PolicyText) -> None:
        self._catalog = catalog
        self._fields = {decl.qualified_name: decl for decl in catalog.all_fields()}
        self._policy = policy
        self._enforcer = _build_enforcer(policy, catalog)
        self._role_enforcers: dict[str, casbin.Enforcer] = {}
        self.purposes = policy.purposes
        self.origin = policy.origin
        self.version = _policy_version(policy.model, self._enforcer, policy.purposes)
        self.rules = {rule_id(row): ", ".join(row) for row in self._enforcer.get_policy()}
        self._row_rules = [list(row) for row in self._enforcer.get_named_policy("p2")]
        self._views: dict[tuple[frozenset[str], str | None], PolicyView] = {}
        self._lock = threading.Lock()
        log.info("policy %s loaded from %s: %d rules, %d row rules, %d fields", self.version,
                 self.origin, len(self.rules), len(self._row_rules), len(self._fields))

    @classmethod
    def from_directory(cls, catalog: Catalog, directory: Path | None = None) -> PolicyEngine:
        return cls(catalog, read_policy_dir(directory or default_policy_dir()))

    @property
    def roles(self) -> list[str]:
        """Return the roles that have rules or purposes, in a stable order."""
        named = {row[0] for row in self._enforcer.get_policy()} | set(self.purposes)
        named |= {row[0] for row in self._row_rules}
        named |= {row[0] for row in self._enforcer.get_grouping_policy()}
        return sorted(named)

    def purposes_of(self, roles: Iterable[str]) -> set[str]:
        """Return the purposes the roles, and the roles they inherit, may act for."""
        allowed: set[str] = set()
        for role in roles:
            for held in [role, *self._inherited(role)]:
                allowed.update(self.purposes.get(held, []))
        return allowed

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

    def cached_view(self, roles: Iterable[str], purpose: str | None) -> PolicyView | None:
        """Return the compiled view if it exists, without compiling it."""
        return self._views.get((frozenset(roles), purpose))

    def explain(self, roles: Iterable[str], purpose: str | None, field: str) -> Decision:
        """Return the decision for one field, as a request of these roles would get it."""
        if field not in self._fields:
            raise PolicyError(f"field {field!r} is not declared; write it as Type.field, "
                              "for example Customer.iban")
        return self.view(roles, purpose).decide(field)

    def _compile(self, roles: frozenset[str], purpose: str | None) -> PolicyView:
        # A purpose the roles may not act for counts as none: only rows for
        # any purpose ("*") can then match.
        effective = purpose if purpose in self.purposes_of(roles) else None
        decisions = {name: self._decide(roles, effective, decl)
                     for name, decl in self._fields.items()}
        rows = self._compile_row_rules(roles, effective)
        return PolicyView(roles=roles, purpose=effective, version=self.version,
                          decisions=decisions, row_rules=rows)

    def _decide(self, roles: frozenset[str], purpose: str | None, decl: FieldDecl) -> Decision:
        allows: list[Decision] = []
        for role in sorted(roles):
            allowed, explain = self._enforce(None, role, decl.qualified_name, purpose)
            if explain and not allowed:
                return Decision("deny", rule_id(explain))
            if allowed:
                allows.append(self._most_specific(role, purpose, decl))
        if not allows:
            return Decision("deny", DEFAULT_DENY)
        return min(allows, key=lambda decision: decision.effect != "allow")

    def _most_specific(self, role: str, purpose: str | None, decl: FieldDecl) -> Decision:
        for level in _levels(decl):
            allowed, explain = self._enforce(_EXACT, role, level, purpose)
            if allowed and explain:
                mask = explain[4]
                if mask == NO_MASK or decl.is_relation:
                    return Decision("allow", rule_id(explain))
                return Decision("mask", rule_id(explain), mask)
        raise PolicyError(f"role {role!r} is allowed {decl.qualified_name} but no rule matches "
                          "it exactly; the model's matchers m and m2 disagree")

    def _compile_row_rules(self, roles: frozenset[str],
                           purpose: str | None) -> dict[str, tuple[RowRule, ...]]:
        """Return the row rules that limit each type for this set of roles.

        Decisions are per field, not per record, so a role without row rules
        lifts the limit of a role with them only when it may read every
        personal field of the type the limited role may read: otherwise the
        limited role's fields would show on records it must not see.
        """
        compiled: dict[str, tuple[RowRule, ...]] = {}
        for type_name, decl in self._catalog.types.items():
            personal = [f for f in decl.fields.values() if f.personal]
            limited: list[RowRule] = []
            limited_reads: set[str] = set()
            free_reads: set[str] = set()
            for role in sorted(roles):
                if not self._reads_type(role, purpose, decl.fields.values()):
                    continue
                reads = {f.qualified_name for f in personal
                         if self._enforce(None, role, f.qualified_name, purpose)[0]}
                rules = self._row_rules_of(role, type_name)
                if rules:
                    limited.extend(rules)
                    limited_reads |= reads
                else:
                    free_reads |= reads
            if limited and not limited_reads <= free_reads:
                compiled[type_name] = tuple(limited)
        return compiled

    def _reads_type(self, role: str, purpose: str | None, fields: Iterable[FieldDecl]) -> bool:
        return any(self._enforce(None, role, f.qualified_name, purpose)[0] for f in fields)

    def _row_rules_of(self, role: str, type_name: str) -> list[RowRule]:
        held = {role, *self._inherited(role)}
        return [RowRule(type_name=row[1], field=row[2], claim=row[3], rule=rule_id(["p2", *row]))
                for row in self._row_rules if row[0] in held and row[1] == type_name]

    def _inherited(self, role: str) -> list[str]:
        return list(self._enforcer.get_implicit_roles_for_user(role))

    def _enforcer_for(self, role: str) -> casbin.Enforcer:
        """Return an enforcer holding only the rules that can match ``role``.

        casbin scans every rule on each call, so compiling one role's view
        against the whole policy would cost in proportion to all roles' rules.
        The subset makes a role's compile cost depend on its own rules only.
        """
        enforcer = self._role_enforcers.get(role)
        if enforcer is None:
            held = {role, *self._inherited(role)}
            rows = [row for row in self._policy.rules
                    if row[0] not in ("p", "p2") or row[1] in held]
            subset = PolicyText(self._policy.model, rows, self._policy.purposes,
                                self._policy.origin)
            enforcer = _build_enforcer(subset, self._catalog, checked=True)
            self._role_enforcers[role] = enforcer
        return enforcer

    def _enforce(self, context: EnforceContext | None, role: str, obj: str,
                 purpose: str | None) -> tuple[bool, list[str]]:
        arguments = (role, obj, purpose or "")
        enforcer = self._enforcer_for(role)
        try:
            if context is None:
                allowed, explain = enforcer.enforce_ex(*arguments)
            else:
                allowed, explain = enforcer.enforce_ex(context, *arguments)
        except Exception as exc:  # casbin raises bare exceptions from its matcher evaluator
            raise PolicyError(f"policy evaluation failed for role {role!r}, field {obj!r}, "
                              f"purpose {purpose!r}: {type(exc).__name__}") from exc
        return bool(allowed), list(explain)


def _levels(decl: FieldDecl) -> list[str]:
    """Return the field and its categories, most specific first."""
    levels = [decl.qualified_name]
    category = decl.category
    while category:
        levels.append(category)
        category = category.rpartition(".")[0]
    return levels


def _build_enforcer(policy: PolicyText, catalog: Catalog, *,
                    checked: bool = False) -> casbin.Enforcer:
    try:
        model = Model()
        model.load_model_from_text(policy.model)
        enforcer = casbin.Enforcer(model)
    except Exception as exc:  # casbin reports model errors as plain exceptions
        raise PolicyError(f"cannot load the policy model from {policy.origin}: {exc}") from exc

    known = set(catalog.categories) | {decl.qualified_name for decl in catalog.all_fields()}
    by_type: dict[str, list[list[str]]] = {}
    for row in policy.rules:
        if not checked:
            _check_row(row, known, catalog)
        by_type.setdefault(row[0], []).append(row[1:])
    links = [[decl.qualified_name, decl.category] for decl in catalog.all_fields()]
    links += [list(pair) for pair in catalog.category_parents()]
    by_type.setdefault("g2", []).extend(links)

    for ptype, rows in by_type.items():
        if ptype.startswith("g"):
            enforcer.add_named_grouping_policies(ptype, rows)
        else:
            enforcer.add_named_policies(ptype, rows)
    return enforcer


_ROW_SHAPES = {"p": 6, "p2": 5, "g": 3, "g3": 3}


def _check_row(row: list[str], known: set[str], catalog: Catalog) -> None:
    text = ", ".join(row)
    expected = _ROW_SHAPES.get(row[0])
    if expected is None:
        raise PolicyError(f"policy row {text!r} starts with {row[0]!r}; use p, p2, g or g3")
    if len(row) != expected:
        raise PolicyError(f"policy row {text!r} has {len(row) - 1} values; {row[0]} rows have "
                          f"{expected - 1} (see policies/model.conf)")
    if row[0] == "p":
        _check_field_rule(row, text, known, catalog)
    elif row[0] == "p2":
        _check_row_rule(row, text, catalog)


def _check_field_rule(row: list[str], text: str, known: set[str], catalog: Catalog) -> None:
    if row[4] not in ("allow", "deny"):
        raise PolicyError(f"policy row {text!r}: effect {row[4]!r} must be allow or deny")
    if row[2] not in known:
        raise PolicyError(f"policy row {text!r} names {row[2]!r}, which is neither a field "
                          "(Type.field) nor a category of schema/taxonomy.toml")
    if row[4] == "deny" and row[5] != NO_MASK:
        raise PolicyError(f"policy row {text!r}: a deny row takes no mask; write '-'")
    if row[5] != NO_MASK:
        parse_mask(row[5])


def _check_row_rule(row: list[str], text: str, catalog: Catalog) -> None:
    type_decl = catalog.types.get(row[2])
    if type_decl is None:
        raise PolicyError(f"row rule {text!r} names type {row[2]!r}, which is not declared")
    field = type_decl.fields.get(row[3])
    if field is None or field.is_relation or field.link is not None:
        raise PolicyError(f"row rule {text!r}: {row[2]}.{row[3]} must be a field of the type's "
                          f"own entity ({type_decl.system} {type_decl.entity}), not a relation "
                          "or a linked field, so the filter can run in the upstream query")


def _load_purposes(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: invalid TOML: {exc}") from exc
    table = document.get("purposes", {})
    return {str(role): [str(p) for p in purposes] for role, purposes in table.items()}


def _policy_version(model: str, enforcer: casbin.Enforcer,
                    purposes: Mapping[str, list[str]]) -> str:
    digest = hashlib.sha256(model.encode("utf-8"))
    for role in sorted(purposes):
        digest.update(("purposes|" + role + "|" + "|".join(purposes[role]) + "\n").encode())
    for ptype in ("p", "p2"):
        for row in sorted(enforcer.get_named_policy(ptype)):
            digest.update((ptype + "|" + "|".join(row) + "\n").encode("utf-8"))
    for gtype in ("g", "g2", "g3"):
        for row in sorted(enforcer.get_named_grouping_policy(gtype)):
            digest.update((gtype + "|" + "|".join(row) + "\n").encode("utf-8"))
    return digest.hexdigest()[:16]
