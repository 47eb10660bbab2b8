"""Delivery core properties: random sends, streams, acks and time, checked against a model."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from herald.v1 import notification_pb2, stream_pb2
from services.clock import ManualClock
from services.config import DeliverySettings, RegistrySettings
from services.domain import BROADCAST as BROADCAST_KEY
from services.domain import Accepted, LogKey, TargetKind
from services.domain import channel_log as channel_key
from services.domain import user_log as user_key
from services.errors import ResourceExhausted
from services.model import accepted_from_proto, timestamp
from services.registry.core import RegistryCore
from services.registry.sessions_memory import MemorySessionDirectory
from services.registry.templates_memory import MemoryTemplateStore
from services.stream.acks_memory import MemoryAckStore
from services.stream.broker_memory import MemoryBroker
from services.stream.delivery import DeliveryCore
from services.stream.dispatch import Dispatcher
from services.stream.log_memory import MemoryLogStore
from services.stream.session import Session, entry_size
from services.stream.status_memory import MemoryStatusStore

# The model names logs by their stored strings ("user:alice", "broadcast", "channel:news").
BROADCAST = BROADCAST_KEY.stored


def user_log(user: str) -> str:
    return user_key(user).stored


def channel_log(channel: str) -> str:
    return channel_key(channel).stored


def client_log_name(key: str) -> str:
    return LogKey.from_stored(key).client_name


T = TypeVar("T")

TENANTS = ("acme", "globex")
# The same user and channel names in every tenant, so a delivery across tenants cannot hide.
USERS = ("alice", "bob")
CHANNELS = ("news", "ops")
BATCH_MAX = 3  # small, so batches coalesce and the weighted priority order matters
SESSION_BUFFER = 5  # small (and not a multiple of BATCH_MAX), so streams fall behind and catch up
ACK_TIMEOUT_S = 5.0
BACKOFF_FACTOR = 2.0
BACKOFF_MAX_S = 300.0
MAX_ATTEMPTS = 3
MAX_SESSIONS_PER_USER = 2
# More examples to hunt for bugs: DELIVERY_PROPERTY_EXAMPLES=2000 pytest <this file>
EXAMPLES = int(os.environ.get("DELIVERY_PROPERTY_EXAMPLES", "100"))
QUIESCE_ROUNDS = 200
# TTLs and clock steps are often round, so that "now == expires_at" happens.
ROUND_SECONDS = (5, 10, 15, 20, 30)


def ack_delay(attempt: int) -> float:
    """The ack timeout after `attempt`, before its +-20% jitter."""
    return min(ACK_TIMEOUT_S * BACKOFF_FACTOR ** (attempt - 1), BACKOFF_MAX_S)


def new_core(
    clock: ManualClock, logs: MemoryLogStore | None = None, **settings: Any
) -> tuple[DeliveryCore, Dispatcher, MemoryLogStore]:
    """A delivery core on memory stores and the dispatcher that feeds it; its ticker is not
    started (the tests drive the timers)."""
    status = MemoryStatusStore()
    logs = logs or MemoryLogStore(status)
    broker = MemoryBroker()
    delivery = DeliverySettings(
        **{
            "batch_max": BATCH_MAX,
            "session_buffer": SESSION_BUFFER,
            "ack_timeout_s": ACK_TIMEOUT_S,
            "backoff_factor": BACKOFF_FACTOR,
            "backoff_max_s": BACKOFF_MAX_S,
            "max_attempts": MAX_ATTEMPTS,
            # Nothing is dropped for room: the overflow policy is tested on its own.
            "inbox_limit": 100_000,
            "channel_log_limit": 100_000,
            **settings,
        }
    )
    core = DeliveryCore(
        node_id="node-1",
        node_address="127.0.0.1:1",
        logs=logs,
        acks=MemoryAckStore(),
        status=status,
        broker=broker,
        registry=RegistryCore(
            directory=MemorySessionDirectory(),
            templates=MemoryTemplateStore(),
            # Leases are the node timers' job, which this machine does not run: they never
            # lapse here.
            settings=RegistrySettings(
                max_sessions_per_user=MAX_SESSIONS_PER_USER, session_lease_s=10**9
            ),
            clock=clock,
            node_for=lambda s: None,
        ),
        settings=delivery,
        clock=clock,
        rng=random.Random(0),
    )
    dispatcher = Dispatcher(logs=logs, status=status, broker=broker, settings=delivery, clock=clock)
    return core, dispatcher, logs


@st.composite
def targets(draw: st.DrawFn) -> notification_pb2.Target:
    kind = draw(st.sampled_from(["user_id", "users", "channel", "broadcast"]))
    if kind == "user_id":
        return notification_pb2.Target(user_id=draw(st.sampled_from(USERS)))
    if kind == "users":
        # Repeats on purpose: ingest accepts them and each user still gets one entry.
        users = draw(st.lists(st.sampled_from(USERS), min_size=1, max_size=4))
        return notification_pb2.Target(users=notification_pb2.UserList(user_ids=users))
    if kind == "channel":
        return notification_pb2.Target(channel=draw(st.sampled_from(CHANNELS)))
    return notification_pb2.Target(broadcast=True)


PRIORITIES = [
    notification_pb2.PRIORITY_LOW,
    notification_pb2.PRIORITY_NORMAL,
    notification_pb2.PRIORITY_HIGH,
]
notification_specs = st.tuples(
    targets(),
    st.sampled_from(PRIORITIES),
    st.one_of(st.sampled_from((*ROUND_SECONDS, 60, 120)), st.integers(5, 120)),
)


@dataclass
class Sent:
    """A dispatched notification and the cursor it got in each of its logs."""

    notification: notification_pb2.Notification
    accepted: Accepted
    cursors: dict[str, int]

    @property
    def expires_at(self) -> float:
        return self.accepted.expires_at


@dataclass
class Acked:
    """What one user acked in one log, and at which step (the core call) each ack came."""

    cursors: dict[int, int] = field(default_factory=dict)
    raises: list[tuple[int, int]] = field(default_factory=list)  # (step, up_to)

    def since(self, cursor: int) -> int | None:
        steps = [step for step, up_to in self.raises if cursor <= up_to]
        if cursor in self.cursors:
            steps.append(self.cursors[cursor])
        return min(steps, default=None)


@dataclass(eq=False)
class Client:
    """One open stream, as its client saw it."""

    tenant: str
    user: str
    channels: list[str]
    session: Session
    # The core call after which every write this stream had coming was done.
    quiet_step: int
    task: asyncio.Task[None] | None = None
    # Set while the client stops reading: its writes block until the gate opens.
    gate: asyncio.Event | None = None
    stalled_for: int = 0
    in_flight: int = 0
    started: bool = False
    # (log key, cursor) -> when each attempt was handed to the stream (its ack timer starts).
    attempts: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    # step of an ack of this user -> log key -> the session's `enqueued` cursor just before it.
    queued_at_ack: dict[int, dict[str, int]] = field(default_factory=dict)
    # (log key, priority) -> cursor of the newest first attempt.
    last_first: dict[tuple[str, int], int] = field(default_factory=dict)
    # log key -> the newest resume_cursor.
    resume: dict[str, int] = field(default_factory=dict)

    @property
    def log_keys(self) -> set[str]:
        return {user_log(self.user), BROADCAST, *(channel_log(c) for c in self.channels)}

    def forget_log(self, key: str) -> None:
        """The stream left the log: a later join starts it afresh (replaying the unacked)."""
        self.attempts = {k: v for k, v in self.attempts.items() if k[0] != key}
        self.last_first = {k: v for k, v in self.last_first.items() if k[0] != key}
        self.resume.pop(key, None)
        for queued in self.queued_at_ack.values():
            queued.pop(key, None)


def key_of_name(name: str, user: str) -> str:
    """The log key of a client-facing log name ('user' is the user's own log)."""
    return user_log(user) if name == "user" else name


class DeliveryMachine(RuleBasedStateMachine):
    """Drives a DeliveryCore on memory stores and a manual clock; the model is plain dicts.

    Every rule is one core call; afterwards every reading stream drains what it has coming, so
    the invariants see a quiet system. A stalled client (its writes block) lets entries wait in
    its buffer while other calls go on: offers then overflow, expire or get acked in the buffer.
    """

    # DeliverySettings of the core under test, over new_core's.
    SETTINGS: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.core, self.dispatcher, self.logs = new_core(self.clock, **self.SETTINGS)
        self.step = 0
        self.next_id = 0
        self.sent: dict[str, Sent] = {}
        # (tenant, log key) -> notification ids in cursor order (cursor n at index n - 1).
        self.model_logs: dict[tuple[str, str], list[str]] = {}
        self.acked: dict[tuple[str, str, str], Acked] = {}
        self.swept: set[str] = set()
        self.clients: list[Client] = []
        # (tenant, user) -> log name -> the newest resume_cursor any of the user's streams saw.
        self.seen_resume: dict[tuple[str, str], dict[str, int]] = {}
        # (tenant, user) -> notification id -> (log name, cursor) as delivered.
        self.received: dict[tuple[str, str], dict[str, tuple[str, int]]] = {}
        self.redelivered_at = float("-inf")
        self.loop = asyncio.new_event_loop()

    # -- running the loop ------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs one core call, then lets every reading stream write what it has coming."""
        self.step += 1
        result = self.loop.run_until_complete(coro)
        for client in self.clients:
            if client.gate is not None:
                client.stalled_for -= 1
                if client.stalled_for <= 0:
                    self.resume_reading(client)
        self.settle()
        return result

    def resume_reading(self, client: Client) -> None:
        assert client.gate is not None
        if any(state.behind for state in client.session.logs.values()):
            event("a stalled stream fell behind: it catches up from the log")
        client.gate.set()
        client.gate = None

    def settle(self) -> None:
        if any(
            c.started and c.gate is None and any(s.behind for s in c.session.logs.values())
            for c in self.clients
        ):
            event("a reading stream fell behind and catches up from the log")
        self.loop.run_until_complete(self._quiesce())
        for client in self.reading():
            client.quiet_step = self.step

    def reading(self) -> list[Client]:
        return [c for c in self.clients if c.gate is None]

    async def _quiesce(self) -> None:
        calm = 0
        for _ in range(QUIESCE_ROUNDS):
            for client in self.clients:
                assert client.task is not None
                if client.task.done():
                    client.task.result()  # re-raises what a check in `write` found
                    raise AssertionError("a stream's writer ended on its own")
            idle = not self.core._tasks and all(self._idle(c) for c in self.reading())
            calm = calm + 1 if idle else 0
            if calm == 2:
                return
            await asyncio.sleep(0)
        raise AssertionError("the delivery core did not quiesce")

    @staticmethod
    def _idle(client: Client) -> bool:
        session = client.session
        return (
            client.in_flight == 0
            and session.waiting == 0
            and not session.wakeup.is_set()
            and not any(state.behind for state in session.logs.values())
        )

    def teardown(self) -> None:
        async def stop() -> None:
            tasks = [c.task for c in self.clients if c.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for client in self.clients:
                await self.core.close(client.session)
            leftovers = list(self.core._tasks)
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)

        try:
            self.loop.run_until_complete(stop())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    # -- the model -------------------------------------------------------------------------

    def acked_since(self, tenant: str, user: str, key: str, cursor: int) -> int | None:
        acked = self.acked.get((tenant, user, key))
        return None if acked is None else acked.since(cursor)

    def is_acked(self, tenant: str, user: str, key: str, cursor: int) -> bool:
        return self.acked_since(tenant, user, key, cursor) is not None

    def entry(self, tenant: str, key: str, cursor: int) -> Sent:
        return self.sent[self.model_logs[(tenant, key)][cursor - 1]]

    def log_key_for(self, sent: Sent, user: str) -> str | None:
        """The log in which `user` gets `sent`, or None when it is not addressed to them."""
        a = sent.accepted
        if a.kind is TargetKind.CHANNEL:
            return channel_log(a.channel)
        if a.kind is TargetKind.BROADCAST:
            return BROADCAST
        return user_log(user) if user in a.user_ids else None

    def ack_watermark(self, tenant: str, user: str, key: str) -> int:
        """The highest cursor with every cursor up to it acked."""
        up_to = 0
        while self.is_acked(tenant, user, key, up_to + 1):
            up_to += 1
        return up_to

    def hold(self, client: Client, cursors: dict[str, int]) -> None:
        """2. A cursor c of a log, above the ack watermark and at most the log's head, says the
        client holds every unacked entry up to c: not resent now, but on the ack timer as if
        written (attempt 1) at connect. Other cursors (none, at or below the watermark, beyond
        the head) replay every unacked entry."""
        now = self.clock.now()
        for name, resume in cursors.items():
            key = key_of_name(name, client.user)
            ids = self.model_logs.get((client.tenant, key), [])
            if not self.ack_watermark(client.tenant, client.user, key) < resume <= len(ids):
                continue
            event("a stream resumes after a cursor, holding what is below it")
            for cursor, nid in enumerate(ids[:resume], start=1):
                acked = self.is_acked(client.tenant, client.user, key, cursor)
                if not acked and self.sent[nid].expires_at > now:
                    client.attempts[(key, cursor)] = [now]

    def model_ack(
        self, tenant: str, user: str, ids: list[str], up_to: dict[str, int], step: int
    ) -> int:
        """Applies an ack to the model; returns how many live (unswept) entries it newly acks."""
        changed = 0
        for name, cursor in up_to.items():
            key = key_of_name(name, user)
            for c, nid in enumerate(self.model_logs.get((tenant, key), ()), start=1):
                if (
                    c <= cursor
                    and nid not in self.swept
                    and not self.is_acked(tenant, user, key, c)
                ):
                    changed += 1
            self.acked.setdefault((tenant, user, key), Acked()).raises.append((step, cursor))
        for nid in dict.fromkeys(ids):
            sent = self.sent.get(nid)
            if sent is None or sent.accepted.tenant != tenant or nid in self.swept:
                continue
            key_or_none = self.log_key_for(sent, user)
            if key_or_none is None:
                continue
            cursor = sent.cursors[key_or_none]
            if not self.is_acked(tenant, user, key_or_none, cursor):
                self.acked.setdefault((tenant, user, key_or_none), Acked()).cursors[cursor] = step
                changed += 1
        return changed

    # -- what a client checks on every event -----------------------------------------------

    def writer(self, client: Client) -> Callable[[bytes], Awaitable[None]]:
        async def write(data: bytes) -> None:
            self.check_event(client, stream_pb2.SubscribeResponse.FromString(data))
            gate = client.gate
            client.in_flight += 1
            try:
                if gate is not None:
                    await gate.wait()
            finally:
                client.in_flight -= 1

        return write

    def check_event(self, client: Client, response: stream_pb2.SubscribeResponse) -> None:
        kind = response.WhichOneof("event")
        if not client.started:
            assert kind == "session_started", kind
            started = response.session_started
            assert started.tenant_id == client.tenant
            assert started.user_id == client.user
            assert list(started.channels) == client.channels
            client.started = True
            return
        # No ticker runs, so there are no heartbeats; nobody closes a stream from the server.
        assert kind == "deliveries", f"unexpected {kind} event"
        deliveries = response.deliveries.deliveries
        assert 1 <= len(deliveries) <= BATCH_MAX, len(deliveries)
        now = self.clock.now()
        for delivery in deliveries:
            self.check_delivery(client, delivery, now)
        # A watermark counts its whole batch ("written before or together with").
        for delivery in deliveries:
            self.check_resume_cursor(client, delivery, now)

    def check_delivery(self, client: Client, d: stream_pb2.Delivery, now: float) -> None:
        n = d.notification
        sent = self.sent.get(n.id)
        assert sent is not None, f"unknown notification {n.id}"
        assert n == sent.notification, "the notification changed on its way"
        # 1. Only the stream's own tenant, and only what is addressed to it.
        assert n.tenant_id == client.tenant, f"{n.tenant_id} delivered to {client.tenant}"
        key = key_of_name(d.log, client.user)
        assert key in client.log_keys, f"{d.log} delivered, the stream reads {client.log_keys}"
        assert self.log_key_for(sent, client.user) == key, (
            f"{n.target} delivered in log {d.log} to {client.user} on {client.channels}"
        )
        # Cursors are dense per log, in dispatch order.
        assert d.cursor == sent.cursors[key], (d.cursor, sent.cursors)
        # 2. Nothing expired.
        assert now < sent.expires_at, f"delivered at {now}, expired at {sent.expires_at}"
        # 5. Nothing acked is queued: an acked entry is only written if it was already waiting
        #    in a stalled stream's buffer when the ack came.
        since = self.acked_since(client.tenant, client.user, key, d.cursor)
        if since is not None:
            queued = client.queued_at_ack.get(since, {}).get(key, 0)
            assert since > client.quiet_step, f"{d.log}@{d.cursor} acked, yet sent"
            assert d.cursor <= queued, f"{d.log}@{d.cursor} acked before it was queued, yet sent"
        attempts = client.attempts.setdefault((key, d.cursor), [])
        tried = len(attempts)
        # 5. A repeat is a redelivery: numbered, at most max_attempts, after its ack timeout.
        assert d.attempt == tried + 1, f"{d.log}@{d.cursor}: attempt {d.attempt} after {tried}"
        assert d.attempt <= MAX_ATTEMPTS
        if tried:
            waited = now - attempts[-1]
            assert waited >= 0.8 * ack_delay(tried) - 1e-6, f"redelivered after {waited}s"
            event(f"redelivered (attempt {d.attempt})")
        else:
            # 4. First attempts of one log and priority go out in cursor order.
            lane = (key, n.priority)
            assert d.cursor > client.last_first.get(lane, 0), (
                f"{d.log}@{d.cursor} after @{client.last_first.get(lane)} at priority {lane[1]}"
            )
            client.last_first[lane] = d.cursor
        attempts.append(now)
        self.received.setdefault((client.tenant, client.user), {})[n.id] = (d.log, d.cursor)

    def check_resume_cursor(self, client: Client, d: stream_pb2.Delivery, now: float) -> None:
        """4. resume_cursor is a watermark: everything live at or below it was written."""
        key = key_of_name(d.log, client.user)
        resume = d.resume_cursor
        assert resume <= len(self.model_logs[(client.tenant, key)]), "resume past the log's end"
        assert resume >= client.resume.get(key, 0), "a resume cursor moved back"
        client.resume[key] = resume
        seen = self.seen_resume.setdefault((client.tenant, client.user), {})
        seen[d.log] = max(seen.get(d.log, 0), resume)
        for cursor in range(1, resume + 1):
            if self.entry(client.tenant, key, cursor).expires_at <= now:
                continue
            if self.is_acked(client.tenant, client.user, key, cursor):
                continue
            assert (key, cursor) in client.attempts, (
                f"resume_cursor {resume} of {d.log} passes unwritten live cursor {cursor}"
            )

    # -- rules -----------------------------------------------------------------------------

    @rule(
        tenant=st.sampled_from(TENANTS),
        specs=st.lists(notification_specs, min_size=1, max_size=8),
    )
    def send(self, tenant: str, specs: list[tuple[notification_pb2.Target, int, int]]) -> None:
        """A batch as ingest completes it (ids, tenant, timestamps), dispatched at once."""
        now = self.clock.now()
        batch: list[Accepted] = []
        for target, priority, ttl in specs:
            self.next_id += 1
            n = notification_pb2.Notification(
                id=f"{self.next_id:032x}",
                tenant_id=tenant,
                priority=priority,  # type: ignore[arg-type]
                ttl_seconds=ttl,
            )
            n.target.CopyFrom(target)
            n.content.title = f"n{self.next_id}"
            n.created_at.CopyFrom(timestamp(now))
            n.expires_at.CopyFrom(timestamp(now + ttl))
            accepted = accepted_from_proto(n, n.SerializeToString())
            batch.append(accepted)
            if accepted.kind is TargetKind.CHANNEL:
                keys = [channel_log(accepted.channel)]
            elif accepted.kind is TargetKind.BROADCAST:
                keys = [BROADCAST]
            else:
                keys = [user_log(u) for u in accepted.user_ids]
            cursors = {}
            for key in keys:
                ids = self.model_logs.setdefault((tenant, key), [])
                ids.append(n.id)
                cursors[key] = len(ids)
            self.sent[n.id] = Sent(n, accepted, cursors)
        counts = self.run(self.dispatcher.dispatch(batch))
        assert counts == [len(a.user_ids) for a in batch]

    @rule(
        data=st.data(),
        tenant=st.sampled_from(TENANTS),
        user=st.sampled_from(USERS),
        channels=st.lists(st.sampled_from(CHANNELS), max_size=3),
        resume=st.sampled_from(["none", "seen", "arbitrary"]),
    )
    def connect(
        self, data: st.DataObject, tenant: str, user: str, channels: list[str], resume: str
    ) -> None:
        names = ["user", BROADCAST, *(channel_log(c) for c in dict.fromkeys(channels))]
        cursors: dict[str, int] = {}
        if resume == "seen":
            seen = self.seen_resume.get((tenant, user), {})
            cursors = {name: seen[name] for name in names if name in seen}
        elif resume == "arbitrary":
            # Any cursor is allowed, also one beyond the log's head (it is then ignored).
            for name in names:
                head = len(self.model_logs.get((tenant, key_of_name(name, user)), []))
                cursor = data.draw(st.none() | st.integers(0, head + 2))
                if cursor is not None:
                    cursors[name] = cursor
        self.open(tenant, user, channels, cursors)

    @initialize(
        streams=st.lists(
            st.tuples(
                st.sampled_from(TENANTS),
                st.sampled_from(USERS),
                st.lists(st.sampled_from(CHANNELS), max_size=2),
            ),
            max_size=3,
        )
    )
    def connect_first(self, streams: list[tuple[str, str, list[str]]]) -> None:
        """Some streams are open from the start, so that early sends already reach them."""
        for tenant, user, channels in streams:
            self.open(tenant, user, channels, {})

    def open(self, tenant: str, user: str, channels: list[str], cursors: dict[str, int]) -> None:
        opening = self.core.open(
            tenant=tenant, user_id=user, device="t", channels=channels, cursors=cursors
        )
        open_already = sum(1 for c in self.clients if (c.tenant, c.user) == (tenant, user))
        if open_already >= MAX_SESSIONS_PER_USER:
            with pytest.raises(ResourceExhausted):
                self.run(opening)
            event("a session over the per-user limit is refused")
            return
        self.step += 1
        session = self.loop.run_until_complete(opening)
        client = Client(tenant, user, list(dict.fromkeys(channels)), session, quiet_step=self.step)
        self.hold(client, cursors)
        client.task = self.loop.create_task(self.core.run(session, self.writer(client)))
        self.clients.append(client)
        self.settle()

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        self.drop(data.draw(st.sampled_from(self.clients)))

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), with_cursors=st.booleans())
    def reconnect(self, data: st.DataObject, with_cursors: bool) -> None:
        """A stream drops; its client comes back with the resume cursors it last saw, or none."""
        client = data.draw(st.sampled_from(self.clients))
        self.drop(client)
        cursors = (
            {client_log_name(key): c for key, c in client.resume.items()} if with_cursors else {}
        )
        self.open(client.tenant, client.user, client.channels, cursors)

    def drop(self, client: Client) -> None:
        self.clients.remove(client)
        assert client.task is not None
        client.task.cancel()

        async def leave() -> None:
            assert client.task is not None
            await asyncio.gather(client.task, return_exceptions=True)
            if not client.task.cancelled():
                client.task.result()
            await self.core.close(client.session)

        self.run(leave())

    @precondition(lambda self: self.clients)
    @rule(
        data=st.data(),
        join=st.lists(st.sampled_from(CHANNELS), max_size=2),
        leave=st.lists(st.sampled_from(CHANNELS), max_size=2),
    )
    def change_channels(self, data: st.DataObject, join: list[str], leave: list[str]) -> None:
        client = data.draw(st.sampled_from(self.clients))
        # Leaves first, then joins; a channel left and joined again replays from the ack mark.
        for channel in leave:
            if channel in client.channels:
                client.channels.remove(channel)
                client.forget_log(channel_log(channel))
        for channel in join:
            if channel not in client.channels:
                client.channels.append(channel)
        channels = self.run(
            self.core.change_channels(client.tenant, client.session.session_id, join, leave)
        )
        assert channels == client.channels

    @precondition(lambda self: any(c.gate is None for c in self.clients))
    @rule(data=st.data(), calls=st.integers(1, 8))
    def stall(self, data: st.DataObject, calls: int) -> None:
        """The client stops reading for the next `calls` core calls: its writes block and
        entries pile up in the stream's buffer (it may overflow, expire or be acked there)."""
        client = data.draw(st.sampled_from(self.reading()))
        client.gate = asyncio.Event()
        client.stalled_for = calls

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        # Mostly a user who received something; any user of any tenant otherwise.
        everyone = [(t, u) for t in TENANTS for u in USERS]
        tenant, user = data.draw(st.sampled_from(sorted(self.received) + everyone))
        received = self.received.get((tenant, user), {})
        # Mostly what the user received; sometimes anything sent, even to others or elsewhere.
        pool = sorted(received) + sorted(self.sent)
        ids = data.draw(st.lists(st.sampled_from(pool), max_size=4)) if pool else []
        positions = sorted(
            set(received.values()) | set(self.seen_resume.get((tenant, user), {}).items())
        )
        up_to = (
            dict(data.draw(st.lists(st.sampled_from(positions), max_size=2))) if positions else {}
        )
        step = self.step + 1  # the step of the ack call below
        for client in self.clients:
            if (client.tenant, client.user) == (tenant, user):
                # What the stream had queued when the ack came (a stalled one may still write it).
                client.queued_at_ack[step] = {
                    key.stored: state.enqueued for key, state in client.session.logs.items()
                }
        expected = self.model_ack(tenant, user, ids, up_to, step)
        if expected:
            event("an ack acked something")
        assert self.run(self.core.ack(tenant, user, ids, up_to)) == expected

    @rule(
        seconds=st.one_of(st.sampled_from(ROUND_SECONDS), st.integers(1, 30)),
    )
    def advance(self, seconds: int) -> None:
        """Time passes and the ack timers that came due fire (the node's ticker does both)."""
        self.run(self.clock.advance(seconds))
        self.redeliver()

    @rule()
    def redeliver(self) -> None:
        now = self.clock.now()
        self.run(self.core.timers.redeliver(now))
        self.redelivered_at = now

    @rule()
    def sweep(self) -> None:
        now = self.clock.now()
        expired = [
            nid for nid, s in self.sent.items() if nid not in self.swept and now >= s.expires_at
        ]
        dropped = self.run(self.core.timers.sweep_expired())
        assert dropped == sum(len(self.sent[nid].cursors) for nid in expired)
        self.swept.update(expired)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def nothing_unexpired_is_lost(self) -> None:
        """3. A reading stream has been written every live, unacked entry of its logs."""
        now = self.clock.now()
        for client in self.reading():
            for key in client.log_keys:
                ids = self.model_logs.get((client.tenant, key), [])
                for cursor, nid in enumerate(ids, start=1):
                    if self.sent[nid].expires_at <= now:
                        continue
                    if self.is_acked(client.tenant, client.user, key, cursor):
                        continue
                    assert (key, cursor) in client.attempts, (
                        f"{client.tenant}/{client.user} never got {key}@{cursor}"
                    )

    @invariant()
    def unacked_deliveries_are_retried(self) -> None:
        """A live, unacked delivery is written again once its ack timeout has passed."""
        for client in self.reading():
            for (key, cursor), attempts in client.attempts.items():
                tried = len(attempts)
                if tried >= MAX_ATTEMPTS:
                    event("an entry used up its attempts")
                    continue
                if self.entry(client.tenant, key, cursor).expires_at <= self.clock.now():
                    continue  # expired since: dropped, not resent
                if self.is_acked(client.tenant, client.user, key, cursor):
                    continue
                due = attempts[-1] + 1.2 * ack_delay(tried)
                assert self.redelivered_at < due + 1e-6, (
                    f"{key}@{cursor} not redelivered after attempt {tried}"
                )

    @invariant()
    def logs_hold_what_was_sent(self) -> None:
        """Per log, cursors count up by 1 from 1 in dispatch order; only sweeps remove entries."""
        for (tenant, key), ids in self.model_logs.items():
            entries = self.loop.run_until_complete(
                self.logs.read(tenant, LogKey.from_stored(key), 0, len(ids) + 1)
            )
            expected = [(c, nid) for c, nid in enumerate(ids, start=1) if nid not in self.swept]
            assert [(e.cursor, e.notification_id) for e in entries] == expected
            [head] = self.loop.run_until_complete(
                self.logs.heads(tenant, [LogKey.from_stored(key)])
            )
            assert head.cursor == len(ids)

    @invariant()
    def sessions_are_counted(self) -> None:
        assert self.core.session_count == len(self.clients)

    @invariant()
    def buffered_bytes_are_counted_exactly(self) -> None:
        sessions = list(self.core.hub.sessions.values())
        for session in sessions:
            waiting = [p for lane in session.lanes or () for p in lane]
            assert session.waiting == len(waiting)
            assert session.waiting_bytes == sum(entry_size(p.entry) for p in waiting)
        # A batch whose write is in flight counts until the write completes.
        assert self.core.budget.used == sum(s.waiting_bytes + s.writing_bytes for s in sessions)


DeliveryMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDelivery = DeliveryMachine.TestCase


class ByteBoundDeliveryMachine(DeliveryMachine):
    """The same machine with buffers bounded by bytes before entries: a few entries per
    session and fewer on the node than its sessions together, so both bounds hold streams back."""

    SETTINGS: ClassVar[dict[str, Any]] = {
        "session_buffer": 1000,
        "session_buffer_bytes": 2048,
        "node_buffer_bytes": 3072,
    }


ByteBoundDeliveryMachine.TestCase.settings = DeliveryMachine.TestCase.settings
TestByteBoundDelivery = ByteBoundDeliveryMachine.TestCase


@pytest.mark.asyncio
async def test_rejoining_a_channel_drops_what_was_queued_before_leaving() -> None:
    """The machine's first find, kept as a plain regression test: a stream leaves and rejoins a
    channel while entries of it wait in its buffer; they were written, then replayed again."""
    clock = ManualClock()
    core, dispatcher, _ = new_core(clock, batch_max=1)
    reading = asyncio.Event()
    written: list[tuple[int, int]] = []  # (cursor, attempt)

    async def write(data: bytes) -> None:
        response = stream_pb2.SubscribeResponse.FromString(data)
        if response.WhichOneof("event") == "deliveries":
            written.extend((d.cursor, d.attempt) for d in response.deliveries.deliveries)
            await reading.wait()  # a client that does not read yet: the write blocks

    async def settle() -> None:
        for _ in range(QUIESCE_ROUNDS):
            await asyncio.sleep(0)

    def to_news(number: int) -> Accepted:
        n = notification_pb2.Notification(id=f"{number:032x}", tenant_id="acme", ttl_seconds=60)
        n.target.channel = "news"
        n.content.title = "t"
        n.created_at.CopyFrom(timestamp(clock.now()))
        n.expires_at.CopyFrom(timestamp(clock.now() + 60))
        return accepted_from_proto(n, n.SerializeToString())

    session = await core.open(
        tenant="acme", user_id="alice", device="t", channels=["news"], cursors={}
    )
    task = asyncio.create_task(core.run(session, write))
    try:
        await settle()
        await dispatcher.dispatch([to_news(1), to_news(2)])
        await settle()  # news@1 is being written, news@2 waits in the session's buffer
        await core.change_channels("acme", session.session_id, join=["news"], leave=["news"])
        reading.set()
        await settle()
        # Joining replays news@1 and news@2, once each; nothing queued before leaving is sent.
        assert written == [(1, 1), (1, 1), (2, 1)]
        # An acked entry is never redelivered.
        assert await core.ack("acme", "alice", [f"{2:032x}"], {}) == 1
        await clock.advance(2 * ACK_TIMEOUT_S)
        await core.timers.redeliver(clock.now())
        await settle()
        assert (2, 2) not in written
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await core.close(session)
