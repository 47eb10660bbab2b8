"""PushTargetStore in PostgreSQL: a row per (tenant, target_id)."""

from __future__ import annotations

import builtins
from typing import Any, Final

import asyncpg

from services.push.targets import PushKind, PushTargetRecord

_REGISTER: Final = """
INSERT INTO herald_push_targets
    (tenant_id, target_id, user_id, kind, token, p256dh, auth, registered_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (tenant_id, target_id) DO UPDATE SET
    user_id = excluded.user_id, kind = excluded.kind, token = excluded.token,
    p256dh = excluded.p256dh, auth = excluded.auth,
    registered_at = CASE WHEN herald_push_targets.user_id = excluded.user_id
        THEN herald_push_targets.registered_at ELSE excluded.registered_at END
RETURNING target_id, user_id, kind, token, p256dh, auth, registered_at
"""

_UNREGISTER: Final = """
DELETE FROM herald_push_targets WHERE tenant_id = $1 AND user_id = $2 AND target_id = $3
RETURNING 1
"""

_REMOVE: Final = """
WITH gone AS (
    DELETE FROM herald_push_targets WHERE tenant_id = $1 AND target_id = ANY($2::text[])
    RETURNING 1
)
SELECT count(*) FROM gone
"""

_LIST: Final = """
SELECT target_id, user_id, kind, token, p256dh, auth, registered_at FROM herald_push_targets
WHERE tenant_id = $1 AND user_id = $2
ORDER BY registered_at, target_id
"""


def _record(row: asyncpg.Record) -> PushTargetRecord:
    target_id, user_id, kind, token, p256dh, auth, registered_at = row
    return PushTargetRecord(target_id, user_id, PushKind(kind), token, p256dh, auth, registered_at)


class PostgresPushTargetStore:
    """Push targets in PostgreSQL, on a pool it shares and does not close."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def register(self, tenant: str, target: PushTargetRecord) -> PushTargetRecord:
        row = await self._pool.fetchrow(
            _REGISTER,
            tenant,
            target.target_id,
            target.user_id,
            int(target.kind),
            target.token,
            target.p256dh,
            target.auth,
            target.registered_at,
        )
        assert row is not None  # noqa: S101 -- INSERT ... RETURNING always returns the row
        return _record(row)

    async def unregister(self, tenant: str, user_id: str, target_id: str) -> bool:
        return await self._pool.fetchval(_UNREGISTER, tenant, user_id, target_id) is not None

    async def remove(self, tenant: str, target_ids: builtins.list[str]) -> int:
        if not target_ids:
            return 0
        return int(await self._pool.fetchval(_REMOVE, tenant, sorted(set(target_ids))))

    async def list(self, tenant: str, user_id: str) -> builtins.list[PushTargetRecord]:
        return [_record(row) for row in await self._pool.fetch(_LIST, tenant, user_id)]

    async def aclose(self) -> None:
        # The pool belongs to whoever made it (services.postgres.PostgresBackend).
        return None
