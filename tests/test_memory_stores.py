"""Bounds that only the embedded (memory) stores have; the shared behaviour is in tests/contract."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from services.domain import NewRecord, State, Transition, user_log
from services.stream.log import LogAppend, NewEntry
from services.stream.log_memory import MemoryLogStore
from services.stream.status_memory import MemoryStatusStore

pytestmark = pytest.mark.asyncio


def _record(notification_id: str, tenant: str = "acme") -> NewRecord:
    return NewRecord(notification_id, tenant, b"", 100.0, 200.0, ("alice",))


async def test_the_status_store_drops_its_oldest_records_beyond_its_bound() -> None:
    store = MemoryStatusStore(max_records=3)
    await store.create([_record("n1"), _record("n2")])
    await store.create([_record("n3"), _record("n4"), _record("n5")])
    assert [await store.get("acme", n) is not None for n in ("n1", "n2", "n3", "n4", "n5")] == [
        False,
        False,
        True,
        True,
        True,
    ]
    # Creating what is already stored adds nothing, so nothing more is dropped.
    await store.create([_record("n4")])
    assert await store.get("acme", "n3") is not None


async def test_the_bound_takes_from_the_tenant_holding_the_most() -> None:
    # One busy tenant must not push out the other tenants' history.
    store = MemoryStatusStore(max_records=10)
    await store.create([_record(f"g{i}", "globex") for i in range(3)])
    await store.create([_record(f"a{i}") for i in range(7)])
    await store.create([_record(f"a{i}") for i in range(7, 12)])  # 2 over the bound
    assert [await store.get("globex", f"g{i}") is not None for i in range(3)] == [True] * 3
    kept = [i for i in range(12) if await store.get("acme", f"a{i}") is not None]
    assert kept == list(range(5, 12))  # acme's oldest went
    # Purging old records frees room that counts toward the bound again.
    assert await store.purge(older_than=101.0) == 10
    await store.create([_record(f"z{i}", "globex") for i in range(10)])
    assert await store.get("globex", "z0") is not None


async def test_the_status_store_is_unbounded_without_a_bound() -> None:
    store = MemoryStatusStore()
    await store.create([_record(f"n{i}") for i in range(1000)])
    assert await store.get("acme", "n0") is not None


async def test_status_records_add_no_objects_for_the_collector_to_traverse() -> None:
    # A node holds millions of records: if the collector tracked them, every full collection
    # would traverse them all while the event loop stands still.
    store = MemoryStatusStore()
    gc.collect()
    before = len(gc.get_objects())
    await store.create([_record(f"n{i}") for i in range(5000)])
    await store.apply(
        "acme", [Transition(f"n{i}", "alice", State.DELIVERED) for i in range(5000)], 150.0
    )
    await store.mark_read("acme", "alice", [f"n{i}" for i in range(100)], 160.0)
    gc.collect()
    gc.collect()
    assert len(gc.get_objects()) - before < 500
    record = await store.get("acme", "n0")
    assert record is not None
    assert record.recipients["alice"].state is State.DELIVERED
    assert record.recipients["alice"].read_at == 160.0


async def test_changes_the_status_store_ignores_keep_no_memory() -> None:
    # QUEUED again (never allowed) and read marks of users who are not recipients change
    # nothing, so they must not leave a place for recipients behind either.
    store = MemoryStatusStore()
    count = 5000
    await store.create([_record(f"n{i}") for i in range(count)])
    ids = [f"n{i}" for i in range(count)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await store.apply("acme", [Transition(i, "alice", State.QUEUED) for i in ids], 150.0)
        assert await store.mark_read("acme", "mallory", ids, 160.0) == 0
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 50 * count // 10  # well under one empty dict (64 bytes) per notification
    record = await store.get("acme", "n0")
    assert record is not None
    assert record.recipients["alice"].state is State.QUEUED
    assert "mallory" not in record.recipients


async def test_log_entries_add_no_objects_for_the_collector_to_traverse() -> None:
    logs = MemoryLogStore()
    gc.collect()
    before = len(gc.get_objects())
    for user in range(50):
        items = [NewEntry(f"u{user}-n{i}", 2, 100.0, 200.0, b"\x0a\x00") for i in range(100)]
        await logs.append("acme", [LogAppend(user_log(f"u{user}"), items, 1000)])
    gc.collect()
    gc.collect()
    assert len(gc.get_objects()) - before < 500
    # What the store hands out is still a complete Entry.
    [entry] = await logs.read("acme", user_log("u7"), 41, 1)
    assert (entry.cursor, entry.notification_id, entry.expires_at) == (42, "u7-n41", 200.0)
