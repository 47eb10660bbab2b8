"""StatusStore in PostgreSQL: a row per notification naming its users and their entries' cursors,
runs of cursors for first writes and acks per user, and rows for the exceptions (schema in
services/migrations, 0004 for this shape; docs/postgres.md).

A recipient of a notification sent to users costs no row of its own on the hot path: its
state is derived from the runs (`herald_status_marks`) that cover its entry's cursor in its own
log, and from its row in `herald_recipients` if something exceptional happened to it (FAILED,
EXPIRED, a redelivery, a read mark). Recipients of channel and broadcast notifications, known
only as they read, keep a row each, as do records made before migration 0004.
"""

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
from services.stream.status import Mark

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A connection of its own, or one lent by a pool.
    Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy

# The ALLOWED table as `current * 8 + new` codes, for the database to check transitions
# against (a new recipient may enter in any state, so ALLOWED[None] needs no code; neither does
# a row that holds only a read mark, state 0).
_ALLOWED_CODES: Final = sorted(
    {
        int(current) * 8 + int(new)
        for current, following in ALLOWED.items()
        if current is not None
        for new in following
    }
    | {int(new) for new in State}
)
# Held by the node purging (a transaction-level advisory lock; services.postgres has the
# migrations' own).
PURGE_LOCK: Final = 0x4845_5241_5055
# Notifications (and runs) forgotten per statement by `purge`: bounds each transaction.
_PURGE_BATCH: Final = 5000
# How far a stream node's clock may be behind the ingest node's: a run is looked for from this
# long before the notification was made, up to this long after it expired.
_CLOCK_SKEW_S: Final = 300.0

# A notification to one user (the common case) names it in $6/$7; the users of one sent to
# several come flattened in $8-$11 and are gathered per notification.
_CREATE: Final = """
WITH many AS (
    SELECT u.tenant_id, u.notification_id,
        array_agg(u.user_id ORDER BY u.i) AS user_ids, array_agg(u.cursor ORDER BY u.i) AS cursors
    FROM unnest($8::text[], $9::text[], $10::text[], $11::bigint[])
        WITH ORDINALITY AS u (tenant_id, notification_id, user_id, cursor, i)
    GROUP BY u.tenant_id, u.notification_id
)
INSERT INTO herald_status (
    tenant_id, notification_id, target, created_at, expires_at, user_ids, cursors
)
SELECT n.tenant_id, n.notification_id, n.target, n.created_at, n.expires_at,
    CASE WHEN n.user_id IS NULL THEN coalesce(m.user_ids, '{}') ELSE ARRAY[n.user_id] END,
    CASE WHEN n.user_id IS NULL THEN coalesce(m.cursors, '{}') ELSE ARRAY[n.cursor] END
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::float8[], $5::float8[], $6::text[],
        $7::bigint[])
    AS n (tenant_id, notification_id, target, created_at, expires_at, user_id, cursor)
LEFT JOIN many AS m ON m.tenant_id = n.tenant_id AND m.notification_id = n.notification_id
ON CONFLICT (tenant_id, notification_id) DO NOTHING
"""

# One statement, committed on its own without waiting for its WAL flush: set_config(..., true)
# sets synchronous_commit for the statement's own (implicit) transaction only, which is what
# `SET LOCAL` in a transaction block did with three more round trips (BEGIN, SET, COMMIT).
_RECORD: Final = """
INSERT INTO herald_status_marks (tenant_id, user_id, state, lo, hi, at)
SELECT $1, r.* FROM unnest($2::herald_mark_run[]) AS r
WHERE (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
"""

# One transition per recipient: ON CONFLICT DO UPDATE cannot change a row twice in a statement,
# so `apply` sends a recipient's second transition of a call in a second statement.
_APPLY: Final = """
INSERT INTO herald_recipients AS r (
    tenant_id, notification_id, user_id, state, updated_at,
    queued_at, delivered_at, acked_at, attempts, reason, failed_at
)
SELECT $1, t.notification_id, t.user_id, t.state, t.at,
    CASE WHEN t.state = $8::smallint THEN t.at ELSE 0 END,
    CASE WHEN t.state = $9::smallint THEN t.at ELSE 0 END,
    CASE WHEN t.state = $10::smallint THEN t.at ELSE 0 END,
    CASE WHEN t.state = $9::smallint THEN 1 ELSE 0 END,
    t.reason,
    CASE WHEN t.state = $11::smallint THEN t.at ELSE 0 END
FROM unnest($3::text[], $4::text[], $5::smallint[], $6::text[], $2::float8[])
    AS t (notification_id, user_id, state, reason, at)
JOIN herald_status AS s ON s.tenant_id = $1 AND s.notification_id = t.notification_id
-- A user the notification names is QUEUED from the start, and nothing goes back to QUEUED.
WHERE t.state <> $8::smallint OR NOT t.user_id = ANY(coalesce(s.user_ids, '{}'))
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
    reason = excluded.reason,
    failed_at = CASE WHEN excluded.state = $11 THEN excluded.updated_at ELSE r.failed_at END
WHERE r.state * 8 + excluded.state = ANY($7::integer[])
"""

