"""PendingPushStore in process memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from services.push.pending import PendingPush


class MemoryPendingPushStore:
    def __init__(self) -> None:
        self._pushes: dict[tuple[str, str, str], PendingPush] = {}

    async def add(self, pushes: Sequence[PendingPush]) -> None:
        for push in pushes:
            self._pushes[(push.tenant, push.user_id, push.notification_id)] = push

    async def claim(self, now: float, limit: int, lease_s: float) -> list[PendingPush]:
        due = sorted((p for p in self._pushes.values() if p.due_at <= now), key=lambda p: p.due_at)[
            :limit
        ]
        claimed = []
        for push in due:
            moved = dataclasses.replace(push, due_at=now + lease_s)
            self._pushes[(push.tenant, push.user_id, push.notification_id)] = moved
            claimed.append(push)
        return claimed

    async def done(self, pushes: Sequence[PendingPush]) -> None:
        for push in pushes:
            self._pushes.pop((push.tenant, push.user_id, push.notification_id), None)

    async def aclose(self) -> None:
        return None
