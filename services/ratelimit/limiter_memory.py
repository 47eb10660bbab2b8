"""RateLimiter in this process's memory: each node has buckets of its own.

Time comes from the injected clock, so tests move it instead of sleeping. Buckets are
forgotten once full again (see limiter.py), so the map holds only the buckets in use.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.clock import Clock
from services.ratelimit.limiter import ALLOWED, EPSILON, Bucket, Decision

# Above this many buckets, the full ones are forgotten (at most once a second).
_SWEEP_ABOVE = 10_000
_SWEEP_INTERVAL_S = 1.0


class MemoryRateLimiter:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # (tenant, name) -> [tokens, when they were counted, when the bucket is full again]
        self._buckets: dict[tuple[str, str], list[float]] = {}
        self._swept_at = 0.0

    async def take(self, buckets: Sequence[Bucket], cost: int) -> Decision:
        if not buckets:
            return ALLOWED
        now = self._clock.now()
        if len(self._buckets) > _SWEEP_ABOVE and now - self._swept_at >= _SWEEP_INTERVAL_S:
            self._sweep(now)
        levels: list[tuple[float, float]] = []
        wait, limited_by = 0.0, -1
        for index, bucket in enumerate(buckets):
            tokens, at = self._level(bucket, now)
            levels.append((tokens, at))
            if tokens + EPSILON < cost:
                needed = (cost - tokens) / bucket.rate
                if needed > wait:
                    wait, limited_by = needed, index
        if limited_by >= 0:
            return Decision(False, wait, limited_by)
        for bucket, (tokens, at) in zip(buckets, levels, strict=True):
            left = tokens - cost
            full_at = at + (bucket.burst - left) / bucket.rate
            self._buckets[bucket.tenant, bucket.name] = [left, at, full_at]
        return ALLOWED

    def _level(self, bucket: Bucket, now: float) -> tuple[float, float]:
        """The bucket's tokens at `now`, and the time they were counted at: a clock that went
        back refills nothing until it passes the last count again."""
        state = self._buckets.get((bucket.tenant, bucket.name))
        if state is None:
            return float(bucket.burst), now
        tokens, counted_at, _ = state
        # min(burst, ...): a burst lowered since (tenant settings) caps the bucket at once.
        if now <= counted_at:
            return min(float(bucket.burst), tokens), counted_at
        return min(float(bucket.burst), tokens + (now - counted_at) * bucket.rate), now

    def _sweep(self, now: float) -> None:
        self._swept_at = now
        full = [key for key, (_, _, full_at) in self._buckets.items() if full_at <= now]
        for key in full:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)

    async def aclose(self) -> None:
        self._buckets.clear()
