"""Turn one executed request into its audit record.

A request is recorded when it names a personal field or is denied any
field. The record lists data subjects only as keyed pseudonyms, and field
names, categories and decisions, never values, variables or the response.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Literal

from gateway.audit.operations import admin_event
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import (
    AdminKind,
    AuditEvent,
    DetailValue,
    FieldDecision,
    Subject,
    utc_timestamp,
)
from gateway.audit.store import AuditStore
from gateway.build import AuditFacts
from gateway.errors import AuditError
from gateway.fetch import FetchStats
from gateway.plan import Plan
from gateway.policy import PolicyEngine
from gateway.principal import Principal

log = logging.getLogger("gateway.audit")

Outcome = Literal["success", "partial", "denied", "error"]
# The actor of the records that the gateway writes about its own configuration.
GATEWAY_ACTOR = "fonte-gateway"


class AuditRecorder:
    """Appends one record per audited request and waits until it is durable."""

    def __init__(self, store: AuditStore, pseudonymizer: Pseudonymizer, *,
                 operation_key: bytes, fail_open: bool = False) -> None:
        self._store = store
        self._pseudonymizer = pseudonymizer
        self._operation_key = operation_key
        self.fail_open = fail_open

    @staticmethod
    def must_record(plan: Plan) -> bool:
        return any(decl.personal or not decision.allowed
                   for decl, decision in plan.judged.values())

    async def record(self, *, principal: Principal, request_id: str, query: str,
                     operation_name: str | None, plan: Plan, facts: AuditFacts,
                     stats: FetchStats, policy_version: str) -> int:
        event = self.event(principal=principal, request_id=request_id, query=query,
                           operation_name=operation_name, plan=plan, facts=facts, stats=stats,
                           policy_version=policy_version)
        try:
            return await self._store.append(event)
        except AuditError as exc:
            log.error("audit record of request %s not written: %s", request_id, exc)
            raise

    def event(self, *, principal: Principal, request_id: str, query: str,
              operation_name: str | None, plan: Plan, facts: AuditFacts, stats: FetchStats,
              policy_version: str) -> AuditEvent:
        subjects: list[Subject] = [
            {"type": kind, "ref": self._pseudonymizer.token(kind, key)}
            for kind, key in facts.subjects
        ]
        fields: list[FieldDecision] = [
            {"field": name, "category": decl.category, "decision": decision.effect,
             "rule": decision.rule, "mask": decision.mask}
            for name, (decl, decision) in sorted(plan.judged.items())
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
            "fields": fields,
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
        await self.record_admin("policy_change", {
            "previous_version": previous.version, "version": current.version,
            "reason": reason})

    async def healthy(self) -> bool:
        return await self._store.healthy()

    async def close(self) -> None:
        await self._store.close()


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
