"""What only the PostgreSQL log store has to get right: many nodes appending at once, one
transaction per append, and notification rows that go once nothing refers to them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from services.domain import LogKey, NewRecord, channel_log, user_log
from services.postgres import create_pool
from services.stream import log_postgres
from services.stream.log import AppendResult, Entry, LogAppend, NewEntry
from services.stream.log_memory import MemoryLogStore
from services.stream.log_postgres import PostgresLogStore, with_cursors
from services.stream.status_postgres import PostgresStatusStore
from tests.postgres import clean_pool, session_dsn

pytestmark = pytest.mark.asyncio

T1 = "tenant-1"
ALICE, BOB, CAROL = user_log("alice"), user_log("bob"), user_log("carol")


def new(notification_id: str, expires_at: float = 1e12) -> NewEntry:
    return NewEntry(notification_id, 2, 100.0, expires_at, b"\x12\x01x")


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with clean_pool(max_size=8) as pool:
        yield pool


async def live_counts_match(pool: asyncpg.Pool) -> bool:
    """Every log's `live` is the number of entries it holds."""
    wrong = await pool.fetchval(
        "SELECT count(*) FROM herald_logs AS l WHERE l.live <> ("
        " SELECT count(*) FROM herald_log_entries AS e"
        " WHERE e.tenant_id = l.tenant_id AND e.log = l.log)"
    )
    return bool(wrong == 0)


async def test_two_nodes_appending_to_one_log_never_share_a_cursor(pool: asyncpg.Pool) -> None:
    # A second pool is a second node: its appends race ours on the same log row.
    other_node = await create_pool(await session_dsn(), min_size=1, max_size=8)
    try:
        nodes = [PostgresLogStore(pool), PostgresLogStore(other_node)]
        calls = [
            nodes[i % 2].append(T1, [LogAppend(ALICE, [new(f"n{i}-{j}") for j in range(5)], 60)])
            for i in range(40)
        ]
        results = [result for results in await asyncio.gather(*calls) for result in results]
    finally:
        await other_node.close()
    appended = sorted(entry.cursor for result in results for entry in result.entries)
    assert appended == list(range(1, 201))
    for result in results:  # each call's entries are consecutive
        cursors = [entry.cursor for entry in result.entries]
        assert cursors == list(range(cursors[0], cursors[0] + 5))
    # The bound held throughout: what was pushed out and what is left add up, without overlap.
    dropped = {entry.cursor for result in results for entry in result.dropped}
    left = {entry.cursor for entry in await nodes[0].read(T1, ALICE, 0, 1000)}
    assert left == set(range(141, 201))
    assert dropped == set(range(1, 141))
    assert await live_counts_match(pool)


async def test_appends_to_the_same_logs_in_any_order_do_not_deadlock(pool: asyncpg.Pool) -> None:
    store = PostgresLogStore(pool)
    orders = [[ALICE, BOB, CAROL], [CAROL, BOB, ALICE], [BOB, ALICE, CAROL]]
    calls = [
        store.append(T1, [LogAppend(key, [new(f"n{i}")], 1000) for key in orders[i % 3]])
        for i in range(30)
    ]
    await asyncio.gather(*calls)
    heads = await store.heads(T1, [ALICE, BOB, CAROL])
    assert [head.cursor for head in heads] == [30, 30, 30]


async def test_an_append_that_fails_stores_nothing(pool: asyncpg.Pool) -> None:
    status = PostgresStatusStore(pool)
    store = PostgresLogStore(pool, status)
    # PostgreSQL text cannot hold NUL: creating this record fails after the entries went in.
    bad = NewRecord("n1", T1, b"", 100.0, 200.0, ("ali\x00ce",))
    with pytest.raises(asyncpg.PostgresError):
        await store.append(T1, [LogAppend(ALICE, [new("n1")], 10)], [bad])
    assert await store.read(T1, ALICE, 0, 10) == []
    assert [head.cursor for head in await store.heads(T1, [ALICE])] == [0]
    assert await pool.fetchval("SELECT count(*) FROM herald_notifications") == 0
    assert await status.get(T1, "n1") is None


async def test_a_notification_is_stored_once_and_goes_with_its_last_entry(
    pool: asyncpg.Pool,
) -> None:
    store = PostgresLogStore(pool)
    await store.append(T1, [LogAppend(key, [new("n1", 50.0)], 10) for key in (ALICE, BOB)])
    assert await pool.fetchval("SELECT count(*) FROM herald_notifications") == 1
    assert await pool.fetchval("SELECT count(*) FROM herald_log_entries") == 2
    # The bound pushes it out of alice's log: bob's entry still needs it.
    await store.append(T1, [LogAppend(ALICE, [new("n2", 60.0)], 1)])
    assert [entry.notification_id for entry in await store.read(T1, BOB, 0, 10)] == ["n1"]
    swept = await store.drop_expired(55.0, 100)
    assert [(key, [e.notification_id for e in entries]) for _, key, entries in swept] == [
        (BOB, ["n1"])
    ]
    ids = await pool.fetch("SELECT notification_id FROM herald_notifications")
    assert [row[0] for row in ids] == ["n2"]
    assert await live_counts_match(pool)


