"""Segment send benchmark: one Send to a segment of `--members` users on the production profile
(one `herald up` node in this process, PostgreSQL and Redis), timed from the call to its answer,
when every member's log entry and the status record are durable.

    .venv/bin/python bench/segments.py [--members 100000] [--sends 3]
        [--dsn postgresql://postgres@127.0.0.1:5432/postgres] [--redis redis://127.0.0.1:6379/0]

It fills the segment first (AddSegmentMembers, 10,000 users a call; timed apart), then sends
`--sends` notifications to it one after another (the members' logs grow by one entry each time)
and prints, per send, the seconds and the member log entries appended per second. No session is
open: the cost measured is the send's (the read of the members, the appends, the status record,
the broker's wake-ups queued). A throwaway database and Redis prefix are made and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

import asyncpg
from pydantic import SecretStr

from herald.v1 import notification_pb2, registry_pb2, registry_pb2_grpc
from services import auth
from services.client import HeraldClient
from services.config import (
    AuthSettings,
    BackendSettings,
    Config,
    RateLimitSettings,
    ServerSettings,
    TLSSettings,
)
from services.registry.segments import MAX_BATCH
from services.server import start_node

TENANT = "bench"
SEGMENT = "everyone"


def config(args: argparse.Namespace, dsn: str, data_dir: Path) -> Config:
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


async def run(args: argparse.Namespace, dsn: str, data_dir: Path) -> None:
    settings = config(args, dsn, data_dir)
    node = await start_node(settings)
    keys = auth.load_keys(settings.auth, data_dir)
    token = auth.TokenMinter(keys, settings.auth).mint(
        "bench", TENANT, [auth.SCOPE_SEND, auth.SCOPE_TENANT_ADMIN]
    )
    client = HeraldClient(f"127.0.0.1:{node.port}", token)
    try:
        registry = registry_pb2_grpc.RegistryServiceStub(client._channel)
        md = client.metadata()
        await registry.CreateSegment(registry_pb2.CreateSegmentRequest(name=SEGMENT), metadata=md)
        members = [f"user-{i:06d}" for i in range(args.members)]
        began = time.perf_counter()
        for start in range(0, len(members), MAX_BATCH):
            await registry.AddSegmentMembers(
                registry_pb2.AddSegmentMembersRequest(
                    name=SEGMENT, user_ids=members[start : start + MAX_BATCH]
                ),
                metadata=md,
                timeout=60,
            )
        filled = time.perf_counter() - began
        print(f"fill    {args.members:>9,} members {filled:>7.2f} s")
        for index in range(args.sends):
            notification = notification_pb2.Notification()
            notification.target.segment = SEGMENT
            notification.content.title = f"Release {index} is out"
            notification.content.body = "What changed, and how to turn the new features on."
            began = time.perf_counter()
            sent = await client.send(notification, timeout=300)
            seconds = time.perf_counter() - began
            assert sent.recipient_count == args.members, sent
            print(
                f"send {index + 1:>2} {sent.recipient_count:>9,} members {seconds:>7.2f} s "
                f"{sent.recipient_count / seconds:>9,.0f} notifications/s"
            )
    finally:
        await client.close()
        await node.stop(5)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--sends", type=int, default=3)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    name = f"herald_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = args.dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        with TemporaryDirectory() as data_dir:
            await run(args, dsn, Path(data_dir))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
