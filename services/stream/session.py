"""One open subscription: what it reads, what waits to be written, and in which order.

Invariants (docs/delivery.md states them for users):

- Per log, a session enqueues entries in cursor order with no gap: an entry is enqueued only if
  every earlier live entry of its log was enqueued (or skipped as acked or expired). When a live
  offer does not continue the sequence (the session is behind, or its buffer is full), the session
  drops the offer and catches up by reading the log, so falling behind costs no memory and loses
  nothing.
- Writing order: within one priority, cursor order; across priorities, weighted round-robin
  (HIGH 4 : NORMAL 2 : LOW 1 of every 7 picks while all three wait), so a waiting LOW is sent
  within 7 deliveries.
- Buffers are bounded in entries and in bytes, per session and per node (`BufferBudget`): an
  entry is enqueued only if it fits both, except that an empty session always takes one (so a
  node full of stalled sessions still moves every other session forward, one entry at a time).
  An entry counts from its enqueue until it is taken for writing; the encoded batch then counts
  twice (WRITE_COPIES) until its write completes: a stalled stream's batch in flight, and the
  transport's copy of it, are part of what the node holds.
- `resume_cursor` of a delivery of log L: every entry of L at or below it was written to this
  stream before (or together with) that delivery, or was acked or expired.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services import wire
from services.domain import LogKey
from services.stream.acks import AckState
from services.stream.log import Entry

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

# Lane order: HIGH, NORMAL, LOW (herald.v1.Priority 3, 2, 1; UNSPECIFIED counts as NORMAL).
_LANE_OF_PRIORITY = {3: 0, 2: 1, 0: 1, 1: 2}
# Weighted round-robin over the lanes: 4 HIGH, 2 NORMAL, 1 LOW per cycle.
_PICK_CYCLE = (0, 1, 0, 2, 0, 1, 0)
# What a waiting entry costs besides its notification's bytes: the Entry with its id, the
# Pending, its lane and heap slots (tracemalloc, 100,000 of them on CPython 3.11: 248 bytes).
ENTRY_OVERHEAD = 256
# A batch whose write is in flight is held twice: the encoded bytes, and the transport's copy of
# them (grpc core copies a message into its own buffer; bench/stalled.py --grouped measures it).
WRITE_COPIES = 2
# User events (InboxEvent) waiting to be written, per session: beyond it the oldest go. Each
# carries the counts as they are after it, so the newest is the one that matters.
MAX_EVENTS = 64


class BufferBudget:
    """The bytes every session of a node has waiting, against the node's bound."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class Flag:
    """asyncio.Event's set / clear / is_set / wait, without its 760-byte deque of waiters: a
    session holds two for as long as it is open, and a node holds thousands of sessions."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(True)

    def clear(self) -> None:
        self._value = False

    def wait(self) -> asyncio.Future[bool]:
        """A future done (True) once the flag is set, at once if it is. Not a coroutine: a
        session's writer waits on `wakeup` for as long as it is idle, and a coroutine's frame
        would stay alive all that time. A waiter cancelled meanwhile is dropped at the next
        wait or set."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._value:
            waiter.set_result(True)
        elif self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters = [w for w in self._waiters if not w.done()]
            self._waiters.append(waiter)
        return waiter


def entry_size(entry: Entry) -> int:
    return len(entry.notification_field) + ENTRY_OVERHEAD


@dataclass(slots=True)
class LogCursorState:
    """What a session knows about one of the logs it reads."""

    log_key: LogKey
    log_field: bytes
    acks: AckState
    # Every entry with cursor <= enqueued was enqueued, skipped (acked/expired) or resumed past.
    enqueued: int
    # True while the session must read the log to continue (resume, or a missed live offer).
    behind: bool = True
    # The log's epoch when the session opened, and whether the client's cursor was honoured.
    epoch: int = 0
    recovered: bool = True
    # The log's newest cursor when the session opened.
    opened_head: int = 0
    # Cursors enqueued and not yet written (a heap with lazy deletion, for the watermark); the
    # set is made on the first write (an idle session's logs hold none).
    waiting: list[int] = field(default_factory=list)
    written: set[int] | None = None

    def mark_written(self, cursor: int) -> None:
        if self.written is None:
            self.written = {cursor}
        else:
            self.written.add(cursor)

    def watermark(self) -> int:
        written = self.written
        if written:
            while self.waiting and self.waiting[0] in written:
                written.discard(heapq.heappop(self.waiting))
        return self.waiting[0] - 1 if self.waiting else self.enqueued


