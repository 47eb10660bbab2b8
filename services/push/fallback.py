"""The offline fallback: pushes for notifications an online user did not ack in time, or that
reached a user with no open session.

Invariants:

- Ingest adds one pending push per (user, notification) of a user-targeted send, only for a
  tenant whose fallback is enabled; a disabled tenant costs ingest one cached settings lookup.
  A user whose preferences turn the notification's category off for push gets none; one who
  turned it off in-app only gets it at once (there is nothing in-app to ack).
- A pending push is looked at twice at most: at once (the user has no open session: push now;
  else wait for the deadline), then at the deadline (acked by then: no push).
- It is forgotten only once handled (sent to every target, or not wanted); a node that dies
  holding one gives it to another after the claim lease (at-least-once: a push may repeat).
- A target the provider reports gone is removed; 429 and 5xx are retried with backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from services.clock import Clock
from services.domain import Accepted, PushFallback, TargetKind, TenantSettingsRecord
from services.push.pending import PendingPush, PendingPushStore
from services.push.provider import Outcome, PushMessage, PushProvider, PushResult
from services.push.providers import ProviderSet
from services.push.targets import PushTargetRecord, PushTargetStore

log = logging.getLogger(__name__)

_USER_KINDS: Final = frozenset({TargetKind.USER, TargetKind.USERS})

SettingsFor = Callable[[str], Awaitable[TenantSettingsRecord]]
# The users of the list that have an open session.
OnlineUsers = Callable[[str, list[str]], Awaitable[set[str]]]
# Whether the user acked the notification.
Acked = Callable[[str, str, str], Awaitable[bool]]
Sleep = Callable[[float], Awaitable[None]]


def encode(message: PushMessage, deadline: float) -> bytes:
    return json.dumps(
        {
            "deadline": deadline,
            "id": message.notification_id,
            "title": message.title,
            "body": message.body,
            "data": message.data,
            "high": message.high_priority,
            "ttl": message.ttl_s,
            "collapse": message.collapse_key,
        },
        separators=(",", ":"),
    ).encode()


def decode(payload: bytes) -> tuple[PushMessage, float]:
    doc = json.loads(payload)
    message = PushMessage(
        doc["id"],
        doc["title"],
        doc["body"],
        dict(doc["data"]),
        doc["high"],
        doc["ttl"],
        doc["collapse"],
    )
    return message, float(doc["deadline"])


class PushFallbackWorker:
    def __init__(
        self,
        *,
        pending: PendingPushStore,
        targets: PushTargetStore,
        providers: ProviderSet,
        settings_for: SettingsFor,
        online: OnlineUsers,
        acked: Acked,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        lease_s: float = 60.0,
        batch: int = 100,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._pending = pending
        self._targets = targets
        self._providers = providers
        self._settings_for = settings_for
        self._online = online
        self._acked = acked
        self._clock = clock
        self._sleep = sleep
        self._lease_s = lease_s
        self._batch = batch
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s

    async def schedule(self, push: PushFallback, accepted: Sequence[Accepted]) -> None:
        """Adds the pending pushes of notifications just accepted (due at once: the first
        look says whether the user is online)."""
        pending: list[PendingPush] = []
        for a in accepted:
            if a.kind not in _USER_KINDS:
                continue
            message = message_of(a)
            payload = encode(message, a.created_at + push.delay)
            pending.extend(
                PendingPush(a.tenant, user, a.notification_id, a.created_at, payload)
                for user in a.user_ids
                if user not in a.no_push
            )
            if a.muted:
                at_once = encode(message, a.created_at)
                pending.extend(
                    PendingPush(a.tenant, user, a.notification_id, a.created_at, at_once)
                    for user in a.muted
                    if user not in a.no_push
                )
        if pending:
            await self._pending.add(pending)

    async def run_once(self) -> int:
        """Handles the pushes due now; returns how many were claimed."""
        claimed = await self._pending.claim(self._clock.now(), self._batch, self._lease_s)
        if claimed:
            await asyncio.gather(*(self._handle(p) for p in claimed))
        return len(claimed)

    async def run(self, interval_s: float = 0.5) -> None:
        while True:
            try:
                while await self.run_once() >= self._batch:
                    pass
            except Exception:
                log.warning("push fallback round failed; trying again", exc_info=True)
            await asyncio.sleep(interval_s)

    async def _handle(self, pending: PendingPush) -> None:
        settings = (await self._settings_for(pending.tenant)).push_fallback
        if settings is None or not settings.enabled:
            await self._pending.done([pending])
            return
        message, deadline = decode(pending.payload)
        now = self._clock.now()
        if now < deadline:
            online = await self._online(pending.tenant, [pending.user_id])
            if pending.user_id in online:
                # Online: it has until the deadline to ack.
                await self._pending.add([_at(pending, deadline)])
                return
        elif await self._acked(pending.tenant, pending.notification_id, pending.user_id):
            await self._pending.done([pending])
            return
        await self._push(pending.tenant, settings, pending.user_id, message)
        await self._pending.done([pending])

    async def _push(
        self, tenant: str, settings: PushFallback, user_id: str, message: PushMessage
    ) -> None:
        targets = await self._targets.list(tenant, user_id)
        results = await asyncio.gather(*(self._send(tenant, settings, t, message) for t in targets))
        gone = [
            t.target_id for t, r in zip(targets, results, strict=True) if r.outcome is Outcome.GONE
        ]
        if gone:
            await self._targets.remove(tenant, gone)
            log.info("push targets removed", extra={"tenant": tenant, "count": len(gone)})

    async def _send(
        self, tenant: str, settings: PushFallback, target: PushTargetRecord, message: PushMessage
    ) -> PushResult:
        provider: PushProvider | None = await self._providers.get(tenant, settings, target.kind)
        if provider is None:
            return PushResult(Outcome.FAILED, 0, "provider not configured")
        result = PushResult(Outcome.FAILED)
        for attempt in range(self._max_attempts):
            result = await provider.send(target, message)
            if result.outcome is not Outcome.RETRY:
                break
            if attempt + 1 < self._max_attempts:
                await self._sleep(self._backoff(attempt, result.retry_after_s))
        if result.outcome is not Outcome.SENT:
            log.warning(
                "push not sent",
                extra={
                    "tenant": tenant,
                    "kind": target.kind.name,
                    "outcome": result.outcome.value,
                    "status": result.status,
                    "reason": result.reason,
                },
            )
        return result

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return float(min(retry_after_s, self._max_backoff_s))
        ceiling = min(self._backoff_s * 2.0**attempt, self._max_backoff_s)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 -- jitter, not crypto

    async def aclose(self) -> None:
        await self._providers.aclose()


def _at(pending: PendingPush, due_at: float) -> PendingPush:
    return PendingPush(
        pending.tenant, pending.user_id, pending.notification_id, due_at, pending.payload
    )


def message_of(accepted: Accepted) -> PushMessage:
    """What a push says of a notification: its title, body and string-valued data."""
    from herald.v1 import notification_pb2

    notification = notification_pb2.Notification.FromString(accepted.encoded)
    content = notification.content
    data = {
        key: value.string_value
        for key, value in content.data.fields.items()
        if value.WhichOneof("kind") == "string_value"
    }
    return PushMessage(
        accepted.notification_id,
        content.title,
        content.body,
        data,
        high_priority=accepted.priority >= notification_pb2.PRIORITY_HIGH,
        ttl_s=max(0, int(accepted.expires_at - accepted.created_at)),
        collapse_key="",
    )
