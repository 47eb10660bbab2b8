"""ParkedWebhookStore in process memory."""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Sequence

from services.webhooks.parked import DEFAULT_PAGE, ParkedBatch


class MemoryParkedWebhookStore:
    def __init__(self) -> None:
        # tenant -> batch id -> batch
        self._batches: dict[str, dict[str, ParkedBatch]] = {}

    async def park(self, batches: Sequence[ParkedBatch]) -> None:
        for batch in batches:
            self._batches.setdefault(batch.tenant, {})[batch.batch_id] = batch

    async def list(
        self, tenant: str, after: str = "", limit: int = DEFAULT_PAGE
    ) -> builtins.list[ParkedBatch]:
        found = self._batches.get(tenant, {})
        return [found[i] for i in sorted(found) if i > after][:limit]

    def _named(self, tenant: str, batch_ids: Sequence[str] | None) -> builtins.list[str]:
        found = self._batches.get(tenant, {})
        if batch_ids is None:
            return builtins.list(found)
        return [i for i in dict.fromkeys(batch_ids) if i in found]

    async def replay(self, tenant: str, batch_ids: Sequence[str] | None, now: float) -> int:
        found = self._batches.get(tenant, {})
        named = self._named(tenant, batch_ids)
        for batch_id in named:
            found[batch_id] = dataclasses.replace(found[batch_id], replay_at=now)
        return len(named)

    async def claim(self, now: float, limit: int, lease_s: float) -> builtins.list[ParkedBatch]:
        due = sorted(
            (
                b
                for batches in self._batches.values()
                for b in batches.values()
                if b.replay_at is not None and b.replay_at <= now
            ),
            key=lambda b: (b.replay_at or 0.0, b.tenant, b.batch_id),
        )[:limit]
        claimed = [dataclasses.replace(batch, replay_at=now + lease_s) for batch in due]
        for batch in claimed:
            self._batches[batch.tenant][batch.batch_id] = batch
        return claimed

    async def delete(self, tenant: str, batch_ids: Sequence[str] | None) -> int:
        found = self._batches.get(tenant, {})
        named = self._named(tenant, batch_ids)
        for batch_id in named:
            del found[batch_id]
        if not found:
            self._batches.pop(tenant, None)
        return len(named)

    async def aclose(self) -> None:
        return None
