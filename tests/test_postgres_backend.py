"""PostgreSQL set-up: migrations applied once, in order, also when two nodes start together; the
backend that owns the pool its stores share."""

from __future__ import annotations

import asyncio

import pytest

from services.domain import NewRecord, user_log
from services.postgres import MIGRATION_LOCK, PostgresBackend, create_pool, migrate, migrations
from services.stream.acks import AckState
from services.stream.acks_postgres import PostgresAckStore
from services.stream.log import LogAppend, NewEntry
from tests.postgres import scratch_database


def test_the_packaged_migrations_are_numbered_from_one_in_order() -> None:
    # Versions may have gaps while branches numbered apart are merged (0006_outbox.sql before
    # 0004 and 0005 land); each is there once, and they apply in order.
    found = migrations()
    versions = [m.version for m in found]
    assert versions == sorted(set(versions))
    assert versions[0] == 1
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


@pytest.mark.asyncio
async def test_a_backend_migrates_and_its_stores_share_the_pool_it_closes() -> None:
    alice = user_log("alice")
    async with scratch_database() as dsn:
        backend = await PostgresBackend.open(dsn, max_size=2, statement_timeout_s=5)
        try:
            assert await backend.pool.fetchval("SHOW statement_timeout") == "5s"
            entry = NewEntry("n1", 2, 100.0, 200.0, b"\x12\x00")
            record = NewRecord("n1", "acme", b"", 100.0, 200.0, ("alice",))
            await backend.logs.append("acme", [LogAppend(alice, [entry], 10)], [record])
            assert await backend.status.get("acme", "n1") is not None
            # A store's aclose leaves the pool it shares open for the others.
            await backend.logs.aclose()
            assert await backend.acks.get("acme", "alice", [alice]) == [AckState()]
        finally:
            await backend.aclose()
        assert backend.pool.is_closing()
        await backend.aclose()  # closing twice is harmless


@pytest.mark.asyncio
async def test_a_migration_waits_for_the_lock_beyond_the_statement_timeout() -> None:
    async with scratch_database() as dsn:
        pool = await create_pool(dsn, min_size=2, max_size=2, statement_timeout_s=0.2)
        try:
            async with pool.acquire() as other_node, other_node.transaction():
                await other_node.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                waiting = asyncio.ensure_future(migrate(pool))
                await asyncio.sleep(0.5)  # the other node migrates for longer than 0.2 s
                assert not waiting.done()
            assert await waiting == [m.version for m in migrations()]
        finally:
            await pool.close()


@pytest.mark.asyncio
async def test_a_database_at_the_previous_version_gets_only_what_it_lacks() -> None:
    """A database the previous release made (and used) is brought up to date in place."""
    *previous, latest = migrations()
    async with scratch_database() as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute(
                    "CREATE TABLE herald_schema_migrations (version integer PRIMARY KEY,"
                    " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                for migration in previous:
                    await connection.execute(migration.sql)
                    await connection.execute(
                        "INSERT INTO herald_schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
            # What the previous release stored: acks of alice's inbox up to 3, and 5 above.
            await pool.execute(
                "INSERT INTO herald_acks (tenant_id, user_id, log, up_to, above)"
                " VALUES ('acme', 'alice', 'user:alice', 3, '{5}')"
            )
            assert await migrate(pool) == [latest.version]
            acks = PostgresAckStore(pool)
            alice = user_log("alice")
            assert await acks.ack_up_to("acme", "alice", alice, 4) == AckState(3, {5})
            assert await acks.get("acme", "alice", [alice]) == [AckState(5, set())]
            assert await migrate(pool) == []
        finally:
            await pool.close()
