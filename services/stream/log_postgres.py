"""LogStore in PostgreSQL: each notification stored once, log entries as small rows pointing at
it, and a row per log that serializes appenders (schema in services/migrations, the reasoning
in docs/postgres.md).

How an append stays correct with many nodes appending at once:

- It first upserts the row of every log it appends to (`INSERT ... ON CONFLICT DO UPDATE`),
  in sorted order, advancing `next_cursor` and `live`. That locks the rows until commit: a
  second appender to the same log waits, then continues from the advanced cursor. Appenders
  of different logs never wait for each other.
- Entries of a log are only inserted or deleted while its row is locked (the expiry sweep
  locks it too), so `live` is exactly the number of entries the log holds, and the bound
  deletes the `live + appended - limit` oldest, found by the primary key from the low end.
- The status records are created in the same transaction: all of it is stored or none.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from services.domain import USER, LogKey, NewRecord, user_log
from services.stream.log import AppendResult, Entry, Expired, LogAppend, LogHead, NewEntry
from services.stream.status_postgres import PostgresStatusStore, create_records

if TYPE_CHECKING:
    from services.stream.status_postgres import Connection

log = logging.getLogger(__name__)

# An append that deadlocks (two appenders meeting on one notification id, each after locking
# rows the other needs) is rolled back by the server and run again from the start.
_APPEND_ATTEMPTS: Final = 3
# Logs (or entries) per statement: a send to a segment of 100,000 members locks its logs and
# inserts its entries in statements of this many rows, all in the one transaction.
_ROWS_PER_STATEMENT: Final = 10_000
# read_reverse without a bound: above every cursor.
_NO_BOUND: Final = 2**63 - 1

_LOCK_LOGS: Final = """
INSERT INTO herald_logs AS l (tenant_id, log, epoch, next_cursor, live)
SELECT $1, a.log, m.log_epoch, 1 + a.n, a.n
FROM unnest($2::text[], $3::integer[]) WITH ORDINALITY AS a (log, n, i)
CROSS JOIN herald_meta AS m
ORDER BY a.i
ON CONFLICT (tenant_id, log) DO UPDATE
SET next_cursor = l.next_cursor + excluded.live, live = l.live + excluded.live
RETURNING l.log, l.epoch, l.next_cursor, l.live
"""

# An append in one statement, committed on its own (no BEGIN / COMMIT round trips): the log rows
# are upserted (locked, in sorted order, as _LOCK_LOGS does), and the entries, the notifications
# and their status records are written with the cursors the upsert assigns. Nothing here reads
# a table the append changes, so the statement's snapshot (taken before a concurrent appender's
# commit it may have waited for) decides nothing: the cursors come from the locked rows
# themselves. A log it takes past its bound is cut back by herald_drop_to_limit (migration
# *_drop_to_limit.sql). Each argument is an array of one kind of row (migration
# *_append_rows.sql): $2 the logs and how many entries each gets, $3 the notifications, $4 the
# entries (log, position among the call's entries of that log, id, expiry), $5 a status record
# per notification with its one user's log and position (NULL when it names several or none),
# $6 the users of those that name several.
#
# `{keep}` is where a notification (or its status record) stored already is kept as it is: the
# statement tried first has none there, so such an id fails it with a unique violation (and it
# stores nothing), and the append runs again with `ON CONFLICT ... DO NOTHING` there. An id is
# stored already only when a send is replayed (a scheduled or outbox send retried after an
# answer that was lost), and the conflict check costs every other append an index search per
# row in each of the two tables: about 12 % of PostgreSQL's CPU per notification (measured,
# docs/performance.md, "2026-12-08").
_APPEND_ONE_SQL: Final = """
WITH counts AS (
    SELECT a.log, a.n FROM unnest($2::herald_append_log[]) AS a
), locked AS (
    INSERT INTO herald_logs AS l (tenant_id, log, epoch, next_cursor, live)
    SELECT $1, a.log, m.log_epoch, 1 + a.n, a.n
    FROM unnest($2::herald_append_log[]) WITH ORDINALITY AS a (log, n, i)
    CROSS JOIN herald_meta AS m
    ORDER BY a.i
    ON CONFLICT (tenant_id, log) DO UPDATE
    SET next_cursor = l.next_cursor + excluded.live, live = l.live + excluded.live
    RETURNING l.log, l.epoch, l.next_cursor, l.live
), bases AS (
    SELECT k.log, k.next_cursor - c.n AS first FROM locked AS k JOIN counts AS c ON c.log = k.log
), notifications AS (
    INSERT INTO herald_notifications (
        tenant_id, notification_id, priority, created_at, expires_at, payload, trace_context
    )
    SELECT $1, *
    FROM unnest($3::herald_append_notification[])
    {keep}
), entries AS (
    INSERT INTO herald_log_entries (tenant_id, log, cursor, notification_id, expires_at)
    SELECT $1, e.log, b.first + e.ord - 1, e.notification_id, e.expires_at
    FROM unnest($4::herald_append_entry[]) AS e
    JOIN bases AS b ON b.log = e.log
), many AS (
    SELECT u.notification_id, array_agg(u.user_id ORDER BY u.i) AS user_ids,
        array_agg(coalesce(b.first + u.ord - 1, 0) ORDER BY u.i) AS cursors
    FROM unnest($6::herald_append_recipient[])
        WITH ORDINALITY AS u (notification_id, user_id, log, ord, i)
    LEFT JOIN bases AS b ON b.log = u.log
    GROUP BY u.notification_id
), status AS (
    INSERT INTO herald_status (
        tenant_id, notification_id, target, created_at, expires_at, user_ids, cursors
    )
    SELECT $1, r.notification_id, r.target, r.created_at, r.expires_at,
        CASE WHEN r.user_id IS NULL THEN coalesce(m.user_ids, '{{}}') ELSE ARRAY[r.user_id] END,
        CASE WHEN r.user_id IS NULL THEN coalesce(m.cursors, '{{}}')
            ELSE ARRAY[coalesce(b.first + r.ord - 1, 0)] END
    FROM unnest($5::herald_append_record[]) AS r
    LEFT JOIN bases AS b ON b.log = r.log
    LEFT JOIN many AS m ON m.notification_id = r.notification_id
    {keep}
)
SELECT log, epoch, next_cursor, live FROM locked
"""
_KEEP_STORED: Final = "ON CONFLICT (tenant_id, notification_id) DO NOTHING"
_APPEND_ONE: Final = _APPEND_ONE_SQL.format(keep="")
_APPEND_ONE_KEEPING: Final = _APPEND_ONE_SQL.format(keep=_KEEP_STORED)

# The append of notifications to one user each, every log once with one entry (`_singles`): one
# row per notification (migration *_append_single.sql), sorted by log, which is the order the
# log rows are locked in. The same rows as _APPEND_ONE writes for them, and the same answer; a
# notification id stored already fails it as it fails _APPEND_ONE (then _APPEND_ONE_KEEPING).
_APPEND_SINGLES: Final = """
WITH singles AS (
    SELECT * FROM unnest($2::herald_append_single[]) WITH ORDINALITY AS s (
        log, notification_id, priority, created_at, expires_at, payload, trace_context, target,
        user_id, i
    )
), locked AS (
    INSERT INTO herald_logs AS l (tenant_id, log, epoch, next_cursor, live)
    SELECT $1, s.log, m.log_epoch, 2, 1
    FROM singles AS s
    CROSS JOIN herald_meta AS m
    ORDER BY s.i
    ON CONFLICT (tenant_id, log) DO UPDATE
    SET next_cursor = l.next_cursor + 1, live = l.live + 1
    RETURNING l.log, l.epoch, l.next_cursor, l.live
), notifications AS (
    INSERT INTO herald_notifications (
        tenant_id, notification_id, priority, created_at, expires_at, payload, trace_context
    )
    SELECT $1, s.notification_id, s.priority, s.created_at, s.expires_at, s.payload,
        s.trace_context
    FROM singles AS s
), entries AS (
    INSERT INTO herald_log_entries (tenant_id, log, cursor, notification_id, expires_at)
    SELECT $1, s.log, k.next_cursor - 1, s.notification_id, s.expires_at
    FROM singles AS s
    JOIN locked AS k ON k.log = s.log
), status AS (
    INSERT INTO herald_status (
        tenant_id, notification_id, target, created_at, expires_at, user_ids, cursors
    )
    SELECT $1, s.notification_id, s.target, s.created_at, s.expires_at, ARRAY[s.user_id],
        ARRAY[k.next_cursor - 1]
    FROM singles AS s
    JOIN locked AS k ON k.log = s.log
)
SELECT log, epoch, next_cursor, live FROM locked
"""

_DROP_TO_LIMIT: Final = "SELECT * FROM herald_drop_to_limit($1, $2::text[], $3::integer[])"

_INSERT: Final = """
WITH notifications AS (
    INSERT INTO herald_notifications (
        tenant_id, notification_id, priority, created_at, expires_at, payload, trace_context
    )
    SELECT $1, *
    FROM unnest($2::text[], $3::integer[], $4::float8[], $5::float8[], $6::bytea[], $11::text[])
    ON CONFLICT (tenant_id, notification_id) DO NOTHING
)
INSERT INTO herald_log_entries (tenant_id, log, cursor, notification_id, expires_at)
SELECT $1, * FROM unnest($7::text[], $8::bigint[], $9::text[], $10::float8[])
"""

# $3: how many of each log's oldest stored entries go; $4: how many of the entries just
# appended were pushed out at once (never inserted); both leave `live`. The oldest go as a range
# of the primary key, up to each log's cut-off cursor.
_DROP_OLDEST: Final = """
WITH doomed AS (
    DELETE FROM herald_log_entries AS e
    USING (
        SELECT d.log, (
            SELECT x.cursor FROM herald_log_entries AS x
            WHERE x.tenant_id = $1 AND x.log = d.log
            ORDER BY x.cursor
            OFFSET d.k - 1
            LIMIT 1
        ) AS cutoff
        FROM unnest($2::text[], $3::integer[]) AS d (log, k)
        WHERE d.k > 0
    ) AS c
    WHERE e.tenant_id = $1 AND e.log = c.log AND e.cursor <= c.cutoff
    RETURNING e.log, e.cursor, e.notification_id, e.expires_at
), counted AS (
    UPDATE herald_logs AS l
    SET live = l.live - d.skipped - coalesce(g.n, 0)
    FROM unnest($2::text[], $4::integer[]) AS d (log, skipped)
    LEFT JOIN (SELECT log, count(*) AS n FROM doomed GROUP BY log) AS g ON g.log = d.log
    WHERE l.tenant_id = $1 AND l.log = d.log
)
SELECT d.log, d.cursor, d.notification_id, n.priority, n.created_at, d.expires_at, n.payload,
    n.trace_context
