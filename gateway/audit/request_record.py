"""The prepared record of one GraphQL request, encoded without building the event dict.

`prepare_request` returns the same `PreparedEvent` as `prepare_event` on the equivalent
`AuditEvent`, byte for byte, for the gateway's hot path. It skips the generic encoder,
the marks and the structural checks of `validate_event`, because the gateway builds
most values itself: the time, the operation hash, the outcome and each subject's
pseudonym. The caller passes the fields list already encoded, from a list that
`validate_fields` accepted. The values that come from the request are checked here
with `validate_request_values`.
"""

from __future__ import annotations

from collections.abc import Sequence
from json.encoder import encode_basestring
from typing import Literal

from gateway.audit.record import validate_request_values
from gateway.audit.store import PreparedEvent

Outcome = Literal["success", "partial", "denied", "error"]


def prepare_request(
    *,
    time: str,
    request_id: str,
    actor: str,
    roles: list[str],
    purpose: str | None,
    client: str | None,
    client_address: str | None,
    operation_name: str | None,
    operation_hash: str,
    subjects: Sequence[tuple[str, str]],
    fields_json: str,
    systems: list[str],
    records: int,
    outcome: Outcome,
    policy_version: str,
) -> PreparedEvent:
    """Encode a request's record for `GroupCommitStore.append_prepared`.

    ``time`` comes from `utc_timestamp`, ``operation_hash`` is 64 lowercase hex digits,
    each subject is a (type, pseudonym token) pair from `Pseudonymizer.token`, and
    ``fields_json`` is the canonical JSON of a validated ``fields`` list. Raises
    ValueError if a value from the request is invalid or cannot be encoded as UTF-8.

    Unlike `prepare_event`, this does not run `check_subject_types`, because a token from
    `Pseudonymizer.token` hashes its type, so two types give two tokens. If pairs built
    otherwise list a pseudonym under two types, the writer fails their whole commit.
    """
    validate_request_values(
        request_id=request_id, actor=actor, policy_version=policy_version, purpose=purpose,
        client=client, operation_name=operation_name, roles=roles, systems=systems,
        client_address=client_address, records=records,
    )

    # The keys in sorted order, as canonical_json writes them, split where the store
    # inserts prev_hash, seq and the sealed subjects.
    before_prev_hash = (
        f'{{"actor":{encode_basestring(actor)},"client":{_nullable(client)},'
        f'"client_address":{_nullable(client_address)},"fields":{fields_json},'
        f'"operation_hash":{encode_basestring(operation_hash)},'
        f'"operation_name":{_nullable(operation_name)},"outcome":{encode_basestring(outcome)},'
        f'"policy_version":{encode_basestring(policy_version)},"prev_hash":"'
    )
    before_seq = (
        f'","purpose":{_nullable(purpose)},"records":{records:d},'
        f'"request_id":{encode_basestring(request_id)},"roles":{_text_list(roles)},"seq":'
    )
    after_subjects = f',"systems":{_text_list(systems)},"time":{encode_basestring(time)}}}'
    template = (
        before_prev_hash.encode("utf-8"),
        before_seq.encode("utf-8"),
        b',"subjects":',
        after_subjects.encode("utf-8"),
    )

    # A response names few subject types, so each type's JSON is encoded once.
    kinds_json: dict[str, bytes] = {}
    sealed: list[tuple[str, str, bytes]] = []
    for kind, ref in subjects:
        kind_json = kinds_json.get(kind)
        if kind_json is None:
            kind_json = kinds_json[kind] = encode_basestring(kind).encode("utf-8")
        sealed.append((ref, kind, kind_json))
    sealed_subjects = tuple(sealed)
    refs = tuple(sorted({ref for _kind, ref in subjects}))
    columns = (time, request_id, actor, purpose, outcome)
    return PreparedEvent(columns, sealed_subjects, refs, template)


def _nullable(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


def _text_list(values: list[str]) -> str:
    return "[" + ",".join([encode_basestring(value) for value in values]) + "]"
