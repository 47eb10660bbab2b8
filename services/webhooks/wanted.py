"""The users' webhook preferences (docs/preferences.md), applied to a batch of events before
it is sent: an event of a notification whose category its user turned off for webhooks is
dropped (counted in `herald_webhook_events_unwanted_total`), never sent nor parked.

What a batch costs, in the sender's task (never on the delivery path):

- a tenant none of whose users stored preferences: the gate's lookup in this node's memory
  (its store is asked `has_any` at most every `recheck_s` while the answer is no); nothing is
  read or decoded;
- otherwise: one store call for the preferences of the batch's users (`PreferenceGate.load`),
  and, if any of them has some, one read of the batch's notifications that no event carries
  (`LogStore.notifications`; expiries and drops from a full inbox carry theirs), then a decode
  of each distinct notification's `category` and `critical`.

A critical notification's events always go. A notification the logs no longer hold (swept by
its TTL after the event was made, and not carried by it) cannot be told apart: its events go.
"""

from __future__ import annotations

from typing import NamedTuple

from herald.v1 import notification_pb2
from services import metrics, wire
from services.preferences.gate import PreferenceGate
from services.preferences.store import DeliveryPath
from services.stream.log import LogStore
from services.webhooks.events import Event


class _Kind(NamedTuple):
    category: str
    critical: bool


def _kind(field: bytes) -> _Kind:
    notification = notification_pb2.Notification.FromString(wire.notification_bytes(field))
    return _Kind(notification.category, notification.critical)


class WebhookPreferences:
    """Filters the events of a batch by their users' `webhook` preferences."""

    def __init__(self, gate: PreferenceGate, logs: LogStore) -> None:
        self._gate = gate
        self._logs = logs

    async def keep(self, tenant: str, events: list[Event]) -> list[Event]:
        """The events their users want, in order (all of them for a tenant without
        preferences)."""
        if not events or not await self._gate.tenant_has_any(tenant):
            return events
        choices = await self._gate.load(tenant, list(dict.fromkeys(e.user_id for e in events)))
        if not choices:
            return events
        concerned = [e for e in events if e.user_id in choices]
        fields = {e.notification_id: e.notification for e in concerned if e.notification}
        missing = [
            (e.user_id, e.notification_id) for e in concerned if e.notification_id not in fields
        ]
        if missing:
            fields.update(await self._logs.notifications(tenant, list(dict.fromkeys(missing))))
        kinds = {notification_id: _kind(field) for notification_id, field in fields.items()}
        kept: list[Event] = []
        for event in events:
            found = choices.get(event.user_id)
            kind = kinds.get(event.notification_id)
            if (
                found is None
                or kind is None
                or kind.critical
                or found.wants(kind.category, DeliveryPath.WEBHOOK)
            ):
                kept.append(event)
        if len(kept) < len(events):
            metrics.WEBHOOK_EVENTS_UNWANTED.inc(len(events) - len(kept))
        return kept
