"""Broker contract: every publication of a subscribed log reaches the node, in order, intact.

What a broker promises (services/stream/broker.py), on every backend:

- once `subscribe` returns, every later publication of that (tenant, log) reaches the node's
  handler, in publish order per log, with its epoch, head and entries equal to what was sent,
  or with no entries at all (head only) when they were too large to send;
- nothing reaches the handler for a log the node did not subscribe to, or after `unsubscribe`
  returned;
- a networked broker delivers to every node subscribed to the log;
- after its subscription was interrupted the broker calls `on_reset`, and later publications
  arrive again.

Absence is checked without sleeping: a publication of a subscribed log is sent after the one
that must not arrive, and the handler has seen everything published before it once it arrives.
"""

from __future__ import annotations

import pytest

from services.domain import BROADCAST, channel_log, user_log
from services.stream.broker import Broker, Publication, UserEvent
from tests.broker_support import Recorder, publication
from tests.contract.conftest import BrokerBackend

pytestmark = pytest.mark.asyncio

T1, T2 = "tenant-1", "tenant-2"
ALICE, NEWS = user_log("alice"), channel_log("news")


def started(backend: BrokerBackend) -> tuple[Broker, Recorder]:
    broker, recorder = backend.node(), Recorder()
    broker.start(recorder.on_publication, recorder.on_reset, recorder.on_user_event)
    return broker, recorder


async def test_a_subscribed_node_receives_every_publication_in_order_with_entries_intact(
    brokers: BrokerBackend,
) -> None:
    broker, recorder = started(brokers)
    for tenant, key in ((T1, ALICE), (T1, NEWS), (T2, BROADCAST)):
        await broker.subscribe(tenant, key)
    sent: list[Publication] = []
    for round_ in range(10):
        batch = [
            publication(T1, ALICE, 2 * round_ + 2, count=2),
            publication(T1, NEWS, round_ + 1),
            publication(T2, BROADCAST, 3 * round_ + 3, count=3, size=0),
        ]
        await broker.publish(batch)
        sent.extend(batch)
    await recorder.until_count(len(sent))
    assert len(recorder.publications) == len(sent)
    for tenant, key in ((T1, ALICE), (T1, NEWS), (T2, BROADCAST)):
        assert recorder.of(tenant, key) == [p for p in sent if (p.tenant, p.key) == (tenant, key)]


async def test_nothing_arrives_for_logs_not_subscribed(brokers: BrokerBackend) -> None:
    broker, recorder = started(brokers)
    await broker.subscribe(T1, NEWS)
    # The same log in another tenant, and other logs of the tenant, are not NEWS of T1.
    await broker.publish(
        [
            publication(T2, NEWS, 1),
            publication(T1, ALICE, 1),
            publication(T1, BROADCAST, 1),
            publication(T1, channel_log("news:sport"), 1),
        ]
    )
    await broker.publish([publication(T1, NEWS, 1)])
    await recorder.until_count(1)
    assert recorder.publications == [publication(T1, NEWS, 1)]


async def test_unsubscribing_stops_the_publications_of_that_log(brokers: BrokerBackend) -> None:
    broker, recorder = started(brokers)
    await broker.subscribe(T1, ALICE)
    await broker.subscribe(T1, NEWS)
    await broker.publish([publication(T1, ALICE, 1)])
    await recorder.until_count(1)
    await broker.unsubscribe(T1, ALICE)
    await broker.publish([publication(T1, ALICE, 2), publication(T1, NEWS, 1)])
    await recorder.until_count(2)
    assert recorder.publications == [publication(T1, ALICE, 1), publication(T1, NEWS, 1)]
    # Subscribing again brings them back.
    await broker.subscribe(T1, ALICE)
    await broker.publish([publication(T1, ALICE, 3)])
    await recorder.until_count(3)
    assert recorder.publications[-1] == publication(T1, ALICE, 3)


