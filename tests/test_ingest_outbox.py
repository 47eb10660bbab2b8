"""Ingestion from the transactional outbox, on the real PostgreSQL (and Redis, the production
profile): a row exists exactly when the backend's transaction commits, reaches the subscribed
user through the real protocol once, also with two ingest nodes draining one table, and also
when the NOTIFY that should have woken them never came."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from google.protobuf import json_format
from pydantic import SecretStr

from services.config import BackendSettings, OutboxSettings, RateLimitSettings
from services.ingest.source_outbox import OutboxSource
from tests.harness import Herald, make_config, start_herald, to_user
from tests.ingest_support import inbox_titles, source_count, until
from tests.postgres import scratch_database
from tests.redis_support import REDIS_URL, delete_prefix, new_prefix, redis_client, require_redis
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

Start = Callable[..., Awaitable[Herald]]


@pytest_asyncio.fixture
async def outbox_db() -> AsyncIterator[tuple[str, str]]:
    """A fresh database (Herald migrates it) and a Redis key prefix, both the test's own."""
    await require_redis()
    prefix = new_prefix()
    async with scratch_database() as dsn:
        try:
            yield dsn, prefix
        finally:
            async with redis_client() as client:
                await delete_prefix(client, prefix)


@pytest_asyncio.fixture
async def start(outbox_db: tuple[str, str], tmp_path: Path) -> AsyncIterator[Start]:
    """Starts production-profile nodes of one cluster draining the outbox:
    `await start(poll_interval_s=...)`."""
    dsn, prefix = outbox_db
    nodes: list[Herald] = []
    base = make_config(tmp_path)

    async def start_one(rate_limit: RateLimitSettings | None = None, **outbox: object) -> Herald:
        settings = {"enabled": True, "poll_interval_s": 30.0, "retry_delay_s": 0.05, **outbox}
        config = replace(
            base,
            server=base.server.model_copy(update={"node_id": f"node-{len(nodes)}"}),
            rate_limit=rate_limit or base.rate_limit,
            backends=BackendSettings(
                postgres_dsn=SecretStr(dsn), redis_url=SecretStr(REDIS_URL), redis_prefix=prefix
            ),
            outbox=OutboxSettings(**settings),  # type: ignore[arg-type]
        )
        node = await start_herald("up", config)
        nodes.append(node)
        return node

    try:
        yield start_one
    finally:
        for node in nodes:
            await node.stop()


def as_json(user: str, title: str) -> str:
    return json_format.MessageToJson(to_user(user, title), indent=None)


INSERT_JSON = "INSERT INTO herald_outbox (tenant_id, payload_json) VALUES ($1, $2::jsonb)"


async def rows(connection: asyncpg.Connection) -> list[asyncpg.Record]:
    return await connection.fetch(
        "SELECT id, attempts, last_error, dead_at FROM herald_outbox ORDER BY id"
    )


def source_of(herald: Herald) -> OutboxSource:
    [source] = herald.node("up").sources
    assert isinstance(source, OutboxSource)
    return source


async def test_committed_rows_are_delivered_and_rolled_back_ones_never(
    start: Start, outbox_db: tuple[str, str]
) -> None:
    herald = await start()
    stream = Stream(herald.user("alice"))
    await stream.start()
    backend = await asyncpg.connect(outbox_db[0])
    try:
        # The backend's own transaction: its business change and the notification together.
        async with backend.transaction():
            await backend.execute("CREATE TABLE orders (id int PRIMARY KEY)")
            await backend.execute("INSERT INTO orders VALUES (1)")
            await backend.execute(INSERT_JSON, "acme", as_json("alice", "order 1 placed"))
        rolled_back = backend.transaction()
        await rolled_back.start()
        await backend.execute("INSERT INTO orders VALUES (2)")
        await backend.execute(INSERT_JSON, "acme", as_json("alice", "order 2 placed"))
        await rolled_back.rollback()  # the business change failed
        # Protobuf, and two rows with one idempotency key: one notification.
        async with backend.transaction():
            await backend.execute(
                "INSERT INTO herald_outbox (tenant_id, idempotency_key, payload) VALUES"
                " ($1, 'ship-3', $2), ($1, 'ship-3', $2)",
                "acme",
                to_user("alice", "order 3 shipped").SerializeToString(),
            )
        deliveries = await stream.deliveries(2, within=10)
        titles = [d.notification.content.title for d in deliveries]
        assert titles == ["order 1 placed", "order 3 shipped"]
        await until(lambda: _empty(backend))
        assert await inbox_titles(herald.user("alice")) == titles
        assert source_of(herald).accepted == 3  # the duplicate counts as accepted, once stored
        stream.cancel()
    finally:
        await backend.close()


async def _empty(connection: asyncpg.Connection) -> bool:
    return not await rows(connection)


