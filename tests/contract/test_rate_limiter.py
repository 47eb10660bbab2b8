"""RateLimiter contract: token buckets that refill with the clock, taken from all or none."""

from __future__ import annotations

import asyncio

import pytest

from services.clock import ManualClock
from services.ratelimit.limiter import Bucket
from tests.contract.conftest import LimiterBackend

pytestmark = pytest.mark.asyncio


def bucket(name: str = "send:tenant", rate: float = 10.0, burst: int = 5, tenant: str = "t1"):
    return Bucket(tenant, name, rate, burst)


async def test_a_full_bucket_gives_its_burst_then_refuses_with_the_wait(
    limiters: LimiterBackend,
) -> None:
    clock = ManualClock()
    limiter = limiters.node(clock)
    b = bucket(rate=10.0, burst=5)
    for _ in range(5):
        assert (await limiter.take([b], 1)).allowed
    refused = await limiter.take([b], 1)
    assert not refused.allowed
    assert refused.limited_by == 0
    assert refused.retry_after_s == pytest.approx(0.1, abs=1e-3)  # one token at 10/s
    # Three tokens are 0.3 s away.
    assert (await limiter.take([b], 3)).retry_after_s == pytest.approx(0.3, abs=1e-3)


async def test_tokens_come_back_with_time_up_to_the_burst(limiters: LimiterBackend) -> None:
    clock = ManualClock()
    limiter = limiters.node(clock)
    b = bucket(rate=10.0, burst=5)
    assert (await limiter.take([b], 5)).allowed
    await clock.advance(0.25)  # 2.5 tokens back
    assert (await limiter.take([b], 2)).allowed
    assert not (await limiter.take([b], 1)).allowed  # 0.5 left
    await clock.advance(0.05)
    assert (await limiter.take([b], 1)).allowed
    await clock.advance(3600)  # never more than the burst
    assert (await limiter.take([b], 5)).allowed
    assert not (await limiter.take([b], 1)).allowed


async def test_a_burst_lowered_caps_the_bucket_at_once(limiters: LimiterBackend) -> None:
    """Tenant settings may lower a bucket's burst while it is full: it holds at most the new
    burst from the next check on, even before the clock moves."""
    clock = ManualClock()
    limiter = limiters.node(clock)
    assert (await limiter.take([bucket(rate=0.001, burst=100)], 1)).allowed  # 99 left
    lowered = bucket(rate=0.001, burst=2)
    assert (await limiter.take([lowered], 2)).allowed
    assert not (await limiter.take([lowered], 1)).allowed
    await clock.advance(1)
    assert not (await limiter.take([lowered], 1)).allowed


async def test_a_check_takes_from_every_bucket_or_from_none(limiters: LimiterBackend) -> None:
    clock = ManualClock()
    limiter = limiters.node(clock)
    tenant = bucket("send:tenant", rate=1.0, burst=10)
    key_a = bucket("send:key:a", rate=1.0, burst=3)
    key_b = bucket("send:key:b", rate=1.0, burst=3)
    assert (await limiter.take([tenant, key_a], 3)).allowed
    refused = await limiter.take([tenant, key_a], 1)
    assert (refused.allowed, refused.limited_by) == (False, 1)
    # The refusal took nothing from the tenant: 7 left, which key b may use up to its 3.
    assert (await limiter.take([tenant, key_b], 3)).allowed
    assert (await limiter.take([tenant], 4)).allowed
    refused = await limiter.take([tenant, key_b], 1)
    # Both are empty; the tenant bucket is the one named (ties go to the first).
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(1.0, abs=1e-3)


async def test_the_wait_is_the_longest_of_the_buckets_short_of_tokens(
    limiters: LimiterBackend,
) -> None:
    clock = ManualClock()
    limiter = limiters.node(clock)
    fast = bucket("a", rate=10.0, burst=2)
    slow = bucket("b", rate=0.5, burst=2)
    assert (await limiter.take([fast, slow], 2)).allowed
    refused = await limiter.take([fast, slow], 1)
    assert (refused.limited_by, refused.retry_after_s) == (1, pytest.approx(2.0, abs=1e-3))
    await clock.advance(refused.retry_after_s)
    assert (await limiter.take([fast, slow], 1)).allowed


async def test_tenants_and_names_have_buckets_of_their_own(limiters: LimiterBackend) -> None:
    clock = ManualClock()
    limiter = limiters.node(clock)
    assert (await limiter.take([bucket(tenant="t1")], 5)).allowed
    assert not (await limiter.take([bucket(tenant="t1")], 1)).allowed
    assert (await limiter.take([bucket(tenant="t2")], 5)).allowed
    assert (await limiter.take([bucket("subscribe:tenant", tenant="t1")], 5)).allowed
    # Ids that would collide if names were joined carelessly (braces are hash tags in Redis).
    assert (await limiter.take([bucket(tenant="t1}")], 5)).allowed
    assert (await limiter.take([bucket(tenant="{t1")], 5)).allowed


async def test_no_buckets_is_allowed(limiters: LimiterBackend) -> None:
    assert (await limiters.node(ManualClock()).take([], 1000)).allowed


async def test_a_clock_that_goes_back_refills_nothing(limiters: LimiterBackend) -> None:
    clock = ManualClock(start=1_700_000_100.0)
    limiter = limiters.node(clock)
    b = bucket(rate=1.0, burst=2)
    assert (await limiter.take([b], 2)).allowed
    behind = limiters.node(ManualClock(start=1_700_000_000.0)) if limiters.shared else None
    if behind is not None:
        # Another node 100 s behind neither refills the bucket nor breaks it.
        assert not (await behind.take([b], 1)).allowed
    await clock.advance(1.0)
    assert (await limiter.take([b], 1)).allowed
    assert not (await limiter.take([b], 1)).allowed


async def test_nodes_of_a_shared_limiter_take_from_one_budget(limiters: LimiterBackend) -> None:
    if not limiters.shared:
        pytest.skip("each node of this backend has buckets of its own")
    clock = ManualClock()
    node_a, node_b = limiters.node(clock), limiters.node(clock)
    b = bucket(rate=1.0, burst=10)
    # Twenty concurrent takes from two nodes: exactly the burst passes.
    results = await asyncio.gather(
        *(node.take([b], 1) for node in (node_a, node_b) for _ in range(10)),
        node_b.take([b], 1),
    )
    assert sum(r.allowed for r in results) == 10
    await clock.advance(2.0)
    assert (await node_a.take([b], 2)).allowed
    assert not (await node_b.take([b], 1)).allowed