FROM doomed AS d
JOIN herald_notifications AS n ON n.tenant_id = $1 AND n.notification_id = d.notification_id
ORDER BY d.log, d.cursor
"""

_READ: Final = """
SELECT e.cursor, e.notification_id, n.priority, n.created_at, e.expires_at, n.payload,
    n.trace_context
FROM herald_log_entries AS e
JOIN herald_notifications AS n
    ON n.tenant_id = e.tenant_id AND n.notification_id = e.notification_id
WHERE e.tenant_id = $1 AND e.log = $2 AND e.cursor > $3
ORDER BY e.cursor
LIMIT $4
"""

_READ_REVERSE: Final = """
SELECT e.cursor, e.notification_id, n.priority, n.created_at, e.expires_at, n.payload,
    n.trace_context
FROM herald_log_entries AS e
JOIN herald_notifications AS n
    ON n.tenant_id = e.tenant_id AND n.notification_id = e.notification_id
WHERE e.tenant_id = $1 AND e.log = $2 AND e.cursor < $3
ORDER BY e.cursor DESC
LIMIT $4
"""

_IDS: Final = """
SELECT cursor, notification_id FROM herald_log_entries
WHERE tenant_id = $1 AND log = $2 AND cursor > $3 AND cursor <= $4
ORDER BY cursor
"""

# A log never appended to has no row: cursor 0, and the epoch its row will be made with.
_HEADS: Final = """
SELECT coalesce(l.epoch, m.log_epoch), coalesce(l.next_cursor - 1, 0)
FROM unnest($2::text[]) WITH ORDINALITY AS k (log, i)
CROSS JOIN herald_meta AS m
LEFT JOIN herald_logs AS l ON l.tenant_id = $1 AND l.log = k.log
ORDER BY k.i
"""

_SIZE: Final = "SELECT live FROM herald_logs WHERE tenant_id = $1 AND log = $2"

# By the (tenant_id, notification_id) index: a notification is in few logs.
_LOCATE: Final = """
SELECT notification_id, cursor, expires_at FROM herald_log_entries
WHERE tenant_id = $1 AND notification_id = ANY($3::text[]) AND log = $2
"""

_NOTIFICATIONS: Final = """
SELECT notification_id, payload FROM herald_notifications
WHERE tenant_id = $1 AND notification_id = ANY($2::text[])
"""
_FIND: Final = """
SELECT k.i, e.cursor, e.notification_id, n.priority, n.created_at, e.expires_at, n.payload,
    n.trace_context
