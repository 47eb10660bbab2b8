"""IdempotencyStore in process memory."""

from __future__ import annotations

import heapq


class MemoryIdempotencyStore:
    def __init__(self) -> None:
        self._claims: dict[tuple[str, str], tuple[str, float]] = {}
        self._expiry: list[tuple[float, str, str]] = []

    async def reserve(
        self, tenant: str, key: str, notification_id: str, now: float, window_s: float
    ) -> str | None:
        while self._expiry and self._expiry[0][0] <= now:
            _, t, k = heapq.heappop(self._expiry)
            claim = self._claims.get((t, k))
            if claim is not None and claim[1] <= now:
                del self._claims[(t, k)]
        claim = self._claims.get((tenant, key))
        if claim is not None and claim[1] > now:
            return claim[0]
        self._claims[(tenant, key)] = (notification_id, now + window_s)
        heapq.heappush(self._expiry, (now + window_s, tenant, key))
        return None

    async def release(self, tenant: str, key: str, notification_id: str) -> None:
        claim = self._claims.get((tenant, key))
        if claim is not None and claim[0] == notification_id:
            del self._claims[(tenant, key)]
