"""AckStream: acks over one long-lived call, answered in order, ended when the token expires, with
the client falling back to unary Ack where the server has no AckStream."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc import aio
from prometheus_client import REGISTRY

from herald.v1 import ingest_pb2, stream_pb2
from services.client import HeraldClient
from tests.conftest import Deploy
from tests.harness import ABOUT_TO_EXPIRE_S, to_user, token_about_to_expire

pytestmark = pytest.mark.asyncio

_ACKED = ingest_pb2.DELIVERY_STATE_ACKED


def _open_ack_streams() -> float:
    return REGISTRY.get_sample_value("herald_ack_streams_open") or 0.0


def _count_opens(client: HeraldClient) -> list[int]:
    opened: list[int] = []
    real_open = client.open_ack_stream

    def counting_open() -> Any:
        opened.append(1)
        return real_open()

    client.open_ack_stream = counting_open  # type: ignore[method-assign]
    return opened


async def test_acks_share_one_stream_and_each_gets_its_own_answer(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    backend = herald.backend()
    ids = [(await backend.send(to_user("alice", f"n{i}"))).notification_id for i in range(4)]
    before = _open_ack_streams()
    alice = herald.user("alice")
    opened = _count_opens(alice)
    assert await alice.ack(notification_ids=[ids[0]]) == 1
    assert await alice.ack(notification_ids=[ids[0]]) == 0  # already acked
    assert await alice.ack(up_to={"user": 3}) == 2
    # Concurrent acks queue for the one stream; each answer goes to its own caller.
    assert await asyncio.gather(
        alice.ack(notification_ids=[ids[3]]), alice.ack(notification_ids=[ids[3]])
    ) in ([1, 0], [0, 1])
    assert opened == [1]
    assert _open_ack_streams() == before + 1
    states = [(await backend.status(i)).recipients[0].state for i in ids]
    assert states == [_ACKED] * 4
    await alice.close()
    for _ in range(100):
        if _open_ack_streams() == before:
            break
        await asyncio.sleep(0.02)
    assert _open_ack_streams() == before


async def test_unary_acks_when_the_client_is_told_so(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    backend = herald.backend()
    sent = (await backend.send(to_user("alice"))).notification_id
    before = _open_ack_streams()
    alice = HeraldClient(
        herald.address("stream"), herald.tokens.user("acme", "alice"), ack_stream=False
    )
    try:
        assert await alice.ack(notification_ids=[sent]) == 1
        assert _open_ack_streams() == before
    finally:
        await alice.close()
    assert (await backend.status(sent)).recipients[0].state == _ACKED


async def test_a_bad_ack_ends_the_stream_with_invalid_argument_and_the_next_one_works(
    deploy: Deploy,
) -> None:
    herald, _ = await deploy("up")
    backend = herald.backend()
    sent = (await backend.send(to_user("alice"))).notification_id
    alice = herald.user("alice")
    opened = _count_opens(alice)
    with pytest.raises(aio.AioRpcError) as failure:
        await alice.ack(up_to={"inbox": 3})
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown log 'inbox'" in (failure.value.details() or "")
    with pytest.raises(aio.AioRpcError) as empty:
        await alice.ack()
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name notification_ids or up_to" in (empty.value.details() or "")
    assert await alice.ack(notification_ids=[sent]) == 1
    assert len(opened) == 3  # a refused ack ends its stream; the next ack opens another


async def test_a_backend_token_cannot_open_an_ack_stream(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    backend = herald.backend()
    with pytest.raises(aio.AioRpcError) as failure:
        await backend.ack(up_to={"user": 1})
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'subscribe' scope" in (failure.value.details() or "")


async def test_an_ack_stream_ends_when_its_token_expires_and_the_client_reopens_it(
    deploy: Deploy,
) -> None:
    herald, _ = await deploy("up")
    backend = herald.backend()
    ids = [(await backend.send(to_user("alice", f"n{i}"))).notification_id for i in range(2)]

    def short_lived() -> str:
        return token_about_to_expire(herald.tokens.minter, "alice")

    # Raw call first: the server refuses a message once the stream's token has expired.
    raw = HeraldClient(herald.address("stream"), short_lived)
    call = raw.open_ack_stream()
    await call.write(stream_pb2.AckStreamRequest(notification_ids=[ids[0]]))
    assert (await call.read()).acked == 1
    await asyncio.sleep(ABOUT_TO_EXPIRE_S)
    await call.write(stream_pb2.AckStreamRequest(notification_ids=[ids[1]]))
    with pytest.raises(aio.AioRpcError) as failure:
        await call.read()
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "open a new ack stream with a fresh token" in (failure.value.details() or "")
    assert (await backend.status(ids[1])).recipients[0].state != _ACKED

    # The client library reopens the stream with a fresh token and the ack goes through.
    opened = _count_opens(raw)
    assert await raw.ack(notification_ids=[ids[0]]) == 0
    await asyncio.sleep(ABOUT_TO_EXPIRE_S)
    assert await raw.ack(notification_ids=[ids[1]]) == 1
    assert len(opened) == 2
    await raw.close()


async def test_the_client_falls_back_to_ack_calls_on_a_server_without_ack_stream() -> None:
    calls: list[stream_pb2.AckRequest] = []

    async def ack(request: stream_pb2.AckRequest, context: Any) -> stream_pb2.AckResponse:
        calls.append(request)
        return stream_pb2.AckResponse(acked=len(request.notification_ids))

    server = aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "herald.v1.StreamService",
                {
                    "Ack": grpc.unary_unary_rpc_method_handler(
                        ack,
                        request_deserializer=stream_pb2.AckRequest.FromString,
                        response_serializer=stream_pb2.AckResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = HeraldClient(f"127.0.0.1:{port}", "any-token")
    opened = _count_opens(client)
    try:
        assert await client.ack(notification_ids=["a", "b"]) == 2
        assert await client.ack(notification_ids=["c"]) == 1
    finally:
        await client.close()
        await server.stop(None)
    assert [list(c.notification_ids) for c in calls] == [["a", "b"], ["c"]]
    assert opened == [1]  # tried once, then remembered
