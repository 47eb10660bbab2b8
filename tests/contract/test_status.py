"""StatusStore contract: recipients' states only move forward along ALLOWED, with timestamps."""

from __future__ import annotations

import itertools

import pytest

from services.domain import (
    ALLOWED,
    CHANNEL,
    LogKey,
    NewRecord,
    NotificationRecord,
    RecipientRecord,
    State,
    Transition,
    user_log,
)
from services.stream.status import Mark, StatusStore

pytestmark = pytest.mark.asyncio

T1, T2 = "tenant-1", "tenant-2"
TARGET = b"\x0a\x07\x0a\x05alice"  # an encoded herald.v1.Target; the store keeps it opaque


def record(
    notification_id: str = "n1",
    tenant: str = T1,
    users: tuple[str, ...] = ("alice", "bob"),
    created_at: float = 100.0,
) -> NewRecord:
    return NewRecord(notification_id, tenant, TARGET, created_at, created_at + 3600, users)


def stored(new: NewRecord) -> NotificationRecord:
    """What `get` answers for `new` created at its `created_at`, before any transition."""
    at = new.created_at
    return NotificationRecord(
        new.notification_id,
        new.tenant,
        new.target,
        new.created_at,
        new.expires_at,
        {u: RecipientRecord(u, State.QUEUED, at, queued_at=at) for u in new.user_ids},
    )


async def recipient(
    store: StatusStore, user_id: str, notification_id: str = "n1"
) -> RecipientRecord:
    stored = await store.get(T1, notification_id)
    assert stored is not None
    return stored.recipients[user_id]


async def test_get_returns_what_was_created(status_store: StatusStore) -> None:
    await status_store.create([record()])
    assert await status_store.get(T1, "n1") == stored(record())
    assert await status_store.get(T1, "n2") is None
    assert await status_store.get(T2, "n1") is None


async def test_create_stores_a_batch_and_keeps_what_exists(status_store: StatusStore) -> None:
    await status_store.create([record(users=("alice",))])
    await status_store.apply(T1, [Transition("n1", "alice", State.DELIVERED)], 150.0)
    # The same id again (a retried dispatch) does not reset its recipients; the rest is stored.
    await status_store.create([record(users=("alice",)), record(notification_id="n2")])
    assert (await recipient(status_store, "alice")).state is State.DELIVERED
    assert await status_store.get(T1, "n2") == stored(record(notification_id="n2"))


@pytest.mark.parametrize(
    ("current", "new"), list(itertools.product(State, State)), ids=lambda s: s.name
)
async def test_states_only_move_as_allowed(
    status_store: StatusStore, current: State, new: State
) -> None:
    await status_store.create([record(users=("alice",))])
    if current is not State.QUEUED:  # every state can follow QUEUED
        await status_store.apply(T1, [Transition("n1", "alice", current, "before")], 150.0)
    before = await recipient(status_store, "alice")
    assert before.state is current
    await status_store.apply(T1, [Transition("n1", "alice", new, "why")], 200.0)
    after = await recipient(status_store, "alice")
    if new in ALLOWED[current]:
        assert (after.state, after.updated_at, after.reason) == (new, 200.0, "why")
    else:  # ignored: nothing about the recipient changes
        assert after == before


async def test_the_allowed_table_is_forward_only() -> None:
    # Guards the table the parametrized test above reads: ACKED and EXPIRED are final, nothing
    # goes back to QUEUED, and FAILED may still be delivered and acked.
    assert ALLOWED[State.ACKED] == ALLOWED[State.EXPIRED] == frozenset()
    assert all(State.QUEUED not in ALLOWED[s] for s in State)
    assert {State.DELIVERED, State.ACKED} <= ALLOWED[State.FAILED]


async def test_a_new_recipient_enters_in_any_state(status_store: StatusStore) -> None:
    await status_store.create([record(users=())])
    await status_store.apply(
        T1,
        [Transition("n1", "carol", State.DELIVERED), Transition("n1", "dave", State.ACKED)],
        150.0,
    )
    carol = await recipient(status_store, "carol")
    assert (carol.state, carol.attempts, carol.delivered_at, carol.updated_at) == (
        State.DELIVERED,
        1,
        150.0,
        150.0,
    )
    dave = await recipient(status_store, "dave")
    assert (dave.state, dave.acked_at, dave.attempts) == (State.ACKED, 150.0, 0)


