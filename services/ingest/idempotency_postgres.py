"""IdempotencyStore in PostgreSQL: a row per (tenant, key), live while expires_at > now.

One statement claims every key of a batch that has no live claim, taking over expired claims
in place (INSERT ... ON CONFLICT DO UPDATE ... WHERE expired), and removes a few of the tenant's
expired claims on the way, so the table stays about as large as one window of keys. A second
statement, only when some keys were held, reads who holds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import asyncpg

from services.ingest.idempotency import Claim

# Expired claims of the tenant removed per claimed key, at most.
_SWEEP_PER_KEY: Final = 2

_CLAIM: Final = """
WITH swept AS (
    DELETE FROM herald_idempotency
    WHERE tenant_id = $1 AND expires_at <= $4 AND key IN (
        SELECT key FROM herald_idempotency
        WHERE tenant_id = $1 AND expires_at <= $4 AND NOT key = ANY($2::text[])
        ORDER BY expires_at
        LIMIT $6
    )
)
INSERT INTO herald_idempotency AS i (tenant_id, key, notification_id, expires_at)
SELECT $1, c.key, c.notification_id, $5::float8
FROM unnest($2::text[], $3::text[]) AS c (key, notification_id)
ON CONFLICT (tenant_id, key) DO UPDATE
SET notification_id = excluded.notification_id, expires_at = excluded.expires_at
WHERE i.expires_at <= $4::float8
RETURNING i.key
"""

_HOLDERS: Final = """
SELECT key, notification_id FROM herald_idempotency
WHERE tenant_id = $1 AND key = ANY($2::text[]) AND expires_at > $3
"""

_TAKE_OVER: Final = """
UPDATE herald_idempotency SET notification_id = $3, expires_at = $5
WHERE tenant_id = $1 AND key = $2 AND notification_id = $4
"""

_RELEASE: Final = """
DELETE FROM herald_idempotency AS i
USING unnest($2::text[], $3::text[]) AS c (key, notification_id)
WHERE i.tenant_id = $1 AND i.key = c.key AND i.notification_id = c.notification_id
"""


class PostgresIdempotencyStore:
    """Idempotency claims in PostgreSQL, on a pool it shares and does not close."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def reserve(
        self, tenant: str, claims: Sequence[Claim], now: float, window_s: float
    ) -> list[str | None]:
        # A key twice in `claims` is claimed by its first claim only.
        first: dict[str, str] = {}
        for key, notification_id in claims:
            first.setdefault(key, notification_id)
        holders: dict[str, str | None] = {}
        # In key order, so that concurrent batches with common keys lock them in one order.
        pending = dict(sorted(first.items()))
        async with self._pool.acquire() as connection:
            # A key that is neither ours nor held when we look again was released in between:
            # claim it again.
            while pending:
                claimed = await connection.fetch(
                    _CLAIM,
                    tenant,
                    list(pending),
                    list(pending.values()),
                    now,
                    now + window_s,
                    _SWEEP_PER_KEY * len(pending),
                )
                for row in claimed:
                    holders[row[0]] = None
                    del pending[row[0]]
                if not pending:
                    break
                held = await connection.fetch(_HOLDERS, tenant, list(pending), now)
                for key, notification_id in held:
                    holders[key] = notification_id
                    del pending[key]
        out: list[str | None] = []
        seen: set[str] = set()
        for key, _ in claims:
            holder = holders[key]
            # A later claim of a key this call claimed finds it held by the first claim.
            out.append(first[key] if holder is None and key in seen else holder)
            seen.add(key)
        return out

    async def take_over(
        self, tenant: str, claim: Claim, held_by: str, now: float, window_s: float
    ) -> bool:
        status = await self._pool.execute(
            _TAKE_OVER, tenant, claim.key, claim.notification_id, held_by, now + window_s
        )
        return status == "UPDATE 1"

    async def release(self, tenant: str, claims: Sequence[Claim]) -> None:
        if claims:
            await self._pool.execute(
                _RELEASE,
                tenant,
                [claim.key for claim in claims],
                [claim.notification_id for claim in claims],
            )

    async def aclose(self) -> None:
        # The pool belongs to whoever made it (services.postgres.PostgresBackend).
        return None