FROM unnest($2::text[]) WITH ORDINALITY AS k (log, i)
JOIN herald_log_entries AS e
    ON e.tenant_id = $1 AND e.notification_id = $3 AND e.log = k.log
JOIN herald_notifications AS n ON n.tenant_id = $1 AND n.notification_id = $3
ORDER BY k.i
LIMIT 1
"""

# Up to $2 expired entries, oldest expiry first, of logs whose rows it can lock at once: a log
# an appender (or another node's sweep) holds is left for the next sweep, so sweeping never
# waits for appenders nor deadlocks with them.
_DROP_EXPIRED: Final = """
WITH due AS (
    SELECT tenant_id, log, cursor FROM herald_log_entries
    WHERE expires_at <= $1
    ORDER BY expires_at
    LIMIT $2
), locked AS (
    SELECT l.tenant_id, l.log FROM herald_logs AS l
    WHERE (l.tenant_id, l.log) IN (SELECT tenant_id, log FROM due)
    ORDER BY l.tenant_id, l.log
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM herald_log_entries AS e
    USING due, locked
    WHERE e.tenant_id = due.tenant_id AND e.log = due.log AND e.cursor = due.cursor
        AND locked.tenant_id = e.tenant_id AND locked.log = e.log AND e.expires_at <= $1
    RETURNING e.tenant_id, e.log, e.cursor, e.notification_id, e.expires_at
), counted AS (
    UPDATE herald_logs AS l SET live = l.live - c.n
    FROM (SELECT tenant_id, log, count(*) AS n FROM gone GROUP BY tenant_id, log) AS c
    WHERE l.tenant_id = c.tenant_id AND l.log = c.log
)
SELECT g.tenant_id, g.log, g.cursor, g.notification_id, n.priority, n.created_at,
    g.expires_at, n.payload, n.trace_context
