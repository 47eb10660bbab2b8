"""LogStore contract: the invariants stated at the top of services/stream/log.py."""

from __future__ import annotations

import pytest

from services.domain import BROADCAST, LogKey, NewRecord, channel_log, user_log
from services.stream.log import AppendResult, Entry, LogAppend, LogStore, NewEntry
from services.stream.status import StatusStore

pytestmark = pytest.mark.asyncio

T1, T2 = "tenant-1", "tenant-2"
ALICE, BOB = user_log("alice"), user_log("bob")
NEVER = 1e12  # an expiry no test reaches
BIG = 1000  # a bound no test reaches


def new(notification_id: str, expires_at: float = NEVER, priority: int = 2) -> NewEntry:
    return NewEntry(
        notification_id=notification_id,
        priority=priority,
        created_at=100.0,
        expires_at=expires_at,
        notification_field=b"\x12\x00" + notification_id.encode(),
    )


def batch(*ids: str) -> list[NewEntry]:
    return [new(i) for i in ids]


async def append(
    store: LogStore, tenant: str, key: LogKey, items: list[NewEntry], limit: int
) -> AppendResult:
    [result] = await store.append(tenant, [LogAppend(key, items, limit)])
    assert result.key == key
    return result


async def last_cursor(store: LogStore, tenant: str, key: LogKey) -> int:
    [head] = await store.heads(tenant, [key])
    return head.cursor


async def find(store: LogStore, tenant: str, key: LogKey, notification_id: str) -> Entry | None:
    found = await store.find(tenant, [key], notification_id)
    if found is None:
        return None
    assert found[0] == key
    return found[1]


async def sweep(store: LogStore, now: float) -> dict[tuple[str, LogKey], list[Entry]]:
    """Everything expired at `now`, per log, in as many calls as it takes."""
    out: dict[tuple[str, LogKey], list[Entry]] = {}
    while True:
        swept = await store.drop_expired(now, 2)
        for tenant, key, entries in swept:
            out.setdefault((tenant, key), []).extend(entries)
        if sum(len(entries) for _, _, entries in swept) < 2:
            return out


def cursors(entries: list[Entry]) -> list[int]:
    return [e.cursor for e in entries]


def ids(entries: list[Entry]) -> list[str]:
    return [e.notification_id for e in entries]


async def test_an_unknown_log_is_empty(log_store: LogStore) -> None:
    assert await log_store.read(T1, ALICE, 0, 10) == []
    assert await last_cursor(log_store, T1, ALICE) == 0
    assert await find(log_store, T1, ALICE, "n1") is None
    assert (await sweep(log_store, NEVER * 2)).get((T1, ALICE), []) == []


async def test_cursors_start_at_one_and_grow_by_one_per_entry(log_store: LogStore) -> None:
    first = await append(log_store, T1, ALICE, batch("a", "b", "c"), BIG)
    second = await append(log_store, T1, ALICE, batch("d", "e"), BIG)
    third = await append(log_store, T1, ALICE, batch("f"), BIG)
    assert cursors(first.entries) == [1, 2, 3]
    assert cursors(second.entries) == [4, 5]
    assert cursors(third.entries) == [6]
    assert first.dropped == second.dropped == third.dropped == []
    assert await last_cursor(log_store, T1, ALICE) == 6


async def test_entries_keep_what_was_appended(log_store: LogStore) -> None:
    # Any bytes: NULs and high bytes included.
    item = NewEntry(
        "n-1", 3, created_at=12.5, expires_at=99.25, notification_field=bytes(range(256))
    )
    appended = (await append(log_store, T1, ALICE, [item], BIG)).entries
    expected = Entry(1, "n-1", 3, 12.5, 99.25, bytes(range(256)))
    assert appended == [expected]
    assert await log_store.read(T1, ALICE, 0, 10) == [expected]
    assert await find(log_store, T1, ALICE, "n-1") == expected


async def test_read_returns_entries_after_the_cursor_in_order(log_store: LogStore) -> None:
    await append(log_store, T1, ALICE, batch("a", "b", "c", "d", "e"), BIG)
    assert ids(await log_store.read(T1, ALICE, 0, 10)) == ["a", "b", "c", "d", "e"]
    assert cursors(await log_store.read(T1, ALICE, 2, 10)) == [3, 4, 5]
    assert cursors(await log_store.read(T1, ALICE, 4, 10)) == [5]
    assert await log_store.read(T1, ALICE, 5, 10) == []
    assert await log_store.read(T1, ALICE, 50, 10) == []


