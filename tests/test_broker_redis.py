"""What the Redis broker adds to the contract: its wire format, and how it lives through Redis
failures (a killed connection, Redis down, Redis restarted)."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from herald.node.v1 import node_pb2
from services.domain import channel_log, user_log
from services.stream.broker import Publication, PublicationHandler, ResetHandler
from services.stream.broker_redis import FORMAT_LOG_PUBLICATION, RedisBroker
from tests.broker_support import Recorder, publication
from tests.metrics_support import until
from tests.redis_support import (
    REDIS_URL,
    free_port,
    kill_pubsub_connections,
    note_aclose,
    redis_client,
    scratch_keyspace,
    throwaway_redis,
)

pytestmark = pytest.mark.asyncio

T1 = "tenant-1"
ALICE, NEWS = user_log("alice"), channel_log("news")
# No retries inside redis-py (what Redis.from_url gives): every failure reaches the broker's own
# reconnection loop.
NO_RETRY = Retry(NoBackoff(), 0)
# Retries inside redis-py: a pooled connection Redis closed is replaced, and a pub/sub
# connection reconnects and subscribes again inside a read.
RETRIES = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), 3)


@asynccontextmanager
async def node(
    url: str = REDIS_URL,
    prefix: str = "herald-test:",
    on_publication: PublicationHandler | None = None,
    on_reset: ResetHandler | None = None,
    **client_options: Any,
) -> AsyncIterator[tuple[RedisBroker, Recorder, str]]:
    """A broker on a client of its own (named, so its connection can be killed), started with
    a recorder's handlers or the ones given."""
    name = f"{prefix}node-{time.monotonic_ns()}"
    client = Redis.from_url(url, client_name=name, **client_options)
    broker = RedisBroker(client, prefix, owns_client=True, reconnect_max_s=0.2)
    recorder = Recorder()
    broker.start(on_publication or recorder.on_publication, on_reset or recorder.on_reset)
    try:
        yield broker, recorder, name
    finally:
        await broker.aclose()


async def test_a_publication_is_a_format_byte_and_a_log_publication_on_the_tenant_channel() -> None:
    async with scratch_keyspace() as (client, prefix), node(prefix=prefix) as (broker, _, _):
        assert broker.channel(T1, NEWS) == f"{prefix}{{tenant-1}}:log:channel:news"
        assert broker.channel("a{b}:c", ALICE) == f"{prefix}{{a%7Bb%7D:c}}:log:user:alice"
        async with client.pubsub() as listener:
            await listener.subscribe(broker.channel(T1, NEWS))
            await listener.get_message(timeout=5.0)  # the confirmation
            sent = publication(T1, NEWS, 12, count=2)
            await broker.publish([sent])
            message = await listener.get_message(timeout=5.0)
        assert message is not None
        data: bytes = message["data"]
        assert data[:1] == FORMAT_LOG_PUBLICATION
        decoded = node_pb2.LogPublication.FromString(data[1:])
        assert (decoded.tenant_id, decoded.log, decoded.epoch, decoded.head) == (
            T1,
            "channel:news",
            7,
            12,
        )
        assert [e.notification_field for e in decoded.entries] == [
            e.notification_field for e in sent.entries
        ]


async def test_a_publication_ends_with_its_publishers_origin() -> None:
    async with (
        scratch_keyspace() as (_, prefix),
        node(prefix=prefix) as (one, _, _),
        node(prefix=prefix) as (other, _, _),
    ):
        for sent in (publication(T1, NEWS, 3, count=2), Publication(T1, NEWS, 7, 3)):
            data = one.encode(sent)
            origin = node_pb2.LogPublication.FromString(data[1:]).origin
            assert origin != 0
            assert data.endswith(b"\x31" + struct.pack("<Q", origin))
            assert node_pb2.LogPublication.FromString(other.encode(sent)[1:]).origin != origin


async def test_own_publications_reach_the_node_once_inline_and_others_through_redis() -> None:
    async with (
        scratch_keyspace() as (_, prefix),
        node(prefix=prefix) as (one, mine, _),
        node(prefix=prefix) as (other, theirs, _),
    ):
        await one.subscribe(T1, NEWS)
        await other.subscribe(T1, NEWS)
        sent = publication(T1, NEWS, 5, count=2)
        await one.publish([sent, publication(T1, ALICE, 1)])  # nobody hears alice's log
        # Inline: the publisher's handler has it before publish returns.
        assert mine.publications == [sent]
        await theirs.until_count(1)
        assert theirs.publications == [sent]
        # Redis brought it back to the publisher too, and it was dropped: a later publication
        # of the other node's arrives alone.
        later = publication(T1, NEWS, 6)
        await other.publish([later])
        await mine.until_count(2)
        assert mine.publications == [sent, later]
        assert theirs.publications == [sent, later]


