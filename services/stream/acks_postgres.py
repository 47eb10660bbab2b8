"""AckStore in PostgreSQL: one row per (tenant, user, log), a watermark and the acked cursors
above it.

Acking locks the row (made first if the log had no acks), works out the new state with AckState
(the one definition of how acks combine) and writes it back, in one short transaction: acks of
one log from two nodes at once are applied one after the other, none lost. Acks up to a cursor,
the common kind, take one round trip: a function (services/migrations/0002_ack_up_to.sql) does
the same steps in the database; the contract tests hold it to AckState's rules.

Acks up to a cursor are batched across the node's sessions: one is sent at once, and those that
arrive while it is in flight go together in the next statement (set-based, `_ACK_UP_TO_SET`,
when the batch names each row once; services/migrations/0014_ack_up_to_many.sql otherwise).
No ack waits for a timer, and a pooled call, which costs the node about 120 µs of CPU whatever
it carries (docs/postgres.md), carries as many acks as came during the one before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

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

# services/migrations/0002_ack_up_to.sql: one ack.
_ACK_UP_TO: Final = "SELECT before_up_to, before_above FROM herald_ack_up_to($1, $2, $3, $4)"
# services/migrations/0014_ack_up_to_many.sql: many, herald_ack_up_to for each.
_ACK_UP_TO_MANY: Final = """
SELECT ord, before_up_to, before_above FROM herald_ack_up_to_many($1, $2, $3, $4)
"""
# Acks up to a cursor of distinct rows in one statement, without PL/pgSQL: what
# herald_ack_up_to does for each, set-based. The rows that exist are locked in the order given
# (the store sorts by tenant, user, log on every node) and raised as AckState.raise_to does:
# the acked cursors above the new watermark kept, the run of them that follows it absorbed.
# The rows that do not exist are made with their watermark at the cursor. Each answer is the
# state from before, numbered as the arguments come (from 1); a row another node made after
# this statement's snapshot is left out of the answers (its insert conflicts, and the store acks
# it with the function, which waits for that row). The function takes about 200,000 of
# PostgreSQL's instructions per ack (bench/pg_instructions.py --acks), mostly the executor
# start-up of each of its statements, once per ack.
_ACK_UP_TO_SET: Final = """
WITH a AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
        WITH ORDINALITY AS a (tenant_id, user_id, log, cursor, ord)
), locked AS (
    SELECT a.ord, a.cursor, k.tenant_id, k.user_id, k.log, k.up_to, k.above
    FROM a
    JOIN herald_acks AS k ON k.tenant_id = a.tenant_id AND k.user_id = a.user_id AND k.log = a.log
    ORDER BY a.ord
    FOR UPDATE OF k
), raised AS (
    -- Most rows have no cursors acked above their watermark: the cursor is the new one.
    SELECT l.tenant_id, l.user_id, l.log, l.cursor AS up_to, l.above
    FROM locked AS l
    WHERE l.cursor > l.up_to AND cardinality(l.above) = 0
    UNION ALL
    SELECT l.tenant_id, l.user_id, l.log, l.cursor + r.run AS up_to, r.rest[r.run + 1:] AS above
    FROM locked AS l
    CROSS JOIN LATERAL (
        SELECT x.rest, (
            -- `rest` ascends from above the cursor: its first `run` follow the cursor one by one.
            SELECT count(*) FROM unnest(x.rest) WITH ORDINALITY AS u (c, i)
            WHERE u.c = l.cursor + u.i
        )::integer AS run
        FROM (
            SELECT ARRAY(SELECT c FROM unnest(l.above) AS c WHERE c > l.cursor ORDER BY c) AS rest
        ) AS x
    ) AS r
    WHERE l.cursor > l.up_to AND cardinality(l.above) > 0
), written AS (
    UPDATE herald_acks AS k SET up_to = r.up_to, above = r.above
    FROM raised AS r
    WHERE k.tenant_id = r.tenant_id AND k.user_id = r.user_id AND k.log = r.log
), made AS (
    INSERT INTO herald_acks AS k (tenant_id, user_id, log, up_to)
    SELECT a.tenant_id, a.user_id, a.log, greatest(a.cursor, 0)
    FROM a
    WHERE NOT EXISTS (SELECT 1 FROM locked AS l WHERE l.ord = a.ord)
    ORDER BY a.ord
    ON CONFLICT (tenant_id, user_id, log) DO NOTHING
    RETURNING k.tenant_id, k.user_id, k.log
)
SELECT l.ord, l.up_to, l.above FROM locked AS l
WHERE (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
UNION ALL
SELECT a.ord, 0, '{}' FROM made AS m
JOIN a ON a.tenant_id = m.tenant_id AND a.user_id = m.user_id AND a.log = m.log
"""
# Acks up to a cursor per statement, at most.
_BATCH_MAX: Final = 1000

_UPDATE: Final = """
UPDATE herald_acks SET up_to = $4, above = $5
WHERE tenant_id = $1 AND user_id = $2 AND log = $3
"""


def _state(row: asyncpg.Record | None) -> AckState:
    return AckState() if row is None else _state_of(row[0], row[1])


def _state_of(up_to: int | None, above: list[int] | None) -> AckState:
    if up_to is None:
        return AckState()
    return AckState(up_to, set(above) if above else NO_CURSORS)


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


class _Raise(NamedTuple):
    """An ack up to a cursor waiting for its batch."""

    tenant: str
    user_id: str
    log: str
    cursor: int
    answer: asyncio.Future[AckState]


def _columns(waiting: list[_Raise]) -> tuple[list[str], list[str], list[str], list[int]]:
    """A batch's arguments: its tenants, users, logs and cursors."""
    return (
        [w.tenant for w in waiting],
        [w.user_id for w in waiting],
        [w.log for w in waiting],
        [w.cursor for w in waiting],
    )


class PostgresAckStore:
    """Ack states in PostgreSQL, on a pool it shares and does not close."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._waiting: list[_Raise] = []
        self._sender: asyncio.Future[None] | None = None

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
        # In a batch of one round trip: the function does what `ack` does in a transaction (the
        # row locked, the state combined as AckState.raise_to does, no wait for the WAL flush).
        answer: asyncio.Future[AckState] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Raise(tenant, user_id, key.stored, cursor, answer))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_waiting())
        return await answer

    async def _send_waiting(self) -> None:
        """Sends what waits, a batch at a time, until nothing does: the acks that arrive while
        a batch is in flight go together in the next."""
        try:
            while self._waiting:
                batch = self._waiting[:_BATCH_MAX]
                del self._waiting[:_BATCH_MAX]
                # An ack whose caller gave up while it waited is not sent: the caller learns
                # nothing, so its status would never follow (the client acks again).
                batch = [w for w in batch if not w.answer.done()]
                if batch:
                    await self._raise(batch)
        except asyncio.CancelledError:
            # Only at shutdown: the acks not sent yet end as their callers would on a cancel.
            waiting, self._waiting = self._waiting, []
            for w in waiting:
                w.answer.cancel()
            raise
        finally:
            self._sender = None

    async def _raise(self, waiting: list[_Raise]) -> None:
        # Rows are locked in one order on every node, so two nodes' batches never wait for each
        # other in a circle; acks of one row keep the order they came in (a stable sort).
        waiting.sort(key=lambda w: (w.tenant, w.user_id, w.log))
        try:
            if len(waiting) == 1:
                [w] = waiting
                row = await self._pool.fetchrow(_ACK_UP_TO, w.tenant, w.user_id, w.log, w.cursor)
                states = {1: _state(row)}
            else:
                states = await self._raise_many(waiting)
        except asyncio.CancelledError:
            for w in waiting:
                w.answer.cancel()
            raise
        except Exception as exc:
            # Every caller hears the one failure (the circuit breaker counts it once).
            for w in waiting:
                if not w.answer.done():
                    w.answer.set_exception(exc)
            return
        for ordinal, w in enumerate(waiting, 1):
            if not w.answer.done():  # its caller may have given up meanwhile
                state = states.get(ordinal)
                if state is None:  # never: the function answers each argument
                    w.answer.set_exception(RuntimeError("herald_ack_up_to_many left an ack out"))
                else:
                    w.answer.set_result(state)

    async def _raise_many(self, waiting: list[_Raise]) -> dict[int, AckState]:
        """The states from before of a sorted batch, by position (from 1): one statement,
        set-based when the batch names each row once (the function's loop when a row comes
        twice: the second sees the first), and the function again for the rows the set-based
        statement left out (made by another node meanwhile) or for all of them if it deadlocked
        with another node's batch (it was rolled back whole)."""
        keys = {(w.tenant, w.user_id, w.log) for w in waiting}
        if len(keys) < len(waiting):
            return await self._raise_in_loop(waiting, range(1, len(waiting) + 1))
        try:
            rows = await self._pool.fetch(_ACK_UP_TO_SET, *_columns(waiting))
        except asyncpg.DeadlockDetectedError:
            return await self._raise_in_loop(waiting, range(1, len(waiting) + 1))
        states = {row[0]: _state_of(row[1], row[2]) for row in rows}
        if len(states) < len(waiting):
            left = [k for k in range(1, len(waiting) + 1) if k not in states]
            states.update(await self._raise_in_loop([waiting[k - 1] for k in left], left))
        return states

    async def _raise_in_loop(
        self, waiting: list[_Raise], positions: Sequence[int]
    ) -> dict[int, AckState]:
        """herald_ack_up_to_many for `waiting`, its answers by `positions`."""
        rows = await self._pool.fetch(_ACK_UP_TO_MANY, *_columns(waiting))
        return {positions[row[0] - 1]: _state_of(row[1], row[2]) for row in rows}

    async def aclose(self) -> None:
        """Waits for the acks that wait to be sent. The pool belongs to whoever made it
        (services.postgres.PostgresBackend)."""
        if self._sender is not None:
            await asyncio.gather(asyncio.shield(self._sender), return_exceptions=True)
