"""PreferenceGate and the rules: what a send costs in store calls (one batched read, nothing
for a tenant without preferences), how a path resolves (category, then default, then on),
how `split` sorts a notification's users, and what a batch of webhook events costs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest

from herald.v1 import notification_pb2
from services import wire
from services.clock import ManualClock
from services.domain import user_log
from services.preferences.gate import PreferenceGate, split
from services.preferences.store import Choice, DeliveryPath, UserPreferences
from services.preferences.store_memory import MemoryPreferenceStore
from services.stream.log import LogAppend, NewEntry
from services.stream.log_memory import MemoryLogStore
from services.webhooks.events import Event
from services.webhooks.wanted import WebhookPreferences

pytestmark = pytest.mark.asyncio

RECHECK_S = 5.0


class CountingStore(MemoryPreferenceStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    async def load(self, tenant: str, user_ids: Sequence[str]) -> dict[str, UserPreferences]:
        self.calls["load"] += 1
        return await super().load(tenant, user_ids)

    async def has_any(self, tenant: str) -> bool:
        self.calls["has_any"] += 1
        return await super().has_any(tenant)


def muted(user: str, category: str) -> UserPreferences:
    return UserPreferences(user, categories={category: Choice(in_app=False)})


async def test_a_tenant_without_preferences_costs_one_check_per_recheck_interval() -> None:
    store, clock = CountingStore(), ManualClock()
    gate = PreferenceGate(store, clock, RECHECK_S)
    users = [f"u{i}" for i in range(1000)]
    for _ in range(50):
        assert await gate.load("acme", users) == {}
    assert store.calls == Counter(has_any=1)
    await clock.advance(RECHECK_S)
    assert await gate.load("acme", users) == {}
    assert store.calls == Counter(has_any=2)


async def test_a_send_to_many_users_reads_them_in_one_call() -> None:
    store, clock = CountingStore(), ManualClock()
    gate = PreferenceGate(store, clock, RECHECK_S)
    await gate.put("acme", muted("u7", "marketing"))
    loaded = await gate.load("acme", [f"u{i}" for i in range(1000)])
    assert set(loaded) == {"u7"}
    # This node stored them: it knew at once, without asking the store.
    assert store.calls == Counter(load=1)
    await gate.load("acme", ["u1"])
    assert store.calls == Counter(load=2)


async def test_preferences_stored_by_another_node_apply_after_the_recheck() -> None:
    store, clock = CountingStore(), ManualClock()
    gate = PreferenceGate(store, clock, RECHECK_S)
    assert await gate.load("acme", ["alice"]) == {}
    other_node = PreferenceGate(store, clock, RECHECK_S)
    await other_node.put("acme", muted("alice", "marketing"))
    assert await gate.load("acme", ["alice"]) == {}  # within the interval: not yet
    await clock.advance(RECHECK_S)
    assert set(await gate.load("acme", ["alice"])) == {"alice"}


async def test_wanted_and_wants_for_the_webhooks() -> None:
    gate = PreferenceGate(MemoryPreferenceStore(), ManualClock(), RECHECK_S)
    await gate.put(
        "acme", UserPreferences("alice", categories={"marketing": Choice(webhook=False)})
    )
    hook = DeliveryPath.WEBHOOK
    assert await gate.wanted("acme", ["alice", "bob"], "marketing", hook) == {"bob"}
    assert not await gate.wants("acme", "alice", "marketing", hook)
    assert await gate.wants("acme", "alice", "marketing", hook, critical=True)
    assert await gate.wants("acme", "alice", "billing", hook)
    assert await gate.wants("globex", "alice", "marketing", hook)


async def test_a_path_resolves_category_then_default_then_on() -> None:
    prefs = UserPreferences(
        "alice",
        Choice(push=False),
        {"marketing": Choice(in_app=False), "billing": Choice(push=True)},
    )
    assert not prefs.wants("marketing", DeliveryPath.IN_APP)
    assert not prefs.wants("marketing", DeliveryPath.PUSH)  # unset: the default
    assert prefs.wants("marketing", DeliveryPath.WEBHOOK)  # unset everywhere: on
    assert prefs.wants("billing", DeliveryPath.PUSH)
    assert not prefs.wants("", DeliveryPath.PUSH)  # no category: the default
    assert UserPreferences("bob").wants("anything", DeliveryPath.IN_APP)


async def test_split_keeps_the_order_and_the_others() -> None:
    choices = {
        "b": UserPreferences("b", categories={"news": Choice(in_app=False)}),
        "c": UserPreferences("c", categories={"news": Choice(push=False)}),
    }
    found = split(("a", "b", "c", "d"), "news", choices)
    assert found.in_app == ("a", "c", "d")
    assert found.muted == ("b",)
    assert found.no_push == frozenset({"c"})
    assert split(("a", "b"), "other", choices).in_app == ("a", "b")
    assert split(("a",), "news", {}).in_app == ("a",)


class CountingLogs(MemoryLogStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def notifications(
        self, tenant: str, wanted: Sequence[tuple[str, str]]
    ) -> dict[str, bytes]:
        self.reads += 1
        return await super().notifications(tenant, wanted)


def stored(notification_id: str, category: str) -> NewEntry:
    encoded = notification_pb2.Notification(id=notification_id, category=category)
    field = wire.notification_field(encoded.SerializeToString())
    return NewEntry(notification_id, 2, 0.0, 1e12, field)


async def test_webhook_events_cost_nothing_for_a_tenant_without_preferences() -> None:
    store, logs, clock = CountingStore(), CountingLogs(), ManualClock()
    gate = PreferenceGate(store, clock, RECHECK_S)
    filter_ = WebhookPreferences(gate, logs)
    events = [Event("delivered", f"n{i}", f"u{i}", 0.0) for i in range(100)]
    for _ in range(20):
        assert await filter_.keep("acme", events) == events
    assert (store.calls, logs.reads) == (Counter(has_any=1), 0)


async def test_webhook_events_read_preferences_and_notifications_once_per_batch() -> None:
    store, logs, clock = CountingStore(), CountingLogs(), ManualClock()
    gate = PreferenceGate(store, clock, RECHECK_S)
    await gate.put(
        "acme", UserPreferences("alice", categories={"marketing": Choice(webhook=False)})
    )
    await logs.append(
        "acme",
        [LogAppend(user_log("alice"), [stored("m", "marketing"), stored("b", "billing")], 100)],
    )
    filter_ = WebhookPreferences(gate, logs)
    # Users without preferences: one read of them, none of the notifications.
    others = [Event("delivered", "m", "bob", 0.0), Event("acked", "m", "carol", 0.0)]
    assert await filter_.keep("acme", others) == others
    assert (store.calls, logs.reads) == (Counter(load=1), 0)
    carried = stored("x", "marketing").notification_field
    events = [
        Event("delivered", "m", "alice", 0.0),
        Event("delivered", "b", "alice", 0.0),
        Event("acked", "m", "alice", 0.0),
        Event("delivered", "m", "bob", 0.0),
        Event("expired", "x", "alice", 0.0, "ttl", carried),  # swept: not in the logs
        Event("acked", "gone", "alice", 0.0),  # unknown: sent
    ]
    kept = await filter_.keep("acme", events)
    assert kept == [events[1], events[3], events[5]]
    assert (store.calls, logs.reads) == (Counter(load=2), 1)