async def test_ids_name_the_entries_of_a_cursor_range_without_payloads(
    log_store: LogStore,
) -> None:
    await append(log_store, T1, ALICE, batch("a", "b", "c", "d", "e"), 3)  # a, b dropped
    await append(log_store, T1, BOB, batch("x"), BIG)
    assert await log_store.ids(T1, ALICE, 0, 10) == [(3, "c"), (4, "d"), (5, "e")]
    assert await log_store.ids(T1, ALICE, 3, 4) == [(4, "d")]
    assert await log_store.ids(T1, ALICE, 4, 4) == []
    assert await log_store.ids(T1, ALICE, 5, 9) == []
    assert await log_store.ids(T2, ALICE, 0, 10) == []
    assert await log_store.ids(T1, user_log("carol"), 0, 10) == []


async def test_read_returns_at_most_limit_entries(log_store: LogStore) -> None:
    await append(log_store, T1, ALICE, batch("a", "b", "c", "d", "e"), BIG)
    assert cursors(await log_store.read(T1, ALICE, 0, 2)) == [1, 2]
    assert cursors(await log_store.read(T1, ALICE, 2, 2)) == [3, 4]
    assert cursors(await log_store.read(T1, ALICE, 4, 2)) == [5]
    assert await log_store.read(T1, ALICE, 0, 0) == []


async def test_the_bound_drops_the_oldest_and_reports_them(log_store: LogStore) -> None:
    first = await append(log_store, T1, ALICE, batch("a", "b", "c"), 3)
    assert first.dropped == []
    second = await append(log_store, T1, ALICE, batch("d", "e"), 3)
    assert cursors(second.entries) == [4, 5]
    assert second.dropped == first.entries[:2]  # oldest first, exactly as they were
    assert ids(await log_store.read(T1, ALICE, 0, 10)) == ["c", "d", "e"]
    third = await append(log_store, T1, ALICE, batch("f"), 3)
    assert ids(third.dropped) == ["c"]
    assert cursors(await log_store.read(T1, ALICE, 0, 10)) == [4, 5, 6]


async def test_a_batch_larger_than_the_bound_keeps_its_newest(log_store: LogStore) -> None:
    await append(log_store, T1, ALICE, batch("a"), 2)
    result = await append(log_store, T1, ALICE, batch("b", "c", "d", "e"), 2)
    # Every item got a cursor, even those the bound pushed out straight away.
    assert cursors(result.entries) == [2, 3, 4, 5]
    assert cursors(result.dropped) == [1, 2, 3]
    assert ids(await log_store.read(T1, ALICE, 0, 10)) == ["d", "e"]
    assert await last_cursor(log_store, T1, ALICE) == 5


async def test_a_reader_behind_the_bound_sees_a_jump_not_a_reorder(log_store: LogStore) -> None:
    for name in "abcdefg":
        await append(log_store, T1, ALICE, batch(name), 3)
    # A reader that had seen cursor 2 continues at the oldest surviving entry.
    assert cursors(await log_store.read(T1, ALICE, 2, 10)) == [5, 6, 7]
    assert cursors(await log_store.read(T1, ALICE, 5, 10)) == [6, 7]


async def test_cursors_are_never_reused_after_drops(log_store: LogStore) -> None:
    await append(log_store, T1, ALICE, [new("a", 10.0), new("b", 10.0)], 2)
    await append(log_store, T1, ALICE, [new("c", 10.0)], 2)  # the bound drops "a"
    assert cursors((await sweep(log_store, 10.0)).get((T1, ALICE), [])) == [2, 3]
    assert await log_store.read(T1, ALICE, 0, 10) == []
    assert await last_cursor(log_store, T1, ALICE) == 3  # the newest ever appended
    again = await append(log_store, T1, ALICE, batch("d"), 2)
    assert cursors(again.entries) == [4]
    assert cursors(await log_store.read(T1, ALICE, 0, 10)) == [4]


