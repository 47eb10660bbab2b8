"""The delivery node: wires the hub, the writer, acks, the inbox and the timers over the stores.

It owns no sockets: a transport adapter (services/stream/servicer.py) opens a session, hands
`run` a `write` coroutine and closes the session when the stream ends. session.py states the
per-session invariants, broker.py how fan-out catches up, and docs/delivery.md the guarantees
they add up to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Coroutine, Mapping

from herald.v1 import stream_pb2
from services import metrics
from services.clock import Clock
from services.config import DeliverySettings
from services.domain import BROADCAST, LogKey, SessionInfo, channel_log, user_log
from services.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.ports import RegistryPort
from services.stream.ack_streams import AckStreams
from services.stream.acking import Acker
from services.stream.acks import AckStore
from services.stream.broker import Broker
from services.stream.hub import Hub
from services.stream.inbox import Filter, Inbox, InboxItem
from services.stream.inbox_state import Action, Counts, InboxStateStore
from services.stream.inbox_state_memory import MemoryInboxStateStore
from services.stream.log import Entry, LogStore
from services.stream.session import BufferBudget, Pending, Session, new_log_state
from services.stream.status import StatusStore
from services.stream.status_recorder import StatusEvents
from services.stream.timers import Timers
from services.stream.writer import AckDelays, SessionWriter, Write
from services.tracing import Tracing

log = logging.getLogger(__name__)

_CLOSING = stream_pb2.Closing
_MAX_CHANNEL_LEN = 128
# At shutdown, how long ack streams stay open once the sessions ended: a client acks what it
# handled as soon as its stream ends (services/client.py), and that ack should land here.
ACK_LINGER_S = 0.25
# How long `shutdown` waits for its background tasks to end once cancelled.
TASKS_STOP_S = 5.0


class DeliveryCore:
    """Sessions, acks and timers of one stream node."""

    def __init__(
        self,
        *,
        node_id: str,
        node_address: str,
        logs: LogStore,
        acks: AckStore,
        status: StatusStore,
        broker: Broker,
        registry: RegistryPort,
        settings: DeliverySettings,
        clock: Clock,
        rng: random.Random | None = None,
        tracing: Tracing | None = None,
        tenant_labels: metrics.TenantLabels | None = None,
        inbox_states: InboxStateStore | None = None,
        events: StatusEvents | None = None,
    ) -> None:
        self.node_id = node_id
        # The `tenant` label of this node's per-tenant metrics (bounded: an allow-list).
        self.tenant_label = tenant_labels or metrics.TenantLabels()
        self.node_address = node_address
        self._logs = logs
        self._acks = acks
        self._registry = registry
        self._settings = settings
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.hub = Hub(broker, clock)
        # The bytes every session's buffer holds, against HERALD_DELIVERY_NODE_BUFFER_BYTES.
        self.budget = BufferBudget(settings.node_buffer_bytes)
        self.delays = AckDelays(settings, rng or random.Random())  # noqa: S311 - jitter
        self.writer = SessionWriter(
            node_id=node_id,
            logs=logs,
            status=status,
            delays=self.delays,
            settings=settings,
            clock=clock,
            spawn=self._spawn,
            tracing=tracing,
            events=events,
        )
        self.acker = Acker(
            logs=logs,
            acks=acks,
            status=status,
            hub=self.hub,
            clock=clock,
            tracing=tracing,
            events=events,
        )
        inbox_states = inbox_states if inbox_states is not None else MemoryInboxStateStore()
        self.inbox = Inbox(
            logs=logs, status=status, states=inbox_states, broker=broker, clock=clock
        )
        self.ack_streams = AckStreams()
        self.timers = Timers(
            hub=self.hub,
            logs=logs,
            acks=acks,
            status=status,
            registry=registry,
            delays=self.delays,
            settings=settings,
            clock=clock,
            spawn=self._spawn,
            inbox_states=inbox_states,
            events=events,
        )
        self.hub.start()

    def queue_depths(self) -> dict[str, int]:
        """Entries waiting in the sessions' buffers and waiting for acks (read by a scrape, in
        the scrape's thread: a copy of the sessions, then plain int reads)."""
        sessions = list(self.hub.sessions.values())
        return {
            "session_buffer": sum(s.waiting for s in sessions),
            "unacked": sum(len(s.unacked) for s in sessions),
        }

    # -- sessions --------------------------------------------------------------------------

    async def open(
        self,
        *,
        tenant: str,
        user_id: str,
        device: str,
        channels: list[str],
        cursors: Mapping[str, int],
        epochs: Mapping[str, int] | None = None,
        expires_at: float = math.inf,
    ) -> Session:
        """Registers a new session and prepares it to replay from the given cursors (each of
        the epoch in `epochs`, when the client named one).

        Raises:
            InvalidArgument: a cursor names a log the session does not read, or a bad channel.
            ResourceExhausted: too many channels, or too many sessions for the user.
            Unavailable: the node is shutting down.
        """
        if self._closing:
            raise Unavailable("this node is shutting down; reconnect to another node")
        epochs = epochs or {}
        unique_channels = tuple(dict.fromkeys(channels))
        if len(unique_channels) > self._settings.max_channels_per_session:
            raise ResourceExhausted(
                f"a session may join at most {self._settings.max_channels_per_session} channels"
            )
        for channel in unique_channels:
            _check_channel(channel)
        log_keys = [user_log(user_id), BROADCAST, *(channel_log(c) for c in unique_channels)]
        names = {key.client_name for key in log_keys}
        unknown = set(cursors) - names
        if unknown:
            raise InvalidArgument(
                f"cursor for unknown log {sorted(unknown)[0][:64]!r}: logs are 'user', "
                "'broadcast' and 'channel:<name>' of a channel joined in this request"
            )
        ack_states = await self._acks.get(tenant, user_id, log_keys)
        heads = await self._logs.heads(tenant, log_keys)
        states = {}
        # Unacked entries at or below a resume cursor: the client says it holds them.
        held: list[tuple[LogKey, Entry]] = []
        for key, acks, head in zip(log_keys, ack_states, heads, strict=True):
            after = acks.up_to
            recovered = True
            resume = cursors.get(key.client_name, 0)
            if resume > acks.up_to:
                epoch = epochs.get(key.client_name, 0)
                if (epoch and epoch != head.epoch) or resume > head.cursor:
                    # A cursor from another generation of the log (e.g. the embedded store
                    # restarted): trusting it would skip entries, so the log is replayed from
                    # the ack watermark, and the client is told (LogPosition.recovered).
                    recovered = False
                    log.info(
                        "resume cursor from another epoch or beyond the head; replaying",
                        extra={"log": key.client_name},
                    )
                else:
                    after = resume
                    entries = await self._logs.read(tenant, key, acks.up_to, resume - acks.up_to)
                    held.extend(
                        (key, e)
                        for e in entries
                        if e.cursor <= resume and not acks.is_acked(e.cursor)
                    )
            states[key] = new_log_state(key, acks, after, head.epoch, recovered, head.cursor)
        now = self._clock.now()
        session = Session(
            tenant=tenant,
            user_id=user_id,
            device=device,
            channels=unique_channels,
            logs=states,
            buffer_limit=self._settings.session_buffer,
            buffer_bytes=self._settings.session_buffer_bytes,
            budget=self.budget,
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
        metrics.SESSIONS.inc()
        metrics.STREAMS.labels("subscribe", self.tenant_label(tenant)).inc()
        try:
            await self.hub.add(session)
        except BaseException:
            # Cancelled (the client left) or failed: no session may stay registered, leased
            # and counted against the user's limit with no stream behind it.
            await asyncio.shield(self.close(session))
            raise
        # What the client holds is not sent again at once, but stays under the ack timer: if no
        # ack comes within the ack timeout, it is redelivered on this stream.
        self.delays.track(
            session,
            [Pending(entry, states[key]) for key, entry in held if entry.expires_at > now],
            now,
        )
        return session

    def run(self, session: Session, write: Write) -> Coroutine[None, None, None]:
        """Writes the session's stream until it is closed or the client goes away (the writer's
        coroutine itself: no frame of this method stays alive while the session is idle).

        Raises:
            Aborted: the client stopped reading (a write stalled past the write timeout).
        """
        return self.writer.run(session, write)

    async def close(self, session: Session) -> None:
        """Forgets a session whose stream ended (the client left, or it was closed)."""
        if session.closed.is_set() or session.unregistering:
            return
        session.unregistering = True
        await self.hub.remove(session)
        session.forget_acks()
        session.release()
        metrics.SESSIONS.dec()
        metrics.STREAMS.labels("subscribe", self.tenant_label(session.tenant)).dec()
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
        for session in list(self.hub.sessions.values()):
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
        session = self.hub.sessions.get(session_id)
        if session is None or session.tenant != tenant:
            return None
        channels = list(session.channels)
        for channel in leave:
            if channel not in channels:
                continue
            channels.remove(channel)
            key = channel_log(channel)
            session.logs.pop(key, None)
            await self.hub.remove_reader(session, key)
            session.forget_acks(key)
        for channel in join:
            if channel in channels:
                continue
            _check_channel(channel)
            if len(channels) >= self._settings.max_channels_per_session:
                raise ResourceExhausted(
                    f"a session may join at most {self._settings.max_channels_per_session} channels"
                )
            channels.append(channel)
            key = channel_log(channel)
            [acks] = await self._acks.get(tenant, session.user_id, [key])
            session.logs[key] = new_log_state(key, acks, acks.up_to)
            session.lagging = True
            await self.hub.add_reader(session, key)
        session.channels = tuple(channels)
        session.wakeup.set()
        return channels

    @property
    def session_count(self) -> int:
        return len(self.hub.sessions)

    # -- acks and the inbox ----------------------------------------------------------------

    async def ack(
        self,
        tenant: str,
        user_id: str,
        notification_ids: list[str],
        up_to: dict[str, int],
        epochs: Mapping[str, int] | None = None,
    ) -> int:
        """Acks entries of the user's logs; returns how many changed to ACKED."""
        return await self.acker.ack(tenant, user_id, notification_ids, up_to, epochs or {})

    async def list_inbox(
        self,
        tenant: str,
        user_id: str,
        page_size: int,
        before: int,
        filter_: Filter = Filter.NOT_ARCHIVED,
    ) -> tuple[list[InboxItem], int]:
        return await self.inbox.page(tenant, user_id, page_size, before, filter_)

    async def mark_read(self, tenant: str, user_id: str, notification_ids: list[str]) -> int:
        return await self.inbox.mark_read(tenant, user_id, notification_ids)

    async def update_inbox_state(
        self, tenant: str, user_id: str, notification_ids: list[str], action: Action
    ) -> tuple[int, Counts]:
        return await self.inbox.change(tenant, user_id, notification_ids, action)

    async def mark_all_read(self, tenant: str, user_id: str, up_to: int) -> tuple[int, Counts]:
        return await self.inbox.mark_all_read(tenant, user_id, up_to)

    async def inbox_counts(self, tenant: str, user_id: str) -> Counts:
        return await self.inbox.counts(tenant, user_id)

    # -- life cycle ------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    def start(self) -> None:
        """Starts the node's timers: heartbeats, redelivery, slow consumers, expiry, leases."""
        self._spawn(self.timers.run())

    async def shutdown(self, grace_s: float) -> None:
        """Ends the node's streams within `grace_s`, losing no ack, in this order:

        1. new sessions are refused; every session is told Closing(REASON_SHUTDOWN) (reconnect
           to any node with your cursors) and ends;
        2. ack streams stay open a moment (`ACK_LINGER_S`) for the acks clients send as their
           sessions end, then each ends as soon as it is idle (services/stream/ack_streams.py);
        3. the timers stop.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        self._closing = True
        for session in list(self.hub.sessions.values()):
            session.close(_CLOSING.REASON_SHUTDOWN, "the server is shutting down; reconnect")
        if self.hub.sessions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self.hub.drained.wait()
        if self.ack_streams:
            await asyncio.sleep(max(0.0, min(ACK_LINGER_S, deadline - loop.time())))
        await self.ack_streams.end_all(deadline - loop.time())
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # `wait`, not `await`: a cancel of the shutdown itself is not swallowed with theirs;
            # and bounded: a task that does not end when cancelled is left behind, named.
            ended, stuck = await asyncio.wait(tasks, timeout=TASKS_STOP_S)
            for task in ended:
                if not task.cancelled() and (error := task.exception()) is not None:
                    log.warning("a background task had failed", exc_info=error)
            if stuck:
                log.warning(
                    "background tasks did not end when cancelled; stopping without them",
                    extra={"tasks": sorted(_task_name(task) for task in stuck)},
                )


def _task_name(task: asyncio.Task[None]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or task.get_name()


def _check_channel(channel: str) -> None:
    if not channel or len(channel) > _MAX_CHANNEL_LEN:
        raise InvalidArgument(f"channel names are 1 to {_MAX_CHANNEL_LEN} characters long")
