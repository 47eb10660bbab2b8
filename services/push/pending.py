"""Pushes waiting for their time: one per (tenant, user, notification), durable on PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PendingPush:
    tenant: str
    user_id: str
    notification_id: str
    # When the worker looks at it next (claiming it moves this forward by the lease).
    due_at: float
    # The PushMessage as JSON (services.push.fallback encodes it) and the ack deadline.
    payload: bytes


class PendingPushStore(Protocol):
    async def add(self, pushes: Sequence[PendingPush]) -> None:
        """Stores each push (one already stored for the same key is replaced)."""
        ...

    async def claim(self, now: float, limit: int, lease_s: float) -> list[PendingPush]:
        """Up to `limit` pushes due at `now`, oldest first, each moved to `now + lease_s` so a
        node that dies holding them gives them to another after the lease."""
        ...

    async def done(self, pushes: Sequence[PendingPush]) -> None:
        """Forgets pushes handled (sent, or no longer wanted)."""
        ...

    async def aclose(self) -> None: ...
