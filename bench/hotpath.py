"""Herald's own cost per notification, in one process, without gRPC: the part of the server's
time that Python code in services/ decides.

    .venv/bin/python bench/hotpath.py [--users 1000] [--batch 250] [--rounds 5]
    .venv/bin/python bench/hotpath.py --profile production [--batch 13 --batches 400]

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

With `--profile production` the stores are the production profile's (a fresh PostgreSQL
database and Redis prefix, bench/production.py), the group commit and the status written behind
as `herald up` has them, and each figure is CPU, not wall time: this process's (the server's
share) and PostgreSQL's and Redis's (the stores' share, read from /proc), per notification,
the best of the rounds. Each round ends when every notification was written and acked, the
status waiting behind was flushed and the broker's publications were sent and read back, so
every cost of a delivery falls in its round. CPU per delivery moves far less from run to run
than the end-to-end bench's delivered/s on this shared machine, so a change to the production
path is measured here first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import uvloop
from delivery import BatchBuilder
from production import DEFAULT_PG_DSN, DEFAULT_REDIS_URL, StoreCpu, fresh_backends

from herald.v1 import ingest_pb2, stream_pb2
from services import auth
from services.backends import Stores, memory_stores
from services.backends_production import production_stores
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
from services.stream.status_buffered import WriteBehindStatusStore

TENANT = "bench"


def build(
    stores: Stores | None = None, group_window_s: float = 0.0
) -> tuple[DeliveryCore, IngestServicer]:
    config, clock = Config(), SystemClock()
    stores = stores or memory_stores(config)
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
        group_window_s=group_window_s,
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


async def measure_cpu(
    production: bool, users: int, batch: int, batches: int, rounds: int, senders: int
) -> tuple[float, float, float]:
    """Best CPU seconds per notification over `rounds`, each round `batches` SendBatch calls
    from `senders` concurrent callers, every notification delivered to an open session and
    acked: (this process's, PostgreSQL's, Redis's), the best round by their sum. `production`:
    on the production stores, with `herald up`'s group commit."""
    config = Config()  # HERALD_POSTGRES_DSN and the rest: from fresh_backends, in main
    if production:
        stores = await production_stores(config, SystemClock(), lambda *_: None)
        window_s = config.backends.group_commit_ms / 1000
    else:
        stores, window_s = memory_stores(config), 0.0
    try:
        delivery, servicer = build(stores, window_s)
        return await _production_rounds(
            delivery, servicer, stores, users, batch, batches, rounds, senders
        )
    finally:
        await stores.aclose()


async def _production_rounds(
    delivery: DeliveryCore,
    servicer: IngestServicer,
    stores: Stores,
    users: int,
    batch: int,
    batches: int,
    rounds: int,
    senders: int,
) -> tuple[float, float, float]:
    names = [f"user-{i}" for i in range(users)]
    written = 0
    goal = 0
    all_written = asyncio.Event()

    # user -> the cursor of the last delivery written to its session (what its client acks).
    received: dict[str, int] = {}

    def writer_of(name: str) -> Callable[[bytes], Awaitable[None]]:
        async def write(data: bytes) -> None:
            # Deliveries that waited together go in one stream message: count deliveries.
            nonlocal written
            deliveries = stream_pb2.SubscribeResponse.FromString(data).deliveries.deliveries
            if deliveries:
                received[name] = deliveries[-1].cursor
                written += len(deliveries)
                if written >= goal:
                    all_written.set()

        return write

    writers = []
    for name in names:
        session = await delivery.open(
            tenant=TENANT, user_id=name, device="bench", channels=[], cursors={}
        )
        writers.append(asyncio.create_task(delivery.run(session, writer_of(name))))
    await asyncio.sleep(0.5)  # every writer has written its session_started
    builder = BatchBuilder(names, 200)
    auth.set_principal(auth.Principal("bench-sender", TENANT, frozenset({auth.SCOPE_SEND})))

    async def sender(count: int) -> None:
        for _ in range(count):
            request = ingest_pb2.SendBatchRequest.FromString(builder.build(batch))
            await servicer.SendBatch(request, None)  # type: ignore[arg-type]

    async def one_round() -> tuple[float, float, float]:
        nonlocal goal
        goal = written + batches * batch
        all_written.clear()
        cpu = time.process_time()
        stores_cpu = StoreCpu()
        shares = [batches // senders + (i < batches % senders) for i in range(senders)]
        await asyncio.gather(*(sender(n) for n in shares))
        await all_written.wait()
        for name, cursor in received.items():
            await delivery.ack(TENANT, name, [], {"user": cursor})
        if isinstance(stores.status, WriteBehindStatusStore):
            await stores.status.flush()
        flush = getattr(stores.broker, "flush", None)
        if flush is not None:
            await flush()
        await asyncio.sleep(0.3)  # the node reads its own publications back from Redis
        used = stores_cpu.close()
        count = batches * batch
        return (time.process_time() - cpu) / count, used["pg"] / count, used["redis"] / count

    await one_round()  # warm-up
    results = [await one_round() for _ in range(rounds)]
    for task in writers:
        task.cancel()
    await asyncio.gather(*writers, return_exceptions=True)
    return min(results, key=sum)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--batches", type=int, default=40, help="SendBatch calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--profile",
        choices=("memory", "production"),
        default="memory",
        help="production: PostgreSQL + Redis stores (implies --cpu)",
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="CPU per notification delivered and acked, the stores' included",
    )
    parser.add_argument(
        "--senders", type=int, default=4, help="concurrent SendBatch callers (production)"
    )
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    tune_gc()
    if args.profile == "production" or args.cpu:
        server, pg, rd = await measure_cpu(
            args.profile == "production",
            args.users,
            args.batch,
            args.batches,
            args.rounds,
            args.senders,
        )
        print(
            f"{args.profile}, calls of {args.batch} from {args.senders} senders, delivered and "
            "acked, CPU per notification:"
        )
        print(f"  this process (the server): {server * 1e6:6.1f} µs")
        print(f"  PostgreSQL:                {pg * 1e6:6.1f} µs")
        print(f"  Redis:                     {rd * 1e6:6.1f} µs")
        print(f"  all:                       {(server + pg + rd) * 1e6:6.1f} µs")
        return
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
    arguments = parse()
    if arguments.profile == "production":
        # A fresh database and Redis prefix, dropped afterwards; the event loop `herald up` uses.
        with fresh_backends(DEFAULT_PG_DSN, DEFAULT_REDIS_URL) as backends:
            os.environ.update(backends.env)
            uvloop.run(main(arguments))
    elif arguments.cpu:
        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
