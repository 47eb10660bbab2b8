"""SegmentStore contract: named member sets per tenant, batches that skip members already in,
the 100,000 bound, paging by user id, and the members a send resolves."""

from __future__ import annotations

import pytest

from services.registry.segments import (
    MAX_MEMBERS,
    SegmentFull,
    SegmentInfo,
    SegmentNotFound,
    SegmentStore,
)

pytestmark = pytest.mark.asyncio

T1, T2 = "tenant-1", "tenant-2"


async def test_create_is_once_per_tenant_and_name(segment_store: SegmentStore) -> None:
    assert await segment_store.create(T1, "beta", 10.5)
    assert not await segment_store.create(T1, "beta", 99.0)
    assert await segment_store.create(T2, "beta", 11.0)
    assert await segment_store.list(T1) == [SegmentInfo("beta", 0, 10.5)]
    assert await segment_store.list(T2) == [SegmentInfo("beta", 0, 11.0)]


async def test_add_counts_only_new_members(segment_store: SegmentStore) -> None:
    await segment_store.create(T1, "s", 1.0)
    assert await segment_store.add(T1, "s", ["u2", "u1", "u1"]) == 2
    assert await segment_store.add(T1, "s", ["u1", "u3"]) == 1
    assert await segment_store.members_at_send(T1, "s") == ["u1", "u2", "u3"]
    assert await segment_store.list(T1) == [SegmentInfo("s", 3, 1.0)]


async def test_remove_counts_only_members(segment_store: SegmentStore) -> None:
    await segment_store.create(T1, "s", 1.0)
    await segment_store.add(T1, "s", ["a", "b", "c"])
    assert await segment_store.remove(T1, "s", ["b", "x", "b"]) == 1
    assert await segment_store.members_at_send(T1, "s") == ["a", "c"]
    assert (await segment_store.list(T1))[0].members == 2


async def test_members_page_by_user_id_in_byte_order(segment_store: SegmentStore) -> None:
    await segment_store.create(T1, "s", 1.0)
    users = ["b", "a", "Z", "é", "a0", "c"]
    await segment_store.add(T1, "s", users)
    ordered = sorted(users, key=str.encode)
    assert await segment_store.members(T1, "s", limit=2) == ordered[:2]
    assert await segment_store.members(T1, "s", after=ordered[1], limit=3) == ordered[2:5]
    assert await segment_store.members(T1, "s", after=ordered[-1]) == []


async def test_segments_of_one_tenant_are_not_another_s(segment_store: SegmentStore) -> None:
    await segment_store.create(T1, "s", 1.0)
    await segment_store.add(T1, "s", ["u1"])
    for call in (
        segment_store.add(T2, "s", ["u2"]),
        segment_store.remove(T2, "s", ["u1"]),
        segment_store.members(T2, "s"),
        segment_store.members_at_send(T2, "s"),
    ):
        with pytest.raises(SegmentNotFound):
            await call
    assert not await segment_store.delete(T2, "s")
    assert await segment_store.members_at_send(T1, "s") == ["u1"]


async def test_delete_drops_the_members(segment_store: SegmentStore) -> None:
    await segment_store.create(T1, "s", 1.0)
    await segment_store.add(T1, "s", ["u1"])
    assert await segment_store.delete(T1, "s")
    assert not await segment_store.delete(T1, "s")
    assert await segment_store.list(T1) == []
    await segment_store.create(T1, "s", 2.0)
    assert await segment_store.members_at_send(T1, "s") == []


async def test_more_than_the_bound_adds_nothing(segment_store: SegmentStore) -> None:
    await segment_store.create(T1, "s", 1.0)
    batch = 10_000
    for start in range(0, MAX_MEMBERS, batch):
        users = [f"u{n:06d}" for n in range(start, start + batch)]
        assert await segment_store.add(T1, "s", users) == batch
    # Members already in do not count against the bound; one new one does.
    assert await segment_store.add(T1, "s", ["u000000"]) == 0
    with pytest.raises(SegmentFull, match="100000"):
        await segment_store.add(T1, "s", ["u000000", "new-1"])
    assert (await segment_store.list(T1))[0].members == MAX_MEMBERS
    assert "new-1" not in await segment_store.members_at_send(T1, "s")
