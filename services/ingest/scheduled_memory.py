"""ScheduledStore in process memory (lost when the node stops).

A heap of (claimable at, tenant, id) finds what is due without looking at every held send;
an entry that no longer matches its send (claimed since, cancelled, released) is skipped.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from services.ingest.scheduled import CancelOutcome, HoldState, ScheduledSend

_Key = tuple[str, str]


class MemoryScheduledStore:
    def __init__(self) -> None:
        self._sends: dict[_Key, ScheduledSend] = {}
        # (tenant, id) -> when the lease of a claim ends.
        self._leases: dict[_Key, float] = {}
        self._due: list[tuple[float, str, str]] = []

    def _claimable_at(self, key: _Key) -> float | None:
        send = self._sends.get(key)
        if send is None or send.state is HoldState.CANCELLED:
            return None
        return max(send.deliver_at, self._leases.get(key, 0.0))

    def _stale(self, entry: tuple[float, str, str]) -> bool:
        return self._claimable_at((entry[1], entry[2])) != entry[0]

    async def add(self, sends: Sequence[ScheduledSend]) -> None:
        for send in sends:
            key = (send.tenant, send.notification_id)
            if key not in self._sends:
                self._sends[key] = send
                heapq.heappush(self._due, (send.deliver_at, *key))

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
        claimed: list[ScheduledSend] = []
        while self._due and len(claimed) < limit and self._due[0][0] <= now:
            entry = heapq.heappop(self._due)
            if self._stale(entry):
                continue
            key = (entry[1], entry[2])
            self._leases[key] = now + lease_s
            send = self._sends[key]
            self._sends[key] = send = send._replace(attempts=send.attempts + 1)
            claimed.append(send)
        for send in claimed:
            heapq.heappush(self._due, (now + lease_s, send.tenant, send.notification_id))
        return sorted(claimed, key=lambda s: (s.deliver_at, s.notification_id))

    async def done(self, sends: Sequence[ScheduledSend]) -> None:
        for send in sends:
            key = (send.tenant, send.notification_id)
            self._leases.pop(key, None)
            self._sends.pop(key, None)

    async def next_due(self) -> float | None:
        while self._due and self._stale(self._due[0]):
            heapq.heappop(self._due)
        return self._due[0][0] if self._due else None

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
