"""Herald as separate processes on shared PostgreSQL and Redis: start, kill -9, restart.

`shared_cluster` is the usual fixture body: a Cluster on the shared servers, on a scratch
database and a fresh Redis key prefix, both gone afterwards.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from services import auth
from services.client import HeraldClient
from services.config import AuthSettings
from tests.harness import Tokens
from tests.postgres import scratch_database
from tests.redis_support import REDIS_URL, delete_prefix, new_prefix, redis_client, require_redis

HERALD = [sys.executable, "-m", "services"]
SERVICE_OF_ROLE = {
    "ingest": "herald.v1.IngestService",
    "stream": "herald.v1.StreamService",
    "registry": "herald.v1.RegistryService",
    "up": "",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_serving(address: str, service: str = "", within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while True:
            try:
                async with aio.insecure_channel(address) as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    response = await stub.Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=2
                    )
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)


@dataclass
class Member:
    role: str
    name: str
    port: int
    proc: asyncio.subprocess.Process

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Cluster:
    """Processes sharing one PostgreSQL database, one Redis key prefix and one signing secret."""

    data_home: Path
    postgres_dsn: str
    redis_url: str
    redis_prefix: str
    extra_env: dict[str, str] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    clients: list[HeraldClient] = field(default_factory=list)
    secret: str = field(default_factory=lambda: secrets.token_hex(32))

    def __post_init__(self) -> None:
        self.data_home.mkdir(parents=True, exist_ok=True)
        settings = AuthSettings(mode="production", secret=SecretStr(self.secret))
        self.tokens = Tokens(auth.TokenMinter(auth.load_keys(settings, self.data_home), settings))

    def env(self, **more: str) -> dict[str, str]:
        return {
            **os.environ,
            "XDG_DATA_HOME": str(self.data_home),
            "HERALD_LOG_LEVEL": "WARNING",
            "HERALD_AUTH_MODE": "production",
            "HERALD_AUTH_SECRET": self.secret,
            # Plaintext on loopback: production mode allows it only when told TLS ends in front.
            "HERALD_TLS_TERMINATED_UPSTREAM": "true",
            "HERALD_POSTGRES_DSN": self.postgres_dsn,
            "HERALD_REDIS_URL": self.redis_url,
            "HERALD_REDIS_PREFIX": self.redis_prefix,
            "HERALD_SHUTDOWN_GRACE_S": "2",
            # Any free port unless a test names one: the default (8081) would collide.
            "HERALD_WS_PORT": "0",
            **self.extra_env,
            **more,
        }

    async def start(
        self, role: str, name: str = "", port: int = 0, *more_args: str, **env: str
    ) -> Member:
        port = port or free_port()
        name = name or f"{role}-{len(self.members)}"
        args = ["up"] if role == "up" else ["serve", role, *more_args]
        # A file, not a pipe: a chatty node must never block on a full pipe.
        log_file = (self.data_home / f"{name}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            *HERALD,
            *args,
            env=self.env(
                HERALD_PORT=str(port),
                HERALD_NODE_ID=name,
                HERALD_ADVERTISE_ADDRESS=f"127.0.0.1:{port}",
                **env,
            ),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
        log_file.close()
        member = Member(role, name, port, proc)
        self.members.append(member)
        try:
            await wait_serving(member.address, SERVICE_OF_ROLE[role])
        except TimeoutError:
            await self.kill(member)
            output = (self.data_home / f"{name}.log").read_text(errors="replace")
            raise AssertionError(f"{name} did not start: {output[-2000:]}") from None
        return member

    async def kill(self, member: Member) -> None:
        """kill -9: no shutdown, nothing flushed."""
        if member.proc.returncode is None:
            member.proc.send_signal(signal.SIGKILL)
            await member.proc.wait()

    def backend(self, member: Member, tenant: str = "acme") -> HeraldClient:
        client = HeraldClient(member.address, self.tokens.backend(tenant))
        self.clients.append(client)
        return client

    def user(self, member: Member, user: str, tenant: str = "acme") -> HeraldClient:
        client = HeraldClient(member.address, self.tokens.user(tenant, user))
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        for member in self.members:
            if member.proc.returncode is None:
                member.proc.terminate()
        for member in self.members:
            if member.proc.returncode is None:
                try:
                    async with asyncio.timeout(10):
                        await member.proc.wait()
                except TimeoutError:
                    await self.kill(member)


@asynccontextmanager
async def shared_cluster(
    tmp_path: Path, extra_env: dict[str, str] | None = None
) -> AsyncIterator[Cluster]:
    """A Cluster on the shared PostgreSQL (a scratch database) and Redis (a fresh key prefix);
    its processes are stopped and its keys deleted afterwards."""
    await require_redis()
    prefix = new_prefix()
    async with scratch_database() as dsn:
        cluster = Cluster(tmp_path / "data", dsn, REDIS_URL, prefix, extra_env=extra_env or {})
        try:
            yield cluster
        finally:
            await cluster.stop()
            async with redis_client() as client:
                await delete_prefix(client, prefix)
