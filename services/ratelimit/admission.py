"""Admission: the buckets a call takes from, and the status a refusal answers.

- Send and SendBatch take one token per notification (a batch of N takes N, all or nothing)
  from the tenant's send bucket and the service key's (the backend token's `sub`);
- Subscribe takes one token per call from the tenant's connect bucket and the user's.

Limits, field by field, come from the tenant's settings in the registry (`TenantSettingsCache`,
read again every `HERALD_REGISTRY_TENANT_SETTINGS_TTL_S`), else its `HERALD_RATE_LIMIT_TENANTS`
entry, else `RateLimitSettings`' defaults; a rate of 0 turns a bucket off, and
`HERALD_RATE_LIMIT_ENABLED=false` turns every limit off whatever the registry holds. Node
tokens (node-to-node calls) are not limited. A refusal is
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
from services.domain import RATE_LIMIT_FIELDS, RateLimitOverrides
from services.errors import RateLimited, ResourceExhausted
from services.ratelimit.limiter import Bucket, RateLimiter
from services.tenant_settings_cache import TenantSettingsCache

_SEND: Final = "send"
_SUBSCRIBE: Final = "subscribe"
# Tenants whose applied limits are remembered (past it, forgotten all at once and recomputed).
_APPLIED_MAX: Final = 10_000


class Limit(NamedTuple):
    rate: float
    burst: int


class TenantLimits(NamedTuple):
    """The limits one tenant runs under (defaults with its overrides applied)."""

    tenant_send: Limit
    key_send: Limit
    tenant_subscribe: Limit
    user_subscribe: Limit


def node_limits(settings: RateLimitSettings, tenant: str) -> TenantLimits:
    """The limits of `tenant` from the node's settings alone: its `tenants` entry over the
    defaults."""
    own = settings.tenants.get(tenant)

    def pick(name: str) -> Limit:
        rate = getattr(own, f"{name}_rate", None) if own is not None else None
        burst = getattr(own, f"{name}_burst", None) if own is not None else None
        return Limit(
            float(getattr(settings, f"{name}_rate") if rate is None else rate),
            int(getattr(settings, f"{name}_burst") if burst is None else burst),
        )

    return TenantLimits(
        pick("tenant_send"), pick("key_send"), pick("tenant_subscribe"), pick("user_subscribe")
    )


def effective_limits(base: TenantLimits, overrides: RateLimitOverrides) -> TenantLimits:
    """`base` with every field the tenant's stored settings set replaced by it."""
    if all(getattr(overrides, name) is None for name in RATE_LIMIT_FIELDS):
        return base
    limits = []
    for prefix, limit in zip(TenantLimits._fields, base, strict=True):
        rate = getattr(overrides, f"{prefix}_rate")
        burst = getattr(overrides, f"{prefix}_burst")
        limits.append(
            Limit(
                limit.rate if rate is None else float(rate),
                limit.burst if burst is None else int(burst),
            )
        )
    return TenantLimits(*limits)


def as_overrides(limits: TenantLimits) -> RateLimitOverrides:
    """Every field of `limits`, set (what GetTenantSettings answers as the effective limits)."""
    values: dict[str, float | int] = {}
    for prefix, limit in zip(TenantLimits._fields, limits, strict=True):
        values[f"{prefix}_rate"] = limit.rate
        values[f"{prefix}_burst"] = limit.burst
    return RateLimitOverrides(**values)  # type: ignore[arg-type]


class Admission:
    def __init__(
        self,
        limiter: RateLimiter,
        settings: RateLimitSettings,
        tenant_settings: TenantSettingsCache | None = None,
    ) -> None:
        self._limiter = limiter
        self._settings = settings
        self._tenant_settings = tenant_settings
        # tenant -> (settings version, the limits with them applied)
        self._applied: dict[str, tuple[int, TenantLimits]] = {}

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one Admission per node, lives as long
    def node_limits(self, tenant: str) -> TenantLimits:
        """The tenant's limits from this node's settings (no registry)."""
        return node_limits(self._settings, tenant)

    async def limits(self, tenant: str) -> TenantLimits:
        """The limits `tenant` runs under now: the registry's settings over the node's."""
        base = self.node_limits(tenant)
        if self._tenant_settings is None:
            return base
        settings = await self._tenant_settings.get(tenant)
        applied = self._applied.get(tenant)
        if applied is not None and applied[0] == settings.version:
            return applied[1]
        limits = effective_limits(base, settings.rate_limits)
        if len(self._applied) >= _APPLIED_MAX:
            self._applied.clear()
        self._applied[tenant] = (settings.version, limits)
        return limits

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
        limits = await self.limits(tenant)
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
        limits = await self.limits(tenant)
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
