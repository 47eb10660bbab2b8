"""Scheduled sends: notifications held until their `deliver_at` (docs/scheduling.md).

A held send is a completed notification (id, tenant, times filled in, target resolved), stored
whole, encoded, under (tenant, notification id). It leaves the store one of two ways:

- released: the scheduler claims it once due, for a lease, hands it to delivery as any other
  send, then removes it (`done`). A claim whose node dies comes back after the lease, and the
  next claimant finds it delivered already (the status record exists) and only removes it;
- cancelled: it stays, CANCELLED, so GetStatus can say so, until purged after the retention.

Invariants every implementation keeps: a send is claimed by one caller at a time (until its
lease ends); a cancelled send is never claimed; a claimed send whose lease has not ended is
never cancelled; tenants never see each other's sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import NamedTuple, Protocol


class HoldState(Enum):
    SCHEDULED = "scheduled"
    CANCELLED = "cancelled"


class ScheduledSend(NamedTuple):
    tenant: str
    notification_id: str
    deliver_at: float
    # The completed herald.v1.Notification, encoded.
    encoded: bytes
    state: HoldState = HoldState.SCHEDULED
    # When it was cancelled (0 while scheduled).
    cancelled_at: float = 0.0
    # How often a scheduler claimed it, the claim that returned it included: past 1, an earlier
    # claimant may have delivered it before its node died.
    attempts: int = 0


class CancelOutcome(Enum):
    # This call cancelled it.
    CANCELLED = "cancelled"
    # It was cancelled before.
    ALREADY_CANCELLED = "already_cancelled"
    # A scheduler holds it for delivery right now (its lease has not ended).
    RELEASING = "releasing"
    # No held send of the tenant has this id: never scheduled, or released already.
    NOT_HELD = "not_held"


class ScheduledStore(Protocol):
    async def add(self, sends: Sequence[ScheduledSend]) -> None:
        """Stores new held sends (ids are new: a send already stored under the tenant and id
        is kept as it is)."""
        ...

    async def get(self, tenant: str, notification_id: str) -> ScheduledSend | None:
        """The tenant's held or cancelled send with this id."""
        ...

    async def cancel(self, tenant: str, notification_id: str, now: float) -> CancelOutcome:
        """Cancels a held send unless a scheduler's lease on it runs at `now`."""
        ...

    async def claim(self, now: float, limit: int, lease_s: float) -> list[ScheduledSend]:
        """Up to `limit` scheduled sends due at `now` (deliver_at <= now) and not under a
        lease, soonest first, each leased until `now + lease_s`."""
        ...

    async def done(self, sends: Sequence[ScheduledSend]) -> None:
        """Removes sends released to delivery."""
        ...

    async def next_due(self) -> float | None:
        """The earliest time a scheduled send becomes claimable (its deliver_at, or the end of
        the lease it is under), or None when nothing is scheduled."""
        ...

    async def list(
        self, tenant: str, limit: int, after: tuple[float, str] | None = None
    ) -> list[ScheduledSend]:
        """The tenant's scheduled (not cancelled) sends by (deliver_at, id), from just after
        `after`."""
        ...

    async def purge(self, cancelled_before: float) -> int:
        """Forgets sends cancelled before the time; returns how many."""
        ...

    async def aclose(self) -> None: ...
