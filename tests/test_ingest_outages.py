"""Ingestion sources while Herald's PostgreSQL is down (a throwaway server of the test's own):
the PostgreSQL breaker opens, Herald answers UNAVAILABLE, and the sources hold their messages
(JetStream: NAKed, not acked, not dead-lettered; outbox: rows untouched) until it is back, then
deliver them to the subscriber."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from google.protobuf import json_format
from pydantic import SecretStr

from services.config import BackendSettings, Config, OutboxSettings
from services.postgres import create_pool, migrate
from tests.harness import Herald, make_config, start_herald, to_user
from tests.ingest_support import Titles, source_count, until
from tests.nats_support import scratch_jetstream
from tests.postgres import scratch_database
from tests.redis_support import REDIS_URL, delete_prefix, new_prefix, redis_client, require_redis
from tests.throwaway import ThrowawayPostgres

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


@pytest_asyncio.fixture
async def own_postgres() -> AsyncIterator[tuple[ThrowawayPostgres, str]]:
    await require_redis()
    server = ThrowawayPostgres()
    await server.init()
    prefix = new_prefix()
    try:
        yield server, prefix
    finally:
        await server.remove()
        async with redis_client() as client:
            await delete_prefix(client, prefix)


def on_postgres(config: Config, dsn: str, prefix: str) -> Config:
    return replace(
        config,
        backends=BackendSettings(
            postgres_dsn=SecretStr(dsn),
            redis_url=SecretStr(REDIS_URL),
            redis_prefix=prefix,
            breaker_failures=2,
            breaker_reset_s=0.5,
            postgres_statement_timeout_s=2,
        ),
    )


async def watch(herald: Herald, user: str) -> tuple[Titles, asyncio.Task[None]]:
    titles = Titles()
    reader = asyncio.create_task(titles.collect(herald.user(user)))
    await asyncio.wait_for(titles.connected.wait(), 10)
    return titles, reader


async def test_jetstream_messages_wait_out_a_postgres_outage(
    own_postgres: tuple[ThrowawayPostgres, str], tmp_path: Path
) -> None:
    postgres, prefix = own_postgres
    async with scratch_jetstream() as scratch:
        config = on_postgres(make_config(tmp_path), postgres.dsn, prefix)
        herald = await start_herald("up", replace(config, jetstream=scratch.settings))
        titles, reader = await watch(herald, "alice")
        try:
            subject = scratch.subject("acme")
            await scratch.js.publish(subject, to_user("alice", "before").SerializeToString())
            await titles.until_has(["before"])
            dead = source_count("jetstream", "dead_lettered")
            pushback = source_count("jetstream", "pushback")
            await postgres.stop()
            await scratch.js.publish(subject, to_user("alice", "during").SerializeToString())

            async def pushed_back() -> bool:
                return source_count("jetstream", "pushback") > pushback

            await until(pushed_back, within=20)
            info = await scratch.js.consumer_info(scratch.settings.stream, scratch.settings.durable)
            assert info.num_ack_pending + info.num_pending == 1  # held, not acked
            await postgres.start()
            await titles.until_has(["during"], within=30)
            assert source_count("jetstream", "dead_lettered") == dead
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await herald.stop()


async def test_outbox_rows_wait_out_a_postgres_outage(
    own_postgres: tuple[ThrowawayPostgres, str], tmp_path: Path
) -> None:
    postgres, prefix = own_postgres
    # The outbox in the backend's own database (the shared server), Herald's stores on the
    # throwaway one that goes down.
    async with scratch_database() as outbox_dsn:
        pool = await create_pool(outbox_dsn, min_size=1, max_size=1)
        try:
            await migrate(pool)
        finally:
            await pool.close()
        config = on_postgres(make_config(tmp_path), postgres.dsn, prefix)
        outbox = OutboxSettings(
            enabled=True, dsn=SecretStr(outbox_dsn), poll_interval_s=0.5, retry_delay_s=0.05
        )
        herald = await start_herald("up", replace(config, outbox=outbox))
        titles, reader = await watch(herald, "bob")
        backend = await asyncpg.connect(outbox_dsn)
        insert = "INSERT INTO herald_outbox (tenant_id, payload_json) VALUES ('acme', $1::jsonb)"
        try:
            await backend.execute(insert, json_format.MessageToJson(to_user("bob", "before")))
            await titles.until_has(["before"])
            pushback = source_count("outbox", "pushback")
            await postgres.stop()
            await backend.execute(insert, json_format.MessageToJson(to_user("bob", "during")))

            async def pushed_back() -> bool:
                return source_count("outbox", "pushback") > pushback

            await until(pushed_back, within=20)
            [row] = await backend.fetch("SELECT attempts, last_error, dead_at FROM herald_outbox")
            assert tuple(row) == (0, None, None)  # untouched: Herald's outage is not the row's
            await postgres.start()
            await titles.until_has(["during"], within=30)
            await until(lambda: _empty(backend))
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await backend.close()
            await herald.stop()


async def _empty(connection: asyncpg.Connection) -> bool:
    return not await connection.fetchval("SELECT count(*) FROM herald_outbox")
