"""The in-app inbox: pages of the user's own log, newest first, with each item's delivery state
and inbox state (seen, read, archived), the counts, and the changes (docs/inbox.md).

Invariants:

- The inbox is the user's own log: an entry that expired or that the log's bound pushed out is
  not in it, and its inbox state is forgotten: the dispatcher and the expiry sweep call
  `InboxStateStore.forget` with every entry that leaves, and a change looks again after it
  wrote (`_settle`), so a row written while its entry left does not outlive it.
- Only the user's own entries change state: every named notification is checked against the
  user's log first, and a change names none of another user's (NOT_FOUND, nothing changes).
- Counts cost two reads whatever the inbox holds: the log's size and the user's counters.
- A change that changed something is published as one InboxEvent to every open session of the
  user, on every node (Broker.publish_user_events), after it is stored; it is not acked and not
  replayed.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import NamedTuple

from herald.v1 import stream_pb2
from services import wire
from services.clock import Clock
from services.domain import State, user_log
from services.errors import NotFound
from services.model import timestamp
from services.stream.broker import Broker, UserEvent
from services.stream.inbox_state import Action, Counts, InboxCounters, InboxStateStore
from services.stream.log import LogStore
from services.stream.status import StatusStore

# Notifications changed per store call by MarkAllRead: bounds each transaction.
_CHANGE_BATCH = 1000
# A filtered page reads at most this many entries of the log per page asked for: a filter that
# matches little returns a short page (with a token) instead of reading the whole inbox.
_SCAN_FACTOR = 5


class Filter(enum.IntEnum):
    """herald.v1.InboxFilter."""

    NOT_ARCHIVED = 0
    ALL = 1
    ARCHIVED = 2
    UNREAD = 3


class InboxItem(NamedTuple):
    notification: bytes  # the encoded Notification
    cursor: int
    state: State
    read_at: float
    seen_at: float
    archived_at: float


class Inbox:
    def __init__(
        self,
        *,
        logs: LogStore,
        status: StatusStore,
        states: InboxStateStore,
        broker: Broker,
        clock: Clock,
    ) -> None:
        self._logs = logs
        self._status = status
        self._states = states
        self._broker = broker
        self._clock = clock

    async def page(
        self,
        tenant: str,
        user_id: str,
        page_size: int,
        before: int,
        filter_: Filter = Filter.NOT_ARCHIVED,
    ) -> tuple[list[InboxItem], int]:
        """A page of the user's own log, newest first, of the items `filter_` keeps, and the
        cursor to pass as `before` for the next page (0 on the last page). A filtered page reads
        at most `_SCAN_FACTOR` times `page_size` entries, and may hold fewer items than asked."""
        key = user_log(user_id)
        items: list[InboxItem] = []
        scanned = 0
        budget = page_size * (_SCAN_FACTOR if filter_ is not Filter.ALL else 1)
        # One more than the page, each round: whether the log goes on is known without a read.
        want = page_size + 1
        while True:
            entries = await self._logs.read_reverse(tenant, key, before, want)
            now = self._clock.now()
            live = [e for e in entries if e.expires_at > now]
            ids = [e.notification_id for e in live]
            recipients = await self._status.recipients(tenant, user_id, ids)
            states = await self._states.get(tenant, user_id, ids)
            consumed = 0
            for entry in entries:
                if len(items) == page_size:
                    break
                consumed += 1
                before = entry.cursor
                if entry.expires_at <= now:
                    continue
                state = states.get(entry.notification_id)
                seen_at, read_at, archived_at = state if state is not None else (0.0, 0.0, 0.0)
                if not _keeps(filter_, read_at, archived_at):
                    continue
                recipient = recipients.get(entry.notification_id)
                items.append(
                    InboxItem(
                        wire.notification_bytes(entry.notification_field),
                        entry.cursor,
                        State.QUEUED if recipient is None else recipient.state,
                        read_at,
                        seen_at,
                        archived_at,
                    )
                )
            scanned += consumed
            exhausted = len(entries) < want
            if len(items) == page_size:
                # More only if an entry is left over after the page.
                return items, (before if consumed < len(entries) or not exhausted else 0)
            if exhausted:
                return items, 0
            if scanned >= budget:
                return items, before

    async def change(
        self, tenant: str, user_id: str, notification_ids: Sequence[str], action: Action
    ) -> tuple[int, Counts]:
        """Changes the state of notifications of the user's inbox; returns how many changed
        and the counts after.

        Raises:
            NotFound: a notification is not in the user's inbox (another user's, expired,
                pushed out by the bound, or never sent).
        """
        ids = list(dict.fromkeys(notification_ids))
        located = await self._logs.locate(tenant, user_log(user_id), ids)
        now = self._clock.now()
        for notification_id in ids:
            found = located.get(notification_id)
            if found is None or found[1] <= now:
                raise NotFound(
                    f"no notification {notification_id[:64]!r} in your inbox (never sent to "
                    "you, expired, or pushed out by the inbox bound); nothing was changed"
                )
        return await self._change(tenant, user_id, ids, action, now)

    async def mark_read(self, tenant: str, user_id: str, notification_ids: list[str]) -> int:
        """READ for those of the notifications in the user's inbox; the rest are skipped (as
        MarkRead always did). Returns how many were unread."""
        ids = list(dict.fromkeys(notification_ids))
        located = await self._logs.locate(tenant, user_log(user_id), ids)
        now = self._clock.now()
        held = [i for i in ids if i in located and located[i][1] > now]
        if not held:
            return 0
        changed, _ = await self._change(tenant, user_id, held, Action.READ, now)
        return changed

    async def mark_all_read(self, tenant: str, user_id: str, up_to: int) -> tuple[int, Counts]:
        """READ for every notification of the inbox at or below cursor `up_to` (0: all);
        returns how many were unread and the counts after."""
        key = user_log(user_id)
        [head] = await self._logs.heads(tenant, [key])
        last = head.cursor if not up_to else min(up_to, head.cursor)
        entries = await self._logs.ids(tenant, key, 0, last)
        now = self._clock.now()
        changed: list[str] = []
        counters = None
        for start in range(0, len(entries), _CHANGE_BATCH):
            batch = [i for _, i in entries[start : start + _CHANGE_BATCH]]
            done, counters = await self._states.change(tenant, user_id, batch, Action.READ, now)
            changed.extend(done)
        if counters is None:
            counters = await self._states.counters(tenant, user_id)
        counters = await self._settle(tenant, user_id, changed, counters)
        counts = await self._counts(tenant, user_id, counters)
        if changed:
            await self._status.mark_read(tenant, user_id, changed, now)
            await self._publish(
                tenant,
                user_id,
                stream_pb2.InboxEvent(
                    action=stream_pb2.INBOX_ACTION_READ, all=True, up_to_cursor=last
                ),
                counts,
                now,
            )
        return len(changed), counts

    async def counts(self, tenant: str, user_id: str) -> Counts:
        return await self._counts(tenant, user_id, await self._states.counters(tenant, user_id))

    async def _counts(self, tenant: str, user_id: str, counters: InboxCounters) -> Counts:
        return counters.counts(await self._logs.size(tenant, user_log(user_id)))

    async def _change(
        self, tenant: str, user_id: str, ids: list[str], action: Action, now: float
    ) -> tuple[int, Counts]:
        changed, counters = await self._states.change(tenant, user_id, ids, action, now)
        counters = await self._settle(tenant, user_id, changed, counters)
        counts = await self._counts(tenant, user_id, counters)
        if changed:
            if action is Action.READ:
                # GetStatus keeps showing when each recipient first read it.
                await self._status.mark_read(tenant, user_id, changed, now)
            await self._publish(
                tenant,
                user_id,
                stream_pb2.InboxEvent(action=int(action), notification_ids=changed),  # type: ignore[arg-type]
                counts,
                now,
            )
        return len(changed), counts

    async def _settle(
        self, tenant: str, user_id: str, changed: list[str], counters: InboxCounters
    ) -> InboxCounters:
        """Forgets the rows just written for entries that left the log meanwhile (between the
        check and the write, the bound or the sweep removed them and forgot their rows before
        these existed): no row outlives its entry, whichever order the two ran in."""
        if not changed:
            return counters
        still = await self._logs.locate(tenant, user_log(user_id), changed)
        gone = [(user_id, i) for i in changed if i not in still]
        if not gone:
            return counters
        await self._states.forget(tenant, gone)
        return await self._states.counters(tenant, user_id)

    async def _publish(
        self, tenant: str, user_id: str, event: stream_pb2.InboxEvent, counts: Counts, now: float
    ) -> None:
        event.counts.CopyFrom(counts_message(counts))
        event.changed_at.CopyFrom(timestamp(now))
        response = stream_pb2.SubscribeResponse(inbox_event=event).SerializeToString()
        await self._broker.publish_user_events([UserEvent(tenant, user_id, response)])


def counts_message(counts: Counts) -> stream_pb2.InboxCounts:
    return stream_pb2.InboxCounts(unseen=counts.unseen, unread=counts.unread, total=counts.total)


def _keeps(filter_: Filter, read_at: float, archived_at: float) -> bool:
    if filter_ is Filter.ALL:
        return True
    if filter_ is Filter.ARCHIVED:
        return archived_at > 0
    if filter_ is Filter.UNREAD:
        return not archived_at and not read_at
    return not archived_at