async def test_an_invalid_row_is_dead_lettered_with_the_reason(
    start: Start, outbox_db: tuple[str, str]
) -> None:
    herald = await start()
    backend = await asyncpg.connect(outbox_db[0])
    try:
        dead = source_count("outbox", "dead_lettered")
        await backend.execute(INSERT_JSON, "acme", '{"content": {"title": "to nobody"}}')
        await backend.execute(INSERT_JSON, "acme", '{"target": {"userId": "bob"}, "bogus": 1}')
        await backend.execute(
            "INSERT INTO herald_outbox (tenant_id, payload) VALUES ('acme', '\\xfffe00')"
        )
        await backend.execute(INSERT_JSON, "acme", as_json("bob", "fine"))

        async def three_dead() -> bool:
            found = await rows(backend)
            return len(found) == 3 and all(r["dead_at"] is not None for r in found)

        await until(three_dead)
        found = await rows(backend)
        assert [r["attempts"] for r in found] == [1, 1, 1]
        errors = [r["last_error"] for r in found]
        assert all(e.startswith("INVALID_ARGUMENT: ") for e in errors), errors
        assert "target" in errors[0]
        assert "JSON" in errors[1]
        assert "protobuf" in errors[2]
        assert source_count("outbox", "dead_lettered") - dead == 3
        assert await inbox_titles(herald.user("bob")) == ["fine"]
    finally:
        await backend.close()


async def test_two_ingest_nodes_on_one_outbox_never_send_a_row_twice(
    start: Start, outbox_db: tuple[str, str]
) -> None:
    first = await start(batch=10)
    second = await start(batch=10)
    stream = Stream(first.user("carol"))
    await stream.start()
    titles = [f"row {i}" for i in range(400)]
    backend = await asyncpg.connect(outbox_db[0])
    try:
        async with backend.transaction():
            await backend.executemany(
                INSERT_JSON, [("acme", as_json("carol", title)) for title in titles]
            )
        deliveries = await stream.deliveries(len(titles), within=40)
        assert sorted(d.notification.content.title for d in deliveries) == sorted(titles)
        await until(lambda: _empty(backend))
        # Each row once in the user's log: a row taken by both nodes would be there twice.
        assert sorted(await inbox_titles(first.user("carol"))) == sorted(titles)
        shares = [source_of(first).accepted, source_of(second).accepted]
        assert sum(shares) == len(titles)
        assert min(shares) > 0, shares  # both took batches: SKIP LOCKED, not one at a time
        stream.cancel()
    finally:
        await backend.close()


async def test_rows_whose_notify_was_missed_are_delivered_by_the_poll(
    start: Start, outbox_db: tuple[str, str]
) -> None:
    herald = await start(poll_interval_s=0.5)
    stream = Stream(herald.user("dave"))
    await stream.start()
    backend = await asyncpg.connect(outbox_db[0])
    try:
        async with backend.transaction():
            # Triggers do not fire for a replica session: no NOTIFY is ever sent.
            await backend.execute("SET LOCAL session_replication_role = replica")
            await backend.execute(INSERT_JSON, "acme", as_json("dave", "unannounced"))
        [delivery] = await stream.deliveries(1, within=10)
        assert delivery.notification.content.title == "unannounced"
        stream.cancel()
    finally:
        await backend.close()


async def test_a_notify_wakes_the_nodes_long_before_the_poll(
    start: Start, outbox_db: tuple[str, str]
) -> None:
    herald = await start(poll_interval_s=60.0)
    stream = Stream(herald.user("erin"))
    await stream.start()
    backend = await asyncpg.connect(outbox_db[0])
    try:
        await asyncio.sleep(0.2)  # the node's first pass (at start) is over
        await backend.execute(INSERT_JSON, "acme", as_json("erin", "announced"))
        [delivery] = await stream.deliveries(1, within=10)
        assert delivery.notification.content.title == "announced"
        stream.cancel()
    finally:
        await backend.close()


async def test_when_herald_pushes_back_rows_stay_untouched_and_are_delivered_later(
    start: Start, outbox_db: tuple[str, str]
) -> None:
    limits = RateLimitSettings(tenant_send_rate=2, tenant_send_burst=1)
    herald = await start(rate_limit=limits)
    stream = Stream(herald.user("fred"))
    await stream.start()
    backend = await asyncpg.connect(outbox_db[0])
    try:
        pushback = source_count("outbox", "pushback")
        titles = [f"n{i}" for i in range(4)]
        async with backend.transaction():
            await backend.executemany(
                INSERT_JSON, [("acme", as_json("fred", title)) for title in titles]
            )
        first = await stream.deliveries(1, within=10)
        # Refused for now: still in the table, no attempt counted, no error.
        waiting = await rows(backend)
        assert len(waiting) >= 2
        assert all((r["attempts"], r["last_error"]) == (0, None) for r in waiting)
        rest = await stream.deliveries(3, within=15)
        assert sorted(d.notification.content.title for d in [*first, *rest]) == titles
        assert source_count("outbox", "pushback") > pushback
        await until(lambda: _empty(backend))
        stream.cancel()
    finally:
        await backend.close()