# The runs that decide a recipient's derived state, for a row `p` (user_id, cursor, failed_at)
# of notification `s`: the first write (d), the ack (a), and the first write after the
# recipient last FAILED (f). Each is an index scan of the user's runs in time order, from the
# notification's creation to its expiry: short, because a user's entry is written (and acked)
# soon after the runs of the entries before it.
_DERIVED: Final = """
LEFT JOIN LATERAL (
    SELECT m.at FROM herald_status_marks AS m
    WHERE p.cursor > 0 AND m.tenant_id = $1 AND m.user_id = p.user_id AND m.state = {delivered}
        AND m.at >= s.created_at - {skew} AND m.at <= s.expires_at + {skew}
        AND m.lo <= p.cursor AND m.hi >= p.cursor
    ORDER BY m.at
    LIMIT 1
) AS d ON true
LEFT JOIN LATERAL (
    SELECT m.at FROM herald_status_marks AS m
    WHERE p.cursor > 0 AND m.tenant_id = $1 AND m.user_id = p.user_id AND m.state = {acked}
        AND m.at >= s.created_at - {skew} AND m.at <= s.expires_at + {skew}
        AND m.lo <= p.cursor AND m.hi >= p.cursor
    ORDER BY m.at
    LIMIT 1
) AS a ON true
LEFT JOIN LATERAL (
    SELECT m.at FROM herald_status_marks AS m
    WHERE p.cursor > 0 AND p.failed_at > 0 AND m.tenant_id = $1 AND m.user_id = p.user_id
        AND m.state = {delivered} AND m.at > p.failed_at AND m.at <= s.expires_at + {skew}
        AND m.lo <= p.cursor AND m.hi >= p.cursor
    ORDER BY m.at
    LIMIT 1
) AS f ON true
""".format(  # noqa: S608 - constants only
    skew=_CLOCK_SKEW_S,
    delivered=int(State.DELIVERED),
    acked=int(State.ACKED),
)

_GET_HEAD: Final = """
WITH s AS (
    SELECT target, created_at, expires_at, user_ids, cursors FROM herald_status
    WHERE tenant_id = $1 AND notification_id = $2
), listed AS (
    SELECT u.user_id, u.cursor FROM s, unnest(s.user_ids, s.cursors) AS u (user_id, cursor)
), explicit AS (
    SELECT r.user_id, r.state, r.updated_at, r.queued_at, r.delivered_at, r.acked_at,
        r.attempts, r.reason, r.read_at, r.failed_at
    FROM herald_recipients AS r
    WHERE r.tenant_id = $1 AND r.notification_id = $2
), p AS (
    SELECT coalesce(l.user_id, e.user_id) AS user_id, l.cursor, e.state, e.updated_at,
        e.queued_at, e.delivered_at, e.acked_at, e.attempts, e.reason, e.read_at, e.failed_at
    FROM listed AS l FULL JOIN explicit AS e ON e.user_id = l.user_id
)
SELECT s.target, s.created_at, s.expires_at, p.user_id, p.cursor, p.state, p.updated_at,
    p.queued_at, p.delivered_at, p.acked_at, p.attempts, p.reason, p.read_at, p.failed_at,
    d.at, a.at, f.at
FROM s
LEFT JOIN p ON true
"""
_GET_TAIL: Final = """
ORDER BY p.user_id
"""
_GET: Final = _GET_HEAD + _DERIVED + _GET_TAIL