@dataclass(slots=True)
class Pending:
    """An entry waiting to be written to one session."""

    entry: Entry
    log: LogCursorState
    attempt: int = 1
    # Its latest write (0: not written yet) and when that write's ack timer runs out.
    written_at: float = 0.0
    deadline: float = 0.0
    # The span of its latest write, when tracing is on and the Send was sampled: an ack links
    # to it (services/tracing.py).
    delivery: SpanContext | None = None


class Session:
    """The buffers of one stream; the delivery core feeds it and its writer drains it."""

    # A node holds thousands of idle sessions: slots instead of a dict of ~30 attributes.
    __slots__ = (
        "_pick",
        "_timers",
        "budget",
        "buffer_bytes",
        "buffer_limit",
        "channels",
        "closed",
        "closing",
        "connected_at",
        "device",
        "events",
        "expires_at",
        "heartbeat_due",
        "lagging",
        "lanes",
        "last_write_at",
        "logs",
        "session_id",
        "stalled",
        "task",
        "tenant",
        "unacked",
        "unregistering",
        "user_id",
        "waiting",
        "waiting_bytes",
        "wakeup",
        "write_started_at",
        "writing_bytes",
    )

    def __init__(
        self,
        *,
        tenant: str,
        user_id: str,
        device: str,
        channels: tuple[str, ...],
        logs: dict[LogKey, LogCursorState],
        buffer_limit: int,
        buffer_bytes: int = 1 << 62,
        budget: BufferBudget | None = None,
        connected_at: float,
        expires_at: float = math.inf,
    ) -> None:
        self.session_id = uuid.uuid4().hex
        self.tenant = tenant
        self.user_id = user_id
        self.device = device
        self.channels = channels
        self.logs = logs
        self.buffer_limit = buffer_limit
        self.buffer_bytes = buffer_bytes
        self.budget = budget if budget is not None else BufferBudget(1 << 62)
        # Bytes of the entries waiting (see entry_size); also counted in the node's budget.
        self.waiting_bytes = 0
        # Bytes the batch whose write is in flight holds (0: none; see hold_write); counted in
        # the node's budget.
        self.writing_bytes = 0
        self.connected_at = connected_at
        # When the token the stream was opened with stops verifying (wall clock).
        self.expires_at = expires_at
        # Made when the first entry waits and dropped when the last is taken: an idle session
        # does not hold three empty deques (760 bytes each).
        self.lanes: tuple[deque[Pending], deque[Pending], deque[Pending]] | None = None
        self.waiting = 0
        self.wakeup = Flag()
        # Every log starts `behind`: the first wakeup replays the backlog.
        self.lagging = True  # some log is behind (a cheap check for the writer)
        self.wakeup.set()
        self.heartbeat_due = False
        # Encoded SubscribeResponses for the user's sessions (inbox events), made on first use.
        self.events: deque[bytes] | None = None
        self.closing: tuple[int, str] | None = None  # (Closing.Reason, message)
        self.task: asyncio.Task[object] | None = None
        # Set by the node when it cancels a stalled stream; set when the node forgets the session.
        self.stalled = False
        # Entries written (or held by the client) and not acked yet, by (log key, cursor).
        self.unacked: dict[tuple[LogKey, int], Pending] = {}
        # The ack timers: the same entries by attempt, each in write order (see `due`).
        self._timers: dict[int, dict[tuple[LogKey, int], Pending]] = {}
        self.closed = Flag()
        # Set once the node began to forget the session (close runs once).
        self.unregistering = False
        self.last_write_at = connected_at
        # time.monotonic() when the write in flight began (0: none); stuck too long = slow consumer.
        self.write_started_at = 0.0
        self._pick = 0

    # -- feeding ---------------------------------------------------------------------------

    def offer(self, log_key: LogKey, entries: Sequence[Entry], head: int, now: float) -> None:
        """Live entries just appended to a log this session reads (contiguous cursors, the last
        at `head`), or only the new `head` when `entries` is empty."""
        state = self.logs.get(log_key)
        if state is None or state.behind:
            return
        if not entries:
            if head > state.enqueued:
                self.fall_behind(state)
            return
        fresh: Sequence[Entry] = entries
        if entries[0].cursor <= state.enqueued:  # some were read from the log already
            fresh = [e for e in entries if e.cursor > state.enqueued]
            if not fresh:
                return
        if fresh[0].cursor != state.enqueued + 1 or self.waiting + len(fresh) > self.buffer_limit:
            # Not the next entries, or no room: read them from the log later instead.
            self.fall_behind(state)
            return
        if not self.enqueue(state, fresh, now):
            self.fall_behind(state)

    def push_event(self, response: bytes) -> None:
        """An encoded SubscribeResponse to write as it is, in order, ahead of deliveries
        waiting (see MAX_EVENTS)."""
        if self.events is None:
            self.events = deque(maxlen=MAX_EVENTS)
        self.events.append(response)
        self.wakeup.set()

    def fall_behind(self, state: LogCursorState) -> None:
        """The session must read this log to continue (the writer catches up)."""
        state.behind = True
        self.lagging = True
        self.wakeup.set()

    def enqueue(self, state: LogCursorState, entries: Sequence[Entry], now: float) -> bool:
        """Queues entries that continue `state`'s sequence, skipping acked and expired ones.

        Stops at the first entry that does not fit the byte bounds and returns False: the
        entries from it on are read from the log again later (`state.enqueued` stays before it).
        """
        budget = self.budget
        session_room = self.buffer_bytes - self.waiting_bytes
        node_room = budget.limit - budget.used
        added = 0
        complete = True
        lanes = self.lanes or self._make_lanes()
        for entry in entries:
            if entry.cursor <= state.enqueued:
                continue
            if entry.expires_at <= now or state.acks.is_acked(entry.cursor):
                state.enqueued = entry.cursor
                continue
            size = len(entry.notification_field) + ENTRY_OVERHEAD
            if (size > session_room or size > node_room) and (self.waiting or added):
                complete = False
                break
            state.enqueued = entry.cursor
            session_room -= size
            node_room -= size
            added += size
            lanes[_LANE_OF_PRIORITY.get(entry.priority, 1)].append(Pending(entry, state))
            heapq.heappush(state.waiting, entry.cursor)
            self.waiting += 1
        self.waiting_bytes += added
        budget.used += added
        self.wakeup.set()
        return complete

    def requeue(self, pending: Pending) -> None:
        """Puts an unacked entry back for redelivery, ahead of its lane."""
        pending.attempt += 1
        lanes = self.lanes or self._make_lanes()
        lanes[_LANE_OF_PRIORITY.get(pending.entry.priority, 1)].appendleft(pending)
        self.waiting += 1
        # Counted whatever the bounds: it is held for its ack timer anyway.
        size = entry_size(pending.entry)
        self.waiting_bytes += size
        self.budget.used += size
        self.wakeup.set()

    def _make_lanes(self) -> tuple[deque[Pending], deque[Pending], deque[Pending]]:
        self.lanes = (deque(), deque(), deque())
        return self.lanes

    def room(self) -> int:
        """Entries the session may still enqueue (0 once either bound is reached; an empty
        session always has room for one)."""
        if not self.waiting:
            return self.buffer_limit
        budget = self.budget
        if self.waiting_bytes >= self.buffer_bytes or budget.used >= budget.limit:
            return 0
        return self.buffer_limit - self.waiting

    def hold_write(self, size: int) -> None:
        """Counts the batch being written, `size` encoded bytes, in the node's budget until
        `end_write`: until the transport has sent them, they and its copy are held."""
        held = self.writing_bytes = WRITE_COPIES * size
        self.budget.used += held

    def end_write(self) -> None:
        """The write in flight completed (or failed): its bytes are no longer held."""
        self.budget.used -= self.writing_bytes
        self.writing_bytes = 0

    def release(self) -> None:
        """Drops what still waits and gives the node back its bytes (the session ended)."""
        self.lanes = None
        self.waiting = 0
        self.budget.used -= self.waiting_bytes
        self.waiting_bytes = 0

    # -- ack timers ------------------------------------------------------------------------

    def track(self, pending: Pending, now: float, deadline: float) -> None:
        """Starts the ack timer of a written (or held) entry."""
        key = (pending.log.log_key, pending.entry.cursor)
        pending.written_at = now
        pending.deadline = deadline
        self.unacked[key] = pending
        timers = self._timers.get(pending.attempt)
        if timers is None:
            timers = self._timers[pending.attempt] = {}
        timers[key] = pending

    def settle(self, key: tuple[LogKey, int]) -> None:
        """Stops the ack timer of an acked entry (if this session has one running)."""
        pending = self.unacked.pop(key, None)
        if pending is not None:
            self._timers[pending.attempt].pop(key, None)

    def due(self, now: float, shortest_delay: Callable[[int], float]) -> list[Pending]:
        """Removes and returns the written entries whose ack timer has run out.

        `shortest_delay(attempt)` is the least an ack timer of that attempt can be: within one
        attempt entries are in write order, so the scan stops at the first one written less
        than that long ago. Acked entries were removed when acked, so a session whose client
        acks costs one look per attempt, however much it was sent.
        """
        due: list[Pending] = []
        for attempt, timers in self._timers.items():
            if not timers:
                continue
            horizon = now - shortest_delay(attempt)
            keys = []
            for key, pending in timers.items():
                if pending.written_at > horizon:
                    break
                if pending.deadline <= now:
                    keys.append(key)
            for key in keys:
                pending = timers.pop(key)
                if self.unacked.get(key) is pending:
                    del self.unacked[key]
                    due.append(pending)
        return due

    def forget_acks(self, log_key: LogKey | None = None) -> None:
        """Stops the ack timers of one log (a channel left), or of every log."""
        if log_key is None:
            self.unacked.clear()
            self._timers.clear()
            return
        for key in [k for k in self.unacked if k[0] == log_key]:
            self.settle(key)

    # -- draining --------------------------------------------------------------------------

    def take(self, limit: int) -> list[Pending]:
        """Up to `limit` waiting entries in writing order (see the module invariants), and no
        more than the node's budget leaves room for the transport's copy of (hold_write): one
        at least. (The session's own bound is not asked: a session catching up keeps its buffer
        full and would be written one entry at a time.)"""
        taken: list[Pending] = []
        lanes = self.lanes
        if lanes is None:
            return taken
        budget = self.budget
        room = budget.limit - budget.used
        size = 0
        full = False
        while not full and len(taken) < limit and self.waiting:
            for _ in range(len(_PICK_CYCLE)):
                lane = lanes[_PICK_CYCLE[self._pick]]
                if lane:
                    field = len(lane[0].entry.notification_field)
                    if taken and size + field > room:
                        full = True  # the rest waits for the next write; the pick stays here
                        break
                    taken.append(lane.popleft())
                    size += field
                    self.waiting -= 1
                    self._pick = (self._pick + 1) % len(_PICK_CYCLE)
                    break
                self._pick = (self._pick + 1) % len(_PICK_CYCLE)
        size += ENTRY_OVERHEAD * len(taken)
        self.waiting_bytes -= size
        budget.used -= size
        if not self.waiting:
            self.lanes = None
        return taken

    def encode(self, taken: list[Pending]) -> bytes:
        """One SubscribeResponse holding `taken`, with each log's watermark after the batch."""
        for pending in taken:
            if pending.attempt == 1:
                pending.log.mark_written(pending.entry.cursor)
        return wire.batch_response(
            [
                wire.delivery(
                    p.entry.notification_field,
                    p.log.log_field,
                    p.entry.cursor,
                    p.attempt,
                    p.log.watermark(),
                )
                for p in taken
            ]
        )

    def close(self, reason: int, message: str) -> None:
        if self.closing is None:
            self.closing = (reason, message)
        self.wakeup.set()


def new_log_state(
    log_key: LogKey,
    acks: AckState,
    resume_after: int,
    epoch: int = 0,
    recovered: bool = True,
    head: int = 0,
) -> LogCursorState:
    return LogCursorState(
        log_key=log_key,
        log_field=wire.log_field(log_key.client_name),
        acks=acks,
        enqueued=resume_after,
        epoch=epoch,
        recovered=recovered,
        opened_head=head,
    )
