"""Targets and content through real gRPC: channels, broadcasts, templates, the in-app inbox."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from herald.v1 import (
    ingest_pb2,
    notification_pb2,
    registry_pb2,
    registry_pb2_grpc,
    stream_pb2,
    stream_pb2_grpc,
)
from tests.conftest import Deploy
from tests.harness import Herald, to_user
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

TOPOLOGIES = pytest.mark.parametrize("topology", ["up", "split"])


def to_channel(channel: str, title: str, **fields: object) -> notification_pb2.Notification:
    n = to_user("x", title, **fields)
    n.target.channel = channel
    return n


def broadcast(title: str, **fields: object) -> notification_pb2.Notification:
    n = to_user("x", title, **fields)
    n.target.broadcast = True
    return n


def _admin(
    herald: Herald,
) -> tuple[registry_pb2_grpc.RegistryServiceStub, tuple[tuple[str, str], ...]]:
    return herald.registry_stub(
        herald.tokens.backend("acme", "sessions:admin", "templates:write", "send")
    )


@TOPOLOGIES
async def test_channel_members_get_channel_notifications_with_their_own_cursors(
    deploy: Deploy, topology: str
) -> None:
    herald, _ = await deploy(topology)
    backend = herald.backend()
    early = await backend.send(to_channel("news", "before anyone joined"))
    member = Stream(
        herald.user("alice", channels=["news"]), stream_pb2.SubscribeRequest(channels=["news"])
    )
    outsider = Stream(herald.user("bob"))
    await member.start()
    await outsider.start()
    response = await backend.send(to_channel("news", "breaking"))
    assert response.recipient_count == 0  # channel logs have no fixed recipient list
    to_bob = await backend.send(to_user("bob", "direct"))
    got = await member.deliveries(2)
    assert [(d.log, d.cursor, d.notification.id) for d in got] == [
        ("channel:news", 1, early.notification_id),
        ("channel:news", 2, response.notification_id),
    ]
    [bobs] = await outsider.deliveries(1)
    assert bobs.notification.id == to_bob.notification_id  # no channel traffic leaked to bob
    member.cancel()
    outsider.cancel()


@TOPOLOGIES
async def test_the_registry_joins_and_leaves_channels_server_side(
    deploy: Deploy, topology: str
) -> None:
    herald, _ = await deploy(topology)
    backend = herald.backend()
    await backend.send(to_channel("ops", "history"))
    stream = Stream(herald.user("alice"))  # no channels claim: only the server may join her
    started = await stream.start()
    stub, metadata = _admin(herald)
    joined = await stub.JoinChannel(
        registry_pb2.JoinChannelRequest(session_id=started.session_id, channel="ops"),
        metadata=metadata,
    )
    assert list(joined.channels) == ["ops"]
    [replayed] = await stream.deliveries(1)
    assert (replayed.log, replayed.notification.content.title) == ("channel:ops", "history")
    sessions = await stub.ListSessions(
        registry_pb2.ListSessionsRequest(user_id="alice"), metadata=metadata
    )
    assert list(sessions.sessions[0].channels) == ["ops"]

    await stub.LeaveChannel(
        registry_pb2.LeaveChannelRequest(session_id=started.session_id, channel="ops"),
        metadata=metadata,
    )
    await backend.send(to_channel("ops", "after leaving"))
    direct = await backend.send(to_user("alice", "direct"))
    [next_one] = await stream.deliveries(1)
    assert next_one.notification.id == direct.notification_id

    with pytest.raises(aio.AioRpcError) as missing:
        await stub.JoinChannel(
            registry_pb2.JoinChannelRequest(session_id="nope", channel="ops"), metadata=metadata
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    stream.cancel()


@TOPOLOGIES
async def test_a_broadcast_reaches_users_who_connect_within_its_ttl(
    deploy: Deploy, topology: str
) -> None:
    herald, clock = await deploy(topology)
    backend = herald.backend()
    await backend.send(broadcast("short", ttl_seconds=60))
    await backend.send(broadcast("long", ttl_seconds=3600))
    other_tenant = await herald.backend("globex").send(broadcast("globex only"))
    early = Stream(herald.user("alice"))
    await early.start()
    got = await early.deliveries(2)
    assert [(d.log, d.notification.content.title) for d in got] == [
        ("broadcast", "short"),
        ("broadcast", "long"),
    ]
    await clock.advance(120)  # "short" has expired for anyone connecting from now on
    late = Stream(herald.user("carol"))
    await late.start()
    [only] = await late.deliveries(1)
    assert only.notification.content.title == "long"
    assert only.notification.id != other_tenant.notification_id
    early.cancel()
    late.cancel()


async def test_templates_are_versioned_rendered_safely_and_checked_at_send(
    deploy: Deploy,
) -> None:
    herald, _ = await deploy("split")
    stub, metadata = _admin(herald)
    template = registry_pb2.Template(template_id="welcome", default_locale="en")
    template.locales["en"].title = "Hi {{ name }}"
    template.locales["en"].body = "Welcome to {{team}}."
    template.locales["fr"].title = "Salut {{name}}"
    template.locales["fr"].body = "Bienvenue chez {{team}}."
    v1 = await stub.PutTemplate(
        registry_pb2.PutTemplateRequest(template=template), metadata=metadata
    )
    template.locales["en"].title = "Hello {{name}}"
    v2 = await stub.PutTemplate(
        registry_pb2.PutTemplateRequest(template=template), metadata=metadata
    )
    assert (v1.template.version, v2.template.version) == (1, 2)
    newest = await stub.GetTemplate(
        registry_pb2.GetTemplateRequest(template_id="welcome"), metadata=metadata
    )
    assert newest.template.locales["en"].title == "Hello {{name}}"
    listed = await stub.ListTemplates(registry_pb2.ListTemplatesRequest(), metadata=metadata)
    assert [(t.template_id, t.version) for t in listed.templates] == [("welcome", 2)]

    stream = Stream(herald.user("alice"))
    await stream.start()
    backend = herald.backend()
    send = to_user("alice", "")
    send.template.template_id = "welcome"
    send.template.variables.update({"name": "{{team}}", "team": "Acme"})  # values are not expanded
    send.template.locale = "fr-CA"
    await backend.send(send)
    older = to_user("alice", "")
    older.template.template_id = "welcome"
    older.template.version = 1
    older.template.variables.update({"name": "Al", "team": "Acme"})
    await backend.send(older)
    first, second = await stream.deliveries(2)
    assert (first.notification.content.title, first.notification.content.body) == (
        "Salut {{team}}",
        "Bienvenue chez Acme.",
    )
    assert (first.notification.template.version, first.notification.template.locale) == (2, "fr")
    assert second.notification.content.title == "Hi Al"

    missing_variable = to_user("alice", "")
    missing_variable.template.template_id = "welcome"
    missing_variable.template.variables["name"] = "Al"
    with pytest.raises(aio.AioRpcError) as invalid:
        await backend.send(missing_variable)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs variable 'team'" in (invalid.value.details() or "")

    unknown = to_user("alice", "")
    unknown.template.template_id = "nope"
    with pytest.raises(aio.AioRpcError) as not_found:
        await backend.send(unknown)
    assert not_found.value.code() == grpc.StatusCode.NOT_FOUND

    broken = registry_pb2.Template(template_id="broken", default_locale="en")
    broken.locales["en"].title = "Hi {{ name"
    with pytest.raises(aio.AioRpcError) as bad_template:
        await stub.PutTemplate(registry_pb2.PutTemplateRequest(template=broken), metadata=metadata)
    assert bad_template.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside a {{name}} placeholder" in (bad_template.value.details() or "")

    # Another tenant sees none of acme's templates.
    globex, globex_metadata = herald.registry_stub(herald.tokens.backend("globex", "send"))
    with pytest.raises(aio.AioRpcError) as isolated:
        await globex.GetTemplate(
            registry_pb2.GetTemplateRequest(template_id="welcome"), metadata=globex_metadata
        )
    assert isolated.value.code() == grpc.StatusCode.NOT_FOUND

    deleted = await stub.DeleteTemplate(
        registry_pb2.DeleteTemplateRequest(template_id="welcome"), metadata=metadata
    )
    assert deleted.deleted_versions == 2
    stream.cancel()


async def test_a_user_lists_their_inbox_newest_first_and_marks_it_read(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    backend = herald.backend()
    ids = [(await backend.send(to_user("alice", f"n{i}"))).notification_id for i in range(5)]
    await backend.send(to_user("bob", "not alice's"))
    alice = herald.user("alice")
    stub = stream_pb2_grpc.StreamServiceStub(alice._channel)
    page = await stub.ListInbox(stream_pb2.ListInboxRequest(page_size=3), metadata=alice.metadata())
    assert [i.notification.id for i in page.items] == ids[:1:-1]
    assert page.next_page_token
    rest = await stub.ListInbox(
        stream_pb2.ListInboxRequest(page_size=3, page_token=page.next_page_token),
        metadata=alice.metadata(),
    )
    assert [i.notification.id for i in rest.items] == ids[1::-1]
    assert rest.next_page_token == ""
    assert all(i.state == ingest_pb2.DELIVERY_STATE_QUEUED for i in rest.items)

    marked = await stub.MarkRead(
        stream_pb2.MarkReadRequest(notification_ids=ids[:2]), metadata=alice.metadata()
    )
    assert marked.marked == 2
    again = await stub.MarkRead(
        stream_pb2.MarkReadRequest(notification_ids=ids[:2]), metadata=alice.metadata()
    )
    assert again.marked == 0
    page = await stub.ListInbox(stream_pb2.ListInboxRequest(page_size=5), metadata=alice.metadata())
    read = {i.notification.id for i in page.items if i.HasField("read_at")}
    assert read == set(ids[:2])

    with pytest.raises(aio.AioRpcError) as bad:
        await stub.ListInbox(stream_pb2.ListInboxRequest(page_size=101), metadata=alice.metadata())
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
