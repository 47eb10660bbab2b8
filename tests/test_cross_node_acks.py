"""An ack taken by one stream node stops the redelivery on every other node: a user with a
session on each of two nodes acks through one; after the ack timeout the other node redelivers
only what was not acked. (Acks stop ack timers only on the node that took them; before a node
redelivers it reads the user's acks from the shared store.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from herald.v1 import notification_pb2
from tests.cluster import Cluster, shared_cluster
from tests.streams import Stream

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

ACK_TIMEOUT_S = 1.0


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with shared_cluster(
        tmp_path,
        extra_env={
            "HERALD_DELIVERY_ACK_TIMEOUT_S": str(ACK_TIMEOUT_S),
            "HERALD_DELIVERY_CATCHUP_INTERVAL_S": "1",
        },
    ) as deployment:
        yield deployment


def to_bob(title: str) -> notification_pb2.Notification:
    notification = notification_pb2.Notification()
    notification.target.user_id = "bob"
    notification.content.title = title
    return notification


async def drain(stream: Stream, quiet_s: float) -> list[tuple[str, int]]:
    """Every delivery until none came for `quiet_s`: (title, attempt) of each."""
    seen = []
    while True:
        try:
            [delivery] = await stream.deliveries(1, within=quiet_s)
        except TimeoutError:
            return seen
        seen.append((delivery.notification.content.title, delivery.attempt))


async def test_an_ack_through_one_node_stops_the_redelivery_on_the_other(
    cluster: Cluster,
) -> None:
    one = await cluster.start("up", "one")
    other = await cluster.start("up", "other")
    on_one = Stream(cluster.user(one, "bob"))
    on_other = Stream(cluster.user(other, "bob"))
    await on_one.start()
    await on_other.start()
    backend = cluster.backend(one)
    for title in ("first", "second"):
        await backend.send(to_bob(title))
    for stream in (on_one, on_other):
        first, second = await stream.deliveries(2)
        assert (first.notification.content.title, second.notification.content.title) == (
            "first",
            "second",
        )
        assert (first.cursor, second.cursor, first.attempt) == (1, 2, 1)
    # bob's app acks the first through node one only.
    assert await cluster.user(one, "bob").ack(up_to={"user": 1}) == 1
    # After the ack timeout node other redelivers the second, and never the first.
    [again] = await on_other.deliveries(1, within=ACK_TIMEOUT_S * 10)
    assert (again.notification.content.title, again.attempt) == ("second", 2)
    [on_one_again] = await on_one.deliveries(1, within=ACK_TIMEOUT_S * 10)
    assert (on_one_again.notification.content.title, on_one_again.attempt) == ("second", 2)
    # Later attempts of the second may follow (it is still unacked); the first never does.
    later = await drain(on_other, quiet_s=ACK_TIMEOUT_S * 4)
    assert all(title == "second" for title, _ in later), later
    on_one.cancel()
    on_other.cancel()
