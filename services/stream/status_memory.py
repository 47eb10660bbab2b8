"""StatusStore in process memory."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence

from services import metrics
from services.stream.status import ALLOWED, NotificationRecord, RecipientRecord, State, Transition


class MemoryStatusStore:
    """Status records in a dict, in creation order.

    Bounded: beyond `max_records` the oldest records are dropped (counted in
    `herald_status_records_evicted_total`). A dropped record's notification is still delivered and
    can still be acked; only its status history is gone (`GetStatus` answers NOT_FOUND).
    """

    def __init__(self, max_records: int | None = None) -> None:
        # An OrderedDict: dropping from the front is O(1) (a dict would scan its deleted slots).
        self._records: OrderedDict[tuple[str, str], NotificationRecord] = OrderedDict()
        self._max_records = max_records

    async def create(self, records: Sequence[NotificationRecord]) -> None:
        stored = self._records
        for record in records:
            stored.setdefault((record.tenant, record.notification_id), record)
        if self._max_records is not None and len(stored) > self._max_records:
            excess = len(stored) - self._max_records
            for _ in range(excess):
                stored.popitem(last=False)
            metrics.STATUS_EVICTED.inc(excess)

    async def apply(self, tenant: str, transitions: list[Transition], at: float) -> None:
        for transition in transitions:
            record = self._records.get((tenant, transition.notification_id))
            if record is None:
                continue
            recipient = record.recipients.get(transition.user_id)
            current = None if recipient is None else recipient.state
            if transition.state not in ALLOWED[current]:
                continue
            if recipient is None:
                recipient = record.recipients[transition.user_id] = RecipientRecord(
                    transition.user_id, transition.state, at
                )
            recipient.state = transition.state
            recipient.updated_at = at
            recipient.reason = transition.reason
            if transition.state is State.QUEUED:
                recipient.queued_at = at
            elif transition.state is State.DELIVERED:
                recipient.attempts += 1
                recipient.delivered_at = recipient.delivered_at or at
            elif transition.state is State.ACKED:
                recipient.acked_at = at

    async def mark_read(
        self, tenant: str, user_id: str, notification_ids: list[str], at: float
    ) -> int:
        marked = 0
        for notification_id in dict.fromkeys(notification_ids):
            record = self._records.get((tenant, notification_id))
            recipient = None if record is None else record.recipients.get(user_id)
            if recipient is not None and not recipient.read_at:
                recipient.read_at = at
                marked += 1
        return marked

    async def get(self, tenant: str, notification_id: str) -> NotificationRecord | None:
        record = self._records.get((tenant, notification_id))
        if record is None:
            return None
        # A copy (cheaper than deepcopy: every field is immutable but the recipients).
        return dataclasses.replace(
            record,
            recipients={u: dataclasses.replace(r) for u, r in record.recipients.items()},
        )

    async def purge(self, older_than: float) -> int:
        old = [key for key, record in self._records.items() if record.created_at < older_than]
        for key in old:
            del self._records[key]
        return len(old)
