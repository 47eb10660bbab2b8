"""Ingestion from the transactional outbox table `herald_outbox` (docs/ingestion.md).

Each pass takes up to a batch of due rows in one transaction, `FOR UPDATE SKIP LOCKED`, so
several ingest nodes share the table and never hold the same row; it accepts them through
`Intake` (IngestCore, as SendBatch) and, in the same transaction, deletes the accepted ones,
marks the failed ones (attempts, last_error, a backoff; dead_at for the dead-lettered) and
leaves the pushed-back ones as they were. A crash between the accept and the commit leaves the
rows to be taken again: their idempotency key (the row's own, else `outbox:<id>`) makes that a
duplicate, never a second send.

Passes run when a NOTIFY on `herald_outbox` says rows were committed (the table's trigger),
at once again while a pass found a full batch, and every `poll_interval_s` anyway: NOTIFY is
not durable (a listener reconnecting misses what was sent meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

import asyncpg

from services.config import OutboxSettings
from services.errors import InvalidArgument
from services.ingest.intake import Arrival, Intake, Result, Verdict, backoff, decode_notification
from services.postgres import create_pool

log = logging.getLogger(__name__)

CHANNEL: Final = "herald_outbox"

_TAKE: Final = """
SELECT id, tenant_id, idempotency_key, payload, payload_json::text AS payload_json, attempts
FROM herald_outbox
WHERE dead_at IS NULL AND available_at <= now()
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
_DELETE: Final = "DELETE FROM herald_outbox WHERE id = ANY($1::bigint[])"
_FAIL: Final = """
UPDATE herald_outbox AS o
SET attempts = o.attempts + 1,
    last_error = f.error,
    available_at = now() + make_interval(secs => f.delay),
    dead_at = CASE WHEN f.dead THEN now() END
FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::bool[]) AS f (id, error, delay, dead)
WHERE o.id = f.id
"""
# What says "the outbox's database is not there": retried after a delay, never fatal.
_FAILURES: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.QueryCanceledError,
)


class OutboxSource:
    """Drains `herald_outbox` into `Intake`; `start` it, `aclose` it."""

    def __init__(
        self, intake: Intake, settings: OutboxSettings, dsn: str, statement_timeout_s: float
    ) -> None:
        self._intake = intake
        self._settings = settings
        self._dsn = dsn
        self._statement_timeout_s = statement_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Rows this source accepted, for operators and tests (the metric sums every source).
        self.accepted = 0

    async def start(self) -> None:
        """Connects (a pool, and a connection that listens) and starts draining.

        Raises:
            asyncpg errors or OSError: the database cannot be reached.
        """
        self._pool = await create_pool(
            self._dsn, min_size=1, max_size=2, statement_timeout_s=self._statement_timeout_s
        )
        await self._listen()
        self._task = asyncio.create_task(self._run(), name="herald-outbox")
        log.info(
            "outbox source draining", extra={"poll_interval_s": self._settings.poll_interval_s}
        )

    async def _listen(self) -> None:
        """(Re)opens the LISTEN connection; a pass follows, for what it missed meanwhile."""
        if self._listener is not None and not self._listener.is_closed():
            return
        with contextlib.suppress(*_FAILURES):
            if self._listener is not None:
                await self._listener.close(timeout=1)
        self._listener = None
        self._listener = await asyncpg.connect(self._dsn, timeout=10)
        await self._listener.add_listener(CHANNEL, self._notified)
        self._wake.set()

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _run(self) -> None:
        s = self._settings
        while not self._stopping:
            pause = 0.0
            taken = 0
            try:
                await self._listen()
                self._wake.clear()
                taken, pause = await self.drain_once()
            except _FAILURES as exc:
                self._intake.log.warning(
                    "outbox: database unreachable; retrying", kind="db", error=type(exc).__name__
                )
                pause = s.retry_delay_s
            except Exception as exc:
                self._intake.log.warning(
                    "outbox: unexpected error in a pass", kind="pass", error=type(exc).__name__
                )
                pause = s.retry_delay_s
            if pause > 0:
                await asyncio.sleep(pause)
            elif taken < s.batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), s.poll_interval_s)

    def _arrival(self, row: asyncpg.Record) -> Arrival:
        tenant = str(row["tenant_id"])
        key = str(row["idempotency_key"]) or f"outbox:{row['id']}"
        try:
            if row["payload"] is not None:
                notification = decode_notification(bytes(row["payload"]), "application/protobuf")
            else:
                text = str(row["payload_json"])
                notification = decode_notification(text.encode(), "application/json")
        except InvalidArgument as exc:
            return Arrival(tenant, None, key, exc)
        return Arrival(tenant, notification, key)

    async def drain_once(self) -> tuple[int, float]:
        """One pass: returns the rows taken and how long to pause (push-back)."""
        assert self._pool is not None  # noqa: S101 - set by start
        s = self._settings
        async with self._pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(_TAKE, s.batch)
            if not rows:
                return 0, 0.0
            self._intake.count("consumed", len(rows))
            self._intake.count("redelivered", sum(1 for r in rows if r["attempts"] > 0))
            results = await self._intake.accept([self._arrival(row) for row in rows])
            done: list[int] = []
            failed: list[tuple[Any, str, float, bool]] = []
            pause = 0.0
            for row, result in zip(rows, results, strict=True):
                if result.verdict is Verdict.ACCEPTED:
                    done.append(row["id"])
                elif result.verdict is Verdict.PUSHBACK:
                    pause = max(pause, result.retry_after_s)
                else:
                    failed.append(self._failure(row, result))
            if done:
                await connection.execute(_DELETE, done)
            if failed:
                await connection.execute(_FAIL, *map(list, zip(*failed, strict=True)))
        self.accepted += len(done)
        dead = sum(1 for f in failed if f[3])
        if dead:
            self._intake.count("dead_lettered", dead)
            self._intake.log.warning(
                "outbox: rows dead-lettered (dead_at and last_error set)", kind="dead", rows=dead
            )
        return len(rows), pause

    def _failure(self, row: asyncpg.Record, result: Result) -> tuple[Any, str, float, bool]:
        s = self._settings
        attempts = int(row["attempts"]) + 1
        dead = result.verdict is Verdict.DEAD or attempts >= s.max_attempts
        delay = 0.0 if dead else backoff(attempts, s.retry_delay_s, s.retry_delay_max_s)
        return row["id"], f"{result.code}: {result.reason}", delay, dead

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Stops after the pass in hand (its transaction commits or rolls back), then closes."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, grace_s)
        if self._listener is not None:
            with contextlib.suppress(*_FAILURES):
                await self._listener.close(timeout=1)
        if self._pool is not None:
            with contextlib.suppress(*_FAILURES):
                await asyncio.wait_for(self._pool.close(), grace_s)
