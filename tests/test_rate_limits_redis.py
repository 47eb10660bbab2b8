"""The Redis rate limiter: its keys, and what a check answers while Redis is down."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from services.breaker import CircuitBreaker
from services.clock import ManualClock
from services.errors import Unavailable
from services.ratelimit.limiter import Bucket
from services.ratelimit.limiter_redis import RedisRateLimiter
from services.redis_keys import tenant_base
from tests.redis_support import scratch_keyspace, throwaway_redis

pytestmark = pytest.mark.asyncio

BUCKET = Bucket("acme", "send:tenant", 2.0, 10)


def failures(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "herald_rate_limit_store_failures_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_a_bucket_is_one_hash_under_the_tenant_tag_expiring_once_full() -> None:
    async with scratch_keyspace() as (client, prefix):
        limiter = RedisRateLimiter(client, prefix, ManualClock())
        assert (await limiter.take([BUCKET], 4)).allowed
        key = f"{tenant_base(prefix, 'acme')}:rl:send:tenant"
        assert limiter.key(BUCKET) == key
        assert float(await client.hget(key, "t")) == 6.0
        # 4 tokens at 2/s are back in 2 s: the key lives about that long (+1 s of margin).
        assert 2500 <= await client.pttl(key) <= 3000
        assert [k async for k in client.scan_iter(match=f"{prefix}*")] == [key.encode()]


async def test_a_missing_key_is_a_full_bucket() -> None:
    async with scratch_keyspace() as (client, prefix):
        clock = ManualClock()
        limiter = RedisRateLimiter(client, prefix, clock)
        assert (await limiter.take([BUCKET], 10)).allowed
        assert not (await limiter.take([BUCKET], 1)).allowed
        await client.unlink(limiter.key(BUCKET))  # as its expiry would
        assert (await limiter.take([BUCKET], 10)).allowed


def _unreachable_client(url: str) -> Redis:
    return Redis.from_url(
        url, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )


@pytest.mark.parametrize("on_failure", ["open", "closed"])
async def test_redis_down_fails_open_or_closed_as_set_and_counts(on_failure: str) -> None:
    async with throwaway_redis() as server:
        client = _unreachable_client(server.url)
        try:
            limiter = RedisRateLimiter(
                client,
                "herald:",
                ManualClock(),
                on_failure=on_failure,  # type: ignore[arg-type]
            )
            assert (await limiter.take([BUCKET], 10)).allowed
            assert not (await limiter.take([BUCKET], 1)).allowed  # it does limit while up
            await server.stop()
            outcome = "allowed" if on_failure == "open" else "refused"
            before = failures(outcome)
            if on_failure == "open":
                assert (await limiter.take([BUCKET], 1)).allowed
            else:
                with pytest.raises(Unavailable, match="rate limits cannot be checked"):
                    await limiter.take([BUCKET], 1)
            assert failures(outcome) == before + 1
            await server.start()  # a fresh, empty server: full buckets again
            assert (await limiter.take([BUCKET], 10)).allowed
            assert not (await limiter.take([BUCKET], 1)).allowed
        finally:
            await client.aclose()


async def test_an_open_breaker_answers_without_waiting_for_redis() -> None:
    async with throwaway_redis() as server:
        client = _unreachable_client(server.url)
        clock = ManualClock()
        breaker = CircuitBreaker(
            "Redis",
            clock=clock,
            failures=(RedisConnectionError, OSError),
            failure_threshold=1,
            reset_timeout_s=5.0,
        )
        try:
            limiter = RedisRateLimiter(
                client, "herald:", clock, on_failure="closed", breaker=breaker
            )
            await server.stop()
            with pytest.raises(Unavailable):
                await limiter.take([BUCKET], 1)
            assert breaker.state.value == "open"
            await server.start()
            # Redis is back, but the circuit is open: refused at once, Redis not asked.
            with pytest.raises(Unavailable):
                await limiter.take([BUCKET], 1)
            await clock.advance(5.0)
            assert (await limiter.take([BUCKET], 1)).allowed  # the trial closes it
            assert breaker.state.value == "closed"
        finally:
            await client.aclose()


async def test_a_very_slow_bucket_expires_within_thirty_days() -> None:
    async with scratch_keyspace() as (client, prefix):
        limiter = RedisRateLimiter(client, prefix, ManualClock(), on_failure="closed")
        slow = Bucket("acme", "send:tenant", 1e-9, 1000)
        assert (await limiter.take([slow], 1000)).allowed
        assert 0 < await client.pttl(limiter.key(slow)) <= 30 * 86_400 * 1000
        assert not (await limiter.take([slow], 1)).allowed
