"""Idempotency keys: a retried Send with a key already seen returns the original id."""

from __future__ import annotations

from typing import Protocol


class IdempotencyStore(Protocol):
    async def reserve(
        self, tenant: str, key: str, notification_id: str, now: float, window_s: float
    ) -> str | None:
        """Claims `key` for `notification_id` unless a live claim exists; returns that id."""
        ...

    async def release(self, tenant: str, key: str, notification_id: str) -> None:
        """Withdraws a claim whose send failed, so a retry can go through."""
        ...
