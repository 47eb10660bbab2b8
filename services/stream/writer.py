"""The session writer: drains one session's buffers into its stream, whatever the transport.

It owns no socket. The adapter (the gRPC servicer today; the WebSocket endpoint next) hands it a
`write` coroutine that sends one encoded `SubscribeResponse` and returns when the transport has
taken it: one write is in flight per stream, and a write that does not complete within the write
timeout marks the session a slow consumer (timers.py cancels it).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from herald.v1 import stream_pb2
from services import metrics
from services.clock import Clock
from services.config import DeliverySettings
from services.domain import LogKey, State, Transition
from services.errors import Aborted
from services.model import timestamp
from services.stream.log import LogStore
from services.stream.session import Pending, Session
from services.stream.status import Mark, StatusStore
from services.stream.status_recorder import StatusEvents, StatusRecorder
from services.tracing import Tracing, end_spans

log = logging.getLogger(__name__)

Write = Callable[[bytes], Awaitable[None]]
Spawn = Callable[[Awaitable[None]], None]

_CLOSING = stream_pb2.Closing
_DELIVERED = State.DELIVERED
# Ack timeouts vary by +-20 %, so that redeliveries of entries written together spread out.
_JITTER = 0.2


class AckDelays:
    """The ack timeout before each redelivery: exponential in the attempt, with jitter."""

    def __init__(self, settings: DeliverySettings, rng: random.Random) -> None:
        self._settings = settings
        self._rng = rng

    def base(self, attempt: int) -> float:
        base = self._settings.ack_timeout_s * (self._settings.backoff_factor ** (attempt - 1))
        return min(base, self._settings.backoff_max_s)

    def delay(self, attempt: int) -> float:
        """Ack timeout before redelivery: exponential in the attempt, with +-20% jitter."""
        return self.base(attempt) * self._rng.uniform(1 - _JITTER, 1 + _JITTER)

    def shortest(self, attempt: int) -> float:
        return self.base(attempt) * (1 - _JITTER)

    def track(self, session: Session, pendings: list[Pending], now: float) -> None:
        """Starts the ack timers of entries written (or held) by the session, with one jitter
        per attempt number in the batch."""
        deadlines: dict[int, float] = {}
        for p in pendings:
            deadline = deadlines.get(p.attempt)
            if deadline is None:
                deadline = deadlines[p.attempt] = now + self.delay(p.attempt)
            session.track(p, now, deadline)


class SessionWriter:
    """Writes sessions' streams: the started event, batches of deliveries, heartbeats, closing."""

    def __init__(
        self,
        *,
        node_id: str,
        logs: LogStore,
        status: StatusStore,
        delays: AckDelays,
        settings: DeliverySettings,
        clock: Clock,
        spawn: Spawn,
        tracing: Tracing | None = None,
        events: StatusEvents | None = None,
    ) -> None:
        self._node_id = node_id
        self._tracing = tracing
        self._logs = logs
        self._status = StatusRecorder(status, events)
        self._delays = delays
        self._settings = settings
        self._clock = clock
        self._spawn = spawn

    async def run(self, session: Session, write: Write) -> None:
        """Writes the session's stream until it is closed or the client goes away.

        One coroutine, no helper awaited while idle: its frame is all an idle session's stream
        keeps alive besides grpc's (docs/performance.md, sixth session).

        Raises:
            Aborted: the client stopped reading (a write stalled past the write timeout).
        """
        try:
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
                        await write(closing_event(reason, message))
                        return
                    events = session.events
                    if events:
                        session.events = None
                        for event in events:
                            session.write_started_at = time.monotonic()
                            await write(event)
                        session.write_started_at = 0.0
                        session.last_write_at = self._clock.now()
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
                    # Held, with the transport's copy, until the write completes: grpc core
                    # keeps a message its HTTP/2 window does not let out yet
                    # (Session.hold_write).
                    session.hold_write(len(data))
                    try:
                        if self._tracing is None:
                            await write(data)
                        else:
                            await traced_write(self._tracing, session, taken, write, data)
                    finally:
                        session.end_write()
                    session.write_started_at = 0.0
                    session.last_write_at = self._clock.now()
                if session.heartbeat_due:
                    session.heartbeat_due = False
                    session.write_started_at = time.monotonic()
                    await write(self.heartbeat_event())
                    session.write_started_at = 0.0
                    session.last_write_at = self._clock.now()
        except asyncio.CancelledError:
            if not session.stalled:
                raise
            # The stream is blocked, so no Closing event can get through: end the call with a
            # status that says why; the client resumes from its cursor.
            raise Aborted(
                f"slow consumer: the stream was not read for {self._settings.write_timeout_s:g} s; "
                "reconnect with your cursors"
            ) from None

    async def _catch_up(self, session: Session) -> None:
        """Reads logs the session is behind on, as far as its buffer has room."""
        now = self._clock.now()
        for key, state in list(session.logs.items()):
            while state.behind and session.room() > 0 and key in session.logs:
                state.behind = False
                limit = min(session.room(), self._settings.batch_max * 8)
                entries = await self._logs.read(session.tenant, key, state.enqueued, limit)
                if entries and not session.enqueue(state, entries, now):
                    state.behind = True  # the byte bounds stopped it: read the rest later
                    break
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
                p.log.mark_written(p.entry.cursor)
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
        self._delays.track(session, taken, now)
        user_id = session.user_id
        if len(taken) == 1:  # the most common stream message when a node is not loaded
            p = taken[0]
            if p.attempt == 1:
                entries = ((p.entry.cursor, p.entry.notification_id),)
                marks = [Mark(user_id, p.log.log_key, _DELIVERED, entries, now)]
                await self._status.record(session.tenant, marks)
            else:
                await self._status.apply(
                    session.tenant, [Transition(p.entry.notification_id, user_id, _DELIVERED)], now
                )
        else:
            await self._record_batch(session, taken, now)
        (metrics.DELIVERED_FIRST if taken[0].attempt == 1 else metrics.DELIVERED_RETRY).inc(
            len(taken)
        )
        # One call per stream message, not per delivery (metrics.TallyHistogram); a message of
        # one delivery (the most common when a node is not loaded) skips building a list.
        if len(taken) == 1:
            if taken[0].attempt == 1:
                metrics.DELIVERY_LATENCY.observe(now - taken[0].entry.created_at)
        else:
            metrics.DELIVERY_LATENCY.observe_many(
                [now - p.entry.created_at for p in taken if p.attempt == 1]
            )

    async def _record_batch(self, session: Session, taken: list[Pending], now: float) -> None:
        """First writes as one mark per log, redeliveries as transitions (status.Mark)."""
        by_log: dict[LogKey, list[tuple[int, str]]] = {}
        again: list[Transition] = []
        for p in taken:
            if p.attempt == 1:
                key = p.log.log_key
                entries = by_log.get(key)
                if entries is None:
                    entries = by_log[key] = []
                entries.append((p.entry.cursor, p.entry.notification_id))
            else:
                again.append(Transition(p.entry.notification_id, session.user_id, _DELIVERED))
        if by_log:
            user_id = session.user_id
            await self._status.record(
                session.tenant,
                # Within a log, lanes may reorder entries of different priorities.
                [Mark(user_id, k, _DELIVERED, sorted(e), now) for k, e in by_log.items()],
            )
        if again:
            await self._status.apply(session.tenant, again, now)

    # -- events ----------------------------------------------------------------------------

    def started_event(self, session: Session) -> bytes:
        return stream_pb2.SubscribeResponse(
            session_started=stream_pb2.SessionStarted(
                session_id=session.session_id,
                node_id=self._node_id,
                user_id=session.user_id,
                tenant_id=session.tenant,
                heartbeat_interval_seconds=int(self._settings.heartbeat_interval_s),
                channels=session.channels,
                logs=[
                    stream_pb2.LogPosition(
                        log=key.client_name,
                        epoch=state.epoch,
                        head=state.opened_head,
                        recovered=state.recovered,
                    )
                    for key, state in session.logs.items()
                ],
            )
        ).SerializeToString()

    def heartbeat_event(self) -> bytes:
        return stream_pb2.SubscribeResponse(
            heartbeat=stream_pb2.Heartbeat(server_time=timestamp(self._clock.now()))
        ).SerializeToString()


