"""PostgreSQL stores shared by many nodes: what two nodes doing the same thing at once get."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.domain import (
    LogKey,
    NewRecord,
    State,
    TemplateAction,
    TemplateRecord,
    TemplateText,
    channel_log,
    user_log,
)
from services.ingest.idempotency import Claim
from services.ingest.idempotency_postgres import PostgresIdempotencyStore
from services.postgres import create_pool
from services.registry.templates_postgres import PostgresTemplateStore
from services.stream import acks_postgres
from services.stream.acks import AckState
from services.stream.acks_postgres import PostgresAckStore
from services.stream.status import Mark
from services.stream.status_postgres import PURGE_LOCK, PostgresStatusStore
from tests.postgres import clean_pool, session_dsn

pytestmark = pytest.mark.asyncio

T1 = "tenant-1"


@pytest_asyncio.fixture
async def nodes() -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    """Two pools on one database: two nodes."""
    async with clean_pool(max_size=8) as first:
        second = await create_pool(await session_dsn(), min_size=1, max_size=8)
        try:
            yield first, second
        finally:
            await second.close()


async def test_concurrent_acks_of_one_log_each_count_once(
    nodes: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    stores = [PostgresAckStore(pool) for pool in nodes]
    inbox = user_log("alice")
    # Overlapping acks from both nodes, and watermark raises among them.
    calls = [stores[i % 2].ack(T1, "alice", inbox, [i, i + 1, 100 - i]) for i in range(1, 40)]
    raises = [stores[i % 2].ack_up_to(T1, "alice", inbox, i) for i in (10, 30)]
    results = await asyncio.gather(*calls, *raises)
    fresh = [cursor for result in results[: len(calls)] for cursor in result]
    # No cursor was news to two calls (those below a raised watermark may be news to none).
    assert len(fresh) == len(set(fresh))
    [state] = await stores[0].get(T1, "alice", [inbox])
    acked = {c for c in range(1, 120) if state.is_acked(c)}
    assert acked == set(range(1, 41)) | set(range(61, 100))


class _CountingPool:
    """A pool that counts the statements it is given (and runs them)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.fetches = 0
        self.fetchrows = 0
        self.queries: list[str] = []
        self.sent = asyncio.Event()  # a statement is in flight

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        self.fetches += 1
        self.queries.append(query)
        return await self._pool.fetch(query, *args)

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        self.fetchrows += 1
        self.sent.set()
        return await self._pool.fetchrow(query, *args)


