"""StatusStore in process memory."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

from services import metrics
from services.domain import (
    ALLOWED,
    NewRecord,
    NotificationRecord,
    RecipientRecord,
    State,
    Transition,
)
from services.stream.status import Mark

# Records are kept as plain tuples of scalars and dicts of such tuples, not as the dataclasses
# the Protocol speaks: the collector stops tracking tuples and dicts that hold only scalars, so a
# node holding millions of records does not make every full collection traverse them (measured:
# 300k records, 900k tracked objects and a 157 ms full collection as dataclasses; 86 ms with the
# recipients inside the record tuple, which keeps the tuple tracked; none tracked as here).
#
# A recipient: (user_id, state, updated_at, queued_at, delivered_at, acked_at, attempts, reason,
# read_at), with `state` as a plain int (an enum member would keep the tuple tracked).
_Recipient = tuple[str, int, float, float, float, float, int, str, float]
# A notification: (notification_id, tenant, target, created_at, expires_at, user_ids). Its
# recipients' tuples live in a dict of their own, made as they are first needed: a user the
# notification names and nothing has happened to yet is QUEUED since `created_at`, which needs
# no tuple (`_queued`), so a notification costs no object per recipient until it is delivered.
_Record = tuple[str, str, bytes, float, float, tuple[str, ...]]

_STATE: Final = 1
_READ: Final = 8
_CREATED_AT: Final = 3
_USER_IDS: Final = 5
_ALLOWED = {None if state is None else int(state): then for state, then in ALLOWED.items()}
# The states a first write moves to DELIVERED (see status.Mark).
_FIRST_WRITE_MOVES: Final = frozenset({int(State.QUEUED), int(State.FAILED)})
_QUEUED: Final = int(State.QUEUED)
_NO_RECIPIENTS: Final[Mapping[str, _Recipient]] = MappingProxyType({})


def _recipient_record(t: _Recipient) -> RecipientRecord:
    return RecipientRecord(t[0], State(t[1]), t[2], t[3], t[4], t[5], t[6], t[7], t[8])


def _queued(user_id: str, record: _Record) -> _Recipient:
    """A named user's recipient before anything happened to it."""
    at = record[_CREATED_AT]
    return (user_id, _QUEUED, at, at, 0.0, 0.0, 0, "", 0.0)


