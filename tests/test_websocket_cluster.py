"""WebSocket on the production profile: `herald up` processes on shared PostgreSQL and Redis,
a send through one node reaching a WebSocket session on another, acks and resume across them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from herald.v1 import ingest_pb2
from services.client_websocket import WebSocketSubscription
from tests.cluster import Cluster, Member, free_port, shared_cluster
from tests.harness import to_user

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with shared_cluster(tmp_path) as deployment:
        yield deployment


async def start_with_websocket(cluster: Cluster, name: str) -> tuple[Member, str]:
    ws_port = free_port()
    member = await cluster.start("up", name, HERALD_WS_PORT=str(ws_port))
    return member, f"ws://127.0.0.1:{ws_port}/ws"


async def test_a_send_through_one_node_reaches_a_websocket_on_another(cluster: Cluster) -> None:
    one, one_url = await start_with_websocket(cluster, "one")
    two, two_url = await start_with_websocket(cluster, "two")
    token = cluster.tokens.user("acme", "bob")
    sub = await WebSocketSubscription.open(two_url, token)
    assert sub.started is not None
    assert sub.started.node_id == "two"
    backend = cluster.backend(one)
    first = await backend.send(to_user("bob", "first"))
    second = await backend.send(to_user("bob", "second"))
    got = await sub.take(2)
    assert [d.notification.id for d in got] == [first.notification_id, second.notification_id]
    await sub.ack(notification_ids=[first.notification_id])
    resume = sub.resume_request()
    # The ack frame is taken once the status says ACKED (shared by every node); then the tab
    # closes.
    async with asyncio.timeout(10):
        while True:
            status = await backend.status(first.notification_id)
            if status.recipients[0].state == ingest_pb2.DELIVERY_STATE_ACKED:
                break
            await asyncio.sleep(0.05)
    await sub.close()

    # Reconnecting to the other node: resume from the cursors, and what was sent meanwhile
    # arrives; a fresh connection there replays only what was never acked.
    third = await cluster.backend(two).send(to_user("bob", "third"))
    resumed = await WebSocketSubscription.open(one_url, token, resume)
    assert resumed.started is not None
    assert resumed.started.node_id == "one"
    [delivery] = await resumed.take(1)
    assert delivery.notification.id == third.notification_id
    await resumed.close()
    fresh = await WebSocketSubscription.open(one_url, token)
    ids = [d.notification.id for d in await fresh.take(2)]
    assert ids == [second.notification_id, third.notification_id]
    await fresh.close()
