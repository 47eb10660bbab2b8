"""The delivery path's side of webhooks: state changes queued per tenant, cut into batches.

Invariants:

- On the delivery path (services/stream/status_recorder.py) it costs one set lookup for a
  tenant known to have no webhooks (`wants`), and otherwise only appends to a list: no await,
  no I/O, no clock read.
- A tenant seen for the first time is looked up once in the background (its events wait, in
  order, until the answer: kept if it has webhooks enabled, else dropped); the tenants seen are
  read again every refresh (`refresh`), so a change of settings is in force within the tenant
  settings' TTL plus one refresh.
- At most `max_queued` events wait in all; past it new ones are dropped and counted (the
  receiver is far behind, or gone: parked batches say so).
- `take` cuts a tenant's queue into batches of at most its `max_batch_events`, the last one only
  once its oldest event has waited `max_delay_ms` (or at once when `flush`).
- An event made where its notification was at hand (an expiry, a drop from a full inbox: the
  store no longer holds it afterwards) carries the notification's field, a reference to bytes
  already in memory; the sender decodes it only for a tenant with preferences
  (services/webhooks/wanted.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from services import metrics
from services.domain import State, TenantSettingsRecord, Transition, Webhooks
from services.stream.status import Mark
from services.webhooks import settings as webhook_settings

log = logging.getLogger(__name__)

SettingsFor = Callable[[str], Awaitable[TenantSettingsRecord]]

_NAMES: Final = {
    State.DELIVERED: "delivered",
    State.ACKED: "acked",
    State.FAILED: "failed",
    State.EXPIRED: "expired",
}
_ALL: Final = frozenset(_NAMES.values())
_WARN_INTERVAL_S: Final = 60.0
# Tenants remembered as having no webhooks; past it the set starts again (a lookup each).
_MAX_OFF: Final = 100_000


class Event(NamedTuple):
    kind: str
    notification_id: str
    user_id: str
    at: float
    reason: str = ""
    # The notification's field (wire.notification_field) when its maker had it; b"": the
    # sender looks the notification up if it needs its category.
    notification: bytes = b""


@dataclass
class _Tenant:
    webhooks: Webhooks
    kinds: frozenset[str]
    queue: list[Event] = field(default_factory=list)


class Batch(NamedTuple):
    tenant: str
    webhooks: Webhooks
    events: list[Event]


class WebhookEvents:
    """Implements services.stream.status_recorder.StatusEvents."""

    def __init__(self, settings_for: SettingsFor, *, max_queued: int = 100_000) -> None:
        self._settings_for = settings_for
        self._max_queued = max_queued
        self._off: set[str] = set()
        self._on: dict[str, _Tenant] = {}
        # Tenants being looked up, with their events meanwhile.
        self._unknown: dict[str, list[Event]] = {}
        self._lookups: set[asyncio.Task[None]] = set()
        self.queued = 0
        self.dropped = 0
        self._warned_at = -math.inf

    # -- the delivery path -----------------------------------------------------------------

    def wants(self, tenant: str) -> bool:
        return tenant not in self._off

    def transitions(
        self,
        tenant: str,
        transitions: Sequence[Transition],
        at: float,
        notifications: Mapping[str, bytes] | None = None,
    ) -> None:
        """Queues the transitions' events; `notifications` (id -> notification field) when the
        caller holds notifications the store may no longer keep."""
        if notifications:
            found = notifications.get
            self._add(
                tenant,
                [
                    Event(
                        _NAMES[t.state],
                        t.notification_id,
                        t.user_id,
                        at,
                        t.reason,
                        found(t.notification_id, b""),
                    )
                    for t in transitions
                    if t.state in _NAMES
                ],
            )
            return
        self._add(
            tenant,
            [
                Event(_NAMES[t.state], t.notification_id, t.user_id, at, t.reason)
                for t in transitions
                if t.state in _NAMES
            ],
        )

    def marks(self, tenant: str, marks: Sequence[Mark]) -> None:
        known = self._on.get(tenant)
        # A tenant that does not want this kind (e.g. only failures) builds no event for it.
        kinds = known.kinds if known is not None else _ALL
        self._add(
            tenant,
            [
                Event(_NAMES[m.state], notification_id, m.user_id, m.at)
                for m in marks
                if m.state in _NAMES and _NAMES[m.state] in kinds
                for _, notification_id in m.entries
            ],
        )

    def _add(self, tenant: str, events: list[Event]) -> None:
        if not events:
            return
        if self.queued + len(events) > self._max_queued:
            self._drop(len(events))
            return
        known = self._on.get(tenant)
        if known is not None:
            kept = [e for e in events if e.kind in known.kinds]
            known.queue.extend(kept)
            self.queued += len(kept)
            return
        waiting = self._unknown.get(tenant)
        if waiting is None:
            waiting = self._unknown[tenant] = []
            task = asyncio.get_running_loop().create_task(self._look_up(tenant))
            self._lookups.add(task)
            task.add_done_callback(self._lookups.discard)
        waiting.extend(events)
        self.queued += len(events)

    def _drop(self, count: int) -> None:
        metrics.WEBHOOK_EVENTS_DROPPED.inc(count)
        self.dropped += count
        now = time.monotonic()
        if now - self._warned_at >= _WARN_INTERVAL_S:
            self._warned_at = now
            log.warning(
                "webhook events dropped: too many waiting to be sent",
                extra={"dropped_total": self.dropped, "max_queued": self._max_queued},
            )

    # -- settings --------------------------------------------------------------------------

    async def _look_up(self, tenant: str) -> None:
        try:
            record = await self._settings_for(tenant)
        except Exception:  # the cache never raises; a test's source might
            log.warning("webhook settings could not be read", extra={"tenant": tenant})
            record = TenantSettingsRecord(tenant)
        self.configure(tenant, record.webhooks)

    def configure(self, tenant: str, webhooks: Webhooks | None) -> None:
        """Puts the tenant's settings in force: its waiting events are kept (the kinds it
        wants) or dropped."""
        waiting = self._unknown.pop(tenant, [])
        self.queued -= len(waiting)
        if webhooks is None or not webhooks.enabled:
            if len(self._off) >= _MAX_OFF:
                self._off.clear()
            self._off.add(tenant)
            gone = self._on.pop(tenant, None)
            if gone is not None:
                self.queued -= len(gone.queue)
            return
        self._off.discard(tenant)
        kinds = webhook_settings.wanted(webhooks)
        current = self._on.get(tenant)
        if current is None:
            current = self._on[tenant] = _Tenant(webhooks, kinds)
        else:
            current.webhooks, current.kinds = webhooks, kinds
        kept = [e for e in waiting if e.kind in kinds]
        current.queue.extend(kept)
        self.queued += len(kept)

    async def refresh(self) -> None:
        """Reads the settings of every tenant seen again (from the node's settings cache)."""
        for tenant in [*self._on, *self._off]:
            try:
                record = await self._settings_for(tenant)
            except Exception:  # the cache never raises; keep what is in force
                log.warning("webhook settings could not be read", extra={"tenant": tenant})
                continue
            self.configure(tenant, record.webhooks)

    # -- the sender ------------------------------------------------------------------------

    def take(self, now: float, flush: bool = False) -> list[Batch]:
        """The batches ready to send: full ones, and the rest of a queue whose oldest event
        has waited the tenant's max delay (every queued event with `flush`)."""
        batches: list[Batch] = []
        for tenant, state in self._on.items():
            queue = state.queue
            if not queue:
                continue
            size = webhook_settings.batch_events(state.webhooks)
            while len(queue) >= size:
                batches.append(Batch(tenant, state.webhooks, queue[:size]))
                del queue[:size]
            if queue and (flush or now - queue[0].at >= webhook_settings.delay_s(state.webhooks)):
                batches.append(Batch(tenant, state.webhooks, queue[:]))
                queue.clear()
        self.queued -= sum(len(b.events) for b in batches)
        return batches

    async def settle(self) -> None:
        """Waits for the lookups in flight (their events are then queued or dropped)."""
        if self._lookups:
            await asyncio.gather(*self._lookups, return_exceptions=True)
