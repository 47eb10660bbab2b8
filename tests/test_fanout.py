"""Fan-out survives a broker that loses publications: the log is the truth, and every node
catches up from it (services/stream/broker.py, docs/delivery.md "Fan-out")."""

from __future__ import annotations

import pytest

from herald.v1 import notification_pb2, stream_pb2
from services.config import DeliverySettings
from services.domain import user_log
from services.stream.broker import Publication
from services.stream.broker_memory import MemoryBroker
from services.stream.session import Session
from tests.conftest import Deploy
from tests.harness import Herald, to_user
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

CATCHUP_S = 5.0


def broker_of(herald: Herald) -> MemoryBroker:
    stores = herald.node("stream").stores
    assert stores is not None
    assert isinstance(stores.broker, MemoryBroker)
    return stores.broker


def only_session(herald: Herald) -> Session:
    delivery = herald.node("stream").delivery
    assert delivery is not None
    [session] = delivery.hub.sessions.values()
    return session


async def send_titles(herald: Herald, user: str, *titles: str) -> None:
    backend = herald.backend()
    for title in titles:
        n = to_user(user)
        n.content.title = title
        await backend.send(n)


async def test_lost_publications_are_delivered_by_the_head_check(deploy: Deploy) -> None:
    herald, clock = await deploy("up", delivery=DeliverySettings(catchup_interval_s=CATCHUP_S))
    broker = broker_of(herald)
    stream = Stream(herald.user("alice"))
    await stream.start()
    lost: list[Publication] = []
    broker.drop = lambda p: lost.append(p) is None  # loses every publication
    await send_titles(herald, "alice", "one", "two", "three")
    assert len(lost) == 3
    session = only_session(herald)
    # Nothing reached the session: it does not know the log moved.
    await clock.advance(CATCHUP_S - 1.5)
    assert session.logs[user_log("alice")].enqueued == 0
    # The first check sees the new head; by the next one nothing has come: the node reads the
    # log (within two catch-up intervals).
    await clock.advance(2.0)
    assert session.logs[user_log("alice")].enqueued == 0
    await clock.advance(CATCHUP_S)
    got = await stream.deliveries(3)
    assert [d.notification.content.title for d in got] == ["one", "two", "three"]
    assert [d.cursor for d in got] == [1, 2, 3]


async def test_a_broker_reset_makes_every_session_read_its_logs(deploy: Deploy) -> None:
    herald, _clock = await deploy("up", delivery=DeliverySettings(catchup_interval_s=3600))
    broker = broker_of(herald)
    stream = Stream(
        herald.user("alice", channels=["news"]), stream_pb2.SubscribeRequest(channels=["news"])
    )
    await stream.start()
    broker.drop = lambda p: True
    await send_titles(herald, "alice", "missed")
    news = notification_pb2.Notification()
    news.target.channel = "news"
    news.content.title = "news"
    await herald.backend().send(news)
    broker.drop = None
    broker.reset()  # as a reconnecting Redis subscriber does
    got = await stream.deliveries(2)
    assert sorted((d.log, d.notification.content.title) for d in got) == [
        ("channel:news", "news"),
        ("user", "missed"),
    ]


async def test_some_lost_publications_leave_no_gap_and_no_duplicate(deploy: Deploy) -> None:
    herald, clock = await deploy("up", delivery=DeliverySettings(catchup_interval_s=CATCHUP_S))
    broker = broker_of(herald)
    stream = Stream(herald.user("alice"))
    await stream.start()
    seen = 0

    def every_other(_publication: Publication) -> bool:
        nonlocal seen
        seen += 1
        return seen % 2 == 0

    broker.drop = every_other
    titles = [f"n{i}" for i in range(8)]
    await send_titles(herald, "alice", *titles)
    await clock.advance(2 * CATCHUP_S + 1)
    got = await stream.deliveries(8)
    assert [d.notification.content.title for d in got] == titles
    assert [d.cursor for d in got] == list(range(1, 9))
    # Nothing more is coming: the next delivery is the next notification, not a repeat.
    broker.drop = None
    await send_titles(herald, "alice", "last")
    [after] = await stream.deliveries(1)
    assert (after.cursor, after.notification.content.title) == (9, "last")
