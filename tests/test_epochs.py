"""Cursors carry their log's epoch: a cursor of another generation of a log is recognised
exactly (not guessed from the head), replayed, and reported to the client."""

from __future__ import annotations

import pytest

from herald.v1 import stream_pb2
from tests.harness import Herald, to_user
from tests.streams import Stream

pytestmark = pytest.mark.asyncio


async def send_to_alice(herald: Herald, count: int) -> None:
    backend = herald.backend()
    for i in range(count):
        n = to_user("alice")
        n.content.title = f"n{i + 1}"
        await backend.send(n)


def positions(started: stream_pb2.SessionStarted) -> dict[str, stream_pb2.LogPosition]:
    return {p.log: p for p in started.logs}


def resume(cursor: int, epoch: int) -> stream_pb2.SubscribeRequest:
    return stream_pb2.SubscribeRequest(
        cursors=[stream_pb2.LogCursor(log="user", cursor=cursor, epoch=epoch)]
    )


async def test_session_started_names_every_log_with_its_epoch_and_head(herald: Herald) -> None:
    await send_to_alice(herald, 2)
    first = await Stream(
        herald.user("alice", channels=["news"]), stream_pb2.SubscribeRequest(channels=["news"])
    ).start()
    logs = positions(first)
    assert sorted(logs) == ["broadcast", "channel:news", "user"]
    assert logs["user"].head == 2
    assert logs["broadcast"].head == 0
    assert all(p.epoch != 0 and p.recovered for p in logs.values())
    again = positions(await Stream(herald.user("alice")).start())
    assert again["user"].epoch == logs["user"].epoch


async def test_a_cursor_of_the_current_epoch_is_honoured(herald: Herald) -> None:
    await send_to_alice(herald, 3)
    epoch = positions(await Stream(herald.user("alice")).start())["user"].epoch
    stream = Stream(herald.user("alice"), resume(2, epoch))
    started = await stream.start()
    assert positions(started)["user"].recovered
    await send_to_alice(herald, 1)
    # Cursors 1 and 2 are held by the client (not resent); 3 and 4 come.
    assert [d.cursor for d in await stream.deliveries(2)] == [3, 4]


async def test_a_cursor_of_another_epoch_is_replayed_and_reported(herald: Herald) -> None:
    await send_to_alice(herald, 3)
    epoch = positions(await Stream(herald.user("alice")).start())["user"].epoch
    # Cursor 2 is within the head, so only the epoch can tell it is from another generation.
    stream = Stream(herald.user("alice"), resume(2, epoch + 1))
    started = await stream.start()
    assert not positions(started)["user"].recovered
    assert [d.cursor for d in await stream.deliveries(3)] == [1, 2, 3]


async def test_an_ack_of_another_epoch_acks_nothing(herald: Herald) -> None:
    await send_to_alice(herald, 2)
    epoch = positions(await Stream(herald.user("alice")).start())["user"].epoch
    alice = herald.user("alice")
    assert await alice.ack(up_to={"user": 2}, epochs={"user": epoch + 1}) == 0
    assert await alice.ack(up_to={"user": 2}, epochs={"user": epoch}) == 2


async def test_the_client_counts_a_log_it_could_not_resume(herald: Herald) -> None:
    await send_to_alice(herald, 2)
    alice = herald.user("alice")
    subscription = alice.subscribe(cursors={"user": 2}, auto_ack=False, reconnect=False)
    subscription.epochs["user"] = 1  # from a generation of the log this server never had
    titles = []
    async for received in subscription:
        titles.append(received.notification.content.title)
        if len(titles) == 2:
            break
    assert titles == ["n1", "n2"]
    assert subscription.unrecovered == 1
    assert subscription.epochs["user"] != 1
