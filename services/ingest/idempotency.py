"""Idempotency keys: a retried Send with a key already seen returns the original id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class Claim(NamedTuple):
    key: str
    notification_id: str


class IdempotencyStore(Protocol):
    async def reserve(
        self, tenant: str, claims: Sequence[Claim], now: float, window_s: float
    ) -> list[str | None]:
        """Claims each key for its notification unless a live claim exists, in order (a key
        twice in `claims` is claimed by the first); returns, per claim, None when it was
        claimed, or the notification id holding the live claim."""
        ...

    async def take_over(
        self, tenant: str, claim: Claim, held_by: str, now: float, window_s: float
    ) -> bool:
        """Moves a live claim from the notification `held_by` to `claim`'s, with a new window,
        if `held_by` still holds it; returns whether it moved (for a claim whose send never
        stored anything)."""
        ...

    async def release(self, tenant: str, claims: Sequence[Claim]) -> None:
        """Withdraws claims whose send failed, so a retry can go through."""
        ...

    async def aclose(self) -> None: ...
