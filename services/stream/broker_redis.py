"""Broker on Redis pub/sub: a channel per (tenant, log), one pub/sub connection per node.

A publication is one PUBLISH (a batch of them in one script call, sent by a publisher task of
the broker's own: `publish` hands them to this node's readers, queues them and returns) on
`<prefix>{<tenant>}:log:<log key>` (services/redis_keys.py), made only when another node hears
that channel (below), of a format byte, 1, and a
herald.node.v1.LogPublication (a user event: format byte 2 and a
herald.node.v1.UserEventPublication, on the channel of the user's own log). Its entries travel
with it while they take at most `max_entries_bytes` encoded; beyond that it carries the head
only and the nodes read the log.
Pub/sub is a wake-up, never the record: Redis drops a subscriber whose output buffer
overflows, and a subscriber misses, silently, whatever was sent while it reconnected. So every
reconnection ends with `on_reset`, and the catch-up check (services/stream/timers.py) covers a
loss that no reconnection reveals.

Invariants:

- `_channels` is what this node wants to hear: a channel is in it from `subscribe` until
  `unsubscribe`, whether Redis is reachable or not, and every (re)connection subscribes all of
  it again.
- A message reaches the handler only when its channel is in `_channels` and names the same
  tenant and log as the message: late messages of a channel just unsubscribed are dropped.
- A publication of this node's reaches its handler once, inline in `publish` (when its channel
  is in `_channels`), never again from Redis: the message carries this broker's random origin
  as its last field, and the reader drops those before decoding them.
- A publication is sent only to a channel another node hears: the script counts the channel's
  subscribers (PUBSUB NUMSUB) and publishes when they are more than this node's own
  subscription, which it counts only once Redis confirmed it on the current connection
  (`_heard`). The count and the PUBLISH are one step in Redis's order of commands, so a node
  whose SUBSCRIBE Redis processed before it gets the message, as it would without the check;
  a node alone on its logs (one node, or a user connected to one node only) sends nothing to
  pub/sub and reads nothing back. Counted as unheard in `herald_broker_unheard_total`. Where
  this node's subscription is gone from Redis before the node noticed (its connection dropped),
  a publication another node needed may go unsent: a lost publication, which the catch-up check
  covers, as it covers every other loss. (On Redis Cluster, NUMSUB counts one node's
  subscribers: sharded pub/sub would need SHARDNUMSUB; the broker does not run there yet,
  docs/redis.md.)
- `subscribe` returns once Redis confirmed the subscription, so a publication sent after it
  returned reaches this node. When it cannot wait (the broker is not started, Redis is out of
  reach) it returns at once, and the next connection resets; when the confirmation is slower
  than `subscribe_timeout_s`, the catch-up check covers the gap.
- `on_reset` is called after every connection that follows a failure (redis-py's own
  reconnection inside a read included) or a `subscribe` that could not wait, and only once Redis
  confirmed the connection's subscriptions: a log read it causes cannot miss a publication sent
  after that read.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import struct
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Final, cast

from google.protobuf.message import DecodeError
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from herald.node.v1 import node_pb2
from services import metrics
from services.domain import LogKey, user_log
from services.redis_keys import checked_client, checked_prefix, tenant_base
from services.stream.broker import (
    Publication,
    PublicationHandler,
    ResetHandler,
    UserEvent,
    UserEventHandler,
)
from services.stream.log import Entry
from services.wire import varint

log = logging.getLogger(__name__)

# The first byte of every message: which encoding follows. 1: a LogPublication.
FORMAT_LOG_PUBLICATION: Final = b"\x01"
# 2: a UserEventPublication.
FORMAT_USER_EVENT: Final = b"\x02"
# Publishes a batch in one command. Its one argument holds each message as a frame: the channel's
# length (4 bytes, big-endian), the channel, the message's length (4 bytes), this node's
# subscriptions to the channel (1 byte: 0 or 1), the message. A message goes only to a channel
# with more subscribers than this node's own (see the module invariants); the script answers, per
# message, 1 if it went and 0 if no other node hears the channel. One call instead of pipelined
# PUBLISH commands, which redis-py builds and parses one by one; one argument instead of three per
# message, which redis-py frames one by one (measured with one-entry publications in batches of
# 500: 13-16 us of the node's CPU per publication against 17-20 with three arguments; head-only
# as well, 4.0-4.4; docs/redis.md). The script touches no key.
_PUBLISH_MANY: Final = """
local blob = ARGV[1]
local heard = {}
local at = 1
while at <= #blob do
    local size, own
    size, at = struct.unpack('>I4', blob, at)
    local channel = string.sub(blob, at, at + size - 1)
    size, own, at = struct.unpack('>I4B', blob, at + size)
    if redis.call('PUBSUB', 'NUMSUB', channel)[2] > own then
        redis.call('PUBLISH', channel, string.sub(blob, at, at + size - 1))
        heard[#heard + 1] = 1
    else
        heard[#heard + 1] = 0
    end
    at = at + size
end
return heard
"""
_LENGTH: Final = struct.Struct(">I")
_LENGTH_OWN: Final = struct.Struct(">IB")
# Channels whose last publication no other node heard, remembered at most: past the bound the
# memory is cleared (every channel is then sent with its entries until its next answer).
_UNHEARD_LIMIT: Final = 65_536
# Logs whose channel and head-only encoding are kept made: past the bound they are made again.
_NAMES_LIMIT: Final = 65_536
_UINT64_END: Final = 1 << 64
# Publications per script call: a call holds Redis for its whole length.
_PUBLISH_CHUNK: Final = 500
# Messages queued for Redis at most: beyond, the oldest are dropped (and counted as failed).
_OUTBOX_LIMIT: Final = 100_000
# How long closing waits for queued publications to go out.
_CLOSE_FLUSH_S: Final = 1.0
# One warning per this many seconds about failed publishes or unreadable messages.
_WARN_INTERVAL_S: Final = 10.0


class RedisBroker:
    """Publishes a batch with one script call; hears its subscriptions on one pub/sub connection.

    Args:
        client: a client made with decode_responses=False; the pub/sub connection is taken from
            its pool for as long as the broker runs.
        prefix: what every channel starts with (no braces), e.g. "herald:".
        max_entries_bytes: the most the encoded entries of one publication may take; larger
            publications are sent head-only.
        owns_client: close the client in `aclose`; leave False when the client is shared.
        subscribe_timeout_s: how long `subscribe` waits for Redis to confirm.
        outbox_limit: messages waiting for Redis at most; beyond, the oldest are dropped.
        reconnect_min_s, reconnect_max_s: the bounds of the reconnection backoff (doubling,
            with jitter).
    """

    def __init__(
        self,
        client: Redis,
        prefix: str,
        max_entries_bytes: int = 16384,
        *,
        owns_client: bool = False,
        subscribe_timeout_s: float = 5.0,
        outbox_limit: int = _OUTBOX_LIMIT,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 5.0,
    ) -> None:
        self._client = checked_client(client)
        self._publish_many = self._client.register_script(_PUBLISH_MANY)
        # Messages waiting for the publisher task (FIFO): (channel, message); and the task while
        # it runs.
        self._outbox: deque[tuple[bytes, bytes]] = deque()
        self._outbox_limit = outbox_limit
        self._publisher: asyncio.Task[None] | None = None
        # This broker's tag on what it publishes, and how an encoding carrying it ends (field 6,
        # fixed64: the last field, see node.proto).
        self._origin = secrets.randbits(64) | 1
        self._own_suffix = b"\x31" + struct.pack("<Q", self._origin)
        self._prefix = checked_prefix(prefix)
        self._max_entries_bytes = max_entries_bytes
        self._owns_client = owns_client
        self._subscribe_timeout_s = subscribe_timeout_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._on_publication: PublicationHandler | None = None
        self._on_reset: ResetHandler | None = None
        self._on_user_event: UserEventHandler | None = None
        self._task: asyncio.Task[None] | None = None
        # Channel (as Redis returns it) -> the log it carries.
        self._channels: dict[bytes, tuple[str, LogKey]] = {}
        # The channels of `_channels` Redis confirmed on the current pub/sub connection: the
        # subscriptions Redis counts as this node's (emptied when the connection goes).
        self._heard: set[bytes] = set()
        # The reader's pub/sub while it holds a connection.
        self._pubsub: PubSub | None = None
        # Subscribes waiting for Redis to confirm, per channel, in the order they were sent;
        # each learns True (confirmed) or False (the connection went first).
        self._confirming: dict[bytes, deque[asyncio.Future[bool]]] = {}
        # The last connection failed; no new one yet.
        self._failing = False
        # A subscribe returned before Redis confirmed it: the next connection resets.
        self._unconfirmed = False
        # A (re)connection subscribed again: reset once Redis confirms.
        self._reset_pending = False
        self._warned_at: dict[str, float] = {}
        # Channels whose last publication no other node heard (the script's answer): their next
        # publications go head-only: encoding the entries for nobody took about a tenth of the
        # node's CPU samples in a durable SendBatch profile (py-spy, a single node, offline
        # users). A node that subscribes meanwhile reads the entries from the log, as
        # after any head-only publication; the answer to that publication makes the next ones
        # carry their entries again.
        self._unheard: set[bytes] = set()
        # (tenant, log) -> its channel, and the start of its head-only encoding (`_names`).
        self._named: dict[tuple[str, LogKey], tuple[bytes, bytes]] = {}
        # The last epoch `_head_only` encoded, and its field.
        self._epoch, self._epoch_field = 0, b""

    def channel(self, tenant: str, key: LogKey) -> str:
        """The channel of a log."""
        return f"{tenant_base(self._prefix, tenant)}:log:{key.stored}"

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, publications: Sequence[Publication]) -> None:
        if not publications:
            return
        named = [self._names(p.tenant, p.key) for p in publications]
        channels = [channel for channel, _ in named]
        self._deliver_own(publications, channels)
        unheard = self._unheard
        try:
            messages = [
                (channel, self._head_only(start, p))
                if channel in unheard or not p.entries
                else (channel, self.encode(p))
                for (channel, start), p in zip(named, publications, strict=True)
            ]
        except (ValueError, TypeError):
            # A field out of its protobuf range: a bug upstream, but never the dispatcher's.
            metrics.BROKER_PUBLISH_FAILED.inc(len(publications))
            log.exception("could not encode log updates; the catch-up check delivers them")
            return
        await self._send(messages, len(publications))

    async def publish_user_events(self, events: Sequence[UserEvent]) -> None:
        if not events:
            return
        handler = self._on_user_event
        messages: list[tuple[bytes, bytes]] = []
        for event in events:
            channel = self.channel(event.tenant, user_log(event.user_id)).encode()
            if handler is not None and channel in self._channels:
                try:
                    handler(event)
                except Exception:
                    log.exception("the user event handler failed")
            message = node_pb2.UserEventPublication(
                tenant_id=event.tenant,
                user_id=event.user_id,
                response=event.response,
                origin=self._origin,
            )
            messages.append((channel, FORMAT_USER_EVENT + message.SerializeToString()))
        await self._send(messages, len(events))

    async def _send(self, messages: list[tuple[bytes, bytes]], count: int) -> None:
        """Queues (channel, message) pairs for the publisher task and returns at once: the
        dispatcher's caller waits for its durable append, never for Redis (a publication is a
        wake-up; what it fails to announce, the catch-up check delivers). One task sends the
        queue in order, a chunk per script call, so what waits while a call is in flight goes
        out together in the next one."""
        outbox = self._outbox
        outbox.extend(messages)
        overflow = len(outbox) - self._outbox_limit
        if overflow > 0:
            for _ in range(overflow):
                outbox.popleft()
            metrics.BROKER_PUBLISH_FAILED.inc(overflow)
            self._warn(
                "outbox",
                "Redis takes publications slower than they come; dropped the oldest (the "
                "catch-up check delivers them)",
                None,
            )
        if self._publisher is None:
            self._publisher = asyncio.get_running_loop().create_task(
                self._publish_queued(), name="redis-broker-publisher"
            )

    async def _publish_queued(self) -> None:
        outbox = self._outbox
        try:
            while outbox:
                chunk = [outbox.popleft() for _ in range(min(len(outbox), _PUBLISH_CHUNK))]
                # This node's subscriptions as Redis counts them, taken as the script is sent.
                heard = self._heard
                frames: list[bytes] = []
                for channel, data in chunk:
                    frames.append(_LENGTH.pack(len(channel)))
                    frames.append(channel)
                    frames.append(_LENGTH_OWN.pack(len(data), channel in heard))
                    frames.append(data)
                try:
                    heard_by_others = await self._publish_many(args=[b"".join(frames)])
                except (RedisError, OSError) as error:
                    metrics.BROKER_PUBLISH_FAILED.inc(len(chunk))
                    self._warn(
                        "publish",
                        "could not publish log updates to Redis; the catch-up check delivers them",
                        error,
                    )
                else:
                    self._remember_unheard(chunk, heard_by_others)
        finally:
            self._publisher = None

    def _remember_unheard(self, chunk: list[tuple[bytes, bytes]], heard: list[int]) -> None:
        unheard = self._unheard
        if len(unheard) + len(chunk) > _UNHEARD_LIMIT:
            unheard.clear()
        count = 0
        for (channel, _), flag in zip(chunk, heard, strict=True):
            if flag:
                unheard.discard(channel)
            else:
                unheard.add(channel)
                count += 1
        metrics.BROKER_UNHEARD.inc(count)

    async def flush(self) -> None:
        """Waits until everything published so far was sent to Redis (or failed to be)."""
        while self._publisher is not None:
            await asyncio.shield(self._publisher)

    def _deliver_own(self, publications: Sequence[Publication], channels: list[bytes]) -> None:
        """Hands this node's own publications of the logs it hears (`channels`: theirs, in
        order) to its handler at once, as the memory broker does: no round trip through Redis,
        no decoding. Where Redis brings them back to this node too (another node hears the
        channel), `_deliver` drops them by their origin."""
        handler = self._on_publication
        if handler is None:
            return
        for p, channel in zip(publications, channels, strict=True):
            if channel not in self._channels:
                continue
            try:
                handler(p)
            except Exception:
                log.exception("the publication handler failed")

    def _names(self, tenant: str, key: LogKey) -> tuple[bytes, bytes]:
        """The log's channel, and its head-only encoding up to the epoch (the format byte, the
        tenant and log fields), made once per log while the log is in use."""
        names = self._named.get((tenant, key))
        if names is None:
            if len(self._named) >= _NAMES_LIMIT:
                self._named.clear()
            start = FORMAT_LOG_PUBLICATION
            for tag, text in ((b"\x0a", tenant), (b"\x12", key.stored)):
                raw = text.encode()
                if raw:  # proto3 leaves an empty string out
                    start += tag + varint(len(raw)) + raw
            names = self._named[(tenant, key)] = (self.channel(tenant, key).encode(), start)
        return names

    def _head_only(self, start: bytes, publication: Publication) -> bytes:
        """What `encode(publication, with_entries=False)` gives, by concatenation: the same
        bytes as protobuf's (fields in number order, zeros left out), without a message object."""
        epoch, head = publication.epoch, publication.head
        if not (0 <= epoch < _UINT64_END and 0 <= head < _UINT64_END):
            raise ValueError(f"epoch {epoch} or head {head} is out of the uint64 range")
        data = start
        if epoch:
            # A store's logs share their epoch (PostgreSQL: one per database), and it is large.
            if epoch != self._epoch:
                self._epoch, self._epoch_field = epoch, b"\x18" + varint(epoch)
            data += self._epoch_field
        if head:
            data += b"\x20" + varint(head)
        return data + self._own_suffix

    def encode(self, publication: Publication, *, with_entries: bool = True) -> bytes:
        """A format byte and the LogPublication, with the entries if they fit and are asked
        for."""
        message = node_pb2.LogPublication(
            tenant_id=publication.tenant,
            log=publication.key.stored,
            epoch=publication.epoch,
            head=publication.head,
            origin=self._origin,
        )
        entries = publication.entries
        # The notification fields alone are a lower bound of the encoded size.
        if (
            not with_entries
            or not entries
            or (sum(len(e.notification_field) for e in entries) > self._max_entries_bytes)
        ):
            return FORMAT_LOG_PUBLICATION + message.SerializeToString()
        head_size = message.ByteSize()
        add = message.entries.add
        for e in entries:
            add(
                cursor=e.cursor,
                notification_id=e.notification_id,
                priority=e.priority,
                created_at=e.created_at,
                expires_at=e.expires_at,
                notification_field=e.notification_field,
                trace_context=e.trace_context,
            )
        full = message.SerializeToString()
        if len(full) - head_size <= self._max_entries_bytes:
            return FORMAT_LOG_PUBLICATION + full
        message.ClearField("entries")
        return FORMAT_LOG_PUBLICATION + message.SerializeToString()

    # -- subscriptions ---------------------------------------------------------------------

    async def subscribe(self, tenant: str, key: LogKey) -> None:
        channel = self.channel(tenant, key).encode()
        if channel in self._channels:
            return
        self._channels[channel] = (tenant, key)
        if self._task is None or self._failing:
            # Not reading yet, or Redis is out of reach: the next connection subscribes it
            # and resets, so the session's read of its log is repeated then.
            self._unconfirmed = True
            return
        confirmed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        waiting = self._confirming.setdefault(channel, deque())
        waiting.append(confirmed)
        try:
            # Sending the SUBSCRIBE is bounded too: over a connection Redis dropped a moment
            # ago, redis-py reconnects inside the call.
            async with asyncio.timeout(self._subscribe_timeout_s):
                pubsub = self._pubsub
                # Without a pub/sub the reader is connecting: it subscribes every channel.
                if pubsub is not None:
                    await pubsub.subscribe(channel)
                if not await confirmed:
                    self._unconfirmed = True
        except (RedisError, OSError, TimeoutError) as error:
            # The reader reconnects, subscribes the channel and resets.
            self._unconfirmed = True
            self._warn("subscribe", "could not subscribe on Redis yet", error)
        finally:
            if confirmed in waiting:
                waiting.remove(confirmed)
            if not waiting and self._confirming.get(channel) is waiting:
                del self._confirming[channel]

    async def unsubscribe(self, tenant: str, key: LogKey) -> None:
        channel = self.channel(tenant, key).encode()
        if self._channels.pop(channel, None) is None:
            return
        # Before the UNSUBSCRIBE: while Redis may still count this node, publications go out.
        self._heard.discard(channel)
        pubsub = self._pubsub
        if pubsub is None:
            return
        try:
            await pubsub.unsubscribe(channel)
        except (RedisError, OSError) as error:
            # Harmless: its messages are dropped here, and a reconnection forgets it.
            self._warn("unsubscribe", "could not unsubscribe on Redis", error)

    # -- the reader ------------------------------------------------------------------------

    def start(
        self,
        on_publication: PublicationHandler,
        on_reset: ResetHandler,
        on_user_event: UserEventHandler | None = None,
    ) -> None:
        if self._task is not None:
            raise RuntimeError("the broker is already started")
        self._on_publication = on_publication
        self._on_reset = on_reset
        self._on_user_event = on_user_event
        self._task = asyncio.get_running_loop().create_task(
            self._read_forever(), name="redis-broker-reader"
        )

    async def _read_forever(self) -> None:
        delay = self._reconnect_min_s
        failures = 0
        while True:
            pubsub = self._client.pubsub()
            connection: Connection | None = None
            try:
                await pubsub.connect()  # type: ignore[no-untyped-call]  # redis-py: unannotated
                # redis-py annotates the attribute with its initial value, None.
                connection = cast("Connection", pubsub.connection)
                # redis-py may reconnect on its own inside a read (the client's retry policy).
                connection.register_connect_callback(self._reconnected)  # type: ignore[no-untyped-call]
                self._pubsub = pubsub
                if failures:
                    log.info(
                        "Redis pub/sub connection restored; re-reading every open log",
                        extra={"attempts": failures},
                    )
                must_reset = failures > 0 or self._unconfirmed
                self._unconfirmed = False
                if self._channels:
                    self._reset_pending = self._reset_pending or must_reset
                    await pubsub.subscribe(*self._channels)
                elif must_reset:
                    self._reset()
                failures = 0
                self._failing = False
                delay = self._reconnect_min_s
                await self._read(pubsub)
            except (RedisError, OSError) as error:
                if not failures:
                    log.warning(
                        "no Redis pub/sub connection; reconnecting with backoff",
                        extra={"error": repr(error)},
                    )
                failures += 1
                self._failing = True
            except Exception:
                log.exception("Redis broker reader failed; reconnecting")
                failures += 1
                self._failing = True
            finally:
                self._pubsub = None
                self._heard.clear()
                self._release_subscribers()
                if connection is not None:
                    connection.deregister_connect_callback(self._reconnected)  # type: ignore[no-untyped-call]
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py: unannotated
            # Jitter spreads the nodes' reconnections after a Redis restart.
            await asyncio.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311  # not crypto
            delay = min(delay * 2, self._reconnect_max_s)

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            message: dict[str, Any] | None = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            if self._reset_pending:
                # The first reply on a new connection confirms its subscriptions.
                self._reset_pending = False
                self._reset()
            kind = message["type"]
            if kind == "message":
                self._deliver(message["channel"], message["data"])
            elif kind == "subscribe":
                self._confirmed(message["channel"])

    async def _reconnected(self, connection: Connection) -> None:
        """redis-py reconnected the pub/sub connection inside a read and has sent SUBSCRIBE for
        every channel (its callback runs before this one): what was sent meanwhile is lost."""
        log.info("Redis pub/sub connection restored; re-reading every open log")
        # The new connection's confirmations (already asked for) count them again.
        self._heard.clear()
        pubsub = self._pubsub
        if pubsub is not None and pubsub.channels:
            self._reset_pending = True
        else:
            self._reset()

    def _deliver(self, channel: bytes, data: bytes) -> None:
        target = self._channels.get(channel)
        handler = self._on_publication
        if target is None or handler is None:
            return
        tenant, key = target
        if data.endswith(self._own_suffix):
            return  # this node's own: handed to the handler when it was published
        if data[:1] == FORMAT_USER_EVENT:
            self._deliver_user_event(tenant, key, data)
            return
        if data[:1] != FORMAT_LOG_PUBLICATION:
            self._warn("decode", "dropped a broker message of an unknown format", None)
            return
        try:
            message = node_pb2.LogPublication.FromString(data[1:])
        except DecodeError as error:
            self._warn("decode", "dropped an undecodable broker message", error)
            return
        if message.tenant_id != tenant or message.log != key.stored:
            self._warn("decode", "dropped a broker message naming another log", None)
            return
        entries = [
            Entry(
                e.cursor,
                e.notification_id,
                e.priority,
                e.created_at,
                e.expires_at,
                e.notification_field,
                e.trace_context,
            )
            for e in message.entries
        ]
        try:
            handler(Publication(tenant, key, message.epoch, message.head, entries))
        except Exception:
            log.exception("the publication handler failed")

    def _deliver_user_event(self, tenant: str, key: LogKey, data: bytes) -> None:
        handler = self._on_user_event
        if handler is None:
            return
        try:
            message = node_pb2.UserEventPublication.FromString(data[1:])
        except DecodeError as error:
            self._warn("decode", "dropped an undecodable broker message", error)
            return
        if message.tenant_id != tenant or user_log(message.user_id) != key:
            self._warn("decode", "dropped a broker message naming another log", None)
            return
        try:
            handler(UserEvent(tenant, message.user_id, message.response))
        except Exception:
            log.exception("the user event handler failed")

    def _confirmed(self, channel: bytes) -> None:
        if channel in self._channels:
            self._heard.add(channel)
        waiting = self._confirming.get(channel)
        while waiting:
            confirmed = waiting.popleft()
            if not confirmed.done():
                confirmed.set_result(True)
                return

    def _release_subscribers(self) -> None:
        """The connection is gone: subscribes stop waiting (the reconnection subscribes them)."""
        for waiting in self._confirming.values():
            for confirmed in waiting:
                if not confirmed.done():
                    confirmed.set_result(False)
        self._confirming.clear()

    def _reset(self) -> None:
        metrics.BROKER_RESETS.inc()
        handler = self._on_reset
        if handler is None:
            return
        try:
            handler()
        except Exception:
            log.exception("the reset handler failed")

    def _warn(self, what: str, message: str, error: BaseException | None) -> None:
        """Logs `message` at most once per interval per `what` (an outage repeats it)."""
        now = time.monotonic()
        if now - self._warned_at.get(what, -_WARN_INTERVAL_S) < _WARN_INTERVAL_S:
            return
        self._warned_at[what] = now
        log.warning(message, extra={"error": repr(error)} if error is not None else None)

    async def aclose(self) -> None:
        publisher = self._publisher
        if publisher is not None:
            # What was published before closing goes out, unless Redis cannot take it soon.
            done, _ = await asyncio.wait([publisher], timeout=_CLOSE_FLUSH_S)
            if not done:
                publisher.cancel()
                await asyncio.wait([publisher])
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        self._on_publication = None
        self._on_reset = None
        self._on_user_event = None
        if self._owns_client:
            await self._client.aclose()
