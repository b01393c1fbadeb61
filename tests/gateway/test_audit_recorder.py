"""Tests of AuditRecorder's caches: the record they give, their bound and their reset."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

import gateway.audit_events as audit_events
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.store import prepare_event
from gateway.audit.subject_keys import SubjectSealer
from gateway.audit.verify import verify_store
from gateway.audit_events import AuditRecorder
from gateway.build import AuditFacts
from gateway.catalog import FieldDecl
from gateway.errors import AuditError
from gateway.fetch import FetchStats
from gateway.plan import Plan
from gateway.policy import Decision, PolicyView
from gateway.principal import Principal

FIXED_TIME = "2026-12-05T09:30:00.000Z"
PRINCIPAL = Principal(user="u-17", roles=frozenset({"sales", "support"}), purpose="sales",
                      client="crm-web", address="127.0.0.1")


def _view(version: str = "v1") -> PolicyView:
    return PolicyView(frozenset({"sales"}), "sales", version, {}, {})


def _plan(view: PolicyView, names: tuple[str, ...] = ("name", "iban", "city"),
          effect: str = "allow") -> Plan:
    judged = {}
    for name in names:
        category = "non_personal.place" if name == "city" else "identity.name"
        decl = FieldDecl(owner="Customer", name=name, graphql_type="String", category=category,
                         description="")
        mask = "last4" if name == "iban" and effect == "mask" else None
        judged[decl.qualified_name] = (decl, Decision(effect, f"p:{name}", mask))  # type: ignore[arg-type]
    return Plan(roots=[], judged=judged, view=view)


def _facts(count: int) -> AuditFacts:
    facts = AuditFacts()
    facts.subjects = {("customer", f"C-{index}"): None for index in range(count)}
    facts.records = count
    return facts


def _stats(failed: bool = False) -> FetchStats:
    stats = FetchStats()
    stats.requests.update({"erp": 2, "crm": 1})
    if failed:
        stats.failed.add("erp")
    return stats


def _arguments(plan: Plan, **changes: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "principal": PRINCIPAL, "request_id": "req-1",
        "query": "query Card { customer(id: \"C-1\") { name iban city } }",
        "operation_name": "Card", "plan": plan, "facts": _facts(3), "stats": _stats(),
        "policy_version": plan.view.version,
    }
    arguments.update(changes)
    return arguments


@pytest.fixture
def recorder(store: SQLiteAuditStore, monkeypatch: pytest.MonkeyPatch) -> AuditRecorder:
    monkeypatch.setattr(audit_events, "utc_timestamp", lambda: FIXED_TIME)
    return AuditRecorder(store, Pseudonymizer(bytes(range(32))), operation_key=b"k" * 32,
                         cache_size=4)


@pytest.mark.parametrize(("changes", "plan_changes"), [
    ({}, {}),
    ({"facts": _facts(0)}, {}),
    ({"facts": _facts(120), "stats": _stats(failed=True)}, {}),
    ({"operation_name": None}, {"effect": "deny"}),
    ({"principal": Principal(user="ü\n", roles=frozenset(), purpose=None)}, {"effect": "mask"}),
    ({"request_id": "req-\"quoted\"", "stats": FetchStats()}, {"names": ()}),
])
def test_prepared_equals_event_path(recorder: AuditRecorder, changes: dict[str, Any],
                                    plan_changes: dict[str, Any]) -> None:
    arguments = _arguments(_plan(_view(), **plan_changes), **changes)
    reference = prepare_event(recorder.event(**arguments))
    keys = {ref: secrets.token_bytes(32) for ref in reference.refs}

    # Twice: the first call fills the caches, the second reads them.
    for _ in range(2):
        prepared = recorder._prepare(**arguments)
        assert prepared == reference
        assert (prepared.body(9, "cd" * 32, keys, SubjectSealer())
                == reference.body(9, "cd" * 32, keys, SubjectSealer()))


async def test_record_verifies(recorder: AuditRecorder, tmp_path: Path) -> None:
    plan = _plan(_view())
    for index in range(3):
        assert await recorder.record(**_arguments(plan, request_id=f"req-{index}")) == index + 1

    report = await verify_store(tmp_path / "audit.db")

    assert report.ok
    assert report.records == 3


def test_decision_cache_bounded(recorder: AuditRecorder) -> None:
    view = _view()
    plans = [_plan(view, names=("name", f"field{index}")) for index in range(9)]
    for plan in plans:
        recorder._prepare(**_arguments(plan))

    assert len(recorder._decisions) == 1
    assert len(recorder._operation_hashes) == 1


def test_operation_hash_cache_bounded(recorder: AuditRecorder) -> None:
    plan = _plan(_view())
    for index in range(9):
        recorder._prepare(**_arguments(plan, query=f"{{ q{index} }}"))

    assert len(recorder._operation_hashes) == 1


def test_decision_cache_keyed_by_view(recorder: AuditRecorder) -> None:
    denying = _plan(PolicyView(frozenset({"sales"}), "sales", "v1", {}, {}), effect="deny")
    allowing = _plan(PolicyView(frozenset({"sales"}), "sales", "v1", {}, {}))

    denied = recorder._prepare(**_arguments(denying))
    allowed = recorder._prepare(**_arguments(allowing))

    assert b'"decision":"deny"' in denied.template[0]
    assert b'"decision":"deny"' not in allowed.template[0]
    assert b'"outcome":"denied"' in denied.template[0]
    assert b'"outcome":"success"' in allowed.template[0]


async def test_policy_change_empties_cache(recorder: AuditRecorder) -> None:
    recorder._prepare(**_arguments(_plan(_view())))
    assert len(recorder._decisions) == 1

    class Engine:
        def __init__(self, version: str) -> None:
            self.version = version

    await recorder.policy_changed(Engine("v1"), Engine("v2"), "test")  # type: ignore[arg-type]

    assert recorder._decisions == {}


async def test_invalid_value_fails_closed(recorder: AuditRecorder,
                                          store: SQLiteAuditStore) -> None:
    arguments = _arguments(_plan(_view()), principal=Principal(user="", roles=frozenset(),
                                                               purpose=None))

    with pytest.raises(AuditError, match="invalid audit event: actor must be a non-empty string"):
        await recorder.record(**arguments)

    assert store.commits == 0


async def test_invalid_field_is_not_cached(recorder: AuditRecorder) -> None:
    plan = _plan(_view())
    decl, _decision = plan.judged["Customer.name"]
    plan.judged["Customer.name"] = (decl, Decision("allow", ""))

    for _ in range(2):
        with pytest.raises(AuditError, match=r"fields\[2\]\.rule must be a non-empty string"):
            await recorder.record(**_arguments(plan))

    assert recorder._decisions == {}
