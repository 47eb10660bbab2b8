"""IdempotencyStore contract: a key claimed within the window answers with the original id."""

from __future__ import annotations

import pytest

from services.ingest.idempotency import Claim, IdempotencyStore

pytestmark = pytest.mark.asyncio

T1, T2 = "tenant-1", "tenant-2"
WINDOW = 60.0


async def reserve(
    store: IdempotencyStore, tenant: str, key: str, notification_id: str, now: float
) -> str | None:
    [held] = await store.reserve(tenant, [Claim(key, notification_id)], now, WINDOW)
    return held


async def test_one_call_claims_many_keys_in_order(idempotency_store: IdempotencyStore) -> None:
    claims = [Claim("a", "n1"), Claim("b", "n2"), Claim("a", "n3")]
    assert await idempotency_store.reserve(T1, claims, 1000.0, WINDOW) == [None, None, "n1"]
    again = [Claim("b", "n4"), Claim("c", "n5")]
    assert await idempotency_store.reserve(T1, again, 1001.0, WINDOW) == ["n2", None]
    await idempotency_store.release(T1, [Claim("a", "n1"), Claim("c", "n5")])
    assert await idempotency_store.reserve(T1, [Claim("a", "n6")], 1002.0, WINDOW) == [None]


async def test_the_first_claim_wins_within_the_window(
    idempotency_store: IdempotencyStore,
) -> None:
    assert await reserve(idempotency_store, T1, "k", "n1", 1000.0) is None
    assert await reserve(idempotency_store, T1, "k", "n2", 1000.0) == "n1"
    assert await reserve(idempotency_store, T1, "k", "n3", 1059.9) == "n1"


async def test_a_duplicate_does_not_extend_the_window(idempotency_store: IdempotencyStore) -> None:
    assert await reserve(idempotency_store, T1, "k", "n1", 1000.0) is None
    assert await reserve(idempotency_store, T1, "k", "n2", 1050.0) == "n1"
    # The window runs from the claim: [1000, 1060), whatever came in between.
    assert await reserve(idempotency_store, T1, "k", "n3", 1060.0) is None
    assert await reserve(idempotency_store, T1, "k", "n4", 1061.0) == "n3"


async def test_after_the_window_a_new_claim_is_made(idempotency_store: IdempotencyStore) -> None:
    assert await reserve(idempotency_store, T1, "k", "n1", 1000.0) is None
    assert await reserve(idempotency_store, T1, "k", "n2", 5000.0) is None
    assert await reserve(idempotency_store, T1, "k", "n3", 5001.0) == "n2"
    # The old claimant can no longer release the key.
    await idempotency_store.release(T1, [Claim("k", "n1")])
    assert await reserve(idempotency_store, T1, "k", "n4", 5002.0) == "n2"


async def test_keys_are_separate(idempotency_store: IdempotencyStore) -> None:
    assert await reserve(idempotency_store, T1, "a", "n1", 1000.0) is None
    assert await reserve(idempotency_store, T1, "b", "n2", 1000.0) is None
    assert await reserve(idempotency_store, T1, "a", "x", 1001.0) == "n1"
    assert await reserve(idempotency_store, T1, "b", "x", 1001.0) == "n2"


async def test_keys_are_per_tenant(idempotency_store: IdempotencyStore) -> None:
    assert await reserve(idempotency_store, T1, "k", "n1", 1000.0) is None
    assert await reserve(idempotency_store, T2, "k", "n2", 1000.0) is None
    assert await reserve(idempotency_store, T1, "k", "x", 1001.0) == "n1"
    assert await reserve(idempotency_store, T2, "k", "x", 1001.0) == "n2"
    await idempotency_store.release(T2, [Claim("k", "n1")])  # another tenant's claimant: no effect
    await idempotency_store.release(T2, [Claim("k", "n2")])
    assert await reserve(idempotency_store, T1, "k", "x", 1002.0) == "n1"
    assert await reserve(idempotency_store, T2, "k", "n3", 1002.0) is None


async def test_release_lets_a_retry_through(idempotency_store: IdempotencyStore) -> None:
    assert await reserve(idempotency_store, T1, "k", "n1", 1000.0) is None
    await idempotency_store.release(T1, [Claim("k", "n1")])
    assert await reserve(idempotency_store, T1, "k", "n2", 1001.0) is None
    assert await reserve(idempotency_store, T1, "k", "n3", 1002.0) == "n2"


async def test_only_the_claimant_can_release(idempotency_store: IdempotencyStore) -> None:
    assert await reserve(idempotency_store, T1, "k", "n1", 1000.0) is None
    await idempotency_store.release(T1, [Claim("k", "n2")])
    assert await reserve(idempotency_store, T1, "k", "n3", 1001.0) == "n1"


async def test_releasing_an_unknown_key_is_harmless(idempotency_store: IdempotencyStore) -> None:
    await idempotency_store.release(T1, [Claim("never-claimed", "n1")])
    assert await reserve(idempotency_store, T1, "never-claimed", "n1", 1000.0) is None


async def test_take_over_moves_a_claim_only_from_its_holder(
    idempotency_store: IdempotencyStore,
) -> None:
    assert await reserve(idempotency_store, T1, "k", "n1", 1000.0) is None
    # Only the holder's claim moves, with a fresh window.
    assert not await idempotency_store.take_over(T1, Claim("k", "n2"), "other", 1001.0, WINDOW)
    assert await idempotency_store.take_over(T1, Claim("k", "n2"), "n1", 1001.0, WINDOW)
    assert await reserve(idempotency_store, T1, "k", "n3", 1060.5) == "n2"
    assert not await idempotency_store.take_over(T1, Claim("k", "n4"), "n1", 1002.0, WINDOW)
    assert not await idempotency_store.take_over(T2, Claim("k", "n4"), "n2", 1002.0, WINDOW)