async def test_every_node_subscribed_to_a_log_receives_its_publications(
    brokers: BrokerBackend,
) -> None:
    nodes = [started(brokers) for _ in range(3)]
    (first, first_seen), (second, second_seen), (third, third_seen) = nodes
    await first.subscribe(T1, NEWS)
    await second.subscribe(T1, NEWS)
    await third.subscribe(T1, ALICE)
    # The third node publishes the sentinel it waits for after NEWS: NEWS must not reach it.
    await first.publish([publication(T1, NEWS, 1)])
    await third.publish([publication(T1, ALICE, 1)])
    await first_seen.until_count(1)
    await third_seen.until_count(1)
    assert first_seen.publications == [publication(T1, NEWS, 1)]
    assert third_seen.publications == [publication(T1, ALICE, 1)]
    if brokers.spans_nodes:
        await second_seen.until_count(1)
        assert second_seen.publications == [publication(T1, NEWS, 1)]
    else:
        # One process, one node: only the publishing broker's own handler hears it.
        assert second_seen.publications == []


async def test_entries_too_large_to_send_go_head_only(brokers: BrokerBackend) -> None:
    """The bound is the transport's: the publishing node itself gets every publication whole,
    another node gets a large one head-only (and reads the log)."""
    publisher, own = started(brokers)
    listeners = [(publisher, own)]
    if brokers.spans_nodes:
        listeners.append(started(brokers))
    for broker, _ in listeners:
        await broker.subscribe(T1, ALICE)
    large = publication(T1, ALICE, 40, count=4, size=8192)
    small = publication(T1, ALICE, 41)
    await publisher.publish([large, small])
    for broker, recorder in listeners:
        await recorder.until_count(2)
        received_large, received_small = recorder.publications
        if brokers.max_entries_bytes is None or broker is publisher:
            assert received_large == large
        else:
            assert sum(len(e.notification_field) for e in large.entries) > brokers.max_entries_bytes
            assert received_large == large._replace(entries=())
        assert received_small == small


async def test_after_an_interruption_the_broker_resets_and_delivers_again(
    brokers: BrokerBackend,
) -> None:
    broker, recorder = started(brokers)
    await broker.subscribe(T1, ALICE)
    await broker.subscribe(T2, NEWS)
    await broker.publish([publication(T1, ALICE, 1)])
    await recorder.until_count(1)
    assert recorder.resets == 0
    await brokers.interrupt(broker)
    await recorder.until(lambda: recorder.resets >= 1)
    # Both subscriptions are back: nothing has to subscribe again.
    await broker.publish([publication(T1, ALICE, 2), publication(T2, NEWS, 5)])
    await recorder.until_count(3)
    assert recorder.publications[1:] == [publication(T1, ALICE, 2), publication(T2, NEWS, 5)]
    assert recorder.resets == 1


async def test_publishing_to_a_log_nobody_reads_is_harmless(brokers: BrokerBackend) -> None:
    broker, recorder = started(brokers)
    await broker.publish([])
    await broker.publish([publication(T1, ALICE, 1)])
    await broker.subscribe(T1, ALICE)
    await broker.publish([publication(T1, ALICE, 2)])
    await recorder.until_count(1)
    assert recorder.publications == [publication(T1, ALICE, 2)]


async def test_a_user_event_reaches_every_node_reading_the_users_own_log(
    brokers: BrokerBackend,
) -> None:
    (first, first_seen), (second, second_seen), (third, third_seen) = [
        started(brokers) for _ in range(3)
    ]
    await first.subscribe(T1, ALICE)
    await second.subscribe(T1, ALICE)
    await third.subscribe(T1, NEWS)  # no reader of alice's log: no event for alice here
    event = UserEvent(T1, "alice", b"\x2a\x00" + bytes(range(256)))
    # Not alice of T2, not bob: only the last one is for the nodes reading alice's log.
    await first.publish_user_events(
        [UserEvent(T2, "alice", b"x"), UserEvent(T1, "bob", b"y"), event]
    )
    await third.publish([publication(T1, NEWS, 1)])
    await first_seen.until(lambda: len(first_seen.user_events) >= 1)
    await third_seen.until_count(1)
    # The publishing node hears its own once (inline), never again from the transport.
    await first.publish([publication(T1, ALICE, 1)])
    await first_seen.until_count(1)
    assert first_seen.user_events == [event]
    assert third_seen.user_events == []
    if brokers.spans_nodes:
        await second_seen.until(lambda: len(second_seen.user_events) >= 1)
        assert second_seen.user_events == [event]
        # Sent through Redis after the event came back to the first node, if it did.
        await second.publish([publication(T1, ALICE, 2)])
        await first_seen.until_count(2)
        assert first_seen.user_events == [event]
    else:
        assert second_seen.user_events == []
