"""Herald's own cost per notification, in one process, without gRPC: the part of the server's
time that Python code in services/ decides.

    .venv/bin/python bench/hotpath.py [--users 1000] [--batch 250] [--rounds 5]

Two measurements, each the best of `--rounds` (the minimum is the least disturbed by other work
on a shared machine):

1. ingest: `IngestServicer.SendBatch` (validation, ids, logs, status) with nobody subscribed;
2. ingest and delivery: the same with one open session per user, each with a writer whose `write`
   does nothing, until every notification has been handed to its writer.

The difference between the two is the delivery bookkeeping per delivery (session queues, ack
timers, DELIVERED status, framing). A third measurement times the acks: after each round of 2,
every user acks `up_to` its head in one `Ack` call (what the client's auto-ack sends), and the
time of those calls is divided by the entries they acked. The collector is tuned as in
`herald up`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from delivery import BatchBuilder

from herald.v1 import ingest_pb2
from services import auth
from services.backends import memory_stores
from services.clock import SystemClock
from services.config import Config, RateLimitSettings
from services.ingest.core import IngestCore
from services.ingest.servicer import IngestServicer
from services.ratelimit.admission import Admission
from services.ratelimit.limiter_memory import MemoryRateLimiter
from services.registry.core import RegistryCore
from services.server import tune_gc
from services.stream.delivery import DeliveryCore
from services.stream.dispatch import Dispatcher

TENANT = "bench"


def build() -> tuple[DeliveryCore, IngestServicer]:
    config, clock = Config(), SystemClock()
    stores = memory_stores(config)
    registry = RegistryCore(
        stores.sessions, stores.templates, config.registry, clock, lambda _: None
    )
    delivery = DeliveryCore(
        node_id="bench",
        node_address="",
        logs=stores.logs,
        acks=stores.acks,
        status=stores.status,
        broker=stores.broker,
        registry=registry,
        settings=config.delivery,
        clock=clock,
    )
    dispatcher = Dispatcher(
        logs=stores.logs,
        status=stores.status,
        broker=stores.broker,
        settings=config.delivery,
        clock=clock,
    )
    ingest = IngestCore(dispatcher, stores.idempotency, config.ingest, clock, registry)
    # The hot path of delivery, without rate limits (they are measured on their own).
    admission = Admission(MemoryRateLimiter(clock), RateLimitSettings(enabled=False))
    return delivery, IngestServicer(ingest, admission)


async def best_of(rounds: int, run: Callable[[], Awaitable[None]]) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        await run()
        best = min(best, time.perf_counter() - started)
    return best


async def measure(
    users: int, batch: int, batches: int, rounds: int, sessions: bool, acks: bool = False
) -> float:
    """Best seconds per notification over `rounds` of `batches` SendBatch calls (with `acks`:
    best seconds per acked entry of the acks that follow each round)."""
    delivery, servicer = build()
    names = [f"user-{i}" for i in range(users)]
    written = 0
    goal = 0
    all_written = asyncio.Event()

    async def write(_data: bytes) -> None:
        nonlocal written
        written += 1
        if written >= goal:
            all_written.set()

    writers = []
    if sessions:
        for name in names:
            session = await delivery.open(
                tenant=TENANT, user_id=name, device="bench", channels=[], cursors={}
            )
            writers.append(asyncio.create_task(delivery.run(session, write)))
    await asyncio.sleep(0.1)  # every writer has written its session_started
    builder = BatchBuilder(names, 200)
    requests = [
        ingest_pb2.SendBatchRequest.FromString(builder.build(batch))
        for _ in range(batches * (rounds + 1))
    ]
    auth.set_principal(auth.Principal("bench-sender", TENANT, frozenset({auth.SCOPE_SEND})))
    pending = iter(requests)

    async def one_round() -> None:
        nonlocal goal
        goal = written + batches * batch
        all_written.clear()
        for _ in range(batches):
            await servicer.SendBatch(next(pending), None)  # type: ignore[arg-type]
            await asyncio.sleep(0)  # let the writers run, as the server's loop would
        if sessions:
            await all_written.wait()

    async def ack_round() -> None:
        for name in names:
            await delivery.ack(TENANT, name, [], {"user": 1 << 62})

    async def round_then_acks() -> float:
        await one_round()
        started = time.perf_counter()
        await ack_round()
        return time.perf_counter() - started

    if acks:
        await round_then_acks()  # warm-up
        seconds = min([await round_then_acks() for _ in range(rounds)])
    else:
        await one_round()  # warm-up
        seconds = await best_of(rounds, one_round)
    for task in writers:
        task.cancel()
    await asyncio.gather(*writers, return_exceptions=True)
    return seconds / (batches * batch)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--batches", type=int, default=40, help="SendBatch calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tune_gc()
    ingest = await measure(args.users, args.batch, args.batches, args.rounds, sessions=False)
    both = await measure(args.users, args.batch, args.batches, args.rounds, sessions=True)
    acks = await measure(
        args.users, args.batch, args.batches, args.rounds, sessions=True, acks=True
    )
    print(f"ingest only:           {ingest * 1e6:6.1f} µs per notification")
    print(f"ingest and delivery:   {both * 1e6:6.1f} µs per notification (one delivery each)")
    print(f"delivery bookkeeping:  {(both - ingest) * 1e6:6.1f} µs per delivery (the difference)")
    print(f"acks (up_to, per user): {acks * 1e6:5.1f} µs per acked entry")


if __name__ == "__main__":
    asyncio.run(main())
