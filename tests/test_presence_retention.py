"""A user's presence is kept for HERALD_REGISTRY_PRESENCE_RETENTION_S after they left, then
forgotten (the user reads as never seen), on both session directories; a user who came back
before that keeps being online."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from services.domain import SessionInfo, UserPresenceRecord
from services.registry.sessions import SessionDirectory
from services.registry.sessions_memory import MemorySessionDirectory
from services.registry.sessions_redis import RedisSessionDirectory
from tests.redis_support import require_redis, scratch_keyspace

pytestmark = pytest.mark.asyncio

T = "acme"
RETENTION_S = 1


def session(session_id: str, user_id: str, at: float) -> SessionInfo:
    return SessionInfo(
        session_id, T, user_id, "node-1", "127.0.0.1:7001", connected_at=at, last_seen_at=at
    )


@asynccontextmanager
async def directory(kind: str) -> AsyncIterator[SessionDirectory]:
    if kind == "memory":
        yield MemorySessionDirectory(presence_retention_s=RETENTION_S)
        return
    await require_redis()
    async with scratch_keyspace() as (client, prefix):
        redis = RedisSessionDirectory(client, prefix, presence_retention_s=RETENTION_S)
        yield redis
        # Nothing of a forgotten user is left under the prefix.
        assert await client.exists(f"{prefix}{{{T}}}:presence:gone") == 0


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_presence_is_forgotten_after_the_retention_unless_the_user_came_back(
    kind: str,
) -> None:
    async with directory(kind) as sessions:
        for user in ("gone", "back"):
            await sessions.add(session(f"{user}-1", user, 100.0), 5)
            await sessions.remove(T, f"{user}-1", 110.0)
        await sessions.add(session("back-2", "back", 110.5), 5)
        assert await sessions.presence(T, ["gone", "back"]) == [
            UserPresenceRecord("gone", 0, 110.0, 0.0),
            UserPresenceRecord("back", 1, 0.0, 110.5),
        ]
        # Redis expires by its own clock; the memory directory forgets in its sweep, by `at`.
        await asyncio.sleep(RETENTION_S + 0.5)
        await sessions.touch(T, ["back-2"], 112.0)
        await sessions.expire(older_than=0.0, at=112.0)
        assert await sessions.presence(T, ["gone", "back"]) == [
            UserPresenceRecord("gone", 0, 0.0, 0.0),
            UserPresenceRecord("back", 1, 0.0, 110.5),
        ]
