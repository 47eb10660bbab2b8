"""The memory rate limiter keeps only the buckets in use: full ones are forgotten."""

from __future__ import annotations

import pytest

from services.clock import ManualClock
from services.ratelimit.limiter import Bucket
from services.ratelimit.limiter_memory import MemoryRateLimiter

pytestmark = pytest.mark.asyncio


async def test_buckets_full_again_are_forgotten_once_there_are_many() -> None:
    clock = ManualClock()
    limiter = MemoryRateLimiter(clock)
    # 12,000 users connect once each (one token of a burst of 2, back in 1 s).
    for i in range(12_000):
        assert (await limiter.take([Bucket("t", f"subscribe:user:u{i}", 1.0, 2)], 1)).allowed
    assert len(limiter) == 12_000
    busy = Bucket("t", "subscribe:user:busy", 0.001, 2)
    assert (await limiter.take([busy], 2)).allowed
    await clock.advance(2.0)
    # The next check sweeps: every bucket full again goes, the busy one (still empty) stays.
    assert not (await limiter.take([busy], 1)).allowed
    assert len(limiter) == 1
    # A forgotten bucket is a full one.
    assert (await limiter.take([Bucket("t", "subscribe:user:u1", 1.0, 2)], 2)).allowed