async def test_drop_expired_removes_and_returns_the_expired(log_store: LogStore) -> None:
    items = [new("late", 30.0), new("early", 10.0), new("on-time", 20.0), new("later", 40.0)]
    await append(log_store, T1, ALICE, items, BIG)
    # Expired means expires_at <= now, as everywhere else in Herald.
    expired = (await sweep(log_store, 20.0)).get((T1, ALICE), [])
    assert [(e.cursor, e.notification_id) for e in expired] == [(2, "early"), (3, "on-time")]
    assert ids(await log_store.read(T1, ALICE, 0, 10)) == ["late", "later"]
    assert await find(log_store, T1, ALICE, "early") is None
    assert await find(log_store, T1, ALICE, "on-time") is None
    assert (await sweep(log_store, 20.0)).get((T1, ALICE), []) == []
    assert await last_cursor(log_store, T1, ALICE) == 4
    # A reader that had seen cursor 1 jumps over the removed entries.
    assert cursors(await log_store.read(T1, ALICE, 1, 10)) == [4]
    assert ids((await sweep(log_store, 1e6)).get((T1, ALICE), [])) == ["late", "later"]


async def test_drop_expired_keeps_unexpired_entries(log_store: LogStore) -> None:
    result = await append(log_store, T1, ALICE, [new("a", 50.0), new("b", 60.0)], BIG)
    assert (await sweep(log_store, 49.9)).get((T1, ALICE), []) == []
    assert await log_store.read(T1, ALICE, 0, 10) == result.entries


async def test_find_locates_a_notification_while_it_is_in_the_log(log_store: LogStore) -> None:
    await append(log_store, T1, ALICE, batch("a", "b", "c"), 3)
    found = await find(log_store, T1, ALICE, "b")
    assert found is not None
    assert (found.cursor, found.notification_id) == (2, "b")
    assert await find(log_store, T1, ALICE, "zzz") is None
    await append(log_store, T1, ALICE, batch("d", "e"), 3)  # drops a and b
    assert await find(log_store, T1, ALICE, "a") is None
    assert await find(log_store, T1, ALICE, "b") is None
    found = await find(log_store, T1, ALICE, "e")
    assert found is not None
    assert found.cursor == 5


async def test_tenants_never_see_each_others_logs(log_store: LogStore) -> None:
    await append(log_store, T1, ALICE, [new("t1-a", 10.0), new("t1-b")], BIG)
    await append(log_store, T2, ALICE, batch("t2-a"), BIG)
    # Each tenant's log has its own cursor sequence.
    assert cursors(await log_store.read(T2, ALICE, 0, 10)) == [1]
    assert ids(await log_store.read(T1, ALICE, 0, 10)) == ["t1-a", "t1-b"]
    assert ids(await log_store.read(T2, ALICE, 0, 10)) == ["t2-a"]
    assert await last_cursor(log_store, T1, ALICE) == 2
    assert await last_cursor(log_store, T2, ALICE) == 1
    assert await find(log_store, T2, ALICE, "t1-a") is None
    assert await find(log_store, T1, ALICE, "t2-a") is None
    # The bound and expiry of one tenant's log leave the other's alone.
    assert ids((await append(log_store, T2, ALICE, batch("t2-b"), 1)).dropped) == ["t2-a"]
    assert ids(await log_store.read(T1, ALICE, 0, 10)) == ["t1-a", "t1-b"]
    swept = await sweep(log_store, 10.0)
    assert {key: ids(entries) for key, entries in swept.items()} == {(T1, ALICE): ["t1-a"]}
    assert ids(await log_store.read(T2, ALICE, 0, 10)) == ["t2-b"]


async def test_log_keys_never_see_each_others_entries(log_store: LogStore) -> None:
    keys = [ALICE, BOB, channel_log("news"), BROADCAST]
    for key in keys:
        await append(log_store, T1, key, batch(f"{key}/1", f"{key}/2"), BIG)
    for key in keys:
        assert ids(await log_store.read(T1, key, 0, 10)) == [f"{key}/1", f"{key}/2"]
        assert cursors(await log_store.read(T1, key, 0, 10)) == [1, 2]
        assert await last_cursor(log_store, T1, key) == 2
    for key in keys[1:]:
        assert await find(log_store, T1, key, f"{ALICE}/1") is None
    # The bound of one log drops only that log's entries.
    await append(log_store, T1, ALICE, batch("x", "y"), 1)
    for key in keys[1:]:
        assert cursors(await log_store.read(T1, key, 0, 10)) == [1, 2]


