"""PendingPushStore contract: due pushes are claimed once per lease, oldest first, until done."""

from __future__ import annotations

import pytest

from services.push.pending import PendingPush, PendingPushStore

pytestmark = pytest.mark.asyncio


def push(user: str, due: float, nid: str = "n1", tenant: str = "t1") -> PendingPush:
    return PendingPush(tenant, user, nid, due, b"{}")


async def test_claim_due_oldest_first_then_leased(pending_push_store: PendingPushStore) -> None:
    await pending_push_store.add([push("b", 20.0), push("a", 10.0), push("c", 50.0)])
    claimed = await pending_push_store.claim(30.0, 10, lease_s=60.0)
    assert [(p.user_id, p.due_at) for p in claimed] == [("a", 10.0), ("b", 20.0)]
    # Leased: not claimed again until the lease runs out.
    assert await pending_push_store.claim(30.0, 10, 60.0) == []
    again = await pending_push_store.claim(95.0, 10, 60.0)
    assert sorted(p.user_id for p in again) == ["a", "b", "c"]


async def test_done_forgets(pending_push_store: PendingPushStore) -> None:
    first, second = push("a", 10.0), push("a", 10.0, "n2", tenant="t2")
    await pending_push_store.add([first, second])
    await pending_push_store.done([first])
    claimed = await pending_push_store.claim(100.0, 10, 60.0)
    assert [(p.tenant, p.notification_id) for p in claimed] == [("t2", "n2")]
    await pending_push_store.done(claimed)
    assert await pending_push_store.claim(1000.0, 10, 60.0) == []


async def test_limit_and_replace(pending_push_store: PendingPushStore) -> None:
    await pending_push_store.add([push(f"u{i}", float(i)) for i in range(5)])
    await pending_push_store.add([PendingPush("t1", "u0", "n1", 100.0, b'{"x":1}')])
    claimed = await pending_push_store.claim(10.0, 2, 60.0)
    assert [p.user_id for p in claimed] == ["u1", "u2"]
    later = await pending_push_store.claim(65.0, 10, 60.0)
    assert [p.user_id for p in later] == ["u3", "u4"]
    last = await pending_push_store.claim(100.0, 10, 1000.0)
    assert [(p.user_id, p.payload) for p in last] == [
        ("u1", b"{}"),
        ("u2", b"{}"),
        ("u0", b'{"x":1}'),
    ]