FROM gone AS g
JOIN herald_notifications AS n
    ON n.tenant_id = g.tenant_id AND n.notification_id = g.notification_id
ORDER BY g.tenant_id, g.log, g.cursor
"""

# Expired notifications no entry refers to any more (their last entries expired, or the bound
# dropped them earlier): a payload lives until its notification expires, never longer.
_COLLECT: Final = """
DELETE FROM herald_notifications
WHERE (tenant_id, notification_id) IN (
    SELECT n.tenant_id, n.notification_id FROM herald_notifications AS n
    WHERE n.expires_at <= $1 AND NOT EXISTS (
        SELECT 1 FROM herald_log_entries AS e
        WHERE e.tenant_id = n.tenant_id AND e.notification_id = n.notification_id
    )
    ORDER BY n.expires_at
    LIMIT $2
) AND expires_at <= $1
"""


def _entry(row: asyncpg.Record, offset: int = 0) -> Entry:
    cursor, notification_id, priority, created_at, expires_at, field_bytes, trace = row[offset:]
    return Entry(cursor, notification_id, priority, created_at, expires_at, field_bytes, trace)


@dataclass(slots=True)
class _Planned:
    """One log of an append call: where it stood when locked, and what the call does to it."""

    epoch: int
    next_cursor: int
    live_before: int
    live: int
    appended: list[Entry] = field(default_factory=list)
    # How many of the oldest entries (stored before, then appended now) the bound pushes out.
    dropping: int = 0

    @property
    def from_stored(self) -> int:
        """How many of the dropped entries were stored before this call."""
        return min(self.dropping, self.live_before)


class PostgresLogStore:
    """Logs in PostgreSQL, on a pool it shares and does not close.

    `status` is the store whose records `append` creates (in the append's transaction); without
    one, `append` ignores `records`.
    """

    def __init__(self, pool: asyncpg.Pool, status: PostgresStatusStore | None = None) -> None:
        self._pool = pool
        self._status = status

    async def append(
        self, tenant: str, appends: Sequence[LogAppend], records: Sequence[NewRecord] = ()
    ) -> list[AppendResult]:
        if not appends and not (records and self._status is not None):
            return []
        # Each append's log as stored, computed once (the one-statement path uses it thrice).
        logs = [append.key.stored for append in appends]
        one_statement = _one_statement(appends, logs)
        for attempt in range(1, _APPEND_ATTEMPTS + 1):
            try:
                if one_statement:
                    return await self._append_one(tenant, appends, logs, records)
                async with self._pool.acquire() as connection, connection.transaction():
                    return await self._append(connection, tenant, appends, records)
            except asyncpg.DeadlockDetectedError:
                if attempt == _APPEND_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def _append_one(
        self,
        tenant: str,
        appends: Sequence[LogAppend],
        logs: list[str],
        records: Sequence[NewRecord],
    ) -> list[AppendResult]:
        """The append as one statement (one round trip), then, only if it took a log past its
        bound, one more to cut it back (`_one_statement` says when this applies). `logs`: each
        append's log as stored."""
        singles = _singles(appends, logs, records) if self._status is not None else None
        try:
            if singles is not None:
                rows = await self._pool.fetch(_APPEND_SINGLES, tenant, singles)
            else:
                rows = await self._pool.fetch(
                    _APPEND_ONE, tenant, *self._one_arguments(appends, records)
                )
        except asyncpg.UniqueViolationError:
            # A notification stored already (a replayed send): nothing of this append was
            # stored; again, keeping what is stored (_APPEND_ONE_SQL says why not at first).
            rows = await self._pool.fetch(
                _APPEND_ONE_KEEPING, tenant, *self._one_arguments(appends, records)
            )
        heads = {row[0]: row for row in rows}
        results: list[AppendResult] = []
        over: list[LogAppend] = []
        for append, stored in zip(appends, logs, strict=True):
            _, epoch, next_cursor, live = heads[stored]
            first = next_cursor - len(append.entries)
            entries = [_appended(first + i, item) for i, item in enumerate(append.entries)]
            results.append(AppendResult(append.key, entries, epoch))
            if live > append.limit:
                over.append(append)
        if over:
            # The append is stored (committed) whatever happens to the cut: a cut that fails
            # leaves the log over its bound until the next append to it cuts it back.
            dropped: dict[str, list[Entry]] = {}
            try:
                rows = await self._pool.fetch(
                    _DROP_TO_LIMIT, tenant, [a.key.stored for a in over], [a.limit for a in over]
                )
            except (asyncpg.PostgresError, OSError, TimeoutError) as error:
                log.warning(
                    "could not cut logs back to their bound; the next append does",
                    extra={"error": repr(error)},
                )
                rows = []
            for row in rows:
                dropped.setdefault(row[0], []).append(_entry(row, 1))
            for result in results:
                result.dropped = dropped.get(result.key.stored, [])
        return results

    def _one_arguments(
        self, appends: Sequence[LogAppend], records: Sequence[NewRecord]
    ) -> tuple[list[Any], ...]:
        """_APPEND_ONE's arguments after the tenant ($2 to $6)."""
        by_log = {a.key.stored: a for a in appends}
        unique: dict[str, NewEntry] = {}
        # (log, position among the call's entries of the log, notification id, expiry).
        entry_rows: list[tuple[object, ...]] = []
        # (notification id, log) -> its position among the call's entries of the log.
        positions: dict[tuple[str, str], int] = {}
        for stored, append in by_log.items():
            for position, item in enumerate(append.entries, 1):
                notification_id = item.notification_id
                unique.setdefault(notification_id, item)
                entry_rows.append((stored, position, notification_id, item.expires_at))
                positions[(notification_id, stored)] = position
        made = _RecordArgs(records if self._status is not None else (), positions)
        return (
            [(log, len(by_log[log].entries)) for log in sorted(by_log)],
            [
                (
                    e.notification_id,
                    e.priority,
                    e.created_at,
                    e.expires_at,
                    e.notification_field,
                    e.trace_context,
                )
                for e in unique.values()
            ],
            entry_rows,
            made.records,
            made.recipients,
        )

    async def _append(
        self,
        connection: Connection,
        tenant: str,
        appends: Sequence[LogAppend],
        records: Sequence[NewRecord],
    ) -> list[AppendResult]:
        counts: dict[str, int] = {}
        for key, items, _ in appends:
            counts[key.stored] = counts.get(key.stored, 0) + len(items)
        # Sorted: every appender locks log rows in the same order, so they cannot deadlock.
        logs = sorted(counts)
        plans: dict[str, _Planned] = {}
        for start in range(0, len(logs), _ROWS_PER_STATEMENT):
            # In sorted order chunk after chunk: the lock order stays the same.
            chunk = logs[start : start + _ROWS_PER_STATEMENT]
            rows = await connection.fetch(_LOCK_LOGS, tenant, chunk, [counts[s] for s in chunk])
            for log, epoch, next_cursor, live in rows:
                n = counts[log]
                plans[log] = _Planned(epoch, next_cursor - n, live - n, live - n)
        # Cursors and the bound, append by append, as if each were its own call.
        drops: list[int] = []
        results: list[AppendResult] = []
        for key, items, limit in appends:
            plan = plans[key.stored]
            entries = [_appended(plan.next_cursor + i, item) for i, item in enumerate(items)]
            plan.next_cursor += len(entries)
            plan.appended.extend(entries)
            overflow = max(0, plan.live + len(entries) - limit)
            plan.live += len(entries) - overflow
            plan.dropping += overflow
            drops.append(overflow)
            results.append(AppendResult(key, entries, plan.epoch))
        dropped = await self._write(connection, tenant, plans)
        # A log's pushed-out entries, oldest first, go to its appends in order: what one
        # append pushes out is always older than what the next one does.
        for result, overflow in zip(results, drops, strict=True):
            if overflow:
                pushed_out = dropped[result.key.stored]
                result.dropped = pushed_out[:overflow]
                del pushed_out[:overflow]
        if records and self._status is not None:
            await create_records(connection, with_cursors(records, results))
        return results

    async def _write(
        self, connection: Connection, tenant: str, plans: dict[str, _Planned]
    ) -> dict[str, list[Entry]]:
        """Stores the entries the bound keeps, deletes the oldest it pushes out; returns what
        it pushed out per log, oldest first."""
        kept: list[tuple[str, Entry]] = []
        for log, plan in plans.items():
            # The newest stay: of those just appended, the first ones may be pushed out at once.
            skipped = plan.dropping - plan.from_stored
            kept.extend((log, entry) for entry in plan.appended[skipped:])
        if kept:
            # Each notification once, however many logs (or times) it is appended to.
            unique: dict[str, Entry] = {}
            for _, entry in kept:
                unique.setdefault(entry.notification_id, entry)
            notifications: Sequence[Entry] = list(unique.values())
            for start in range(0, len(kept), _ROWS_PER_STATEMENT):
                batch = kept[start : start + _ROWS_PER_STATEMENT]
                await connection.execute(
                    _INSERT,
                    tenant,
                    [e.notification_id for e in notifications],
                    [e.priority for e in notifications],
                    [e.created_at for e in notifications],
                    [e.expires_at for e in notifications],
                    [e.notification_field for e in notifications],
                    [log for log, _ in batch],
                    [e.cursor for _, e in batch],
                    [e.notification_id for _, e in batch],
                    [e.expires_at for _, e in batch],
                    [e.trace_context for e in notifications],
                )
                # The notifications go with the first statement, their entries with every one.
                notifications = ()
        dropping = [log for log, plan in plans.items() if plan.dropping]
        dropped: dict[str, list[Entry]] = {log: [] for log in dropping}
        for start in range(0, len(dropping), _ROWS_PER_STATEMENT):
            chunk = dropping[start : start + _ROWS_PER_STATEMENT]
            rows = await connection.fetch(
                _DROP_OLDEST,
                tenant,
                chunk,
                [plans[log].from_stored for log in chunk],
                [plans[log].dropping - plans[log].from_stored for log in chunk],
            )
            for row in rows:
                dropped[row[0]].append(_entry(row, 1))
        for log in dropping:
            plan = plans[log]
            dropped[log].extend(plan.appended[: plan.dropping - plan.from_stored])
        return dropped

    async def read(self, tenant: str, key: LogKey, after: int, limit: int) -> list[Entry]:
        if limit <= 0:
            return []
        rows = await self._pool.fetch(_READ, tenant, key.stored, after, limit)
        return [_entry(row) for row in rows]

    async def ids(self, tenant: str, key: LogKey, after: int, up_to: int) -> list[tuple[int, str]]:
        if up_to <= after:
            return []
        rows = await self._pool.fetch(_IDS, tenant, key.stored, after, up_to)
        return [(row[0], row[1]) for row in rows]

    async def read_reverse(self, tenant: str, key: LogKey, before: int, limit: int) -> list[Entry]:
        if limit <= 0:
            return []
        bound = before if before > 0 else _NO_BOUND
        rows = await self._pool.fetch(_READ_REVERSE, tenant, key.stored, bound, limit)
        return [_entry(row) for row in rows]

    async def heads(self, tenant: str, keys: Sequence[LogKey]) -> list[LogHead]:
        if not keys:
            return []
        rows = await self._pool.fetch(_HEADS, tenant, [key.stored for key in keys])
        return [LogHead(epoch, cursor) for epoch, cursor in rows]

    async def find(
        self, tenant: str, keys: Sequence[LogKey], notification_id: str
    ) -> tuple[LogKey, Entry] | None:
        if not keys:
            return None
        row = await self._pool.fetchrow(
            _FIND, tenant, [key.stored for key in keys], notification_id
        )
        return None if row is None else (keys[row[0] - 1], _entry(row, 1))

    async def notifications(
        self, tenant: str, wanted: Sequence[tuple[str, str]]
    ) -> dict[str, bytes]:
        # Each notification is stored once, whichever logs hold it: by id alone.
        ids = list(dict.fromkeys(notification_id for _, notification_id in wanted))
        if not ids:
            return {}
        rows = await self._pool.fetch(_NOTIFICATIONS, tenant, ids)
        return {row[0]: bytes(row[1]) for row in rows}

    async def size(self, tenant: str, key: LogKey) -> int:
        live = await self._pool.fetchval(_SIZE, tenant, key.stored)
        return 0 if live is None else int(live)

    async def locate(
        self, tenant: str, key: LogKey, notification_ids: Sequence[str]
    ) -> dict[str, tuple[int, float]]:
        if not notification_ids:
            return {}
        rows = await self._pool.fetch(_LOCATE, tenant, key.stored, list(notification_ids))
        return {row[0]: (row[1], row[2]) for row in rows}

    async def drop_expired(self, now: float, limit: int) -> list[Expired]:
        if limit <= 0:
            return []
        async with self._pool.acquire() as connection:
            rows = await connection.fetch(_DROP_EXPIRED, now, limit)
            await connection.execute(_COLLECT, now, limit)
        return [
            Expired(tenant, LogKey.from_stored(log), [_entry(row, 2) for row in group])
            for (tenant, log), group in itertools.groupby(rows, key=lambda row: (row[0], row[1]))
        ]

    async def aclose(self) -> None:
        # The pool belongs to whoever made it (services.postgres.PostgresBackend).
        return None


def _one_statement(appends: Sequence[LogAppend], logs: list[str]) -> bool:
    """An append can be one statement when each log appears once, with entries, and no more
    than its bound (otherwise some of them would be pushed out at once: `_append` handles it),
    and when it reaches at most `_ROWS_PER_STATEMENT` logs (a send to a large segment goes in
    statements of that many rows, in one transaction)."""
    if len(appends) > _ROWS_PER_STATEMENT:
        return False
    seen: set[str] = set()
    for (_, items, limit), stored in zip(appends, logs, strict=True):
        if not items or len(items) > limit or stored in seen:
            return False
        seen.add(stored)
    return bool(seen)


def _singles(
    appends: Sequence[LogAppend], logs: list[str], records: Sequence[NewRecord]
) -> list[tuple[object, ...]] | None:
    """_APPEND_SINGLES's rows, sorted by log, when every append is one notification to its one
    user's own log and the records are those notifications' (in the same order, as the
    dispatcher makes them); otherwise None. `_one_statement` has checked that each log comes
    once and within its bound."""
    if len(records) != len(appends):
        return None
    rows: list[tuple[object, ...]] = []
    for (key, items, _), stored, record in zip(appends, logs, records, strict=True):
        users = record.user_ids
        if len(items) != 1 or len(users) != 1 or key.kind != USER or key.name != users[0]:
            return None
        item = items[0]
        if item.notification_id != record.notification_id:
            return None
        rows.append(
            (
                stored,
                item.notification_id,
                item.priority,
                item.created_at,
                item.expires_at,
                item.notification_field,
                item.trace_context,
                record.target,
                key.name,
            )
        )
    # Each log once: the logs alone order the rows.
    rows.sort(key=_first)
    return rows


def _first(row: tuple[object, ...]) -> str:
    return row[0]  # type: ignore[return-value]


class _RecordArgs:
    """The status records of an append as _APPEND_ONE's $5 and $6: each user's entry named by
    its log and position (the statement turns them into cursors). A record stored already, or
    twice here, is kept as it first was, as `create_records` does."""

    def __init__(self, records: Sequence[NewRecord], positions: dict[tuple[str, str], int]) -> None:
        unique: dict[str, NewRecord] = {}
        for record in records:
            unique.setdefault(record.notification_id, record)
        # (id, target, created_at, expires_at, its one user, that user's log, the position of
        # its entry there): the last three None when it names several users or none.
        self.records: list[tuple[str, bytes, float, float, str | None, str | None, int | None]]
        self.records = []
        # (id, user, the user's log, the position of its entry there) of those naming several.
        self.recipients: list[tuple[str, str, str, int | None]] = []
        for r in unique.values():
            notification_id = r.notification_id
            if len(r.user_ids) == 1:
                user_id = r.user_ids[0]
                log = user_log(user_id).stored
                self.records.append(
                    (
                        notification_id,
                        r.target,
                        r.created_at,
                        r.expires_at,
                        user_id,
                        log,
                        positions.get((notification_id, log)),
                    )
                )
                continue
            self.records.append(
                (notification_id, r.target, r.created_at, r.expires_at, None, None, None)
            )
            for user_id in dict.fromkeys(r.user_ids):
                log = user_log(user_id).stored
                self.recipients.append(
                    (notification_id, user_id, log, positions.get((notification_id, log)))
                )


def with_cursors(records: Sequence[NewRecord], results: list[AppendResult]) -> list[NewRecord]:
    """The records with the cursor of each user's entry in their own log (0 where the log's
    bound pushed it out at once), which the status store derives states from."""
    cursors: dict[tuple[str, str], int] = {}
    for result in results:
        key = result.key
        if key.kind == USER:
            user_id = key.name
            for entry in result.entries:
                cursors[entry.notification_id, user_id] = entry.cursor
            for entry in result.dropped:
                cursors[entry.notification_id, user_id] = 0
    get = cursors.get
    found: list[NewRecord] = []
    for r in records:
        users = r.user_ids
        if not users:
            found.append(r)
            continue
        notification_id = r.notification_id
        if len(users) == 1:
            named: tuple[int, ...] = (get((notification_id, users[0]), 0),)
        else:
            named = tuple([get((notification_id, u), 0) for u in users])
        # NewRecord(...) by hand: one is made per notification, and _replace costs twice this.
        found.append(tuple.__new__(NewRecord, (*r[:6], named)))
    return found


def _appended(cursor: int, item: NewEntry) -> Entry:
    return Entry(
        cursor,
        item.notification_id,
        item.priority,
        item.created_at,
        item.expires_at,
        item.notification_field,
        item.trace_context,
    )