async def test_read_reverse_pages_newest_first(log_store: LogStore) -> None:
    await append(log_store, T1, ALICE, batch("a", "b", "c", "d", "e"), BIG)
    await append(log_store, T1, BOB, batch("x"), BIG)
    newest = await log_store.read_reverse(T1, ALICE, 0, 2)
    assert ids(newest) == ["e", "d"]
    older = await log_store.read_reverse(T1, ALICE, newest[-1].cursor, 2)
    assert ids(older) == ["c", "b"]
    oldest = await log_store.read_reverse(T1, ALICE, older[-1].cursor, 2)
    assert ids(oldest) == ["a"]
    assert await log_store.read_reverse(T1, ALICE, 1, 2) == []
    assert await log_store.read_reverse(T2, ALICE, 0, 10) == []


async def test_read_reverse_skips_what_the_bound_dropped(log_store: LogStore) -> None:
    await append(log_store, T1, ALICE, batch("a", "b", "c", "d"), 2)
    assert ids(await log_store.read_reverse(T1, ALICE, 0, 10)) == ["d", "c"]


async def test_a_sweep_covers_every_log_of_every_tenant(log_store: LogStore) -> None:
    await append(log_store, T1, ALICE, [new("a", 10.0), new("b", 30.0)], BIG)
    await append(log_store, T1, BOB, [new("x", 20.0)], BIG)
    await append(log_store, T2, ALICE, [new("y", NEVER)], BIG)
    assert await log_store.drop_expired(5.0, 100) == []
    swept = await sweep(log_store, 25.0)
    assert {k: ids(v) for k, v in swept.items()} == {(T1, ALICE): ["a"], (T1, BOB): ["x"]}
    # What is left is still indexed, also for a log that was due on an entry the bound dropped.
    await append(log_store, T2, BOB, [new("p", 40.0), new("q", 50.0), new("r", 60.0)], 2)
    assert {k: ids(v) for k, v in (await sweep(log_store, 45.0)).items()} == {(T1, ALICE): ["b"]}
    assert {k: ids(v) for k, v in (await sweep(log_store, 55.0)).items()} == {(T2, BOB): ["q"]}
    assert await sweep(log_store, 55.0) == {}


async def test_one_append_reaches_many_logs(log_store: LogStore) -> None:
    await append(log_store, T1, BOB, batch("old"), BIG)
    results = await log_store.append(
        T1,
        [
            LogAppend(ALICE, batch("a", "b"), BIG),
            LogAppend(BOB, batch("c"), 1),
            LogAppend(BROADCAST, batch("d"), BIG),
        ],
    )
    assert [r.key for r in results] == [ALICE, BOB, BROADCAST]
    assert [cursors(r.entries) for r in results] == [[1, 2], [2], [1]]
    assert [ids(r.dropped) for r in results] == [[], ["old"], []]
    assert ids(await log_store.read(T1, BOB, 0, 10)) == ["c"]
    assert await log_store.append(T1, []) == []


async def test_heads_answer_many_logs_with_one_epoch(log_store: LogStore) -> None:
    [result] = await log_store.append(T1, [LogAppend(ALICE, batch("a", "b"), BIG)])
    heads = await log_store.heads(T1, [ALICE, BOB, ALICE])
    assert [h.cursor for h in heads] == [2, 0, 2]
    # The epoch names this generation of the log: stable, never 0, the one append reported.
    assert heads[0].epoch == heads[2].epoch == result.epoch != 0
    [again] = await log_store.heads(T1, [ALICE])
    assert again.epoch == result.epoch
    assert await log_store.heads(T1, []) == []


async def test_find_looks_in_the_logs_in_the_order_given(log_store: LogStore) -> None:
    await append(log_store, T1, BROADCAST, batch("x"), BIG)
    await append(log_store, T1, channel_log("news"), batch("y", "x"), BIG)
    found = await log_store.find(T1, [ALICE, channel_log("news"), BROADCAST], "x")
    assert found is not None
    assert (found[0], found[1].cursor) == (channel_log("news"), 2)
    found = await log_store.find(T1, [BROADCAST, channel_log("news")], "x")
    assert found is not None
    assert (found[0], found[1].cursor) == (BROADCAST, 1)
    assert await log_store.find(T1, [ALICE], "x") is None
    assert await log_store.find(T1, [], "x") is None


