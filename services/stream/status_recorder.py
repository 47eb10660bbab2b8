"""Status writes that never hold up delivery: a status store out of reach loses the update, not
the delivery.

A delivery written to a stream, an ack stored, an entry expired: each is a fact before its
status is. When the status store cannot be reached (its circuit is open), the change is counted
in `herald_status_updates_lost_total` and logged at most once a minute, and the stream goes on;
GetStatus then shows an older state for those recipients (docs/delivery.md, guarantee 10).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from services import metrics
from services.domain import Transition
from services.errors import Unavailable
from services.stream.status import Mark, StatusStore

log = logging.getLogger(__name__)

_LOG_INTERVAL_S = 60.0


class _Applies(Protocol):
    async def apply(self, tenant: str, transitions: Sequence[Transition], at: float) -> None: ...
    async def record(self, tenant: str, marks: Sequence[Mark]) -> None: ...


class StatusEvents(Protocol):
    """Where state changes go besides the status store: the webhooks' queues
    (services/webhooks/events.py). Called on the delivery path, so `wants` is a cheap
    synchronous check and the others only enqueue: no await, no I/O."""

    def wants(self, tenant: str) -> bool: ...
    def transitions(
        self,
        tenant: str,
        transitions: Sequence[Transition],
        at: float,
        notifications: Mapping[str, bytes] | None = None,
    ) -> None:
        """`notifications`: id -> notification field, of those the caller holds (webhook
        events of a notification the store may no longer keep carry it)."""
        ...

    def marks(self, tenant: str, marks: Sequence[Mark]) -> None: ...


class StatusRecorder:
    def __init__(self, status: StatusStore | _Applies, events: StatusEvents | None = None) -> None:
        self._status = status
        self._events = events
        self._logged_at = -math.inf
        self._unlogged = 0

    async def apply(
        self,
        tenant: str,
        transitions: Sequence[Transition],
        at: float,
        notifications: Mapping[str, bytes] | None = None,
    ) -> None:
        if not transitions:
            return
        events = self._events
        if events is not None and events.wants(tenant):
            events.transitions(tenant, transitions, at, notifications)
        try:
            await self._status.apply(tenant, transitions, at)
        except Unavailable as exc:
            self._lost(len(transitions), exc.message)
        except Exception as exc:
            # E.g. a deadlock between two writers of one recipient: still not the stream's end.
            self._lost(len(transitions), type(exc).__name__)

    async def record(self, tenant: str, marks: Sequence[Mark]) -> None:
        if not marks:
            return
        events = self._events
        if events is not None and events.wants(tenant):
            events.marks(tenant, marks)
        try:
            await self._status.record(tenant, marks)
        except Unavailable as exc:
            self._lost(sum(len(m.entries) for m in marks), exc.message)
        except Exception as exc:
            self._lost(sum(len(m.entries) for m in marks), type(exc).__name__)

    def report(self, count: int, reason: str) -> None:
        """Counts and (at most once a minute) logs status changes that were lost."""
        self._lost(count, reason)

    def _lost(self, count: int, reason: str) -> None:
        metrics.STATUS_LOST.inc(count)
        self._unlogged += count
        now = time.monotonic()
        if now - self._logged_at >= _LOG_INTERVAL_S:
            log.warning(
                "status updates lost: the status store failed",
                extra={"lost": self._unlogged, "reason": reason},
            )
            self._logged_at, self._unlogged = now, 0
