"""Two delivery nodes in one process, fanned out through Redis: a notification dispatched on
one node reaches a session on the other, also across a killed pub/sub connection.

The nodes share memory log, ack and status stores (standing in for a shared store) and a Redis
session directory; each has its own RedisBroker, as separate processes would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis

from herald.v1 import notification_pb2, stream_pb2
from services.clock import ManualClock
from services.config import DeliverySettings, RegistrySettings
from services.domain import Accepted
from services.model import accepted_from_proto, timestamp
from services.registry.core import RegistryCore
from services.registry.sessions_redis import RedisSessionDirectory
from services.registry.templates_memory import MemoryTemplateStore
from services.stream.acks_memory import MemoryAckStore
from services.stream.broker_redis import RedisBroker
from services.stream.delivery import DeliveryCore
from services.stream.dispatch import Dispatcher
from services.stream.log_memory import MemoryLogStore
from services.stream.status_memory import MemoryStatusStore
from tests.broker_support import WAIT_S
from tests.redis_support import REDIS_URL, kill_pubsub_connections, scratch_keyspace

pytestmark = pytest.mark.asyncio


class Nodes:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.cores: list[DeliveryCore] = []
        self.dispatchers: list[Dispatcher] = []
        self.client_names: list[str] = []

    def notification(self, number: int, user: str = "alice") -> Accepted:
        n = notification_pb2.Notification(id=f"{number:032x}", tenant_id="acme", ttl_seconds=60)
        n.target.user_id = user
        n.content.title = f"#{number}"
        n.created_at.CopyFrom(timestamp(self.clock.now()))
        n.expires_at.CopyFrom(timestamp(self.clock.now() + 60))
        return accepted_from_proto(n, n.SerializeToString())


@asynccontextmanager
async def two_nodes() -> AsyncIterator[tuple[Nodes, Redis]]:
    clock = ManualClock()
    nodes = Nodes(clock)
    status = MemoryStatusStore()
    logs, acks = MemoryLogStore(status), MemoryAckStore()
    settings = DeliverySettings()
    brokers: list[RedisBroker] = []
    async with scratch_keyspace() as (client, prefix):
        registry = RegistryCore(
            directory=RedisSessionDirectory(client, prefix),
            templates=MemoryTemplateStore(),
            settings=RegistrySettings(),
            clock=clock,
            node_for=lambda s: None,
        )
        try:
            for i in range(2):
                name = f"{prefix}node-{i}"
                broker = RedisBroker(
                    Redis.from_url(REDIS_URL, client_name=name), prefix, owns_client=True
                )
                brokers.append(broker)
                nodes.client_names.append(name)
                nodes.cores.append(
                    DeliveryCore(
                        node_id=f"node-{i}",
                        node_address=f"127.0.0.1:{7000 + i}",
                        logs=logs,
                        acks=acks,
                        status=status,
                        broker=broker,
                        registry=registry,
                        settings=settings,
                        clock=clock,
                    )
                )
                nodes.dispatchers.append(
                    Dispatcher(
                        logs=logs, status=status, broker=broker, settings=settings, clock=clock
                    )
                )
            yield nodes, client
        finally:
            for core in nodes.cores:
                await core.shutdown(1.0)
            for broker in brokers:
                await broker.aclose()


async def test_a_notification_sent_on_one_node_reaches_a_session_on_another() -> None:
    async with two_nodes() as (nodes, admin):
        titles: list[str] = []
        arrived = asyncio.Event()

        async def write(data: bytes) -> None:
            response = stream_pb2.SubscribeResponse.FromString(data)
            if response.WhichOneof("event") == "deliveries":
                titles.extend(d.notification.content.title for d in response.deliveries.deliveries)
                arrived.set()

        async def delivered(count: int) -> None:
            async with asyncio.timeout(WAIT_S):
                while len(titles) < count:
                    arrived.clear()
                    await arrived.wait()

        sender, receiver = nodes.dispatchers[0], nodes.cores[1]
        session = await receiver.open(
            tenant="acme", user_id="alice", device="t", channels=[], cursors={}
        )
        task = asyncio.create_task(receiver.run(session, write))
        try:
            await sender.dispatch([nodes.notification(1)])
            await delivered(1)
            # The receiving node's subscription breaks; what is sent meanwhile arrives anyway,
            # live or read from the log after the broker resets.
            assert await kill_pubsub_connections(admin, nodes.client_names[1]) == 1
            await sender.dispatch([nodes.notification(2)])
            await delivered(2)
            await sender.dispatch([nodes.notification(3)])
            await delivered(3)
            assert titles == ["#1", "#2", "#3"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await receiver.close(session)
