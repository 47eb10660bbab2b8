"""PendingPushStore in PostgreSQL: claimed with FOR UPDATE SKIP LOCKED, so nodes share it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from services.push.pending import PendingPush

_ADD: Final = """
INSERT INTO herald_push_pending (tenant_id, user_id, notification_id, due_at, payload)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::bytea[])
ON CONFLICT (tenant_id, user_id, notification_id) DO UPDATE
SET due_at = excluded.due_at, payload = excluded.payload
"""

_CLAIM: Final = """
WITH due AS (
    SELECT tenant_id, user_id, notification_id, due_at FROM herald_push_pending
    WHERE due_at <= $1
    ORDER BY due_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE herald_push_pending p SET due_at = $1 + $3
FROM due
WHERE p.tenant_id = due.tenant_id AND p.user_id = due.user_id
    AND p.notification_id = due.notification_id
RETURNING p.tenant_id, p.user_id, p.notification_id, due.due_at, p.payload
"""

_DONE: Final = """
DELETE FROM herald_push_pending p
USING unnest($1::text[], $2::text[], $3::text[]) AS d(tenant_id, user_id, notification_id)
WHERE p.tenant_id = d.tenant_id AND p.user_id = d.user_id
    AND p.notification_id = d.notification_id
"""


class PostgresPendingPushStore:
    """Pending pushes in PostgreSQL, on a pool it shares and does not close."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def add(self, pushes: Sequence[PendingPush]) -> None:
        if not pushes:
            return
        await self._pool.execute(
            _ADD,
            [p.tenant for p in pushes],
            [p.user_id for p in pushes],
            [p.notification_id for p in pushes],
            [p.due_at for p in pushes],
            [p.payload for p in pushes],
        )

    async def claim(self, now: float, limit: int, lease_s: float) -> list[PendingPush]:
        rows = await self._pool.fetch(_CLAIM, now, limit, lease_s)
        claimed = [PendingPush(r[0], r[1], r[2], float(r[3]), bytes(r[4])) for r in rows]
        return sorted(claimed, key=lambda p: p.due_at)

    async def done(self, pushes: Sequence[PendingPush]) -> None:
        if not pushes:
            return
        await self._pool.execute(
            _DONE,
            [p.tenant for p in pushes],
            [p.user_id for p in pushes],
            [p.notification_id for p in pushes],
        )

    async def aclose(self) -> None:
        return None
