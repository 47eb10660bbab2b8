"""ScheduledStore contract: held sends are claimed once due, one lease at a time, never once
cancelled, and each tenant sees only its own."""

from __future__ import annotations

import pytest

from services.ingest.scheduled import CancelOutcome, HoldState, ScheduledSend, ScheduledStore

pytestmark = pytest.mark.asyncio


def send(nid: str, at: float, tenant: str = "t1") -> ScheduledSend:
    return ScheduledSend(tenant, nid, at, f"payload-{nid}".encode())


async def test_held_sends_are_claimed_when_due_soonest_first(
    scheduled_store: ScheduledStore,
) -> None:
    await scheduled_store.add([send("b", 20.0), send("a", 10.0), send("c", 50.0, "t2")])
    assert await scheduled_store.claim(9.0, 10, lease_s=60.0) == []
    claimed = await scheduled_store.claim(30.0, 10, lease_s=60.0)
    assert [(s.notification_id, s.deliver_at, s.encoded, s.attempts) for s in claimed] == [
        ("a", 10.0, b"payload-a", 1),
        ("b", 20.0, b"payload-b", 1),
    ]
    # Leased: nobody claims them again until the lease ends.
    assert await scheduled_store.claim(89.0, 10, 60.0) == [
        send("c", 50.0, "t2")._replace(attempts=1)
    ]
    again = await scheduled_store.claim(90.0, 10, 60.0)
    assert [(s.notification_id, s.attempts) for s in again] == [("a", 2), ("b", 2)]


async def test_the_limit_bounds_a_claim(scheduled_store: ScheduledStore) -> None:
    await scheduled_store.add([send(f"n{i}", float(i)) for i in range(5)])
    first = await scheduled_store.claim(100.0, 2, 60.0)
    second = await scheduled_store.claim(100.0, 10, 60.0)
    assert len(first) == 2
    assert len(second) == 3
    assert {s.notification_id for s in first + second} == {f"n{i}" for i in range(5)}


async def test_done_removes_and_next_due_follows(scheduled_store: ScheduledStore) -> None:
    assert await scheduled_store.next_due() is None
    await scheduled_store.add([send("a", 10.0), send("b", 20.0)])
    assert await scheduled_store.next_due() == 10.0
    [a] = await scheduled_store.claim(10.0, 1, 60.0)
    # A leased send becomes claimable again when its lease ends.
    assert await scheduled_store.next_due() == 20.0
    await scheduled_store.done([a])
    assert await scheduled_store.get("t1", "a") is None
    [b] = await scheduled_store.claim(20.0, 10, 5.0)
    assert await scheduled_store.next_due() == 25.0
    await scheduled_store.done([b])
    assert await scheduled_store.next_due() is None


async def test_an_id_is_stored_once(scheduled_store: ScheduledStore) -> None:
    await scheduled_store.add([send("a", 10.0)])
    await scheduled_store.add([ScheduledSend("t1", "a", 99.0, b"other")])
    assert await scheduled_store.get("t1", "a") == send("a", 10.0)


async def test_cancel_before_due_and_after_a_claim(scheduled_store: ScheduledStore) -> None:
    await scheduled_store.add([send("a", 10.0), send("b", 10.0), send("c", 10.0)])
    assert await scheduled_store.cancel("t1", "a", 5.0) is CancelOutcome.CANCELLED
    assert await scheduled_store.cancel("t1", "a", 6.0) is CancelOutcome.ALREADY_CANCELLED
    cancelled = await scheduled_store.get("t1", "a")
    assert cancelled is not None
    assert (cancelled.state, cancelled.cancelled_at) == (HoldState.CANCELLED, 5.0)
    claimed = await scheduled_store.claim(10.0, 10, 60.0)
    assert [s.notification_id for s in claimed] == ["b", "c"]
    # Under a lease: being released, not cancellable; once the lease ended, cancellable.
    assert await scheduled_store.cancel("t1", "b", 20.0) is CancelOutcome.RELEASING
    assert await scheduled_store.cancel("t1", "c", 70.0) is CancelOutcome.CANCELLED
    assert await scheduled_store.claim(1000.0, 10, 60.0) == [send("b", 10.0)._replace(attempts=2)]
    await scheduled_store.done([send("b", 10.0)])
    assert await scheduled_store.cancel("t1", "b", 1000.0) is CancelOutcome.NOT_HELD
    assert await scheduled_store.cancel("t1", "nope", 1000.0) is CancelOutcome.NOT_HELD
    assert await scheduled_store.next_due() is None


async def test_tenants_are_isolated(scheduled_store: ScheduledStore) -> None:
    await scheduled_store.add([send("a", 10.0, "t1")])
    assert await scheduled_store.get("t2", "a") is None
    assert await scheduled_store.cancel("t2", "a", 1.0) is CancelOutcome.NOT_HELD
    assert await scheduled_store.list("t2", 10) == []
    assert [s.notification_id for s in await scheduled_store.list("t1", 10)] == ["a"]


async def test_list_pages_by_deliver_at_then_id_without_cancelled(
    scheduled_store: ScheduledStore,
) -> None:
    await scheduled_store.add(
        [send("d", 30.0), send("b", 10.0), send("a", 10.0), send("c", 20.0), send("x", 15.0)]
    )
    await scheduled_store.cancel("t1", "x", 1.0)
    first = await scheduled_store.list("t1", 2)
    assert [s.notification_id for s in first] == ["a", "b"]
    rest = await scheduled_store.list("t1", 10, (first[-1].deliver_at, first[-1].notification_id))
    assert [s.notification_id for s in rest] == ["c", "d"]


async def test_purge_forgets_sends_cancelled_before(scheduled_store: ScheduledStore) -> None:
    await scheduled_store.add([send("a", 100.0), send("b", 100.0), send("c", 100.0)])
    await scheduled_store.cancel("t1", "a", 1.0)
    await scheduled_store.cancel("t1", "b", 5.0)
    assert await scheduled_store.purge(3.0) == 1
    assert await scheduled_store.get("t1", "a") is None
    assert await scheduled_store.get("t1", "b") is not None
    assert await scheduled_store.get("t1", "c") is not None