async def test_notifications_are_read_from_the_users_and_the_shared_logs(
    log_store: LogStore,
) -> None:
    await append(log_store, T1, ALICE, [new("a"), new("short", 10.0)], BIG)
    await append(log_store, T1, channel_log("news"), batch("c"), BIG)
    await append(log_store, T1, BROADCAST, batch("d"), BIG)
    await append(log_store, T2, BOB, batch("t2"), BIG)
    wanted = [("alice", "a"), ("bob", "c"), ("bob", "d"), ("alice", "short")]
    found = await log_store.notifications(T1, [*wanted, ("bob", "t2"), ("bob", "zzz")])
    assert found == {i: new(i).notification_field for _, i in wanted}
    both = [("bob", "t2"), ("alice", "a")]
    assert await log_store.notifications(T2, both) == {"t2": new("t2").notification_field}
    assert await log_store.notifications(T1, []) == {}
    await sweep(log_store, 11.0)
    found = await log_store.notifications(T1, [("alice", "short"), ("alice", "a")])
    assert found == {"a": new("a").notification_field}


async def test_append_creates_the_status_records_in_the_same_step(
    paired_stores: tuple[LogStore, StatusStore],
) -> None:
    logs, status = paired_stores
    record = NewRecord("n1", T1, b"\x0a\x05alice", 100.0, 200.0, ("alice", "bob"))
    results = await logs.append(
        T1,
        [LogAppend(ALICE, [new("n1")], BIG), LogAppend(BOB, [new("n1")], BIG)],
        [record],
    )
    assert [cursors(r.entries) for r in results] == [[1], [1]]
    stored = await status.get(T1, "n1")
    assert stored is not None
    assert (stored.created_at, sorted(stored.recipients)) == (100.0, ["alice", "bob"])
    assert await status.get(T2, "n1") is None


async def test_the_trace_context_stays_with_the_entry_wherever_it_is_read(
    log_store: LogStore,
) -> None:
    traced = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    items = [new("untraced", expires_at=50.0), new("traced", expires_at=50.0)]
    items[1].trace_context = traced
    appended = await append(log_store, T1, ALICE, items, BIG)
    assert [e.trace_context for e in appended.entries] == ["", traced]
    assert [e.trace_context for e in await log_store.read(T1, ALICE, 0, 10)] == ["", traced]
    assert [e.trace_context for e in await log_store.read_reverse(T1, ALICE, 0, 10)] == [
        traced,
        "",
    ]
    found = await find(log_store, T1, ALICE, "traced")
    assert found is not None
    assert found.trace_context == traced
    # Pushed out by the bound, and swept at expiry: still the entry's own.
    [bumped] = await log_store.append(T1, [LogAppend(ALICE, [new("third")], 1)])
    assert [e.trace_context for e in bumped.dropped] == ["", traced]
    await append(log_store, T1, BOB, items, BIG)
    swept = await sweep(log_store, 60.0)
    assert [e.trace_context for e in swept[(T1, BOB)]] == ["", traced]


async def test_size_counts_what_the_log_holds(log_store: LogStore) -> None:
    assert await log_store.size(T1, ALICE) == 0
    await append(log_store, T1, ALICE, [new("a", 10.0), new("b"), new("c")], 3)
    assert await log_store.size(T1, ALICE) == 3
    await append(log_store, T1, ALICE, batch("d"), 3)  # the bound drops a
    assert await log_store.size(T1, ALICE) == 3
    await append(log_store, T1, BOB, [new("e", 10.0)], BIG)
    await sweep(log_store, 20.0)
    assert (await log_store.size(T1, ALICE), await log_store.size(T1, BOB)) == (3, 0)
    assert await log_store.size(T2, ALICE) == 0


async def test_locate_names_the_cursors_of_the_notifications_the_log_holds(
    log_store: LogStore,
) -> None:
    await append(log_store, T1, ALICE, [new("a"), new("b", 50.0), new("c")], 3)
    await append(log_store, T1, BOB, batch("x"), BIG)
    assert await log_store.locate(T1, ALICE, ["b", "c", "x", "zzz"]) == {
        "b": (2, 50.0),
        "c": (3, NEVER),
    }
    await append(log_store, T1, ALICE, batch("d"), 3)  # drops a
    assert await log_store.locate(T1, ALICE, ["a", "d"]) == {"d": (4, NEVER)}
    assert await log_store.locate(T2, ALICE, ["b"]) == {}
    assert await log_store.locate(T1, ALICE, []) == {}
