"""Acks: a user's acknowledgements, by cursor watermark per log or by notification id.

An ack is stored first (AckStore), then stops the entries' ack timers on every session of the
user on this node, then moves the recipients' status to ACKED. The entries an ack covers are
named from the sessions that wrote them when they can be, from the log's ids otherwise: an ack
never reads payloads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from herald.v1 import notification_pb2
from services import metrics
from services.clock import Clock
from services.domain import BROADCAST, LogKey, NotificationRecord, State, user_log
from services.stream.acks import AckStore
from services.stream.hub import Hub
from services.stream.log import Entry, LogHead, LogStore
from services.stream.session import Session
from services.stream.status import Mark, StatusStore
from services.stream.status_recorder import StatusEvents, StatusRecorder

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from services.tracing import Tracing


def log_key_of(record: NotificationRecord, user_id: str) -> LogKey:
    """The log through which `user_id` received the notification."""
    target = notification_pb2.Target.FromString(record.target)
    kind = target.WhichOneof("kind")
    if kind == "channel":
        return LogKey("channel", target.channel)
    if kind == "broadcast":
        return BROADCAST
    return user_log(user_id)


def _settle(sessions: Iterable[Session], key: tuple[LogKey, int], span: Span | None) -> None:
    """Stops the entry's ack timers on every session; with an ack span, links it to the
    deliveries of the entry that these sessions wrote."""
    for session in sessions:
        if span is not None:
            pending = session.unacked.get(key)
            if pending is not None and pending.delivery is not None:
                span.add_link(pending.delivery)
        session.settle(key)


class Acker:
    def __init__(
        self,
        *,
        logs: LogStore,
        acks: AckStore,
        status: StatusStore,
        hub: Hub,
        clock: Clock,
        tracing: Tracing | None = None,
        events: StatusEvents | None = None,
    ) -> None:
        self._tracing = tracing
        self._logs = logs
        self._acks = acks
        self._status = status
        self._recorder = StatusRecorder(status, events)
        self._hub = hub
        self._clock = clock

    async def ack(
        self,
        tenant: str,
        user_id: str,
        notification_ids: list[str],
        up_to: Mapping[str, int],
        epochs: Mapping[str, int],
    ) -> int:
        """Acks entries of the user's logs; returns how many changed to ACKED. An `up_to`
        cursor of another epoch than the log's (see log.py) acks nothing.

        Raises:
            InvalidArgument: `up_to` names a log that does not exist.
        """
        if self._tracing is None:
            return await self._ack(tenant, user_id, notification_ids, up_to, epochs, None)
        with self._tracing.ack_span({"herald.tenant": tenant}) as span:
            acked = await self._ack(tenant, user_id, notification_ids, up_to, epochs, span)
            span.set_attribute("herald.acked", acked)
            return acked

    async def _ack(
        self,
        tenant: str,
        user_id: str,
        notification_ids: list[str],
        up_to: Mapping[str, int],
        epochs: Mapping[str, int],
        span: Span | None,
    ) -> int:
        now = self._clock.now()
        marks: list[Mark] = []
        acked = State.ACKED
        sessions = self._hub.of_user(tenant, user_id)
        requested = {LogKey.from_client_name(name, user_id): c for name, c in up_to.items()}
        keys = list(requested)
        # Never beyond the log's head: a cursor from before a restart of the embedded store
        # would otherwise ack entries that do not exist yet.
        heads = await self._heads(tenant, keys, requested, sessions)
        for key, head in zip(keys, heads, strict=True):
            epoch = epochs.get(key.client_name, 0)
            if (epoch and epoch != head.epoch) or (not epoch and requested[key] > head.cursor):
                # A cursor of another generation of the log (named, or beyond its head):
                # acking up to it would ack entries the client never received.
                continue
            cursor = min(requested[key], head.cursor)
            before = await self._acks.ack_up_to(tenant, user_id, key, cursor)
            if cursor > before.up_to:
                above = before.above
                entries = [
                    (entry_cursor, notification_id)
                    for entry_cursor, notification_id in await self._named(
                        tenant, key, before.up_to, cursor, sessions, now
                    )
                    if entry_cursor not in above
                ]
                for entry_cursor, _ in entries:
                    _settle(sessions, (key, entry_cursor), span)  # stop its ack timers
                if entries:
                    marks.append(Mark(user_id, key, acked, entries, now))
            for session in sessions:
                state = session.logs.get(key)
                if state is not None:
                    state.acks.raise_to(cursor)
        for notification_id in dict.fromkeys(notification_ids):
            located = await self._locate(tenant, user_id, notification_id)
            if located is None:
                continue
            key, found = located
            if await self._acks.ack(tenant, user_id, key, [found.cursor]):
                marks.append(Mark(user_id, key, acked, [(found.cursor, notification_id)], now))
            _settle(sessions, (key, found.cursor), span)
            for session in sessions:
                state = session.logs.get(key)
                if state is not None:
                    state.acks.add(found.cursor)
        await self._recorder.record(tenant, marks)
        count = sum(len(m.entries) for m in marks)
        metrics.ACKED.inc(count)
        return count

    async def _heads(
        self,
        tenant: str,
        keys: list[LogKey],
        requested: Mapping[LogKey, int],
        sessions: set[Session] | frozenset[Session],
    ) -> list[LogHead]:
        """The head of each log, as far as the ack needs it: a session here that enqueued the
        log up to the requested cursor knows the log reaches it, and its epoch (the usual ack,
        of what was just delivered, costs no read); the store is asked for the others."""
        known: dict[LogKey, LogHead] = {}
        for key in keys:
            for session in sessions:
                state = session.logs.get(key)
                if state is not None and state.enqueued >= requested[key]:
                    known[key] = LogHead(state.epoch, state.enqueued)
                    break
        unknown = [key for key in keys if key not in known]
        if unknown:
            known.update(zip(unknown, await self._logs.heads(tenant, unknown), strict=True))
        return [known[key] for key in keys]

    async def _named(
        self,
        tenant: str,
        key: LogKey,
        after: int,
        up_to: int,
        sessions: set[Session] | frozenset[Session],
        now: float,
    ) -> list[tuple[int, str]]:
        """The cursor and notification id of the log's entries in (after, up_to]. The sessions
        of this node that wrote them know them (the usual ack: of what was just delivered);
        otherwise the log names them, without reading their payloads. An entry that expired
        may be gone from the log already: then the log decides."""
        named: list[tuple[int, str]] = []
        for entry_cursor in range(after + 1, up_to + 1):
            for session in sessions:
                pending = session.unacked.get((key, entry_cursor))
                if pending is not None and pending.entry.expires_at > now:
                    named.append((entry_cursor, pending.entry.notification_id))
                    break
            else:
                return await self._logs.ids(tenant, key, after, up_to)
        return named

    async def _locate(
        self, tenant: str, user_id: str, notification_id: str
    ) -> tuple[LogKey, Entry] | None:
        """The log entry of a notification the user may ack, by id."""
        record = await self._status.get(tenant, notification_id)
        if record is not None:
            key = log_key_of(record, user_id)
            if key.is_user and user_id not in record.recipients:
                return None
            return await self._logs.find(tenant, [key], notification_id)
        # No status record (a bounded store dropped it): look in the logs the user reads.
        keys = dict.fromkeys([user_log(user_id), BROADCAST])
        for session in self._hub.of_user(tenant, user_id):
            keys.update(dict.fromkeys(session.logs))
        return await self._logs.find(tenant, list(keys), notification_id)
