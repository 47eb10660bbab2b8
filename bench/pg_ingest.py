"""PostgreSQL ingest benchmark: PostgresLogStore.append with status records, as dispatch calls it.

    .venv/bin/python bench/pg_ingest.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
                                        [--batches 40] [--batch 500] [--payload 200]

It makes a throwaway database on the server of `--dsn` (dropped at the end), migrates it, and
for 1 and 4 concurrent appenders (one pool connection each) measures:

- fresh logs: each call appends `--batch` notifications, each to one user's log (users
  round-robin over 100,000), and creates each notification's status record (one QUEUED
  recipient) in the same transaction;
- full logs: the same, over `--batch` users whose logs are at their bound (20 entries), so every
  append also pushes the oldest entry out (deleted and returned);
- status apply: `--batch` DELIVERED transitions per call, then as many ACKED, on the records the
  appends made.

It prints notifications (or transitions) per second and the p50 / p99 latency of one call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from services.domain import NewRecord, State, Transition, user_log
from services.postgres import PostgresBackend
from services.stream.log import LogAppend, NewEntry

TENANT = "bench"
FULL_LIMIT = 20


@dataclass
class Result:
    name: str
    appenders: int
    items: int
    seconds: float
    latencies: list[float]

    def row(self) -> str:
        p50 = statistics.median(self.latencies) * 1000
        p99 = statistics.quantiles(self.latencies, n=100)[98] * 1000
        rate = self.items / self.seconds
        return (
            f"{self.name:<22} {self.appenders:>9} {rate:>12,.0f} {p50:>9.1f} {p99:>9.1f}"
            f" {self.items:>9,}"
        )


class Load:
    """Batches of notifications, each to one user, with unique ids."""

    def __init__(self, batch: int, payload: int) -> None:
        self.batch = batch
        # Opaque to the store: any bytes of the size of an encoded notification field.
        self.payload = os.urandom(payload)
        self.serial = 0

    def next_batch(self, users: Callable[[int], str]) -> tuple[list[LogAppend], list[NewRecord]]:
        now = time.time()
        appends, records = [], []
        for _ in range(self.batch):
            self.serial += 1
            notification_id = f"n{self.serial:012d}"
            user = users(self.serial)
            entry = NewEntry(notification_id, 2, now, now + 86_400, self.payload)
            appends.append(LogAppend(user_log(user), [entry], 1000))
            records.append(
                NewRecord(
                    notification_id,
                    TENANT,
                    b"\x0a\x05" + user.encode()[:5],
                    now,
                    now + 86_400,
                    (user,),
                )
            )
        return appends, records


async def timed(
    name: str, appenders: int, calls: int, items_per_call: int, call: Callable[[], Awaitable[None]]
) -> Result:
    latencies: list[float] = []
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(appenders)))
    return Result(name, appenders, calls * items_per_call, time.perf_counter() - started, latencies)


def applying(
    backend: PostgresBackend, chunks: list[list[asyncpg.Record]], state: State
) -> Callable[[], Awaitable[None]]:
    """A call that moves the recipients of the next chunk to `state`."""
    pending = list(chunks)

    async def apply() -> None:
        transitions = [Transition(row[0], row[1], state) for row in pending.pop()]
        await backend.status.apply(TENANT, transitions, time.time())

    return apply


async def run(dsn: str, batches: int, batch: int, payload: int) -> list[Result]:
    load = Load(batch, payload)
    results = []
    backend = await PostgresBackend.open(dsn, min_size=4, max_size=4)
    try:
        for appenders in (1, 4):
            await backend.pool.execute(
                "TRUNCATE herald_logs, herald_log_entries, herald_notifications, herald_status,"
                " herald_recipients"
            )

            async def fresh() -> None:
                appends, records = load.next_batch(lambda n: f"user-{n % 100_000}")
                await backend.logs.append(TENANT, appends, records)

            results.append(await timed("append, fresh logs", appenders, batches, batch, fresh))

            def full_user(n: int) -> str:
                return f"full-{n % batch}"

            # Fill the logs to their bound first: from then on every append pushes one out.
            for _ in range(FULL_LIMIT):
                appends, records = load.next_batch(full_user)
                bounded = [LogAppend(a.key, a.entries, FULL_LIMIT) for a in appends]
                await backend.logs.append(TENANT, bounded, records)

            async def full() -> None:
                appends, records = load.next_batch(full_user)
                bounded = [LogAppend(a.key, a.entries, FULL_LIMIT) for a in appends]
                [first, *_] = await backend.logs.append(TENANT, bounded, records)
                assert len(first.dropped) == 1

            results.append(await timed("append, full logs", appenders, batches, batch, full))

            ids = await backend.pool.fetch(
                "SELECT notification_id, user_id FROM herald_recipients LIMIT $1", batches * batch
            )
            chunks = [ids[i : i + batch] for i in range(0, len(ids), batch)]
            for state in (State.DELIVERED, State.ACKED):
                apply = applying(backend, chunks, state)
                name = f"status apply {state.name}"
                results.append(await timed(name, appenders, len(chunks), batch, apply))
    finally:
        await backend.aclose()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--payload", type=int, default=200)
    args = parser.parse_args()
    database = f"herald_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(args.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        server = args.dsn.rsplit("/", 1)[0] if args.dsn.count("/") > 2 else args.dsn
        results = await run(f"{server}/{database}", args.batches, args.batch, args.payload)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
    print(f"batches of {args.batch}, {args.payload} B payloads, {args.batches} calls per row")
    print(f"{'':<22} {'appenders':>9} {'per second':>12} {'p50 ms':>9} {'p99 ms':>9} {'items':>9}")
    for result in results:
        print(result.row())


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
