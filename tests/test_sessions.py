"""Sessions through real gRPC: limits, heartbeats, presence, and slow consumers."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc import aio

from herald.v1 import registry_pb2, stream_pb2
from services.client import Backoff, HeraldClient
from services.config import DeliverySettings, RegistrySettings
from services.stream.session import ENTRY_OVERHEAD
from tests.conftest import Deploy
from tests.harness import ABOUT_TO_EXPIRE_S, Herald, to_user, token_about_to_expire
from tests.metrics_support import metrics_server, until
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

# A client that never reads and keeps HTTP/2 windows small, so the server's writes block: BDP
# probing off, the window stays at 64 KiB instead of growing into the client's memory.
STALLING_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]

TOPOLOGIES = pytest.mark.parametrize("topology", ["up", "split"])


@TOPOLOGIES
async def test_several_devices_per_user_up_to_the_limit(deploy: Deploy, topology: str) -> None:
    herald, _ = await deploy(topology, registry=RegistrySettings(max_sessions_per_user=3))
    alice = herald.user("alice")
    devices = [Stream(alice, stream_pb2.SubscribeRequest(device=f"d{i}")) for i in range(3)]
    for device in devices:
        await device.start()
    sent = await herald.backend().send(to_user("alice"))
    for device in devices:  # every device of the user gets it
        [delivery] = await device.deliveries(1)
        assert delivery.notification.id == sent.notification_id
    fourth = alice.open_stream(stream_pb2.SubscribeRequest())
    with pytest.raises(aio.AioRpcError) as refused:
        await fourth.read()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already has 3 open sessions" in (refused.value.details() or "")
    devices[0].cancel()
    for device in devices[1:]:
        device.cancel()


async def test_a_session_joins_at_most_the_channel_limit(deploy: Deploy) -> None:
    herald, _ = await deploy("up", delivery=DeliverySettings(max_channels_per_session=2))
    client = herald.user("alice", channels=["*"])
    call = client.open_stream(stream_pb2.SubscribeRequest(channels=["a", "b", "c"]))
    with pytest.raises(aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 2 channels" in (refused.value.details() or "")


@TOPOLOGIES
async def test_every_stream_gets_heartbeats(deploy: Deploy, topology: str) -> None:
    herald, clock = await deploy(topology, delivery=DeliverySettings(heartbeat_interval_s=15))
    streams = [Stream(herald.user(f"user{i}")) for i in range(20)]
    for stream in streams:
        started = await stream.start()
        assert started.heartbeat_interval_seconds == 15
    await clock.advance(15)
    events = await asyncio.gather(*(stream.event() for stream in streams))
    assert {event.WhichOneof("event") for event in events} == {"heartbeat"}
    for stream in streams:
        stream.cancel()


@TOPOLOGIES
async def test_presence_goes_online_reconnecting_offline(deploy: Deploy, topology: str) -> None:
    herald, clock = await deploy(topology, registry=RegistrySettings(presence_grace_s=30))
    stub, metadata = herald.registry_stub(herald.tokens.backend("acme", "presence:read"))

    async def state() -> int:
        response = await stub.GetPresence(
            registry_pb2.GetPresenceRequest(user_ids=["alice"]), metadata=metadata
        )
        return int(response.users[0].state)

    assert await state() == registry_pb2.PRESENCE_STATE_OFFLINE
    stream = Stream(herald.user("alice"))
    await stream.start()
    assert await state() == registry_pb2.PRESENCE_STATE_ONLINE
    node = herald.node("stream").delivery
    assert node is not None
    [session] = node.hub.sessions.values()
    stream.cancel()
    async with asyncio.timeout(5):
        await session.closed.wait()  # the server has noticed the cancelled stream
    assert await state() == registry_pb2.PRESENCE_STATE_RECONNECTING
    await clock.advance(31)
    assert await state() == registry_pb2.PRESENCE_STATE_OFFLINE


async def _drain(stream: Stream) -> aio.AioRpcError:
    async with asyncio.timeout(10):
        try:
            while True:
                await stream.event()
        except aio.AioRpcError as status:
            return status


async def test_a_slow_consumer_is_closed_without_slowing_others_or_growing_memory(
    deploy: Deploy,
) -> None:
    settings = DeliverySettings(session_buffer=16, batch_max=8, write_timeout_s=0.5)
    herald, clock = await deploy("up", delivery=settings)
    core = herald.node("stream").delivery
    assert core is not None
    # The slow client never reads and keeps HTTP/2 windows small, so the server's writes block.
    slow_client = HeraldClient(
        herald.address("stream"),
        herald.tokens.user("acme", "slow"),
        options=STALLING_OPTIONS,
    )
    herald.clients.append(slow_client)
    slow = Stream(slow_client)
    await slow.start()
    fast = Stream(herald.user("fast"))
    await fast.start()
    backend = herald.backend()
    body = "x" * 3500
    for round_ in range(10):
        batch = [
            to_user("slow", f"s{round_}-{i}", content={"title": "s", "body": body})
            for i in range(40)
        ]
        batch.append(to_user("fast", f"f{round_}"))
        await backend.send_batch(batch)
        [delivery] = await fast.deliveries(1)  # the fast one is never held up
        assert delivery.notification.content.title == f"f{round_}"
        slow_session = next(s for s in core.hub.sessions.values() if s.user_id == "slow")
        assert slow_session.waiting <= settings.session_buffer  # bounded, whatever is sent

    # The slow session's write is stuck; after the write timeout the node closes it. The stall is
    # real I/O, measured on the monotonic clock: wait it out for real, then let the timer look.
    assert slow_session.write_started_at, "the slow client's stream never filled up"
    stuck_at = slow_session.write_started_at
    await asyncio.sleep(settings.write_timeout_s + 0.1)
    assert slow_session.write_started_at == stuck_at, "the write completed: not a stuck client"
    await clock.advance(1)
    async with asyncio.timeout(5):
        await slow_session.closed.wait()
    # The status queues behind the data the client never read: once it reads again, it gets
    # what was written, then ABORTED with the reason, and resumes from its cursor.
    status = await _drain(slow)
    assert status.code() == grpc.StatusCode.ABORTED
    assert "slow consumer" in (status.details() or "")
    # Nothing was lost: the entries are in the log, and the fast stream still works.
    assert (await backend.send(to_user("fast", "after"))).recipient_count == 1
    [after] = await fast.deliveries(1)
    assert after.notification.content.title == "after"
    fast.cancel()


async def test_a_connect_storm_past_grpcs_default_pending_bound_opens_every_stream(
    deploy: Deploy,
) -> None:
    """3,200 Subscribes at once (grpc core's defaults hold 1,000 calls the server has not taken
    yet, and cancel past 3,000): every one gets its session (HERALD_MAX_PENDING_CALLS)."""
    herald, _ = await deploy("up")
    streams, connections = 3200, 16
    channels = [
        aio.insecure_channel(
            herald.address("stream"), options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(connections)
    ]
    try:
        calls = []
        for index in range(streams):
            subscribe = channels[index % connections].unary_stream(
                "/herald.v1.StreamService/Subscribe",
                request_serializer=stream_pb2.SubscribeRequest.SerializeToString,
                response_deserializer=stream_pb2.SubscribeResponse.FromString,
            )
            token = herald.tokens.user("acme", f"storm{index}")
            calls.append(
                subscribe(
                    stream_pb2.SubscribeRequest(), metadata=(("authorization", f"Bearer {token}"),)
                )
            )
        async with asyncio.timeout(120):
            events = await asyncio.gather(*(c.read() for c in calls), return_exceptions=True)
        failed = [e for e in events if isinstance(e, BaseException)]
        assert not failed, f"{len(failed)} of {streams} failed, first: {failed[0]!r}"
        assert all(e.WhichOneof("event") == "session_started" for e in events)
        core = herald.node("stream").delivery
        assert core is not None
        assert core.session_count == streams
        for call in calls:
            call.cancel()
    finally:
        for channel in channels:
            await channel.close()


async def test_stalled_streams_hold_bounded_bytes_per_session_and_per_node(
    deploy: Deploy,
) -> None:
    """Buffers are bounded in bytes: stalled clients never make the node hold more than its
    bound, a reading client keeps moving, and nothing is lost (the rest is read from the log)."""
    per_session, per_node = 48 * 1024, 128 * 1024
    settings = DeliverySettings(
        session_buffer=4096,
        session_buffer_bytes=per_session,
        node_buffer_bytes=per_node,
        batch_max=8,
        write_timeout_s=60,  # not closed as slow consumers here: they read again below
    )
    herald, _ = await deploy("up", delivery=settings)
    core = herald.node("stream").delivery
    assert core is not None
    stalled_users = [f"stalled{i}" for i in range(5)]
    stalled = []
    for user in stalled_users:  # never read; small windows, so the server's writes block
        client = HeraldClient(
            herald.address("stream"),
            herald.tokens.user("acme", user),
            options=STALLING_OPTIONS,
        )
        herald.clients.append(client)
        stalled.append(Stream(client))
        await stalled[-1].start()
    fast = Stream(herald.user("fast"))
    await fast.start()
    backend = herald.backend()
    body = "x" * 3000
    rounds, per_round = 8, 24
    entry_bytes = 3000 + ENTRY_OVERHEAD  # at least, per entry
    with metrics_server() as scrape:
        for round_ in range(rounds):
            batch = [
                to_user(user, f"{user}-{round_}-{i}", content={"title": "s", "body": body})
                for user in stalled_users
                for i in range(per_round)
            ]
            batch.append(to_user("fast", f"f{round_}"))
            await backend.send_batch(batch)
            [delivery] = await fast.deliveries(1)  # held up by nobody
            assert delivery.notification.content.title == f"f{round_}"
            sessions = [s for s in core.hub.sessions.values() if s.user_id != "fast"]
            for session in sessions:
                # The bound, or one entry: a session with nothing waiting may always take one.
                assert session.waiting_bytes <= max(per_session, 2 * entry_bytes * 2)
            assert core.budget.used <= per_node + len(sessions) * 2 * entry_bytes
            held = sum(s.waiting_bytes + s.writing_bytes for s in core.hub.sessions.values())
            assert core.budget.used == held
        # Far more was sent than the node holds: 5 x 192 entries of 3 KB = 2.9 MB.
        assert rounds * per_round * len(stalled_users) * entry_bytes > 20 * per_node
        held = await scrape.value("herald_buffered_bytes", kind="used")
        assert 0 < held <= per_node + len(stalled_users) * 2 * entry_bytes
        assert await scrape.value("herald_buffered_bytes", kind="limit") == per_node
        # Reading again, every stalled client gets everything in order: what did not fit was
        # left in the log and read from it later.
        for user, stream in zip(stalled_users, stalled, strict=True):
            got = await stream.deliveries(rounds * per_round, within=30)
            expected = [f"{user}-{r}-{i}" for r in range(rounds) for i in range(per_round)]
            assert [d.notification.content.title for d in got] == expected
            assert [d.cursor for d in got] == list(range(1, rounds * per_round + 1)), user
        assert await scrape.value("herald_buffered_bytes", kind="used") == 0
    for stream in [*stalled, fast]:
        stream.cancel()


async def test_a_stalled_streams_batch_in_flight_counts_in_the_byte_budget(
    deploy: Deploy,
) -> None:
    """The batch a stalled write holds counts against the node's budget until the write
    completes: grpc core keeps a message its HTTP/2 window does not let out, so that memory is
    the node's as much as the entries still waiting (bench/stalled.py, docs/delivery.md 12)."""
    herald, _ = await deploy("up", delivery=DeliverySettings(batch_max=8, write_timeout_s=60))
    core = herald.node("stream").delivery
    assert core is not None
    client = HeraldClient(  # never reads; a small window, so the server's write blocks
        herald.address("stream"),
        herald.tokens.user("acme", "stalled"),
        options=STALLING_OPTIONS,
    )
    herald.clients.append(client)
    stream = Stream(client)
    await stream.start()
    total, body = 60, "x" * 3000
    await herald.backend().send_batch(
        [
            to_user("stalled", f"s{i}", content={"title": f"s{i}", "body": body})
            for i in range(total)
        ]
    )
    [session] = core.hub.sessions.values()

    async def stuck() -> bool:  # a write has been in flight for a while
        return bool(session.write_started_at) and time.monotonic() - session.write_started_at > 0.5

    await until(stuck, within=20)
    in_flight = core.budget.used - session.waiting_bytes
    assert in_flight > 3000  # the batch in flight: one 3 KB notification at least
    assert in_flight == session.writing_bytes
    with metrics_server() as scrape:
        assert await scrape.value("herald_buffered_bytes", kind="used") == core.budget.used
    got = await stream.deliveries(total, within=30)  # reading again: all of it, in order
    assert [d.notification.content.title for d in got] == [f"s{i}" for i in range(total)]

    async def returned() -> bool:  # the last write's bytes come back once it completed
        return core.budget.used == 0

    await until(returned)
    assert session.writing_bytes == 0
    stream.cancel()


