"""Acceptance: bad input gets a clear status and an actionable message, never UNKNOWN."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import grpc
import jwt
import pytest
from google.protobuf.message import Message
from grpc import aio

from herald.node.v1 import node_pb2, node_pb2_grpc
from herald.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    notification_pb2,
    registry_pb2,
    stream_pb2,
    stream_pb2_grpc,
)
from services import auth
from services.client import HeraldClient
from services.interceptors import ErrorLog
from tests import raw_calls
from tests.harness import Herald, to_user
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def _status_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(aio.AioRpcError) as failure:
        await call
    return failure.value.code(), failure.value.details() or ""


def _no_target() -> notification_pb2.Notification:
    n = notification_pb2.Notification()
    n.content.title = "x"
    return n


def _users(*user_ids: str) -> notification_pb2.Notification:
    n = to_user("x")
    n.target.users.user_ids.extend(user_ids)
    if not user_ids:
        n.target.users.SetInParent()
    return n


def _broadcast_false() -> notification_pb2.Notification:
    n = to_user("x")
    n.target.broadcast = False
    return n


def _oversized() -> notification_pb2.Notification:
    n = to_user("alice")
    n.content.body = "x" * 4097
    return n


def _unknown_priority() -> notification_pb2.Notification:
    n = to_user("alice")
    n.priority = 7  # type: ignore[assignment]
    return n


def _with_id() -> notification_pb2.Notification:
    n = to_user("alice")
    n.id = "mine"
    return n


def _empty_content() -> notification_pb2.Notification:
    n = notification_pb2.Notification()
    n.target.user_id = "alice"
    return n


BAD_NOTIFICATIONS: dict[str, tuple[Callable[[], notification_pb2.Notification], str]] = {
    "missing target": (_no_target, "notification.target is required"),
    "empty user id": (lambda: to_user(""), "target.user_id must not be empty"),
    "empty user list": (_users, "target.users must list at least one user id"),
    "empty id in user list": (lambda: _users("alice", ""), "every user id in target.users"),
    "too many users": (lambda: _users(*[f"u{i}" for i in range(1001)]), "the limit is 1000"),
    "broadcast false": (_broadcast_false, "target.broadcast must be true"),
    "empty channel": (lambda: _channel(""), "target.channel must not be empty"),
    "payload over 4 KiB": (_oversized, "the limit is 4096 bytes"),
    "unknown priority": (_unknown_priority, "priority 7 is not a known Priority"),
    "id set by the client": (_with_id, "notification.id is assigned by the server"),
    "nothing to show": (_empty_content, "content needs a title, a body or data"),
}


def _channel(name: str) -> notification_pb2.Notification:
    n = to_user("x")
    n.target.channel = name
    return n


@pytest.mark.parametrize("case", sorted(BAD_NOTIFICATIONS))
async def test_send_refuses_malformed_notifications(herald_up: Herald, case: str) -> None:
    build, message = BAD_NOTIFICATIONS[case]
    code, details = await _status_of(herald_up.backend().send(build()))
    assert code == INVALID
    assert message in details


async def test_an_unknown_segment_target_is_not_found_with_a_reason(herald_up: Herald) -> None:
    notification = to_user("x")
    notification.target.segment = "beta-testers"
    code, details = await _status_of(herald_up.backend().send(notification))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "no segment 'beta-testers'" in details
    assert "CreateSegment" in details


async def test_send_without_a_notification_is_invalid(herald_up: Herald) -> None:
    client = herald_up.backend()
    stub = ingest_pb2_grpc.IngestServiceStub(client._channel)
    code, details = await _status_of(
        stub.Send(ingest_pb2.SendRequest(), metadata=client.metadata())
    )
    assert (code, details) == (INVALID, "SendRequest.notification is required")


async def test_a_batch_keeps_the_good_and_names_the_bad(herald_up: Herald) -> None:
    stream = Stream(herald_up.user("alice"))
    await stream.start()
    batch = [to_user("alice", "one"), _oversized(), to_user("alice", "two"), to_user("")]
    response = await herald_up.backend().send_batch(batch)
    outcomes = [r.WhichOneof("outcome") for r in response.results]
    assert outcomes == ["accepted", "error", "accepted", "error"]
    assert response.results[1].error.code == INVALID.value[0]
    assert "the limit is 4096 bytes" in response.results[1].error.message
    delivered = await stream.deliveries(2)
    assert [d.notification.content.title for d in delivered] == ["one", "two"]
    stream.cancel()


async def test_a_batch_over_the_limit_is_refused_whole(herald_up: Herald) -> None:
    code, details = await _status_of(herald_up.backend().send_batch([to_user("a")] * 501))
    assert code == INVALID
    assert "at most 500" in details


# -- authentication ---------------------------------------------------------------------------


def _forged(herald: Herald, **changes: object) -> str:
    claims: dict[str, object] = {
        "sub": "billing",
        "tenant": "acme",
        "scope": "send",
        "iss": "herald",
        "aud": "herald",
        "exp": int(time.time()) + 600,
    }
    claims.update(changes)
    key = herald.tokens.minter._signing_key
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="HS256")


BAD_TOKENS: dict[str, tuple[Callable[[Herald], str | None], str]] = {
    "no token": (lambda h: None, "missing 'authorization: Bearer <token>' metadata"),
    "not bearer": (lambda h: "Basic abc", "must be 'Bearer <token>'"),
    "garbage": (lambda h: "Bearer not-a-jwt", "malformed or its signature is invalid"),
    "wrong key": (
        lambda h: "Bearer " + jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256"),
        "malformed or its signature is invalid",
    ),
    "expired": (lambda h: "Bearer " + _forged(h, exp=int(time.time()) - 3600), "has expired"),
    "other audience": (lambda h: "Bearer " + _forged(h, aud="other"), "another audience"),
    "other issuer": (lambda h: "Bearer " + _forged(h, iss="evil"), "wrong issuer"),
    "no tenant": (lambda h: "Bearer " + _forged(h, tenant=None), "lacks the 'tenant' claim"),
    "no exp": (lambda h: "Bearer " + _forged(h, exp=None), "lacks the 'exp' claim"),
    "star tenant": (lambda h: "Bearer " + _forged(h, tenant="*"), "only node tokens"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_are_unauthenticated(herald_up: Herald, case: str) -> None:
    make, message = BAD_TOKENS[case]
    authorization = make(herald_up)
    client = herald_up.backend()
    stub = ingest_pb2_grpc.IngestServiceStub(client._channel)
    metadata = () if authorization is None else (("authorization", authorization),)
    request = ingest_pb2.SendRequest(notification=to_user("alice"))
    code, details = await _status_of(stub.Send(request, metadata=metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert message in details


async def test_subscribe_without_a_token_is_unauthenticated(herald_up: Herald) -> None:
    client = HeraldClient(herald_up.address("stream"), "")
    herald_up.clients.append(client)
    call = client.open_stream(stream_pb2.SubscribeRequest())
    code, _ = await _status_of(call.read())
    assert code == grpc.StatusCode.UNAUTHENTICATED


# -- authorization ----------------------------------------------------------------------------


async def test_a_user_token_cannot_send(herald_up: Herald) -> None:
    client = HeraldClient(herald_up.address("ingest"), herald_up.tokens.user("acme", "alice"))
    herald_up.clients.append(client)
    code, details = await _status_of(client.send(to_user("bob")))
    assert (code, details) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "the token lacks the 'send' scope",
    )


async def test_a_backend_token_cannot_subscribe(herald_up: Herald) -> None:
    client = HeraldClient(herald_up.address("stream"), herald_up.tokens.backend("acme"))
    herald_up.clients.append(client)
    code, details = await _status_of(client.open_stream(stream_pb2.SubscribeRequest()).read())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'subscribe' scope" in details


async def test_only_node_tokens_reach_the_node_service(herald_up: Herald) -> None:
    client = herald_up.backend()
    stub = node_pb2_grpc.NodeServiceStub(client._channel)
    code, details = await _status_of(
        stub.Dispatch(node_pb2.DispatchRequest(), metadata=client.metadata())
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'node' scope" in details


async def test_joining_a_channel_needs_the_channels_claim(herald_up: Herald) -> None:
    client = herald_up.user("alice", channels=["news-*"])
    allowed = Stream(client, stream_pb2.SubscribeRequest(channels=["news-eu"]))
    assert list((await allowed.start()).channels) == ["news-eu"]
    allowed.cancel()
    denied = client.open_stream(stream_pb2.SubscribeRequest(channels=["admin"]))
    code, details = await _status_of(denied.read())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "does not allow joining channel 'admin'" in details


async def test_a_cursor_for_a_log_the_session_does_not_read_is_invalid(herald_up: Herald) -> None:
    request = stream_pb2.SubscribeRequest(cursors=[stream_pb2.LogCursor(log="channel:x", cursor=3)])
    code, details = await _status_of(herald_up.user("alice").open_stream(request).read())
    assert code == INVALID
    assert "cursor for unknown log 'channel:x'" in details


async def test_an_unexpected_failure_is_internal_not_unknown(
    herald_up: Herald, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = herald_up.node("stream").dispatcher
    assert delivery is not None

    async def broken(*args: object) -> list[int]:
        raise RuntimeError("disk on fire: secret-payload")

    monkeypatch.setattr(delivery, "dispatch", broken)
    # The ingest core holds the delivery object itself; patch the bound method it calls.
    ingest = herald_up.node("ingest").ingest
    assert ingest is not None
    monkeypatch.setattr(ingest, "_delivery", delivery)
    for _ in range(3):
        code, details = await _status_of(herald_up.backend().send(to_user("alice")))
        assert code == grpc.StatusCode.INTERNAL
        assert details == "internal error; it was logged on the server"
    # One bounded line for the three: the type and where, not the message or a traceback.
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is None
    line = record.getMessage()
    assert line.startswith("unhandled RuntimeError in /herald.v1.IngestService/Send at ")
    assert "in broken" in line
    assert "secret-payload" not in line
    assert len(line) < 1000


async def test_a_token_the_verifier_chokes_on_is_unauthenticated(
    herald_up: Herald, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def choke(self: auth.TokenVerifier, token: str) -> auth.Principal:
        raise KeyError(token)

    client = herald_up.backend()
    monkeypatch.setattr(auth.TokenVerifier, "verify", choke)
    code, details = await _status_of(client.send(to_user("alice")))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "the token could not be verified")
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage().startswith("unhandled KeyError in /herald.v1.IngestService/Send")
    assert client.metadata()[0][1].removeprefix("Bearer ") not in record.getMessage()


async def test_unexpected_errors_are_logged_once_per_method_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    errors = ErrorLog(interval_s=60.0, now=lambda: now[0])
    for at in (0.0, 1.0, 59.0, 60.0, 61.0):
        now[0] = at
        errors.record("/herald.v1.IngestService/Send", KeyError("a-user-id"))
    errors.record("/herald.v1.StreamService/Ack", KeyError("a-user-id"))
    logged = [(r.method, r.left_out) for r in caplog.records]  # type: ignore[attr-defined]
    assert logged == [
        ("/herald.v1.IngestService/Send", 0),
        ("/herald.v1.IngestService/Send", 2),  # at 60 s, with the two left out since 0 s
        ("/herald.v1.StreamService/Ack", 0),
    ]
    assert all("a-user-id" not in r.getMessage() for r in caplog.records)


# -- bytes that are not a request message ------------------------------------------------------

UNDECODABLE = "the request is not a valid message of this method's type"


def _raw_unary(client: HeraldClient, method: str) -> aio.UnaryUnaryMultiCallable:
    """A multicallable that sends and returns bytes as they are."""
    return client._channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    logged = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged == []
    assert [r for r in caplog.records if r.exc_info] == []


async def test_undecodable_bytes_without_a_token_are_unauthenticated(
    herald_up: Herald, caplog: pytest.LogCaptureFixture
) -> None:
    send = _raw_unary(herald_up.backend(), "/herald.v1.IngestService/Send")
    code, details = await _status_of(send(b"\xff"))
    assert (code, details) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "missing 'authorization: Bearer <token>' metadata",
    )
    _no_errors_logged(caplog)


async def test_undecodable_bytes_with_a_token_are_invalid(
    herald_up: Herald, caplog: pytest.LogCaptureFixture
) -> None:
    client = herald_up.backend()
    code, details = await _status_of(
        _raw_unary(client, "/herald.v1.IngestService/Send")(b"\xff", metadata=client.metadata())
    )
    assert code == INVALID
    assert details.startswith(UNDECODABLE)
    _no_errors_logged(caplog)


async def test_a_string_that_is_not_utf8_is_invalid(
    herald_up: Herald, caplog: pytest.LogCaptureFixture
) -> None:
    client = herald_up.backend()
    get_status = _raw_unary(client, "/herald.v1.IngestService/GetStatus")
    # GetStatusRequest.notification_id (field 1, length 2) holding a broken UTF-8 sequence.
    code, details = await _status_of(get_status(b"\x0a\x02\xc3\x28", metadata=client.metadata()))
    assert code == INVALID
    assert details.startswith(UNDECODABLE)
    _no_errors_logged(caplog)


async def test_a_bad_message_on_an_ack_stream_ends_it_as_invalid(
    herald_up: Herald, caplog: pytest.LogCaptureFixture
) -> None:
    notification_id = (await herald_up.backend().send(to_user("alice"))).notification_id
    alice = herald_up.user("alice")
    call = alice._channel.stream_stream(
        "/herald.v1.StreamService/AckStream", request_serializer=None, response_deserializer=None
    )(metadata=alice.metadata())
    # Messages are decoded as the handler reads them: the good one is answered first.
    await call.write(
        stream_pb2.AckStreamRequest(notification_ids=[notification_id]).SerializeToString()
    )
    assert stream_pb2.AckStreamResponse.FromString(await call.read()).acked == 1
    await call.write(b"\xff")
    code, details = await _status_of(call.read())
    assert code == INVALID
    assert details.startswith(UNDECODABLE)
    assert await call.code() == INVALID
    _no_errors_logged(caplog)


async def test_public_methods_decode_the_same_way(
    herald_up: Herald, caplog: pytest.LogCaptureFixture
) -> None:
    check = _raw_unary(herald_up.backend(), "/grpc.health.v1.Health/Check")
    code, details = await _status_of(check(b"\xff"))
    assert code == INVALID
    assert details.startswith(UNDECODABLE)
    reflection = herald_up.backend()._channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=None,
        response_deserializer=None,
    )()
    await reflection.write(b"\xff")
    code, _ = await _status_of(reflection.read())
    assert code == INVALID
    _no_errors_logged(caplog)


# -- strings over their bound ------------------------------------------------------------------

LONG = "x" * 10_000


def _send(**fields: object) -> ingest_pb2.SendRequest:
    notification = notification_pb2.Notification(**fields)  # type: ignore[arg-type]
    notification.content.title = "Hello"
    if not notification.HasField("target"):
        notification.target.user_id = "alice"
    return ingest_pb2.SendRequest(notification=notification)


def _template(default_locale: str) -> registry_pb2.PutTemplateRequest:
    template = registry_pb2.Template(template_id="welcome", default_locale=default_locale)
    template.locales["en"].title = "Hi"
    return registry_pb2.PutTemplateRequest(template=template)


_LONG_CURSOR = [stream_pb2.LogCursor(log=LONG, cursor=1)]
_NODE = "/herald.node.v1.NodeService/"
_REGISTRY = "/herald.v1.RegistryService/"

# method, a request with a long string, and who calls.
LONG_STRINGS: dict[str, tuple[str, Message, str]] = {
    "status id": (
        "/herald.v1.IngestService/GetStatus",
        ingest_pb2.GetStatusRequest(notification_id=LONG),
        "backend",
    ),
    "tenant": ("/herald.v1.IngestService/Send", _send(tenant_id=LONG), "backend"),
    "template id": (
        "/herald.v1.IngestService/Send",
        _send(template=notification_pb2.TemplateRef(template_id=LONG)),
        "backend",
    ),
    "channel": (
        "/herald.v1.IngestService/Send",
        _send(target=notification_pb2.Target(channel=LONG)),
        "backend",
    ),
    "idempotency key": ("/herald.v1.IngestService/Send", _send(idempotency_key=LONG), "backend"),
    "subscribe channel": (
        "/herald.v1.StreamService/Subscribe",
        stream_pb2.SubscribeRequest(channels=[LONG]),
        "user",
    ),
    "subscribe cursor log": (
        "/herald.v1.StreamService/Subscribe",
        stream_pb2.SubscribeRequest(cursors=_LONG_CURSOR),
        "user",
    ),
    "device": (
        "/herald.v1.StreamService/Subscribe",
        stream_pb2.SubscribeRequest(device=LONG),
        "user",
    ),
    "ack id": (
        "/herald.v1.StreamService/Ack",
        stream_pb2.AckRequest(notification_ids=[LONG]),
        "user",
    ),
    "ack log": ("/herald.v1.StreamService/Ack", stream_pb2.AckRequest(up_to=_LONG_CURSOR), "user"),
    "ack stream log": (
        "/herald.v1.StreamService/AckStream",
        stream_pb2.AckStreamRequest(up_to=_LONG_CURSOR),
        "user",
    ),
    "page token": (
        "/herald.v1.StreamService/ListInbox",
        stream_pb2.ListInboxRequest(page_token="1" * 10_000),
        "user",
    ),
    "mark read id": (
        "/herald.v1.StreamService/MarkRead",
        stream_pb2.MarkReadRequest(notification_ids=[LONG]),
        "user",
    ),
    "registry tenant": (
        _REGISTRY + "ListSessions",
        registry_pb2.ListSessionsRequest(tenant_id=LONG),
        "backend",
    ),
    "presence user": (
        _REGISTRY + "GetPresence",
        registry_pb2.GetPresenceRequest(user_ids=[LONG]),
        "backend",
    ),
    "disconnect reason": (
        _REGISTRY + "Disconnect",
        registry_pb2.DisconnectRequest(user_id="alice", reason=LONG),
        "backend",
    ),
    "join session": (
        _REGISTRY + "JoinChannel",
        registry_pb2.JoinChannelRequest(session_id=LONG, channel="news"),
        "backend",
    ),
    "get template": (
        _REGISTRY + "GetTemplate",
        registry_pb2.GetTemplateRequest(template_id=LONG),
        "backend",
    ),
    "delete template": (
        _REGISTRY + "DeleteTemplate",
        registry_pb2.DeleteTemplateRequest(template_id=LONG),
        "templates",
    ),
    "template locale": (_REGISTRY + "PutTemplate", _template(default_locale=LONG), "templates"),
    "register session": (
        _REGISTRY + "RegisterSession",
        registry_pb2.RegisterSessionRequest(
            session=registry_pb2.Session(session_id="s", tenant_id="acme", user_id=LONG)
        ),
        "node",
    ),
    "node status": (
        _NODE + "GetDeliveryStatus",
        node_pb2.GetDeliveryStatusRequest(tenant_id="acme", notification_id=LONG),
        "node",
    ),
    "close reason": (
        _NODE + "CloseSessions",
        node_pb2.CloseSessionsRequest(tenant_id="acme", reason=LONG),
        "node",
    ),
    "change channels": (
        _NODE + "ChangeChannels",
        node_pb2.ChangeChannelsRequest(tenant_id="acme", session_id="s", join=[LONG]),
        "node",
    ),
}


def _token(herald: Herald, who: str) -> str:
    minter = herald.tokens.minter
    if who == "user":
        return herald.tokens.user("acme", "alice", channels=["*"])
    if who == "templates":
        return herald.tokens.backend("acme", auth.SCOPE_TEMPLATES_WRITE)
    if who == "node":
        return minter.node_token("n1")
    return herald.tokens.backend("acme", auth.SCOPE_SEND, auth.SCOPE_SESSIONS_ADMIN)


@pytest.mark.parametrize("case", sorted(LONG_STRINGS))
async def test_a_string_over_its_bound_is_refused_in_a_short_message(
    herald_up: Herald, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, request, who = LONG_STRINGS[case]
    metadata = (("authorization", f"Bearer {_token(herald_up, who)}"),)
    code, details = await raw_calls.call(
        herald_up.backend()._channel, path, [request.SerializeToString()], metadata
    )
    assert code in (INVALID, grpc.StatusCode.PERMISSION_DENIED), (code, details)
    assert len(details) < 200, details
    _no_errors_logged(caplog)


async def test_a_page_token_of_other_digits_is_invalid(
    herald_up: Herald, caplog: pytest.LogCaptureFixture
) -> None:
    alice = herald_up.user("alice")
    stub = stream_pb2_grpc.StreamServiceStub(alice._channel)
    for token in ("²", "١٢", "12a", "-1", " 1", str(1 << 64)):
        code, details = await _status_of(
            stub.ListInbox(stream_pb2.ListInboxRequest(page_token=token), metadata=alice.metadata())
        )
        assert (code, details) == (INVALID, "page_token is not one this server gave out"), token
    response = await stub.ListInbox(
        stream_pb2.ListInboxRequest(page_token=str((1 << 64) - 1)), metadata=alice.metadata()
    )
    assert list(response.items) == []
    _no_errors_logged(caplog)


async def test_a_long_id_is_not_echoed_whole(herald_up: Herald) -> None:
    """An id within its bound but long is quoted in part where a message names it."""
    client = herald_up.backend()
    code, details = await _status_of(client.status("y" * 256))
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == f"no notification '{'y' * 64}…' in this tenant"


async def test_repeated_fields_are_bounded_before_any_work_per_entry(herald_up: Herald) -> None:
    alice = herald_up.user("alice", channels=["*"])
    too_many = [f"n{i}" for i in range(1001)]
    code, details = await _status_of(alice.ack(notification_ids=too_many))
    assert (code, details) == (
        INVALID,
        "notification_ids holds 1001 entries; at most 1000 are allowed",
    )
    code, details = await _status_of(alice.mark_read(too_many))
    assert code == INVALID
    # Channels are counted before any is matched against the token's patterns.
    stream = alice.open_stream(stream_pb2.SubscribeRequest(channels=too_many))
    code, details = await _status_of(stream.read())
    assert (code, details) == (INVALID, "channels holds 1001 entries; at most 1000 are allowed")
    presence = herald_up.registry_stub(herald_up.tokens.backend("acme", auth.SCOPE_PRESENCE_READ))
    stub, metadata = presence
    code, _ = await _status_of(
        stub.GetPresence(registry_pb2.GetPresenceRequest(user_ids=too_many), metadata=metadata)
    )
    assert code == INVALID
    # At the bound, a call goes through.
    assert await alice.ack(notification_ids=too_many[:1000]) == 0
