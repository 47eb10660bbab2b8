"""The ingest side of delivery: append accepted notifications to their logs, then publish.

A notification is in every recipient's log, with its status record, in one atomic store call
before anyone is told (`LogStore.append`); the broker then wakes the nodes whose sessions read
those logs. Whatever the broker loses, the log still holds (see broker.py).

A group commit answers its senders as soon as the append is durable, and only then announces
it: the publication wakes a stream writer per session it reaches, and the answers would
otherwise wait in the event loop behind all of them (56 ms at the median for a group of 250 in
the delivery bench, docs/performance.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math

from services import metrics, wire
from services.clock import Clock
from services.config import DeliverySettings
from services.domain import (
    BROADCAST,
    Accepted,
    LogKey,
    NewRecord,
    NotificationRecord,
    State,
    TargetKind,
    Transition,
    channel_log,
    user_log,
)
from services.errors import HeraldError, Unavailable
from services.stream.broker import Broker, Publication
from services.stream.inbox_state import InboxStateStore, forget_inbox_states
from services.stream.log import AppendResult, Entry, LogAppend, LogStore, NewEntry
from services.stream.status import StatusStore
from services.stream.status_recorder import StatusEvents, StatusRecorder
from services.tracing import Tracing

log = logging.getLogger(__name__)

# A group commit flushes at once when this many notifications, or this many entries in user
# logs, wait: a commit's own cost (about 500 µs of the node's CPU and 250 µs of PostgreSQL's,
# bench/send.py with lone Sends) is then under a tenth of what the group costs (about 36 µs
# per notification), so waiting the window for more would add latency and save little. A
# SendBatch of a few hundred, or a send to a segment, is committed without waiting, unless
# every slot of _GROUPS_IN_FLIGHT is taken: then it goes with what else comes meanwhile
# (figures in docs/performance.md, fifteenth session).
_GROUP_ENOUGH = 200
# At most this many group commits at once. Sends that come while all of them are in flight wait
# for the first to end and go together in the next: under load the groups grow instead of
# multiplying, and most of the node's pool (HERALD_POSTGRES_POOL_MAX, 10 by default) stays free
# for acks, status writes and log reads.
_GROUPS_IN_FLIGHT = 4
# A group flushed less than this long ago makes the next sends wait the group window; after a
# quieter spell a send is committed at once (the window would only add latency).
_BUSY_S = 0.1
# A full log drops its oldest entry on every append: say so in the log at most this often per
# tenant and kind of log, with the count since the last time (the metric counts every drop).
_DROP_LOG_INTERVAL_S = 60.0
SUPPRESSED_REASON = "the recipient's preferences turn this category off in-app"

# A tenant's appended notifications: the tenant, the append's results, the notifications.
_Appended = tuple[str, list[AppendResult], list[Accepted]]


class Dispatcher:
    """Appends notifications to their logs and publishes the new heads (DeliveryPort)."""

    def __init__(
        self,
        *,
        logs: LogStore,
        status: StatusStore,
        broker: Broker,
        settings: DeliverySettings,
        clock: Clock,
        group_window_s: float = 0.0,
        tracing: Tracing | None = None,
        inbox_states: InboxStateStore | None = None,
        events: StatusEvents | None = None,
    ) -> None:
        self._logs = logs
        self._inbox_states = inbox_states
        self._tracing = tracing
        self._status = status
        self._recorder = StatusRecorder(status, events)
        self._broker = broker
        self._settings = settings
        self._clock = clock
        # (tenant, log kind) -> (when a drop was last logged, drops since then).
        self._drops: dict[tuple[str, str], tuple[float, int]] = {}
        # Group commit: dispatches that arrive within the window share one store call.
        self._window_s = group_window_s
        self._waiting: list[tuple[list[Accepted], asyncio.Future[list[int]]]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._waiting_count = 0
        self._last_flush_at = -math.inf
        self._waiting_entries = 0
        self._groups: set[asyncio.Task[None]] = set()
        # Group commits in flight (their task: the append, then the announcement, which waits
        # for nothing but the broker's queue), and whether a flush waits for one to end.
        self._committing = 0
        self._held = False

    @property
    def waiting(self) -> int:
        """Notifications waiting for the group window (their append has not started)."""
        return self._waiting_count

    async def dispatch(self, notifications: list[Accepted]) -> list[int]:
        """Appends each notification to its logs, then tells the nodes; returns the number of
        user logs each reached, once the append is durable in the store.

        With a group window, dispatches that arrive within it are appended together (one store
        call, one transaction on PostgreSQL): each caller still hears only of its own."""
        if self._tracing is not None:
            # The caller's span (the Send's, or the Dispatch call's that continues its trace)
            # goes with the entries; taken here, before a group commit leaves the caller's task.
            sent = self._tracing.current_traceparent()
            if sent:
                notifications = [n._replace(trace_context=sent) for n in notifications]
        if self._window_s <= 0:
            return await self._dispatch_now(notifications)
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._waiting.append((notifications, future))
        self._waiting_count += len(notifications)
        self._waiting_entries += sum(len(n.user_ids) for n in notifications)
        if self._waiting_count >= _GROUP_ENOUGH or self._waiting_entries >= _GROUP_ENOUGH:
            self._flush()
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            # A node that committed a group a moment ago is busy: sends wait the window to
            # share the next commit. An idle one commits a lone send at once.
            busy = loop.time() - self._last_flush_at < _BUSY_S
            self._flush_handle = loop.call_later(self._window_s if busy else 0.0, self._flush)
        return await future

    def _flush(self, force: bool = False) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._committing >= _GROUPS_IN_FLIGHT and not force:
            self._held = True  # the next group starts as soon as one in flight ends
            return
        self._held = False
        waiting, self._waiting, self._waiting_count = self._waiting, [], 0
        self._waiting_entries = 0
        if waiting:
            self._last_flush_at = asyncio.get_running_loop().time()
            self._committing += 1
            task = asyncio.ensure_future(self._commit_group(waiting))
            self._groups.add(task)
            task.add_done_callback(functools.partial(self._group_ended, waiting))

    def _group_ended(
        self,
        waiting: list[tuple[list[Accepted], asyncio.Future[list[int]]]],
        task: asyncio.Task[None],
    ) -> None:
        """A group's task is done, or was cancelled (even before it started): its slot is free,
        and a caller it did not answer hears that it may retry."""
        self._groups.discard(task)
        self._committing -= 1
        for _, future in waiting:
            if not future.done():
                future.set_exception(
                    Unavailable(
                        "the node stopped before the send was known to be stored; retry it "
                        "(with its idempotency key, a stored send is not stored twice)"
                    )
                )
        if self._held:  # a window ran out, or enough came, while every slot was taken
            self._flush()

    async def aclose(self) -> None:
        """Commits what waits for the group window and waits for the groups in flight (before
        the stores close)."""
        while True:
            self._flush(force=True)
            if not self._groups:
                return
            # A group that ends may start the next with what waited: wait for that one too.
            await asyncio.gather(*self._groups, return_exceptions=True)

    async def _commit_group(
        self, waiting: list[tuple[list[Accepted], asyncio.Future[list[int]]]]
    ) -> None:
        # One store call per tenant: a failure of one tenant's call fails only its callers.
        by_tenant: dict[str, list[tuple[list[Accepted], asyncio.Future[list[int]]]]] = {}
        for item in waiting:
            tenant = item[0][0].tenant if item[0] else ""
            by_tenant.setdefault(tenant, []).append(item)
        for items in by_tenant.values():
            appended: list[_Appended] = []
            try:
                await self._append_all([n for batch, _ in items for n in batch], appended)
            except Exception as exc:
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
            else:
                # Durable: the callers are answered before the fan-out, so their continuations
                # run ahead of the stream writers the publication wakes (a group wakes one
                # writer per recipient's session, and the answers would wait for all of them).
                for batch, future in items:
                    if not future.done():
                        future.set_result([len(n.user_ids) for n in batch])
            # What was stored is announced, even when a later tenant's append failed.
            for tenant, results, batch in appended:
                try:
                    await self._announce(tenant, results, batch)
                except Exception:
                    # Stored (and its senders answered, or told to retry): the nodes' catch-up
                    # check delivers what was not announced.
                    log.exception("announcing appended notifications failed")

    async def _dispatch_now(self, notifications: list[Accepted]) -> list[int]:
        appended: list[_Appended] = []
        try:
            await self._append_all(notifications, appended)
        finally:
            for tenant, results, batch in appended:
                await self._announce(tenant, results, batch)
        return [len(n.user_ids) for n in notifications]

    async def _append_all(self, notifications: list[Accepted], appended: list[_Appended]) -> None:
        """One append per tenant of `notifications` (a node's Dispatch call may carry several),
        each added to `appended` once it is durable: a failure leaves there what was stored."""
        by_tenant: dict[str, list[Accepted]] = {}
        for n in notifications:
            by_tenant.setdefault(n.tenant, []).append(n)
        for tenant, batch in by_tenant.items():
            appended.append((tenant, await self._append(tenant, batch), batch))

    async def _append(self, tenant: str, notifications: list[Accepted]) -> list[AppendResult]:
        """Appends one tenant's notifications to their logs, with their status records, in one
        store call: durable when it returns."""
        records: list[NewRecord] = []
        by_log: dict[LogKey, list[NewEntry]] = {}
        for n in notifications:
            records.append(
                NewRecord(
                    n.notification_id, n.tenant, n.target, n.created_at, n.expires_at, n.user_ids
                )
            )
            entry = NewEntry(
                n.notification_id,
                n.priority,
                n.created_at,
                n.expires_at,
                wire.notification_field(n.encoded),
                n.trace_context,
            )
            if n.kind is TargetKind.CHANNEL:
                by_log.setdefault(channel_log(n.channel), []).append(entry)
            elif n.kind is TargetKind.BROADCAST:
                by_log.setdefault(BROADCAST, []).append(entry)
            else:
                for user in n.user_ids:
                    by_log.setdefault(user_log(user), []).append(entry)
        inbox_limit = self._settings.inbox_limit
        channel_limit = self._settings.channel_log_limit
        appends = [
            LogAppend(key, items, inbox_limit if key.is_user else channel_limit)
            for key, items in by_log.items()
        ]
        return await self._logs.append(tenant, appends, records)

    async def _announce(
        self, tenant: str, results: list[AppendResult], notifications: list[Accepted]
    ) -> None:
        """What follows a durable append: the broker wakes the readers of the logs, and the
        entries a log's bound pushed out and the users who muted a notification get their
        status. The send has succeeded by now, whatever happens here."""
        publications = [
            Publication(tenant, r.key, r.epoch, r.entries[-1].cursor, r.entries)
            for r in results
            if r.entries
        ]
        try:
            await self._broker.publish(publications)
        except HeraldError:
            # The broker is out of reach (its circuit is open): the nodes' catch-up check
            # delivers what it could not announce (broker.py).
            metrics.BROKER_PUBLISH_FAILED.inc(len(publications))
        for result in results:
            if result.dropped:
                await self._record_dropped(tenant, result.key, result.dropped)
        await self._record_suppressed(tenant, notifications)

    async def _record_suppressed(self, tenant: str, notifications: list[Accepted]) -> None:
        """Marks the users whose preferences kept a notification out of their log SUPPRESSED.
        After the append, like a drop: a lost status change must not fail the send."""
        suppressed = [
            Transition(n.notification_id, user, State.SUPPRESSED, SUPPRESSED_REASON)
            for n in notifications
            if n.muted and n.tenant == tenant
            for user in n.muted
        ]
        if suppressed:
            await self._recorder.apply(tenant, suppressed, self._clock.now())

    async def _record_dropped(self, tenant: str, key: LogKey, dropped: list[Entry]) -> None:
        now = self._clock.now()
        kind = key.kind if key.is_user else "channel"
        metrics.DROPPED.labels(kind).inc(len(dropped))
        if key.is_user:
            # After the append: the send has succeeded, a lost status change must not fail it.
            await self._recorder.apply(
                tenant,
                [
                    Transition(e.notification_id, key.name, State.FAILED, "dropped: inbox full")
                    for e in dropped
                ],
                now,
                # The store may keep them no longer: the webhook events carry them.
                {e.notification_id: e.notification_field for e in dropped},
            )
            if self._inbox_states is not None:
                await forget_inbox_states(
                    self._inbox_states, tenant, [(key.name, e.notification_id) for e in dropped]
                )
        logged_at, unlogged = self._drops.get((tenant, kind), (-math.inf, 0))
        unlogged += len(dropped)
        if now - logged_at < _DROP_LOG_INTERVAL_S:
            self._drops[tenant, kind] = (logged_at, unlogged)
            return
        self._drops[tenant, kind] = (now, 0)
        log.warning(
            "log bound reached, oldest entries dropped",
            extra={
                "tenant": tenant,
                "log": kind,
                "dropped": unlogged,
                "since_s": None if logged_at == -math.inf else round(now - logged_at),
            },
        )

    async def status(self, tenant: str, notification_id: str) -> NotificationRecord | None:
        return await self._status.get(tenant, notification_id)
