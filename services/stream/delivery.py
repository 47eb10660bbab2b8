"""The delivery core of a stream node: appends to logs, feeds sessions, tracks acks.

It owns no sockets: the servicer hands it a `write` coroutine per session. See session.py for the
per-session invariants and docs/delivery.md for the guarantees they add up to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable

from herald.v1 import notification_pb2, stream_pb2
from services import metrics, wire
from services.clock import Clock
from services.config import DeliverySettings
from services.domain import (
    Accepted,
    NewRecord,
    NotificationRecord,
    SessionInfo,
    State,
    TargetKind,
    Transition,
)
from services.errors import Aborted, InvalidArgument, ResourceExhausted, Unavailable
from services.model import timestamp
from services.ports import RegistryPort
from services.stream.acks import AckStore
from services.stream.log import (
    BROADCAST,
    CHANNEL_PREFIX,
    Entry,
    LogStore,
    NewEntry,
    channel_log,
    user_log,
)
from services.stream.session import LogCursorState, Pending, Session, new_log_state
from services.stream.status import StatusStore

log = logging.getLogger(__name__)

Write = Callable[[bytes], Awaitable[None]]

_CLOSING = stream_pb2.Closing
_MAX_CHANNEL_LEN = 128
# Ack timeouts vary by +-20 %, so that redeliveries of entries written together spread out.
_JITTER = 0.2
# A full log drops its oldest entry on every append: say so in the log at most this often per
# tenant and kind of log, with the count since the last time (the metric counts every drop).
_DROP_LOG_INTERVAL_S = 60.0


def _log_key_of(record: NotificationRecord, user_id: str) -> str:
    target = notification_pb2.Target.FromString(record.target)
    kind = target.WhichOneof("kind")
    if kind == "channel":
        return channel_log(target.channel)
    if kind == "broadcast":
        return BROADCAST
    return user_log(user_id)


class DeliveryCore:
    """Logs, sessions and acks of one stream node."""

    def __init__(
        self,
        *,
        node_id: str,
        node_address: str,
        logs: LogStore,
        acks: AckStore,
        status: StatusStore,
        registry: RegistryPort,
        settings: DeliverySettings,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.node_address = node_address
        self._logs = logs
        self._acks = acks
        self._status = status
        self._registry = registry
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        # (tenant, log_key) -> sessions reading that log on this node.
        self._readers: dict[tuple[str, str], set[Session]] = {}
        self._sessions: dict[str, Session] = {}
        # (tenant, user) -> that user's sessions on this node.
        self._by_user: dict[tuple[str, str], set[Session]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._drained = asyncio.Event()
        # (tenant, log kind) -> (when a drop was last logged, drops since then).
        self._drops: dict[tuple[str, str], tuple[float, int]] = {}

    # -- ingest side -----------------------------------------------------------------------

    async def dispatch(self, notifications: list[Accepted]) -> list[int]:
        """Appends each notification to its logs and offers the new entries to open sessions."""
        now = self._clock.now()
        by_log: dict[tuple[str, str], list[NewEntry]] = {}
        counts: list[int] = []
        records: list[NewRecord] = []
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
            )
            if n.kind is TargetKind.CHANNEL:
                keys = [channel_log(n.channel)]
            elif n.kind is TargetKind.BROADCAST:
                keys = [BROADCAST]
            else:
                keys = [user_log(u) for u in n.user_ids]
            for key in keys:
                by_log.setdefault((n.tenant, key), []).append(entry)
            counts.append(len(n.user_ids))
        await self._status.create(records, now)
        for (tenant, key), items in by_log.items():
            limit = (
                self._settings.inbox_limit
                if key.startswith("user:")
                else self._settings.channel_log_limit
            )
            result = await self._logs.append(tenant, key, items, limit)
            if result.dropped:
                await self._record_dropped(tenant, key, result.dropped, now)
            readers = self._readers.get((tenant, key))
            if readers:
                for session in readers:
                    session.offer(key, result.entries, now)
        return counts

    async def _record_dropped(
        self, tenant: str, key: str, dropped: list[Entry], now: float
    ) -> None:
        kind = "user" if key.startswith("user:") else "channel"
        metrics.DROPPED.labels(kind).inc(len(dropped))
        if kind == "user":
            user = key.removeprefix("user:")
            await self._status.apply(
                tenant,
                [
                    Transition(e.notification_id, user, State.FAILED, "dropped: inbox full")
                    for e in dropped
                ],
                now,
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

    # -- sessions --------------------------------------------------------------------------

    async def open(
        self,
        *,
        tenant: str,
        user_id: str,
        device: str,
        channels: list[str],
        cursors: dict[str, int],
        expires_at: float = math.inf,
    ) -> Session:
        """Registers a new session and prepares it to replay from the given cursors.

        Raises:
            InvalidArgument: a cursor names a log the session does not read, or a bad channel.
            ResourceExhausted: too many channels, or too many sessions for the user.
        """
        if self._closing:
            raise Unavailable("this node is shutting down; reconnect to another node")
        unique_channels = tuple(dict.fromkeys(channels))
        if len(unique_channels) > self._settings.max_channels_per_session:
            raise ResourceExhausted(
                f"a session may join at most {self._settings.max_channels_per_session} channels"
            )
        for channel in unique_channels:
            self._check_channel(channel)
        log_keys = [user_log(user_id), BROADCAST, *(channel_log(c) for c in unique_channels)]
        names = {key: ("user" if key.startswith("user:") else key) for key in log_keys}
        unknown = set(cursors) - set(names.values())
        if unknown:
            raise InvalidArgument(
                f"cursor for unknown log {sorted(unknown)[0]!r}: logs are 'user', 'broadcast' "
                "and 'channel:<name>' of a channel joined in this request"
            )
        states: dict[str, LogCursorState] = {}
        # Unacked entries at or below a resume cursor: the client says it holds them.
        held: list[tuple[str, Entry]] = []
        for key in log_keys:
            acks = await self._acks.get(tenant, user_id, key)
            after = acks.up_to
            resume = cursors.get(names[key])
            if resume is not None and resume > acks.up_to:
                head = await self._logs.last_cursor(tenant, key)
                if resume > head:
                    # A cursor from the future (e.g. the embedded store restarted): trusting it
                    # would skip new entries, so the log is replayed from the ack watermark.
                    log.info(
                        "resume cursor beyond the log head; replaying", extra={"log": names[key]}
                    )
                else:
                    after = resume
                    entries = await self._logs.read(tenant, key, acks.up_to, resume - acks.up_to)
                    held.extend(
                        (key, e)
                        for e in entries
                        if e.cursor <= resume and not acks.is_acked(e.cursor)
                    )
            states[key] = new_log_state(key, acks, after)
        now = self._clock.now()
        session = Session(
            tenant=tenant,
            user_id=user_id,
            device=device,
            channels=unique_channels,
            logs=states,
            buffer_limit=self._settings.session_buffer,
            connected_at=now,
            expires_at=expires_at,
        )
        await self._registry.register(
            SessionInfo(
                session.session_id,
                tenant,
                user_id,
                self.node_id,
                self.node_address,
                device,
                unique_channels,
                now,
                now,
            )
        )
        self._sessions[session.session_id] = session
        self._drained.clear()
        for key in states:
            self._readers.setdefault((tenant, key), set()).add(session)
        # What the client holds is not sent again at once, but stays under the ack timer: if no
        # ack comes within the ack timeout, it is redelivered on this stream.
        self._by_user.setdefault((tenant, user_id), set()).add(session)
        self._track(
            session,
            [Pending(entry, states[key]) for key, entry in held if entry.expires_at > now],
            now,
        )
        metrics.SESSIONS.inc()
        return session

    def started_event(self, session: Session) -> bytes:
        return stream_pb2.SubscribeResponse(
            session_started=stream_pb2.SessionStarted(
                session_id=session.session_id,
                node_id=self.node_id,
                user_id=session.user_id,
                tenant_id=session.tenant,
                heartbeat_interval_seconds=int(self._settings.heartbeat_interval_s),
                channels=session.channels,
            )
        ).SerializeToString()

    async def run(self, session: Session, write: Write) -> None:
        """Writes the session's stream until it is closed or the client goes away.

        Raises:
            Aborted: the client stopped reading (a write stalled past the write timeout).
        """
        try:
            await self._run(session, write)
        except asyncio.CancelledError:
            if not session.stalled:
                raise
            # The stream is blocked, so no Closing event can get through: end the call with a
            # status that says why; the client resumes from its cursor.
            raise Aborted(
                f"slow consumer: the stream was not read for {self._settings.write_timeout_s:g} s; "
                "reconnect with your cursors"
            ) from None

    async def _run(self, session: Session, write: Write) -> None:
        session.task = asyncio.current_task()
        session.last_write_at = self._clock.now()
        await write(self.started_event(session))
        batch_max = self._settings.batch_max
        while True:
            await session.wakeup.wait()
            session.wakeup.clear()
            while True:
                if session.closing is not None:
                    reason, message = session.closing
                    await write(self._closing_event(reason, message))
                    return
                if session.lagging:
                    await self._catch_up(session)
                if not session.waiting:
                    break
                now = self._clock.now()
                taken = self._fresh(session, session.take(batch_max), now)
                if not taken:
                    continue
                data = session.encode(taken)
                # Ack timers and status are recorded before the write: the client may read the
                # batch (and ack it) before this coroutine resumes after the write.
                await self._delivered(session, taken, now)
                session.write_started_at = time.monotonic()
                await write(data)
                session.write_started_at = 0.0
                session.last_write_at = self._clock.now()
            if session.heartbeat_due:
                session.heartbeat_due = False
                session.write_started_at = time.monotonic()
                await write(self._heartbeat_event())
                session.write_started_at = 0.0
                session.last_write_at = self._clock.now()

    async def close(self, session: Session) -> None:
        """Forgets a session whose stream ended (the client left, or it was closed)."""
        if self._sessions.pop(session.session_id, None) is None:
            return
        for key in session.logs:
            readers = self._readers.get((session.tenant, key))
            if readers is not None:
                readers.discard(session)
                if not readers:
                    del self._readers[(session.tenant, key)]
        siblings = self._by_user.get((session.tenant, session.user_id))
        if siblings is not None:
            siblings.discard(session)
            if not siblings:
                del self._by_user[(session.tenant, session.user_id)]
        session.forget_acks()
        metrics.SESSIONS.dec()
        if not self._sessions:
            self._drained.set()
        try:
            await self._registry.unregister(session.tenant, session.session_id)
        except Exception:
            log.warning(
                "could not unregister session",
                extra={"session_id": session.session_id},
                exc_info=True,
            )
        finally:
            session.closed.set()

    async def close_sessions(
        self, tenant: str, session_ids: list[str], user_id: str, reason: str
    ) -> int:
        closed = 0
        for session in list(self._sessions.values()):
            if session.tenant != tenant:
                continue
            if session.session_id in session_ids or (user_id and session.user_id == user_id):
                session.close(_CLOSING.REASON_DISCONNECTED, reason or "closed by an operator")
                closed += 1
        return closed

    async def change_channels(
        self, tenant: str, session_id: str, join: list[str], leave: list[str]
    ) -> list[str] | None:
        """Joins and leaves channels of an open session; None if this node has no such session.

        A joined channel replays what the user has not acknowledged, then continues live.

        Raises:
            InvalidArgument: a bad channel name.
            ResourceExhausted: the session would read more than the channel limit.
        """
        session = self._sessions.get(session_id)
        if session is None or session.tenant != tenant:
            return None
        channels = list(session.channels)
        for channel in leave:
            if channel not in channels:
                continue
            channels.remove(channel)
            key = channel_log(channel)
            session.logs.pop(key, None)
            readers = self._readers.get((tenant, key))
            if readers is not None:
                readers.discard(session)
            session.forget_acks(key)
        for channel in join:
            if channel in channels:
                continue
            self._check_channel(channel)
            if len(channels) >= self._settings.max_channels_per_session:
                raise ResourceExhausted(
                    f"a session may join at most {self._settings.max_channels_per_session} channels"
                )
            channels.append(channel)
            key = channel_log(channel)
            acks = await self._acks.get(tenant, session.user_id, key)
            session.logs[key] = new_log_state(key, acks, acks.up_to)
            session.lagging = True
            self._readers.setdefault((tenant, key), set()).add(session)
        session.channels = tuple(channels)
        session.wakeup.set()
        return channels

    @staticmethod
    def _check_channel(channel: str) -> None:
        if not channel or len(channel) > _MAX_CHANNEL_LEN:
            raise InvalidArgument(f"channel names are 1 to {_MAX_CHANNEL_LEN} characters long")

    # -- inbox -----------------------------------------------------------------------------

    async def list_inbox(
        self, tenant: str, user_id: str, page_size: int, before: int
    ) -> tuple[list[tuple[bytes, int, State, float]], int]:
        """A page of the user's own log, newest first: (notification, cursor, state, read_at)
        per item, and the cursor to pass as `before` for the next page (0 on the last page)."""
        entries = await self._logs.read_reverse(tenant, user_log(user_id), before, page_size + 1)
        more = len(entries) > page_size
        entries = entries[:page_size]
        now = self._clock.now()
        items = []
        for entry in entries:
            if entry.expires_at <= now:
                continue
            record = await self._status.get(tenant, entry.notification_id)
            recipient = None if record is None else record.recipients.get(user_id)
            state = State.QUEUED if recipient is None else recipient.state
            read_at = 0.0 if recipient is None else recipient.read_at
            items.append(
                (wire.notification_bytes(entry.notification_field), entry.cursor, state, read_at)
            )
        return items, (entries[-1].cursor if more and entries else 0)

    async def mark_read(self, tenant: str, user_id: str, notification_ids: list[str]) -> int:
        return await self._status.mark_read(tenant, user_id, notification_ids, self._clock.now())

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    # -- acks ------------------------------------------------------------------------------

    async def ack(
        self, tenant: str, user_id: str, notification_ids: list[str], up_to: dict[str, int]
    ) -> int:
        """Acks entries of the user's logs; returns how many changed to ACKED."""
        now = self._clock.now()
        transitions: list[Transition] = []
        acked = State.ACKED
        sessions = self._by_user.get((tenant, user_id), ())
        for name, requested in up_to.items():
            key = self._key_of_name(name, user_id)
            # Never beyond the log's head: a cursor from before a restart of the embedded store
            # would otherwise ack entries that do not exist yet.
            cursor = min(requested, await self._logs.last_cursor(tenant, key))
            before = await self._acks.ack_up_to(tenant, user_id, key, cursor)
            if cursor > before.up_to:
                entries = await self._logs.read(tenant, key, before.up_to, cursor - before.up_to)
                above = before.above
                for entry in entries:
                    if entry.cursor <= cursor and entry.cursor not in above:
                        transitions.append(Transition(entry.notification_id, user_id, acked))
                        for session in sessions:  # stop the entry's ack timers
                            session.settle((key, entry.cursor))
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
                transitions.append(Transition(notification_id, user_id, State.ACKED))
            self._settle(tenant, user_id, key, found.cursor)
            for session in self._by_user.get((tenant, user_id), ()):
                state = session.logs.get(key)
                if state is not None:
                    state.acks.add(found.cursor)
        await self._status.apply(tenant, transitions, now)
        metrics.ACKED.inc(len(transitions))
        return len(transitions)

    async def _locate(
        self, tenant: str, user_id: str, notification_id: str
    ) -> tuple[str, Entry] | None:
        """The log entry of a notification the user may ack, by id."""
        record = await self._status.get(tenant, notification_id)
        if record is not None:
            key = _log_key_of(record, user_id)
            if key.startswith("user:") and user_id not in record.recipients:
                return None
            found = await self._logs.find(tenant, key, notification_id)
            return None if found is None else (key, found)
        # No status record (a bounded store dropped it): look in the logs the user reads.
        keys = dict.fromkeys([user_log(user_id), BROADCAST])
        for session in self._by_user.get((tenant, user_id), ()):
            keys.update(dict.fromkeys(session.logs))
        for key in keys:
            found = await self._logs.find(tenant, key, notification_id)
            if found is not None:
                return key, found
        return None

    def _key_of_name(self, name: str, user_id: str) -> str:
        if name == "user":
            return user_log(user_id)
        if name == BROADCAST or (
            name.startswith(CHANNEL_PREFIX) and len(name) > len(CHANNEL_PREFIX)
        ):
            return name
        raise InvalidArgument(
            f"unknown log {name!r}: logs are 'user', 'broadcast' and 'channel:<name>'"
        )

    def _settle(self, tenant: str, user_id: str, key: str, cursor: int) -> None:
        """Stops the ack timers of an acked entry on every session of the user."""
        for session in self._by_user.get((tenant, user_id), ()):
            session.settle((key, cursor))

    # -- internals -------------------------------------------------------------------------

    async def _catch_up(self, session: Session) -> None:
        """Reads logs the session is behind on, as far as its buffer has room."""
        now = self._clock.now()
        for key, state in list(session.logs.items()):
            while state.behind and session.room() > 0 and key in session.logs:
                state.behind = False
                limit = min(session.room(), self._settings.batch_max * 8)
                entries = await self._logs.read(session.tenant, key, state.enqueued, limit)
                if entries:
                    session.enqueue(state, entries, now)
                if len(entries) == limit:
                    state.behind = True
        session.lagging = any(state.behind for state in session.logs.values())

    def _fresh(self, session: Session, taken: list[Pending], now: float) -> list[Pending]:
        """Drops what expired while waiting (its status becomes EXPIRED)."""
        logs = session.logs
        fresh: list[Pending] = []
        expired: list[Pending] = []
        for p in taken:
            if logs.get(p.log.log_key) is not p.log:
                # A channel the session has left since the entry was queued (and perhaps joined
                # again: the new membership replays from the log, so this copy is dropped).
                continue
            (fresh if p.entry.expires_at > now else expired).append(p)
        if expired:
            for p in expired:
                p.log.written.add(p.entry.cursor)
            self._spawn(
                self._status.apply(
                    session.tenant,
                    [
                        Transition(p.entry.notification_id, session.user_id, State.EXPIRED, "ttl")
                        for p in expired
                    ],
                    now,
                )
            )
            metrics.EXPIRED.inc(len(expired))
        return fresh

    async def _delivered(self, session: Session, taken: list[Pending], now: float) -> None:
        metrics.STREAM_MESSAGES.inc()
        self._track(session, taken, now)
        await self._status.apply(
            session.tenant,
            [Transition(p.entry.notification_id, session.user_id, State.DELIVERED) for p in taken],
            now,
        )
        (metrics.DELIVERED_FIRST if taken[0].attempt == 1 else metrics.DELIVERED_RETRY).inc(
            len(taken)
        )

    def _track(self, session: Session, pendings: list[Pending], now: float) -> None:
        """Starts the ack timers of entries written (or held) by the session, with one jitter
        per attempt number in the batch."""
        deadlines: dict[int, float] = {}
        for p in pendings:
            deadline = deadlines.get(p.attempt)
            if deadline is None:
                deadline = deadlines[p.attempt] = now + self._ack_delay(p.attempt)
            session.track(p, now, deadline)

    def _base_delay(self, attempt: int) -> float:
        base = self._settings.ack_timeout_s * (self._settings.backoff_factor ** (attempt - 1))
        return min(base, self._settings.backoff_max_s)

    def _ack_delay(self, attempt: int) -> float:
        """Ack timeout before redelivery: exponential in the attempt, with +-20% jitter."""
        return self._base_delay(attempt) * self._rng.uniform(1 - _JITTER, 1 + _JITTER)

    def _shortest_delay(self, attempt: int) -> float:
        return self._base_delay(attempt) * (1 - _JITTER)

    def _heartbeat_event(self) -> bytes:
        return stream_pb2.SubscribeResponse(
            heartbeat=stream_pb2.Heartbeat(server_time=timestamp(self._clock.now()))
        ).SerializeToString()

    @staticmethod
    def _closing_event(reason: int, message: str) -> bytes:
        retry = (
            0 if reason in (_CLOSING.REASON_DISCONNECTED, _CLOSING.REASON_TOKEN_EXPIRED) else 1000
        )
        return stream_pb2.SubscribeResponse(
            closing=stream_pb2.Closing(reason=reason, message=message, retry_after_ms=retry)  # type: ignore[arg-type]
        ).SerializeToString()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    # -- timers ----------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the node's timers: heartbeats, redelivery, slow consumers, expiry, leases."""
        self._spawn(self._ticker())

    async def _ticker(self) -> None:
        interval = self._settings.heartbeat_interval_s
        tick = min(1.0, interval / 2)
        last_sweep = last_lease = last_purge = self._clock.now()
        while True:
            await self._clock.sleep(tick)
            now = self._clock.now()
            try:
                self._heartbeats(now, interval)
                await self._redeliver(now)
                if now - last_sweep >= 10 * tick:
                    last_sweep = now
                    await self.sweep_expired()
                if now - last_lease >= 10.0:
                    last_lease = now
                    # A network call (in the split topology): never let it hold up the timers.
                    self._spawn(self._refresh_leases())
                if now - last_purge >= 3600.0:
                    last_purge = now
                    await self._status.purge(now - self._settings.status_retention_s)
            except Exception:
                log.exception("delivery timer failed; continuing")

    def _heartbeats(self, now: float, interval: float) -> None:
        # A stalled write is real I/O: measured on the monotonic clock, not the injected one.
        stalled_since = time.monotonic() - self._settings.write_timeout_s
        # Tokens expire in wall-clock time, as they were verified.
        wall = time.time()
        for session in self._sessions.values():
            started = session.write_started_at
            if started and started < stalled_since:
                self._slow_consumer(session)
            elif session.expires_at <= wall:
                session.close(
                    _CLOSING.REASON_TOKEN_EXPIRED,
                    "the token has expired; reconnect with a fresh token and your cursors",
                )
            elif now - session.last_write_at >= interval and not session.heartbeat_due:
                session.heartbeat_due = True
                session.wakeup.set()

    def _slow_consumer(self, session: Session) -> None:
        """A write that has not completed: the client is not reading. Cancel the stream; the
        client resumes from its cursor and nothing is lost (the entries stay in the log)."""
        metrics.SLOW_CONSUMERS.inc()
        log.info("closing slow consumer", extra={"session_id": session.session_id})
        session.write_started_at = 0.0
        session.stalled = True
        if session.task is not None:
            session.task.cancel()

    async def _redeliver(self, now: float) -> None:
        failed: dict[str, list[Transition]] = {}
        max_attempts = self._settings.max_attempts
        for session in self._sessions.values():
            if not session.unacked:
                continue
            for pending in session.due(now, self._shortest_delay):
                entry = pending.entry
                if entry.expires_at <= now or pending.log.acks.is_acked(entry.cursor):
                    continue
                if pending.attempt >= max_attempts:
                    failed.setdefault(session.tenant, []).append(
                        Transition(
                            entry.notification_id,
                            session.user_id,
                            State.FAILED,
                            f"no ack after {pending.attempt} attempts; kept for the next connect",
                        )
                    )
                    continue
                session.requeue(pending)
        for tenant, transitions in failed.items():
            metrics.FAILED.inc(len(transitions))
            await self._status.apply(tenant, transitions, now)

    async def sweep_expired(self) -> int:
        """Drops expired entries from every log and marks them EXPIRED for their recipients."""
        now = self._clock.now()
        count = 0
        for tenant, key in await self._logs.expired_logs(now):
            expired = await self._logs.drop_expired(tenant, key, now)
            for entry in expired:
                record = await self._status.get(tenant, entry.notification_id)
                if record is None:
                    continue
                users = (
                    [key.removeprefix("user:")]
                    if key.startswith("user:")
                    else list(record.recipients)
                )
                await self._status.apply(
                    tenant,
                    [Transition(entry.notification_id, u, State.EXPIRED, "ttl") for u in users],
                    now,
                )
            count += len(expired)
        if count:
            metrics.EXPIRED.inc(count)
        return count

    async def _refresh_leases(self) -> None:
        try:
            await self._refresh_leases_once()
        except Exception:
            log.warning("could not refresh session leases; will retry", exc_info=True)

    async def _refresh_leases_once(self) -> None:
        by_tenant: dict[str, list[str]] = {}
        for session in self._sessions.values():
            by_tenant.setdefault(session.tenant, []).append(session.session_id)
        for tenant, ids in by_tenant.items():
            for unknown in await self._registry.heartbeat(tenant, ids):
                gone = self._sessions.get(unknown)
                if gone is not None:
                    gone.close(
                        _CLOSING.REASON_DISCONNECTED, "the registry no longer knows this session"
                    )

    async def shutdown(self, grace_s: float) -> None:
        """Tells every session to reconnect elsewhere, waits up to `grace_s` for them to end."""
        self._closing = True
        for session in list(self._sessions.values()):
            session.close(_CLOSING.REASON_SHUTDOWN, "the server is shutting down; reconnect")
        if self._sessions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._drained.wait()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
