"""PostgreSQL set-up: migrations applied once, in order, also when two nodes start together; the
backend that owns the pool its stores share."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.domain import NewRecord, RecipientRecord, State, user_log
from services.postgres import (
    MIGRATION_LOCK,
    Migration,
    PostgresBackend,
    create_pool,
    migrate,
    migrations,
)
from services.stream.acks import AckState
from services.stream.acks_postgres import PostgresAckStore
from services.stream.inbox_state import InboxCounters, InboxState
from services.stream.inbox_state_postgres import PostgresInboxStateStore
from services.stream.log import LogAppend, NewEntry
from services.stream.log_postgres import PostgresLogStore
from services.stream.status import Mark
from services.stream.status_postgres import PostgresStatusStore
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


async def _migrate_to(pool: asyncpg.Pool, migrations_done: list[Migration]) -> None:
    """Makes the database what a release that shipped `migrations_done` left."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(
            "CREATE TABLE herald_schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in migrations_done:
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO herald_schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )


@pytest.mark.asyncio
async def test_a_database_at_the_previous_version_gets_only_what_it_lacks() -> None:
    """A database the previous release made (and used) is brought up to date in place."""
    *previous, _latest = migrations()
    async with scratch_database() as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            await _migrate_to(pool, previous)
            # What the previous release stored: acks of alice's inbox up to 3, and 5 above.
            await pool.execute(
                "INSERT INTO herald_acks (tenant_id, user_id, log, up_to, above)"
                " VALUES ('acme', 'alice', 'user:alice', 3, '{5}')"
            )
            assert await migrate(pool) == [len(previous) + 1]
            acks = PostgresAckStore(pool)
            alice = user_log("alice")
            assert await acks.ack_up_to("acme", "alice", alice, 4) == AckState(3, {5})
            assert await acks.get("acme", "alice", [alice]) == [AckState(5, set())]
            assert await migrate(pool) == []
        finally:
            await pool.close()


@pytest.mark.asyncio
async def test_status_records_made_before_the_marks_keep_answering_as_they_did() -> None:
    """Migration 0004 (status derived from marks): a record of the old shape, a row per
    recipient, reads the same afterwards, and new sends take the new shape beside it."""
    before = [m for m in migrations() if m.version < 4]
    alice = user_log("alice")
    async with scratch_database() as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            await _migrate_to(pool, before)
            # As release 3 stored a notification to alice and bob, delivered to alice, acked by bob.
            await pool.execute(
                "INSERT INTO herald_status (tenant_id, notification_id, target, created_at,"
                " expires_at) VALUES ('acme', 'old', '', 100, 900)"
            )
            await pool.execute(
                "INSERT INTO herald_recipients (tenant_id, notification_id, user_id, state,"
                " updated_at, queued_at, delivered_at, acked_at, attempts) VALUES"
                " ('acme', 'old', 'alice', 2, 110, 100, 110, 0, 1),"
                " ('acme', 'old', 'bob', 3, 120, 100, 105, 120, 1)"
            )
            applied = await migrate(pool)
            assert applied[0] == 4
            status = PostgresStatusStore(pool)
            old = await status.get("acme", "old")
            assert old is not None
            assert old.recipients == {
                "alice": RecipientRecord("alice", State.DELIVERED, 110, 100, 110, 0, 1),
                "bob": RecipientRecord("bob", State.ACKED, 120, 100, 105, 120, 1),
            }
            # A send after the upgrade: no row per recipient, its state from the marks.
            logs = PostgresLogStore(pool, status)
            entry = NewEntry("new", 2, 200.0, 900.0, b"\x12\x00")
            record = NewRecord("new", "acme", b"", 200.0, 900.0, ("alice",))
            [result] = await logs.append("acme", [LogAppend(alice, [entry], 10)], [record])
            cursor = result.entries[0].cursor
            await status.record(
                "acme", [Mark("alice", alice, State.DELIVERED, [(cursor, "new")], 210.0)]
            )
            new = await status.get("acme", "new")
            assert new is not None
            assert new.recipients["alice"] == RecipientRecord(
                "alice", State.DELIVERED, 210.0, 200.0, 210.0, 0, 1
            )
            rows = await pool.fetchval(
                "SELECT count(*) FROM herald_recipients WHERE notification_id = 'new'"
            )
            assert rows == 0
            # Old and new records side by side in one inbox page.
            page = await status.recipients("acme", "alice", ["old", "new"])
            assert {k: v.state for k, v in page.items()} == {
                "old": State.DELIVERED,
                "new": State.DELIVERED,
            }
        finally:
            await pool.close()


@pytest.mark.asyncio
async def test_read_marks_made_before_the_inbox_states_become_inbox_states() -> None:
    """The inbox states migration: a read mark MarkRead stored in herald_recipients becomes a
    read (and seen) inbox state with its counters, for what is still in the user's own log."""
    [inbox] = [m for m in migrations() if m.name.endswith("_inbox_states.sql")]
    before = [m for m in migrations() if m.version < inbox.version]
    alice = user_log("alice")
    async with scratch_database() as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            await _migrate_to(pool, before)
            status = PostgresStatusStore(pool)
            logs = PostgresLogStore(pool, status)
            entries = [NewEntry(i, 2, 100.0, 900.0, b"\x12\x00") for i in ("n1", "n2", "n3")]
            records = [
                NewRecord(i, "acme", b"", 100.0, 900.0, ("alice",)) for i in ("n1", "n2", "n3")
            ]
            # A bound of 2: n1 is pushed out of alice's log, its status record stays.
            await logs.append("acme", [LogAppend(alice, entries, 2)], records)
            assert await status.mark_read("acme", "alice", ["n1", "n2"], 150.0) == 2
            assert await migrate(pool) == [m.version for m in migrations()][len(before) :]
            states = PostgresInboxStateStore(pool)
            assert await states.get("acme", "alice", ["n1", "n2", "n3"]) == {
                "n2": InboxState(150.0, 150.0, 0.0)
            }
            assert await states.counters("acme", "alice") == InboxCounters(0, 1, 1)
        finally:
            await pool.close()
