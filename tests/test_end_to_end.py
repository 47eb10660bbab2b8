"""Acceptance: send and receive through real gRPC, in `herald up` and in the split topology."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from herald.v1 import notification_pb2, registry_pb2
from tests.harness import Herald, to_user
from tests.streams import Stream

pytestmark = pytest.mark.asyncio


async def test_alice_receives_what_is_sent_to_her_with_every_field(herald: Herald) -> None:
    stream = Stream(herald.user("alice"))
    started = await stream.start()
    assert (started.user_id, started.tenant_id) == ("alice", "acme")

    sent = to_user("alice", "Hello", priority=notification_pb2.PRIORITY_HIGH, ttl_seconds=600)
    sent.content.body = "Your order shipped"
    sent.content.image_url = "https://example.test/box.png"
    sent.content.actions.add(id="track", label="Track", url="https://example.test/track")
    sent.content.data.update({"order": 42})
    sent.metadata["campaign"] = "spring"
    response = await herald.backend().send(sent)
    assert response.recipient_count == 1

    [delivery] = await stream.deliveries(1)
    got = delivery.notification
    assert got.id == response.notification_id
    assert got.tenant_id == "acme"
    assert got.target.user_id == "alice"
    assert got.priority == notification_pb2.PRIORITY_HIGH
    assert got.ttl_seconds == 600
    assert got.content == sent.content
    assert dict(got.metadata) == {"campaign": "spring"}
    assert got.expires_at.seconds - got.created_at.seconds == 600
    assert (delivery.log, delivery.cursor, delivery.attempt) == ("user", 1, 1)
    assert delivery.resume_cursor == 1
    stream.cancel()


async def test_a_send_to_bob_does_not_reach_alice(herald: Herald) -> None:
    alice = Stream(herald.user("alice"))
    bob = Stream(herald.user("bob"))
    await alice.start()
    await bob.start()
    backend = herald.backend()
    to_bob = await backend.send(to_user("bob", "for bob"))
    to_alice = await backend.send(to_user("alice", "for alice"))
    # Alice's log is ordered: had bob's notification leaked, it would arrive first.
    [first] = await alice.deliveries(1)
    assert first.notification.id == to_alice.notification_id
    [bobs] = await bob.deliveries(1)
    assert bobs.notification.id == to_bob.notification_id
    alice.cancel()
    bob.cancel()


async def test_a_list_of_users_reaches_each_of_them_once(herald: Herald) -> None:
    streams = {u: Stream(herald.user(u)) for u in ("alice", "bob")}
    for stream in streams.values():
        await stream.start()
    sent = to_user("x")
    sent.target.users.user_ids.extend(["alice", "bob", "alice"])
    response = await herald.backend().send(sent)
    assert response.recipient_count == 2
    for stream in streams.values():
        [delivery] = await stream.deliveries(1)
        assert delivery.notification.id == response.notification_id
        stream.cancel()


async def test_tenant_globex_cannot_read_send_to_or_look_up_acme(herald: Herald) -> None:
    # A globex token for "alice" is globex's alice, never acme's.
    globex_alice = Stream(herald.user("alice", tenant="globex"))
    started = await globex_alice.start()
    assert started.tenant_id == "globex"
    acme_alice = Stream(herald.user("alice", tenant="acme"))
    await acme_alice.start()

    await herald.backend("acme").send(to_user("alice", "acme only"))
    globex_sent = await herald.backend("globex").send(to_user("alice", "globex only"))
    [first] = await globex_alice.deliveries(1)
    assert first.notification.id == globex_sent.notification_id
    assert first.notification.tenant_id == "globex"

    # Sending to acme with a globex token is refused, and nothing reaches acme's alice.
    cross = to_user("alice", "cross-tenant")
    cross.tenant_id = "acme"
    with pytest.raises(aio.AioRpcError) as refused:
        await herald.backend("globex").send(cross)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "cannot send to tenant 'acme'" in (refused.value.details() or "")
    [acme_first] = await acme_alice.deliveries(1)
    assert acme_first.notification.content.title == "acme only"

    # Looking up acme's presence or sessions with a globex token is refused.
    stub, metadata = herald.registry_stub(herald.tokens.backend("globex", "presence:read"))
    for call in (
        stub.GetPresence(
            registry_pb2.GetPresenceRequest(tenant_id="acme", user_ids=["alice"]), metadata=metadata
        ),
        stub.ListSessions(registry_pb2.ListSessionsRequest(tenant_id="acme"), metadata=metadata),
    ):
        with pytest.raises(aio.AioRpcError) as denied:
            await call
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "cannot act on another tenant" in (denied.value.details() or "")

    # The globex status lookup of an acme notification finds nothing.
    acme_id = acme_first.notification.id
    with pytest.raises(aio.AioRpcError) as missing:
        await herald.backend("globex").status(acme_id)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    globex_alice.cancel()
    acme_alice.cancel()


async def test_presence_and_sessions_follow_the_stream(herald: Herald) -> None:
    stub, metadata = herald.registry_stub(herald.tokens.backend("acme", "presence:read"))
    stream = Stream(herald.user("alice"))
    started = await stream.start()
    presence = await stub.GetPresence(
        registry_pb2.GetPresenceRequest(user_ids=["alice", "nobody"]), metadata=metadata
    )
    states = {u.user_id: u.state for u in presence.users}
    assert states == {
        "alice": registry_pb2.PRESENCE_STATE_ONLINE,
        "nobody": registry_pb2.PRESENCE_STATE_OFFLINE,
    }
    sessions = await stub.ListSessions(
        registry_pb2.ListSessionsRequest(user_id="alice"), metadata=metadata
    )
    assert [s.session_id for s in sessions.sessions] == [started.session_id]
    assert sessions.sessions[0].node_id == started.node_id


async def test_status_follows_delivery_and_ack(herald: Herald) -> None:
    alice = herald.user("alice")
    stream = Stream(alice)
    await stream.start()
    backend = herald.backend()
    sent = await backend.send(to_user("alice"))
    [delivery] = await stream.deliveries(1)
    status = await backend.status(sent.notification_id)
    [recipient] = status.recipients
    assert recipient.user_id == "alice"
    assert recipient.state == 2  # DELIVERED
    # What has not happened is unset, not the epoch (1970-01-01 in JSON).
    assert recipient.HasField("delivered_at")
    assert not recipient.HasField("acked_at")
    assert not recipient.HasField("read_at")
    assert await alice.ack(notification_ids=[delivery.notification.id]) == 1
    assert await alice.ack(notification_ids=[delivery.notification.id]) == 0
    status = await backend.status(sent.notification_id)
    assert status.recipients[0].state == 3  # ACKED
    assert status.recipients[0].acked_at.seconds > 0
    stream.cancel()


async def test_operator_disconnect_closes_the_stream_with_a_reason(herald: Herald) -> None:
    stream = Stream(herald.user("alice"))
    started = await stream.start()
    stub, metadata = herald.registry_stub(herald.tokens.backend("acme", "sessions:admin"))
    response = await stub.Disconnect(
        registry_pb2.DisconnectRequest(session_id=started.session_id, reason="maintenance"),
        metadata=metadata,
    )
    assert response.disconnected == 1
    event = await stream.event()
    assert event.WhichOneof("event") == "closing"
    assert event.closing.reason == event.closing.REASON_DISCONNECTED
    assert event.closing.message == "maintenance"
    assert await stream.call.read() is aio.EOF
