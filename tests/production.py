"""Herald on the production profile (PostgreSQL and Redis) in this process: a database and a
Redis key prefix of the test's own, and `herald up` on them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from pydantic import SecretStr

from services.clock import ManualClock
from services.config import BackendSettings
from tests.harness import Herald, make_config, start_herald
from tests.postgres import scratch_database
from tests.redis_support import REDIS_URL, delete_prefix, new_prefix, redis_client, require_redis


@asynccontextmanager
async def production_db() -> AsyncIterator[tuple[str, str]]:
    """A fresh database (Herald migrates it) and a Redis key prefix, both the test's own."""
    await require_redis()
    prefix = new_prefix()
    async with scratch_database() as dsn:
        try:
            yield dsn, prefix
        finally:
            async with redis_client() as client:
                await delete_prefix(client, prefix)


async def start_production(
    tmp_path: Path, dsn: str, prefix: str, clock: ManualClock, **settings: object
) -> Herald:
    """`herald up` on the database `dsn` and the Redis key prefix `prefix`."""
    base = make_config(tmp_path, **settings)
    config = replace(
        base,
        backends=BackendSettings(
            postgres_dsn=SecretStr(dsn), redis_url=SecretStr(REDIS_URL), redis_prefix=prefix
        ),
    )
    return await start_herald("up", config, clock=clock)