async def test_a_publication_goes_to_redis_only_when_another_node_hears_its_log() -> None:
    async with (
        scratch_keyspace() as (client, prefix),
        node(prefix=prefix) as (one, mine, _),
        node(prefix=prefix) as (other, theirs, _),
    ):
        channel = one.channel(T1, NEWS)

        async def listeners() -> int:
            [(_, count)] = await client.pubsub_numsub(channel)
            return int(count)

        async def _is(count: Awaitable[int], expected: int) -> bool:
            return await count == expected

        async def publish(head: int) -> tuple[Publication, float]:
            unheard = metrics_value("herald_broker_unheard_total")
            sent = publication(T1, NEWS, head)
            await one.publish([sent])
            await one.flush()
            return sent, metrics_value("herald_broker_unheard_total") - unheard

        # Alone on the log: its sessions get it inline, and nothing goes to pub/sub.
        await one.subscribe(T1, NEWS)
        alone, unheard = await publish(1)
        assert unheard == 1
        assert mine.publications == [alone]
        # Another node hears it: it goes out, and only that node reads it from Redis. The
        # publisher learnt that nobody else heard the log, so this one went head-only (that node
        # reads the entries from the log); its answer says somebody does now, so the next one
        # carries its entries.
        await other.subscribe(T1, NEWS)
        shared, unheard = await publish(2)
        assert unheard == 0
        await theirs.until_count(1)
        assert theirs.publications == [shared._replace(entries=())]
        assert mine.publications == [alone, shared]  # its own sessions get the entries inline
        # The publisher need not hear the log itself.
        await one.unsubscribe(T1, NEWS)
        not_mine, unheard = await publish(3)
        assert unheard == 0
        await theirs.until_count(2)
        assert theirs.publications == [shared._replace(entries=()), not_mine]
        # Once the other node left (Redis processed its UNSUBSCRIBE), nobody is told.
        await one.subscribe(T1, NEWS)
        await other.unsubscribe(T1, NEWS)
        await until(lambda: _is(listeners(), 1))
        last, unheard = await publish(4)
        assert unheard == 1
        assert mine.publications == [alone, shared, last]
        assert theirs.publications == [shared._replace(entries=()), not_mine]


async def test_publications_nobody_else_hears_go_head_only_after_the_first() -> None:
    """What no other node hears is not encoded with its entries again (the script's answer
    says so), as long as nobody hears it; a channel's first publication carries them."""
    async with (
        scratch_keyspace() as (client, prefix),
        node(prefix=prefix) as (one, _, _),
    ):
        channel = one.channel(T1, NEWS)
        async with client.pubsub() as listener:
            await listener.subscribe(channel)
            await listener.get_message(timeout=5.0)  # the confirmation
            first = publication(T1, NEWS, 1, count=2)
            await one.publish([first])
            message = await listener.get_message(timeout=5.0)
            assert message is not None
            assert len(_decoded(message["data"]).entries) == 2
            await listener.unsubscribe(channel)
            await listener.get_message(timeout=5.0)
        # Nobody hears it now: sent to the script head-only from the second one on.
        later = [publication(T1, NEWS, head, count=2) for head in (3, 5, 7)]
        queued = []
        for sent in later:
            await one.publish([sent])
            queued.extend(data for _, data in one._outbox)  # what the script gets
            await one.flush()
        # The answer about `first` said somebody heard it; the one about 3, that nobody did.
        assert queued == [
            one.encode(later[0]),
            one.encode(later[1], with_entries=False),
            one.encode(later[2], with_entries=False),
        ]
        assert [len(_decoded(data).entries) for data in queued] == [2, 0, 0]


async def test_entries_go_along_up_to_max_entries_bytes_encoded() -> None:
    sent = publication(T1, ALICE, 5, count=3, size=1000)
    async with redis_client() as client:
        unbounded = RedisBroker(client, "herald-test:", max_entries_bytes=1 << 30)
        head_only = len(RedisBroker(client, "herald-test:", max_entries_bytes=0).encode(sent))
        size = len(unbounded.encode(sent)) - head_only
        at_limit = RedisBroker(client, "herald-test:", max_entries_bytes=size)
        below = RedisBroker(client, "herald-test:", max_entries_bytes=size - 1)
        assert len(at_limit.encode(sent)) == head_only + size
        assert len(below.encode(sent)) == head_only
        # The notification fields alone are over the bound: not even encoded.
        assert len(RedisBroker(client, "herald-test:", 2999).encode(sent)) == head_only


