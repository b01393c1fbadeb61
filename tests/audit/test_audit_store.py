"""Tests of SQLiteAuditStore: seqs, durability, group commit and commit failures."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import cast

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.audit import sqlite_store
from gateway.audit import store as store_module
from gateway.audit.chain import GENESIS_HASH, chain_hash
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import AdminEvent, AuditEvent, canonical_json, validate_event
from gateway.audit.sqlite import set_writer_pragmas
from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.store import prepare_event, sqlite_url
from gateway.audit.subject_keys import (
    SealedSubjects,
    SubjectSealer,
    open_subject,
    seal,
    seal_subjects,
)
from gateway.audit.verify import verify_store
from gateway.errors import AuditError, AuditIntegrityError

PSEUDONYMS = Pseudonymizer(b"store-test-key".ljust(32, b"."))


def make_event(request_id: str = "req-1", **changes: object) -> AuditEvent:
    event: dict[str, object] = {
        "time": "2026-12-04T20:17:39.123Z",
        "request_id": request_id,
        "actor": "emp-17",
        "roles": ["sales"],
        "purpose": "support",
        "client": "crm-web",
        "operation_name": "CustomerCard",
        "operation_hash": hashlib.sha256(b"query CustomerCard { customer { email } }").hexdigest(),
        "subjects": [{"type": "customer", "ref": PSEUDONYMS.token("customer", "C-1001")}],
        "fields": [
            {
                "field": "Customer.email",
                "category": "contact.email",
                "decision": "allow",
                "rule": "sales-read-contact",
                "mask": None,
            }
        ],
        "systems": ["crm"],
        "records": 1,
        "outcome": "success",
        "policy_version": "2026-12-01",
    }
    event.update(changes)
    return cast(AuditEvent, event)


def count_rows(path: Path, table: str = "audit_record") -> int:
    with sqlite3.connect(path) as connection:
        (count,) = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(count)


def run_sql(path: Path, *statements: str) -> None:
    connection = sqlite3.connect(path)
    try:
        for statement in statements:
            connection.execute(statement)
        connection.commit()
    finally:
        connection.close()


async def test_append_returns_consecutive_seqs(store: SQLiteAuditStore) -> None:
    first = await store.append(make_event("req-1"))
    second = await store.append(make_event("req-2"))
    third = await store.append(make_event("req-3"))

    assert first == 1
    assert second == 2
    assert third == 3


async def test_append_is_durable_on_return(tmp_path: Path, store: SQLiteAuditStore) -> None:
    seq = await store.append(make_event("req-durable"))

    # A separate engine opens its own connection, so it can read only committed rows.
    engine = create_async_engine(sqlite_url(tmp_path / "audit.db"))
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                text("SELECT seq, request_id FROM audit_record WHERE seq = :seq"), {"seq": seq}
            )
            row = result.one()
    finally:
        await engine.dispose()

    assert tuple(row) == (1, "req-durable")


async def test_stored_row_matches_chain(tmp_path: Path, store: SQLiteAuditStore) -> None:
    event = make_event("req-chain")
    await store.append(event)

    with sqlite3.connect(tmp_path / "audit.db") as connection:
        row = connection.execute(
            "SELECT seq, time, request_id, actor, purpose, outcome, body, prev_hash, hash "
            "FROM audit_record"
        ).fetchone()
        subjects = connection.execute("SELECT seq, ref FROM audit_subject").fetchall()
        keys = connection.execute("SELECT ref, key FROM audit_subject_key").fetchall()

    ref = PSEUDONYMS.token("customer", "C-1001")
    body = json.loads(row[6])
    sealed = body["subjects"][0]["seq_sealed"]
    expected_body = canonical_json(
        {
            **event,
            "subjects": [{"type": "customer", "seq_sealed": sealed}],
            "seq": 1,
            "prev_hash": GENESIS_HASH,
        }
    )
    assert row[:6] == (1, "2026-12-04T20:17:39.123Z", "req-chain", "emp-17", "support", "success")
    assert row[6] == expected_body.decode("utf-8")
    assert ref not in row[6]
    assert row[7] == GENESIS_HASH
    assert row[8] == chain_hash(GENESIS_HASH, 1, expected_body)
    assert subjects == [(1, ref)]
    assert [stored_ref for stored_ref, _ in keys] == [ref]
    assert open_subject(keys[0][1], body["subjects"][0], seq=1) == ref
    assert sealed == seal(keys[0][1], ref, seq=1, kind="customer")


async def test_sealed_subject_differs_per_record(tmp_path: Path, store: SQLiteAuditStore) -> None:
    await store.append(make_event("req-1"))
    await store.append(make_event("req-2"))

    with sqlite3.connect(tmp_path / "audit.db") as connection:
        bodies = [row[0] for row in connection.execute("SELECT body FROM audit_record")]
        key_rows = count_rows(tmp_path / "audit.db", "audit_subject_key")

    first, second = (json.loads(body)["subjects"][0]["seq_sealed"] for body in bodies)
    assert first != second
    assert key_rows == 1


async def test_concurrent_appends_share_commits(tmp_path: Path, store: SQLiteAuditStore) -> None:
    events = [make_event(f"req-{index}") for index in range(300)]

    seqs = await asyncio.gather(*(store.append(event) for event in events))

    assert sorted(seqs) == list(range(1, 301))
    assert store.commits < 300
    report = await verify_store(tmp_path / "audit.db")
    assert report.ok
    assert report.records == 300


async def test_max_batch_limits_commit_size(tmp_path: Path) -> None:
    store = await SQLiteAuditStore.open(tmp_path / "audit.db", max_batch=10)
    try:
        seqs = await asyncio.gather(*(store.append(make_event(f"r{i}")) for i in range(25)))
    finally:
        await store.close()

    assert seqs == list(range(1, 26))
    # All 25 appends are queued before the writer runs, so it commits 10 + 10 + 5.
    assert store.commits == 3


async def test_seqs_follow_call_order(store: SQLiteAuditStore) -> None:
    seqs = await asyncio.gather(*(store.append(make_event(f"r{i}")) for i in range(20)))

    assert seqs == list(range(1, 21))


async def test_reopen_continues_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    first_store = await SQLiteAuditStore.open(path)
    await first_store.append(make_event("req-1"))
    await first_store.append(make_event("req-2"))
    await first_store.close()

    second_store = await SQLiteAuditStore.open(path)
    try:
        seq = await second_store.append(make_event("req-3"))
    finally:
        await second_store.close()

    assert seq == 3
    report = await verify_store(path)
    assert report.ok
    assert report.records == 3


async def test_open_sets_wal_journal(tmp_path: Path, store: SQLiteAuditStore) -> None:
    with sqlite3.connect(tmp_path / "audit.db") as connection:
        (journal_mode,) = connection.execute("PRAGMA journal_mode").fetchone()

    assert journal_mode == "wal"


def test_writer_pragmas_turn_secure_delete_on(tmp_path: Path) -> None:
    # SQLite builds without SQLITE_SECURE_DELETE start with it off.
    connection = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    try:
        connection.execute("PRAGMA secure_delete=OFF")
        set_writer_pragmas(connection, None)
        secure_delete = connection.execute("PRAGMA secure_delete").fetchone()
        synchronous = connection.execute("PRAGMA synchronous").fetchone()
    finally:
        connection.close()

    assert secure_delete == (1,)
    assert synchronous == (2,)


async def test_open_missing_directory_fails(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "audit.db"

    with pytest.raises(AuditError, match=r"directory .*missing of audit store .* not found"):
        await SQLiteAuditStore.open(path)


async def test_open_rejects_zero_max_batch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_batch must be at least 1, not 0"):
        await SQLiteAuditStore.open(tmp_path / "audit.db", max_batch=0)


async def test_open_rejects_damaged_last_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = await SQLiteAuditStore.open(path)
    for index in range(3):
        await store.append(make_event(f"req-{index}"))
    await store.close()
    run_sql(path, f"UPDATE audit_record SET hash = '{'a' * 64}' WHERE seq = 3")

    with pytest.raises(AuditIntegrityError, match=r"last audit record 3 in .* does not verify"):
        await SQLiteAuditStore.open(path)


async def test_commit_failure_marks_unhealthy(tmp_path: Path, store: SQLiteAuditStore) -> None:
    path = tmp_path / "audit.db"
    assert await store.append(make_event("req-1")) == 1
    assert await store.healthy()
    run_sql(
        path,
        "CREATE TRIGGER fail_insert BEFORE INSERT ON audit_record "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )

    with pytest.raises(AuditError, match=r"audit commit to .* failed: injected failure") as caught:
        await store.append(make_event("req-2"))

    assert isinstance(caught.value.__cause__, Exception)
    assert not await store.healthy()
    assert count_rows(path) == 1

    run_sql(path, "DROP TRIGGER fail_insert")
    seq = await store.append(make_event("req-3"))

    assert seq == 2
    assert await store.healthy()
    report = await verify_store(path)
    assert report.ok
    assert report.records == 2


async def test_commit_failure_fails_whole_batch(tmp_path: Path, store: SQLiteAuditStore) -> None:
    path = tmp_path / "audit.db"
    run_sql(
        path,
        "CREATE TRIGGER fail_fourth BEFORE INSERT ON audit_record WHEN NEW.seq = 4 "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )

    results = await asyncio.gather(
        *(store.append(make_event(f"req-{index}")) for index in range(6)),
        return_exceptions=True,
    )

    assert all(isinstance(result, AuditError) for result in results)
    assert count_rows(path) == 0


async def test_subject_failure_rolls_back_record(tmp_path: Path, store: SQLiteAuditStore) -> None:
    path = tmp_path / "audit.db"
    run_sql(
        path,
        "CREATE TRIGGER fail_subject BEFORE INSERT ON audit_subject "
        "BEGIN SELECT RAISE(ABORT, 'injected subject failure'); END",
    )

    with pytest.raises(AuditError, match="injected subject failure"):
        await store.append(make_event("req-1"))

    assert count_rows(path, "audit_record") == 0
    assert count_rows(path, "audit_subject") == 0


async def test_invalid_event_is_rejected(store: SQLiteAuditStore) -> None:
    event = make_event()
    del event["actor"]  # type: ignore[misc]

    with pytest.raises(AuditError, match=r"invalid audit event: .* missing keys \['actor'\]"):
        await store.append(event)

    assert store.commits == 0


async def test_raw_subject_value_is_rejected(store: SQLiteAuditStore) -> None:
    raw_value = "someone@example.org"
    event = make_event(subjects=[{"type": "contact", "ref": raw_value}])

    with pytest.raises(AuditError, match=r"subjects\[0\]\.ref is not a pseudonym token") as caught:
        await store.append(event)

    assert raw_value not in str(caught.value)


async def test_nan_record_count_is_rejected(store: SQLiteAuditStore) -> None:
    event = make_event(records=float("nan"))

    with pytest.raises(AuditError, match="records must be a non-negative integer"):
        await store.append(event)


async def test_unencodable_text_is_rejected(store: SQLiteAuditStore) -> None:
    event = make_event(request_id="req-\ud800")

    with pytest.raises(AuditError, match="invalid audit event: 'utf-8' codec can't encode"):
        await store.append(event)

    assert store.commits == 0


async def test_event_changed_after_append_is_not_stored(
    tmp_path: Path, store: SQLiteAuditStore
) -> None:
    event = make_event("req-original")
    pending = asyncio.create_task(store.append(event))
    await asyncio.sleep(0)
    event["request_id"] = "req-changed"

    assert await pending == 1
    with sqlite3.connect(tmp_path / "audit.db") as connection:
        (request_id,) = connection.execute("SELECT request_id FROM audit_record").fetchone()
    assert request_id == "req-original"


async def test_cancelled_append_keeps_writer(tmp_path: Path, store: SQLiteAuditStore) -> None:
    pending = asyncio.create_task(store.append(make_event("req-cancelled")))
    await asyncio.sleep(0)
    pending.cancel()

    seq = await store.append(make_event("req-after"))

    # The cancelled caller's record was already queued, so it still takes seq 1.
    assert seq == 2
    assert pending.cancelled()
    report = await verify_store(tmp_path / "audit.db")
    assert report.records == 2


async def test_close_commits_queued_events(tmp_path: Path) -> None:
    store = await SQLiteAuditStore.open(tmp_path / "audit.db")
    pending = [asyncio.create_task(store.append(make_event(f"r{i}"))) for i in range(5)]
    await asyncio.sleep(0)

    await store.close()

    assert [task.result() for task in pending] == [1, 2, 3, 4, 5]
    assert count_rows(tmp_path / "audit.db") == 5


async def test_append_after_close_fails(tmp_path: Path) -> None:
    store = await SQLiteAuditStore.open(tmp_path / "audit.db")
    await store.close()

    with pytest.raises(AuditError, match=r"audit store .* is closed; open it again to append"):
        await store.append(make_event())

    assert not await store.healthy()


async def test_close_twice_is_harmless(tmp_path: Path) -> None:
    store = await SQLiteAuditStore.open(tmp_path / "audit.db")
    await store.append(make_event())

    await store.close()
    await store.close()

    assert count_rows(tmp_path / "audit.db") == 1


def test_sqlite_url_quotes_reserved_characters(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "a b?c#d.db")

    assert url == f"sqlite+aiosqlite:///{tmp_path}/a b%3Fc%23d.db"


async def test_store_opens_path_with_reserved_characters(tmp_path: Path) -> None:
    path = tmp_path / "a b?c#d.db"
    store = await SQLiteAuditStore.open(path)
    try:
        await store.append(make_event())
    finally:
        await store.close()

    assert path.is_file()
    assert count_rows(path) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"actor": "émp-ü \u2028 \"quoted\" \\ back", "purpose": None, "client": None},
        {"subjects": [], "fields": [], "systems": [], "roles": []},
        {"operation_name": "Käse\u00a0\U0001f9c0", "records": 2**40},
        # Two types, so one record's subjects are sealed with two associated data.
        {"subjects": [{"type": "customer", "ref": PSEUDONYMS.token("customer", "C-1001")},
                      {"type": "contact", "ref": PSEUDONYMS.token("contact", "P-7")},
                      {"type": "customer", "ref": PSEUDONYMS.token("customer", "C-1002")}]},
    ],
)
def test_prepared_body_is_canonical_json(changes: dict[str, object]) -> None:
    event = make_event("req-ü", **changes)
    keys = {subject["ref"]: bytes([index + 1]) * 32
            for index, subject in enumerate(event["subjects"])}

    body = prepare_event(event).body(12345, "ab" * 32, keys, SubjectSealer())

    sealed = seal_subjects(event["subjects"], keys, 12345)
    expected = {**event, "subjects": sealed, "seq": 12345, "prev_hash": "ab" * 32}
    assert body == canonical_json(expected)


@pytest.mark.parametrize(
    "details",
    [{}, {"filter": "actor", "zeta": ["a", "b"], "count": 3, "dry_run": False}],
)
def test_prepared_admin_body_is_canonical_json(details: dict[str, object]) -> None:
    event = cast(AdminEvent, {
        "kind": "export",
        "time": "2026-12-04T20:17:39.123Z",
        "request_id": "op-ü",
        "actor": "dpo-1",
        "outcome": "success",
        "details": details,
    })

    body = prepare_event(event).body(7, "cd" * 32, {}, SubjectSealer())

    assert body == canonical_json({**event, "seq": 7, "prev_hash": "cd" * 32})


def test_prepared_body_seals_each_subject() -> None:
    first = PSEUDONYMS.token("customer", "C-1")
    second = PSEUDONYMS.token("contact", "P-2")
    subjects = [
        {"type": "customer", "ref": first},
        {"type": "contact", "ref": second},
        {"type": "customer", "ref": first},
    ]
    event = make_event(subjects=subjects)
    keys = {first: b"\x01" * 32, second: b"\x02" * 32}

    body = prepare_event(event).body(99, "ef" * 32, keys, SubjectSealer())

    sealed = json.loads(body)["subjects"]
    assert [item["type"] for item in sealed] == ["customer", "contact", "customer"]
    assert open_subject(keys[first], sealed[0], seq=99) == first
    assert open_subject(keys[second], sealed[1], seq=99) == second
    assert open_subject(keys[second], sealed[0], seq=99) is None
    assert open_subject(keys[first], sealed[0], seq=98) is None
    assert sealed[2] == sealed[0]


def test_sealer_matches_seal() -> None:
    ref = PSEUDONYMS.token("customer", "C-1001")
    keys = [bytes([index]) * 32 for index in range(1, 4)]
    # max_keys=2 makes the third key empty the cache, so the rebuilt state is compared too.
    sealer = SubjectSealer(max_keys=2)

    for seq in (1, 2, 2**40):
        for key in keys:
            expected = seal(key, ref, seq=seq, kind="customer")
            assert sealer.seal(key, ref, seq, "customer") == expected


def test_sealer_rejects_short_key() -> None:
    with pytest.raises(ValueError):
        SubjectSealer().seal(b"\x01" * 31, "ref", 1, "customer")


def test_seal_uses_seq_as_nonce() -> None:
    # Computed here from the documented form, not with the module's helpers.
    key, ref, seq = bytes(range(32)), PSEUDONYMS.token("customer", "C-1001"), 2**40 + 3
    nonce = seq.to_bytes(12, "big")
    associated = b"fonte-audit-subject-v2\x00" + seq.to_bytes(8, "big") + b"customer"
    expected = base64.b64encode(AESGCM(key).encrypt(nonce, ref.encode(), associated)).decode()

    assert seal(key, ref, seq=seq, kind="customer") == expected
    # 16 bytes of tag after the ciphertext, and no nonce.
    assert len(base64.b64decode(expected)) == len(ref) + 16


def test_sealed_subjects_finds_each_type() -> None:
    first, second = PSEUDONYMS.token("customer", "C-1"), PSEUDONYMS.token("contact", "P-2")
    keys = {first: b"\x01" * 32, second: b"\x02" * 32}
    subjects = json.loads(SubjectSealer().seal_subjects_json(
        [(first, "customer", b'"customer"'), (second, "contact", b'"contact"')], keys, 9))

    found = SealedSubjects(subjects, 9)
    assert found.opens(first, keys[first])
    assert found.opens(second, keys[second])
    assert not found.opens(first, keys[second])
    assert not SealedSubjects(subjects, 10).opens(first, keys[first])


def test_sealed_subjects_tries_hint_first() -> None:
    ref = PSEUDONYMS.token("contact", "P-1")
    keys = {ref: b"\x03" * 32}
    others = [(PSEUDONYMS.token(f"kind{n}", "x"), f"kind{n}", f'"kind{n}"'.encode())
              for n in range(5)]
    keys.update({other: b"\x04" * 32 for other, _, _ in others})
    subjects = json.loads(SubjectSealer().seal_subjects_json(
        [*others, (ref, "contact", b'"contact"')], keys, 4))
    hints: dict[str, str] = {ref: "kind2"}  # a stale hint is only tried first

    assert SealedSubjects(subjects, 4, hints).opens(ref, keys[ref])
    assert hints[ref] == "contact"
    assert not SealedSubjects(subjects, 4, hints).opens(ref, b"\x05" * 32)
    assert hints[ref] == "contact"


def test_sealer_rejects_two_types() -> None:
    ref = PSEUDONYMS.token("customer", "C-1")
    subjects = [(ref, "customer", b'"customer"'), (ref, "contact", b'"contact"')]

    with pytest.raises(ValueError) as caught:
        SubjectSealer().seal_subjects_json(subjects, {ref: b"\x01" * 32}, 3)

    assert str(caught.value) == ("a pseudonym is listed as 'customer' and as 'contact' in "
                                 "one record; a pseudonym token belongs to one subject type")
    assert ref not in str(caught.value)


def test_event_with_two_types_rejected() -> None:
    ref = PSEUDONYMS.token("customer", "C-1")
    event = make_event(subjects=[{"type": "customer", "ref": ref},
                                 {"type": "customer", "ref": ref},
                                 {"type": "contact", "ref": ref}])

    message = ("subjects[2] has the pseudonym of subjects[0] with another type; a pseudonym "
               "token belongs to one subject type")
    with pytest.raises(ValueError) as validated:
        validate_event(event)
    # prepare_event, which append_prepared takes, rejects it before the writer's batch.
    with pytest.raises(ValueError) as prepared:
        prepare_event(event)

    assert str(validated.value) == message
    assert str(prepared.value) == message


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"actor": "émp-ü \u2028 \"quoted\" \\ back", "purpose": None, "client": None},
        {"subjects": [], "fields": [], "systems": [], "roles": []},
        {"client_address": "192.0.2.7"},
    ],
)
def test_marked_template_matches_runs(changes: dict[str, object]) -> None:
    event = make_event("req-1", **changes)

    marked = store_module._marked_template(event, True)

    assert marked is not None
    assert marked == store_module._body_template(event, True)


def test_marked_template_falls_back_on_mark() -> None:
    # A value equal to a mark makes the mark occur twice, so the runs encode the event.
    event = make_event(client=store_module._MARKS["seq"])
    keys = {subject["ref"]: b"\x01" * 32 for subject in event["subjects"]}

    assert store_module._marked_template(event, True) is None
    body = prepare_event(event).body(5, "ab" * 32, keys, SubjectSealer())
    sealed = seal_subjects(event["subjects"], keys, 5)
    expected = {**event, "subjects": sealed, "seq": 5, "prev_hash": "ab" * 32}
    assert body == canonical_json(expected)


def test_prepare_rejects_seq_key() -> None:
    event = cast(AuditEvent, {**make_event(), "seq": 1})

    with pytest.raises(ValueError) as caught:
        prepare_event(event)

    assert str(caught.value) == "audit event must not contain seq or prev_hash; the store sets them"


async def test_two_stores_share_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    gateway_store = await SQLiteAuditStore.open(path)
    command_store = await SQLiteAuditStore.open(path)

    seqs = [
        await gateway_store.append(make_event("req-1")),
        await command_store.append(make_event("req-2")),
        await gateway_store.append(make_event("req-3")),
        await command_store.append(make_event("req-4")),
    ]
    await command_store.close()
    await gateway_store.close()

    assert seqs == [1, 2, 3, 4]
    report = await verify_store(path, public_keys={})
    assert report.ok, report.reason
    assert report.records == 4


async def test_engine_records_verify_after_thread_commits(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = await SQLiteAuditStore.open(path)
    # Commits through the SQLAlchemy engine, as the store made them before it had
    # a writer thread.
    engine_commit = store._insert_batch
    store._insert_batch = functools.partial(  # type: ignore[method-assign]
        store_module.GroupCommitStore._insert_batch, store)
    await asyncio.gather(*(store.append(make_event(f"old-{index}")) for index in range(5)))
    store._insert_batch = engine_commit  # type: ignore[method-assign]
    await asyncio.gather(*(store.append(make_event(f"new-{index}")) for index in range(5)))
    await store.close()

    report = await verify_store(path, public_keys={})

    assert report.ok, report.reason
    assert report.records == 10
    assert count_rows(path, "audit_subject_key") == 1


async def test_writer_thread_stops_at_close(tmp_path: Path) -> None:
    store = await SQLiteAuditStore.open(tmp_path / "audit.db")
    await store.append(make_event())

    await store.close()

    assert store._thread._connection is None
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        await store._thread.run(lambda connection: None)


async def test_append_rejects_head_damaged_meanwhile(tmp_path: Path,
                                                     store: SQLiteAuditStore) -> None:
    path = tmp_path / "audit.db"
    await store.append(make_event("req-1"))
    run_sql(path, "UPDATE audit_record SET body = replace(body, 'emp-17', 'emp-18')")

    with pytest.raises(AuditError, match=r"last audit record 1 in .* does not verify"):
        await store.append(make_event("req-2"))

    assert count_rows(path) == 1


@pytest.mark.parametrize("count", [0, 1, 63, 64, 65, 130, 200])
def test_multi_row_insert_keeps_every_row(count: int) -> None:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE pairs (a INTEGER, b TEXT)")
    statements: list[str] = []
    connection.set_trace_callback(statements.append)
    rows = [(index, f"row-{index}") for index in range(count)]

    sqlite_store._insert_rows(connection, "INSERT INTO pairs (a, b) VALUES ", rows)

    stored = connection.execute("SELECT a, b FROM pairs ORDER BY rowid").fetchall()
    connection.close()
    assert stored == rows
    # Full statements of 64 rows, then the rest in powers of two: 130 = 64 + 64 + 2.
    sizes = [statement.count("(") - 1 for statement in statements
             if statement.startswith("INSERT")]
    expected = {0: [], 1: [1], 63: [32, 16, 8, 4, 2, 1], 64: [64], 65: [64, 1],
                130: [64, 64, 2], 200: [64, 64, 64, 8]}
    assert sizes == expected[count]


def test_cached_keys_skip_query() -> None:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE audit_subject_key (ref TEXT PRIMARY KEY, key BLOB NOT NULL)")
    statements: list[str] = []
    connection.set_trace_callback(statements.append)
    known = {"v1:known": b"k" * 32}

    keys, new = sqlite_store._load_subject_keys(connection, {"v1:known"}, known)

    assert keys is known
    assert new == {}
    assert statements == []


def test_missing_key_created_once() -> None:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE audit_subject_key (ref TEXT PRIMARY KEY, key BLOB NOT NULL)")
    connection.execute("INSERT INTO audit_subject_key VALUES ('v1:stored', ?)", (b"s" * 32,))
    known = {"v1:known": b"k" * 32}

    keys, new = sqlite_store._load_subject_keys(
        connection, {"v1:known", "v1:stored", "v1:new"}, known)

    stored = dict(connection.execute("SELECT ref, key FROM audit_subject_key").fetchall())
    connection.close()
    assert sorted(new) == ["v1:new", "v1:stored"]
    assert new["v1:stored"] == b"s" * 32
    assert len(new["v1:new"]) == 32
    assert keys == {"v1:known": b"k" * 32, **new}
    assert stored == {"v1:stored": b"s" * 32, "v1:new": new["v1:new"]}
    assert known == {"v1:known": b"k" * 32}


async def test_reopened_store_reuses_keys(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    first_store = await SQLiteAuditStore.open(path)
    await first_store.append(make_event("req-1"))
    await first_store.close()
    old_ref = PSEUDONYMS.token("customer", "C-1001")
    new_ref = PSEUDONYMS.token("customer", "C-1002")
    with sqlite3.connect(path) as connection:
        (old_key,) = connection.execute(
            "SELECT key FROM audit_subject_key WHERE ref = ?", (old_ref,)).fetchone()
    both = [{"type": "customer", "ref": old_ref}, {"type": "customer", "ref": new_ref}]

    second_store = await SQLiteAuditStore.open(path)
    try:
        await second_store.append(make_event("req-2", subjects=both))
        cached = dict(second_store._subject_keys)
        await second_store.append(make_event("req-3", subjects=both))
    finally:
        await second_store.close()

    assert sorted(cached) == sorted([old_ref, new_ref])
    assert cached[old_ref] == old_key
    assert count_rows(path, "audit_subject_key") == 2
    report = await verify_store(path, public_keys={})
    assert report.ok, report.reason
    assert report.records == 3


async def test_full_key_cache_keeps_batch_keys(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_SUBJECT_KEY_CACHE_SIZE", 4)
    refs = {name: PSEUDONYMS.token("customer", name) for name in "abcde"}

    def subjects(*names: str) -> list[dict[str, str]]:
        return [{"type": "customer", "ref": refs[name]} for name in names]

    store = await SQLiteAuditStore.open(tmp_path / "audit.db")
    try:
        await store.append(make_event("req-1", subjects=subjects("a", "b")))
        await store.append(make_event("req-2", subjects=subjects("c", "d")))
        full = sorted(store._subject_keys)
        # One key more than the cache holds: it starts again from this record's keys.
        await store.append(make_event("req-3", subjects=subjects("a", "e")))
        restarted = sorted(store._subject_keys)
    finally:
        await store.close()

    assert full == sorted(refs[name] for name in "abcd")
    assert restarted == sorted([refs["a"], refs["e"]])
    report = await verify_store(tmp_path / "audit.db", public_keys={})
    assert report.ok, report.reason
