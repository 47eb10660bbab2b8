"""Acceptance: registry, two ingest and three stream nodes as separate processes on one
PostgreSQL and one Redis. A stream node is killed with -9 mid-delivery: its clients resume on
another node with zero loss, duplicates only of what was not acked, and its sessions leave the
directory within the lease."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from grpc import aio

from herald.v1 import notification_pb2, registry_pb2, registry_pb2_grpc
from services import auth
from services.client import CHANNEL_OPTIONS, HeraldClient, Subscription
from tests.cluster import Cluster, Member, shared_cluster

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

USERS = [f"u{i}" for i in range(6)]
SENDS = 480
LEASE_S = 3


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with shared_cluster(
        tmp_path,
        extra_env={
            "HERALD_REGISTRY_SESSION_LEASE_S": str(LEASE_S),
            "HERALD_DELIVERY_LEASE_REFRESH_S": "1",
            "HERALD_DELIVERY_CATCHUP_INTERVAL_S": "1",
        },
    ) as deployment:
        yield deployment


@dataclass
class Reader:
    """One user's subscriber: what it received and what it acked, across reconnects."""

    user: str
    node: Member
    received: list[tuple[str, int, float]] = field(default_factory=list)  # id, cursor, when
    acked: dict[str, float] = field(default_factory=dict)  # id -> when the ack returned
    subscription: Subscription | None = None
    moves: int = 0
    # Set on every delivery and on every (re)subscription.
    progress: asyncio.Event = field(default_factory=asyncio.Event)


async def read(cluster: Cluster, reader: Reader, nodes: list[Member], stop: asyncio.Event) -> None:
    cursors: dict[str, int] = {}
    epochs: dict[str, int] = {}
    while not stop.is_set():
        client = cluster.user(reader.node, reader.user)
        subscription = client.subscribe(cursors=cursors, auto_ack=False, reconnect=False)
        subscription.epochs.update(epochs)
        reader.subscription = subscription
        reader.progress.set()
        try:
            async for received in subscription:
                reader.received.append((received.notification.id, received.cursor, time.time()))
                reader.progress.set()
                try:
                    await received.ack()
                    reader.acked.setdefault(received.notification.id, time.time())
                except aio.AioRpcError:
                    pass  # the node went away: this one stays unacked, and comes again
                if stop.is_set():
                    return
        except aio.AioRpcError:
            pass
        # The node is gone (or the stream ended): resume on another live node.
        cursors, epochs = dict(subscription.cursors), dict(subscription.epochs)
        reader.moves += 1
        # `nodes` may change meanwhile (a restarted node is a new member): read it afresh.
        live = [n for n in nodes if n.proc.returncode is None and n is not reader.node]
        reader.node = live[reader.moves % len(live)] if live else reader.node
        await asyncio.sleep(0.05)


# Several Herald processes started, killed and restarted: 20-35 s, more on a loaded machine.
@pytest.mark.timeout(180)
async def test_a_killed_stream_node_loses_nothing(cluster: Cluster) -> None:
    registry = await cluster.start("registry", "registry")
    ingests = [await cluster.start("ingest", f"ingest-{i}") for i in range(2)]
    streams = [await cluster.start("stream", f"stream-{i}") for i in range(3)]
    readers = [Reader(user, streams[i % 3]) for i, user in enumerate(USERS)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(read(cluster, r, streams, stop)) for r in readers]
    for reader in readers:
        async with asyncio.timeout(10):
            await reader.progress.wait()
            assert reader.subscription is not None
            await reader.subscription.connected.wait()

    senders = [cluster.backend(node) for node in ingests]
    sent: dict[str, list[str]] = {user: [] for user in USERS}
    killed_at = 0.0
    victim = streams[0]
    for i in range(SENDS):
        user = USERS[i % len(USERS)]
        n = notification_pb2.Notification()
        n.target.user_id = user
        n.content.title = f"{user}/{i}"
        response = await senders[i % 2].send(n)
        sent[user].append(response.notification_id)
        if i == SENDS // 3:
            await cluster.kill(victim)  # mid-delivery: kill -9
            killed_at = time.time()
        await asyncio.sleep(0.002)
    everyone = notification_pb2.Notification()
    everyone.target.broadcast = True
    everyone.content.title = "to all, on every node"
    broadcast = (await senders[0].send(everyone)).notification_id

    async with asyncio.timeout(60):
        for reader in readers:
            expected = {*sent[reader.user], broadcast}
            while not expected <= {i for i, _, _ in reader.received}:
                reader.progress.clear()
                await reader.progress.wait()
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    moved = [r for r in readers if r.moves]
    assert {r.user for r in moved} >= {USERS[0], USERS[3]}  # the victim's users moved
    for reader in readers:
        ids = [i for i, _, _ in reader.received]
        # Zero loss: every send answered OK arrived, and the broadcast too.
        assert set(sent[reader.user]) <= set(ids)
        assert broadcast in ids
        # First deliveries of the user's log come in send order.
        firsts = list(dict.fromkeys(i for i in ids if i != broadcast))
        assert firsts == sent[reader.user]
        # Duplicates come only after the kill, and only of deliveries whose ack had not come
        # back before it (an ack that did is in the store the next node reads).
        seen: set[str] = set()
        for notification_id, _cursor, at in reader.received:
            if notification_id in seen:
                assert at >= killed_at, notification_id
                acked = reader.acked.get(notification_id)
                assert acked is None or acked >= killed_at, notification_id
            seen.add(notification_id)

    # The killed node's sessions leave the directory within the lease.
    admin = HeraldClient(registry.address, cluster.tokens.backend("acme", auth.SCOPE_PRESENCE_READ))
    cluster.clients.append(admin)
    stub = registry_pb2_grpc.RegistryServiceStub(admin._channel)
    async with asyncio.timeout(LEASE_S + 10):
        while True:
            listed = await stub.ListSessions(
                registry_pb2.ListSessionsRequest(), metadata=admin.metadata()
            )
            if not any(s.node_id == victim.name for s in listed.sessions):
                break
            await asyncio.sleep(0.2)
    assert time.time() - killed_at < LEASE_S + 10


