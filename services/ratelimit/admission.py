"""Admission: the buckets a call takes from, and the status a refusal answers.

- Send and SendBatch take one token per notification (a batch of N takes N, all or nothing)
  from the tenant's send bucket and the service key's (the backend token's `sub`);
- Subscribe takes one token per call from the tenant's connect bucket and the user's.

Limits come from `RateLimitSettings`, overridden per tenant by its `tenants` entry; a rate of 0
turns a bucket off. Node tokens (node-to-node calls) are not limited. A refusal is
RESOURCE_EXHAUSTED with the delay in the message and in trailers (`RateLimited`); a batch
larger than a bucket's burst could never pass, and says so without a delay.
"""

from __future__ import annotations

import functools
import math
from typing import Final, NamedTuple

from services import metrics
from services.auth import SCOPE_NODE, Principal
from services.bounds import quote
from services.config import RateLimitSettings
from services.errors import RateLimited, ResourceExhausted
from services.ratelimit.limiter import Bucket, RateLimiter

_SEND: Final = "send"
_SUBSCRIBE: Final = "subscribe"


class Limit(NamedTuple):
    rate: float
    burst: int


class TenantLimits(NamedTuple):
    """The limits one tenant runs under (defaults with its overrides applied)."""

    tenant_send: Limit
    key_send: Limit
    tenant_subscribe: Limit
    user_subscribe: Limit


class Admission:
    def __init__(self, limiter: RateLimiter, settings: RateLimitSettings) -> None:
        self._limiter = limiter
        self._settings = settings

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one Admission per node, lives as long
    def limits(self, tenant: str) -> TenantLimits:
        s = self._settings
        own = s.tenants.get(tenant)

        def pick(name: str) -> Limit:
            rate = getattr(own, f"{name}_rate", None) if own is not None else None
            burst = getattr(own, f"{name}_burst", None) if own is not None else None
            return Limit(
                float(getattr(s, f"{name}_rate") if rate is None else rate),
                int(getattr(s, f"{name}_burst") if burst is None else burst),
            )

        return TenantLimits(
            pick("tenant_send"), pick("key_send"), pick("tenant_subscribe"), pick("user_subscribe")
        )

    async def admit_send(self, principal: Principal, count: int) -> None:
        """Takes `count` notifications from the caller's send buckets.

        Raises:
            RateLimited: a bucket lacks the tokens; retry after the delay it names.
            ResourceExhausted: `count` is more than a bucket's burst (split the batch).
            Unavailable: the shared buckets are out of reach and the limiter fails closed.
        """
        if not self._settings.enabled or SCOPE_NODE in principal.scopes:
            return
        tenant, key = principal.tenant, principal.subject
        limits = self.limits(tenant)
        named = [
            ("tenant", limits.tenant_send, "send:tenant", f"tenant {quote(tenant)}"),
            ("key", limits.key_send, f"send:key:{key}", f"service key {quote(key)}"),
        ]
        await self._take(_SEND, tenant, named, count, "notifications")

    async def admit_subscribe(self, principal: Principal) -> None:
        """Takes one connect from the caller's tenant and user buckets (raises as above)."""
        if not self._settings.enabled or SCOPE_NODE in principal.scopes:
            return
        tenant, user = principal.tenant, principal.subject
        limits = self.limits(tenant)
        named = [
            ("tenant", limits.tenant_subscribe, "subscribe:tenant", f"tenant {quote(tenant)}"),
            ("user", limits.user_subscribe, f"subscribe:user:{user}", f"user {quote(user)}"),
        ]
        await self._take(_SUBSCRIBE, tenant, named, 1, "Subscribe calls")

    async def _take(
        self,
        what: str,
        tenant: str,
        named: list[tuple[str, Limit, str, str]],
        cost: int,
        unit: str,
    ) -> None:
        active = [entry for entry in named if entry[1].rate > 0]
        for _, limit, _, who in active:
            if cost > limit.burst:
                metrics.RATE_LIMITED.labels(what, "burst").inc()
                raise ResourceExhausted(
                    f"{cost} {unit} in one call are more than the {limit.burst} {who} may "
                    f"make at once; split the batch into calls of at most {limit.burst}"
                )
        buckets = [Bucket(tenant, name, limit.rate, limit.burst) for _, limit, name, _ in active]
        decision = await self._limiter.take(buckets, cost)
        if decision.allowed:
            return
        kind, limit, _, who = active[decision.limited_by]
        metrics.RATE_LIMITED.labels(what, kind).inc()
        wait = math.ceil(decision.retry_after_s * 1000) / 1000  # what RateLimited sends
        raise RateLimited(
            f"rate limit: {who} may make {limit.rate:g} {unit} per second "
            f"(bursts of {limit.burst}); retry in {wait:.3f} s",
            wait,
        )
