"""PushTargetStore in process memory."""

from __future__ import annotations

import builtins
from dataclasses import replace

from services.push.targets import PushTargetRecord


class MemoryPushTargetStore:
    def __init__(self) -> None:
        # (tenant, target_id) -> target; dicts keep insertion order, so oldest first.
        self._targets: dict[tuple[str, str], PushTargetRecord] = {}

    async def register(self, tenant: str, target: PushTargetRecord) -> PushTargetRecord:
        key = (tenant, target.target_id)
        previous = self._targets.pop(key, None)
        if previous is not None and previous.user_id == target.user_id:
            # Same user again: keep its registration time (and its place in the order).

            target = replace(target, registered_at=previous.registered_at)
        self._targets[key] = target
        return target

    async def unregister(self, tenant: str, user_id: str, target_id: str) -> bool:
        found = self._targets.get((tenant, target_id))
        if found is None or found.user_id != user_id:
            return False
        del self._targets[(tenant, target_id)]
        return True

    async def remove(self, tenant: str, target_ids: builtins.list[str]) -> int:
        return sum(self._targets.pop((tenant, t), None) is not None for t in set(target_ids))

    async def list(self, tenant: str, user_id: str) -> builtins.list[PushTargetRecord]:
        found = [t for (t_, _), t in self._targets.items() if t_ == tenant and t.user_id == user_id]
        return sorted(found, key=lambda t: t.registered_at)

    async def aclose(self) -> None:
        return None
