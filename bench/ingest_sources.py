"""Ingestion-source benchmark: notifications per second from NATS JetStream and from the outbox
into durable logs (the production profile, one `herald up` node in this process).

    .venv/bin/python bench/ingest_sources.py [--count 20000] [--batch 500] [--users 1000]
        [--dsn postgresql://postgres@127.0.0.1:5432/postgres] [--redis redis://127.0.0.1:6379/0]
        [--nats nats://127.0.0.1:4222] [--only jetstream|outbox] [--concurrency 1]

For each source it first writes `--count` notifications (to `--users` users round-robin, ~100 B
of content each): published to a fresh JetStream stream, or inserted into `herald_outbox` in one
transaction. Then it starts the node and measures the time until all of them are settled
(every message acked; the table empty), which includes validation, idempotency claims, the
appends to the users' logs and status records in PostgreSQL, and settling. Rate limits are off
(they would be the bound otherwise). A throwaway database and Redis prefix are made and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import time
import uuid
from dataclasses import replace
from pathlib import Path
from tempfile import TemporaryDirectory

import asyncpg
import nats
import nats.js.errors
from google.protobuf import json_format
from pydantic import SecretStr

from herald.v1 import notification_pb2
from services.config import (
    AuthSettings,
    BackendSettings,
    Config,
    JetStreamSettings,
    OutboxSettings,
    RateLimitSettings,
    ServerSettings,
    TLSSettings,
)
from services.server import start_node


def notification(index: int, users: int) -> notification_pb2.Notification:
    n = notification_pb2.Notification()
    n.target.user_id = f"user-{index % users}"
    n.content.title = f"Order {index} shipped"
    n.content.body = "Your parcel is on its way and arrives tomorrow between 9 and 12."
    return n


def base_config(args: argparse.Namespace, dsn: str, data_dir: Path) -> Config:
    return Config(
        server=ServerSettings(host="127.0.0.1", port=0, data_dir=data_dir, log_level="WARNING"),
        auth=AuthSettings(mode="production", secret=SecretStr(secrets.token_hex(32))),
        tls=TLSSettings(terminated_upstream=True),
        rate_limit=RateLimitSettings(enabled=False),
        backends=BackendSettings(
            postgres_dsn=SecretStr(dsn),
            redis_url=SecretStr(args.redis),
            redis_prefix=f"herald-bench:{uuid.uuid4().hex}:",
        ),
    )


async def bench_jetstream(args: argparse.Namespace, config: Config) -> float:
    tag = uuid.uuid4().hex[:10]
    settings = JetStreamSettings(
        enabled=True,
        url=SecretStr(args.nats),
        stream=f"HERALD_BENCH_{tag}",
        subject=f"herald-bench.{tag}.*",
        durable=f"herald-bench-{tag}",
        dead_letter_subject=f"herald-bench.{tag}-dead",
        batch=args.batch,
        concurrency=args.concurrency,
    )
    client = await nats.connect(args.nats)
    js = client.jetstream()
    try:
        await js.add_stream(name=settings.stream, subjects=[settings.subject])
        subject = settings.subject.replace("*", "bench")
        for start in range(0, args.count, 1000):
            for i in range(start, min(args.count, start + 1000)):
                await js.publish_async(subject, notification(i, args.users).SerializeToString())
            await js.publish_async_completed()
        began = time.perf_counter()
        node = await start_node(replace(config, jetstream=settings))
        try:
            while True:
                info = await js.consumer_info(settings.stream, settings.durable)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.05)
            return time.perf_counter() - began
        finally:
            await node.stop(5)
    finally:
        for stream in (settings.stream, f"{settings.stream}_DEAD"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream)
        await client.close()


async def bench_outbox(args: argparse.Namespace, config: Config, dsn: str) -> float:
    backend = await asyncpg.connect(dsn)
    try:
        rows = [
            ("bench", json_format.MessageToJson(notification(i, args.users), indent=None))
            for i in range(args.count)
        ]
        await backend.executemany(
            "INSERT INTO herald_outbox (tenant_id, payload_json) VALUES ($1, $2::jsonb)", rows
        )
        began = time.perf_counter()
        node = await start_node(
            replace(config, outbox=OutboxSettings(enabled=True, batch=args.batch))
        )
        try:
            # The table is another server's state: polled, no event to wait on.
            while await backend.fetchval("SELECT count(*) FROM herald_outbox"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            return time.perf_counter() - began
        finally:
            await node.stop(5)
    finally:
        await backend.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1, help="JetStream batches in flight")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--only", choices=["jetstream", "outbox"])
    args = parser.parse_args()
    name = f"herald_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = args.dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        with TemporaryDirectory() as data_dir:
            print(f"{'source':<10} {'notifications':>13} {'seconds':>8} {'per second':>11}")
            for source in ("jetstream", "outbox"):
                if args.only and source != args.only:
                    continue
                config = base_config(args, dsn, Path(data_dir) / source)
                if source == "jetstream":
                    seconds = await bench_jetstream(args, config)
                else:
                    await (await start_node(config)).stop(1)  # creates herald_outbox
                    seconds = await bench_outbox(args, config, dsn)
                print(
                    f"{source:<10} {args.count:>13,} {seconds:>8.2f} {args.count / seconds:>11,.0f}"
                )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
