"""Fuzzing: random bytes, mutated and random requests, and bad tokens at every herald method.

Whatever arrives, the server answers with a documented status (never UNKNOWN or INTERNAL) and a
bounded message, logs no error, stays SERVING and delivers a notification normally afterwards.

Hypothesis runs in a worker thread (`asyncio.to_thread`); each example's call runs on the test's
event loop, where the server and the client channel live, so the examples shrink as usual while
pytest-asyncio keeps one loop for the whole test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter

import grpc
import jwt
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herald.node.v1 import node_pb2
from herald.v1 import ingest_pb2, notification_pb2, registry_pb2, stream_pb2
from services import auth
from services.interceptors import REQUIRED_SCOPE
from tests import raw_calls
from tests.harness import Herald, to_user
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

# More examples to hunt for bugs: HOSTILE_INPUT_EXAMPLES=1000 pytest <this file>
EXAMPLES = int(os.environ.get("HOSTILE_INPUT_EXAMPLES", "50"))
Code = grpc.StatusCode
DOCUMENTED = {
    Code.OK,
    Code.INVALID_ARGUMENT,
    Code.UNAUTHENTICATED,
    Code.PERMISSION_DENIED,
    Code.NOT_FOUND,
    Code.RESOURCE_EXHAUSTED,
    Code.FAILED_PRECONDITION,
    # A conditional PutTenantSettings / DeleteTenantSettings on another version.
    Code.ABORTED,
    # CreateSegment of a segment that exists.
    Code.ALREADY_EXISTS,
}
MAX_DETAILS = 512

# Sessions the fuzz registers with its node token live in their own tenant, so that registry
# calls of the backend token (tenant acme) never ask a node the fuzz made up to close them.
NODE_TENANT = "fuzz-nodes"
NOTIFICATION_ID = "0" * 32


def _template() -> registry_pb2.Template:
    template = registry_pb2.Template(template_id="welcome", default_locale="en")
    template.locales["en"].title = "Hi {{name}}"
    template.locales["fr"].body = "Salut {{name}}"
    template.locales["en"].actions.add(id="open", label="Open", url="https://example.com")
    return template


def _dispatched() -> notification_pb2.Notification:
    notification = to_user("fuzz-bob", id=NOTIFICATION_ID, tenant_id=NODE_TENANT, priority=2)
    notification.created_at.seconds = int(time.time())
    notification.expires_at.seconds = int(time.time()) + 60
    return notification


def _to_segment(name: str) -> notification_pb2.Notification:
    # The segment the CreateSegment / AddSegmentMembers seeds make.
    notification = to_user("x")
    notification.target.segment = name
    return notification


_CURSORS = [stream_pb2.LogCursor(log="user", cursor=1), stream_pb2.LogCursor(log="channel:news")]
_SESSION = registry_pb2.Session(
    session_id="s1", tenant_id=NODE_TENANT, user_id="fuzz-bob", node_id="n1", device="d"
)

# A valid request per method: what the mutations start from.
SEEDS: dict[str, Message] = {
    "/herald.v1.IngestService/Send": ingest_pb2.SendRequest(notification=to_user("fuzz-alice")),
    "/herald.v1.IngestService/SendBatch": ingest_pb2.SendBatchRequest(
        notifications=[
            to_user("fuzz-alice"),
            to_user("fuzz-carol", priority=3, category="billing"),
            _to_segment("s"),
        ]
    ),
    "/herald.v1.IngestService/GetStatus": ingest_pb2.GetStatusRequest(
        notification_id=NOTIFICATION_ID
    ),
    "/herald.v1.IngestService/CancelScheduled": ingest_pb2.CancelScheduledRequest(
        notification_id=NOTIFICATION_ID
    ),
    "/herald.v1.IngestService/ListScheduled": ingest_pb2.ListScheduledRequest(page_size=10),
    "/herald.v1.StreamService/Subscribe": stream_pb2.SubscribeRequest(
        channels=["news"], cursors=_CURSORS, device="fuzz", accept_encodings=["json", "zstd"]
    ),
    "/herald.v1.StreamService/Ack": stream_pb2.AckRequest(
        notification_ids=[NOTIFICATION_ID], up_to=_CURSORS
    ),
    "/herald.v1.StreamService/AckStream": stream_pb2.AckStreamRequest(
        notification_ids=[NOTIFICATION_ID], up_to=_CURSORS
    ),
    "/herald.v1.StreamService/ListInbox": stream_pb2.ListInboxRequest(page_size=10, page_token="5"),
    "/herald.v1.StreamService/MarkRead": stream_pb2.MarkReadRequest(
        notification_ids=[NOTIFICATION_ID]
    ),
    "/herald.v1.StreamService/UpdateInboxState": stream_pb2.UpdateInboxStateRequest(
        notification_ids=[NOTIFICATION_ID], action=stream_pb2.INBOX_ACTION_ARCHIVE
    ),
    "/herald.v1.StreamService/MarkAllRead": stream_pb2.MarkAllReadRequest(up_to_cursor=5),
    "/herald.v1.StreamService/GetInboxCounts": stream_pb2.GetInboxCountsRequest(),
    "/herald.v1.StreamService/GetSigningKeys": stream_pb2.GetSigningKeysRequest(),
    "/herald.v1.RegistryService/RegisterSession": registry_pb2.RegisterSessionRequest(
        session=_SESSION
    ),
    "/herald.v1.RegistryService/HeartbeatSession": registry_pb2.HeartbeatSessionRequest(
        tenant_id=NODE_TENANT, session_ids=["s1", "s2"]
    ),
    "/herald.v1.RegistryService/UnregisterSession": registry_pb2.UnregisterSessionRequest(
        tenant_id=NODE_TENANT, session_id="s1"
    ),
    "/herald.v1.RegistryService/GetPresence": registry_pb2.GetPresenceRequest(
        user_ids=["fuzz-alice", "fuzz-bob"]
    ),
    "/herald.v1.RegistryService/ListSessions": registry_pb2.ListSessionsRequest(
        user_id="fuzz-alice"
    ),
    "/herald.v1.RegistryService/Disconnect": registry_pb2.DisconnectRequest(
        user_id="fuzz-alice", reason="fuzz"
    ),
    "/herald.v1.RegistryService/JoinChannel": registry_pb2.JoinChannelRequest(
        session_id="s1", channel="news"
    ),
    "/herald.v1.RegistryService/LeaveChannel": registry_pb2.LeaveChannelRequest(
        session_id="s1", channel="news"
    ),
    "/herald.v1.RegistryService/PutTemplate": registry_pb2.PutTemplateRequest(template=_template()),
    "/herald.v1.RegistryService/GetTemplate": registry_pb2.GetTemplateRequest(
        template_id="welcome", version=1
    ),
    "/herald.v1.RegistryService/ListTemplates": registry_pb2.ListTemplatesRequest(),
    "/herald.v1.RegistryService/DeleteTemplate": registry_pb2.DeleteTemplateRequest(
        template_id="welcome"
    ),
    "/herald.v1.RegistryService/GetTenantSettings": registry_pb2.GetTenantSettingsRequest(),
    "/herald.v1.RegistryService/PutTenantSettings": registry_pb2.PutTenantSettingsRequest(
        settings=registry_pb2.TenantSettings(
            rate_limits=registry_pb2.TenantRateLimits(key_send_rate=100, key_send_burst=100),
            stream_policy=registry_pb2.StreamPolicy(compression=["zstd"], signing_required=True),
        ),
        expected_version=1,
    ),
    "/herald.v1.RegistryService/DeleteTenantSettings": registry_pb2.DeleteTenantSettingsRequest(),
    "/herald.v1.RegistryService/ListTenantSettings": registry_pb2.ListTenantSettingsRequest(
        page_size=10
    ),
    "/herald.v1.RegistryService/RegisterPushTarget": registry_pb2.RegisterPushTargetRequest(
        kind=registry_pb2.PUSH_KIND_WEBPUSH,
        web_push=registry_pb2.WebPushSubscription(
            endpoint="https://push.example/sub",
            p256dh="BPkSu2x9lJcgS1oz0gaoj8cFf2t6hD3eo6N2h_ezn3aAbyz8VZs2x7EVC1hLbHEIGrrm-Pq6FuJlTLUnT6kFnRo",
            auth="AAECAwQFBgcICQoLDA0ODw",
        ),
    ),
    "/herald.v1.RegistryService/UnregisterPushTarget": registry_pb2.UnregisterPushTargetRequest(
        target_id="fcm-0123456789abcdef01234567"
    ),
    "/herald.v1.RegistryService/ListPushTargets": registry_pb2.ListPushTargetsRequest(),
    "/herald.v1.RegistryService/CreateSegment": registry_pb2.CreateSegmentRequest(name="s"),
    "/herald.v1.RegistryService/AddSegmentMembers": registry_pb2.AddSegmentMembersRequest(
        name="s", user_ids=["alice"]
    ),
    "/herald.v1.RegistryService/RemoveSegmentMembers": registry_pb2.RemoveSegmentMembersRequest(
        name="s", user_ids=["alice"]
    ),
    "/herald.v1.RegistryService/ListSegmentMembers": registry_pb2.ListSegmentMembersRequest(
        name="s", page_size=10
    ),
    "/herald.v1.RegistryService/ListSegments": registry_pb2.ListSegmentsRequest(),
    "/herald.v1.RegistryService/DeleteSegment": registry_pb2.DeleteSegmentRequest(name="s"),
    "/herald.v1.RegistryService/GetPreferences": registry_pb2.GetPreferencesRequest(
        user_id="alice"
    ),
    "/herald.v1.RegistryService/PutPreferences": registry_pb2.PutPreferencesRequest(
        user_id="alice",
        preferences=registry_pb2.Preferences(
            defaults=registry_pb2.DeliveryPreference(push=False),
            categories=[registry_pb2.DeliveryPreference(category="marketing", in_app=False)],
        ),
    ),
    "/herald.v1.RegistryService/ListParkedWebhooks": registry_pb2.ListParkedWebhooksRequest(
        page_size=10
    ),
    "/herald.v1.RegistryService/ReplayWebhooks": registry_pb2.ReplayWebhooksRequest(
        batch_ids=["whb_0"]
    ),
    "/herald.v1.RegistryService/DeleteParkedWebhooks": registry_pb2.DeleteParkedWebhooksRequest(
        all=True
    ),
    "/herald.node.v1.NodeService/Dispatch": node_pb2.DispatchRequest(notifications=[_dispatched()]),
    "/herald.node.v1.NodeService/GetDeliveryStatus": node_pb2.GetDeliveryStatusRequest(
        tenant_id=NODE_TENANT, notification_id=NOTIFICATION_ID
    ),
    "/herald.node.v1.NodeService/CloseSessions": node_pb2.CloseSessionsRequest(
        tenant_id=NODE_TENANT, session_ids=["s1"], user_id="fuzz-bob", reason="fuzz"
    ),
    "/herald.node.v1.NodeService/ChangeChannels": node_pb2.ChangeChannelsRequest(
        tenant_id=NODE_TENANT, session_id="s1", join=["news"], leave=["old"]
    ),
}

# -- requests ---------------------------------------------------------------------------------

# Strings a request often means something with, beside random ones.
_WORDS = st.sampled_from(
    [
        *("", "user", "broadcast", "channel:news", "news", "acme", NODE_TENANT, "*", "s1"),
        *("fuzz-alice", "welcome", "en", "fr-CA", NOTIFICATION_ID, "{{name}}", "²", "x" * 300),
    ]
)
_TEXT = st.one_of(_WORDS, st.text(st.characters(codec="utf-8"), max_size=40))
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_UINT32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_FIXED32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1),
    FieldDescriptor.TYPE_FIXED64: (0, (1 << 64) - 1),
}
_MAX_DEPTH = 3


def _scalars(field: FieldDescriptor) -> st.SearchStrategy[object]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return _TEXT
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=20)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if field.type == FieldDescriptor.TYPE_FLOAT else 64)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 8)  # proto3 enums are open: unknown values decode too
    low, high = _INT_RANGES[field.type]
    return st.one_of(st.integers(max(low, -2), 100), st.sampled_from([low, high]))


@st.composite
def _message(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    """A random valid message of the type: every field set or not, at random."""
    message: Message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        is_message = field.type == FieldDescriptor.TYPE_MESSAGE
        if (is_message and depth >= _MAX_DEPTH) or not draw(st.booleans()):
            continue
        value = getattr(message, field.name)
        if is_message and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            for key in draw(st.lists(_scalars(key_field), max_size=3)):
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    value[key].CopyFrom(draw(_message(value_field.message_type, depth + 1)))
                else:
                    value[key] = draw(_scalars(value_field))
        elif is_message and field.is_repeated:
            for item in draw(st.lists(_message(field.message_type, depth + 1), max_size=3)):
                value.add().CopyFrom(item)
        elif is_message:
            value.CopyFrom(draw(_message(field.message_type, depth + 1)))
        elif field.is_repeated:
            value.extend(draw(st.lists(_scalars(field), max_size=3)))
        else:
            setattr(message, field.name, draw(_scalars(field)))
    return message


@st.composite
def _mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """The seed with a few bytes flipped, inserted, deleted, repeated or cut off."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(["flip", "insert", "delete", "repeat", "cut"]))
        if operation == "flip" and data:
            data[min(at, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif operation == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


def _payloads(path: str) -> st.SearchStrategy[bytes]:
    seed = SEEDS[path]
    return st.one_of(
        st.just(seed.SerializeToString()),
        st.binary(max_size=64),
        _mutated(seed.SerializeToString()),
        _message(seed.DESCRIPTOR).map(lambda m: m.SerializeToString()),
    )


# -- tokens -----------------------------------------------------------------------------------


def _tokens(herald: Herald, path: str) -> dict[str, str | None]:
    """The authorization each kind of caller sends (None: no metadata at all)."""
    minter = herald.tokens.minter
    scope = REQUIRED_SCOPE[path]
    if scope == auth.SCOPE_NODE:
        valid = minter.node_token("fuzz-node")
    elif scope in (auth.SCOPE_SUBSCRIBE, auth.SCOPE_PUSH_TARGETS):
        # The push-target RPCs take a user token (or a backend's `send`).
        valid = herald.tokens.user("acme", "fuzz-alice", channels=["news*"])
    else:
        valid = minter.mint("fuzz-backend", "acme", [scope])
    other_scope = {
        auth.SCOPE_SUBSCRIBE: auth.SCOPE_SEND,
        auth.SCOPE_PUSH_TARGETS: auth.SCOPE_PRESENCE_READ,
    }.get(scope, auth.SCOPE_SUBSCRIBE)
    claims = jwt.decode(valid, options={"verify_signature": False})
    return {
        "valid": f"Bearer {valid}",
        "missing": None,
        "not bearer": f"Basic {valid}",
        "wrong signature": "Bearer " + jwt.encode(claims, "k" * 32, algorithm="HS256"),
        "expired": "Bearer " + minter.mint("fuzz-alice", "acme", [scope], ttl_s=-3600),
        "wrong scope": "Bearer " + minter.mint("fuzz-alice", "acme", [other_scope]),
        "other tenant": "Bearer " + minter.mint("fuzz-alice", "globex", [scope]),
    }


def _authorizations(tokens: dict[str, str | None]) -> st.SearchStrategy[str | None]:
    garbage = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80)

    def authorization(kind: str) -> st.SearchStrategy[str | None]:
        if kind == "garbage":
            return garbage
        if kind == "bearer garbage":
            return garbage.map(lambda text: f"Bearer {text}")
        return st.just(tokens[kind])

    # About half the calls carry the valid token, so that most requests reach their handler.
    kinds = ["valid"] * 6 + [*tokens, "garbage", "bearer garbage"]
    return st.sampled_from(kinds).flatmap(authorization)


# -- the test ---------------------------------------------------------------------------------


def _fuzz(
    herald: Herald,
    path: str,
    channel: aio.Channel,
    loop: asyncio.AbstractEventLoop,
    seen: Counter[Code | None],
) -> None:
    """Runs the examples for one method; called in a worker thread, calls on `loop`."""
    streams = raw_calls.METHODS[path].client_streaming
    requests = st.lists(_payloads(path), min_size=1, max_size=3 if streams else 1)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(requests=requests, authorization=_authorizations(_tokens(herald, path)))
    def hostile(requests: list[bytes], authorization: str | None) -> None:
        metadata = () if authorization is None else (("authorization", authorization),)
        call = raw_calls.call(channel, path, requests, metadata)
        code, details = asyncio.run_coroutine_threadsafe(call, loop).result(timeout=20)
        seen[code] += 1
        if code is None:  # a client stream the server ended before all its messages were out
            assert streams, (path, details)
            return
        assert code in DOCUMENTED, (path, code, details)
        assert len(details) <= MAX_DETAILS, (path, code, details)

    hostile()


async def _serving(herald: Herald, service: str) -> bool:
    stub = health_pb2_grpc.HealthStub(herald.backend()._channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return response.status == health_pb2.HealthCheckResponse.SERVING


async def test_hostile_input_gets_documented_statuses_and_harms_nothing(
    herald_up: Herald, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    seen: Counter[Code | None] = Counter()
    assert set(SEEDS) == set(raw_calls.METHODS), "every method has a seed"
    assert set(REQUIRED_SCOPE) == set(raw_calls.METHODS)
    channel = herald_up.backend()._channel
    for path in raw_calls.METHODS:
        await asyncio.to_thread(_fuzz, herald_up, path, channel, loop, seen)

    errors = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    # The fuzz got past authentication and decoding often, and was refused by both.
    for code in (Code.OK, Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED, Code.PERMISSION_DENIED):
        assert seen[code] > 0, seen
    for service in ("", *(s.full_name for s in raw_calls.SERVICES)):
        assert await _serving(herald_up, service), service
    # The fuzz may have stored tiny rate limits for acme (PutTenantSettings): back to defaults.
    admin = herald_up.client("registry", herald_up.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN))
    await admin.reset_tenant_settings()
    stream = Stream(herald_up.user("after-the-fuzz"))
    await stream.start()
    await herald_up.backend().send(to_user("after-the-fuzz", "still here"))
    # A broadcast the fuzz got accepted may come first: a new session replays the broadcast log.
    titles: list[str] = []
    while "still here" not in titles:
        [delivery] = await stream.deliveries(1)
        titles.append(delivery.notification.content.title)
    assert delivery.notification.target.user_id == "after-the-fuzz"
    stream.cancel()


async def test_a_node_handing_over_a_time_no_timestamp_can_hold_gets_invalid_argument(
    herald_up: Herald,
) -> None:
    """Found by the fuzz: such a notification was stored, and GetDeliveryStatus of it then
    answered INTERNAL (the time could not be put back into a Timestamp)."""
    channel = herald_up.backend()._channel
    metadata = (("authorization", f"Bearer {herald_up.tokens.minter.node_token('fuzz-node')}"),)
    for name in ("created_at", "expires_at"):
        for seconds in (2**63 - 1, -(2**62)):
            notification = _dispatched()
            notification.id = f"far-{name}-{seconds}"
            getattr(notification, name).seconds = seconds
            request = node_pb2.DispatchRequest(notifications=[notification])
            code, details = await raw_calls.call(
                channel,
                "/herald.node.v1.NodeService/Dispatch",
                [request.SerializeToString()],
                metadata,
            )
            assert (code, details) == (
                Code.INVALID_ARGUMENT,
                f"{name} must be between the years 1 and 9999",
            )
            status = node_pb2.GetDeliveryStatusRequest(
                tenant_id=NODE_TENANT, notification_id=notification.id
            )
            code, _ = await raw_calls.call(
                channel,
                "/herald.node.v1.NodeService/GetDeliveryStatus",
                [status.SerializeToString()],
                metadata,
            )
            assert code is Code.OK
