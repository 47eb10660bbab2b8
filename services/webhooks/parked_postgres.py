"""ParkedWebhookStore in PostgreSQL: replays claimed with FOR UPDATE SKIP LOCKED, so the stream
nodes of one deployment share it."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from services.webhooks.parked import DEFAULT_PAGE, ParkedBatch

_COLUMNS: Final = (
    "tenant_id, batch_id, body, event_count, attempts, reason, created_at, parked_at, replay_at"
)

_PARK: Final = f"""
INSERT INTO herald_webhooks_parked ({_COLUMNS})
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::int[], $6::text[],
                     $7::float8[], $8::float8[], $9::float8[])
ON CONFLICT (tenant_id, batch_id) DO UPDATE
SET body = excluded.body, event_count = excluded.event_count, attempts = excluded.attempts,
    reason = excluded.reason, parked_at = excluded.parked_at, replay_at = excluded.replay_at
"""  # noqa: S608 - constants only

_LIST: Final = (
    f"SELECT {_COLUMNS} FROM herald_webhooks_parked"  # noqa: S608 - constants only
    " WHERE tenant_id = $1 AND batch_id > $2 ORDER BY batch_id LIMIT $3"
)

_REPLAY: Final = """
UPDATE herald_webhooks_parked SET replay_at = $3
WHERE tenant_id = $1 AND ($2::text[] IS NULL OR batch_id = ANY($2::text[]))
"""

_CLAIM: Final = f"""
WITH due AS (
    SELECT tenant_id, batch_id FROM herald_webhooks_parked
    WHERE replay_at <= $1
    ORDER BY replay_at, tenant_id, batch_id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE herald_webhooks_parked p SET replay_at = $1 + $3
FROM due
WHERE p.tenant_id = due.tenant_id AND p.batch_id = due.batch_id
RETURNING {", ".join("p." + c.strip() for c in _COLUMNS.split(","))}
"""  # noqa: S608 - constants only

_DELETE: Final = """
DELETE FROM herald_webhooks_parked
WHERE tenant_id = $1 AND ($2::text[] IS NULL OR batch_id = ANY($2::text[]))
"""


def _batch(row: asyncpg.Record) -> ParkedBatch:
    tenant, batch_id, body, events, attempts, reason, created_at, parked_at, replay_at = row
    return ParkedBatch(
        tenant,
        batch_id,
        bytes(body),
        int(events),
        int(attempts),
        reason,
        float(created_at),
        float(parked_at),
        None if replay_at is None else float(replay_at),
    )


def _count(status: str) -> int:
    # asyncpg answers "UPDATE 3" / "DELETE 3".
    return int(status.rsplit(" ", 1)[-1])


class PostgresParkedWebhookStore:
    """Parked webhook batches in PostgreSQL, on a pool it shares and does not close."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def park(self, batches: Sequence[ParkedBatch]) -> None:
        if not batches:
            return
        await self._pool.execute(
            _PARK,
            [b.tenant for b in batches],
            [b.batch_id for b in batches],
            [b.body for b in batches],
            [b.event_count for b in batches],
            [b.attempts for b in batches],
            [b.reason for b in batches],
            [b.created_at for b in batches],
            [b.parked_at for b in batches],
            [b.replay_at for b in batches],
        )

    async def list(
        self, tenant: str, after: str = "", limit: int = DEFAULT_PAGE
    ) -> builtins.list[ParkedBatch]:
        return [_batch(row) for row in await self._pool.fetch(_LIST, tenant, after, limit)]

    async def replay(self, tenant: str, batch_ids: Sequence[str] | None, now: float) -> int:
        ids = None if batch_ids is None else builtins.list(dict.fromkeys(batch_ids))
        return _count(await self._pool.execute(_REPLAY, tenant, ids, now))

    async def claim(self, now: float, limit: int, lease_s: float) -> builtins.list[ParkedBatch]:
        rows = await self._pool.fetch(_CLAIM, now, limit, lease_s)
        # RETURNING gives the new mark; the order is the claim's.
        return sorted(
            (_batch(row) for row in rows), key=lambda b: (b.replay_at, b.tenant, b.batch_id)
        )

    async def delete(self, tenant: str, batch_ids: Sequence[str] | None) -> int:
        ids = None if batch_ids is None else builtins.list(dict.fromkeys(batch_ids))
        return _count(await self._pool.execute(_DELETE, tenant, ids))

    async def aclose(self) -> None:
        # The pool belongs to whoever made it (services.postgres.PostgresBackend).
        return None
