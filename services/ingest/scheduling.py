"""Scheduled sends (docs/scheduling.md): what ingest does with a `deliver_at` in the future.

At Send, a scheduled notification is validated and completed like any other (auth, target,
template, idempotency key, id), its TTL counted from `deliver_at`, and held in the
ScheduledStore instead of being dispatched. Once due, `release_due` hands it to delivery as
SendBatch would have at that moment; `Scheduler` (services/ingest/scheduler.py) calls it.

Release is at least once and, in practice, once: a claim is leased (one node at a time), and a
send claimed again after a lease ran out is first looked up in the status store, where the
earlier claimant's dispatch, if it got that far, left its record, so it is not sent twice.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Sequence

from google.protobuf.message import DecodeError

from herald.v1 import notification_pb2
from services.bounds import check_id, quote
from services.clock import Clock
from services.domain import Accepted
from services.errors import FailedPrecondition, HeraldError, InvalidArgument, NotFound
from services.ingest.scheduled import CancelOutcome, ScheduledSend, ScheduledStore
from services.model import accepted_from_proto, seconds
from services.ports import DeliveryPort

log = logging.getLogger(__name__)

DEFAULT_PAGE = 50
MAX_PAGE = 100
# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799

AfterRelease = Callable[[str, list[Accepted]], Awaitable[None]]


def deliver_at_of(
    notification: notification_pb2.Notification, now: float, max_ahead_s: int
) -> float:
    """When to deliver the notification: 0.0 for at once (no deliver_at, or one not after
    `now`), else its deliver_at.

    Raises:
        InvalidArgument: deliver_at is not a valid time, or more than `max_ahead_s` ahead.
    """
    if not notification.HasField("deliver_at"):
        return 0.0
    ts = notification.deliver_at
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        raise InvalidArgument(
            "deliver_at is not a valid time (seconds between the years 1 and 9999, "
            "nanos in 0..999999999)"
        )
    at = seconds(ts)
    if at <= now:
        return 0.0
    if at - now > max_ahead_s:
        raise InvalidArgument(
            f"deliver_at is {(at - now) / 86_400:.1f} days ahead; sends can be scheduled at "
            f"most {max_ahead_s / 86_400:g} days ahead (HERALD_INGEST_MAX_SCHEDULE_AHEAD_S)"
        )
    return at


def page_token(send: ScheduledSend) -> str:
    raw = f"{send.deliver_at!r}/{send.notification_id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def parse_page_token(token: str) -> tuple[float, str] | None:
    """The position a page token names (None for the first page).

    Raises:
        InvalidArgument: the token is not one ListScheduled gave out.
    """
    if not token:
        return None
    try:
        at, _, notification_id = base64.urlsafe_b64decode(token).decode().partition("/")
        position = (float(at), notification_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgument(
            "page_token is not one ListScheduled gave out; leave it empty for the first page"
        ) from None
    if not notification_id:
        raise InvalidArgument("page_token is not one ListScheduled gave out")
    return position


class Scheduling:
    """Holds, cancels, lists and releases the scheduled sends of every tenant."""

    def __init__(
        self,
        store: ScheduledStore,
        delivery: DeliveryPort,
        clock: Clock,
        after_release: AfterRelease | None = None,
    ) -> None:
        self.store = store
        self._delivery = delivery
        self._clock = clock
        self._after_release = after_release
        self._listeners: list[Callable[[float], None]] = []

    def watch(self, listener: Callable[[float], None]) -> Callable[[], None]:
        """Calls `listener(deliver_at)` after sends are held here (the earliest of them);
        returns a function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def hold(self, sends: Sequence[ScheduledSend]) -> None:
        """Stores completed notifications until their deliver_at (durably, on PostgreSQL)."""
        if not sends:
            return
        await self.store.add(sends)
        earliest = min(send.deliver_at for send in sends)
        for listener in list(self._listeners):
            listener(earliest)

    async def held(self, tenant: str, notification_id: str) -> ScheduledSend | None:
        return await self.store.get(tenant, notification_id)

    async def cancel(self, tenant: str, notification_id: str) -> bool:
        """Cancels a held send; returns False when it was cancelled already.

        Raises:
            NotFound: the tenant has no notification with this id.
            FailedPrecondition: it is delivered, or being delivered right now.
        """
        check_id(notification_id, "notification_id")
        # First: a claimant that died after its dispatch leaves a row, its lease ended, that
        # is delivered all the same.
        await self._refuse_if_delivered(tenant, notification_id)
        outcome = await self.store.cancel(tenant, notification_id, self._clock.now())
        if outcome is CancelOutcome.CANCELLED:
            return True
        if outcome is CancelOutcome.ALREADY_CANCELLED:
            return False
        if outcome is CancelOutcome.RELEASING:
            raise FailedPrecondition(
                f"notification {quote(notification_id)} is being delivered right now; "
                "it can no longer be cancelled"
            )
        # Released since the first look, or never held.
        await self._refuse_if_delivered(tenant, notification_id)
        raise NotFound(f"no notification {quote(notification_id)} in this tenant")

    async def _refuse_if_delivered(self, tenant: str, notification_id: str) -> None:
        if await self._delivery.status(tenant, notification_id) is not None:
            raise FailedPrecondition(
                f"notification {quote(notification_id)} was delivered already "
                "(only a scheduled send can be cancelled, before its deliver_at)"
            )

    async def page(
        self, tenant: str, page_size: int, token: str
    ) -> tuple[list[ScheduledSend], str]:
        """A page of the tenant's held sends, soonest first, and the next page's token."""
        if page_size > MAX_PAGE:
            raise InvalidArgument(f"page_size is at most {MAX_PAGE}; got {page_size}")
        size = page_size or DEFAULT_PAGE
        sends = await self.store.list(tenant, size + 1, parse_page_token(token))
        if len(sends) > size:
            return sends[:size], page_token(sends[size - 1])
        return sends, ""

    async def next_due(self) -> float | None:
        return await self.store.next_due()

    async def release_due(self, limit: int, lease_s: float, now: float | None = None) -> int:
        """Hands the sends due at `now` (default: the clock's; up to `limit`) to delivery;
        returns how many were claimed.

        A tenant whose dispatch fails keeps its sends claimed until the lease ends, when the
        next pass (on any node) takes them again; other tenants are not held up.
        """
        if now is None:
            now = self._clock.now()
        sends = await self.store.claim(now, limit, lease_s)
        by_tenant: dict[str, list[ScheduledSend]] = {}
        for send in sends:
            by_tenant.setdefault(send.tenant, []).append(send)
        for tenant, held in by_tenant.items():
            try:
                await self._release(tenant, held)
            except HeraldError as exc:
                log.warning(
                    "scheduled sends not released; retried after the lease",
                    extra={"tenant": tenant, "count": len(held), "code": exc.code.name},
                )
            except Exception:
                log.warning(
                    "scheduled sends not released; retried after the lease",
                    extra={"tenant": tenant, "count": len(held)},
                    exc_info=True,
                )
        return len(sends)

    async def _release(self, tenant: str, held: list[ScheduledSend]) -> None:
        accepted: list[Accepted] = []
        for send in held:
            # Claimed before, by a node that may have dispatched it and died before `done`.
            if send.attempts > 1 and await self._delivery.status(tenant, send.notification_id):
                continue
            try:
                notification = notification_pb2.Notification.FromString(send.encoded)
                accepted.append(accepted_from_proto(notification, send.encoded))
            except (DecodeError, InvalidArgument):
                # Never stored so by ingest: it can never be delivered; say so, and drop it.
                log.error(
                    "a scheduled send cannot be decoded; dropped",
                    extra={"tenant": tenant, "notification_id": send.notification_id},
                )
        if accepted:
            await self._delivery.dispatch(accepted)
        await self.store.done(held)
        if accepted and self._after_release is not None:
            await self._after_release(tenant, accepted)
        log.info("scheduled sends released", extra={"tenant": tenant, "count": len(accepted)})
