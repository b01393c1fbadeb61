"""Turn one executed request into its audit record.

A request is recorded when it names a personal field or is denied any
field. The record lists data subjects only as keyed pseudonyms, and field
names, categories and decisions, never values, variables or the response.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Literal

from gateway.audit.operations import admin_event
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import (
    AdminKind,
    AuditEvent,
    DetailValue,
    FieldDecision,
    Subject,
    canonical_json,
    utc_timestamp,
    validate_fields,
)
from gateway.audit.request_record import prepare_request
from gateway.audit.store import AuditStore, ExpectedAppend, PreparedEvent
from gateway.build import AuditFacts
from gateway.errors import AuditError
from gateway.fetch import FetchStats
from gateway.plan import Plan
from gateway.policy import PolicyEngine, PolicyView
from gateway.principal import Principal

log = logging.getLogger("gateway.audit")

Outcome = Literal["success", "partial", "denied", "error"]
# The actor of the records that the gateway writes about its own configuration.
GATEWAY_ACTOR = "fonte-gateway"
# Entries of each of the recorder's caches (field decisions per plan, operation hash per
# document text). A full cache is emptied and fills again.
DEFAULT_CACHE_SIZE = 512


class AuditRecorder:
    """Appends one record per audited request and waits until it is durable."""

    def __init__(self, store: AuditStore, pseudonymizer: Pseudonymizer, *,
                 operation_key: bytes, fail_open: bool = False,
                 cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._store = store
        self._pseudonymizer = pseudonymizer
        self._operation_key = operation_key
        self.fail_open = fail_open
        self._cache_size = cache_size
        # Keyed by document text. A hash is no personal value, but a text may contain
        # one, so the text is kept only in memory, as the executor's parse cache does.
        self._operation_hashes: dict[str, str] = {}
        # Keyed by (id(view), judged field names); see _decisions_of.
        self._decisions: dict[tuple[int, tuple[str, ...]], _Decisions] = {}

    @property
    def expected_records(self) -> int:
        """Requests announced with `expect` whose record is not yet appended or withdrawn."""
        return self._store.expected_appends

    @staticmethod
    def must_record(plan: Plan) -> bool:
        return any(decl.personal or not decision.allowed
                   for decl, decision in plan.judged.values())

    def expect(self, plan: Plan) -> ExpectedAppend | None:
        """Announce the record of a request that `must_record`, before its upstream calls.

        The store's commit delay waits for announced records (see
        `GroupCommitStore.set_commit_delay`). Returns None for a request without a record.
        Pass the handle to `record`, and withdraw it if the request ends without one.
        """
        return self._store.expect_append() if self.must_record(plan) else None

    async def record(self, *, principal: Principal, request_id: str, query: str,
                     operation_name: str | None, plan: Plan, facts: AuditFacts,
                     stats: FetchStats, policy_version: str,
                     expected: ExpectedAppend | None = None) -> int:
        """Append the record of one request and return its seq once it is durable.

        Gives the record that `event` describes, but encodes it with `prepare_request`,
        from the field decisions and operation hash cached for earlier requests.
        ``expected`` is the handle that `expect` returned for the request. Raises
        AuditError if the record is invalid or could not be stored.
        """
        try:
            prepared = self._prepare(principal=principal, request_id=request_id, query=query,
                                     operation_name=operation_name, plan=plan, facts=facts,
                                     stats=stats, policy_version=policy_version)
            return await self._store.append_prepared(prepared, expected)
        except (TypeError, ValueError) as exc:
            error = AuditError(f"invalid audit event: {exc}")
            log.error("audit record of request %s not written: %s", request_id, error)
            raise error from exc
        except AuditError as exc:
            log.error("audit record of request %s not written: %s", request_id, exc)
            raise

    def _prepare(self, *, principal: Principal, request_id: str, query: str,
                 operation_name: str | None, plan: Plan, facts: AuditFacts,
                 stats: FetchStats, policy_version: str) -> PreparedEvent:
        decisions = self._decisions_of(plan)
        token = self._pseudonymizer.token
        return prepare_request(
            time=utc_timestamp(),
            request_id=request_id,
            actor=principal.user,
            roles=sorted(principal.roles),
            purpose=principal.purpose,
            client=principal.client,
            client_address=principal.address,
            operation_name=operation_name,
            operation_hash=self._cached_operation_hash(query),
            subjects=[(kind, token(kind, key)) for kind, key in facts.subjects],
            fields_json=decisions.fields_json,
            systems=sorted(stats.requests),
            records=facts.records,
            outcome=_outcome_of(decisions, stats),
            policy_version=policy_version,
        )

    def _decisions_of(self, plan: Plan) -> _Decisions:
        """Return the encoded field decisions of ``plan``, from the cache when it has them.

        A plan's decisions follow from its view and the names of its judged fields,
        because a view decides each field name once and the catalog does not change
        while the gateway runs. The key contains the view's id, and the entry the view
        itself, so a view created later at the same address cannot hit the entry.
        """
        key = (id(plan.view), tuple(plan.judged))
        cached = self._decisions.get(key)
        if cached is not None and cached.view is plan.view:
            return cached

        fields = _field_decisions(plan)
        validate_fields(fields)
        judged = plan.judged.values()
        decisions = _Decisions(
            view=plan.view,
            fields_json=canonical_json(fields).decode("utf-8"),
            denied=any(not decision.allowed for _, decision in judged),
            personal_allowed=any(decl.personal and decision.allowed for decl, decision in judged),
        )
        if len(self._decisions) >= self._cache_size:
            self._decisions.clear()
        self._decisions[key] = decisions
        return decisions

    def _cached_operation_hash(self, query: str) -> str:
        digest = self._operation_hashes.get(query)
        if digest is None:
            digest = self.operation_hash(query)
            if len(self._operation_hashes) >= self._cache_size:
                self._operation_hashes.clear()
            self._operation_hashes[query] = digest
        return digest

    def event(self, *, principal: Principal, request_id: str, query: str,
              operation_name: str | None, plan: Plan, facts: AuditFacts, stats: FetchStats,
              policy_version: str) -> AuditEvent:
        subjects: list[Subject] = [
            {"type": kind, "ref": self._pseudonymizer.token(kind, key)}
            for kind, key in facts.subjects
        ]
        return {
            "time": utc_timestamp(),
            "request_id": request_id,
            "actor": principal.user,
            "roles": sorted(principal.roles),
            "purpose": principal.purpose,
            "client": principal.client,
            "client_address": principal.address,
            "operation_name": operation_name,
            "operation_hash": self.operation_hash(query),
            "subjects": subjects,
            "fields": _field_decisions(plan),
            "systems": sorted(stats.requests),
            "records": facts.records,
            "outcome": _outcome(plan, facts, stats),
            "policy_version": policy_version,
        }

    def operation_hash(self, query: str) -> str:
        """Return the keyed hash of a document's text.

        Keyed, because a document may contain a searched name: a plain hash
        would let a reader of the log confirm guesses of it.
        """
        return hmac.new(self._operation_key, query.encode("utf-8"), hashlib.sha256).hexdigest()

    async def record_admin(self, kind: AdminKind, details: dict[str, DetailValue]) -> None:
        """Append a record of a change to the gateway itself; log the error if it fails.

        The change has already taken effect, so a failed record must not undo it.
        """
        try:
            seq = await self._store.append(admin_event(kind, GATEWAY_ACTOR, details))
        except AuditError as exc:
            log.error("audit record of %s %s not written: %s", kind, details, exc)
            return
        log.info("recorded %s as audit record %d", kind, seq)

    async def policy_changed(self, previous: PolicyEngine, current: PolicyEngine,
                             reason: str) -> None:
        """Record that a reload replaced the policy, with both version hashes."""
        # The entries of the replaced policy's views could not be hit again, but they
        # would hold those views in memory until the cache is full.
        self._decisions.clear()
        await self.record_admin("policy_change", {
            "previous_version": previous.version, "version": current.version,
            "reason": reason})

    async def healthy(self) -> bool:
        return await self._store.healthy()

    async def close(self) -> None:
        await self._store.close()


@dataclass(frozen=True)
class _Decisions:
    """The part of a request's record that follows from its plan's field decisions."""

    view: PolicyView
    fields_json: str  # canonical JSON of the validated fields list
    denied: bool  # some field was denied
    personal_allowed: bool  # some personal field was allowed or masked


def _field_decisions(plan: Plan) -> list[FieldDecision]:
    return [
        {"field": name, "category": decl.category, "decision": decision.effect,
         "rule": decision.rule, "mask": decision.mask}
        for name, (decl, decision) in sorted(plan.judged.items())
    ]


def _outcome_of(decisions: _Decisions, stats: FetchStats) -> Outcome:
    """Return what `_outcome` returns, from the cached decisions."""
    if stats.failed:
        return "partial"
    if decisions.denied and not decisions.personal_allowed:
        return "denied"
    return "success"


def _outcome(plan: Plan, facts: AuditFacts, stats: FetchStats) -> Outcome:
    """Return "denied" when something was denied and no personal field was allowed."""
    if stats.failed:
        return "partial"
    judged = plan.judged.values()
    denied = any(not decision.allowed for _, decision in judged)
    personal_allowed = any(decl.personal and decision.allowed for decl, decision in judged)
    if denied and not personal_allowed:
        return "denied"
    return "success"