async def test_messages_it_cannot_read_are_dropped_and_reading_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with scratch_keyspace() as (client, prefix), node(prefix=prefix) as (broker, seen, _):
        await broker.subscribe(T1, NEWS)
        channel = broker.channel(T1, NEWS)
        other_log = RedisBroker(client, prefix).encode(publication(T1, ALICE, 1))
        with caplog.at_level(logging.WARNING, "services.stream.broker_redis"):
            for garbage in (b"", b"\x02future format", b"\x01\xff\xff\xff", other_log):
                await client.publish(channel, garbage)
            await broker.publish([publication(T1, NEWS, 1)])
            await seen.until_count(1)
        assert seen.publications == [publication(T1, NEWS, 1)]
        assert "dropped" in caplog.text


async def test_a_failing_handler_does_not_stop_the_reader() -> None:
    seen = Recorder()
    calls: list[Publication] = []

    def failing(publication: Publication) -> None:
        calls.append(publication)
        if len(calls) == 1:
            raise RuntimeError("handler bug")
        seen.on_publication(publication)

    async with node(on_publication=failing) as (broker, _, _):
        await broker.subscribe(T1, NEWS)
        await broker.publish([publication(T1, NEWS, 1)])
        await broker.publish([publication(T1, NEWS, 2)])
        await seen.until_count(1)
        assert seen.publications == [publication(T1, NEWS, 2)]


@pytest.mark.parametrize("retry", ["redis-py retries", "no retries"])
async def test_a_killed_connection_resubscribes_what_is_subscribed_then_resets(retry: str) -> None:
    options = {"retry": NO_RETRY if retry == "no retries" else RETRIES}
    seen = Recorder()
    published_on_reset: list[asyncio.Task[None]] = []

    def on_reset() -> None:
        seen.on_reset()
        # Sent the moment the broker resets: its subscriptions are back, so this cannot be lost.
        published_on_reset.append(asyncio.create_task(broker.publish([publication(T1, NEWS, 9)])))

    async with (
        scratch_keyspace() as (admin, prefix),
        node(prefix=prefix, on_publication=seen.on_publication, on_reset=on_reset, **options) as (
            broker,
            _,
            name,
        ),
    ):
        await broker.subscribe(T1, NEWS)
        await broker.subscribe(T1, ALICE)
        await broker.unsubscribe(T1, ALICE)
        assert await kill_pubsub_connections(admin, name) == 1
        await seen.until_count(1)
        assert seen.resets == 1
        assert seen.publications == [publication(T1, NEWS, 9)]
        numsub = dict(
            await admin.pubsub_numsub(broker.channel(T1, NEWS), broker.channel(T1, ALICE))
        )
        assert numsub == {
            broker.channel(T1, NEWS).encode(): 1,
            broker.channel(T1, ALICE).encode(): 0,
        }
        await asyncio.gather(*published_on_reset)


async def test_redis_down_costs_no_wait_and_no_error(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.WARNING, "services.stream.broker_redis"):
        async with node(url, retry=NO_RETRY, socket_connect_timeout=1.0) as (broker, seen, _):
            async with asyncio.timeout(2.0):
                await broker.subscribe(T1, NEWS)
                await broker.publish([publication(T1, NEWS, 1)])
                await broker.unsubscribe(T1, NEWS)
    # Its own sessions still get it (inline); other nodes will through the catch-up check.
    assert seen.publications == [publication(T1, NEWS, 1)]
    assert "could not publish" in caplog.text
    assert "no Redis pub/sub connection" in caplog.text


