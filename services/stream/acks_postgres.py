"""AckStore in PostgreSQL: one row per (tenant, user, log), a watermark and the acked cursors
above it.

Acking locks the row (made first if the log had no acks), works out the new state with AckState
(the one definition of how acks combine) and writes it back, in one short transaction: acks of
one log from two nodes at once are applied one after the other, none lost. Acks up to a cursor,
the common kind, take one round trip: a function (services/migrations/0002_ack_up_to.sql) does
the same steps in the database; the contract tests hold it to AckState's rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

import asyncpg

from services.domain import LogKey
from services.stream.acks import NO_CURSORS, AckState

if TYPE_CHECKING:
    from services.stream.status_postgres import Connection

_GET: Final = """
SELECT a.up_to, a.above
FROM unnest($3::text[]) WITH ORDINALITY AS k (log, i)
LEFT JOIN herald_acks AS a ON a.tenant_id = $1 AND a.user_id = $2 AND a.log = k.log
ORDER BY k.i
"""

_LOCK: Final = """
SELECT up_to, above FROM herald_acks
WHERE tenant_id = $1 AND user_id = $2 AND log = $3
FOR UPDATE
"""

_CREATE: Final = """
INSERT INTO herald_acks (tenant_id, user_id, log, up_to) VALUES ($1, $2, $3, 0)
ON CONFLICT (tenant_id, user_id, log) DO NOTHING
"""

# services/migrations/0002_ack_up_to.sql
_ACK_UP_TO: Final = "SELECT before_up_to, before_above FROM herald_ack_up_to($1, $2, $3, $4)"

_UPDATE: Final = """
UPDATE herald_acks SET up_to = $4, above = $5
WHERE tenant_id = $1 AND user_id = $2 AND log = $3
"""


def _state(row: asyncpg.Record | None) -> AckState:
    if row is None or row[0] is None:
        return AckState()
    return AckState(row[0], set(row[1]) if row[1] else NO_CURSORS)


async def _lock(connection: Connection, tenant: str, user_id: str, key: LogKey) -> AckState:
    """The log's state, its row locked until the transaction ends. The transaction commits
    without waiting for its WAL flush: an ack a crash loses is redelivered, which
    at-least-once allows, and acks no longer queue one fsync each."""
    await connection.execute("SET LOCAL synchronous_commit TO OFF")
    row = await connection.fetchrow(_LOCK, tenant, user_id, key.stored)
    if row is None:
        # Another node may make the row at the same time: ours waits for its, then finds it.
        await connection.execute(_CREATE, tenant, user_id, key.stored)
        row = await connection.fetchrow(_LOCK, tenant, user_id, key.stored)
    return _state(row)


async def _write(
    connection: Connection, tenant: str, user_id: str, key: LogKey, state: AckState
) -> None:
    await connection.execute(_UPDATE, tenant, user_id, key.stored, state.up_to, sorted(state.above))


class PostgresAckStore:
    """Ack states in PostgreSQL, on a pool it shares and does not close."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, tenant: str, user_id: str, keys: Sequence[LogKey]) -> list[AckState]:
        if not keys:
            return []
        rows = await self._pool.fetch(_GET, tenant, user_id, [key.stored for key in keys])
        return [_state(row) for row in rows]

    async def ack(
        self, tenant: str, user_id: str, key: LogKey, cursors: Iterable[int]
    ) -> list[int]:
        wanted = list(cursors)
        if not wanted:
            return []
        async with self._pool.acquire() as connection, connection.transaction():
            state = await _lock(connection, tenant, user_id, key)
            fresh = [cursor for cursor in wanted if state.add(cursor)]
            if fresh:
                await _write(connection, tenant, user_id, key, state)
        return fresh

    async def ack_up_to(self, tenant: str, user_id: str, key: LogKey, cursor: int) -> AckState:
        # One round trip: the function does what `ack` does in a transaction (the row locked,
        # the state combined as AckState.raise_to does, no wait for the WAL flush).
        row = await self._pool.fetchrow(_ACK_UP_TO, tenant, user_id, key.stored, cursor)
        return _state(row)

    async def aclose(self) -> None:
        # The pool belongs to whoever made it (services.postgres.PostgresBackend).
        return None
