"""RateLimiter in Redis: every node takes from the same buckets, one Lua script per check.

A bucket is a hash `<prefix>{<tenant>}:rl:<name>` (services/redis_keys.py) holding `t` (tokens)
and `at` (when they were counted, in the nodes' clock, seconds). The buckets of a check share the
tenant's hash tag, so on Redis Cluster they live in one slot and the script is one atomic step:
it refills every bucket for the time passed, then takes `cost` from all of them or from none,
and sets each key to expire once it would be full again (a missing key is a full bucket).

Time is the caller's clock (passed in), not Redis's: tests move it instead of sleeping, and a
node whose clock is ahead refills at most its skew early (the script never moves a bucket's time
backwards). Keep the nodes' clocks synchronised (NTP), as the session leases already need.

When Redis cannot be reached (or the Redis breaker is open) the check fails open (allowed) or
closed (UNAVAILABLE), as configured, and is counted in `herald_rate_limit_store_failures_total`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Final, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services import metrics
from services.breaker import CircuitBreaker
from services.clock import Clock
from services.errors import Unavailable
from services.ratelimit.limiter import ALLOWED, Bucket, Decision
from services.redis_keys import checked_client, checked_prefix, tenant_base

log = logging.getLogger(__name__)

# KEYS: the buckets. ARGV: now, cost, then rate and burst of each bucket in KEYS order.
# Returns {1} when allowed, {0, seconds to wait (a string: Lua numbers reach Redis as integers),
# 1-based index of the bucket needing longest} when refused. 1e-6 is limiter.EPSILON. A key
# expires once its bucket would be full again, at most 30 days on (a very slow bucket).
_TAKE: Final = """
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local levels = {}
local wait, limited = 0, 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[1 + 2 * i])
  local burst = tonumber(ARGV[2 + 2 * i])
  local state = redis.call('HMGET', key, 't', 'at')
  local tokens, at = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or at == nil then
    tokens, at = burst, now
  else
    if now > at then
      tokens = tokens + (now - at) * rate
      at = now
    end
    -- A burst lowered since (tenant settings) caps what the bucket holds at once.
    tokens = math.min(burst, tokens)
  end
  levels[i] = {tokens, at}
  if tokens + 1e-6 < cost then
    local needed = (cost - tokens) / rate
    if needed > wait then
      wait, limited = needed, i
    end
  end
end
if limited > 0 then
  return {0, string.format('%.6f', wait), limited}
end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[1 + 2 * i])
  local burst = tonumber(ARGV[2 + 2 * i])
  local left = levels[i][1] - cost
  local at = string.format('%.17g', levels[i][2])
  redis.call('HSET', key, 't', string.format('%.17g', left), 'at', at)
  local full_in_ms = math.min(math.ceil((burst - left) / rate * 1000) + 1000, 2592000000)
  redis.call('PEXPIRE', key, string.format('%d', full_in_ms))
end
return {1}
"""

# What says "Redis is not there" (breaker refusals included) and what else a call to it can
# raise: either way the limit could not be checked.
_FAILURES: Final = (RedisError, OSError, TimeoutError, Unavailable)
_LOG_INTERVAL_S: Final = 60.0


class RedisRateLimiter:
    def __init__(
        self,
        client: Redis,
        prefix: str,
        clock: Clock,
        *,
        on_failure: Literal["open", "closed"] = "open",
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._client = checked_client(client)
        self._prefix = checked_prefix(prefix)
        self._clock = clock
        self._on_failure = on_failure
        self._breaker = breaker
        self._take = client.register_script(_TAKE)
        self._logged_at = -_LOG_INTERVAL_S

    def key(self, bucket: Bucket) -> str:
        return f"{tenant_base(self._prefix, bucket.tenant)}:rl:{bucket.name}"

    async def take(self, buckets: Sequence[Bucket], cost: int) -> Decision:
        if not buckets:
            return ALLOWED
        tenant = buckets[0].tenant
        if any(bucket.tenant != tenant for bucket in buckets):
            raise ValueError("the buckets of one check must belong to one tenant")
        keys = [self.key(bucket) for bucket in buckets]
        args: list[Any] = [repr(self._clock.now()), cost]
        for bucket in buckets:
            args += [repr(float(bucket.rate)), bucket.burst]
        try:
            if self._breaker is None:
                reply = await self._take(keys=keys, args=args)
            else:
                reply = await self._breaker.call(lambda: self._take(keys=keys, args=args))
        except _FAILURES as exc:
            return self._unchecked(exc)
        if int(reply[0]) == 1:
            return ALLOWED
        return Decision(False, float(reply[1]), int(reply[2]) - 1)

    def _unchecked(self, exc: BaseException) -> Decision:
        """The answer when Redis could not be asked: allowed (fail open) or UNAVAILABLE."""
        outcome = "allowed" if self._on_failure == "open" else "refused"
        metrics.RATE_LIMIT_STORE_FAILURES.labels(outcome).inc()
        now = time.monotonic()
        if now - self._logged_at >= _LOG_INTERVAL_S:
            self._logged_at = now
            log.warning(
                "rate limits cannot be checked: Redis is unreachable (%s); calls are %s",
                type(exc).__name__,
                outcome,
                extra={"error": type(exc).__name__, "outcome": outcome},
            )
        if self._on_failure == "open":
            return ALLOWED
        raise Unavailable(
            "rate limits cannot be checked (Redis is unreachable) and this node fails closed; "
            "retry in a few seconds"
        )

    async def aclose(self) -> None:
        """The client belongs to the caller (the production stores close it)."""
