"""StatusStore in PostgreSQL: a row per notification, a row per recipient (schema in
services/migrations)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, TypeAlias

import asyncpg

from services.domain import (
    ALLOWED,
    NewRecord,
    NotificationRecord,
    RecipientRecord,
    State,
    Transition,
)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A connection of its own, or one lent by a pool.
    Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy

# The ALLOWED table as `current * 8 + new` codes, for the database to check transitions
# against (a new recipient may enter in any state, so ALLOWED[None] needs no code).
_ALLOWED_CODES: Final = sorted(
    int(current) * 8 + int(new)
    for current, following in ALLOWED.items()
    if current is not None
    for new in following
)
# Notifications forgotten per statement by `purge`: bounds each transaction.
_PURGE_BATCH: Final = 5000

_CREATE: Final = """
WITH created AS (
    INSERT INTO herald_status (tenant_id, notification_id, target, created_at, expires_at)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::float8[], $5::float8[])
    ON CONFLICT (tenant_id, notification_id) DO NOTHING
    RETURNING tenant_id, notification_id, created_at
)
INSERT INTO herald_recipients (tenant_id, notification_id, user_id, state, updated_at, queued_at)
SELECT c.tenant_id, c.notification_id, r.user_id, $9::smallint, c.created_at, c.created_at
FROM unnest($6::text[], $7::text[], $8::text[]) AS r (tenant_id, notification_id, user_id)
JOIN created AS c ON c.tenant_id = r.tenant_id AND c.notification_id = r.notification_id
"""

# One transition per recipient: ON CONFLICT DO UPDATE cannot change a row twice in a statement,
# so `apply` sends a recipient's second transition of a call in a second statement.
_APPLY: Final = """
INSERT INTO herald_recipients AS r (
    tenant_id, notification_id, user_id, state, updated_at,
    queued_at, delivered_at, acked_at, attempts, reason
)
SELECT $1, t.notification_id, t.user_id, t.state, t.at,
    CASE WHEN t.state = $8::smallint THEN t.at ELSE 0 END,
    CASE WHEN t.state = $9::smallint THEN t.at ELSE 0 END,
    CASE WHEN t.state = $10::smallint THEN t.at ELSE 0 END,
    CASE WHEN t.state = $9::smallint THEN 1 ELSE 0 END,
    t.reason
FROM unnest($3::text[], $4::text[], $5::smallint[], $6::text[], $2::float8[])
    AS t (notification_id, user_id, state, reason, at)
JOIN herald_status AS s ON s.tenant_id = $1 AND s.notification_id = t.notification_id
ON CONFLICT (tenant_id, notification_id, user_id) DO UPDATE SET
    state = excluded.state,
    updated_at = excluded.updated_at,
    queued_at = CASE WHEN excluded.state = $8 THEN excluded.updated_at ELSE r.queued_at END,
    delivered_at = CASE
        WHEN excluded.state = $9 AND r.delivered_at = 0 THEN excluded.updated_at
        ELSE r.delivered_at
    END,
    acked_at = CASE WHEN excluded.state = $10 THEN excluded.updated_at ELSE r.acked_at END,
    attempts = r.attempts + excluded.attempts,
    reason = excluded.reason
WHERE r.state * 8 + excluded.state = ANY($7::integer[])
"""

_MARK_READ: Final = """
WITH changed AS (
    UPDATE herald_recipients AS r SET read_at = $4::float8
    FROM herald_status AS s
    WHERE r.tenant_id = $1 AND r.user_id = $2 AND r.notification_id = ANY($3::text[])
        AND r.read_at = 0 AND s.tenant_id = $1 AND s.notification_id = r.notification_id
    RETURNING 1
)
SELECT count(*) FROM changed
"""

_GET: Final = """
SELECT s.target, s.created_at, s.expires_at, r.user_id, r.state, r.updated_at, r.queued_at,
    r.delivered_at, r.acked_at, r.attempts, r.reason, r.read_at
FROM herald_status AS s
LEFT JOIN herald_recipients AS r
    ON r.tenant_id = s.tenant_id AND r.notification_id = s.notification_id
WHERE s.tenant_id = $1 AND s.notification_id = $2
ORDER BY r.user_id
"""

_RECIPIENTS: Final = """
SELECT r.notification_id, r.user_id, r.state, r.updated_at, r.queued_at, r.delivered_at,
    r.acked_at, r.attempts, r.reason, r.read_at