async def test_attempts_count_deliveries_and_timestamps_are_kept(
    status_store: StatusStore,
) -> None:
    await status_store.create([record()])
    steps = [
        (State.DELIVERED, 110.0, ""),
        (State.DELIVERED, 120.0, ""),  # redelivered after an ack timeout
        (State.FAILED, 130.0, "no ack"),
        (State.DELIVERED, 140.0, ""),  # the next connect
        (State.ACKED, 150.0, ""),
        (State.DELIVERED, 160.0, ""),  # late: ignored
        (State.EXPIRED, 170.0, "ttl"),  # late: ignored
    ]
    for state, at, reason in steps:
        await status_store.apply(T1, [Transition("n1", "alice", state, reason)], at)
    alice = await recipient(status_store, "alice")
    assert alice == RecipientRecord(
        "alice",
        State.ACKED,
        updated_at=150.0,
        queued_at=100.0,
        delivered_at=110.0,  # the first delivery
        acked_at=150.0,
        attempts=3,
        reason="",
    )
    assert await recipient(status_store, "bob") == stored(record()).recipients["bob"]


async def test_a_failure_keeps_its_reason(status_store: StatusStore) -> None:
    await status_store.create([record()])
    await status_store.apply(T1, [Transition("n1", "alice", State.DELIVERED)], 110.0)
    await status_store.apply(T1, [Transition("n1", "alice", State.FAILED, "no ack")], 120.0)
    await status_store.apply(T1, [Transition("n1", "bob", State.EXPIRED, "ttl")], 130.0)
    alice = await recipient(status_store, "alice")
    assert (alice.state, alice.reason, alice.updated_at, alice.attempts) == (
        State.FAILED,
        "no ack",
        120.0,
        1,
    )
    bob = await recipient(status_store, "bob")
    assert (bob.state, bob.reason, bob.updated_at, bob.attempts) == (State.EXPIRED, "ttl", 130.0, 0)


async def test_transitions_of_one_call_apply_in_order(status_store: StatusStore) -> None:
    await status_store.create([record()])
    await status_store.apply(
        T1,
        [
            Transition("n1", "alice", State.DELIVERED),
            Transition("n1", "alice", State.ACKED),
            Transition("n1", "bob", State.ACKED),
            Transition("n1", "bob", State.DELIVERED),
        ],
        110.0,
    )
    alice = await recipient(status_store, "alice")
    assert (alice.state, alice.attempts, alice.delivered_at, alice.acked_at) == (
        State.ACKED,
        1,
        110.0,
        110.0,
    )
    bob = await recipient(status_store, "bob")
    assert (bob.state, bob.attempts, bob.delivered_at) == (State.ACKED, 0, 0.0)


async def test_apply_ignores_unknown_notifications_and_other_tenants(
    status_store: StatusStore,
) -> None:
    await status_store.create([record()])
    await status_store.apply(T1, [Transition("n9", "alice", State.DELIVERED)], 110.0)
    await status_store.apply(T2, [Transition("n1", "alice", State.ACKED)], 110.0)
    assert await status_store.get(T1, "n9") is None
    assert await status_store.get(T2, "n1") is None
    assert await status_store.get(T1, "n1") == stored(record())


async def test_tenants_keep_separate_records_under_one_id(status_store: StatusStore) -> None:
    await status_store.create(
        [record(tenant=T1, users=("alice",)), record(tenant=T2, users=("zoe",), created_at=500.0)]
    )
    await status_store.apply(T2, [Transition("n1", "zoe", State.DELIVERED)], 510.0)
    assert await status_store.get(T1, "n1") == stored(record(tenant=T1, users=("alice",)))
    t2 = await status_store.get(T2, "n1")
    assert t2 is not None
    assert (t2.tenant, t2.created_at, list(t2.recipients)) == (T2, 500.0, ["zoe"])
    assert t2.recipients["zoe"].state is State.DELIVERED


async def test_purge_forgets_notifications_created_before_the_cutoff(
    status_store: StatusStore,
) -> None:
    await status_store.create([record("old", T1, created_at=10.0)])
    await status_store.create([record("old", T2, created_at=20.0)])
    await status_store.create([record("edge", T1, created_at=30.0)])
    await status_store.create([record("new", T1, created_at=40.0)])
    assert await status_store.purge(30.0) == 2
    assert await status_store.get(T1, "old") is None
    assert await status_store.get(T2, "old") is None
    assert await status_store.get(T1, "edge") == stored(record("edge", T1, created_at=30.0))
    assert await status_store.get(T1, "new") == stored(record("new", T1, created_at=40.0))
    assert await status_store.purge(30.0) == 0
    assert await status_store.purge(1e9) == 2


async def test_get_returns_a_copy(status_store: StatusStore) -> None:
    await status_store.create([record()])
    copy = await status_store.get(T1, "n1")
    assert copy is not None
    copy.recipients["alice"].state = State.ACKED
    copy.recipients["alice"].attempts = 7
    copy.recipients["mallory"] = RecipientRecord("mallory", State.QUEUED, 1.0)
    copy.expires_at = 0.0
    assert await status_store.get(T1, "n1") == stored(record())


