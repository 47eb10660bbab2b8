"""The WebSocket endpoint through the real protocol: a websockets client against a real node."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from herald.v1 import stream_pb2
from services.client_websocket import Closed, WebSocketSubscription
from services.config import DeliverySettings, RateLimitSettings
from services.health import NOT_SERVING, SERVING
from tests.conftest import Deploy
from tests.harness import ABOUT_TO_EXPIRE_S, Herald, to_user, token_about_to_expire

pytestmark = pytest.mark.asyncio

FIRST_FRAME_INVALID = 4003  # 4000 + INVALID_ARGUMENT
UNAUTHENTICATED = 4016
PERMISSION_DENIED = 4007
RESOURCE_EXHAUSTED = 4008
ABORTED = 4010


async def subscribe(
    herald: Herald, user: str = "alice", request: stream_pb2.SubscribeRequest | None = None, **kw
) -> WebSocketSubscription:
    token = herald.tokens.user("acme", user)
    return await WebSocketSubscription.open(herald.ws_url(), token, request, **kw)


async def closed_with(sub: WebSocketSubscription, within: float = 10.0) -> Closed:
    """Reads until the server closes the connection; returns how it closed."""
    async with asyncio.timeout(within):
        while True:
            try:
                await sub.event(within)
            except Closed as closed:
                return closed


async def refused(url: str, frames: list[bytes | str], subprotocols: list[str] | None = None):
    """Sends raw frames on a fresh connection; the close frame the server answered with."""
    async with connect(url, subprotocols=subprotocols, compression=None) as raw:  # type: ignore[arg-type]
        for frame in frames:
            await raw.send(frame)
        async with asyncio.timeout(10):
            while True:
                try:
                    await raw.recv()
                except ConnectionClosed as closed:
                    received = closed.rcvd
                    break
    assert received is not None, "no close frame from the server"
    return received


# -- subscribe, deliver, ack, resume ------------------------------------------------------------


async def test_subscribe_deliver_ack_and_unacked_come_back_after_reconnect(herald: Herald) -> None:
    sub = await subscribe(herald, request=stream_pb2.SubscribeRequest(device="web"))
    assert sub.connection.subprotocol == "herald.v1"
    assert sub.started is not None
    assert (sub.started.user_id, sub.started.tenant_id) == ("alice", "acme")
    backend = herald.backend()
    first = await backend.send(to_user("alice", "first"))
    second = await backend.send(to_user("alice", "second"))
    got = await sub.take(2)
    assert [d.notification.id for d in got] == [first.notification_id, second.notification_id]
    assert [d.log for d in got] == ["user", "user"]
    await sub.ack(notification_ids=[first.notification_id])
    # The ack is taken before the server reads the close: the connection closes after it.
    await asyncio.sleep(0.2)
    await sub.close()

    # A fresh connection without cursors replays what was not acked: the second only.
    again = await subscribe(herald)
    [redelivered] = await again.take(1)
    assert redelivered.notification.id == second.notification_id
    with pytest.raises(TimeoutError):
        await again.take(1, within=0.5)
    await again.close()


async def test_resume_from_cursors_skips_what_the_client_holds(herald: Herald) -> None:
    sub = await subscribe(herald)
    backend = herald.backend()
    for title in ("a", "b"):
        await backend.send(to_user("alice", title))
    await sub.take(2)
    assert sub.cursors == {"user": 2}
    resume = sub.resume_request()
    sub.abort()  # gone without a close handshake, as a phone losing its network

    resumed = await subscribe(herald, request=resume)
    assert resumed.started is not None
    [position] = [p for p in resumed.started.logs if p.log == "user"]
    assert position.recovered
    sent = await backend.send(to_user("alice", "c"))
    [delivery] = await resumed.take(1)
    assert delivery.notification.id == sent.notification_id  # not a or b again
    await resumed.close()


async def test_the_token_may_come_as_a_subprotocol_and_is_never_echoed(herald_up: Herald) -> None:
    sub = await subscribe(herald_up, token_in_subprotocol=True)
    assert sub.connection.subprotocol == "herald.v1"
    assert "herald.bearer" not in str(sub.connection.response.headers)  # type: ignore[union-attr]
    sent = await herald_up.backend().send(to_user("alice"))
    [delivery] = await sub.take(1)
    assert delivery.notification.id == sent.notification_id
    await sub.close()


async def test_json_frames_on_request(herald_up: Herald) -> None:
    sub = await subscribe(herald_up, json=True)
    assert sub.connection.subprotocol == "herald.v1.json"
    sent = await herald_up.backend().send(to_user("alice", "in json"))
    raw = await asyncio.wait_for(sub.connection.recv(), 10)
    while '"heartbeat"' in raw:
        raw = await asyncio.wait_for(sub.connection.recv(), 10)
    assert isinstance(raw, str)  # a text frame, protobuf's canonical JSON
    assert '"resumeCursor": "1"' in raw  # uint64 as a string, camelCase names
    assert sent.notification_id in raw
    assert '"title": "in json"' in raw
    await sub.ack(up_to={"user": 1})  # a JSON ack frame
    await asyncio.sleep(0.2)
    await sub.close()
    again = await subscribe(herald_up, json=True)
    with pytest.raises(TimeoutError):
        await again.take(1, within=0.5)  # acked: nothing comes back
    await again.close()


# -- refusals: a close code and a reason, never a traceback --------------------------------------


async def test_a_bad_or_missing_token_is_closed_with_4016(herald_up: Herald) -> None:
    with pytest.raises(Closed) as bad:
        await WebSocketSubscription.open(herald_up.ws_url(), "not-a-jwt")
    assert bad.value.code == UNAUTHENTICATED
    assert bad.value.reason
    with pytest.raises(Closed) as missing:
        await WebSocketSubscription.open(herald_up.ws_url(), "")
    assert missing.value.code == UNAUTHENTICATED
    assert "no token" in missing.value.reason
    # A backend token lacks the subscribe scope.
    with pytest.raises(Closed) as scope:
        await WebSocketSubscription.open(herald_up.ws_url(), herald_up.tokens.backend("acme"))
    assert scope.value.code == PERMISSION_DENIED


async def test_a_channel_the_token_does_not_allow_is_refused(herald_up: Herald) -> None:
    with pytest.raises(Closed) as closed:
        await subscribe(herald_up, request=stream_pb2.SubscribeRequest(channels=["secret"]))
    assert closed.value.code == PERMISSION_DENIED
    assert "channel" in closed.value.reason


@pytest.mark.parametrize(
    ("frames", "subprotocols", "reason"),
    [
        ([b"\xff\xff\xff"], None, "not a valid WebSocketClientFrame"),
        (["{}"], None, "text frame on a binary connection"),
        ([b"\x12\x00"], None, "first frame must be a subscribe"),  # an ack first
        (["not json"], ["herald.v1.json"], "protobuf's JSON mapping"),
        ([b"\x0a\x00"], ["herald.v1.json"], "binary frame on a JSON connection"),
    ],
)
async def test_bad_frames_are_closed_with_a_clear_reason(
    herald_up: Herald, frames: list[bytes | str], subprotocols: list[str] | None, reason: str
) -> None:
    close = await refused(herald_up.ws_url(), frames, subprotocols)
    assert close.code == FIRST_FRAME_INVALID
    assert reason in close.reason
    assert len(close.reason.encode()) <= 123


async def test_a_frame_after_subscribe_that_is_not_an_ack_closes_the_session(
    herald_up: Herald,
) -> None:
    sub = await subscribe(herald_up)
    core = herald_up.node("stream").delivery
    assert core is not None
    [session] = core.hub.sessions.values()
    await sub.send(
        stream_pb2.WebSocketClientFrame(subscribe=stream_pb2.WebSocketSubscribe(token="x"))
    )
    closed = await closed_with(sub)
    assert closed.code == FIRST_FRAME_INVALID
    assert "only ack frames" in closed.reason
    async with asyncio.timeout(5):
        await session.closed.wait()


async def test_an_empty_ack_is_refused_like_the_ack_call(herald_up: Herald) -> None:
    sub = await subscribe(herald_up)
    await sub.ack()
    closed = await closed_with(sub)
    assert closed.code == FIRST_FRAME_INVALID
    assert "name notification_ids or up_to" in closed.reason


async def test_an_oversized_frame_is_closed_with_1009(herald_up: Herald) -> None:
    close = await refused(herald_up.ws_url(), [b"\x0a" + b"\x00" * 100_000])
    assert close.code == 1009  # message too big


async def test_no_subscribe_frame_in_time_is_closed(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    node = herald.node("up")
    assert node.websocket is not None
    node.websocket.subscribe_timeout_s = 0.2
    close = await refused(herald.ws_url(), [])
    assert close.code == FIRST_FRAME_INVALID
    assert "no subscribe frame within" in close.reason


async def test_a_token_in_the_url_health_and_unknown_paths(herald_up: Herald) -> None:
    base = herald_up.ws_url().removesuffix("/ws")
    token = herald_up.tokens.user("acme", "alice")
    with pytest.raises(InvalidStatus) as in_url:
        async with connect(f"{base}/ws?access_token={token}"):
            pass
    assert in_url.value.response.status_code == 400
    assert b"never go in the URL" in in_url.value.response.body
    with pytest.raises(InvalidStatus) as unknown:
        async with connect(f"{base}/other"):
            pass
    assert unknown.value.response.status_code == 404

    def get(path: str) -> tuple[int, bytes]:
        url = base.replace("ws://", "http://") + path
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    assert await asyncio.to_thread(get, "/healthz") == (200, b"SERVING\n")
    # A backend the stream service needs is down (its breaker open): Envoy stops sending here.
    health = herald_up.node("stream").health
    await health.set("herald.v1.StreamService", NOT_SERVING)
    assert await asyncio.to_thread(get, "/healthz") == (503, b"NOT_SERVING\n")
    await health.set("herald.v1.StreamService", SERVING)
    await health.enter_graceful_shutdown()
    assert await asyncio.to_thread(get, "/healthz") == (503, b"NOT_SERVING\n")


async def test_subscribes_are_rate_limited_like_subscribe_calls(deploy: Deploy) -> None:
    herald, _ = await deploy(
        "up", rate_limit=RateLimitSettings(user_subscribe_rate=0.001, user_subscribe_burst=1)
    )
    first = await subscribe(herald)
    with pytest.raises(Closed) as limited:
        await subscribe(herald)
    assert limited.value.code == RESOURCE_EXHAUSTED
    assert "retry" in limited.value.reason.lower()
    await first.close()


# -- slow consumers, token expiry, shutdown ------------------------------------------------------


async def test_a_slow_consumer_is_closed_and_others_are_not_held_up(deploy: Deploy) -> None:
    settings = DeliverySettings(session_buffer=16, batch_max=8, write_timeout_s=0.5)
    herald, clock = await deploy("up", delivery=settings)
    core = herald.node("up").delivery
    assert core is not None
    slow = await subscribe(herald, "slow", max_queue=1, receive_buffer=4096)
    fast = await subscribe(herald, "fast")
    backend = herald.backend()
    body = "x" * 3500
    slow_session = next(s for s in core.hub.sessions.values() if s.user_id == "slow")
    # The slow client never reads: the socket buffers fill up and the server's send blocks.
    for round_ in range(100):
        batch = [
            to_user("slow", f"s{round_}-{i}", content={"title": "s", "body": body})
            for i in range(40)
        ]
        batch.append(to_user("fast", f"f{round_}"))
        await backend.send_batch(batch)
        [delivery] = await fast.take(1)  # the fast one is never held up
        assert delivery.notification.content.title == f"f{round_}"
        assert slow_session.waiting <= settings.session_buffer
        if slow_session.write_started_at:
            break
    assert slow_session.write_started_at, "the slow client's connection never filled up"
    stuck_at = slow_session.write_started_at
    await asyncio.sleep(settings.write_timeout_s + 0.1)
    assert slow_session.write_started_at == stuck_at, "the write completed: not a stuck client"
    await clock.advance(1)
    async with asyncio.timeout(5):
        await slow_session.closed.wait()
    # Reading again, the client gets what was written, then the close code and the reason.
    closed = await closed_with(slow)
    assert closed.code == ABORTED
    assert "slow consumer" in closed.reason
    assert closed.closing is None  # the stream was blocked: no Closing event got through
    await fast.close()


async def test_an_expired_token_ends_the_stream_with_closing(deploy: Deploy) -> None:
    herald, clock = await deploy("up")
    token = token_about_to_expire(herald.tokens.minter, "alice")
    sub = await WebSocketSubscription.open(herald.ws_url(), token)
    await asyncio.sleep(ABOUT_TO_EXPIRE_S)  # wall-clock expiry, as the token was verified
    await clock.advance(1.0)  # a tick of the node's timers
    closed = await closed_with(sub)
    assert closed.closing is not None
    assert closed.closing.reason == stream_pb2.Closing.REASON_TOKEN_EXPIRED
    assert closed.code == 1000


async def test_shutdown_sends_closing_then_1012_and_loses_nothing(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    sub = await subscribe(herald)
    sent = await herald.backend().send(to_user("alice", "before shutdown"))
    [delivery] = await sub.take(1)
    assert delivery.notification.id == sent.notification_id
    node = herald.node("up")
    loop = asyncio.get_running_loop()
    started = loop.time()
    stopping = asyncio.ensure_future(node.stop(2.0))
    closed = await closed_with(sub)
    assert closed.closing is not None
    assert closed.closing.reason == stream_pb2.Closing.REASON_SHUTDOWN
    assert closed.closing.retry_after_ms > 0
    assert closed.code == 1012  # service restart: reconnect
    await stopping
    assert loop.time() - started < 3.0  # bounded by the grace period
    # New connections are refused once the node stopped.
    with pytest.raises(ConnectionRefusedError):
        await subscribe(herald)
