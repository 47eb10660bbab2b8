"""Acceptance: PostgreSQL and Redis go down and come back (throwaway servers of the test's own;
the shared ones are never touched). During the outage Herald says so (UNAVAILABLE, health
NOT_SERVING for what needs the server); afterwards it recovers by itself, and nothing that was
answered OK is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from herald.v1 import notification_pb2, stream_pb2
from services.client import HeraldClient
from tests.cluster import Cluster, Member
from tests.postgres import scratch_database
from tests.redis_support import (
    REDIS_URL,
    delete_prefix,
    new_prefix,
    redis_client,
    require_redis,
    throwaway_redis,
)
from tests.throwaway import ThrowawayPostgres

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

FAST_BREAKER = {
    "HERALD_BREAKER_RESET_S": "0.5",
    "HERALD_BREAKER_FAILURES": "2",
    "HERALD_DELIVERY_CATCHUP_INTERVAL_S": "0.5",
    "HERALD_POSTGRES_STATEMENT_TIMEOUT_S": "2",
}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health(member: Member, service: str) -> int:
    async with aio.insecure_channel(member.address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return int(response.status)


async def until_health(member: Member, service: str, wanted: int, within: float = 20) -> None:
    """Watches the service's health (a stream of changes, no polling) until it is `wanted`."""
    async with aio.insecure_channel(member.address) as channel, asyncio.timeout(within):
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service)
        )
        async for response in watch:
            if response.status == wanted:
                return


class Inbox:
    """What a subscriber received, and an event for each arrival."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.arrived = asyncio.Event()
        self.connected = asyncio.Event()

    async def collect(self, client: HeraldClient) -> None:
        subscription = client.subscribe(on_connect=lambda _started: self.connected.set())
        async for received in subscription:
            self.ids.append(received.notification.id)
            self.arrived.set()

    async def until_has(self, ids: list[str], within: float = 30) -> None:
        async with asyncio.timeout(within):
            while not set(ids) <= set(self.ids):
                self.arrived.clear()
                await self.arrived.wait()


def to_alice(title: str) -> notification_pb2.Notification:
    n = notification_pb2.Notification()
    n.target.user_id = "alice"
    n.content.title = title
    return n


@pytest_asyncio.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[tuple[Cluster, ThrowawayPostgres]]:
    await require_redis()
    server = ThrowawayPostgres()
    await server.init()
    prefix = new_prefix()
    cluster = Cluster(tmp_path / "data", server.dsn, REDIS_URL, prefix, extra_env=FAST_BREAKER)
    try:
        yield cluster, server
    finally:
        await cluster.stop()
        await server.remove()
        async with redis_client() as client:
            await delete_prefix(client, prefix)


@pytest_asyncio.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[tuple[Cluster, object]]:
    async with throwaway_redis() as server, scratch_database() as dsn:
        cluster = Cluster(tmp_path / "data", dsn, server.url, "herald:", extra_env=FAST_BREAKER)
        try:
            yield cluster, server
        finally:
            await cluster.stop()


async def test_a_postgres_outage_is_unavailable_then_recovers(
    own_postgres: tuple[Cluster, ThrowawayPostgres],
) -> None:
    cluster, postgres = own_postgres
    node = await cluster.start("up")
    backend = cluster.backend(node)
    inbox = Inbox()
    reader = asyncio.create_task(inbox.collect(cluster.user(node, "alice")))
    try:
        await asyncio.wait_for(inbox.connected.wait(), 10)
        accepted = [(await backend.send(to_alice("before"))).notification_id]

        await postgres.stop()
        failure: aio.AioRpcError | None = None
        async with asyncio.timeout(20):
            while failure is None:  # the first sends may still find a pooled connection alive
                try:
                    accepted.append((await backend.send(to_alice("during"))).notification_id)
                except aio.AioRpcError as exc:
                    failure = exc
        assert failure.code() == grpc.StatusCode.UNAVAILABLE, failure
        assert "PostgreSQL is unreachable" in (failure.details() or "")
        await until_health(node, "herald.v1.IngestService", NOT_SERVING)
        await until_health(node, "", NOT_SERVING)

        await postgres.start()
        await until_health(node, "herald.v1.IngestService", SERVING)
        await until_health(node, "", SERVING)
        accepted.append((await backend.send(to_alice("after"))).notification_id)
        await inbox.until_has(accepted)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_a_redis_outage_keeps_sends_durable_and_recovers(
    own_redis: tuple[Cluster, object],
) -> None:
    cluster, redis = own_redis
    node = await cluster.start("up")
    backend = cluster.backend(node)
    inbox = Inbox()
    reader = asyncio.create_task(inbox.collect(cluster.user(node, "alice")))
    try:
        await asyncio.wait_for(inbox.connected.wait(), 10)
        accepted = [(await backend.send(to_alice("before"))).notification_id]

        await redis.stop()  # type: ignore[attr-defined]
        await until_health(node, "herald.v1.StreamService", NOT_SERVING)
        # Sends are durable in PostgreSQL without Redis: still accepted, and the open stream
        # gets them through the catch-up check (no broker needed).
        assert await health(node, "herald.v1.IngestService") == SERVING
        accepted.append((await backend.send(to_alice("during"))).notification_id)
        await inbox.until_has(accepted, within=15)
        # A new subscription needs the session directory: UNAVAILABLE, retryable.
        bob = cluster.user(node, "bob")
        call = bob.open_stream(stream_pb2.SubscribeRequest())
        with pytest.raises(aio.AioRpcError) as refused:
            await call.read()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        await redis.start()  # type: ignore[attr-defined]
        await until_health(node, "herald.v1.StreamService", SERVING)
        await until_health(node, "", SERVING)
        accepted.append((await backend.send(to_alice("after"))).notification_id)
        await inbox.until_has(accepted)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
