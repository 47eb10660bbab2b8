"""ScheduledStore in process memory (lost when the node stops)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from services.ingest.scheduled import CancelOutcome, HoldState, ScheduledSend


class MemoryScheduledStore:
    def __init__(self) -> None:
        self._sends: dict[tuple[str, str], ScheduledSend] = {}
        # (tenant, id) -> when the lease of a claim ends.
        self._leases: dict[tuple[str, str], float] = {}

    async def add(self, sends: Sequence[ScheduledSend]) -> None:
        for send in sends:
            self._sends.setdefault((send.tenant, send.notification_id), send)

    async def get(self, tenant: str, notification_id: str) -> ScheduledSend | None:
        return self._sends.get((tenant, notification_id))

    async def cancel(self, tenant: str, notification_id: str, now: float) -> CancelOutcome:
        key = (tenant, notification_id)
        send = self._sends.get(key)
        if send is None:
            return CancelOutcome.NOT_HELD
        if send.state is HoldState.CANCELLED:
            return CancelOutcome.ALREADY_CANCELLED
        if self._leases.get(key, 0.0) > now:
            return CancelOutcome.RELEASING
        self._leases.pop(key, None)
        self._sends[key] = send._replace(state=HoldState.CANCELLED, cancelled_at=now)
        return CancelOutcome.CANCELLED

    async def claim(self, now: float, limit: int, lease_s: float) -> list[ScheduledSend]:
        due = heapq.nsmallest(
            limit,
            (
                send
                for key, send in self._sends.items()
                if send.state is HoldState.SCHEDULED
                and send.deliver_at <= now
                and self._leases.get(key, 0.0) <= now
            ),
            key=lambda send: (send.deliver_at, send.notification_id),
        )
        claimed = []
        for send in due:
            key = (send.tenant, send.notification_id)
            self._leases[key] = now + lease_s
            self._sends[key] = send = send._replace(attempts=send.attempts + 1)
            claimed.append(send)
        return claimed

    async def done(self, sends: Sequence[ScheduledSend]) -> None:
        for send in sends:
            key = (send.tenant, send.notification_id)
            self._leases.pop(key, None)
            self._sends.pop(key, None)

    async def next_due(self) -> float | None:
        times = [
            max(send.deliver_at, self._leases.get(key, 0.0))
            for key, send in self._sends.items()
            if send.state is HoldState.SCHEDULED
        ]
        return min(times, default=None)

    async def list(
        self, tenant: str, limit: int, after: tuple[float, str] | None = None
    ) -> list[ScheduledSend]:
        return heapq.nsmallest(
            limit,
            (
                send
                for (owner, _), send in self._sends.items()
                if owner == tenant
                and send.state is HoldState.SCHEDULED
                and (after is None or (send.deliver_at, send.notification_id) > after)
            ),
            key=lambda send: (send.deliver_at, send.notification_id),
        )

    async def purge(self, cancelled_before: float) -> int:
        gone = [
            key
            for key, send in self._sends.items()
            if send.state is HoldState.CANCELLED and send.cancelled_at < cancelled_before
        ]
        for key in gone:
            del self._sends[key]
        return len(gone)

    async def aclose(self) -> None:
        return None
