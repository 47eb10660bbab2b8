"""IdempotencyStore in process memory."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from services.ingest.idempotency import Claim


class MemoryIdempotencyStore:
    def __init__(self) -> None:
        self._claims: dict[tuple[str, str], tuple[str, float]] = {}
        self._expiry: list[tuple[float, str, str]] = []

    async def reserve(
        self, tenant: str, claims: Sequence[Claim], now: float, window_s: float
    ) -> list[str | None]:
        while self._expiry and self._expiry[0][0] <= now:
            _, t, k = heapq.heappop(self._expiry)
            claim = self._claims.get((t, k))
            if claim is not None and claim[1] <= now:
                del self._claims[(t, k)]
        out: list[str | None] = []
        for key, notification_id in claims:
            claim = self._claims.get((tenant, key))
            if claim is not None and claim[1] > now:
                out.append(claim[0])
                continue
            self._claims[(tenant, key)] = (notification_id, now + window_s)
            heapq.heappush(self._expiry, (now + window_s, tenant, key))
            out.append(None)
        return out

    async def take_over(
        self, tenant: str, claim: Claim, held_by: str, now: float, window_s: float
    ) -> bool:
        held = self._claims.get((tenant, claim.key))
        if held is None or held[0] != held_by:
            return False
        self._claims[(tenant, claim.key)] = (claim.notification_id, now + window_s)
        heapq.heappush(self._expiry, (now + window_s, tenant, claim.key))
        return True

    async def release(self, tenant: str, claims: Sequence[Claim]) -> None:
        for key, notification_id in claims:
            claim = self._claims.get((tenant, key))
            if claim is not None and claim[0] == notification_id:
                del self._claims[(tenant, key)]

    async def aclose(self) -> None:
        return None
