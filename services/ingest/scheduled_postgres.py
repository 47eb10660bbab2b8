"""ScheduledStore in PostgreSQL (`herald_scheduled`): claimed FOR UPDATE SKIP LOCKED with a
lease, so every ingest node of a cluster runs a scheduler on one table and none releases a
send another holds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from services.ingest.scheduled import CancelOutcome, HoldState, ScheduledSend

_COLUMNS: Final = "tenant_id, notification_id, deliver_at, payload, cancelled_at, attempts"

_ADD: Final = """
INSERT INTO herald_scheduled (tenant_id, notification_id, deliver_at, payload)
SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::bytea[])
ON CONFLICT (tenant_id, notification_id) DO NOTHING
"""

_GET: Final = f"""
SELECT {_COLUMNS} FROM herald_scheduled WHERE tenant_id = $1 AND notification_id = $2
"""  # noqa: S608 - the columns are a constant

_LOCK: Final = """
SELECT cancelled_at, leased_until FROM herald_scheduled
WHERE tenant_id = $1 AND notification_id = $2
FOR UPDATE
"""

_CANCEL: Final = """
UPDATE herald_scheduled SET cancelled_at = $3 WHERE tenant_id = $1 AND notification_id = $2
"""

_CLAIM: Final = """
WITH due AS (
    SELECT tenant_id, notification_id FROM herald_scheduled
    WHERE cancelled_at IS NULL AND greatest(deliver_at, leased_until) <= $1
    ORDER BY greatest(deliver_at, leased_until)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE herald_scheduled s SET leased_until = $1 + $3, attempts = s.attempts + 1
FROM due
WHERE s.tenant_id = due.tenant_id AND s.notification_id = due.notification_id
RETURNING s.tenant_id, s.notification_id, s.deliver_at, s.payload, s.cancelled_at, s.attempts
"""

_DONE: Final = """
DELETE FROM herald_scheduled s
USING unnest($1::text[], $2::text[]) AS d (tenant_id, notification_id)
WHERE s.tenant_id = d.tenant_id AND s.notification_id = d.notification_id
"""

_NEXT_DUE: Final = """
SELECT min(greatest(deliver_at, leased_until)) FROM herald_scheduled WHERE cancelled_at IS NULL
"""

_LIST: Final = f"""
SELECT {_COLUMNS} FROM herald_scheduled
WHERE tenant_id = $1 AND cancelled_at IS NULL AND (deliver_at, notification_id) > ($3, $4)
ORDER BY deliver_at, notification_id
LIMIT $2
"""  # noqa: S608 - the columns are a constant

_PURGE: Final = "DELETE FROM herald_scheduled WHERE cancelled_at < $1"


def _send(row: asyncpg.Record) -> ScheduledSend:
    cancelled_at = row["cancelled_at"]
    return ScheduledSend(
        row["tenant_id"],
        row["notification_id"],
        float(row["deliver_at"]),
        bytes(row["payload"]),
        HoldState.SCHEDULED if cancelled_at is None else HoldState.CANCELLED,
        float(cancelled_at or 0.0),
        int(row["attempts"]),
    )


class PostgresScheduledStore:
    """Held sends in PostgreSQL, on a pool it shares and does not close."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def add(self, sends: Sequence[ScheduledSend]) -> None:
        if not sends:
            return
        await self._pool.execute(
            _ADD,
            [s.tenant for s in sends],
            [s.notification_id for s in sends],
            [s.deliver_at for s in sends],
            [s.encoded for s in sends],
        )

    async def get(self, tenant: str, notification_id: str) -> ScheduledSend | None:
        row = await self._pool.fetchrow(_GET, tenant, notification_id)
        return None if row is None else _send(row)

    async def cancel(self, tenant: str, notification_id: str, now: float) -> CancelOutcome:
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(_LOCK, tenant, notification_id)
            if row is None:
                return CancelOutcome.NOT_HELD
            if row["cancelled_at"] is not None:
                return CancelOutcome.ALREADY_CANCELLED
            if row["leased_until"] > now:
                return CancelOutcome.RELEASING
            await connection.execute(_CANCEL, tenant, notification_id, now)
        return CancelOutcome.CANCELLED

    async def claim(self, now: float, limit: int, lease_s: float) -> list[ScheduledSend]:
        rows = await self._pool.fetch(_CLAIM, now, limit, lease_s)
        return sorted(map(_send, rows), key=lambda s: (s.deliver_at, s.notification_id))

    async def done(self, sends: Sequence[ScheduledSend]) -> None:
        if sends:
            await self._pool.execute(
                _DONE, [s.tenant for s in sends], [s.notification_id for s in sends]
            )

    async def next_due(self) -> float | None:
        value = await self._pool.fetchval(_NEXT_DUE)
        return None if value is None else float(value)

    async def list(
        self, tenant: str, limit: int, after: tuple[float, str] | None = None
    ) -> list[ScheduledSend]:
        after_at, after_id = after if after is not None else (float("-inf"), "")
        rows = await self._pool.fetch(_LIST, tenant, limit, after_at, after_id)
        return [_send(row) for row in rows]

    async def purge(self, cancelled_before: float) -> int:
        status = await self._pool.execute(_PURGE, cancelled_before)
        return int(status.split()[-1])

    async def aclose(self) -> None:
        # The pool belongs to whoever made it (services.postgres.PostgresBackend).
        return None
