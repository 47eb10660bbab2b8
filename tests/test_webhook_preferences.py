"""Users' webhook preferences through the real protocol, on the embedded profile and the
production profile (PostgreSQL and Redis): preferences put over RegistryService, sends over
IngestService, sessions and acks over StreamService, and the signed batches that reach a real
local receiver (the `setup` fixture of tests/test_webhooks.py, sender driven by hand)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from prometheus_client import REGISTRY

from herald.v1 import notification_pb2, registry_pb2, stream_pb2
from tests.streams import Stream
from tests.test_preferences import of, put
from tests.test_webhooks import Setup
from tests.test_webhooks import setup as setup

pytestmark = [
    pytest.mark.asyncio,
    # The split topology's stream node on memory stores has no preferences (docs/preferences.md).
    pytest.mark.parametrize("setup", ["up", "production"], indirect=True),
]

NO_MARKETING_WEBHOOKS = registry_pb2.DeliveryPreference(category="marketing", webhook=False)

Seen = set[tuple[str, str, str]]


def unwanted() -> float:
    return REGISTRY.get_sample_value("herald_webhook_events_unwanted_total") or 0.0


def seen(setup: Setup) -> Seen:
    return {(e["type"], e["notification_id"], e["user_id"]) for e in setup.receiver.events}


async def arrived(setup: Setup, expected: Iterable[tuple[str, str, str]]) -> Seen:
    """Runs the sender until every expected event has arrived; returns all that did. Events
    are queued and cut in order, so an earlier event that was not filtered out would be there
    too by then."""
    wanted = set(expected)
    await setup.until(lambda: wanted <= seen(setup))
    assert setup.receiver.rejected == []
    return seen(setup)


async def delivered_and_acked(setup: Setup, user: str, count: int) -> None:
    client = setup.herald.user(user)
    stream = Stream(client)
    await stream.start()
    deliveries = await stream.deliveries(count)
    assert await client.ack([d.notification.id for d in deliveries]) == count
    stream.cancel()


async def test_a_muted_category_sends_no_webhooks_for_its_user_only(setup: Setup) -> None:
    herald = setup.herald
    await setup.put(max_delay_ms=100)
    await put(herald, "alice", NO_MARKETING_WEBHOOKS)
    before = unwanted()
    backend = herald.backend()
    # In-app is not muted: alice gets all three on her stream.
    sale = (await backend.send(of("marketing", "Sale", "alice", "bob"))).notification_id
    invoice = (await backend.send(of("billing", "Invoice", "alice"))).notification_id
    alert = (await backend.send(of("marketing", "Recall", "alice", critical=True))).notification_id
    await delivered_and_acked(setup, "alice", 3)
    await delivered_and_acked(setup, "bob", 1)
    events = await arrived(
        setup,
        [
            (kind, notification_id, user)
            for kind in ("delivered", "acked")
            for notification_id, user in [(invoice, "alice"), (alert, "alice"), (sale, "bob")]
        ],
    )
    assert {(n, u) for _, n, u in events} == {(invoice, "alice"), (alert, "alice"), (sale, "bob")}
    # Dropped, counted, never parked.
    assert unwanted() - before == 2
    assert await setup.parked() == []


async def test_defaults_off_leave_only_the_categories_turned_on(setup: Setup) -> None:
    herald = setup.herald
    await setup.put(events=[registry_pb2.WEBHOOK_EVENT_KIND_DELIVERED], max_delay_ms=100)
    await put(
        herald,
        "alice",
        registry_pb2.DeliveryPreference(category="billing", webhook=True),
        defaults=registry_pb2.DeliveryPreference(webhook=False),
    )
    backend = herald.backend()
    sent = {
        title: (await backend.send(of(category, title, "alice", "bob"))).notification_id
        for category, title in [("marketing", "Sale"), ("billing", "Invoice"), ("", "Hello")]
    }
    await delivered_and_acked(setup, "alice", 3)
    await delivered_and_acked(setup, "bob", 3)
    events = await arrived(
        setup,
        [("delivered", sent["Invoice"], "alice")]
        + [("delivered", n, "bob") for n in sent.values()],
    )
    assert {(n, u) for _, n, u in events if u == "alice"} == {(sent["Invoice"], "alice")}
    assert {n for _, n, u in events if u == "bob"} == set(sent.values())


async def test_an_expired_notification_follows_the_preferences(setup: Setup) -> None:
    """Expiry events carry their notification: the sweep removed it from the logs."""
    herald = setup.herald
    await setup.put(events=[registry_pb2.WEBHOOK_EVENT_KIND_EXPIRED], max_delay_ms=100)
    await put(herald, "alice", NO_MARKETING_WEBHOOKS)
    backend = herald.backend()
    # Alice is offline: both expire in her inbox.
    sale = (await backend.send(of("marketing", "Sale", "alice", ttl_seconds=5))).notification_id
    invoice = (await backend.send(of("billing", "Invoice", "alice", ttl_seconds=5))).notification_id
    events = await arrived(setup, [("expired", invoice, "alice")])
    assert sale not in {n for _, n, _ in events}
    assert events == {("expired", invoice, "alice")}


async def test_a_channel_notification_follows_each_readers_preferences(setup: Setup) -> None:
    """Channel sends are not filtered at send (docs/preferences.md), but their events are per
    user: each reader's webhook preference applies to them."""
    herald = setup.herald
    await setup.put(events=[registry_pb2.WEBHOOK_EVENT_KIND_DELIVERED], max_delay_ms=100)
    await put(herald, "alice", NO_MARKETING_WEBHOOKS)
    streams = {
        user: Stream(
            herald.user(user, channels=["news"]), stream_pb2.SubscribeRequest(channels=["news"])
        )
        for user in ("alice", "bob")
    }
    for stream in streams.values():
        await stream.start()
    sent = {}
    for category in ("marketing", "billing"):
        news = notification_pb2.Notification(category=category)
        news.target.channel = "news"
        news.content.title = category
        sent[category] = (await herald.backend().send(news)).notification_id
    for stream in streams.values():
        await stream.deliveries(2)
        stream.cancel()
    expected = {
        ("delivered", sent["billing"], "alice"),
        ("delivered", sent["marketing"], "bob"),
        ("delivered", sent["billing"], "bob"),
    }
    assert await arrived(setup, expected) == expected
