"""The inbox through real gRPC and WebSocket: seen / read / archived, the counts, the events a
change sends to the user's other sessions, MarkAllRead, and who may change what."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio

from herald.v1 import stream_pb2, stream_pb2_grpc
from services.client_websocket import WebSocketSubscription
from services.clock import ManualClock
from services.config import DeliverySettings
from services.domain import user_log
from services.stream.broker_memory import MemoryBroker
from services.stream.inbox import Inbox
from services.stream.inbox_state import Action, Counts, InboxCounters
from services.stream.inbox_state_memory import MemoryInboxStateStore
from services.stream.log import LogAppend, NewEntry
from services.stream.log_memory import MemoryLogStore
from services.stream.status_memory import MemoryStatusStore
from tests.conftest import Deploy
from tests.harness import Herald, to_user
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

TOPOLOGIES = pytest.mark.parametrize("topology", ["up", "split"])

SEEN = stream_pb2.INBOX_ACTION_SEEN
READ = stream_pb2.INBOX_ACTION_READ
UNREAD = stream_pb2.INBOX_ACTION_UNREAD
ARCHIVE = stream_pb2.INBOX_ACTION_ARCHIVE
UNARCHIVE = stream_pb2.INBOX_ACTION_UNARCHIVE


def counts(unseen: int, unread: int, total: int) -> stream_pb2.InboxCounts:
    return stream_pb2.InboxCounts(unseen=unseen, unread=unread, total=total)


async def send(herald: Herald, user: str, *titles: str, **fields: object) -> list[str]:
    backend = herald.backend()
    return [(await backend.send(to_user(user, t, **fields))).notification_id for t in titles]


async def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(aio.AioRpcError) as failure:
        await call  # type: ignore[misc]
    return failure.value.code(), failure.value.details() or ""


@TOPOLOGIES
async def test_a_change_on_one_device_reaches_the_users_other_sessions_with_the_counts(
    deploy: Deploy, topology: str
) -> None:
    herald, _ = await deploy(topology)
    phone, laptop = Stream(herald.user("alice")), Stream(herald.user("alice"))
    bobs = Stream(herald.user("bob"))
    for stream in (phone, laptop, bobs):
        await stream.start()
    n1, n2, n3 = await send(herald, "alice", "one", "two", "three")
    for stream in (phone, laptop):
        assert len(await stream.deliveries(3)) == 3
    alice = herald.user("alice")
    assert await alice.inbox_counts() == counts(3, 3, 3)

    # The phone shows the list: seen. Both sessions hear it, with the counts after.
    answer = await alice.update_inbox_state([n1, n2], SEEN)
    assert (answer.changed, answer.counts) == (2, counts(1, 3, 3))
    for stream in (phone, laptop):
        event = await stream.inbox_event()
        assert (event.action, list(event.notification_ids), event.all) == (SEEN, [n1, n2], False)
        assert event.counts == counts(1, 3, 3)
        assert event.HasField("changed_at")

    steps = [
        ([n3], READ, counts(0, 2, 3)),  # read implies seen
        ([n3], UNREAD, counts(0, 3, 3)),  # seen stays
        ([n1, n3], ARCHIVE, counts(0, 1, 1)),  # archived ones count nowhere
        ([n3], UNARCHIVE, counts(0, 2, 2)),
    ]
    for ids, action, after in steps:
        answer = await alice.update_inbox_state(ids, action)
        assert (answer.changed, answer.counts) == (len(ids), after)
        for stream in (phone, laptop):
            event = await stream.inbox_event()
            assert (event.action, list(event.notification_ids)) == (action, ids)
            assert event.counts == after
    # Setting what is set changes nothing and sends nothing.
    again = await alice.update_inbox_state([n3], UNARCHIVE)
    assert (again.changed, again.counts) == (0, counts(0, 2, 2))

    # Every one, archived or not (n1 is archived and unread).
    marked = await alice.mark_all_read()
    assert (marked.marked, marked.counts) == (3, counts(0, 0, 2))
    for stream in (phone, laptop):
        event = await stream.inbox_event()
        assert (event.action, event.all, event.up_to_cursor) == (READ, True, 3)
        assert list(event.notification_ids) == []
        assert event.counts == counts(0, 0, 2)
    # Nothing of it reached bob: his next event is his own delivery.
    await send(herald, "bob", "for bob")
    [for_bob] = await bobs.deliveries(1)
    assert for_bob.notification.content.title == "for bob"
    for stream in (phone, laptop, bobs):
        stream.cancel()


async def test_counts_follow_sends_expiry_and_the_inbox_bound(deploy: Deploy) -> None:
    herald, clock = await deploy("up", delivery=DeliverySettings(inbox_limit=3))
    alice = herald.user("alice")
    assert await alice.inbox_counts() == counts(0, 0, 0)
    [short] = await send(herald, "alice", "short", ttl_seconds=5)
    [n2, n3] = await send(herald, "alice", "two", "three")
    assert await alice.inbox_counts() == counts(3, 3, 3)
    await alice.update_inbox_state([short], READ)
    await alice.update_inbox_state([n2], ARCHIVE)
    assert await alice.inbox_counts() == counts(1, 1, 2)
    await clock.advance(11)  # past the TTL and a sweep: the read one is gone, with its state
    assert await alice.inbox_counts() == counts(1, 1, 1)
    code, details = await code_of(alice.update_inbox_state([short], UNREAD))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "in your inbox" in details
    # The bound pushes out the oldest (the archived one): its state goes with it.
    await send(herald, "alice", "four", "five")
    assert await alice.inbox_counts() == counts(3, 3, 3)
    page = await alice.list_inbox(filter=stream_pb2.INBOX_FILTER_ALL)
    assert [i.notification.content.title for i in page.items] == ["five", "four", "three"]
    marked = await alice.mark_all_read(up_to_cursor=page.items[1].cursor)
    assert (marked.marked, marked.counts) == (2, counts(1, 1, 3))
    assert await alice.inbox_counts() == counts(1, 1, 3)
    assert n3 in {i.notification.id for i in page.items}


async def test_list_inbox_shows_the_states_and_filters_by_them(herald_up: Herald) -> None:
    ids = await send(herald_up, "alice", *(f"n{i}" for i in range(6)))
    alice = herald_up.user("alice")
    await alice.update_inbox_state(ids[:2], READ)
    await alice.update_inbox_state(ids[1:4], ARCHIVE)
    await alice.update_inbox_state([ids[4]], SEEN)

    def titles(page: stream_pb2.ListInboxResponse) -> list[str]:
        return [i.notification.content.title for i in page.items]

    default = await alice.list_inbox()
    assert titles(default) == ["n5", "n4", "n0"]
    by_title = {i.notification.content.title: i for i in default.items}
    assert by_title["n0"].HasField("read_at")
    assert by_title["n0"].HasField("seen_at")
    assert by_title["n4"].HasField("seen_at")
    assert not by_title["n4"].HasField("read_at")
    assert not by_title["n5"].HasField("seen_at")
    assert not any(i.HasField("archived_at") for i in default.items)
    archived = await alice.list_inbox(filter=stream_pb2.INBOX_FILTER_ARCHIVED)
    assert titles(archived) == ["n3", "n2", "n1"]
    assert all(i.HasField("archived_at") for i in archived.items)
    unread = await alice.list_inbox(filter=stream_pb2.INBOX_FILTER_UNREAD)
    assert titles(unread) == ["n5", "n4"]
    everything = await alice.list_inbox(filter=stream_pb2.INBOX_FILTER_ALL)
    assert titles(everything) == [f"n{i}" for i in range(5, -1, -1)]
    # Pages of a filtered view: every item once, in order, across the tokens.
    seen: list[str] = []
    token = ""
    while True:
        page = await alice.list_inbox(page_size=1, page_token=token)
        seen.extend(titles(page))
        token = page.next_page_token
        if not token:
            break
    assert seen == ["n5", "n4", "n0"]


async def test_mark_read_is_a_read_change_and_skips_what_is_not_in_the_inbox(
    herald_up: Herald,
) -> None:
    n1, n2 = await send(herald_up, "alice", "one", "two")
    [bobs] = await send(herald_up, "bob", "bob's")
    laptop = Stream(herald_up.user("alice"))
    await laptop.start()
    alice = herald_up.user("alice")
    assert await alice.mark_read([n1, bobs, "never-sent"]) == 1
    event = await laptop.inbox_event()
    assert (event.action, list(event.notification_ids)) == (READ, [n1])
    assert event.counts == counts(1, 1, 2)
    assert await alice.mark_read([n1]) == 0
    # GetStatus still says when the recipient read it.
    status = await herald_up.backend().status(n1)
    assert status.recipients[0].HasField("read_at")
    assert await herald_up.user("bob").inbox_counts() == counts(1, 1, 1)
    assert n2
    laptop.cancel()


@TOPOLOGIES
async def test_nobody_changes_another_users_or_tenants_inbox(deploy: Deploy, topology: str) -> None:
    herald, _ = await deploy(topology)
    [alices] = await send(herald, "alice", "alice's")
    bob = herald.user("bob")
    code, details = await code_of(bob.update_inbox_state([alices], ARCHIVE))
    assert code == grpc.StatusCode.NOT_FOUND
    assert alices[:16] in details
    # Alice of another tenant is another user: her inbox does not hold it.
    other_tenant = herald.user("alice", tenant="globex")
    code, _ = await code_of(other_tenant.update_inbox_state([alices], READ))
    assert code == grpc.StatusCode.NOT_FOUND
    assert await other_tenant.mark_all_read() == stream_pb2.MarkAllReadResponse(
        marked=0, counts=counts(0, 0, 0)
    )
    # One id not in the inbox fails the whole call: nothing changed.
    alice = herald.user("alice")
    code, _ = await code_of(alice.update_inbox_state([alices, "never-sent"], READ))
    assert code == grpc.StatusCode.NOT_FOUND
    assert await alice.inbox_counts() == counts(1, 1, 1)
    # A backend's token has no inbox: the subscribe scope is a user's.
    backend_client = herald.client("stream", herald.tokens.backend("acme", "send"))
    stub = stream_pb2_grpc.StreamServiceStub(backend_client._channel)
    for call in (
        stub.GetInboxCounts(stream_pb2.GetInboxCountsRequest(), metadata=backend_client.metadata()),
        stub.MarkAllRead(stream_pb2.MarkAllReadRequest(), metadata=backend_client.metadata()),
        stub.UpdateInboxState(
            stream_pb2.UpdateInboxStateRequest(notification_ids=[alices], action=READ),
            metadata=backend_client.metadata(),
        ),
    ):
        code, _ = await code_of(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED
    assert await alice.inbox_counts() == counts(1, 1, 1)


async def test_bad_inbox_requests_are_invalid_argument_with_a_reason(herald_up: Herald) -> None:
    [n1] = await send(herald_up, "alice", "one")
    alice = herald_up.user("alice")
    stub = stream_pb2_grpc.StreamServiceStub(alice._channel)
    cases = [
        (alice.update_inbox_state([], READ), "notification_ids"),
        (alice.update_inbox_state([n1], stream_pb2.INBOX_ACTION_UNSPECIFIED), "action"),
        (
            stub.UpdateInboxState(
                stream_pb2.UpdateInboxStateRequest(notification_ids=[n1], action=99),  # type: ignore[arg-type]
                metadata=alice.metadata(),
            ),
            "action",
        ),
        (alice.update_inbox_state(["x" * 500], READ), "longer than"),
        (alice.update_inbox_state([f"n{i}" for i in range(1001)], READ), "at most 1000"),
        (
            stub.ListInbox(
                stream_pb2.ListInboxRequest(filter=42),  # type: ignore[arg-type]
                metadata=alice.metadata(),
            ),
            "filter",
        ),
    ]
    for call, says in cases:
        code, details = await code_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert says in details
    assert await alice.inbox_counts() == counts(1, 1, 1)


async def test_a_websocket_session_gets_inbox_events_too(herald_up: Herald) -> None:
    token = herald_up.tokens.user("acme", "alice")
    binary = await WebSocketSubscription.open(herald_up.ws_url(), token)
    text = await WebSocketSubscription.open(herald_up.ws_url(), token, json=True)
    [n1] = await send(herald_up, "alice", "one")
    await binary.take(1)
    await text.take(1)
    await herald_up.user("alice").update_inbox_state([n1], ARCHIVE)

    async def inbox_event(sub: WebSocketSubscription) -> stream_pb2.InboxEvent:
        while True:
            event = await sub.event()
            if event.WhichOneof("event") == "inbox_event":
                return event.inbox_event

    for sub in (binary, text):
        event = await asyncio.wait_for(inbox_event(sub), 10)
        assert (event.action, list(event.notification_ids)) == (ARCHIVE, [n1])
        assert event.counts == counts(0, 0, 0)
        await sub.close()


async def test_the_python_client_hands_inbox_events_to_a_callback(herald_up: Herald) -> None:
    events: list[stream_pb2.InboxEvent] = []
    heard = asyncio.Event()

    def on_inbox_event(event: stream_pb2.InboxEvent) -> None:
        events.append(event)
        heard.set()

    subscription = herald_up.user("alice").subscribe(on_inbox_event=on_inbox_event)
    notifications = subscription.__aiter__()
    [n1] = await send(herald_up, "alice", "one")
    received = await asyncio.wait_for(notifications.__anext__(), 10)
    assert received.notification.id == n1
    reading = asyncio.ensure_future(notifications.__anext__())  # the stream is read as pulled
    await herald_up.user("alice").update_inbox_state([n1], SEEN)
    await asyncio.wait_for(heard.wait(), 10)
    assert [(e.action, list(e.notification_ids)) for e in events] == [(SEEN, [n1])]
    reading.cancel()
    subscription.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    await notifications.aclose()


async def test_a_filtered_page_reads_a_bounded_part_of_the_log_and_paging_finds_every_item(
    herald_up: Herald,
) -> None:
    ids = await send(herald_up, "alice", *(f"n{i}" for i in range(40)))
    alice = herald_up.user("alice")
    await alice.update_inbox_state(ids[5:35], ARCHIVE)
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await alice.list_inbox(page_size=3, page_token=token)
        pages.append([i.notification.id for i in page.items])
        token = page.next_page_token
        if not token:
            break
    assert [i for page in pages for i in page] == ids[35:][::-1] + ids[:5][::-1]
    # 30 archived in a row: some pages come back short (or empty) with a token, none too long.
    assert any(len(page) < 3 for page in pages[:-1])
    assert all(len(page) <= 3 for page in pages)
    assert await alice.inbox_counts() == counts(10, 10, 10)


async def test_a_state_written_while_its_entry_left_the_log_does_not_outlive_it() -> None:
    """The core, on the real stores, with the bound pushing the entry out between the check and
    the write (and the dispatcher forgetting its state before the state exists)."""
    clock = ManualClock()
    status = MemoryStatusStore()
    logs = MemoryLogStore(status)
    states = MemoryInboxStateStore()
    inbox = Inbox(logs=logs, status=status, states=states, broker=MemoryBroker(), clock=clock)
    alice = user_log("alice")

    def entry(notification_id: str) -> NewEntry:
        return NewEntry(notification_id, 2, clock.now(), clock.now() + 3600, b"\x12\x00")

    await logs.append("acme", [LogAppend(alice, [entry("n1")], 1)])
    change = states.change

    async def change_after_the_bound_dropped_it(*args: object) -> tuple[list[str], InboxCounters]:
        [result] = await logs.append("acme", [LogAppend(alice, [entry("n2")], 1)])
        await states.forget("acme", [("alice", e.notification_id) for e in result.dropped])
        return await change(*args)  # type: ignore[arg-type]

    states.change = change_after_the_bound_dropped_it  # type: ignore[method-assign]
    assert await inbox.change("acme", "alice", ["n1"], Action.READ) == (1, Counts(1, 1, 1))
    assert await states.counters("acme", "alice") == InboxCounters()
    assert await states.get("acme", "alice", ["n1"]) == {}