FROM herald_recipients AS r
JOIN herald_status AS s ON s.tenant_id = r.tenant_id AND s.notification_id = r.notification_id
WHERE r.tenant_id = $1 AND r.notification_id = ANY($2::text[]) AND r.user_id = $3
"""

_PURGE: Final = """
WITH gone AS (
    DELETE FROM herald_status
    WHERE (tenant_id, notification_id) IN (
        SELECT tenant_id, notification_id FROM herald_status WHERE created_at < $1 LIMIT $2
    )
    RETURNING tenant_id, notification_id
), recipients AS (
    DELETE FROM herald_recipients AS r USING gone
    WHERE r.tenant_id = gone.tenant_id AND r.notification_id = gone.notification_id
)
SELECT count(*) FROM gone
"""


def _recipient(row: asyncpg.Record, offset: int) -> RecipientRecord:
    user_id, state, updated, queued, delivered, acked, attempts, reason, read = row[offset:]
    return RecipientRecord(
        user_id, State(state), updated, queued, delivered, acked, attempts, reason, read
    )


async def create_records(connection: Connection, records: Sequence[NewRecord]) -> None:
    """StatusStore.create on `connection`, so that a log store can create the records in its
    own transaction. A record already stored (or twice in `records`) is kept as it first was."""
    unique: dict[tuple[str, str], NewRecord] = {}
    for record in records:
        unique.setdefault((record.tenant, record.notification_id), record)
    if not unique:
        return
    new = unique.values()
    users = [(r.tenant, r.notification_id, u) for r in new for u in dict.fromkeys(r.user_ids)]
    await connection.execute(
        _CREATE,
        [r.tenant for r in new],
        [r.notification_id for r in new],
        [r.target for r in new],
        [r.created_at for r in new],
        [r.expires_at for r in new],
        [tenant for tenant, _, _ in users],
        [notification_id for _, notification_id, _ in users],
        [user_id for _, _, user_id in users],
        int(State.QUEUED),
    )


async def _apply(
    executor: asyncpg.Pool | Connection, tenant: str, batch: list[tuple[Transition, float]]
) -> None:
    await executor.execute(
        _APPLY,
        tenant,
        [at for _, at in batch],
        [t.notification_id for t, _ in batch],
        [t.user_id for t, _ in batch],
        [int(t.state) for t, _ in batch],
        [t.reason for t, _ in batch],
        _ALLOWED_CODES,
        int(State.QUEUED),
        int(State.DELIVERED),
        int(State.ACKED),
    )


class PostgresStatusStore:
    """Status records in PostgreSQL, on a pool it shares and does not close.

    Every call is one statement (one transaction with a statement per round of repeated
    recipients, for `apply`); nothing is written behind, so `get` reflects every `apply` made
    by any node. Recipients are read only through their notification's row: one left behind by
    a purge that raced an `apply` is never seen (docs/postgres.md).
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, records: Sequence[NewRecord]) -> None:
        async with self._pool.acquire() as connection:
            await create_records(connection, records)

    async def apply(self, tenant: str, transitions: Sequence[Transition], at: float) -> None:
        await self.apply_timed(tenant, [(t, at) for t in transitions])

    async def apply_timed(
        self, tenant: str, transitions: Sequence[tuple[Transition, float]]
    ) -> None:
        """`apply` with a time of its own per transition (what a write-behind buffer holds)."""
        # Round k holds each recipient's k-th transition of the call: applied in order.
        rounds: list[list[tuple[Transition, float]]] = []
        seen: dict[tuple[str, str], int] = {}
        for transition, at in transitions:
            recipient = (transition.notification_id, transition.user_id)
            k = seen.get(recipient, 0)
            seen[recipient] = k + 1
            if k == len(rounds):
                rounds.append([])
            rounds[k].append((transition, at))
        if not rounds:
            return
        async with self._pool.acquire() as connection, connection.transaction():
            # Status is not worth an fsync per write: a crash may lose the last few hundred
            # milliseconds of state changes (never a notification, an ack or a cursor), and
            # the commits no longer queue on the WAL flush.
            await connection.execute("SET LOCAL synchronous_commit TO OFF")
            for batch in rounds:
                await _apply(connection, tenant, batch)

    async def mark_read(
        self, tenant: str, user_id: str, notification_ids: list[str], at: float
    ) -> int:
        if not notification_ids:
            return 0
        marked = await self._pool.fetchval(_MARK_READ, tenant, user_id, notification_ids, at)
        return int(marked)

    async def get(self, tenant: str, notification_id: str) -> NotificationRecord | None:
        rows = await self._pool.fetch(_GET, tenant, notification_id)
        if not rows:
            return None
        target, created_at, expires_at = rows[0][:3]
        recipients = {row[3]: _recipient(row, 3) for row in rows if row[3] is not None}
        return NotificationRecord(
            notification_id, tenant, target, created_at, expires_at, recipients
        )

    async def recipients(
        self, tenant: str, user_id: str, notification_ids: Sequence[str]
    ) -> dict[str, RecipientRecord]:
        if not notification_ids:
            return {}
        rows = await self._pool.fetch(_RECIPIENTS, tenant, list(notification_ids), user_id)
        return {row[0]: _recipient(row, 1) for row in rows}

    async def purge(self, older_than: float) -> int:
        purged = 0
        while True:
            gone = int(await self._pool.fetchval(_PURGE, older_than, _PURGE_BATCH))
            purged += gone
            if gone < _PURGE_BATCH:
                return purged

    async def aclose(self) -> None:
        # The pool belongs to whoever made it (services.postgres.PostgresBackend).
        return None
