"""SegmentStore in PostgreSQL: a row per segment with its member count, a row per member."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Final

import asyncpg

from services.registry.segments import (
    DEFAULT_PAGE,
    MAX_MEMBERS,
    SegmentFull,
    SegmentInfo,
    SegmentNotFound,
)

_CREATE: Final = (
    "INSERT INTO herald_segments (tenant_id, name, created_at) VALUES ($1, $2, $3)"
    " ON CONFLICT DO NOTHING RETURNING 1"
)
# The segment row is locked first, so concurrent adds to one segment keep the count exact.
_LOCK: Final = "SELECT members FROM herald_segments WHERE tenant_id = $1 AND name = $2 FOR UPDATE"
_ADD: Final = """
WITH added AS (
    INSERT INTO herald_segment_members (tenant_id, name, user_id)
    SELECT $1, $2, u FROM unnest($3::text[]) AS u
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT count(*) FROM added
"""
_REMOVE: Final = """
WITH removed AS (
    DELETE FROM herald_segment_members
    WHERE tenant_id = $1 AND name = $2 AND user_id = ANY($3::text[]) RETURNING 1
)
SELECT count(*) FROM removed
"""
_COUNT: Final = (
    "UPDATE herald_segments SET members = members + $3 WHERE tenant_id = $1 AND name = $2"
    " RETURNING members"
)
_EXISTS: Final = "SELECT 1 FROM herald_segments WHERE tenant_id = $1 AND name = $2"
_PAGE: Final = (
    "SELECT user_id FROM herald_segment_members WHERE tenant_id = $1 AND name = $2"
    " AND user_id > $3 ORDER BY user_id LIMIT $4"
)
# Members per query of a send's read (all of them in one snapshot, page by page).
_SEND_PAGE: Final = 10_000
_LIST: Final = (
    "SELECT name, members, created_at FROM herald_segments WHERE tenant_id = $1 ORDER BY name"
)
_DELETE: Final = "DELETE FROM herald_segments WHERE tenant_id = $1 AND name = $2 RETURNING 1"


class PostgresSegmentStore:
    """Segments in PostgreSQL, on a pool it shares and does not close."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, tenant: str, name: str, created_at: float) -> bool:
        return await self._pool.fetchval(_CREATE, tenant, name, created_at) is not None

    async def add(self, tenant: str, name: str, users: Sequence[str]) -> int:
        async with self._pool.acquire() as connection, connection.transaction():
            had = await connection.fetchval(_LOCK, tenant, name)
            if had is None:
                raise SegmentNotFound(tenant, name)
            added = int(await connection.fetchval(_ADD, tenant, name, list(set(users))))
            if had + added > MAX_MEMBERS:
                # Raising rolls the transaction back: nothing is added.
                raise SegmentFull(name, had + added)
            await connection.execute(_COUNT, tenant, name, added)
            return added

    async def remove(self, tenant: str, name: str, users: Sequence[str]) -> int:
        async with self._pool.acquire() as connection, connection.transaction():
            if await connection.fetchval(_LOCK, tenant, name) is None:
                raise SegmentNotFound(tenant, name)
            removed = int(await connection.fetchval(_REMOVE, tenant, name, list(set(users))))
            await connection.execute(_COUNT, tenant, name, -removed)
            return removed

    async def members(
        self, tenant: str, name: str, after: str = "", limit: int = DEFAULT_PAGE
    ) -> builtins.list[str]:
        async with self._pool.acquire() as connection, connection.transaction(readonly=True):
            if await connection.fetchval(_EXISTS, tenant, name) is None:
                raise SegmentNotFound(tenant, name)
            return [row[0] for row in await connection.fetch(_PAGE, tenant, name, after, limit)]

    async def members_at_send(self, tenant: str, name: str) -> builtins.list[str]:
        # One snapshot (repeatable read) for the existence check and the members.
        async with (
            self._pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            if await connection.fetchval(_EXISTS, tenant, name) is None:
                raise SegmentNotFound(tenant, name)
            members: builtins.list[str] = []
            after = ""
            while True:
                page = await connection.fetch(_PAGE, tenant, name, after, _SEND_PAGE)
                members.extend(row[0] for row in page)
                if len(page) < _SEND_PAGE:
                    return members
                after = page[-1][0]

    async def list(self, tenant: str) -> builtins.list[SegmentInfo]:
        rows = await self._pool.fetch(_LIST, tenant)
        return [SegmentInfo(row[0], int(row[1]), float(row[2])) for row in rows]

    async def delete(self, tenant: str, name: str) -> bool:
        return await self._pool.fetchval(_DELETE, tenant, name) is not None

    async def aclose(self) -> None:
        # The pool belongs to whoever made it (services.postgres.PostgresBackend).
        pass
