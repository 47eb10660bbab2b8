"""Acceptance: SIGTERM ends a node within the grace period however its clients hold their
streams (a Subscribe, an AckStream, a health Watch): NOT_SERVING first, then the closing hint,
then the drain; nothing acked or accepted is lost (the next node has it all)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from herald.v1 import ingest_pb2, stream_pb2
from tests.cluster import Cluster, shared_cluster
from tests.harness import to_user
from tests.streams import Stream

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

GRACE_S = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with shared_cluster(
        tmp_path, extra_env={"HERALD_SHUTDOWN_GRACE_S": str(GRACE_S)}
    ) as deployment:
        yield deployment


async def test_sigterm_with_open_streams_exits_well_within_the_grace_period(
    cluster: Cluster,
) -> None:
    loop = asyncio.get_running_loop()
    node = await cluster.start("up", "up-a")
    backend = cluster.backend(node)
    alice = cluster.user(node, "alice")
    bob = cluster.user(node, "bob")

    async with aio.insecure_channel(node.address) as health_channel:
        watch = health_pb2_grpc.HealthStub(health_channel).Watch(
            health_pb2.HealthCheckRequest(service="")
        )
        assert (await watch.read()).status == SERVING

        stream = Stream(alice)
        await stream.start()
        sent = [
            (await backend.send(to_user("alice", title))).notification_id
            for title in ("acked before", "acked while draining", "never acked")
        ]
        assert [d.notification.id for d in await stream.deliveries(3)] == sent
        # The client's AckStream opens here and stays open.
        assert await alice.ack(notification_ids=[sent[0]]) == 1
        # Another client's AckStream, open and idle.
        idle = bob.open_ack_stream()
        await idle.write(stream_pb2.AckStreamRequest(up_to=[stream_pb2.LogCursor(log="user")]))
        assert (await idle.read()).acked == 0

        signalled = loop.time()
        node.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(GRACE_S):
            # 1. NOT_SERVING, then the Watch stream ends (it must not hold the shutdown).
            assert (await watch.read()).status == NOT_SERVING
            not_serving_at = loop.time()
            assert await watch.read() is aio.EOF
            assert await watch.code() == grpc.StatusCode.OK
            # 2. The session's closing hint, then the end of its stream.
            event = await stream.event()
            assert event.WhichOneof("event") == "closing"
            assert event.closing.reason == stream_pb2.Closing.REASON_SHUTDOWN
            assert event.closing.retry_after_ms > 0
            assert await stream.call.read() is aio.EOF
            # 3. An ack sent as the session ends (what a client flushes) is still taken.
            assert await alice.ack(notification_ids=[sent[1]]) == 1
            # 4. The idle AckStream ends with UNAVAILABLE, saying why.
            with pytest.raises(aio.AioRpcError) as ended:
                await idle.read()
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (ended.value.details() or "")
            assert await node.proc.wait() == 0
        exited = loop.time() - signalled
        # Before: an open AckStream held the shutdown for the whole grace period (10-12 s).
        assert exited < 3.0, f"took {exited:.2f}s with a grace period of {GRACE_S}s"
        assert not_serving_at - signalled < exited

    # Nothing acked or accepted is lost: the next node replays exactly the unacked one.
    successor = await cluster.start("up", "up-b", node.port)
    replay = Stream(cluster.user(successor, "alice"))
    await replay.start()
    [redelivered] = await replay.deliveries(1)
    assert redelivered.notification.id == sent[2]
    replay.cancel()
    states = {}
    for notification_id in sent:
        status = await cluster.backend(successor).status(notification_id)
        states[notification_id] = status.recipients[0].state
    assert states == {
        sent[0]: ingest_pb2.DELIVERY_STATE_ACKED,
        sent[1]: ingest_pb2.DELIVERY_STATE_ACKED,
        sent[2]: ingest_pb2.DELIVERY_STATE_DELIVERED,
    }
    # The first client's AckStream was ended by the server while idle: its next ack opens a new
    # one (before, it wrote to the finished call: InvalidStateError "RPC already finished").
    assert await alice.ack(notification_ids=[sent[2]]) == 1
