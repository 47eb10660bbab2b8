"""Ingest logic: validate, complete, deduplicate and hand notifications to delivery."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from herald.v1 import notification_pb2
from services import metrics
from services.bounds import check_id, quote
from services.clock import Clock
from services.config import IngestSettings
from services.domain import Accepted, NotificationRecord
from services.errors import (
    FailedPrecondition,
    HeraldError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.ingest.idempotency import Claim, IdempotencyStore
from services.ingest.rendering import pick_locale, render
from services.ingest.scheduled import ScheduledSend, ScheduledStore
from services.ingest.scheduled_memory import MemoryScheduledStore
from services.ingest.scheduling import Scheduling, deliver_at_of
from services.ingest.validation import ResolvedTarget, check_payload_size, validate
from services.model import set_timestamp
from services.ports import DeliveryPort, TemplatePort
from services.preferences.gate import PreferenceGate, split
from services.preferences.store import UserPreferences
from services.registry.segments import SegmentStore
from services.tenant_settings_cache import TenantSettingsCache

if TYPE_CHECKING:
    from services.push.fallback import PushFallbackWorker

log = logging.getLogger(__name__)


# Tenants whose applied settings are remembered (past it, forgotten all at once).
_APPLIED_MAX = 10_000
# What a notification nobody's preferences touch has for muted users and users without push.
_NOBODY: tuple[str, ...] = ()
_NOBODY_SET: frozenset[str] = frozenset()


def new_notification_ids(count: int) -> list[str]:
    """`count` notification ids, each 32 hex digits: 48 bits of milliseconds then 80 random bits,
    so ids sort by time. One call to the system's randomness for all of them."""
    millis = f"{int(time.time() * 1000):012x}"
    random_hex = os.urandom(10 * count).hex()
    return [millis + random_hex[i : i + 20] for i in range(0, 20 * count, 20)]


class SendOutcome(NamedTuple):
    """What became of one notification of a batch (a NamedTuple: one is built per notification,
    and a frozen dataclass costs a call per field to build)."""

    notification_id: str
    duplicate: bool
    recipient_count: int
    # Held until its deliver_at (docs/scheduling.md).
    scheduled: bool = False


