"""Inbox states on the production profile: two Herald processes sharing PostgreSQL and Redis. A
change through one node reaches the user's session on the other at once, as an InboxEvent over
Redis, and both nodes count the same."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from herald.v1 import stream_pb2
from tests.cluster import Cluster, shared_cluster
from tests.harness import to_user
from tests.streams import Stream

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with shared_cluster(tmp_path) as deployment:
        yield deployment


async def test_a_change_through_one_node_reaches_the_session_on_the_other(
    cluster: Cluster,
) -> None:
    one = await cluster.start("up", "one")
    other = await cluster.start("up", "other")
    on_one = Stream(cluster.user(one, "alice"))
    on_other = Stream(cluster.user(other, "alice"))
    bob_on_one = Stream(cluster.user(one, "bob"))
    for stream in (on_one, on_other, bob_on_one):
        await stream.start()
    backend = cluster.backend(one)
    ids = [(await backend.send(to_user("alice", t))).notification_id for t in ("a", "b", "c")]
    for stream in (on_one, on_other):
        assert len(await stream.deliveries(3)) == 3

    through_other = cluster.user(other, "alice")
    answer = await through_other.update_inbox_state(ids[:2], stream_pb2.INBOX_ACTION_READ)
    after = stream_pb2.InboxCounts(unseen=1, unread=1, total=3)
    assert (answer.changed, answer.counts) == (2, after)
    for stream in (on_one, on_other):
        event = await stream.inbox_event()
        assert (event.action, list(event.notification_ids)) == (
            stream_pb2.INBOX_ACTION_READ,
            ids[:2],
        )
        assert event.counts == after
    assert await cluster.user(one, "alice").inbox_counts() == after

    answer = await cluster.user(one, "alice").update_inbox_state(
        [ids[2]], stream_pb2.INBOX_ACTION_ARCHIVE
    )
    archived = stream_pb2.InboxCounts(unseen=0, unread=0, total=2)
    assert answer.counts == archived
    event = await on_other.inbox_event()
    assert (list(event.notification_ids), event.counts) == ([ids[2]], archived)
    await on_one.inbox_event()

    await through_other.update_inbox_state(ids[:1], stream_pb2.INBOX_ACTION_UNREAD)
    marked = await cluster.user(one, "alice").mark_all_read()
    assert (marked.marked, marked.counts) == (2, archived)  # a, and the archived c
    for stream in (on_one, on_other):
        unread = await stream.inbox_event()
        assert unread.action == stream_pb2.INBOX_ACTION_UNREAD
        everything = await stream.inbox_event()
        assert (everything.all, everything.up_to_cursor, everything.counts) == (True, 3, archived)
    page = await through_other.list_inbox(filter=stream_pb2.INBOX_FILTER_ALL)
    assert all(item.HasField("read_at") for item in page.items)
    assert [i.HasField("archived_at") for i in page.items] == [True, False, False]
    # bob's session, on a node that sent alice's events, heard none of them.
    await backend.send(to_user("bob", "for bob"))
    [for_bob] = await bob_on_one.deliveries(1)
    assert for_bob.notification.content.title == "for bob"
    for stream in (on_one, on_other, bob_on_one):
        stream.cancel()