async def test_mark_read_sets_read_at_once_per_recipient(status_store: StatusStore) -> None:
    await status_store.create([record("n1")])
    await status_store.create([record("n2")])
    assert await status_store.mark_read(T1, "alice", ["n1", "n2", "n1", "missing"], 200.0) == 2
    assert await status_store.mark_read(T1, "alice", ["n1"], 300.0) == 0
    assert await status_store.mark_read(T2, "alice", ["n1"], 300.0) == 0
    found = await status_store.get(T1, "n1")
    assert found is not None
    assert found.recipients["alice"].read_at == 200.0
    assert found.recipients["bob"].read_at == 0.0


# -- marks: first writes and acks of entries of users' own logs (status.Mark) ------------------


def sent(notification_id: str, cursor: int, users: tuple[str, ...] = ("alice", "bob")) -> NewRecord:
    """A notification whose entry is at `cursor` in each user's own log."""
    return record(notification_id, users=users)._replace(cursors=(cursor,) * len(users))


def written(user: str, entries: list[tuple[int, str]], at: float) -> Mark:
    return Mark(user, user_log(user), State.DELIVERED, entries, at)


def acked(user: str, entries: list[tuple[int, str]], at: float) -> Mark:
    return Mark(user, user_log(user), State.ACKED, entries, at)


async def test_a_first_write_delivers_and_a_replay_changes_nothing(
    status_store: StatusStore,
) -> None:
    await status_store.create([sent("n1", 1)])
    await status_store.record(T1, [written("alice", [(1, "n1")], 110.0)])
    alice = await recipient(status_store, "alice")
    expected = RecipientRecord(
        "alice", State.DELIVERED, 110.0, queued_at=100.0, delivered_at=110.0, attempts=1
    )
    assert alice == expected
    # The same entry written to another session of alice (a second device, a reconnect).
    await status_store.record(T1, [written("alice", [(1, "n1")], 120.0)])
    assert await recipient(status_store, "alice") == expected
    assert await recipient(status_store, "bob") == stored(record()).recipients["bob"]


async def test_marks_follow_a_life_with_redeliveries_a_failure_and_an_ack(
    status_store: StatusStore,
) -> None:
    await status_store.create([sent("n1", 1)])
    await status_store.record(T1, [written("alice", [(1, "n1")], 110.0)])
    # Redelivered by the ack timer, then FAILED after its attempts.
    await status_store.apply(T1, [Transition("n1", "alice", State.DELIVERED)], 120.0)
    await status_store.apply(T1, [Transition("n1", "alice", State.FAILED, "no ack")], 130.0)
    failed = await recipient(status_store, "alice")
    assert (failed.state, failed.attempts, failed.reason, failed.updated_at) == (
        State.FAILED,
        2,
        "no ack",
        130.0,
    )
    # The next connect writes it again, and alice acks it.
    await status_store.record(T1, [written("alice", [(1, "n1")], 140.0)])
    again = await recipient(status_store, "alice")
    assert (again.state, again.attempts, again.reason, again.updated_at) == (
        State.DELIVERED,
        3,
        "",
        140.0,
    )
    await status_store.record(T1, [acked("alice", [(1, "n1")], 150.0)])
    # Late: an expiry after the ack changes nothing.
    await status_store.apply(T1, [Transition("n1", "alice", State.EXPIRED, "ttl")], 170.0)
    assert await recipient(status_store, "alice") == RecipientRecord(
        "alice",
        State.ACKED,
        updated_at=150.0,
        queued_at=100.0,
        delivered_at=110.0,
        acked_at=150.0,
        attempts=3,
        reason="",
    )


async def test_an_expiry_before_the_ack_stays(status_store: StatusStore) -> None:
    await status_store.create([sent("n1", 1)])
    await status_store.record(T1, [written("alice", [(1, "n1")], 110.0)])
    await status_store.apply(T1, [Transition("n1", "alice", State.EXPIRED, "ttl")], 120.0)
    await status_store.record(T1, [acked("alice", [(1, "n1")], 130.0)])
    alice = await recipient(status_store, "alice")
    assert (alice.state, alice.reason, alice.updated_at, alice.attempts) == (
        State.EXPIRED,
        "ttl",
        120.0,
        1,
    )


async def test_an_ack_without_a_write_acks(status_store: StatusStore) -> None:
    # Acked up to a cursor from another device before this entry was written to any stream.
    await status_store.create([sent("n1", 4)])
    await status_store.record(T1, [acked("bob", [(4, "n1")], 120.0)])
    bob = await recipient(status_store, "bob")
    assert (bob.state, bob.acked_at, bob.delivered_at, bob.attempts) == (
        State.ACKED,
        120.0,
        0.0,
        0,
    )


