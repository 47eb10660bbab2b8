"""Each node's copy of the tenant settings: read again after the TTL, once per tenant at a time,
the last read kept while the source fails; a manual clock, never a sleep. And what a change
changed, as the audit log names it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from services.clock import ManualClock
from services.domain import RateLimitOverrides, StreamPolicy, TenantSettingsRecord
from services.errors import Unavailable
from services.registry.tenant_settings import changed_fields
from services.tenant_settings_cache import TenantSettingsCache

pytestmark = pytest.mark.asyncio


class Source:
    """The registry at the outer edge: settings by tenant, reads counted, failures on demand."""

    def __init__(self) -> None:
        self.stored: dict[str, TenantSettingsRecord] = {}
        self.reads = 0
        self.failing = False
        self.gate: asyncio.Event | None = None

    def put(self, tenant: str, version: int, rate: float) -> TenantSettingsRecord:
        record = TenantSettingsRecord(tenant, version, RateLimitOverrides(tenant_send_rate=rate))
        self.stored[tenant] = record
        return record

    async def tenant_settings(self, tenant: str) -> TenantSettingsRecord | None:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise Unavailable("the registry is unreachable")
        return self.stored.get(tenant)


async def test_settings_are_read_again_once_the_ttl_has_passed() -> None:
    source, clock = Source(), ManualClock()
    cache = TenantSettingsCache(source, clock, ttl_s=5)
    assert (await cache.get("acme")).version == 0  # none stored: the node defaults
    source.put("acme", 1, 10)
    await clock.advance(4.9)
    assert (await cache.get("acme")).version == 0
    assert source.reads == 1
    await clock.advance(0.1)
    got = await cache.get("acme")
    assert (got.version, got.rate_limits.tenant_send_rate) == (1, 10)
    assert source.reads == 2


async def test_concurrent_lookups_share_one_read() -> None:
    source, clock = Source(), ManualClock()
    source.put("acme", 3, 1)
    source.gate = asyncio.Event()
    cache = TenantSettingsCache(source, clock, ttl_s=5)
    waiting = [asyncio.ensure_future(cache.get("acme")) for _ in range(20)]
    await asyncio.sleep(0)
    source.gate.set()
    assert {r.version for r in await asyncio.gather(*waiting)} == {3}
    assert source.reads == 1


async def test_a_failing_source_keeps_the_last_read_and_is_asked_again_after_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, clock = Source(), ManualClock()
    source.put("acme", 2, 7)
    cache = TenantSettingsCache(source, clock, ttl_s=5)
    await cache.get("acme")
    source.failing = True
    await clock.advance(5)
    with caplog.at_level(logging.WARNING):
        assert (await cache.get("acme")).version == 2
        for _ in range(50):
            assert (await cache.get("acme")).rate_limits.tenant_send_rate == 7
    assert source.reads == 2
    # A tenant never read runs on the defaults meanwhile.
    assert (await cache.get("globex")).version == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once a minute, not once per lookup
    assert "unreachable" not in warnings[0].getMessage()
    await clock.advance(1)
    source.failing = False
    source.put("acme", 3, 8)
    assert (await cache.get("acme")).version == 3
    assert source.reads == 4


async def test_what_this_node_stored_is_in_force_at_once_and_not_undone_by_an_older_read() -> None:
    source, clock = Source(), ManualClock()
    source.put("acme", 1, 1)
    cache = TenantSettingsCache(source, clock, ttl_s=5)
    await cache.get("acme")
    cache.store(source.put("acme", 2, 2))
    assert (await cache.get("acme")).version == 2
    # A replica that lags (an older version read) does not win over what was stored here.
    source.stored["acme"] = TenantSettingsRecord("acme", 1)
    await clock.advance(5)
    assert (await cache.get("acme")).version == 2
    cache.store(TenantSettingsRecord("acme", 1))
    assert (await cache.get("acme")).version == 2


async def test_at_most_max_tenants_are_kept() -> None:
    source, clock = Source(), ManualClock()
    cache = TenantSettingsCache(source, clock, ttl_s=5, max_tenants=2)
    for tenant in ("a", "b", "a", "c"):
        await cache.get(tenant)
    assert source.reads == 3
    await cache.get("a")  # kept: used more recently than b
    assert source.reads == 3
    await cache.get("b")  # dropped for c, read again
    assert source.reads == 4


async def test_a_change_names_the_fields_it_changed_in_proto_order() -> None:
    before = TenantSettingsRecord("acme", 1, RateLimitOverrides(tenant_send_rate=1))
    after = TenantSettingsRecord(
        "acme",
        2,
        RateLimitOverrides(tenant_send_rate=1, user_subscribe_burst=3),
        StreamPolicy(signing_required=True),
        default_ttl_s=60,
    )
    assert changed_fields(before, after) == [
        "rate_limits.user_subscribe_burst",
        "default_ttl_seconds",
        "stream_policy",
    ]
    later = dataclasses.replace(after, stream_policy=StreamPolicy(("zstd",), 0, True, ()))
    assert changed_fields(after, later) == ["stream_policy.compression"]
    assert changed_fields(later, later) == []