async def test_acks_up_to_that_arrive_together_share_one_statement(
    nodes: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    pool = _CountingPool(nodes[0])
    store = PostgresAckStore(pool)  # type: ignore[arg-type]  # fetch is all it uses here
    await PostgresAckStore(nodes[0]).ack(T1, "u3", user_log("u3"), [9])
    # Ten users' inboxes, u0's three times (up, down, up: each answered with the state the
    # one before it left), and a channel log.
    calls = [(f"u{i}", user_log(f"u{i}"), 2 + i) for i in range(10)]
    calls += [("u0", user_log("u0"), 1), ("u0", user_log("u0"), 5), ("u3", channel_log("c"), 4)]
    answers = await asyncio.gather(*(store.ack_up_to(T1, u, key, c) for u, key, c in calls))
    assert pool.fetches == 1
    model: dict[tuple[str, LogKey], AckState] = {("u3", user_log("u3")): AckState(0, {9})}
    for (user, key, cursor), answer in zip(calls, answers, strict=True):
        state = model.setdefault((user, key), AckState())
        assert answer == state.copy()
        state.raise_to(cursor)
    for (user, key), state in model.items():
        assert await store.get(T1, user, [key]) == [state]
    assert model["u0", user_log("u0")] == AckState(5, set())
    assert model["u3", user_log("u3")] == AckState(5, {9})


# A row before the batch: None (no acks yet) or the cursors acked one by one (`ack`), which
# leave a watermark and cursors above it; and the cursor the batch acks it up to.
_rows = st.lists(
    st.tuples(
        st.none() | st.lists(st.integers(min_value=1, max_value=8), max_size=5),
        st.integers(min_value=0, max_value=9),
    ),
    min_size=3,
    max_size=8,
)


@settings(max_examples=40, deadline=None, database=None)
@given(rows=_rows)
# Cursors acked above the watermark that the raise reaches, absorbs in part, or leaves alone.
@example(rows=[([5, 6, 9], 4), ([3], 1), (None, 7), ([2, 3], 0)])
async def test_a_batch_of_distinct_rows_acks_each_as_ack_state_does(
    rows: list[tuple[list[int] | None, int]],
) -> None:
    """The batch that names each row once goes as one set-based statement (no PL/pgSQL loop):
    each answer is the state from before and each row ends as AckState.raise_to leaves it,
    for rows with cursors acked above their watermark, rows the batch cannot raise, and rows
    it makes."""
    async with clean_pool() as plain:
        pool = _CountingPool(plain)
        store = PostgresAckStore(pool)  # type: ignore[arg-type]  # fetch/fetchrow are all it uses
        model: list[AckState] = []
        for n, (before, _) in enumerate(rows):
            state = AckState()
            if before is not None:
                await PostgresAckStore(plain).ack(T1, f"u{n}", user_log(f"u{n}"), before)
                for cursor in before:
                    state.add(cursor)
            model.append(state)
        answers = await asyncio.gather(
            *(
                store.ack_up_to(T1, f"u{n}", user_log(f"u{n}"), cursor)
                for n, (_, cursor) in enumerate(rows)
            )
        )
        # All of them wait before the sender runs: one batch, one set-based statement.
        assert pool.queries == [acks_postgres._ACK_UP_TO_SET]
        assert pool.fetchrows == 0
        for n, ((_, cursor), answer) in enumerate(zip(rows, answers, strict=True)):
            assert answer == model[n]
            model[n].raise_to(cursor)
            assert await store.get(T1, f"u{n}", [user_log(f"u{n}")]) == [model[n]]


class _StuckPool:
    """A pool whose statements never come back."""

    def __init__(self) -> None:
        self.sent = asyncio.Event()

    async def fetchrow(self, query: str, *args: object) -> None:
        self.sent.set()
        await asyncio.Event().wait()


async def _one_in_flight(
    pool: _CountingPool | _StuckPool,
) -> tuple[PostgresAckStore, asyncio.Future[AckState]]:
    """A store on `pool`, and alice's ack up to 2, its statement in flight."""
    store = PostgresAckStore(pool)  # type: ignore[arg-type]  # the fetch calls are all it uses
    first = asyncio.ensure_future(store.ack_up_to(T1, "alice", user_log("alice"), 2))
    await pool.sent.wait()
    return store, first


async def test_a_lone_ack_goes_at_once_and_those_behind_it_go_together(
    nodes: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    pool = _CountingPool(nodes[0])
    store, first = await _one_in_flight(pool)
    behind = [store.ack_up_to(T1, f"u{i}", user_log(f"u{i}"), i) for i in range(1, 11)]
    assert await asyncio.gather(first, *behind) == [AckState()] * 11
    assert (pool.fetchrows, pool.fetches) == (1, 1)
    assert await store.get(T1, "u7", [user_log("u7")]) == [AckState(7, set())]


async def test_batches_of_two_nodes_over_the_same_rows_never_deadlock(
    nodes: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """Each node's batch names the same rows in the opposite order: unsorted, the two
    statements would lock them crosswise and PostgreSQL would abort one."""
    stores = [PostgresAckStore(pool) for pool in nodes]
    rows = [
        (f"u{i:03}", key) for i in range(400) for key in (user_log(f"u{i:03}"), channel_log("c"))
    ]
    forward = [stores[0].ack_up_to(T1, u, key, 10 + n) for n, (u, key) in enumerate(rows)]
    backward = [stores[1].ack_up_to(T1, u, key, 5) for u, key in reversed(rows)]
    await asyncio.gather(*forward, *backward)
    for n, (user, key) in enumerate(rows):
        assert await stores[0].get(T1, user, [key]) == [AckState(10 + n, set())]


async def test_acks_waiting_when_their_sender_is_cancelled_end_cancelled() -> None:
    """What the event loop does to the sender at exit: no ack is left waiting forever."""
    store, in_flight = await _one_in_flight(_StuckPool())
    waiting = asyncio.ensure_future(store.ack_up_to(T1, "bob", user_log("bob"), 1))
    await asyncio.sleep(0)
    sender = store._sender  # the task the loop cancels at exit
    assert sender is not None
    sender.cancel()
    results = await asyncio.gather(in_flight, waiting, return_exceptions=True)
    assert [type(r) for r in results] == [asyncio.CancelledError] * 2


async def test_an_ack_whose_caller_gave_up_while_it_waited_is_not_sent(
    nodes: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    pool = _CountingPool(nodes[0])
    store, first = await _one_in_flight(pool)
    given_up = asyncio.ensure_future(store.ack_up_to(T1, "bob", user_log("bob"), 4))
    await asyncio.sleep(0)  # it waits behind the first
    given_up.cancel()
    assert await first == AckState()
    await store.aclose()
    assert (pool.fetchrows, pool.fetches) == (1, 0)
    assert await store.get(T1, "bob", [user_log("bob")]) == [AckState()]


async def test_a_failed_batch_fails_each_of_its_acks() -> None:
    async with clean_pool() as pool:
        store = PostgresAckStore(pool)
        await pool.close()
        results = await asyncio.gather(
            store.ack_up_to(T1, "alice", user_log("alice"), 3),
            store.ack_up_to(T1, "bob", user_log("bob"), 4),
            return_exceptions=True,
        )
    assert [type(r) for r in results] == [asyncpg.InterfaceError] * 2


async def test_of_two_nodes_claiming_one_key_exactly_one_wins(
    nodes: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    stores = [PostgresIdempotencyStore(pool) for pool in nodes]
    calls = [
        stores[i % 2].reserve(T1, [Claim("k", f"n{i}"), Claim(f"own-{i}", f"n{i}")], 1000.0, 60.0)
        for i in range(20)
    ]
    results = await asyncio.gather(*calls)
    winners = [i for i, (held, _) in enumerate(results) if held is None]
    assert len(winners) == 1
    assert all(held == f"n{winners[0]}" for held, _ in results if held is not None)
    assert all(own is None for _, own in results)


async def test_a_claim_clears_expired_claims_of_its_tenant(
    nodes: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    pool = nodes[0]
    store = PostgresIdempotencyStore(pool)
    await store.reserve(T1, [Claim(f"old-{i}", f"n{i}") for i in range(10)], 1000.0, 60.0)
    await store.reserve("tenant-2", [Claim("theirs", "n")], 1000.0, 60.0)
    # Later, once they all expired: each new claim takes up to two expired ones with it.
    await store.reserve(T1, [Claim(f"new-{i}", f"m{i}") for i in range(5)], 5000.0, 60.0)
    keys = await pool.fetch("SELECT tenant_id, key FROM herald_idempotency ORDER BY key")
    assert sorted(row["key"] for row in keys if row["key"].startswith("new-")) == [
        f"new-{i}" for i in range(5)
    ]
    assert len(keys) == 5 + 1  # the new claims, and tenant-2's, which only its claims clear


async def test_a_template_comes_back_as_it_was_put(
    nodes: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    store = PostgresTemplateStore(nodes[0])
    actions = (TemplateAction("open", "Öffnen", "https://x.test/a?b=1"), TemplateAction("", "", ""))
    template = TemplateRecord(
        "welcome",
        0,
        "de",
        {
            "de": TemplateText(
                "Hallo {{name}}", 'Zeile 1\nZeile "2"', "https://x.test/i.png", actions
            ),
            "en": TemplateText(title="Hi {{name}}"),
        },
        123.25,
    )
    stored = await store.put(T1, template)
    assert stored == dataclasses.replace(template, version=1)
    assert await store.get(T1, "welcome") == stored
    assert await store.list(T1) == [stored]


async def test_concurrent_puts_of_one_template_get_their_own_versions(
    nodes: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    stores = [PostgresTemplateStore(pool) for pool in nodes]
    template = TemplateRecord("welcome", 0, "en", {"en": TemplateText(title="Hi")}, 1.0)
    puts = await asyncio.gather(*(stores[i % 2].put(T1, template) for i in range(4)))
    assert sorted(put.version for put in puts) == [1, 2, 3, 4]


async def test_a_recipient_left_without_its_notification_is_never_seen(
    nodes: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    pool = nodes[0]
    store = PostgresStatusStore(pool)
    # What a purge racing an apply can leave behind: a recipient row, its notification gone.
    await pool.execute(
        "INSERT INTO herald_recipients (tenant_id, notification_id, user_id, state, updated_at)"
        " VALUES ($1, 'gone', 'alice', 2, 1.0)",
        T1,
    )
    assert await store.recipients(T1, "alice", ["gone"]) == {}
    assert await store.mark_read(T1, "alice", ["gone"], 5.0) == 0
    assert await store.get(T1, "gone") is None


async def test_a_node_finding_another_purging_leaves_it_to_that_one(
    nodes: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    first, second = (PostgresStatusStore(pool) for pool in nodes)
    await first.create([NewRecord(f"n{i}", T1, b"", 10.0, 20.0, ("alice",)) for i in range(3)])
    async with nodes[1].acquire() as other, other.transaction():
        # The second node is in the middle of a purge batch.
        await other.execute("SELECT pg_advisory_xact_lock($1)", PURGE_LOCK)
        assert await first.purge(100.0) == 0
        assert await first.get(T1, "n0") is not None
    assert await first.purge(100.0) == 3
    assert await second.get(T1, "n0") is None


async def test_status_marks_leave_the_connection_they_ran_on_synchronous() -> None:
    # One connection, so the append after the marks runs where they ran.
    async with clean_pool(max_size=1) as pool:
        store = PostgresStatusStore(pool)
        await store.create([NewRecord("n1", T1, b"", 10.0, 20.0, ("alice",), (1,))])
        await store.record(
            T1, [Mark("alice", user_log("alice"), State.DELIVERED, [(1, "n1")], 15.0)]
        )
        record = await store.get(T1, "n1")
        assert record is not None
        assert record.recipients["alice"].state is State.DELIVERED
        # set_config(..., true) held for the marks' own statement: what the pool runs next
        # (a log append, an ack) still waits for its WAL flush.
        assert await pool.fetchval("SHOW synchronous_commit") == "on"
