"""ParkedWebhookStore contract: parked batches listed by id per tenant, replayed by claim (once
per lease, shared by the nodes), replaced when parked again, deleted by id or all."""

from __future__ import annotations

import pytest

from services.webhooks.parked import ParkedBatch, ParkedWebhookStore

pytestmark = pytest.mark.asyncio


def batch(
    batch_id: str, tenant: str = "t1", reason: str = "HTTP 503 after 8 attempts"
) -> ParkedBatch:
    return ParkedBatch(tenant, batch_id, b'{"events":[]}', 3, 8, reason, 100.0, 200.0)


async def test_list_by_id_per_tenant_in_pages(parked_webhook_store: ParkedWebhookStore) -> None:
    await parked_webhook_store.park([batch("b2"), batch("b1"), batch("b3"), batch("x", "t2")])
    first = await parked_webhook_store.list("t1", "", 2)
    assert [b.batch_id for b in first] == ["b1", "b2"]
    assert first[0] == batch("b1")
    assert [b.batch_id for b in await parked_webhook_store.list("t1", "b2", 2)] == ["b3"]
    assert [b.batch_id for b in await parked_webhook_store.list("t2")] == ["x"]
    assert await parked_webhook_store.list("t3") == []


async def test_replay_is_claimed_once_per_lease(parked_webhook_store: ParkedWebhookStore) -> None:
    await parked_webhook_store.park([batch("b1"), batch("b2"), batch("x", "t2")])
    # Nothing is due before an operator asks.
    assert await parked_webhook_store.claim(1000.0, 10, 60.0) == []
    assert await parked_webhook_store.replay("t1", ["b2", "nope", "b2"], 300.0) == 1
    (claimed,) = await parked_webhook_store.claim(300.0, 10, 60.0)
    assert (claimed.tenant, claimed.batch_id, claimed.body) == ("t1", "b2", b'{"events":[]}')
    assert claimed.replay_at == 360.0
    # Held for the lease: another node does not take it meanwhile.
    assert await parked_webhook_store.claim(359.0, 10, 60.0) == []
    (again,) = await parked_webhook_store.claim(360.0, 10, 60.0)
    assert again.batch_id == "b2"
    listed = {b.batch_id: b.replay_at for b in await parked_webhook_store.list("t1")}
    assert listed == {"b1": None, "b2": 420.0}


async def test_replay_all_and_limit(parked_webhook_store: ParkedWebhookStore) -> None:
    await parked_webhook_store.park([batch(f"b{i}") for i in range(5)] + [batch("x", "t2")])
    assert await parked_webhook_store.replay("t1", None, 10.0) == 5
    first = await parked_webhook_store.claim(10.0, 3, 60.0)
    assert len(first) == 3
    rest = await parked_webhook_store.claim(10.0, 10, 60.0)
    assert sorted(b.batch_id for b in first + rest) == [f"b{i}" for i in range(5)]


async def test_park_again_replaces_and_clears_the_replay(
    parked_webhook_store: ParkedWebhookStore,
) -> None:
    await parked_webhook_store.park([batch("b1")])
    await parked_webhook_store.replay("t1", ["b1"], 10.0)
    await parked_webhook_store.claim(10.0, 10, 60.0)
    await parked_webhook_store.park([batch("b1", reason="HTTP 410 (not retried)")])
    (parked,) = await parked_webhook_store.list("t1")
    assert (parked.reason, parked.replay_at) == ("HTTP 410 (not retried)", None)
    assert await parked_webhook_store.claim(1000.0, 10, 60.0) == []


async def test_delete_named_or_all(parked_webhook_store: ParkedWebhookStore) -> None:
    await parked_webhook_store.park([batch("b1"), batch("b2"), batch("b3"), batch("x", "t2")])
    assert await parked_webhook_store.delete("t1", ["b1", "missing"]) == 1
    assert [b.batch_id for b in await parked_webhook_store.list("t1")] == ["b2", "b3"]
    assert await parked_webhook_store.delete("t1", None) == 2
    assert await parked_webhook_store.list("t1") == []
    assert [b.batch_id for b in await parked_webhook_store.list("t2")] == ["x"]
    assert await parked_webhook_store.replay("t1", None, 1.0) == 0