async def traced_write(
    tracing: Tracing, session: Session, taken: list[Pending], write: Write, data: bytes
) -> None:
    """`write(data)` with a `herald.deliver` span per entry whose Send was traced, from before
    the write until the transport took it."""
    traced = [p for p in taken if p.entry.trace_context]
    spans = tracing.start_deliveries(
        [
            (
                p.entry.trace_context,
                {
                    "herald.notification_id": p.entry.notification_id,
                    "herald.tenant": session.tenant,
                    "herald.session_id": session.session_id,
                    "herald.log": p.log.log_key.client_name,
                    "herald.cursor": p.entry.cursor,
                    "herald.attempt": p.attempt,
                },
            )
            for p in traced
        ]
    )
    for p, span in zip(traced, spans, strict=True):
        if span is not None:
            p.delivery = span.get_span_context()
    try:
        await write(data)
    except BaseException as error:
        end_spans(spans, error)
        raise
    end_spans(spans)


def closing_event(reason: int, message: str) -> bytes:
    retry = 0 if reason in (_CLOSING.REASON_DISCONNECTED, _CLOSING.REASON_TOKEN_EXPIRED) else 1000
    return stream_pb2.SubscribeResponse(
        closing=stream_pb2.Closing(reason=reason, message=message, retry_after_ms=retry)  # type: ignore[arg-type]
    ).SerializeToString()