async def test_stream_workers_share_one_port_over_the_shared_stores(cluster: Cluster) -> None:
    registry = await cluster.start("registry", "registry")
    ingest = await cluster.start("ingest", "ingest")
    workers = await cluster.start("stream", "node", 0, "--workers", "2")
    # Connections spread over the workers (SO_REUSEPORT): 16 users, each on a connection of its
    # own; each worker registers its sessions under its own node id.
    users = [f"w{i}" for i in range(16)]
    clients = [
        HeraldClient(
            workers.address,
            cluster.tokens.user("acme", user),
            # A connection per client (grpc shares one between equal channels otherwise).
            options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)],
        )
        for user in users
    ]
    cluster.clients.extend(clients)
    streams = [client.subscribe(auto_ack=False) for client in clients]
    iterators = [stream.__aiter__() for stream in streams]
    backend = cluster.backend(ingest)
    sent = {}
    for user in users:
        n = notification_pb2.Notification()
        n.target.user_id = user
        n.content.title = f"for {user}"
        sent[user] = (await backend.send(n)).notification_id
    async with asyncio.timeout(20):
        for user, iterator in zip(users, iterators, strict=True):
            received = await anext(iterator)
            assert received.notification.id == sent[user]
    admin = HeraldClient(registry.address, cluster.tokens.backend("acme", auth.SCOPE_PRESENCE_READ))
    cluster.clients.append(admin)
    listed = await registry_pb2_grpc.RegistryServiceStub(admin._channel).ListSessions(
        registry_pb2.ListSessionsRequest(), metadata=admin.metadata()
    )
    assert {s.node_id for s in listed.sessions} == {"node-0", "node-1"}
    for iterator in iterators:
        await iterator.aclose()  # type: ignore[attr-defined]


# Several Herald processes started, killed and restarted: 20-35 s, more on a loaded machine.
@pytest.mark.timeout(180)
async def test_a_rolling_restart_of_every_stream_node_under_load_loses_nothing(
    cluster: Cluster,
) -> None:
    """Each stream node in turn gets SIGTERM (NOT_SERVING, a closing hint, drain), exits within
    its grace period and starts again on its port, while sends go on: every notification
    answered OK arrives, first deliveries in order, duplicates only of what was not acked."""
    await cluster.start("registry", "registry")
    ingest = await cluster.start("ingest", "ingest")
    streams = [await cluster.start("stream", f"stream-{i}") for i in range(3)]
    readers = [Reader(user, streams[i % 3]) for i, user in enumerate(USERS)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(read(cluster, r, streams, stop)) for r in readers]
    for reader in readers:
        async with asyncio.timeout(10):
            await reader.progress.wait()
            assert reader.subscription is not None
            await reader.subscription.connected.wait()

    sender = cluster.backend(ingest)
    sent: dict[str, list[str]] = {user: [] for user in USERS}
    sending = asyncio.Event()
    sending.set()

    async def send_steadily() -> None:
        i = 0
        while sending.is_set():
            user = USERS[i % len(USERS)]
            n = notification_pb2.Notification()
            n.target.user_id = user
            n.content.title = f"{user}/{i}"
            sent[user].append((await sender.send(n)).notification_id)
            i += 1
            await asyncio.sleep(0.005)

    load = asyncio.create_task(send_steadily())
    await asyncio.sleep(0.5)
    restarted_at = time.time()
    for k, node in enumerate(list(streams)):
        began = time.monotonic()
        node.proc.terminate()
        async with asyncio.timeout(10):
            assert await node.proc.wait() == 0
        # The grace period is 2 s (tests/cluster.py): shutdown is bounded by it.
        assert time.monotonic() - began < 2 + 2, f"{node.name} took too long to stop"
        streams[k] = await cluster.start("stream", node.name, node.port)
        await asyncio.sleep(0.5)  # load on the restarted node before the next one goes
    await asyncio.sleep(0.5)
    sending.clear()
    await load

    async with asyncio.timeout(60):
        for reader in readers:
            expected = set(sent[reader.user])
            while not expected <= {i for i, _, _ in reader.received}:
                reader.progress.clear()
                await reader.progress.wait()
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    assert sum(len(ids) for ids in sent.values()) > 200  # the load went on throughout
    assert all(r.moves for r in readers)  # every reader's node was restarted under it
    for reader in readers:
        ids = [i for i, _, _ in reader.received]
        assert set(sent[reader.user]) <= set(ids)
        assert list(dict.fromkeys(ids)) == sent[reader.user]
        seen: set[str] = set()
        for notification_id, _cursor, at in reader.received:
            if notification_id in seen:
                assert at >= restarted_at, notification_id
                acked = reader.acked.get(notification_id)
                assert acked is None or acked >= restarted_at, notification_id
            seen.add(notification_id)
