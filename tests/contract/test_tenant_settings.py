"""TenantSettingsStore contract: one record per tenant, replaced whole, versions that only grow,
conditional puts that refuse a version they did not expect."""

from __future__ import annotations

import asyncio

import pytest

from services.domain import RateLimitOverrides, StreamPolicy, TenantSettingsRecord
from services.registry.tenant_settings import TenantSettingsStore, VersionConflict, empty

pytestmark = pytest.mark.asyncio

T1, T2 = "tenant-1", "tenant-2"


def settings(tenant: str = T1, **limits: float) -> TenantSettingsRecord:
    return TenantSettingsRecord(
        tenant,
        rate_limits=RateLimitOverrides(**limits),  # type: ignore[arg-type]
        updated_at=100.5,
        updated_by="ops",
    )


async def test_nothing_is_stored_until_a_put(tenant_settings_store: TenantSettingsStore) -> None:
    assert await tenant_settings_store.get(T1) is None
    assert await tenant_settings_store.list() == []


async def test_a_put_is_read_back_whole_at_version_one(
    tenant_settings_store: TenantSettingsStore,
) -> None:
    policy = StreamPolicy(("zstd", "gzip"), 512, True, ("json",))
    put = TenantSettingsRecord(
        T1,
        version=77,  # ignored: the store assigns versions
        rate_limits=RateLimitOverrides(
            tenant_send_rate=0.5,
            tenant_send_burst=3,
            key_send_rate=0.0,
            user_subscribe_burst=9,
        ),
        stream_policy=policy,
        updated_at=1234.25,
        updated_by="ops",
        default_ttl_s=60,
        max_users_per_send=3,
    )
    stored = await tenant_settings_store.put(put)
    assert stored.version == 1
    got = await tenant_settings_store.get(T1)
    assert got == TenantSettingsRecord(
        T1,
        1,
        put.rate_limits,
        policy,
        updated_at=1234.25,
        updated_by="ops",
        default_ttl_s=60,
        max_users_per_send=3,
    )
    assert got.rate_limits.tenant_subscribe_rate is None
    assert isinstance(got.rate_limits.tenant_send_burst, int)
    assert isinstance(got.rate_limits.key_send_rate, float)


async def test_a_put_replaces_whole_and_the_version_grows(
    tenant_settings_store: TenantSettingsStore,
) -> None:
    await tenant_settings_store.put(
        TenantSettingsRecord(
            T1, rate_limits=RateLimitOverrides(tenant_send_rate=5), stream_policy=StreamPolicy()
        )
    )
    second = await tenant_settings_store.put(settings(key_send_rate=7))
    assert second.version == 2
    got = await tenant_settings_store.get(T1)
    assert got is not None
    assert got.version == 2
    assert got.rate_limits == RateLimitOverrides(key_send_rate=7)
    assert got.stream_policy is None
    third = await tenant_settings_store.put(empty(T1))
    assert third.version == 3
    assert await tenant_settings_store.get(T1) == TenantSettingsRecord(T1, 3)


async def test_a_conditional_put_needs_the_stored_version(
    tenant_settings_store: TenantSettingsStore,
) -> None:
    with pytest.raises(VersionConflict) as absent:
        await tenant_settings_store.put(settings(tenant_send_rate=1), expected_version=1)
    assert absent.value.current == 0
    first = await tenant_settings_store.put(settings(tenant_send_rate=1), expected_version=0)
    assert first.version == 1
    with pytest.raises(VersionConflict) as created:
        await tenant_settings_store.put(settings(tenant_send_rate=2), expected_version=0)
    assert created.value.current == 1
    assert "version 1, not 0" in created.value.message
    second = await tenant_settings_store.put(settings(tenant_send_rate=2), expected_version=1)
    assert second.version == 2
    with pytest.raises(VersionConflict) as stale:
        await tenant_settings_store.put(settings(tenant_send_rate=3), expected_version=1)
    assert stale.value.current == 2
    got = await tenant_settings_store.get(T1)
    assert got is not None
    assert (got.version, got.rate_limits.tenant_send_rate) == (2, 2.0)


async def test_of_two_puts_expecting_one_version_one_wins(
    tenant_settings_store: TenantSettingsStore,
) -> None:
    await tenant_settings_store.put(settings())
    results = await asyncio.gather(
        *(
            tenant_settings_store.put(settings(tenant_send_rate=n), expected_version=1)
            for n in (10, 20, 30)
        ),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, TenantSettingsRecord)]
    assert len(won) == 1
    assert all(isinstance(r, VersionConflict) for r in results if r not in won)
    got = await tenant_settings_store.get(T1)
    assert got is not None
    assert got.version == 2
    assert got.rate_limits == won[0].rate_limits


async def test_tenants_have_their_own_settings_listed_in_pages(
    tenant_settings_store: TenantSettingsStore,
) -> None:
    for tenant in ("c", "a", "b", "d"):
        await tenant_settings_store.put(settings(tenant, tenant_send_rate=len(tenant)))
    await tenant_settings_store.put(settings("a", tenant_send_rate=9))
    assert await tenant_settings_store.get(T2) is None
    page = await tenant_settings_store.list(limit=3)
    assert [(s.tenant, s.version) for s in page] == [("a", 2), ("b", 1), ("c", 1)]
    rest = await tenant_settings_store.list(after="c", limit=3)
    assert [s.tenant for s in rest] == ["d"]
