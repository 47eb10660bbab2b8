"""PostgreSQL stores shared by many nodes: what two nodes doing the same thing at once get."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from services.domain import user_log
from services.postgres import create_pool
from services.stream.acks_postgres import PostgresAckStore
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
