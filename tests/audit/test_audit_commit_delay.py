"""Tests of the commit delay: a commit waits for the records that running requests announced.

No test here depends on how long anything takes. The writer's wait is observed through
the store's state, and the delay is always longer than the steps that end it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_audit_store import count_rows, make_event

from gateway.audit.sqlite_store import SQLiteAuditStore
from gateway.audit.store import MAX_COMMIT_DELAY, prepare_event
from gateway.audit.verify import verify_store
from gateway.errors import AuditError

# Event loop turns a test waits for the writer to reach its delay. The writer needs a
# handful; the bound only keeps a broken store from hanging the test.
_TURNS = 1_000


async def _writer_waiting(store: SQLiteAuditStore) -> asyncio.Future[None]:
    for _ in range(_TURNS):
        waiter = store._delay_waiter
        if waiter is not None:
            return waiter
        await asyncio.sleep(0)
    raise AssertionError(f"the writer did not start its commit delay within {_TURNS} turns")


async def test_commit_waits_for_announced_records(tmp_path: Path,
                                                  store: SQLiteAuditStore) -> None:
    store.set_commit_delay(MAX_COMMIT_DELAY, 2)
    first, second, third = (store.expect_append() for _ in range(3))

    appended = asyncio.create_task(store.append_prepared(prepare_event(make_event("r1")), first))
    waiter = await _writer_waiting(store)
    assert (waiter.done(), store.expected_appends, store.commits) == (False, 2, 0)

    later = [asyncio.create_task(store.append_prepared(prepare_event(make_event(request)),
                                                        expected))
             for request, expected in (("r2", second), ("r3", third))]
    await asyncio.sleep(0)
    # The last announced record arrived, so the wait ends before the delay runs out.
    assert (waiter.done(), store.expected_appends) == (True, 0)

    assert await asyncio.gather(appended, *later) == [1, 2, 3]
    assert store.commits == 1
    report = await verify_store(tmp_path / "audit.db")
    assert (report.ok, report.records) == (True, 3)


async def test_no_wait_below_siblings(store: SQLiteAuditStore,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store.set_commit_delay(MAX_COMMIT_DELAY, 2)
    waits: list[int] = []

    async def record_wait() -> None:
        waits.append(store.expected_appends)

    monkeypatch.setattr(store, "_wait_for_expected", record_wait)
    first, second = store.expect_append(), store.expect_append()

    # After the first append withdraws, one announced record is left: fewer than 2.
    seq = await store.append_prepared(prepare_event(make_event("r1")), first)
    second.withdraw()

    assert (seq, waits, store.expected_appends, store.commits) == (1, [], 0, 1)


async def test_no_wait_when_delay_off(store: SQLiteAuditStore,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[int] = []

    async def record_wait() -> None:
        waits.append(store.expected_appends)

    monkeypatch.setattr(store, "_wait_for_expected", record_wait)
    handles = [store.expect_append() for _ in range(5)]

    seq = await store.append_prepared(prepare_event(make_event("r1")), handles[0])

    assert (seq, waits, store.expected_appends) == (1, [], 4)
    for handle in handles[1:]:
        handle.withdraw()
    assert store.expected_appends == 0


async def test_withdraw_counts_once(store: SQLiteAuditStore) -> None:
    handle = store.expect_append()
    other = store.expect_append()

    handle.withdraw()
    handle.withdraw()
    seq = await store.append_prepared(prepare_event(make_event("r1")), handle)

    assert (seq, store.expected_appends) == (1, 1)
    other.withdraw()
    assert store.expected_appends == 0


async def test_withdrawn_request_ends_the_wait(store: SQLiteAuditStore) -> None:
    store.set_commit_delay(MAX_COMMIT_DELAY, 1)
    first, second = store.expect_append(), store.expect_append()

    appended = asyncio.create_task(store.append_prepared(prepare_event(make_event("r1")), first))
    waiter = await _writer_waiting(store)
    second.withdraw()

    assert (waiter.done(), store.expected_appends) == (True, 0)
    assert await appended == 1


async def test_close_ends_the_wait(tmp_path: Path) -> None:
    store = await SQLiteAuditStore.open(tmp_path / "audit.db")
    store.set_commit_delay(MAX_COMMIT_DELAY, 1)
    first, second = store.expect_append(), store.expect_append()
    appended = asyncio.create_task(store.append_prepared(prepare_event(make_event("r1")), first))
    waiter = await _writer_waiting(store)

    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)
    assert waiter.done()
    await closing
    second.withdraw()

    assert await appended == 1
    assert count_rows(tmp_path / "audit.db") == 1


async def test_cancelled_writer_fails_waiting_batch(tmp_path: Path) -> None:
    store = await SQLiteAuditStore.open(tmp_path / "audit.db")
    store.set_commit_delay(MAX_COMMIT_DELAY, 1)
    first, second = store.expect_append(), store.expect_append()
    appended = asyncio.create_task(store.append_prepared(prepare_event(make_event("r1")), first))
    await _writer_waiting(store)

    store._writer.cancel()

    # The bound only stops a writer that leaves the append waiting forever.
    with pytest.raises(AuditError) as caught:
        await asyncio.wait_for(appended, 30)
    assert str(caught.value).endswith("stopped; the record was not stored")
    second.withdraw()
    # close() waits for the writer task, which was cancelled, then releases the engine.
    with pytest.raises(asyncio.CancelledError):
        await store.close()


@pytest.mark.parametrize(
    ("seconds", "siblings", "message"),
    [
        (-0.001, 4, "commit delay must be from 0 to 0.1 seconds, not -0.001"),
        (0.2, 4, "commit delay must be from 0 to 0.1 seconds, not 0.2"),
        (0.002, 0, "commit siblings must be at least 1, not 0"),
    ],
)
async def test_set_commit_delay_rejects_bad_values(store: SQLiteAuditStore, seconds: float,
                                                   siblings: int, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        store.set_commit_delay(seconds, siblings)

    assert str(caught.value) == message
