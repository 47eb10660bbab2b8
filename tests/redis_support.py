"""Real Redis for tests: a client on a key prefix of its own, cleaned up afterwards.

The Redis at HERALD_TEST_REDIS_URL (default 127.0.0.1:6379) is shared: tests never flush it.
Each test works under `herald-test:<random>:` and unlinks its keys at the end. When no Redis
answers, the test is skipped, and under CI=true it fails: CI must run the Redis tests.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

REDIS_URL = os.environ.get("HERALD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

_reachable: bool | None = None


async def require_redis() -> None:
    """Skips the test when Redis does not answer (fails it under CI=true)."""
    global _reachable
    if _reachable is None:
        probe = Redis.from_url(
            REDIS_URL, socket_connect_timeout=1.0, socket_timeout=1.0, retry=Retry(NoBackoff(), 0)
        )
        try:
            _reachable = bool(await probe.ping())
        except (RedisError, OSError):
            _reachable = False
        finally:
            await probe.aclose()
    if _reachable:
        return
    reason = f"no Redis answers at {REDIS_URL} (set HERALD_TEST_REDIS_URL)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run the Redis tests")
    pytest.skip(reason)


def new_prefix() -> str:
    return f"herald-test:{uuid.uuid4().hex}:"


@asynccontextmanager
async def redis_client(**options: Any) -> AsyncIterator[Redis]:
    """A client of the test Redis (skipping when there is none), closed afterwards."""
    await require_redis()
    client = Redis.from_url(REDIS_URL, **options)
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def scratch_keyspace(**options: Any) -> AsyncIterator[tuple[Redis, str]]:
    """A client and a fresh key prefix; every key under the prefix is unlinked afterwards."""
    prefix = new_prefix()
    async with redis_client(**options) as client:
        try:
            yield client, prefix
        finally:
            await delete_prefix(client, prefix)


async def delete_prefix(client: Redis, prefix: str) -> int:
    """Unlinks every key under `prefix` (SCAN, never FLUSHDB: the server is shared)."""
    pattern = re.sub(r"([\\*?\[\]])", r"\\\1", prefix) + "*"
    deleted = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += await client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += await client.unlink(*batch)
    return deleted


async def kill_pubsub_connections(admin: Redis, client_name: str) -> int:
    """Kills the pub/sub connections named `client_name` (only those: other tests share the
    server), as a network failure or a Redis restart would; returns how many were killed."""
    killed = 0
    for info in await admin.client_list(_type="pubsub"):
        if info.get("name") == client_name:
            killed += int(await admin.client_kill_filter(_id=info["id"]))
    return killed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ThrowawayRedis:
    """A redis-server of the test's own, on loopback, that the test may stop and start again
    (the shared one must never go down). Nothing is persisted."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--protected-mode", "no"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        probe = Redis.from_url(self.url, retry=Retry(NoBackoff(), 0))
        try:
            async with asyncio.timeout(10.0):
                while True:
                    try:
                        if await probe.ping():
                            return
                    except (RedisError, OSError):
                        await asyncio.sleep(0.02)
        finally:
            await probe.aclose()

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def throwaway_redis() -> AsyncIterator[ThrowawayRedis]:
    """A started throwaway Redis; skipped without redis-server (failed under CI=true)."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed: the Redis restart tests need their own server"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI must run them")
        pytest.skip(reason)
    server = ThrowawayRedis(binary, free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def note_aclose(
    monkeypatch: pytest.MonkeyPatch, client: Redis, name: str, closed: list[str]
) -> None:
    """Makes `client.aclose` note `name` in `closed` (and still close): who closes which client."""
    original = client.aclose

    async def aclose(close_connection_pool: bool | None = None) -> None:
        closed.append(name)
        await original(close_connection_pool)

    monkeypatch.setattr(client, "aclose", aclose)