async def test_an_unknown_log_reports_the_epoch_it_will_get(pool: asyncpg.Pool) -> None:
    store = PostgresLogStore(pool)
    [before] = await store.heads(T1, [ALICE])
    [result] = await store.append(T1, [LogAppend(ALICE, [new("n1")], 10)])
    [after] = await store.heads(T1, [ALICE])
    assert before.cursor == 0
    assert before.epoch == result.epoch == after.epoch != 0


KEYS = [ALICE, BOB]
calls = st.lists(  # calls of one to four appends, keys repeating within a call
    st.lists(
        st.tuples(
            st.sampled_from(range(len(KEYS))),
            st.integers(min_value=0, max_value=4),  # entries
            st.integers(min_value=1, max_value=5),  # bound
        ),
        min_size=1,
        max_size=4,
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None, database=None)
@given(script=calls)
async def test_a_call_appending_to_one_log_twice_matches_the_memory_store(
    script: list[list[tuple[int, int, int]]],
) -> None:
    memory = MemoryLogStore()
    serial = 0
    async with clean_pool() as pool:
        postgres = PostgresLogStore(pool)
        for call in script:
            appends = []
            for key, count, limit in call:
                items = [new(f"n{serial + i}") for i in range(count)]
                serial += count
                appends.append(LogAppend(KEYS[key], items, limit))
            expected = await memory.append(T1, appends)
            got = await postgres.append(T1, appends)
            assert [(r.key, r.entries, r.dropped) for r in got] == [
                (r.key, r.entries, r.dropped) for r in expected
            ]
        for key in KEYS:
            assert await postgres.read(T1, key, 0, 100) == await memory.read(T1, key, 0, 100)
        assert await live_counts_match(pool)


async def test_an_append_is_one_round_trip_and_a_cut_that_failed_is_made_by_the_next(
    pool: asyncpg.Pool,
) -> None:
    """The append commits in one statement; a log it takes past its bound is cut back in a
    second call. When that call fails (PostgreSQL went away between the two), the append still
    succeeded, and the next append to the log cuts it back, oldest first."""
    statements: list[str] = []

    class Watched:
        """The pool, with its calls written down (and the first cut failing)."""

        def __getattr__(self, name: str) -> object:
            return getattr(pool, name)

        async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
            statements.append(query)
            if "herald_drop_to_limit" in query and len(statements) == 2:
                raise ConnectionResetError("PostgreSQL went away")
            return await pool.fetch(query, *args)

    store = PostgresLogStore(Watched())  # type: ignore[arg-type]
    await store.append(T1, [LogAppend(ALICE, [new(f"n{i}") for i in range(3)], 3)])
    statements.clear()
    [first] = await store.append(T1, [LogAppend(ALICE, [new("n3")], 3)])
    assert len(statements) == 2  # the append, then the cut (which failed)
    assert [e.cursor for e in first.entries] == [4]
    assert first.dropped == []
    assert [e.cursor for e in await store.read(T1, ALICE, 0, 10)] == [1, 2, 3, 4]
    [second] = await store.append(T1, [LogAppend(ALICE, [new("n4")], 3)])
    assert [e.cursor for e in second.dropped] == [1, 2]
    assert [e.cursor for e in await store.read(T1, ALICE, 0, 10)] == [3, 4, 5]
    assert await live_counts_match(pool)
    # Within the bound: one statement, nothing else.
    statements.clear()
    await store.append(T1, [LogAppend(BOB, [new("b0")], 3)])
    assert len(statements) == 1


class Watched:
    """A pool whose `fetch` calls are written down, by the statement's first words."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.statements: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.pool, name)

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        for name in ("_APPEND_SINGLES", "_APPEND_ONE", "_APPEND_ONE_KEEPING"):
            if query == getattr(log_postgres, name):
                self.statements.append(name)
        return await self.pool.fetch(query, *args)


def sends(tenant: str, users: list[str], round_: int) -> tuple[list[LogAppend], list[NewRecord]]:
    """One notification to each of `users`, as the dispatcher hands them to the store."""
    appends, records = [], []
    for i, user in enumerate(users):
        notification_id = f"{round_:02d}-{i:02d}"
        item = NewEntry(notification_id, i % 3, 100.0 + i, 1e12 - i, bytes([i]) * 3, f"tp{i}")
        appends.append(LogAppend(user_log(user), [item], 10))
        records.append(NewRecord(notification_id, tenant, b"t%d" % i, 100.0 + i, 1e12 - i, (user,)))
    return appends, records


async def stored_rows(pool: asyncpg.Pool, tenant: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row an append writes for `tenant`, without the tenant, in key order."""
    queries = {
        "logs": "SELECT log, epoch, next_cursor, live FROM herald_logs",
        "notifications": "SELECT notification_id, priority, created_at, expires_at, payload,"
        " trace_context FROM herald_notifications",
        "entries": "SELECT log, cursor, notification_id, expires_at FROM herald_log_entries",
        "status": "SELECT notification_id, target, created_at, expires_at, user_ids, cursors"
        " FROM herald_status",
    }
    return {
        table: [
            tuple(row)
            for row in await pool.fetch(f"{query} WHERE tenant_id = $1 ORDER BY 1, 2", tenant)
        ]
        for table, query in queries.items()
    }


async def test_sends_to_one_user_each_write_what_the_general_statement_writes(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Notifications to one user each go as one row per notification (_APPEND_SINGLES); the
    tables and the answer are what _APPEND_ONE makes of the same call, for new logs and for
    logs that exist (the second round), whatever order the call names the logs in."""
    watched = Watched(pool)
    store = PostgresLogStore(watched, PostgresStatusStore(pool))  # type: ignore[arg-type]
    rounds = [["carol", "alice", "bob"], ["bob", "dave", "alice", "carol"]]
    singles = []
    for round_, users in enumerate(rounds):
        singles.append(await store.append("a", *sends("a", users, round_)))
    assert watched.statements == ["_APPEND_SINGLES", "_APPEND_SINGLES"]
    watched.statements.clear()
    monkeypatch.setattr(log_postgres, "_singles", lambda *_: None)
    general = [await store.append("b", *sends("b", users, i)) for i, users in enumerate(rounds)]
    assert watched.statements == ["_APPEND_ONE", "_APPEND_ONE"]
    assert [[(r.key, r.entries, r.epoch) for r in call] for call in singles] == [
        [(r.key, r.entries, r.epoch) for r in call] for call in general
    ]
    assert [e.cursor for r in singles[1] for e in r.entries] == [2, 1, 2, 2]
    assert await stored_rows(pool, "a") == await stored_rows(pool, "b")
    assert await live_counts_match(pool)


@pytest.mark.parametrize("key", [ALICE, channel_log("news")], ids=["one user", "channel"])
async def test_a_replayed_notification_is_appended_again_and_keeps_what_was_stored(
    pool: asyncpg.Pool, key: LogKey
) -> None:
    """A notification id stored already (a scheduled or outbox send replayed after a lost
    answer) fails the statement tried first, which then stores nothing, and the append is made
    again keeping the stored notification and status record."""
    watched = Watched(pool)
    status = PostgresStatusStore(pool)
    store = PostgresLogStore(watched, status)  # type: ignore[arg-type]
    users = ("alice",) if key.is_user else ()
    first = NewEntry("n1", 2, 100.0, 1e12, b"first")
    await store.append(
        T1, [LogAppend(key, [first], 10)], [NewRecord("n1", T1, b"", 100.0, 1e12, users)]
    )
    watched.statements.clear()
    replay = NewEntry("n1", 2, 200.0, 1e12, b"again")
    [result] = await store.append(
        T1, [LogAppend(key, [replay], 10)], [NewRecord("n1", T1, b"", 200.0, 1e12, users)]
    )
    tried = "_APPEND_SINGLES" if key.is_user else "_APPEND_ONE"
    assert watched.statements == [tried, "_APPEND_ONE_KEEPING"]
    # The failed statement advanced no cursor: the replay is the log's second entry.
    assert [e.cursor for e in result.entries] == [2]
    stored = await store.read(T1, key, 0, 10)
    assert [(e.cursor, e.notification_field) for e in stored] == [(1, b"first"), (2, b"first")]
    record = await status.get(T1, "n1")
    assert record is not None
    assert record.created_at == 100.0
    assert await pool.fetchval("SELECT count(*) FROM herald_notifications") == 1
    assert await live_counts_match(pool)


async def test_records_get_each_users_cursor_and_zero_for_an_entry_pushed_out() -> None:
    def entry(cursor: int, notification_id: str) -> Entry:
        return Entry(cursor, notification_id, 2, 100.0, 1e12, b"")

    records = [
        NewRecord("n1", T1, b"", 100.0, 1e12, ("alice",)),
        NewRecord("n2", T1, b"", 100.0, 1e12, ("alice", "bob", "carol")),
        NewRecord("n3", T1, b"", 100.0, 1e12, ()),  # a channel's: no users of its own
    ]
    results = [
        AppendResult(ALICE, [entry(7, "n1"), entry(8, "n2")]),
        # Bob's bound pushed n2 out at once; Carol's log is not among the results at all.
        AppendResult(BOB, [], dropped=[entry(3, "n2")]),
        AppendResult(channel_log("news"), [entry(4, "n1")]),
    ]
    found = with_cursors(records, results)
    assert [type(r) for r in found] == [NewRecord] * 3
    assert [r.cursors for r in found] == [(7,), (8, 0, 0), ()]
    assert [r._replace(cursors=()) for r in found] == records