_RECIPIENTS_HEAD: Final = """
SELECT s.notification_id, s.created_at, p.user_id, p.cursor, p.state, p.updated_at,
    p.queued_at, p.delivered_at, p.acked_at, p.attempts, p.reason, p.read_at, p.failed_at,
    d.at, a.at, f.at
FROM herald_status AS s
CROSS JOIN LATERAL (
    SELECT $3::text AS user_id, s.cursors[array_position(s.user_ids, $3::text)] AS cursor,
        r.user_id AS explicit_user, r.state, r.updated_at, r.queued_at, r.delivered_at,
        r.acked_at, r.attempts, r.reason, r.read_at, r.failed_at
    FROM (SELECT 1) AS one
    LEFT JOIN herald_recipients AS r
        ON r.tenant_id = s.tenant_id AND r.notification_id = s.notification_id
        AND r.user_id = $3::text
) AS p
"""
_RECIPIENTS_TAIL: Final = """
WHERE s.tenant_id = $1 AND s.notification_id = ANY($2::text[])
    AND (p.cursor IS NOT NULL OR p.explicit_user IS NOT NULL)
"""
_RECIPIENTS: Final = _RECIPIENTS_HEAD + _DERIVED + _RECIPIENTS_TAIL

# A read mark needs the user to be a recipient: named by the notification, or with a row.
_MARK_READ: Final = """
WITH targets AS (
    SELECT s.notification_id FROM herald_status AS s
    WHERE s.tenant_id = $1 AND s.notification_id = ANY($3::text[])
        AND ($2::text = ANY(s.user_ids) OR EXISTS (
            SELECT 1 FROM herald_recipients AS r
            WHERE r.tenant_id = $1 AND r.notification_id = s.notification_id AND r.user_id = $2
        ))
), changed AS (
    INSERT INTO herald_recipients AS r (tenant_id, notification_id, user_id, state, updated_at,
        read_at)
    SELECT $1, t.notification_id, $2, 0, 0, $4::float8 FROM targets AS t
    ON CONFLICT (tenant_id, notification_id, user_id) DO UPDATE SET read_at = excluded.read_at
    WHERE r.read_at = 0
    RETURNING 1
)
SELECT count(*) FROM changed
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

# A run made before `older_than` covers only entries made before it: their notifications go too.
_PURGE_MARKS: Final = """
WITH gone AS (
    DELETE FROM herald_status_marks
    WHERE ctid = ANY(ARRAY(SELECT ctid FROM herald_status_marks WHERE at < $1 LIMIT $2))
    RETURNING 1
)
SELECT count(*) FROM gone
"""

# An explicit row: (state, updated_at, queued_at, delivered_at, acked_at, attempts, reason,
# read_at), state 0 when the row holds only a read mark.
_Row = tuple[int, float, float, float, float, int, str, float]


def derive(
    user_id: str,
    created_at: float,
    listed: bool,
    row: _Row | None,
    written: float | None,
    acked: float | None,
    rewritten: float | None,
) -> RecipientRecord:
    """A recipient's record from its explicit row and the runs that cover its entry: the first
    write (`written`), the ack (`acked`) and the first write after the recipient last FAILED
    (`rewritten`).

    The same states as applying every change along ALLOWED in time order: a first write moves
    QUEUED to DELIVERED and counts an attempt; a write after a FAILED counts one more and, if
    the recipient is still FAILED, makes it DELIVERED; an ack wins over everything but an
    EXPIRED that came before it.
    """
    state, updated, queued = State.QUEUED, created_at, created_at if listed else 0.0
    delivered_at = acked_at = read_at = 0.0
    attempts, reason = 0, ""
    if row is not None:
        code, row_updated, row_queued, delivered_at, acked_at, attempts, reason, read_at = row
        if code:
            state, updated = State(code), row_updated
            queued = row_queued or queued
    if written is not None:
        attempts += 1
        delivered_at = min(delivered_at, written) if delivered_at else written
        if state is State.QUEUED:
            state, updated = State.DELIVERED, written
    if rewritten is not None:
        attempts += 1
        if state is State.FAILED:
            state, updated, reason = State.DELIVERED, rewritten, ""
    if (
        acked is not None
        and state is not State.ACKED
        and not (state is State.EXPIRED and updated <= acked)
    ):
        state, updated, acked_at, reason = State.ACKED, acked, acked, ""
    return RecipientRecord(
        user_id, state, updated, queued, delivered_at, acked_at, attempts, reason, read_at
    )


def _derived(row: asyncpg.Record, created_at: float, offset: int) -> RecipientRecord:
    """`derive` for a row of _GET or _RECIPIENTS from `offset` (user_id, cursor, the explicit
    row's columns but failed_at, failed_at, then the three runs' times)."""
    user_id, cursor, code = row[offset], row[offset + 1], row[offset + 2]
    explicit = None if code is None else tuple(row[offset + 2 : offset + 10])
    written, acked, rewritten = row[offset + 11 : offset + 14]
    return derive(
        user_id,
        created_at,
        cursor is not None,
        explicit,
        written,
        acked,
        rewritten,
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
    one_user: list[str | None] = []
    one_cursor: list[int | None] = []
    tenants: list[str] = []
    ids: list[str] = []
    users: list[str] = []
    cursors: list[int] = []
    for r in new:
        named = r.cursors or (0,) * len(r.user_ids)
        if len(r.user_ids) == 1:
            one_user.append(r.user_ids[0])
            one_cursor.append(named[0])
            continue
        one_user.append(None)
        one_cursor.append(None)
        seen: set[str] = set()
        for user_id, cursor in zip(r.user_ids, named, strict=True):
            if user_id not in seen:
                seen.add(user_id)
                tenants.append(r.tenant)
                ids.append(r.notification_id)
                users.append(user_id)
                cursors.append(cursor)
    await connection.execute(
        _CREATE,
        [r.tenant for r in new],
        [r.notification_id for r in new],
        [r.target for r in new],
        [r.created_at for r in new],
        [r.expires_at for r in new],
        one_user,
        one_cursor,
        tenants,
        ids,
        users,
        cursors,
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
        int(State.FAILED),
    )


def runs(marks: Sequence[Mark]) -> tuple[list[Mark], list[tuple[str, int, int, int, float]]]:
    """Splits marks into those of channel and broadcast logs (applied as transitions) and runs
    of consecutive cursors of users' own logs: (user_id, state, lo, hi, at), a run continued by
    a later mark of the same user and state taking the later time."""
    other: list[Mark] = []
    found: list[tuple[str, int, int, int, float]] = []
    last: dict[tuple[str, int], int] = {}  # (user, state) -> index of its newest run in found
    for mark in marks:
        if not mark.key.is_user:
            other.append(mark)
            continue
        state = int(mark.state)
        group = (mark.user_id, state)
        at = mark.at
        for cursor, _ in mark.entries:
            index = last.get(group)
            if index is not None:
                user_id, _, lo, hi, run_at = found[index]
                if cursor == hi + 1:
                    found[index] = (user_id, state, lo, cursor, max(run_at, at))
                    continue
            last[group] = len(found)
            found.append((mark.user_id, state, cursor, cursor, at))
    return other, found


class PostgresStatusStore:
    """Status records in PostgreSQL, on a pool it shares and does not close.

    Every call is one transaction; nothing is written behind (status_buffered.py does that), so
    `get` reflects every `apply` and `record` made by any node. Recipients are read only through
    their notification's row: one left behind by a purge that raced an `apply` is never seen
    (docs/postgres.md).
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

    async def record(self, tenant: str, marks: Sequence[Mark]) -> None:
        other, found = runs(marks)
        if other:
            await self.apply_timed(
                tenant,
                [
                    (Transition(notification_id, m.user_id, m.state), m.at)
                    for m in other
                    for _, notification_id in m.entries
                ],
            )
        if found:
            await self._pool.execute(_RECORD, tenant, found)

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
        recipients = {row[3]: _derived(row, created_at, 3) for row in rows if row[3] is not None}
        return NotificationRecord(
            notification_id, tenant, target, created_at, expires_at, recipients
        )

    async def recipients(
        self, tenant: str, user_id: str, notification_ids: Sequence[str]
    ) -> dict[str, RecipientRecord]:
        if not notification_ids:
            return {}
        rows = await self._pool.fetch(_RECIPIENTS, tenant, list(notification_ids), user_id)
        return {row[0]: _derived(row, row[1], 2) for row in rows}

    async def purge(self, older_than: float) -> int:
        """Forgets what is older than `older_than`, batch by batch. Every stream node runs it
        hourly: a node finding another one purging (its advisory lock held) leaves it to that
        one, so two nodes never delete the same rows against each other."""
        purged = 0
        for statement in (_PURGE, _PURGE_MARKS):
            while True:
                async with self._pool.acquire() as connection, connection.transaction():
                    if not await connection.fetchval(
                        "SELECT pg_try_advisory_xact_lock($1)", PURGE_LOCK
                    ):
                        return purged
                    gone = int(await connection.fetchval(statement, older_than, _PURGE_BATCH))
                if statement is _PURGE:
                    purged += gone
                if gone < _PURGE_BATCH:
                    break
        return purged

    async def aclose(self) -> None:
        # The pool belongs to whoever made it (services.postgres.PostgresBackend).
        return None