class MemoryStatusStore:
    """Status records per tenant, in creation order.

    Bounded: beyond `max_records` in all, records are dropped oldest first from the tenant that
    holds the most, so one busy tenant cannot push out the others' history (counted in
    `herald_status_records_evicted_total`). A dropped record's notification is still delivered
    and can still be acked; only its status history is gone (`GetStatus` answers NOT_FOUND).
    """

    def __init__(self, max_records: int | None = None) -> None:
        # OrderedDicts: dropping from the front is O(1) (a dict would scan its deleted slots).
        self._by_tenant: dict[str, OrderedDict[str, _Record]] = {}
        self._recipients: dict[tuple[str, str], dict[str, _Recipient]] = {}
        self._count = 0
        self._max_records = max_records

    async def create(self, records: Sequence[NewRecord]) -> None:
        by_tenant = self._by_tenant
        for notification_id, tenant, target, created_at, expires_at, user_ids, _ in records:
            stored = by_tenant.get(tenant)
            if stored is None:
                stored = by_tenant[tenant] = OrderedDict()
            if notification_id in stored:
                continue
            stored[notification_id] = (
                notification_id,
                tenant,
                target,
                created_at,
                expires_at,
                user_ids,
            )
            self._count += 1
        if self._max_records is not None and self._count > self._max_records:
            self._evict(self._count - self._max_records)

    def _evict(self, excess: int) -> None:
        """Drops `excess` records, oldest first, from whichever tenant holds the most."""
        metrics.STATUS_EVICTED.inc(excess)
        while excess > 0:
            sizes = sorted(((len(s), t) for t, s in self._by_tenant.items()), reverse=True)
            largest, tenant = sizes[0]
            runner_up = sizes[1][0] if len(sizes) > 1 else 0
            stored = self._by_tenant[tenant]
            for _ in range(min(excess, max(1, largest - runner_up))):
                notification_id, _record = stored.popitem(last=False)
                self._recipients.pop((tenant, notification_id), None)
                self._count -= 1
                excess -= 1
            if not stored:
                del self._by_tenant[tenant]

    def _recipients_of(
        self, tenant: str, notification_id: str
    ) -> tuple[_Record, Mapping[str, _Recipient]] | None:
        """The record and its recipients' tuples (none made yet: an empty mapping, and no dict
        is kept for a change that turns out to be ignored)."""
        stored = self._by_tenant.get(tenant)
        record = None if stored is None else stored.get(notification_id)
        if record is None:
            return None
        return record, self._recipients.get((tenant, notification_id), _NO_RECIPIENTS)

    def _put(self, tenant: str, notification_id: str, recipient: _Recipient) -> None:
        key = (tenant, notification_id)
        recipients = self._recipients.get(key)
        if recipients is None:
            recipients = self._recipients[key] = {}
        recipients[recipient[0]] = recipient

    async def apply(self, tenant: str, transitions: Sequence[Transition], at: float) -> None:
        for notification_id, user_id, state, reason in transitions:
            found = self._recipients_of(tenant, notification_id)
            if found is None:
                continue
            record, recipients = found
            current = recipients.get(user_id)
            if current is None and user_id in record[_USER_IDS]:
                current = _queued(user_id, record)
            if state not in _ALLOWED[None if current is None else current[_STATE]]:
                continue
            if current is None:
                queued_at = delivered_at = acked_at = read_at = 0.0
                attempts = 0
            else:
                _, _, _, queued_at, delivered_at, acked_at, attempts, _, read_at = current
            if state is State.QUEUED:
                queued_at = at
            elif state is State.DELIVERED:
                attempts += 1
                delivered_at = delivered_at or at
            elif state is State.ACKED:
                acked_at = at
            self._put(
                tenant,
                notification_id,
                (
                    user_id,
                    int(state),
                    at,
                    queued_at,
                    delivered_at,
                    acked_at,
                    attempts,
                    reason,
                    read_at,
                ),
            )

    async def record(self, tenant: str, marks: Sequence[Mark]) -> None:
        stored = self._by_tenant.get(tenant)
        if stored is None:
            return
        all_recipients = self._recipients
        delivered = int(State.DELIVERED)
        for user_id, _key, state, entries, at in marks:
            if state is not State.DELIVERED:
                await self.apply(tenant, [Transition(i, user_id, state) for _, i in entries], at)
                continue
            for _, notification_id in entries:
                key = (tenant, notification_id)
                recipients = all_recipients.get(key)
                current = None if recipients is None else recipients.get(user_id)
                if current is None:
                    record = stored.get(notification_id)
                    if record is None:
                        continue
                    # A named user's first write (it was QUEUED), or a channel's reader.
                    queued_at = record[_CREATED_AT] if user_id in record[_USER_IDS] else 0.0
                    if recipients is None:
                        recipients = all_recipients[key] = {}
                    recipients[user_id] = (user_id, delivered, at, queued_at, at, 0.0, 1, "", 0.0)
                elif recipients is not None and current[_STATE] in _FIRST_WRITE_MOVES:
                    _, _, _, queued_at, delivered_at, acked_at, attempts, _, read_at = current
                    recipients[user_id] = (
                        user_id,
                        delivered,
                        at,
                        queued_at,
                        delivered_at or at,
                        acked_at,
                        attempts + 1,
                        "",
                        read_at,
                    )

    async def mark_read(
        self, tenant: str, user_id: str, notification_ids: list[str], at: float
    ) -> int:
        marked = 0
        for notification_id in dict.fromkeys(notification_ids):
            found = self._recipients_of(tenant, notification_id)
            if found is None:
                continue
            record, recipients = found
            current = recipients.get(user_id)
            if current is None and user_id in record[_USER_IDS]:
                current = _queued(user_id, record)
            if current is not None and not current[_READ]:
                user, state, updated, queued, delivered, acked, attempts, reason, _ = current
                self._put(
                    tenant,
                    notification_id,
                    (user, state, updated, queued, delivered, acked, attempts, reason, at),
                )
                marked += 1
        return marked

    async def get(self, tenant: str, notification_id: str) -> NotificationRecord | None:
        stored = self._by_tenant.get(tenant)
        record = None if stored is None else stored.get(notification_id)
        if record is None:
            return None
        # A fresh value every time: callers may change it without touching the store.
        made = self._recipients.get((tenant, notification_id), {})
        recipients = {
            u: _recipient_record(made.get(u) or _queued(u, record)) for u in record[_USER_IDS]
        }
        for u, r in made.items():
            if u not in recipients:
                recipients[u] = _recipient_record(r)
        return NotificationRecord(*record[:_USER_IDS], recipients)

    async def recipients(
        self, tenant: str, user_id: str, notification_ids: Sequence[str]
    ) -> dict[str, RecipientRecord]:
        found: dict[str, RecipientRecord] = {}
        stored = self._by_tenant.get(tenant)
        if stored is None:
            return found
        all_recipients = self._recipients
        for notification_id in notification_ids:
            record = stored.get(notification_id)
            if record is None:
                continue
            recipients = all_recipients.get((tenant, notification_id))
            recipient = None if recipients is None else recipients.get(user_id)
            if recipient is None and user_id in record[_USER_IDS]:
                recipient = _queued(user_id, record)
            if recipient is not None:
                found[notification_id] = _recipient_record(recipient)
        return found

    async def purge(self, older_than: float) -> int:
        purged = 0
        for tenant, stored in list(self._by_tenant.items()):
            old = [i for i, record in stored.items() if record[_CREATED_AT] < older_than]
            for notification_id in old:
                del stored[notification_id]
                self._recipients.pop((tenant, notification_id), None)
            purged += len(old)
            if not stored:
                del self._by_tenant[tenant]
        self._count -= purged
        return purged

    async def aclose(self) -> None:
        return None
