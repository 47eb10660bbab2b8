"""Delivery guarantees through real gRPC: log, resume, acks, redelivery, inbox, TTL, priorities,
idempotency. Time is a ManualClock: nothing here sleeps for seconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import grpc
import pytest
from grpc import aio
from prometheus_client import REGISTRY

from herald.v1 import ingest_pb2, notification_pb2, stream_pb2
from services.client import Backoff, HeraldClient
from services.config import DeliverySettings, IngestSettings
from tests.conftest import Deploy
from tests.harness import to_user
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

TOPOLOGIES = pytest.mark.parametrize("topology", ["up", "split"])
HIGH, NORMAL, LOW = (
    notification_pb2.PRIORITY_HIGH,
    notification_pb2.PRIORITY_NORMAL,
    notification_pb2.PRIORITY_LOW,
)


def _resume(deliveries: list[stream_pb2.Delivery]) -> stream_pb2.SubscribeRequest:
    cursors: dict[str, int] = {}
    for d in deliveries:
        cursors[d.log] = max(cursors.get(d.log, 0), d.resume_cursor)
    return stream_pb2.SubscribeRequest(
        cursors=[stream_pb2.LogCursor(log=k, cursor=v) for k, v in cursors.items()]
    )


def _record_acks(client: HeraldClient, *, hang_first: bool = False) -> list[dict[str, int]]:
    """Wraps `client.ack` to record each call's `up_to`; with `hang_first`, the first call
    blocks until cancelled, as an RPC stuck on the network would."""
    calls: list[dict[str, int]] = []
    real_ack = client.ack

    async def recording_ack(
        notification_ids: Iterable[str] = (),
        up_to: dict[str, int] | None = None,
        **options: Any,
    ) -> int:
        calls.append(dict(up_to or {}))
        if hang_first and len(calls) == 1:
            await asyncio.Event().wait()
        return await real_ack(notification_ids, up_to, **options)

    client.ack = recording_ack  # type: ignore[method-assign]
    return calls


@TOPOLOGIES
async def test_cursors_increase_by_one_per_recipient_log(deploy: Deploy, topology: str) -> None:
    herald, _ = await deploy(topology)
    backend = herald.backend()
    for i in range(3):
        await backend.send(to_user("alice", f"a{i}"))
        await backend.send(to_user("bob", f"b{i}"))
    alice = Stream(herald.user("alice"))
    await alice.start()
    got = await alice.deliveries(3)
    assert [(d.cursor, d.notification.content.title) for d in got] == [
        (1, "a0"),
        (2, "a1"),
        (3, "a2"),
    ]
    alice.cancel()


@TOPOLOGIES
async def test_killed_subscriber_resumes_from_its_cursor_losing_nothing(
    deploy: Deploy, topology: str
) -> None:
    """Acceptance 3: kill mid-stream, send more (some expire), reconnect with the cursor."""
    herald, clock = await deploy(topology)
    alice = herald.user("alice")
    backend = herald.backend()
    first = Stream(alice)
    await first.start()
    sent = [(await backend.send(to_user("alice", f"n{i}"))).notification_id for i in range(4)]
    received = await first.deliveries(2)
    await alice.ack(up_to={"user": received[-1].cursor})
    first.cancel()  # killed mid-stream: n2 and n3 were written but never acked

    for i in range(4, 7):
        sent.append((await backend.send(to_user("alice", f"n{i}"))).notification_id)
    doomed = await backend.send(to_user("alice", "short-lived", ttl_seconds=5))
    sent.append((await backend.send(to_user("alice", "n7"))).notification_id)
    await clock.advance(6)  # "short-lived" expires while alice is away

    resume = _resume(received)
    cursor = resume.cursors[0].cursor  # may cover n2/n3 if they came in the same batch as n1
    second = Stream(alice, resume)
    await second.start()
    # Everything after the cursor comes at once, in order, without the expired one...
    replayed = await second.deliveries(8 - cursor)
    assert [d.notification.id for d in replayed] == sent[cursor:]
    assert [d.cursor for d in replayed] == sorted(d.cursor for d in replayed)
    assert doomed.notification_id not in {d.notification.id for d in replayed}
    # ...and what the cursor covered but nobody acked comes back after the ack timeout.
    if cursor > 2:
        await clock.advance(40)
        late = await second.deliveries(cursor - 2)
        assert [d.notification.id for d in late] == sent[2:cursor]
        assert all(d.attempt == 2 for d in late)
    # And it continues live after the replay.
    live = await backend.send(to_user("alice", "live"))
    [after] = await second.deliveries(1)
    assert after.notification.id == live.notification_id
    second.cancel()


async def test_the_client_library_reconnects_resumes_and_drops_duplicates(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    backend = herald.backend()
    client = herald.user("alice")
    subscription = client.subscribe(backoff=Backoff(base_s=0.01, cap_s=0.05), auto_ack=False)
    expected = []
    seen: list[str] = []
    async with asyncio.timeout(15):
        iterator = aiter(subscription)
        for i in range(3):
            expected.append((await backend.send(to_user("alice", f"n{i}"))).notification_id)
        for _ in range(3):
            seen.append((await anext(iterator)).notification.id)
        # Nothing was acked: after the kill the server replays all of it, and the library
        # drops what it already handed out.
        subscription.cancel()
        for i in range(3, 6):
            expected.append((await backend.send(to_user("alice", f"n{i}"))).notification_id)
        for _ in range(3):
            seen.append((await anext(iterator)).notification.id)
        # Cursors advance once a whole batch has been handed out: after one more item, the
        # batch (or batches) holding n3-n5 is behind the app.
        expected.append((await backend.send(to_user("alice", "n6"))).notification_id)
        seen.append((await anext(iterator)).notification.id)
    assert seen == expected
    assert subscription.connects == 2
    assert subscription.cursors["user"] >= 6


async def test_auto_ack_acks_what_the_app_handled_in_one_rpc_per_interval(
    deploy: Deploy,
) -> None:
    herald, _ = await deploy("up", delivery=DeliverySettings(batch_max=4))
    backend = herald.backend()
    client = herald.user("alice")
    ack_calls = _record_acks(client)
    # An interval longer than the test: only an explicit flush (or the stream's end) acks.
    subscription = client.subscribe(ack_interval=3600)
    iterator = aiter(subscription)
    async with asyncio.timeout(15):
        sent = [(await backend.send(to_user("alice", f"n{i}"))).notification_id for i in range(11)]
        handled = [(await anext(iterator)).notification.id for _ in range(11)]
        assert handled == sent
        assert ack_calls == []  # nothing is acked inline, per delivery
        states = {(await backend.status(i)).recipients[0].state for i in sent}
        assert states == {ingest_pb2.DELIVERY_STATE_DELIVERED}
        await subscription.flush_acks()
        # One RPC for all of it, up_to the cursor of the batches the app has finished with
        # (the last batch is the app's until it asks for the next notification).
        [acked] = ack_calls
        cursor = subscription.cursors["user"]
        assert acked == {"user": cursor}
        assert cursor >= 8
        states = [(await backend.status(i)).recipients[0].state for i in sent]
        acked_state, delivered = (
            ingest_pb2.DELIVERY_STATE_ACKED,
            ingest_pb2.DELIVERY_STATE_DELIVERED,
        )
        assert states == [acked_state] * cursor + [delivered] * (11 - cursor)
        await subscription.flush_acks()  # nothing new handled: no RPC
        assert len(ack_calls) == 1
        await iterator.aclose()


async def test_auto_ack_never_acks_a_notification_the_app_has_not_had(deploy: Deploy) -> None:
    herald, _ = await deploy("up", delivery=DeliverySettings(batch_max=8))
    backend = herald.backend()
    # Five wait in the log, so the subscription gets them as one batch.
    response = await backend.send_batch([to_user("alice", f"n{i}") for i in range(5)])
    sent = [result.accepted.notification_id for result in response.results]
    subscription = herald.user("alice").subscribe(ack_interval=3600)
    iterator = aiter(subscription)
    async with asyncio.timeout(15):
        first = await anext(iterator)
        assert first.notification.id == sent[0]
        # The app holds one of the batch: an ack now would claim the other four too.
        await subscription.flush_acks()
        states = [(await backend.status(i)).recipients[0].state for i in sent]
        assert ingest_pb2.DELIVERY_STATE_ACKED not in states
        rest = [(await anext(iterator)).notification.id for _ in range(4)]
        assert rest == sent[1:]
        later = (await backend.send(to_user("alice", "later"))).notification_id
        assert (await anext(iterator)).notification.id == later
        # Leaving the loop acks what was handled without waiting for the interval; `later`
        # was still the app's when it left, so it stays unacked (and is redelivered).
        await iterator.aclose()
        states = [(await backend.status(i)).recipients[0].state for i in [*sent, later]]
        assert states == [ingest_pb2.DELIVERY_STATE_ACKED] * 5 + [
            ingest_pb2.DELIVERY_STATE_DELIVERED
        ]


async def test_leaving_the_loop_mid_batch_acks_the_ones_it_finished(deploy: Deploy) -> None:
    herald, _ = await deploy("up", delivery=DeliverySettings(batch_max=8))
    backend = herald.backend()
    response = await backend.send_batch([to_user("alice", f"n{i}") for i in range(4)])
    sent = [result.accepted.notification_id for result in response.results]
    subscription = herald.user("alice").subscribe(ack_interval=3600)
    iterator = aiter(subscription)
    async with asyncio.timeout(15):
        # One batch of four: the app finishes two, stops on the third (`herald tail --count 3`).
        assert [(await anext(iterator)).notification.id for _ in range(3)] == sent[:3]
        await iterator.aclose()
        states = [(await backend.status(i)).recipients[0].state for i in sent]
    # Before, none of the batch was acked: its watermark would have covered the fourth.
    acked, delivered = ingest_pb2.DELIVERY_STATE_ACKED, ingest_pb2.DELIVERY_STATE_DELIVERED
    assert states == [acked, acked, delivered, delivered]


async def test_auto_ack_runs_on_its_interval(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    backend = herald.backend()
    handled: list[str] = []

    async def app() -> None:
        async for received in herald.user("alice").subscribe(ack_interval=0.05):
            handled.append(received.notification.id)

    consumer = asyncio.create_task(app())
    sent = (await backend.send(to_user("alice"))).notification_id
    state = ingest_pb2.DELIVERY_STATE_QUEUED
    for _ in range(500):  # at most 10 s
        state = (await backend.status(sent)).recipients[0].state
        if state == ingest_pb2.DELIVERY_STATE_ACKED:
            break
        await asyncio.sleep(0.02)
    consumer.cancel()
    assert handled == [sent]
    assert state == ingest_pb2.DELIVERY_STATE_ACKED


@TOPOLOGIES
async def test_sends_during_replay_arrive_in_order_without_gap(
    deploy: Deploy, topology: str
) -> None:
    herald, _ = await deploy(topology, delivery=DeliverySettings(session_buffer=8, batch_max=4))
    backend = herald.backend()
    backlog = [to_user("alice", f"old{i}") for i in range(200)]
    await backend.send_batch(backlog)
    stream = Stream(herald.user("alice"))
    await stream.start()

    async def send_more() -> None:
        for i in range(50):
            await backend.send(to_user("alice", f"new{i}"))

    sender = asyncio.create_task(send_more())
    got = await stream.deliveries(250, within=20)
    await sender
    assert [d.cursor for d in got] == list(range(1, 251))
    titles = [d.notification.content.title for d in got]
    assert titles == [f"old{i}" for i in range(200)] + [f"new{i}" for i in range(50)]
    # The resume cursor never decreases, and never runs ahead of what was written in the same
    # stream message or before it (batches hold at most batch_max = 4 deliveries).
    resumes = [d.resume_cursor for d in got]
    assert resumes == sorted(resumes)
    for index, resume in enumerate(resumes):
        assert resume <= max(d.cursor for d in got[: index + 4])
    assert resumes[-1] == 250
    stream.cancel()


@TOPOLOGIES
async def test_unacked_is_redelivered_with_backoff_then_failed_then_kept(
    deploy: Deploy, topology: str
) -> None:
    herald, clock = await deploy(topology, delivery=DeliverySettings(ack_timeout_s=10))
    alice = herald.user("alice")
    backend = herald.backend()
    stream = Stream(alice)
    await stream.start()
    sent = await backend.send(to_user("alice"))
    [first] = await stream.deliveries(1)
    assert first.attempt == 1
    await clock.advance(12.5)  # 10 s +-20% jitter
    [second] = await stream.deliveries(1)
    assert (second.notification.id, second.cursor, second.attempt) == (sent.notification_id, 1, 2)
    await clock.advance(8.5)  # the second wait is 20 s +-20%: not yet
    await clock.advance(16)
    [third] = await stream.deliveries(1)
    assert third.attempt == 3
    await clock.advance(60)  # after the third attempt it is FAILED, not resent on this stream
    status = await backend.status(sent.notification_id)
    assert status.recipients[0].state == ingest_pb2.DELIVERY_STATE_FAILED
    assert status.recipients[0].attempts == 3
    assert "kept for the next connect" in status.recipients[0].reason
    stream.cancel()

    # It stays in the log: the next connect gets it again, and an ack settles it.
    again = Stream(alice)
    await again.start()
    [fourth] = await again.deliveries(1)
    assert fourth.notification.id == sent.notification_id
    assert await alice.ack(notification_ids=[sent.notification_id]) == 1
    status = await backend.status(sent.notification_id)
    assert status.recipients[0].state == ingest_pb2.DELIVERY_STATE_ACKED
    await clock.advance(100)  # acked: no more redelivery; the next event is a heartbeat
    event = await again.event()
    assert event.WhichOneof("event") == "heartbeat"
    again.cancel()


async def test_ack_up_to_a_cursor_settles_everything_below_it(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    alice = herald.user("alice")
    backend = herald.backend()
    ids = [(await backend.send(to_user("alice", f"n{i}"))).notification_id for i in range(5)]
    assert await alice.ack(up_to={"user": 3}) == 3
    assert await alice.ack(up_to={"user": 3}) == 0
    stream = Stream(alice)
    await stream.start()
    replayed = await stream.deliveries(2)
    assert [d.notification.id for d in replayed] == ids[3:]
    states = [(await backend.status(i)).recipients[0].state for i in ids]
    acked, delivered = ingest_pb2.DELIVERY_STATE_ACKED, ingest_pb2.DELIVERY_STATE_DELIVERED
    assert states == [acked] * 3 + [delivered] * 2
    stream.cancel()


async def test_ack_of_an_unknown_log_is_invalid(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    with pytest.raises(aio.AioRpcError) as failure:
        await herald.user("alice").ack(up_to={"inbox": 3})
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown log 'inbox'" in (failure.value.details() or "")


@TOPOLOGIES
async def test_offline_inbox_is_drained_on_connect_and_bounded(
    deploy: Deploy, topology: str
) -> None:
    herald, _ = await deploy(topology, delivery=DeliverySettings(inbox_limit=3))
    backend = herald.backend()
    ids = [(await backend.send(to_user("alice", f"n{i}"))).notification_id for i in range(5)]
    queued = await backend.status(ids[4])
    assert queued.recipients[0].state == ingest_pb2.DELIVERY_STATE_QUEUED
    stream = Stream(herald.user("alice"))
    await stream.start()
    drained = await stream.deliveries(3)
    assert [d.notification.id for d in drained] == ids[2:]  # the oldest two were dropped
    for dropped in ids[:2]:
        [recipient] = (await backend.status(dropped)).recipients
        assert recipient.state == ingest_pb2.DELIVERY_STATE_FAILED
        assert recipient.reason == "dropped: inbox full"
    stream.cancel()


async def test_a_full_inbox_is_logged_once_a_minute_with_the_count(
    deploy: Deploy, caplog: pytest.LogCaptureFixture
) -> None:
    # Every send to a full inbox drops its oldest entry; the log says so once a minute per
    # tenant, with how many went since (the metric counts each one).
    herald, clock = await deploy("up", delivery=DeliverySettings(inbox_limit=1))
    backend = herald.backend()
    caplog.set_level(logging.WARNING, logger="services.stream.dispatch")

    def warnings() -> list[int]:
        return [
            getattr(r, "dropped", -1)
            for r in caplog.records
            if r.getMessage() == "log bound reached, oldest entries dropped"
        ]

    for i in range(5):
        await backend.send(to_user("alice", f"n{i}"))
    assert warnings() == [1]  # the first drop; the next three wait for the minute to pass
    await clock.advance(61)
    await backend.send(to_user("alice", "n5"))
    assert warnings() == [1, 4]


@TOPOLOGIES
async def test_expired_notifications_are_never_delivered(deploy: Deploy, topology: str) -> None:
    herald, clock = await deploy(topology)
    backend = herald.backend()
    short = await backend.send(to_user("alice", "short", ttl_seconds=5))
    await backend.send(to_user("alice", "long", ttl_seconds=3600))
    await clock.advance(11)  # past the TTL, and past a sweep of the logs
    status = await backend.status(short.notification_id)
    assert status.recipients[0].state == ingest_pb2.DELIVERY_STATE_EXPIRED
    stream = Stream(herald.user("alice"))
    await stream.start()
    [only] = await stream.deliveries(1)
    assert only.notification.content.title == "long"
    stream.cancel()


@TOPOLOGIES
async def test_backlog_goes_out_by_priority_without_starving_low(
    deploy: Deploy, topology: str
) -> None:
    herald, _ = await deploy(topology)
    backend = herald.backend()
    sends = [("L", LOW)] * 5 + [("H", HIGH)] * 2 + [("N", NORMAL)] * 2
    for i, (tag, priority) in enumerate(sends):
        await backend.send(to_user("alice", f"{tag}{i}", priority=priority))
    stream = Stream(herald.user("alice"))
    await stream.start()
    got = await stream.deliveries(len(sends))
    titles = [d.notification.content.title for d in got]
    # Weighted round-robin HIGH 4 : NORMAL 2 : LOW 1 over what is waiting.
    assert titles == ["H5", "N7", "H6", "L0", "N8", "L1", "L2", "L3", "L4"]
    # Within one priority, cursor order.
    for tag in "HNL":
        cursors = [d.cursor for d in got if d.notification.content.title.startswith(tag)]
        assert cursors == sorted(cursors)
    stream.cancel()


@TOPOLOGIES
async def test_an_idempotency_key_makes_a_retry_a_no_op(deploy: Deploy, topology: str) -> None:
    herald, clock = await deploy(topology, ingest=IngestSettings(idempotency_window_s=3600))
    backend = herald.backend()
    first = await backend.send(to_user("alice", "once", idempotency_key="order-42"))
    retry = await backend.send(to_user("alice", "once", idempotency_key="order-42"))
    assert (retry.notification_id, retry.duplicate) == (first.notification_id, True)
    other_tenant = await herald.backend("globex").send(
        to_user("alice", "theirs", idempotency_key="order-42")
    )
    assert not other_tenant.duplicate
    await clock.advance(3601)
    after_window = await backend.send(to_user("alice", "again", idempotency_key="order-42"))
    assert not after_window.duplicate
    assert after_window.notification_id != first.notification_id

    stream = Stream(herald.user("alice"))
    await stream.start()
    got = await stream.deliveries(2)
    assert [d.notification.content.title for d in got] == ["once", "again"]
    stream.cancel()


async def test_a_batch_with_a_repeated_key_sends_once(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    batch = [to_user("alice", "x", idempotency_key="k"), to_user("alice", "x", idempotency_key="k")]
    response = await herald.backend().send_batch(batch)
    first, second = (r.accepted for r in response.results)
    assert first.notification_id == second.notification_id
    assert (first.duplicate, second.duplicate) == (False, True)


async def test_a_resume_cursor_defers_what_the_client_holds_and_a_future_one_is_ignored(
    deploy: Deploy,
) -> None:
    herald, clock = await deploy("up", delivery=DeliverySettings(ack_timeout_s=10))
    alice = herald.user("alice")
    backend = herald.backend()
    ids = [(await backend.send(to_user("alice", f"n{i}"))).notification_id for i in range(3)]
    first = Stream(alice)
    await first.start()
    await first.deliveries(3)
    first.cancel()

    # Resuming at 3: the client holds n0-n2, so nothing is resent at once...
    held = Stream(
        alice, stream_pb2.SubscribeRequest(cursors=[stream_pb2.LogCursor(log="user", cursor=3)])
    )
    await held.start()
    new = await backend.send(to_user("alice", "new"))
    [next_one] = await held.deliveries(1)
    assert next_one.notification.id == new.notification_id
    # ...and what it acks in time is never resent; what it does not ack comes back.
    await alice.ack(notification_ids=[*ids[:2], new.notification_id])
    await clock.advance(13)
    [resent] = await held.deliveries(1)
    assert (resent.notification.id, resent.attempt) == (ids[2], 2)
    held.cancel()

    # A cursor beyond the log's head (say, the embedded store restarted) is not trusted.
    future = Stream(
        alice, stream_pb2.SubscribeRequest(cursors=[stream_pb2.LogCursor(log="user", cursor=999)])
    )
    await future.start()
    [replayed] = await future.deliveries(1)
    assert replayed.notification.id == ids[2]
    future.cancel()


async def test_the_memory_status_store_is_bounded_and_acks_still_work(deploy: Deploy) -> None:
    herald, _ = await deploy("up", delivery=DeliverySettings(status_max_records=2))
    evicted_before = REGISTRY.get_sample_value("herald_status_records_evicted_total") or 0.0
    backend = herald.backend()
    alice = herald.user("alice")
    ids = [(await backend.send(to_user("alice", f"n{i}"))).notification_id for i in range(3)]
    # The oldest status record is dropped (and counted); the notification itself is not.
    with pytest.raises(aio.AioRpcError) as caught:
        await backend.status(ids[0])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert REGISTRY.get_sample_value("herald_status_records_evicted_total") == evicted_before + 1
    assert (await backend.status(ids[2])).recipients[0].state == ingest_pb2.DELIVERY_STATE_QUEUED
    stream = Stream(alice)
    await stream.start()
    assert [d.notification.id for d in await stream.deliveries(3)] == ids
    # Acking by id still finds the entry in the user's log, without a status record.
    assert await alice.ack(notification_ids=[ids[0]]) == 1
    stream.cancel()
    again = Stream(alice)
    await again.start()
    assert [d.notification.id for d in await again.deliveries(2)] == ids[1:]
    again.cancel()


async def test_ack_up_to_beyond_the_log_head_does_not_ack_future_entries(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    backend = herald.backend()
    alice = herald.user("alice")
    first = (await backend.send(to_user("alice", "n1"))).notification_id
    # A cursor from before a restart of the embedded store: far beyond this log's head. It
    # belongs to another generation of the log, so it acks nothing, not even entry 1, which
    # this client never received.
    assert await alice.ack(up_to={"user": 50}) == 0
    later = [(await backend.send(to_user("alice", f"n{i}"))).notification_id for i in (2, 3)]
    stream = Stream(alice)
    await stream.start()
    assert [d.notification.id for d in await stream.deliveries(3)] == [first, *later]
    states = [(await backend.status(i)).recipients[0].state for i in [first, *later]]
    assert states == [ingest_pb2.DELIVERY_STATE_DELIVERED] * 3
    stream.cancel()


async def test_the_client_takes_the_servers_watermark_over_a_stale_cursor(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    backend = herald.backend()
    sent = [(await backend.send(to_user("alice", f"n{i}"))).notification_id for i in range(3)]
    # The app kept cursor 100 from a server that has since lost its embedded store: the server
    # ignores it and replays; the client must resume (and ack) from what this server says.
    subscription = herald.user("alice").subscribe(cursors={"user": 100}, ack_interval=3600)
    iterator = aiter(subscription)
    async with asyncio.timeout(15):
        assert [(await anext(iterator)).notification.id for _ in range(3)] == sent
        later = (await backend.send(to_user("alice", "later"))).notification_id
        assert (await anext(iterator)).notification.id == later
        assert 3 <= subscription.cursors["user"] <= 4
        await subscription.flush_acks()
        states = [(await backend.status(i)).recipients[0].state for i in sent]
        assert states == [ingest_pb2.DELIVERY_STATE_ACKED] * 3
        # Entries appended after the acked ones are still delivered, none skipped.
        more = (await backend.send(to_user("alice", "more"))).notification_id
        assert (await anext(iterator)).notification.id == more
        await iterator.aclose()


async def test_a_flush_cancelled_mid_rpc_is_sent_again_at_the_end(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    backend = herald.backend()
    client = herald.user("alice")
    # The first Ack hangs (to be cancelled below, mid-"RPC"); later ones go through.
    ack_calls = _record_acks(client, hang_first=True)
    subscription = client.subscribe(ack_interval=3600)
    iterator = aiter(subscription)
    async with asyncio.timeout(15):
        sent = [(await backend.send(to_user("alice", f"n{i}"))).notification_id for i in range(2)]
        assert [(await anext(iterator)).notification.id for _ in range(2)] == sent
        third = (await backend.send(to_user("alice", "n2"))).notification_id
        assert (await anext(iterator)).notification.id == third
        flush = asyncio.create_task(subscription.flush_acks())
        await asyncio.sleep(0.05)
        flush.cancel()
        await asyncio.wait({flush})
        await iterator.aclose()  # the final flush retries what the cancelled one carried
    assert len(ack_calls) == 2
    states = [(await backend.status(i)).recipients[0].state for i in sent]
    assert states == [ingest_pb2.DELIVERY_STATE_ACKED] * 2


async def test_a_key_whose_send_failed_is_taken_over_by_the_retry(
    deploy: Deploy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim of a send that never stored anything does not make its retry a 'duplicate'
    of a notification nobody can find (the retry's notification takes the key over)."""
    herald, _ = await deploy("up")
    dispatcher = herald.node("up").dispatcher
    assert dispatcher is not None
    real = dispatcher.dispatch
    failures = [ConnectionResetError("the store went away")]

    async def flaky(notifications: list[Any]) -> list[int]:
        if failures:
            raise failures.pop()
        return await real(notifications)

    monkeypatch.setattr(dispatcher, "dispatch", flaky)
    backend = herald.backend()
    keyed = to_user("alice", "once")
    keyed.idempotency_key = "order-1"
    with pytest.raises(aio.AioRpcError):
        await backend.send(keyed)
    first = await backend.send(keyed)
    assert not first.duplicate
    again = await backend.send(keyed)
    assert (again.notification_id, again.duplicate) == (first.notification_id, True)
    assert (await backend.status(first.notification_id)).notification_id == first.notification_id
