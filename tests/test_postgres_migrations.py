"""The PostgreSQL schema migrations: applied once, in order, also when two nodes start together."""

from __future__ import annotations

import asyncio

import pytest

from services.postgres import create_pool, migrate, migrations
from tests.postgres import scratch_database


def test_the_packaged_migrations_are_numbered_from_one_without_gaps() -> None:
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert found[0].name == "0001_initial.sql"
    assert "CREATE TABLE herald_logs" in found[0].sql


@pytest.mark.asyncio
async def test_an_empty_database_is_migrated_once() -> None:
    async with scratch_database() as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            everything = [m.version for m in migrations()]
            assert await migrate(pool) == everything
            assert await migrate(pool) == []
            recorded = await pool.fetch("SELECT version FROM herald_schema_migrations")
            assert sorted(row["version"] for row in recorded) == everything
            epoch = await pool.fetchval("SELECT log_epoch FROM herald_meta")
            assert 0 < epoch < 2**52
        finally:
            await pool.close()


@pytest.mark.asyncio
async def test_two_nodes_migrating_together_apply_each_version_once() -> None:
    async with scratch_database() as dsn:
        first = await create_pool(dsn, min_size=1, max_size=1)
        second = await create_pool(dsn, min_size=1, max_size=1)
        try:
            results = await asyncio.gather(migrate(first), migrate(second))
            # One applied everything while the other waited on the lock, then found it done.
            assert sorted(results) == [[], [m.version for m in migrations()]]
            assert await first.fetchval("SELECT count(*) FROM herald_meta") == 1
        finally:
            await first.close()
            await second.close()