async def test_marks_of_many_entries_and_users_land_on_their_own_records(
    status_store: StatusStore,
) -> None:
    await status_store.create([sent(f"n{c}", c) for c in range(1, 7)])
    # One stream message of alice's wrote 1-3 and 5 (4 is of another priority, still waiting);
    # bob's wrote 2.
    await status_store.record(
        T1,
        [
            written("alice", [(1, "n1"), (2, "n2"), (3, "n3"), (5, "n5")], 110.0),
            written("bob", [(2, "n2")], 111.0),
        ],
    )
    await status_store.record(T1, [written("alice", [(4, "n4"), (6, "n6")], 112.0)])
    await status_store.record(T1, [acked("alice", [(1, "n1"), (2, "n2")], 120.0)])
    states = {}
    for c in range(1, 7):
        found = await status_store.get(T1, f"n{c}")
        assert found is not None
        states[c] = (found.recipients["alice"].state, found.recipients["bob"].state)
    d, a, q = State.DELIVERED, State.ACKED, State.QUEUED
    assert states == {1: (a, q), 2: (a, d), 3: (d, q), 4: (d, q), 5: (d, q), 6: (d, q)}
    n4 = await recipient(status_store, "alice", "n4")
    assert n4.delivered_at == 112.0
    # The inbox's view of a page agrees with GetStatus's.
    page = await status_store.recipients(T1, "alice", ["n1", "n3", "n6", "missing"])
    assert {k: (v.state, v.delivered_at) for k, v in page.items()} == {
        "n1": (a, 110.0),
        "n3": (d, 110.0),
        "n6": (d, 112.0),
    }
    # Another tenant's marks under the same user and cursors change nothing here.
    await status_store.record(T2, [acked("bob", [(2, "n2")], 130.0)])
    assert (await recipient(status_store, "bob", "n2")).state is d


async def test_marks_of_channel_logs_add_their_readers(status_store: StatusStore) -> None:
    await status_store.create([record(users=())])
    news = LogKey(CHANNEL, "news")
    await status_store.record(
        T1,
        [
            Mark("carol", news, State.DELIVERED, [(7, "n1")], 110.0),
            Mark("dave", news, State.DELIVERED, [(7, "n1")], 111.0),
        ],
    )
    await status_store.record(T1, [Mark("dave", news, State.ACKED, [(7, "n1")], 120.0)])
    found = await status_store.get(T1, "n1")
    assert found is not None
    assert {u: (r.state, r.attempts) for u, r in found.recipients.items()} == {
        "carol": (State.DELIVERED, 1),
        "dave": (State.ACKED, 1),
    }


async def test_a_page_answers_a_recipient_nothing_happened_to_as_queued(
    status_store: StatusStore,
) -> None:
    await status_store.create([record("n1"), record("n2", users=("bob",))])
    page = await status_store.recipients(T1, "alice", ["n1", "n2"])
    assert page == {"n1": RecipientRecord("alice", State.QUEUED, 100.0, queued_at=100.0)}
    # A read mark on it changes only read_at, for that recipient only.
    assert await status_store.mark_read(T1, "alice", ["n1", "n2"], 150.0) == 1
    found = await status_store.get(T1, "n1")
    assert found is not None
    assert found.recipients == {
        "alice": RecipientRecord("alice", State.QUEUED, 100.0, queued_at=100.0, read_at=150.0),
        "bob": RecipientRecord("bob", State.QUEUED, 100.0, queued_at=100.0),
    }


async def test_mark_read_needs_no_other_change(status_store: StatusStore) -> None:
    await status_store.create([sent("n1", 1)])
    await status_store.record(T1, [written("alice", [(1, "n1")], 110.0)])
    assert await status_store.mark_read(T1, "alice", ["n1"], 200.0) == 1
    assert await status_store.mark_read(T1, "mallory", ["n1"], 200.0) == 0
    alice = await recipient(status_store, "alice")
    assert (alice.state, alice.read_at, alice.delivered_at) == (State.DELIVERED, 200.0, 110.0)
    page = await status_store.recipients(T1, "alice", ["n1"])
    assert page["n1"].read_at == 200.0
    assert await status_store.recipients(T1, "mallory", ["n1"]) == {}


async def test_purge_forgets_marks_with_their_notifications(status_store: StatusStore) -> None:
    await status_store.create([sent("old", 1)._replace(created_at=10.0)])
    await status_store.record(T1, [written("alice", [(1, "old")], 11.0)])
    assert await status_store.purge(50.0) == 1
    # The same id and cursor made again (a restored tenant) starts from QUEUED.
    await status_store.create([sent("old", 1)])
    assert (await recipient(status_store, "alice", "old")).state is State.QUEUED
