"""PreferenceStore contract: a user's preferences stored and replaced whole, read in batches,
per tenant."""

from __future__ import annotations

import pytest

from services.preferences.store import Choice, DeliveryPath, PreferenceStore, UserPreferences

pytestmark = pytest.mark.asyncio

T1, T2 = "tenant-1", "tenant-2"


def muted(user: str, *categories: str, at: float = 100.0) -> UserPreferences:
    return UserPreferences(user, Choice(), {c: Choice(in_app=False) for c in categories}, at)


async def test_nothing_stored_is_none_and_no_tenant_flag(preference_store: PreferenceStore) -> None:
    assert await preference_store.get(T1, "alice") is None
    assert await preference_store.load(T1, ["alice", "bob"]) == {}
    assert not await preference_store.has_any(T1)


async def test_put_then_get_keeps_every_choice(preference_store: PreferenceStore) -> None:
    preferences = UserPreferences(
        "alice",
        Choice(push=False),
        {
            "marketing": Choice(in_app=False, push=None, webhook=True),
            "billing": Choice(True, True, False),
        },
        123.5,
    )
    stored = await preference_store.put(T1, preferences)
    assert stored == preferences
    assert await preference_store.get(T1, "alice") == preferences
    assert await preference_store.has_any(T1)


async def test_put_replaces_whole(preference_store: PreferenceStore) -> None:
    await preference_store.put(T1, muted("alice", "marketing", "news"))
    await preference_store.put(T1, muted("alice", "billing", at=200.0))
    found = await preference_store.get(T1, "alice")
    assert found is not None
    assert set(found.categories) == {"billing"}
    assert found.updated_at == 200.0


async def test_load_reads_only_those_with_preferences(preference_store: PreferenceStore) -> None:
    for user in ("alice", "carol"):
        await preference_store.put(T1, muted(user, "marketing"))
    loaded = await preference_store.load(T1, ["alice", "bob", "carol", "alice"])
    assert set(loaded) == {"alice", "carol"}
    assert not loaded["alice"].wants("marketing", DeliveryPath.IN_APP)
    assert loaded["alice"].wants("marketing", DeliveryPath.PUSH)
    assert await preference_store.load(T1, []) == {}


async def test_tenants_are_isolated(preference_store: PreferenceStore) -> None:
    await preference_store.put(T1, muted("alice", "marketing"))
    assert await preference_store.get(T2, "alice") is None
    assert await preference_store.load(T2, ["alice"]) == {}
    assert not await preference_store.has_any(T2)
    await preference_store.put(T2, muted("alice", "billing"))
    found = await preference_store.get(T1, "alice")
    assert found is not None
    assert set(found.categories) == {"marketing"}


async def test_odd_category_names_round_trip(preference_store: PreferenceStore) -> None:
    names = ["a", "x" * 64, "billing/invoices:v2.paid-late", "Z_9"]
    await preference_store.put(T1, muted("alice", *names))
    found = await preference_store.get(T1, "alice")
    assert found is not None
    assert sorted(found.categories) == sorted(names)
