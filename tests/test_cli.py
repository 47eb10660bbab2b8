"""Acceptance: `herald up`, `herald serve`, `tail`, `send` and `token` as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_asyncio
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.client_websocket import WebSocketSubscription
from services.config import ServerSettings

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

HERALD = [sys.executable, "-m", "services"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cli:
    """Runs `herald` subprocesses sharing one data dir (so they share the dev key)."""

    def __init__(self, data_home: Path) -> None:
        self.env = {
            **os.environ,
            "XDG_DATA_HOME": str(data_home),
            "HERALD_LOG_LEVEL": "WARNING",
            # Any free port: the default (8081) would collide with another test's node.
            "HERALD_WS_PORT": "0",
        }
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

    async def fail(self, *args: str, **env: str) -> str:
        """Runs a command that must fail: exit 2 and one `error: ...` line, no traceback."""
        proc = await self.start(*args, **env)
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
        assert proc.returncode == 2, (out, err)
        lines = err.decode().strip().splitlines()
        assert len(lines) == 1, err.decode()
        assert lines[0].startswith("error: "), err.decode()
        return lines[0]

    async def json(self, *args: str, **env: str) -> Any:
        return json.loads(await self.run(*args, "--json", **env))

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
    # JSON data as sent: the integer stays an integer (it travels as a Struct double).
    assert got["content"] == {"title": "Hello", "body": "from the CLI", "data": {"order": 7}}
    assert isinstance(got["content"]["data"]["order"], int)
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


async def test_up_serves_websocket_on_its_port(cli: Cli) -> None:
    port, ws_port = _free_port(), _free_port()
    address = f"127.0.0.1:{port}"
    await cli.start("up", "--ws-port", str(ws_port), HERALD_PORT=str(port))
    await _wait_serving(address)
    token = (await cli.run("token", "--user", "alice", "--tenant", "acme")).strip()
    sub = await WebSocketSubscription.open(f"ws://127.0.0.1:{ws_port}/ws", token)
    try:
        sent = json.loads(
            await cli.run(
                "send", "--tenant", "acme", "--user", "alice", "--title", "ws",
                HERALD_ADDRESS=address,
            )
        )  # fmt: skip
        [delivery] = await sub.take(1)
        assert delivery.notification.id == sent["notificationId"]
    finally:
        await sub.close()


async def test_the_websocket_port_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_WS_PORT", "off")
    assert ServerSettings().ws_port is None
    monkeypatch.setenv("HERALD_WS_PORT", "9000")
    assert ServerSettings().ws_port == 9000
    monkeypatch.delenv("HERALD_WS_PORT")
    assert ServerSettings().ws_port is None  # the settings' default; the command's is 8081


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
    assert err.decode().startswith("error: UNAVAILABLE: ")
    assert len(err.decode().strip().splitlines()) == 1
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
    token = "scrape-token-" + "z" * 24
    await cli.start(
        "up",
        HERALD_PORT=str(port),
        HERALD_METRICS_PORT=str(metrics_port),
        HERALD_METRICS_TOKEN=token,
    )
    await _wait_serving(address)
    await cli.run(
        "send", "--tenant", "acme", "--user", "alice", "--title", "x", HERALD_ADDRESS=address
    )

    def scrape(bearer: str) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{metrics_port}/metrics")
        request.add_header("Authorization", f"Bearer {bearer}")
        try:
            with urllib.request.urlopen(request, timeout=5) as r:  # noqa: S310
                return str(r.read().decode())
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code}"

    text = await asyncio.to_thread(scrape, token)
    assert "herald_notifications_accepted_total 1.0" in text
    assert "herald_sessions_open 0.0" in text
    # The node samples its event loop's lag from start-up on.
    lag_samples = re.search(r"^herald_event_loop_lag_seconds_count (\S+)$", text, re.MULTILINE)
    assert lag_samples is not None
    assert float(lag_samples.group(1)) >= 1
    # HERALD_METRICS_TOKEN: a scrape without it is refused.
    assert await asyncio.to_thread(scrape, "not-the-token") == "HTTP 401"


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


async def _up(cli: Cli, port: int = 0) -> str:
    port = port or _free_port()
    await cli.start("up", HERALD_PORT=str(port))
    address = f"127.0.0.1:{port}"
    await _wait_serving(address)
    return address


# About 20 CLI processes, each importing grpc, protobuf and pydantic: 15 s on a quiet machine,
# near a minute on a loaded one.
@pytest.mark.timeout(180)
async def test_operator_commands_sessions_presence_status_templates_inbox(cli: Cli) -> None:
    address = await _up(cli)
    env = {"HERALD_ADDRESS": address, "HERALD_TENANT": "acme"}
    # No ack during the test: on a loaded machine the commands below can take longer than the
    # default 5 s, and the status would be ACKED before it is read.
    tail = await cli.start("tail", "--user", "alice", "--ack-interval", "3600", **env)
    session_line = await _subscribed(tail)

    [session] = (await cli.json("sessions", "list", **env))["sessions"]
    assert session["sessionId"] in session_line
    assert (session["userId"], session["tenantId"], session["device"]) == ("alice", "acme", "cli")
    assert session["sessionId"] in await cli.run("sessions", "list", "--user", "alice", **env)
    assert (await cli.json("sessions", "list", "--user", "bob", **env))["sessions"] == []
    presence = (await cli.json("presence", "alice", "bob", **env))["users"]
    assert [(p["userId"], p["state"], p["sessionCount"]) for p in presence] == [
        ("alice", "PRESENCE_STATE_ONLINE", 1),
        ("bob", "PRESENCE_STATE_OFFLINE", 0),
    ]
    assert "alice  ONLINE  1" in await cli.run("presence", "alice", **env)

    sent = json.loads(
        await cli.run(
            "send", "--user", "alice", "--title", "Hi", "--data", '{"n": 1, "f": 0.5}', **env
        )
    )
    status = await cli.json("status", sent["notificationId"], **env)
    assert status["notificationId"] == sent["notificationId"]
    assert status["target"] == {"userId": "alice"}
    [recipient] = status["recipients"]
    assert recipient["userId"] == "alice"
    # The tail acks on its own 5 s tick from its start, which the CLI calls above can reach
    # (each is a process start): by now the notification may be acked already.
    assert recipient["state"] in (
        "DELIVERY_STATE_QUEUED",
        "DELIVERY_STATE_DELIVERED",
        "DELIVERY_STATE_ACKED",
    )
    assert "RECIPIENT" in await cli.run("status", sent["notificationId"], **env)

    put = await cli.json(
        "templates", "put", "welcome", "--title", "Hi {{name}}", "--body", "Welcome", **env
    )
    assert (put["templateId"], put["version"], put["defaultLocale"]) == ("welcome", 1, "en")
    assert (await cli.json("templates", "put", "welcome", "--body", "Again", **env))["version"] == 2
    got = await cli.json("templates", "get", "welcome", "--version", "1", **env)
    assert got["locales"]["en"]["title"] == "Hi {{name}}"
    assert [
        (t["templateId"], t["version"])
        for t in (await cli.json("templates", "list", **env))["templates"]
    ] == [("welcome", 2)]
    # The template renders on send.
    rendered = json.loads(await cli.run("send", "--user", "bob", "--title", "x", **env))
    assert rendered["recipientCount"] == 1
    assert (await cli.json("templates", "delete", "welcome", **env))["deletedVersions"] == 2
    assert "no templates" in await cli.run("templates", "list", **env)

    inbox = await cli.json("inbox", "--user", "alice", **env)
    [item] = inbox["items"]
    assert item["notification"]["id"] == sent["notificationId"]
    assert item["notification"]["content"]["data"] == {"n": 1, "f": 0.5}
    assert isinstance(item["notification"]["content"]["data"]["n"], int)
    assert item["cursor"] == 1
    marked = await cli.json(
        "inbox", "--user", "alice", "--mark-read", sent["notificationId"], **env
    )
    assert marked == {"marked": 1}
    assert "unread" not in await cli.run("inbox", "--user", "alice", **env)
    archived = await cli.json(
        "inbox", "--user", "alice", "--archive", sent["notificationId"], **env
    )
    assert archived == {"changed": 1, "counts": {"unseen": 0, "unread": 0, "total": 0}}
    assert "the inbox is empty" in await cli.run("inbox", "--user", "alice", **env)
    listed = await cli.json("inbox", "--user", "alice", "--filter", "archived", **env)
    assert [i["notification"]["id"] for i in listed["items"]] == [sent["notificationId"]]
    assert "unseen 0  unread 0  total 0" in await cli.run(
        "inbox", "--user", "alice", "--counts", **env
    )

    kicked = await cli.json("sessions", "kick", "--user", "alice", "--reason", "maintenance", **env)
    assert kicked == {"disconnected": 1}
    assert tail.stderr is not None
    async with asyncio.timeout(20):
        _, err = await tail.communicate()
    assert tail.returncode == 0
    assert "closed by the server: maintenance" in err.decode()
    assert "no open sessions" in await cli.run("sessions", "list", **env)


async def test_operator_errors_are_one_line_with_the_grpc_code(cli: Cli) -> None:
    address = await _up(cli)
    env = {"HERALD_ADDRESS": address, "HERALD_TENANT": "acme"}
    assert (await cli.fail("status", "no-such-id", **env)).startswith("error: NOT_FOUND: ")
    assert (await cli.fail("templates", "get", "nope", **env)).startswith("error: NOT_FOUND: ")
    user_token = (await cli.run("token", "--user", "alice", "--tenant", "acme")).strip()
    denied = await cli.fail("sessions", "list", "--token", user_token, **env)
    assert denied.startswith("error: PERMISSION_DENIED: ")
    assert (await cli.fail("templates", "put", "t", **env)) == (
        "error: give the template's text: --title and/or --body (or --file)"
    )
    assert await cli.json("sessions", "kick", "--session", "nope", **env) == {"disconnected": 0}


async def test_tail_shows_connection_state_while_it_reconnects(cli: Cli) -> None:
    port = _free_port()
    address = await _up(cli, port)
    server = cli.procs[-1]
    env = {"HERALD_ADDRESS": address, "HERALD_TENANT": "acme"}
    tail = await cli.start(
        "tail", "--user", "alice", "--count", "2", "--ack-interval", "0.2", **env
    )
    await _subscribed(tail)
    first = json.loads(await cli.run("send", "--user", "alice", "--title", "one", **env))
    # Acked over the tail's AckStream, which stays open.
    async with asyncio.timeout(20):
        while True:
            status = await cli.json("status", first["notificationId"], **env)
            if status["recipients"][0]["state"] == "DELIVERY_STATE_ACKED":
                break
            await asyncio.sleep(0.1)

    server.send_signal(signal.SIGTERM)
    async with asyncio.timeout(5):  # the grace period is 10 s: the AckStream must not hold it
        assert await server.wait() == 0
    assert tail.stderr is not None
    seen: list[str] = []

    async def until(text: str) -> None:
        assert tail.stderr is not None
        async with asyncio.timeout(20):
            while not any(text in line for line in seen):
                line = (await tail.stderr.readline()).decode()
                assert line, f"tail's stderr ended: {seen}"
                seen.append(line)

    await until("disconnected (REASON_SHUTDOWN: the server is shutting down")
    await until("disconnected (UNAVAILABLE: ")  # while nothing listens on the port
    assert "reconnecting in" in seen[-1]
    await _up(cli, port)
    await until("subscribed as alice@acme")
    second = json.loads(await cli.run("send", "--user", "alice", "--title", "two", **env))
    async with asyncio.timeout(20):
        out, rest = await tail.communicate()
    assert tail.returncode == 0
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [line["notification"]["id"] for line in lines] == [
        first["notificationId"],
        second["notificationId"],
    ]
    stderr = "".join(seen) + rest.decode()
    assert "Traceback" not in stderr
    # Before, each ack after a reconnect wrote to the AckStream the server had ended:
    # InvalidStateError "RPC already finished", logged with its traceback.
    assert "ack failed" not in stderr
    # What tail printed last is acked as it exits (before, it was not: it came again).
    status = await cli.json("status", second["notificationId"], **env)
    assert status["recipients"][0]["state"] == "DELIVERY_STATE_ACKED"


async def test_tenant_get_and_set_keep_what_they_are_not_told_to_change(cli: Cli) -> None:
    address = await _up(cli)
    env = {"HERALD_ADDRESS": address, "HERALD_TENANT": "acme"}
    got = await cli.json("tenant", "get", **env)
    assert got["settings"]["version"] == 0
    assert got["effectiveRateLimits"]["tenantSendRate"] == 10_000
    assert "no settings stored" in await cli.run("tenant", "get", **env)

    stored = await cli.json(
        "tenant",
        "set",
        "--tenant-send-rate",
        "0.001",
        "--tenant-send-burst",
        "1",
        "--signing-required",
        "true",
        "--compression",
        "zstd,gzip",
        "--default-ttl-seconds",
        "120",
        **env,
    )
    assert stored["version"] == 1
    assert stored["defaultTtlSeconds"] == 120
    assert stored["rateLimits"] == {"tenantSendRate": 0.001, "tenantSendBurst": 1}
    assert stored["streamPolicy"]["compression"] == ["zstd", "gzip"]
    assert stored["updatedBy"] == "herald-cli"
    # `set` keeps what it is not told to change.
    again = await cli.json("tenant", "set", "acme", "--key-send-rate", "50", **env)
    assert again["version"] == 2
    assert again["rateLimits"] == {
        "tenantSendRate": 0.001,
        "tenantSendBurst": 1,
        "keySendRate": 50.0,
    }
    assert again["streamPolicy"]["signingRequired"] is True
    text = await cli.run("tenant", "get", **env)
    assert "settings version 2" in text
    assert re.search(r"\nsend, per tenant +0\.001 +1 +tenant settings\n", text), text
    assert re.search(r"\nsend, per service key +50 +10000 +tenant settings\n", text), text
    assert re.search(r"\nsubscribe, per user +5 +30 +node\n", text), text
    assert "compression zstd,gzip; signing required; formats any" in text
    assert "default_ttl_seconds: 120\nmax_users_per_send: the ingest node's\n" in text

    # In force at once on the node that stored them.
    await cli.run("send", "--user", "alice", "--title", "one", **env)
    refused = await cli.fail("send", "--user", "alice", "--title", "two", **env)
    assert refused.startswith("error: RESOURCE_EXHAUSTED: rate limit: tenant 'acme' may make 0.001")


async def test_tenant_put_reset_and_list_and_their_errors(cli: Cli, tmp_path: Path) -> None:
    address = await _up(cli)
    env = {"HERALD_ADDRESS": address, "HERALD_TENANT": "acme"}
    await cli.run("tenant", "set", "--key-send-rate", "50", "--signing-required", "true", **env)
    file = tmp_path / "settings.json"
    file.write_text(json.dumps({"rateLimits": {"userSubscribeRate": 2}}))
    stale = await cli.fail("tenant", "put", "--file", str(file), "--if-version", "0", **env)
    assert stale == (
        "error: ABORTED: the settings of tenant 'acme' are at version 1, not 0: read them again "
        "(GetTenantSettings) and reapply the change"
    )
    put = await cli.json("tenant", "put", "--file", str(file), "--if-version", "1", **env)
    assert (put["version"], put["rateLimits"]) == (2, {"userSubscribeRate": 2.0})
    assert "streamPolicy" not in put
    bad = await cli.fail("tenant", "set", "--user-subscribe-burst", "0", **env)
    assert (
        bad == "error: INVALID_ARGUMENT: rate_limits.user_subscribe_burst must be 1 to 10,000,000"
    )
    assert (await cli.fail("tenant", "get", "globex", "--tenant", "acme")).startswith(
        "error: TENANT globex disagrees with --tenant acme"
    )
    reset = await cli.json("tenant", "reset", **env)
    assert (reset["version"], reset["rateLimits"]) == (3, {})
    await cli.json("tenant", "set", "globex", "--key-send-rate", "1", "--address", address)
    listed = await cli.json("tenant", "list", "--address", address)
    assert [(s["tenantId"], s["version"]) for s in listed["settings"]] == [
        ("acme", 3),
        ("globex", 1),
    ]


async def test_tail_decodes_and_verifies_the_transformer_chain(cli: Cli) -> None:
    # Dev mode: `herald up` signs with a key it generated in the data dir.
    address = await _up(cli)
    env = {"HERALD_ADDRESS": address, "HERALD_TENANT": "acme"}
    tail = await cli.start(
        "tail", "--user", "alice", "--accept", "json,zstd", "--verify", "--count", "1", **env
    )
    line = await _subscribed(tail)
    assert "(encodings: json, zstd, signed)" in line
    body = "long enough to be compressed " * 20
    sent = json.loads(
        await cli.run("send", "--user", "alice", "--title", "Signed", "--body", body, **env)
    )
    assert tail.stdout is not None
    async with asyncio.timeout(20):
        out, _ = await tail.communicate()
    assert tail.returncode == 0
    [printed] = [json.loads(line) for line in out.decode().splitlines()]
    assert printed["notification"]["id"] == sent["notificationId"]
    assert printed["notification"]["content"] == {"title": "Signed", "body": body}


async def test_scheduled_send_list_status_and_cancel(cli: Cli) -> None:
    address = await _up(cli)
    env = {"HERALD_ADDRESS": address, "HERALD_TENANT": "acme"}
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    deliver_at = tomorrow.isoformat().replace("+00:00", "Z")
    sent = json.loads(
        await cli.run(
            "send", "--user", "alice", "--title", "Later", "--deliver-at", deliver_at, **env
        )
    )
    assert sent["scheduled"] is True
    notification_id = sent["notificationId"]
    assert f"deliver  {deliver_at}  SCHEDULED" in await cli.run("status", notification_id, **env)
    [held] = (await cli.json("scheduled", "list", **env))["notifications"]
    assert (held["id"], held["deliverAt"]) == (notification_id, deliver_at)
    assert notification_id in await cli.run("scheduled", "list", **env)
    assert (await cli.run("scheduled", "cancel", notification_id, **env)).strip() == "cancelled"
    assert await cli.json("scheduled", "cancel", notification_id, **env) == {"cancelled": False}
    status = await cli.json("status", notification_id, **env)
    assert status["scheduleState"] == "SCHEDULE_STATE_CANCELLED"
    assert (await cli.json("scheduled", "list", **env))["notifications"] == []
    bad = await cli.fail("send", "--user", "alice", "--title", "x", "--deliver-at", "soon", **env)
    assert bad.startswith("error: --deliver-at 'soon' is not an RFC 3339 time")
    too_far = (tomorrow + timedelta(days=400)).isoformat()
    refused = await cli.fail(
        "send", "--user", "alice", "--title", "x", "--deliver-at", too_far, **env
    )
    assert refused.startswith("error: INVALID_ARGUMENT: deliver_at is ")


async def test_tail_stopped_by_sigterm_acks_what_it_printed(cli: Cli) -> None:
    address = await _up(cli)
    env = {"HERALD_ADDRESS": address, "HERALD_TENANT": "acme"}
    # No periodic acks: only the ack on the way out can make the notification ACKED.
    tail = await cli.start("tail", "--user", "alice", "--ack-interval", "3600", **env)
    await _subscribed(tail)
    sent = json.loads(await cli.run("send", "--user", "alice", "--title", "one", **env))
    assert tail.stdout is not None
    async with asyncio.timeout(20):
        line = json.loads(await tail.stdout.readline())
    assert line["notification"]["id"] == sent["notificationId"]
    tail.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        _, stderr = await tail.communicate()
    assert tail.returncode == 0, stderr.decode()
    assert "Traceback" not in stderr.decode()
    status = await cli.json("status", sent["notificationId"], **env)
    assert status["recipients"][0]["state"] == "DELIVERY_STATE_ACKED"