async def test_a_stream_ends_when_its_token_expires_and_the_client_reconnects(
    deploy: Deploy,
) -> None:
    herald, clock = await deploy("up")
    backend = herald.backend()

    def short_lived() -> str:
        return token_about_to_expire(herald.tokens.minter, "alice")

    client = HeraldClient(herald.address("stream"), short_lived)
    herald.clients.append(client)
    subscription = client.subscribe(ack_interval=3600, backoff=Backoff(base_s=0.01, cap_s=0.01))
    iterator = aiter(subscription)
    async with asyncio.timeout(15):
        first = (await backend.send(to_user("alice", "n1"))).notification_id
        assert (await anext(iterator)).notification.id == first
        await clock.advance(1.0)  # a tick of the node's timers: the token is still good
        assert subscription.last_closing is None
        await asyncio.sleep(ABOUT_TO_EXPIRE_S)
        await clock.advance(1.0)
        second = (await backend.send(to_user("alice", "n2"))).notification_id
        assert (await anext(iterator)).notification.id == second
        closing = subscription.last_closing
        assert closing is not None
        assert closing.reason == stream_pb2.Closing.REASON_TOKEN_EXPIRED
        assert "reconnect with a fresh token" in closing.message
        assert closing.retry_after_ms == 0
        assert subscription.connects == 2  # reconnected with a fresh token, nothing lost
        await iterator.aclose()


async def test_a_subscriber_that_leaves_while_its_session_opens_leaves_no_session(
    herald_up: Herald, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client cancelling while the node subscribes its logs on the broker (a Redis round
    trip in production) must not leave a registered, leased session with no stream: it would
    count against the user's session limit forever."""
    delivery = herald_up.node("stream").delivery
    assert delivery is not None
    entered = asyncio.Event()

    async def slow_subscribe(tenant: str, key: object) -> None:
        entered.set()
        await asyncio.Event().wait()  # never answers: the client gives up first

    stores = herald_up.node("stream").stores
    assert stores is not None
    monkeypatch.setattr(stores.broker, "subscribe", slow_subscribe)
    for _ in range(6):  # more than the 5 sessions a user may hold
        entered.clear()
        stream = Stream(herald_up.user("alice"))
        await asyncio.wait_for(entered.wait(), 5)
        stream.cancel()
        await asyncio.wait_for(delivery.hub.drained.wait(), 5)
    registry = herald_up.node("registry").registry
    assert registry is not None
    assert await registry.sessions("acme") == []
