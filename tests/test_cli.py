"""Acceptance: `herald up`, `herald serve`, `tail`, `send` and `token` as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
import pytest_asyncio
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

HERALD = [sys.executable, "-m", "services"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cli:
    """Runs `herald` subprocesses sharing one data dir (so they share the dev key)."""

    def __init__(self, data_home: Path) -> None:
        self.env = {**os.environ, "XDG_DATA_HOME": str(data_home), "HERALD_LOG_LEVEL": "WARNING"}
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, *args: str, **env: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *HERALD,
            *args,
            env={**self.env, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    async def run(self, *args: str, **env: str) -> str:
        proc = await self.start(*args, **env)
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return out.decode()

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.terminate()
                try:
                    async with asyncio.timeout(10):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


@pytest_asyncio.fixture
async def cli(tmp_path: Path) -> AsyncIterator[Cli]:
    runner = Cli(tmp_path / "data")
    try:
        yield runner
    finally:
        await runner.stop()


async def _wait_serving(address: str, service: str = "") -> None:
    async with aio.insecure_channel(address) as channel, asyncio.timeout(20):
        await channel.channel_ready()
        stub = health_pb2_grpc.HealthStub(channel)
        # Watch streams the status as it changes: no polling.
        async for response in stub.Watch(health_pb2.HealthCheckRequest(service=service)):
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return


async def _subscribed(tail: asyncio.subprocess.Process) -> str:
    assert tail.stderr is not None
    async with asyncio.timeout(20):
        line = (await tail.stderr.readline()).decode()
    assert line.startswith("subscribed as"), line
    return line


async def _tail_and_send(cli: Cli, stream_address: str, ingest_address: str) -> None:
    tail = await cli.start(
        "tail", "--user", "alice", "--tenant", "acme", "--count", "2", HERALD_ADDRESS=stream_address
    )
    assert "alice@acme" in await _subscribed(tail)
    sent = json.loads(
        await cli.run(
            "send",
            "--tenant",
            "acme",
            "--user",
            "bob",
            "--title",
            "not for alice",
            HERALD_ADDRESS=ingest_address,
        )
    )
    first = json.loads(
        await cli.run(
            "send",
            "--tenant",
            "acme",
            "--user",
            "alice",
            "--title",
            "Hello",
            "--body",
            "from the CLI",
            "--priority",
            "high",
            "--data",
            '{"order": 7}',
            HERALD_ADDRESS=ingest_address,
        )
    )
    second = json.loads(
        await cli.run(
            "send",
            "--tenant",
            "acme",
            "--users",
            "alice,carol",
            "--title",
            "Second",
            HERALD_ADDRESS=ingest_address,
        )
    )
    assert sent["recipientCount"] == 1
    assert second["recipientCount"] == 2
    assert tail.stdout is not None
    async with asyncio.timeout(20):
        out, _ = await tail.communicate()
    assert tail.returncode == 0
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [line["notification"]["id"] for line in lines] == [
        first["notificationId"],
        second["notificationId"],
    ]
    got = lines[0]["notification"]
    assert got["content"] == {"title": "Hello", "body": "from the CLI", "data": {"order": 7.0}}
    assert got["priority"] == "PRIORITY_HIGH"
    assert (lines[0]["log"], lines[0]["cursor"]) == ("user", 1)


async def test_up_then_tail_send_and_token(cli: Cli, tmp_path: Path) -> None:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    await cli.start("up", HERALD_PORT=str(port))
    for service in (
        "",
        "herald.v1.IngestService",
        "herald.v1.StreamService",
        "herald.v1.RegistryService",
    ):
        await _wait_serving(address, service)
    await _tail_and_send(cli, address, address)

    token = (await cli.run("token", "--user", "alice", "--tenant", "acme")).strip()
    key = (tmp_path / "data" / "herald" / "dev-signing-key").read_bytes()
    claims = jwt.decode(token, key, algorithms=["HS256"], audience="herald", issuer="herald")
    assert (claims["sub"], claims["tenant"], claims["scope"]) == ("alice", "acme", "subscribe")
    assert claims["exp"] > claims["iat"]


async def test_serve_each_service_on_its_own(cli: Cli) -> None:
    ports = {role: _free_port() for role in ("registry", "stream", "ingest")}
    addr = {role: f"127.0.0.1:{port}" for role, port in ports.items()}
    await cli.start("serve", "registry", HERALD_PORT=str(ports["registry"]))
    await _wait_serving(addr["registry"], "herald.v1.RegistryService")
    await cli.start(
        "serve",
        "stream",
        HERALD_PORT=str(ports["stream"]),
        HERALD_REGISTRY_ADDRESS=addr["registry"],
    )
    await _wait_serving(addr["stream"], "herald.v1.StreamService")
    await cli.start(
        "serve", "ingest", HERALD_PORT=str(ports["ingest"]), HERALD_STREAM_ADDRESS=addr["stream"]
    )
    await _wait_serving(addr["ingest"], "herald.v1.IngestService")
    await _tail_and_send(cli, addr["stream"], addr["ingest"])


async def test_cli_errors_are_one_clear_line(cli: Cli) -> None:
    proc = await cli.start("send", "--user", "alice", "--title", "x", HERALD_ADDRESS="127.0.0.1:1")
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().startswith("herald: UNAVAILABLE")
    assert "Traceback" not in err.decode()


async def test_production_mode_refuses_to_start_without_keys(cli: Cli) -> None:
    proc = await cli.start("up", HERALD_PORT=str(_free_port()), HERALD_AUTH_MODE="production")
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "production mode needs HERALD_AUTH_SECRET" in err.decode()


async def test_metrics_are_served_when_asked_for(cli: Cli) -> None:
    port, metrics_port = _free_port(), _free_port()
    address = f"127.0.0.1:{port}"
    await cli.start("up", HERALD_PORT=str(port), HERALD_METRICS_PORT=str(metrics_port))
    await _wait_serving(address)
    await cli.run(
        "send", "--tenant", "acme", "--user", "alice", "--title", "x", HERALD_ADDRESS=address
    )

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    text = await asyncio.to_thread(scrape)
    assert "herald_notifications_accepted_total 1.0" in text
    assert "herald_sessions_open 0.0" in text


async def test_a_second_herald_on_a_port_in_use_refuses_to_start(cli: Cli) -> None:
    # Before, it started silently and the kernel split the clients between two servers with
    # separate stores: sends answered OK never reached their subscriber.
    port = _free_port()
    await cli.start("up", HERALD_PORT=str(port))
    await _wait_serving(f"127.0.0.1:{port}")
    second = await cli.start("up", HERALD_PORT=str(port))
    async with asyncio.timeout(30):
        _, err = await second.communicate()
    assert second.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in err.decode()
    assert "Traceback" not in err.decode()


async def test_one_production_backend_without_the_other_is_refused(cli: Cli) -> None:
    proc = await cli.start(
        "up", HERALD_PORT=str(_free_port()), HERALD_REDIS_URL="redis://127.0.0.1:6379/0"
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "needs both HERALD_POSTGRES_DSN and HERALD_REDIS_URL" in err.decode()
    assert "HERALD_POSTGRES_DSN is not set" in err.decode()


async def test_workers_need_the_shared_stores(cli: Cli) -> None:
    proc = await cli.start("serve", "stream", "--workers", "2", HERALD_PORT=str(_free_port()))
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "--workers needs the production profile" in err.decode()
