"""Acceptance: on the production profile (PostgreSQL + Redis) Herald keeps every promise across
kill -9. Real processes, a fresh database and Redis key prefix per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from herald.v1 import ingest_pb2, notification_pb2, registry_pb2, registry_pb2_grpc
from services import auth
from tests.cluster import Cluster, shared_cluster

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

USERS = [f"user-{i}" for i in range(10)]
PER_USER = 100


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with shared_cluster(tmp_path) as deployment:
        yield deployment


def to(user: str, title: str, key: str = "") -> notification_pb2.Notification:
    n = notification_pb2.Notification(idempotency_key=key)
    n.target.user_id = user
    n.content.title = title
    return n


async def test_kill_9_after_1000_accepted_loses_nothing(cluster: Cluster) -> None:
    node = await cluster.start("up")
    admin_token = cluster.tokens.backend(
        "acme", auth.SCOPE_SEND, auth.SCOPE_TEMPLATES_WRITE, auth.SCOPE_SESSIONS_ADMIN
    )
    backend = cluster.backend(node)
    admin = cluster.backend(node)
    admin._token = admin_token  # the same client class, with the template scope
    registry = registry_pb2_grpc.RegistryServiceStub(admin._channel)
    template = registry_pb2.Template(template_id="welcome", default_locale="en")
    template.locales["en"].title = "Hi {{name}}"
    await registry.PutTemplate(
        registry_pb2.PutTemplateRequest(template=template), metadata=admin.metadata()
    )
    # 1,000 notifications to offline users, in SendBatch calls of 100, answered OK.
    sent: dict[str, list[str]] = {user: [] for user in USERS}
    for round_ in range(PER_USER // 10):
        batch = [to(user, f"{user}/{round_ * 10 + i}") for user in USERS for i in range(10)]
        response = await backend.send_batch(batch)
        for n, result in zip(batch, response.results, strict=True):
            assert result.WhichOneof("outcome") == "accepted", result
            sent[n.target.user_id].append(result.accepted.notification_id)
    keyed = await backend.send(to("user-0", "keyed", key="order-7"))
    sent["user-0"].append(keyed.notification_id)
    reader = cluster.user(node, "user-1")
    read_id = sent["user-1"][5]
    assert await reader.mark_read([read_id]) == 1

    await cluster.kill(node)  # kill -9: nothing is flushed, nothing shut down
    node = await cluster.start("up")

    backend = cluster.backend(node)
    again = await backend.send(to("user-0", "keyed", key="order-7"))
    assert (again.notification_id, again.duplicate) == (keyed.notification_id, True)
    status = await backend.status(sent["user-3"][42])
    assert [(r.user_id, r.state) for r in status.recipients] == [
        ("user-3", ingest_pb2.DELIVERY_STATE_QUEUED)
    ]
    admin = cluster.backend(node)
    admin._token = admin_token
    registry = registry_pb2_grpc.RegistryServiceStub(admin._channel)
    kept = await registry.GetTemplate(
        registry_pb2.GetTemplateRequest(template_id="welcome"), metadata=admin.metadata()
    )
    assert kept.template.locales["en"].title == "Hi {{name}}"
    inbox = await cluster.user(node, "user-1").list_inbox(page_size=100)
    read = {item.notification.id: item.read_at.seconds for item in inbox.items}
    assert read[read_id] > 0
    assert sum(1 for seconds in read.values() if seconds) == 1

    # Every notification reaches its user, in order, with the cursors it got before the kill.
    for user in USERS:
        client = cluster.user(node, user)
        got: list[tuple[int, str]] = []
        async with asyncio.timeout(30):
            async for received in client.subscribe(reconnect=False):
                got.append((received.cursor, received.notification.id))
                if len(got) == len(sent[user]):
                    break
        assert [notification_id for _, notification_id in got] == sent[user]
        assert [cursor for cursor, _ in got] == list(range(1, len(sent[user]) + 1))


async def test_status_of_deliveries_and_acks_costs_no_row_per_recipient(
    cluster: Cluster,
) -> None:
    """Delivered and acked to users: GetStatus says so, with times, from runs of cursors per
    user (herald_status_marks), not from a row per recipient; a kill -9 keeps it."""
    node = await cluster.start("up")
    backend = cluster.backend(node)
    users = USERS[:4]
    batch = [to(user, f"{user}/{i}") for i in range(25) for user in users]
    response = await backend.send_batch(batch)
    ids = {n.target.user_id: [] for n in batch}
    for n, result in zip(batch, response.results, strict=True):
        ids[n.target.user_id].append(result.accepted.notification_id)
    for user in users:
        client = cluster.user(node, user)
        got = 0
        async with asyncio.timeout(30):
            async for _received in client.subscribe(reconnect=False, auto_ack=False):
                got += 1
                if got == 25:
                    break
        # Acks the first 20 up to their cursor; the last 5 stay delivered.
        assert await client.ack(up_to={"user": 20}) == 20
    first, last = ids[users[0]][0], ids[users[0]][-1]
    acked = await backend.status(first)
    [alice] = acked.recipients
    assert alice.state == ingest_pb2.DELIVERY_STATE_ACKED
    assert alice.attempts == 1
    assert 0 < alice.delivered_at.ToNanoseconds() <= alice.acked_at.ToNanoseconds()
    delivered = await backend.status(last)
    assert delivered.recipients[0].state == ingest_pb2.DELIVERY_STATE_DELIVERED

    connection = await asyncpg.connect(cluster.postgres_dsn)
    try:
        assert await connection.fetchval("SELECT count(*) FROM herald_recipients") == 0
        runs = await connection.fetchval("SELECT count(*) FROM herald_status_marks")
        # At most one run per stream message and one per ack call: far fewer than the 200
        # recipient changes a row per delivery and per ack would have written.
        assert 0 < runs < 100 + len(users)
    finally:
        await connection.close()

    await cluster.kill(node)
    node = await cluster.start("up")
    backend = cluster.backend(node)
    states = {}
    for user in users:
        for index, notification_id in enumerate(ids[user]):
            [recipient] = (await backend.status(notification_id)).recipients
            states[(user, index)] = recipient.state
    acked_state, delivered_state = (
        ingest_pb2.DELIVERY_STATE_ACKED,
        ingest_pb2.DELIVERY_STATE_DELIVERED,
    )
    assert states == {
        (user, index): acked_state if index < 20 else delivered_state
        for user in users
        for index in range(25)
    }