class IngestCore:
    """Accepts notifications for one tenant at a time (the caller's)."""

    def __init__(
        self,
        delivery: DeliveryPort,
        idempotency: IdempotencyStore,
        settings: IngestSettings,
        clock: Clock,
        templates: TemplatePort | None = None,
        tenant_settings: TenantSettingsCache | None = None,
        *,
        push: PushFallbackWorker | None = None,
        preferences: PreferenceGate | None = None,
        scheduled: ScheduledStore | None = None,
        segments: SegmentStore | None = None,
    ) -> None:
        # The segments a send may target (docs/segments.md): None where this node does not
        # share the registry's stores and hands sends to a stream node (a segment's members
        # would not travel with the notification), and a segment send is refused.
        self._segments = segments
        self._tenant_settings = tenant_settings
        # Users' preferences (docs/preferences.md): None, or a tenant without any, costs
        # nothing but a lookup in memory per batch.
        self._preferences = preferences
        # The offline fallback (docs/push.md): None, or a tenant with it disabled, costs nothing
        # but the cached settings lookup.
        self._push = push
        # tenant -> (settings version, the node's settings with the tenant's applied)
        self._applied: dict[str, tuple[int, IngestSettings]] = {}
        self._delivery = delivery
        self._templates = templates
        self._idempotency = idempotency
        self._settings = settings
        self._clock = clock
        # Scheduled sends (None: held in this process's memory).
        self.scheduling = Scheduling(
            scheduled or MemoryScheduledStore(), delivery, clock, self._released
        )

    async def send(self, tenant: str, notification: notification_pb2.Notification) -> SendOutcome:
        [outcome] = await self.send_batch(tenant, [notification])
        if isinstance(outcome, HeraldError):
            raise outcome
        return outcome

    async def send_batch(
        self, tenant: str, notifications: list[notification_pb2.Notification]
    ) -> list[SendOutcome | HeraldError]:
        """Validates each notification on its own and dispatches the good ones together.

        The messages are completed in place (id, tenant, times): pass messages you own.
        """
        self.check_batch_size(len(notifications))
        settings = await self._settings_for(tenant)
        # Wall time, as the caller waits it (the injected clock may stand still in tests).
        started = time.perf_counter()
        now = self._clock.now()
        outcomes: list[SendOutcome | HeraldError | None] = []
        valid: list[tuple[int, notification_pb2.Notification, ResolvedTarget]] = []
        # index -> deliver_at, for the notifications held until then.
        deliver_at: dict[int, float] = {}
        for index, notification in enumerate(notifications):
            try:
                target = validate(notification, tenant, settings)
                at = deliver_at_of(notification, now, settings.max_schedule_ahead_s)
                if at:
                    deliver_at[index] = at
                if target.segment:
                    target = await self._members(tenant, target)
                if notification.HasField("template"):
                    notification = await self._render(tenant, notification)
            except HeraldError as exc:
                metrics.REJECTED.labels(type(exc).__name__).inc()
                outcomes.append(exc)
                continue
            outcomes.append(None)  # filled in below
            valid.append((index, notification, target))
        ids = new_notification_ids(len(valid))
        batch_ids = set(ids)
        claims = [
            Claim(n.idempotency_key, ids[i])
            for i, (_, n, _) in enumerate(valid)
            if n.idempotency_key
        ]
        held = iter(
            await self._idempotency.reserve(
                tenant, claims, now, self._settings.idempotency_window_s
            )
            if claims
            else ()
        )
        # One read of the preferences of every recipient of the batch; for a tenant without
        # any, a lookup in memory (and not even a list of the recipients).
        choices: Mapping[str, UserPreferences] = {}
        gate = self._preferences
        if gate is not None and valid and await gate.tenant_has_any(tenant):
            choices = await gate.load(
                tenant, [u for _, n, t in valid if not n.critical for u in t.user_ids]
            )
        accepted: list[tuple[int, Accepted]] = []
        scheduled: list[ScheduledSend] = []
        for (index, notification, target), notification_id in zip(valid, ids, strict=True):
            key = notification.idempotency_key
            if key:
                original = next(held)
                if original is not None and original in batch_ids:
                    # The key came earlier in this same batch.
                    metrics.DUPLICATES.inc()
                    outcomes[index] = SendOutcome(original, True, 0)
                    continue
                if original is not None:
                    duplicate = await self._duplicate(tenant, key, original, notification_id, now)
                    if duplicate is not None:
                        outcomes[index] = duplicate
                        continue
            # A scheduled notification's life (and TTL) starts at its deliver_at.
            at = deliver_at.get(index, 0.0)
            created = at or now
            priority, ttl = self._complete(notification, tenant, notification_id, created, settings)
            encoded = notification.SerializeToString()
            if at:
                scheduled.append(ScheduledSend(tenant, notification_id, at, encoded))
                outcomes[index] = SendOutcome(notification_id, False, 0, True)
                continue
            in_app, muted, no_push = target.user_ids, _NOBODY, _NOBODY_SET
            if choices and not notification.critical:
                in_app, muted, no_push = split(target.user_ids, notification.category, choices)
            accepted.append(
                (
                    index,
                    Accepted(
                        notification_id,
                        tenant,
                        target.kind,
                        in_app,
                        target.channel,
                        priority,
                        now,
                        now + ttl,
                        encoded,
                        notification.target.SerializeToString(),
                        muted=muted,
                        no_push=no_push,
                    ),
                )
            )
        if scheduled:
            # Like a dispatch that failed, a failure here leaves the claims to the retry.
            await self.scheduling.hold(scheduled)
            metrics.ACCEPTED.inc(len(scheduled))
        if accepted:
            # On failure the claims stay: the send may have been stored after all (a reply
            # lost, a cancelled caller). A retry finds the claim and looks the notification up:
            # stored, it is a duplicate; not stored, the retry takes the claim over.
            counts = await self._delivery.dispatch([a for _, a in accepted])
            for (index, a), count in zip(accepted, counts, strict=True):
                outcomes[index] = SendOutcome(a.notification_id, False, count)
            metrics.ACCEPTED.inc(len(accepted))
            if self._push is not None and self._tenant_settings is not None:
                await _schedule_pushes(
                    self._push, self._tenant_settings, tenant, [a for _, a in accepted]
                )
        metrics.INGEST_LATENCY.observe(time.perf_counter() - started)
        return outcomes  # type: ignore[return-value]  # every None was filled in above

    def check_batch_size(self, count: int) -> None:
        """Raises INVALID_ARGUMENT for an empty batch or one over HERALD_INGEST_MAX_BATCH."""
        if count > self._settings.max_batch:
            raise InvalidArgument(
                f"a batch holds at most {self._settings.max_batch} notifications; got {count}"
            )
        if not count:
            raise InvalidArgument("the batch is empty")

    async def _duplicate(
        self, tenant: str, key: str, original: str, notification_id: str, now: float
    ) -> SendOutcome | HeraldError | None:
        """What a send whose key `original` holds is: a duplicate of a stored notification, or
        (None) a fresh send that took over the claim of one that never stored anything."""
        if (
            await self._delivery.status(tenant, original) is not None
            or await self.scheduling.held(tenant, original) is not None
        ):
            metrics.DUPLICATES.inc()
            return SendOutcome(original, True, 0)
        window = self._settings.idempotency_window_s
        claim = Claim(key, notification_id)
        if await self._idempotency.take_over(tenant, claim, original, now, window):
            return None
        return Unavailable(
            "another send with this idempotency key is in progress; retry in a moment"
        )

    async def _members(self, tenant: str, target: ResolvedTarget) -> ResolvedTarget:
        """A segment target as the users target of its members now: one consistent read, so
        a user added later gets none of this send and one removed later keeps it."""
        if self._segments is None:
            raise FailedPrecondition(
                "target.segment needs the registry's stores on this node: send segments "
                "through `herald up` or a node of the production profile (PostgreSQL and "
                "Redis); the split topology on memory stores does not resolve them"
            )
        members = await self._segments.members_at_send(tenant, target.segment)
        return target._replace(user_ids=tuple(members))

    async def _render(
        self, tenant: str, notification: notification_pb2.Notification
    ) -> notification_pb2.Notification:
        """The notification with its content rendered from the named template."""
        ref = notification.template
        if self._templates is None:
            raise FailedPrecondition(
                "templates need the registry: set HERALD_REGISTRY_ADDRESS for this ingest node"
            )
        template = await self._templates.get_template(tenant, ref.template_id, ref.version)
        if template is None:
            which = f"version {ref.version} of " if ref.version else ""
            raise NotFound(f"no {which}template {quote(ref.template_id)} in this tenant")
        text = render(template, ref.variables, ref.locale)
        rendered = notification_pb2.Notification()
        rendered.CopyFrom(notification)
        content = rendered.content
        content.title, content.body = text.title, text.body
        content.image_url = text.image_url or content.image_url
        if text.actions:
            del content.actions[:]
            for action in text.actions:
                content.actions.add(id=action.action_id, label=action.label, url=action.url)
        rendered.template.version = template.version
        rendered.template.locale = pick_locale(template, ref.locale)
        check_payload_size(rendered, self._settings)
        return rendered

    def _complete(
        self,
        notification: notification_pb2.Notification,
        tenant: str,
        notification_id: str,
        now: float,
        settings: IngestSettings,
    ) -> tuple[int, int]:
        """Fills the server's fields in place (ingest owns the messages it is given); returns
        the priority and TTL it settled on."""
        notification.id = notification_id
        notification.tenant_id = tenant
        ttl = notification.ttl_seconds
        if not ttl:
            ttl = notification.ttl_seconds = settings.default_ttl_s
        priority = notification.priority
        if priority == notification_pb2.PRIORITY_UNSPECIFIED:
            priority = notification.priority = notification_pb2.PRIORITY_NORMAL
        set_timestamp(notification.created_at, now)
        set_timestamp(notification.expires_at, now + ttl)
        return priority, ttl

    async def _settings_for(self, tenant: str) -> IngestSettings:
        """The node's settings with the tenant's own (tenant settings) applied, each capped at
        the node's maximum: a tenant's settings never take it beyond what the node allows."""
        if self._tenant_settings is None:
            return self._settings
        stored = await self._tenant_settings.get(tenant)
        applied = self._applied.get(tenant)
        if applied is not None and applied[0] == stored.version:
            return applied[1]
        node = self._settings
        update: dict[str, int] = {}
        if stored.default_ttl_s is not None:
            update["default_ttl_s"] = min(stored.default_ttl_s, node.max_ttl_s)
        if stored.max_users_per_send is not None:
            update["max_users_per_send"] = min(stored.max_users_per_send, node.max_users_per_send)
        settings = node.model_copy(update=update) if update else node
        if len(self._applied) >= _APPLIED_MAX:
            self._applied.clear()
        self._applied[tenant] = (stored.version, settings)
        return settings

    async def status(self, tenant: str, notification_id: str) -> NotificationRecord | ScheduledSend:
        """The notification's status record, or, while it is held (or once it was cancelled
        before its deliver_at), its scheduled send."""
        check_id(notification_id, "notification_id")
        record = await self._delivery.status(tenant, notification_id)
        if record is not None:
            return record
        held = await self.scheduling.held(tenant, notification_id)
        if held is None:
            raise NotFound(f"no notification {quote(notification_id)} in this tenant")
        return held

    async def _released(self, tenant: str, accepted: list[Accepted]) -> None:
        """After scheduled sends reached their logs: their pending pushes, as at a Send."""
        if self._push is not None and self._tenant_settings is not None:
            await _schedule_pushes(self._push, self._tenant_settings, tenant, accepted)


async def _schedule_pushes(
    push: PushFallbackWorker, cache: TenantSettingsCache, tenant: str, accepted: list[Accepted]
) -> None:
    """Adds the pending pushes of a tenant whose fallback is on. The notifications are stored
    already: a failure here costs their pushes, never the send."""
    fallback = (await cache.get(tenant)).push_fallback
    if fallback is None or not fallback.enabled:
        return
    try:
        await push.schedule(fallback, accepted)
    except Exception:
        log.warning(
            "pending pushes not stored",
            extra={"tenant": tenant, "count": len(accepted)},
            exc_info=True,
        )
