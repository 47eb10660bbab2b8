"""InboxStateStore in PostgreSQL: a row per changed notification (`herald_inbox_states`) and a
counters row per user (`herald_inbox_counters`), changed together in one transaction (schema in
services/migrations/0009_inbox_states.sql).

Locks: a change locks the user's counters row first, then the rows it changes; `forget` locks
the counters rows of its users first too, in user order, so the two never wait on each other
in opposite orders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import asyncpg

from services.stream.inbox_state import (
    UNSET,
    Action,
    InboxCounters,
    InboxState,
    next_state,
)

_GET: Final = """
SELECT notification_id, seen_at, read_at, archived_at FROM herald_inbox_states
WHERE tenant_id = $1 AND user_id = $2 AND notification_id = ANY($3::text[])
"""
_LOCK_COUNTERS: Final = """
INSERT INTO herald_inbox_counters AS c (tenant_id, user_id) VALUES ($1, $2)
ON CONFLICT (tenant_id, user_id) DO UPDATE SET archived = c.archived
RETURNING c.archived, c.read, c.seen
"""
_GET_FOR_UPDATE: Final = _GET + " ORDER BY notification_id FOR UPDATE"
_PUT: Final = """
INSERT INTO herald_inbox_states AS s (tenant_id, user_id, notification_id, seen_at, read_at,
    archived_at)
SELECT $1, $2, * FROM unnest($3::text[], $4::float8[], $5::float8[], $6::float8[])
ON CONFLICT (tenant_id, user_id, notification_id) DO UPDATE SET
    seen_at = excluded.seen_at, read_at = excluded.read_at, archived_at = excluded.archived_at
"""
_SET_COUNTERS: Final = """
UPDATE herald_inbox_counters SET archived = $3, read = $4, seen = $5
WHERE tenant_id = $1 AND user_id = $2
"""
_COUNTERS: Final = """
SELECT archived, read, seen FROM herald_inbox_counters WHERE tenant_id = $1 AND user_id = $2
"""
_LOCK_MANY: Final = """
SELECT 1 FROM herald_inbox_counters
WHERE tenant_id = $1 AND user_id = ANY($2::text[])
ORDER BY user_id FOR UPDATE
"""
_FORGET: Final = """
WITH gone AS (
    DELETE FROM herald_inbox_states AS s
    USING unnest($2::text[], $3::text[]) AS f (user_id, notification_id)
    WHERE s.tenant_id = $1 AND s.user_id = f.user_id AND s.notification_id = f.notification_id
    RETURNING s.user_id, s.seen_at, s.read_at, s.archived_at
), shares AS (
    SELECT user_id,
        count(*) FILTER (WHERE archived_at > 0) AS archived,
        count(*) FILTER (WHERE archived_at = 0 AND read_at > 0) AS read,
        count(*) FILTER (WHERE archived_at = 0 AND seen_at > 0) AS seen
    FROM gone GROUP BY user_id
)
UPDATE herald_inbox_counters AS c
SET archived = c.archived - shares.archived, read = c.read - shares.read,
    seen = c.seen - shares.seen
FROM shares WHERE c.tenant_id = $1 AND c.user_id = shares.user_id
"""


class PostgresInboxStateStore:
    """Inbox states on a pool it shares and does not close; every call one transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(
        self, tenant: str, user_id: str, notification_ids: Sequence[str]
    ) -> dict[str, InboxState]:
        if not notification_ids:
            return {}
        rows = await self._pool.fetch(_GET, tenant, user_id, list(notification_ids))
        return {row[0]: InboxState(row[1], row[2], row[3]) for row in rows}

    async def change(
        self, tenant: str, user_id: str, notification_ids: Sequence[str], action: Action, at: float
    ) -> tuple[list[str], InboxCounters]:
        ids = list(dict.fromkeys(notification_ids))
        async with self._pool.acquire() as connection, connection.transaction():
            # An upsert with RETURNING returns its row, inserted or not.
            [row] = await connection.fetch(_LOCK_COUNTERS, tenant, user_id)
            counters = InboxCounters(row[0], row[1], row[2])
            if not ids:
                return [], counters
            stored = {
                row[0]: InboxState(row[1], row[2], row[3])
                for row in await connection.fetch(_GET_FOR_UPDATE, tenant, user_id, ids)
            }
            changed: list[str] = []
            states: list[InboxState] = []
            for notification_id in ids:
                before = stored.get(notification_id, UNSET)
                after = next_state(before, action, at)
                if after == before:
                    continue
                counters = counters.plus(before, after)
                changed.append(notification_id)
                states.append(after)
            if changed:
                await connection.execute(
                    _PUT,
                    tenant,
                    user_id,
                    changed,
                    [s.seen_at for s in states],
                    [s.read_at for s in states],
                    [s.archived_at for s in states],
                )
                await connection.execute(_SET_COUNTERS, tenant, user_id, *counters)
        return changed, counters

    async def counters(self, tenant: str, user_id: str) -> InboxCounters:
        row = await self._pool.fetchrow(_COUNTERS, tenant, user_id)
        return InboxCounters() if row is None else InboxCounters(row[0], row[1], row[2])

    async def forget(self, tenant: str, entries: Sequence[tuple[str, str]]) -> None:
        if not entries:
            return
        users = sorted({user_id for user_id, _ in entries})
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(_LOCK_MANY, tenant, users)
            await connection.execute(
                _FORGET, tenant, [u for u, _ in entries], [i for _, i in entries]
            )

    async def aclose(self) -> None:
        # The pool belongs to whoever made it (services.postgres.PostgresBackend).
        return None
