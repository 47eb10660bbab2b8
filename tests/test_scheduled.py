"""Scheduled sends through the real protocol (docs/scheduling.md): held until deliver_at on the
node's clock, then delivered as any other send; cancellable; on PostgreSQL they survive a
restart, and two ingest nodes on one database release each exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from pydantic import SecretStr

from herald.v1 import ingest_pb2, notification_pb2
from services.clock import ManualClock
from services.config import BackendSettings, DeliverySettings, IngestSettings
from services.ingest.scheduled import ScheduledStore
from services.model import accepted_from_proto
from tests.conftest import Deploy
from tests.harness import Herald, make_config, start_herald, to_user
from tests.ingest_support import inbox_titles, until
from tests.postgres import scratch_database
from tests.redis_support import REDIS_URL, delete_prefix, new_prefix, redis_client, require_redis
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

MINUTE = 60.0
# The tests move the clock by minutes and do not ack: no redelivery in between.
NO_REDELIVERY = DeliverySettings(ack_timeout_s=30 * 86_400, backoff_max_s=30 * 86_400)


def at(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.seconds = int(seconds)
    ts.nanos = round((seconds - int(seconds)) * 1e9)
    return ts


def scheduled(
    user: str, title: str, deliver_at: float, **fields: object
) -> notification_pb2.Notification:
    return to_user(user, title, deliver_at=at(deliver_at), **fields)


async def next_title(stream: Stream) -> str:
    [delivery] = await stream.deliveries(1)
    return delivery.notification.content.title


async def assert_held(herald: Herald, stream: Stream, marker: str) -> None:
    """Nothing held was delivered: a notification sent now is the next the stream gets."""
    await herald.backend().send(to_user("alice", marker))
    assert await next_title(stream) == marker


@pytest.mark.parametrize("topology", ["up", "split"])
async def test_a_scheduled_send_is_held_until_its_time_then_delivered(
    deploy: Deploy, topology: str
) -> None:
    herald, clock = await deploy(topology, delivery=NO_REDELIVERY)
    backend = herald.backend()
    stream = Stream(herald.user("alice"))
    await stream.start()
    due = clock.now() + 10 * MINUTE
    sent = await backend.send(scheduled("alice", "later", due, ttl_seconds=3600))
    assert (sent.scheduled, sent.duplicate, sent.recipient_count) == (True, False, 0)
    status = await backend.status(sent.notification_id)
    assert status.schedule_state == ingest_pb2.SCHEDULE_STATE_SCHEDULED
    assert status.deliver_at.seconds == int(due)
    assert [(r.user_id, r.state) for r in status.recipients] == [
        ("alice", ingest_pb2.DELIVERY_STATE_SCHEDULED)
    ]
    # The TTL counts from deliver_at.
    assert (status.created_at.seconds, status.expires_at.seconds) == (int(due), int(due) + 3600)

    await clock.advance(10 * MINUTE - 1)
    await assert_held(herald, stream, "before")
    assert await inbox_titles(herald.user("alice")) == ["before"]

    await clock.advance(1)
    [delivery] = await stream.deliveries(1)
    assert delivery.notification.id == sent.notification_id
    assert delivery.notification.content.title == "later"
    assert delivery.notification.deliver_at.seconds == int(due)
    assert delivery.notification.created_at.seconds == int(due)
    status = await backend.status(sent.notification_id)
    assert status.schedule_state == ingest_pb2.SCHEDULE_STATE_UNSPECIFIED
    assert status.recipients[0].state in (
        ingest_pb2.DELIVERY_STATE_QUEUED,
        ingest_pb2.DELIVERY_STATE_DELIVERED,
    )
    listed = await backend.list_scheduled()
    assert list(listed.notifications) == []
    # Delivered: too late to cancel.
    with pytest.raises(aio.AioRpcError) as refused:
        await backend.cancel_scheduled(sent.notification_id)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "delivered already" in (refused.value.details() or "")
    stream.cancel()


async def test_a_deliver_at_now_or_past_sends_at_once_and_a_repeat_key_answers_the_same_id(
    deploy: Deploy,
) -> None:
    herald, clock = await deploy(delivery=NO_REDELIVERY)
    backend = herald.backend()
    stream = Stream(herald.user("alice"))
    await stream.start()
    past = await backend.send(scheduled("alice", "past", clock.now() - 5))
    assert (past.scheduled, past.recipient_count) == (False, 1)
    assert await next_title(stream) == "past"
    now = await backend.send(scheduled("alice", "now", clock.now()))
    assert not now.scheduled
    assert await next_title(stream) == "now"

    first = await backend.send(scheduled("alice", "keyed", clock.now() + 60, idempotency_key="k1"))
    again = await backend.send(scheduled("alice", "keyed", clock.now() + 60, idempotency_key="k1"))
    assert first.scheduled
    assert not again.scheduled
    assert (again.notification_id, again.duplicate) == (first.notification_id, True)
    await clock.advance(60)
    assert await next_title(stream) == "keyed"
    await assert_held(herald, stream, "only once")
    stream.cancel()


async def test_send_batch_holds_some_and_sends_others(deploy: Deploy) -> None:
    herald, clock = await deploy(delivery=NO_REDELIVERY)
    backend = herald.backend()
    stream = Stream(herald.user("alice"))
    await stream.start()
    response = await backend.send_batch(
        [
            scheduled("alice", "in an hour", clock.now() + 3600),
            to_user("alice", "now"),
            scheduled("alice", "in a minute", clock.now() + 60),
        ]
    )
    outcomes = [(r.accepted.scheduled, r.accepted.recipient_count) for r in response.results]
    assert outcomes == [(True, 0), (False, 1), (True, 0)]
    assert await next_title(stream) == "now"
    listed = await backend.list_scheduled(page_size=1)
    assert [n.content.title for n in listed.notifications] == ["in a minute"]
    rest = await backend.list_scheduled(page_size=1, page_token=listed.next_page_token)
    assert [n.content.title for n in rest.notifications] == ["in an hour"]
    assert rest.next_page_token == ""
    await clock.advance(3600)
    assert [d.notification.content.title for d in await stream.deliveries(2)] == [
        "in a minute",
        "in an hour",
    ]
    stream.cancel()


async def test_a_cancelled_send_is_never_delivered(deploy: Deploy) -> None:
    herald, clock = await deploy(delivery=NO_REDELIVERY)
    backend = herald.backend()
    stream = Stream(herald.user("alice"))
    await stream.start()
    sent = await backend.send(scheduled("alice", "cancelled", clock.now() + 60))
    channel = await backend.send(
        notification_pb2.Notification(
            target=notification_pb2.Target(channel="news"),
            content=notification_pb2.Content(title="news later"),
            deliver_at=at(clock.now() + 60),
        )
    )
    await clock.advance(30)
    assert await backend.cancel_scheduled(sent.notification_id) is True
    assert await backend.cancel_scheduled(sent.notification_id) is False  # a retry
    assert await backend.cancel_scheduled(channel.notification_id) is True
    status = await backend.status(sent.notification_id)
    assert status.schedule_state == ingest_pb2.SCHEDULE_STATE_CANCELLED
    [recipient] = status.recipients
    assert recipient.state == ingest_pb2.DELIVERY_STATE_CANCELLED
    assert recipient.updated_at.seconds == int(clock.now())
    channel_status = await backend.status(channel.notification_id)
    assert channel_status.schedule_state == ingest_pb2.SCHEDULE_STATE_CANCELLED
    assert list(channel_status.recipients) == []
    assert list((await backend.list_scheduled()).notifications) == []

    await clock.advance(60)
    await assert_held(herald, stream, "after")
    assert await inbox_titles(herald.user("alice")) == ["after"]
    stream.cancel()


async def test_cancel_and_status_of_unknown_or_another_tenants_ids_are_not_found(
    deploy: Deploy,
) -> None:
    herald, clock = await deploy(delivery=NO_REDELIVERY)
    sent = await herald.backend("acme").send(scheduled("alice", "mine", clock.now() + 60))
    other = herald.backend("globex")
    for call in (other.cancel_scheduled, other.status):
        with pytest.raises(aio.AioRpcError) as refused:
            await call(sent.notification_id)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError) as unknown:
        await herald.backend("acme").cancel_scheduled("0" * 32)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no notification" in (unknown.value.details() or "")
    assert list((await other.list_scheduled()).notifications) == []
    # Still held for its own tenant.
    status = await herald.backend("acme").status(sent.notification_id)
    assert status.schedule_state == ingest_pb2.SCHEDULE_STATE_SCHEDULED


async def test_bad_deliver_at_and_page_requests_are_invalid_arguments(deploy: Deploy) -> None:
    herald, clock = await deploy(ingest=IngestSettings(max_schedule_ahead_s=7 * 86_400))
    backend = herald.backend()
    too_far = scheduled("alice", "x", clock.now() + 8 * 86_400)
    bad_nanos = to_user("alice", "x", deliver_at=Timestamp(seconds=int(clock.now()) + 60))
    bad_nanos.deliver_at.nanos = -1
    out_of_range = to_user("alice", "x", deliver_at=Timestamp(seconds=253_402_300_800))
    for notification, words in (
        (too_far, "at most 7 days ahead"),
        (bad_nanos, "not a valid time"),
        (out_of_range, "not a valid time"),
    ):
        with pytest.raises(aio.AioRpcError) as refused:
            await backend.send(notification)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in (refused.value.details() or "")
    # In a batch, only that one is refused.
    batch = await backend.send_batch([too_far, scheduled("alice", "ok", clock.now() + 60)])
    assert batch.results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert batch.results[1].accepted.scheduled
    for size, token in ((101, ""), (0, "not a token")):
        with pytest.raises(aio.AioRpcError) as refused:
            await backend.list_scheduled(page_size=size, page_token=token)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- PostgreSQL: durable, and shared by the ingest nodes of a cluster ---------------------------

Start = Callable[[], Awaitable[Herald]]


@pytest_asyncio.fixture
async def production(
    tmp_path: Path,
) -> AsyncIterator[tuple[Start, ManualClock, str]]:
    """Starts production-profile nodes of one cluster (a fresh database, a Redis prefix, one
    manual clock): `herald = await start()`."""
    await require_redis()
    prefix = new_prefix()
    clock = ManualClock()
    nodes: list[Herald] = []
    async with scratch_database() as dsn:
        base = make_config(tmp_path, delivery=NO_REDELIVERY)

        async def start() -> Herald:
            config = replace(
                base,
                server=base.server.model_copy(update={"node_id": f"node-{len(nodes)}"}),
                backends=BackendSettings(
                    postgres_dsn=SecretStr(dsn), redis_url=SecretStr(REDIS_URL), redis_prefix=prefix
                ),
            )
            nodes.append(await start_herald("up", config, clock=clock))
            return nodes[-1]

        try:
            yield start, clock, dsn
        finally:
            for node in nodes:
                await node.stop()
            async with redis_client() as client:
                await delete_prefix(client, prefix)


async def held_rows(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM herald_scheduled"))
    finally:
        await connection.close()


async def test_a_scheduled_send_survives_a_restart_on_postgres(
    production: tuple[Start, ManualClock, str],
) -> None:
    start, clock, dsn = production
    first = await start()
    sent = await first.backend().send(scheduled("alice", "after the restart", clock.now() + 600))
    assert sent.scheduled
    await first.stop()

    second = await start()
    status = await second.backend().status(sent.notification_id)
    assert status.schedule_state == ingest_pb2.SCHEDULE_STATE_SCHEDULED
    stream = Stream(second.user("alice"))
    await stream.start()
    await clock.advance(600)
    [delivery] = await stream.deliveries(1, within=10)
    assert delivery.notification.id == sent.notification_id
    await until(lambda: _no_rows(dsn))
    await assert_held(second, stream, "marker")
    assert await inbox_titles(second.user("alice")) == ["after the restart", "marker"]
    stream.cancel()


async def test_two_ingest_nodes_on_one_database_release_each_send_once(
    production: tuple[Start, ManualClock, str],
) -> None:
    start, clock, dsn = production
    nodes = [await start(), await start()]
    stream = Stream(nodes[0].user("alice"))
    await stream.start()
    titles = [f"n{i:02}" for i in range(40)]
    for i, title in enumerate(titles):
        # Spread over a few seconds so that both schedulers have due sends on several passes.
        await nodes[i % 2].backend().send(scheduled("alice", title, clock.now() + 60 + i % 5))
    assert await held_rows(dsn) == len(titles)
    cancelled = await nodes[1].backend().send(scheduled("alice", "cancelled", clock.now() + 61))
    assert await nodes[0].backend().cancel_scheduled(cancelled.notification_id)
    await clock.advance(65)
    received = await stream.deliveries(len(titles), within=20)
    assert sorted(d.notification.content.title for d in received) == titles
    await until(lambda: _only_cancelled_left(dsn))
    await assert_held(nodes[0], stream, "marker")
    assert sorted(await inbox_titles(nodes[1].user("alice"))) == sorted([*titles, "marker"])
    stream.cancel()


async def _no_rows(dsn: str) -> bool:
    return await held_rows(dsn) == 0


async def _only_cancelled_left(dsn: str) -> bool:
    return await held_rows(dsn) == 1


async def test_a_claim_whose_node_died_is_released_after_the_lease_and_only_once(
    deploy: Deploy,
) -> None:
    herald, clock = await deploy(
        delivery=NO_REDELIVERY, ingest=IngestSettings(schedule_lease_s=120)
    )
    node = herald.node("up")
    assert node.ingest is not None
    assert node.dispatcher is not None
    store = node.ingest.scheduling.store
    stream = Stream(herald.user("alice"))
    await stream.start()
    backend = herald.backend()
    lost = await backend.send(scheduled("alice", "claim lost", clock.now() + 60))
    delivered = await backend.send(scheduled("alice", "delivered, not done", clock.now() + 60))
    # Another node claims both, delivers the second, and dies before it says so (`done`).
    claimed = await store.claim(clock.now() + 60, 10, lease_s=120)
    assert {s.notification_id for s in claimed} == {lost.notification_id, delivered.notification_id}
    [send] = [s for s in claimed if s.notification_id == delivered.notification_id]
    notification = notification_pb2.Notification.FromString(send.encoded)
    await node.dispatcher.dispatch([accepted_from_proto(notification, send.encoded)])
    assert await next_title(stream) == "delivered, not done"
    for held, words in ((delivered, "delivered already"), (lost, "being delivered right now")):
        with pytest.raises(aio.AioRpcError) as refused:
            await backend.cancel_scheduled(held.notification_id)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert words in (refused.value.details() or "")

    await clock.advance(60 + 119)
    await assert_held(herald, stream, "within the lease")
    await clock.advance(2)
    assert await next_title(stream) == "claim lost"
    await until(lambda: _store_empty(store))
    await assert_held(herald, stream, "marker")
    assert await inbox_titles(herald.user("alice")) == [
        "delivered, not done",
        "within the lease",
        "claim lost",
        "marker",
    ]
    stream.cancel()


async def _store_empty(store: ScheduledStore) -> bool:
    return await store.next_due() is None
