"""InboxStateStore contract: the state rules, counters that are exactly the sums over the rows,
forgetting rows of entries that left the log, and isolation between users and tenants."""

from __future__ import annotations

import asyncio

import pytest

from services.stream.inbox_state import (
    Action,
    Counts,
    InboxCounters,
    InboxState,
    InboxStateStore,
)

pytestmark = pytest.mark.asyncio

T1, T2 = "tenant-1", "tenant-2"


async def test_each_action_sets_or_clears_its_time_once(
    inbox_state_store: InboxStateStore,
) -> None:
    store = inbox_state_store
    assert await store.change(T1, "alice", ["n1", "n2"], Action.SEEN, 10.0) == (
        ["n1", "n2"],
        InboxCounters(0, 0, 2),
    )
    # Already seen: nothing changes, the first time stays.
    assert await store.change(T1, "alice", ["n1"], Action.SEEN, 11.0) == (
        [],
        InboxCounters(0, 0, 2),
    )
    # READ sets read_at, and seen_at only where it was unset.
    changed, counters = await store.change(T1, "alice", ["n1", "n3", "n3"], Action.READ, 12.0)
    assert (changed, counters) == (["n1", "n3"], InboxCounters(0, 2, 3))
    assert await store.get(T1, "alice", ["n1", "n2", "n3", "n4"]) == {
        "n1": InboxState(10.0, 12.0, 0.0),
        "n2": InboxState(10.0, 0.0, 0.0),
        "n3": InboxState(12.0, 12.0, 0.0),
    }
    assert await store.change(T1, "alice", ["n1", "n2"], Action.UNREAD, 13.0) == (
        ["n1"],
        InboxCounters(0, 1, 3),
    )
    assert (await store.get(T1, "alice", ["n1"]))["n1"] == InboxState(10.0, 0.0, 0.0)
    # An archived row counts only as archived.
    assert await store.change(T1, "alice", ["n3", "n4"], Action.ARCHIVE, 14.0) == (
        ["n3", "n4"],
        InboxCounters(2, 0, 2),
    )
    assert await store.change(T1, "alice", ["n3"], Action.ARCHIVE, 15.0) == (
        [],
        InboxCounters(2, 0, 2),
    )
    assert (await store.get(T1, "alice", ["n4"]))["n4"] == InboxState(0.0, 0.0, 14.0)
    assert await store.change(T1, "alice", ["n3"], Action.UNARCHIVE, 16.0) == (
        ["n3"],
        InboxCounters(1, 1, 3),
    )
    assert await store.counters(T1, "alice") == InboxCounters(1, 1, 3)


async def test_counts_follow_from_the_counters_and_the_log_size() -> None:
    counters = InboxCounters(archived=2, read=3, seen=4)
    assert counters.counts(10) == Counts(unseen=4, unread=5, total=8)
    # A row whose entry the sweep just removed still counts, for a moment: never negative.
    assert InboxCounters(archived=1, read=1, seen=1).counts(1) == Counts(0, 0, 0)


async def test_forget_removes_rows_and_their_share(inbox_state_store: InboxStateStore) -> None:
    store = inbox_state_store
    await store.change(T1, "alice", ["n1", "n2", "n3"], Action.READ, 1.0)
    await store.change(T1, "alice", ["n3"], Action.ARCHIVE, 2.0)
    await store.change(T1, "bob", ["n1"], Action.SEEN, 3.0)
    await store.forget(T1, [("alice", "n1"), ("alice", "n3"), ("bob", "n1"), ("carol", "n9")])
    assert await store.counters(T1, "alice") == InboxCounters(0, 1, 1)
    assert await store.counters(T1, "bob") == InboxCounters()
    assert await store.get(T1, "alice", ["n1", "n2", "n3"]) == {"n2": InboxState(1.0, 1.0, 0.0)}
    # Forgetting again is harmless.
    await store.forget(T1, [("alice", "n1")])
    assert await store.counters(T1, "alice") == InboxCounters(0, 1, 1)


async def test_users_and_tenants_are_isolated(inbox_state_store: InboxStateStore) -> None:
    store = inbox_state_store
    await store.change(T1, "alice", ["n1"], Action.READ, 1.0)
    assert await store.get(T1, "bob", ["n1"]) == {}
    assert await store.get(T2, "alice", ["n1"]) == {}
    assert await store.counters(T2, "alice") == InboxCounters()
    await store.forget(T2, [("alice", "n1")])
    assert await store.counters(T1, "alice") == InboxCounters(0, 1, 1)


async def test_concurrent_changes_keep_the_counters_exact(
    inbox_state_store: InboxStateStore,
) -> None:
    store = inbox_state_store
    ids = [f"n{i}" for i in range(40)]
    await asyncio.gather(
        *(store.change(T1, "alice", ids[i::4], Action.READ, 1.0) for i in range(4)),
        *(store.change(T1, "alice", ids[::3], Action.ARCHIVE, 2.0) for _ in range(2)),
        store.forget(T1, [("alice", i) for i in ids[::5]]),
    )
    rows = await store.get(T1, "alice", ids)
    expected = InboxCounters(
        sum(1 for s in rows.values() if s.archived_at),
        sum(1 for s in rows.values() if s.read_at and not s.archived_at),
        sum(1 for s in rows.values() if s.seen_at and not s.archived_at),
    )
    assert await store.counters(T1, "alice") == expected