async def test_after_redis_restarts_the_broker_resubscribes_and_resets() -> None:
    async with (
        throwaway_redis() as server,
        # The listening node's client never retries: its own loop reconnects.
        node(server.url, retry=NO_RETRY) as (broker, seen, _),
        # The publishing node's client retries, which replaces the pooled connections Redis
        # closed when it stopped.
        node(server.url, retry=RETRIES) as (publisher, _, _),
    ):
        await broker.subscribe(T1, NEWS)
        await publisher.publish([publication(T1, NEWS, 1)])
        await seen.until_count(1)
        await server.stop()
        # Lost: Redis is down. The log still has it, and the reset makes the node read it.
        await publisher.publish([publication(T1, NEWS, 2)])
        await publisher.flush()  # sent in the background: it has failed before Redis is back
        await broker.subscribe(T1, ALICE)
        await server.start()
        await seen.until(lambda: seen.resets >= 1)
        await publisher.publish([publication(T1, NEWS, 3), publication(T1, ALICE, 1)])
        await seen.until_count(3)
        assert seen.publications == [
            publication(T1, NEWS, 1),
            publication(T1, NEWS, 3),
            publication(T1, ALICE, 1),
        ]
        assert seen.resets == 1


async def test_aclose_closes_the_pubsub_connection_and_only_an_owned_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def pubsub_names() -> list[str]:
        return [c["name"] for c in await admin.client_list(_type="pubsub")]

    closed: list[str] = []
    async with redis_client() as admin, redis_client(client_name="herald-test:shared") as shared:
        note_aclose(monkeypatch, shared, "shared", closed)
        broker = RedisBroker(shared, "herald-test:")
        broker.start(Recorder().on_publication, Recorder().on_reset)
        await broker.subscribe(T1, NEWS)
        assert (await pubsub_names()).count("herald-test:shared") == 1
        await broker.aclose()
        assert "herald-test:shared" not in await pubsub_names()
        assert closed == []
        async with redis_client() as owned:
            note_aclose(monkeypatch, owned, "owned", closed)
            await RedisBroker(owned, "herald-test:", owns_client=True).aclose()
            assert closed == ["owned"]


async def test_a_publication_it_cannot_encode_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        scratch_keyspace() as (_, prefix),
        node(prefix=prefix) as (broker, _, _),
        node(prefix=prefix) as (other, seen, _),
    ):
        await other.subscribe(T1, NEWS)
        with caplog.at_level(logging.ERROR, "services.stream.broker_redis"):
            await broker.publish([publication(T1, NEWS, 1, epoch=-1)])
        assert "could not encode" in caplog.text
        await broker.publish([publication(T1, NEWS, 2)])
        await seen.until_count(1)
        assert seen.publications == [publication(T1, NEWS, 2)]


async def test_publish_never_waits_for_a_redis_that_stopped_answering() -> None:
    """A Redis that accepts and never answers (a host gone, no RST): `publish` returns at once,
    the node's own readers have the publication, and what waits for Redis is bounded (the
    oldest dropped and counted: the catch-up check delivers them)."""
    stuck: list[asyncio.StreamWriter] = []

    async def never_answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stuck.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Redis.from_url(f"redis://127.0.0.1:{port}/0", retry=NO_RETRY)
    broker = RedisBroker(client, "herald-test:", owns_client=True, outbox_limit=3)
    recorder = Recorder()
    # Not started: the reader would wait for the silent server too; the own hand-over needs a
    # handler and a subscription, so the handler is set the way `start` sets it.
    broker._on_publication = recorder.on_publication
    broker._channels[broker.channel(T1, NEWS).encode()] = (T1, NEWS)
    failed = metrics_value("herald_broker_publish_failed_total")
    try:
        async with asyncio.timeout(1.0):
            await broker.publish([publication(T1, NEWS, 1)])
            await asyncio.sleep(0.05)  # the publisher task took it, and waits for an answer
            for head in range(2, 7):
                await broker.publish([publication(T1, NEWS, head)])
        assert [p.head for p in recorder.publications] == [1, 2, 3, 4, 5, 6]
        # The first is in the script call that hangs; of the five behind it, three wait.
        assert metrics_value("herald_broker_publish_failed_total") - failed == 2
        assert [head for _, head in _queued_heads(broker)] == [4, 5, 6]
    finally:
        await broker.aclose()  # gives up on the silent server after its flush bound
        for writer in stuck:
            writer.close()
        server.close()
        await server.wait_closed()


def metrics_value(name: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(name)
    return 0.0 if value is None else value


def _decoded(data: bytes) -> node_pb2.LogPublication:
    assert data[:1] == FORMAT_LOG_PUBLICATION
    return node_pb2.LogPublication.FromString(data[1:])


def _queued_heads(broker: RedisBroker) -> list[tuple[bytes, int]]:
    return [
        (channel, node_pb2.LogPublication.FromString(data[1:]).head)
        for channel, data in broker._outbox
    ]
