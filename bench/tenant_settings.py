"""What reading a tenant's limits costs a send or a subscribe: `Admission.limits` with the
node's settings only, and with the tenant-settings cache in front of a registry (an entry that
is fresh, as it is for every call but one per TTL and tenant).

    .venv/bin/python bench/tenant_settings.py [--calls 200000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from services.clock import SystemClock
from services.config import RateLimitSettings
from services.domain import TenantSettingsRecord
from services.ratelimit.admission import Admission
from services.ratelimit.limiter_memory import MemoryRateLimiter
from services.registry.tenant_settings_memory import MemoryTenantSettingsStore
from services.tenant_settings_cache import TenantSettingsCache


class _Registry:
    def __init__(self) -> None:
        self.store = MemoryTenantSettingsStore()

    async def tenant_settings(self, tenant: str) -> TenantSettingsRecord | None:
        return await self.store.get(tenant)


async def _per_call(cached: bool, calls: int, rounds: int) -> float:
    clock = SystemClock()
    cache = TenantSettingsCache(_Registry(), clock, 5.0) if cached else None
    admission = Admission(MemoryRateLimiter(clock), RateLimitSettings(), cache)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            await admission.limits("acme")
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    node = await _per_call(False, args.calls, args.rounds)
    cached = await _per_call(True, args.calls, args.rounds)
    print(f"Admission.limits, node settings only:       {node:.2f} us")
    print(f"Admission.limits, tenant settings (cached): {cached:.2f} us (+{cached - node:.2f})")


if __name__ == "__main__":
    asyncio.run(main())
