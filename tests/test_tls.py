"""Acceptance: TLS on every listener, mTLS for node-to-node calls, clients and the CLI over TLS,
and production mode refusing plaintext. Real gRPC over loopback with a throwaway CA."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from herald.node.v1 import node_pb2, node_pb2_grpc
from herald.v1 import registry_pb2, registry_pb2_grpc
from services import auth
from services.client import HeraldClient, tls_credentials
from services.config import AuthSettings, Config, ServerSettings, StartupError, TLSSettings
from services.server import start_metrics_server, start_node
from tests.certificates import CertificateAuthority, Issued
from tests.harness import Herald, make_config, start_herald, to_user
from tests.streams import Stream
from tests.test_cli import Cli, _free_port

pytestmark = pytest.mark.asyncio


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


@pytest.fixture
def server_cert(ca: CertificateAuthority) -> Issued:
    return ca.issue("herald")


def tls_settings(ca: CertificateAuthority, cert: Issued, **more: object) -> TLSSettings:
    return TLSSettings(
        cert_file=cert.cert_file,
        key_file=cert.key_file,
        ca_file=ca.cert_file,
        **more,  # type: ignore[arg-type]
    )


@pytest_asyncio.fixture
async def herald_tls(
    tmp_path: Path, ca: CertificateAuthority, server_cert: Issued
) -> AsyncIterator[Herald]:
    deployment = await start_herald("up", make_config(tmp_path, tls=tls_settings(ca, server_cert)))
    try:
        yield deployment
    finally:
        await deployment.stop()


def node_server(tmp_path: Path) -> ServerSettings:
    """Loopback, free ports, and a node-to-node listener of its own (port 0: any free one)."""
    return ServerSettings(
        host="127.0.0.1", port=0, node_port=0, data_dir=tmp_path, shutdown_grace_s=2
    )


@pytest_asyncio.fixture
async def herald_mtls(
    tmp_path: Path, ca: CertificateAuthority, server_cert: Issued
) -> AsyncIterator[Herald]:
    config = make_config(
        tmp_path,
        server=node_server(tmp_path),
        tls=tls_settings(ca, server_cert, client_ca_file=ca.cert_file),
    )
    deployment = await start_herald("split", config)
    try:
        yield deployment
    finally:
        await deployment.stop()


async def _send_and_receive(herald: Herald, title: str) -> None:
    stream = Stream(herald.user("alice"))
    try:
        await stream.start()
        sent = await herald.backend().send(to_user("alice", title))
        [delivery] = await stream.deliveries(1)
        assert delivery.notification.id == sent.notification_id
        assert delivery.notification.content.title == title
    finally:
        stream.cancel()


# -- clients against a TLS server ------------------------------------------------------------


async def test_a_client_trusting_the_ca_sends_and_subscribes(herald_tls: Herald) -> None:
    assert herald_tls.ca_file is not None
    await _send_and_receive(herald_tls, "over TLS")


async def test_a_plaintext_client_cannot_talk_to_a_tls_server(herald_tls: Herald) -> None:
    token = herald_tls.tokens.backend("acme")
    async with HeraldClient(herald_tls.address("ingest"), token) as plaintext:
        with pytest.raises(aio.AioRpcError) as caught:
            await plaintext.send(to_user("alice"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("trust", ["another CA", "the system roots"])
async def test_a_client_not_trusting_the_ca_is_refused(
    herald_tls: Herald, tmp_path: Path, trust: str
) -> None:
    other = CertificateAuthority(tmp_path / "other", name="Someone Else")
    ca_file = other.cert_file if trust == "another CA" else None
    token = herald_tls.tokens.backend("acme")
    async with HeraldClient(herald_tls.address("ingest"), token, tls=True, ca_file=ca_file) as c:
        with pytest.raises(aio.AioRpcError) as caught:
            await c.send(to_user("alice"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in (caught.value.details() or "")


async def test_a_missing_ca_file_is_a_clear_client_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read the CA file .*nope\.crt"):
        tls_credentials(tmp_path / "nope.crt")


# -- mTLS for node-to-node calls (the split topology) ----------------------------------------


async def test_split_nodes_call_each_other_over_mtls(herald_mtls: Herald) -> None:
    # Stream -> registry (the session registers), ingest -> stream (Dispatch): both over mTLS.
    for role in ("registry", "stream", "ingest"):
        node = herald_mtls.node(role)
        assert node.node_port is not None
        assert node.node_port != node.port
    await _send_and_receive(herald_mtls, "node to node over mTLS")

    # Registry -> stream (CloseSessions, to the session's advertised node port): a Disconnect.
    stream = Stream(herald_mtls.user("bob"))
    started = await stream.start()
    registry, metadata = herald_mtls.registry_stub(herald_mtls.tokens.backend("acme"))
    response = await registry.Disconnect(
        registry_pb2.DisconnectRequest(session_id=started.session_id, reason="maintenance"),
        metadata=metadata,
        timeout=5,
    )
    assert response.disconnected == 1
    event = await stream.event()
    assert event.WhichOneof("event") == "closing"
    assert event.closing.message == "maintenance"
    assert await stream.call.read() is aio.EOF


def _node_call_metadata(herald: Herald) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {herald.tokens.minter.node_token('intruder')}"),)


async def test_the_node_port_refuses_a_caller_without_a_client_certificate(
    herald_mtls: Herald, ca: CertificateAuthority
) -> None:
    stream = herald_mtls.node("stream")
    credentials = tls_credentials(ca.cert_file)  # trusts the server, presents no certificate
    async with aio.secure_channel(stream.node_address, credentials) as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await node_pb2_grpc.NodeServiceStub(channel).GetDeliveryStatus(
                node_pb2.GetDeliveryStatusRequest(tenant_id="acme", notification_id="x"),
                metadata=_node_call_metadata(herald_mtls),
                timeout=5,
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_node_token_alone_is_refused_on_the_public_port(
    herald_mtls: Herald, ca: CertificateAuthority
) -> None:
    # The public port asks for no client certificate, so node calls there are refused even
    # with a valid node token: a leaked node token is not enough.
    for role, call in (
        (
            "stream",
            lambda channel: node_pb2_grpc.NodeServiceStub(channel).GetDeliveryStatus(
                node_pb2.GetDeliveryStatusRequest(tenant_id="acme", notification_id="x"),
                metadata=_node_call_metadata(herald_mtls),
                timeout=5,
            ),
        ),
        (
            "registry",
            lambda channel: registry_pb2_grpc.RegistryServiceStub(channel).HeartbeatSession(
                registry_pb2.HeartbeatSessionRequest(tenant_id="acme", session_ids=["s"]),
                metadata=_node_call_metadata(herald_mtls),
                timeout=5,
            ),
        ),
    ):
        node = herald_mtls.node(role)
        async with aio.secure_channel(node.address, tls_credentials(ca.cert_file)) as channel:
            with pytest.raises(aio.AioRpcError) as caught:
                await call(channel)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, role
        assert "client certificate" in (caught.value.details() or ""), role


async def test_with_a_client_certificate_a_node_call_is_served(
    herald_mtls: Herald, ca: CertificateAuthority
) -> None:
    peer = ca.issue("peer-node")
    credentials = tls_credentials(ca.cert_file, cert_file=peer.cert_file, key_file=peer.key_file)
    stream = herald_mtls.node("stream")
    async with aio.secure_channel(stream.node_address, credentials) as channel:
        response = await node_pb2_grpc.NodeServiceStub(channel).GetDeliveryStatus(
            node_pb2.GetDeliveryStatusRequest(tenant_id="acme", notification_id="unknown"),
            metadata=_node_call_metadata(herald_mtls),
            timeout=5,
        )
    assert not response.found


async def test_a_worker_sharing_its_port_gets_a_node_port_of_its_own_with_mtls(
    tmp_path: Path, ca: CertificateAuthority, server_cert: Issued
) -> None:
    # `herald serve stream --workers N`: the clients' port is shared (SO_REUSEPORT), so each
    # worker takes a node port of its own, which requires client certificates as HERALD_NODE_PORT
    # does.
    server = ServerSettings(host="127.0.0.1", port=0, reuse_port=True, data_dir=tmp_path)
    tls = tls_settings(ca, server_cert, client_ca_file=ca.cert_file)
    config = make_config(tmp_path, server=server, tls=tls)
    node = await start_node(config)
    try:
        assert node.node_port is not None
        assert node.node_port != node.port
        minter = auth.TokenMinter(auth.load_keys(config.auth, tmp_path), config.auth)
        metadata = (("authorization", f"Bearer {minter.node_token('peer')}"),)
        request = node_pb2.GetDeliveryStatusRequest(tenant_id="acme", notification_id="x")
        peer = ca.issue("peer")
        with_cert = tls_credentials(ca.cert_file, cert_file=peer.cert_file, key_file=peer.key_file)
        async with aio.secure_channel(node.node_address, with_cert) as channel:
            response = await node_pb2_grpc.NodeServiceStub(channel).GetDeliveryStatus(
                request, metadata=metadata, timeout=5
            )
        assert not response.found
        async with aio.secure_channel(node.node_address, tls_credentials(ca.cert_file)) as channel:
            with pytest.raises(aio.AioRpcError) as caught:
                await node_pb2_grpc.NodeServiceStub(channel).GetDeliveryStatus(
                    request, metadata=metadata, timeout=5
                )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await node.stop(1)


async def test_an_ingest_node_with_an_untrusted_client_certificate_cannot_dispatch(
    tmp_path: Path, ca: CertificateAuthority, server_cert: Issued
) -> None:
    config = make_config(
        tmp_path,
        server=node_server(tmp_path),
        tls=tls_settings(ca, server_cert, client_ca_file=ca.cert_file),
    )
    herald = await start_herald("split", config)
    stranger = CertificateAuthority(tmp_path / "stranger", name="Stranger CA").issue("ingest")
    ingest_config = make_config(
        tmp_path,
        server=node_server(tmp_path).model_copy(
            update={
                "stream_address": herald.node("stream").node_address,
                "registry_address": herald.node("registry").node_address,
            }
        ),
        tls=tls_settings(
            ca,
            server_cert,
            client_ca_file=ca.cert_file,
            client_cert_file=stranger.cert_file,
            client_key_file=stranger.key_file,
        ),
    )
    ingest = await start_node(ingest_config, ["ingest"], keys=auth.load_keys(config.auth, tmp_path))
    try:
        # Nodes share the signing key, so only the certificate is wrong.
        token = auth.TokenMinter(auth.load_keys(config.auth, tmp_path), config.auth)
        async with HeraldClient(
            ingest.address,
            token.mint("billing", "acme", [auth.SCOPE_SEND]),
            ca_file=ca.cert_file,
        ) as client:
            with pytest.raises(aio.AioRpcError) as caught:
                await client.send(to_user("alice"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "stream node" in (caught.value.details() or "")
    finally:
        await ingest.stop(1)
        await herald.stop()


# -- the metrics listener -------------------------------------------------------------------


async def test_metrics_are_served_over_https_when_tls_is_on(
    ca: CertificateAuthority, server_cert: Issued
) -> None:
    settings = TLSSettings(cert_file=server_cert.cert_file, key_file=server_cert.key_file)
    server = start_metrics_server(0, "127.0.0.1", settings)
    url = f"://127.0.0.1:{server.server_port}/metrics"
    try:

        def scrape(scheme: str, context: ssl.SSLContext | None = None) -> str:
            # S310: the URL is this test's own loopback server, http or https.
            with urllib.request.urlopen(scheme + url, timeout=5, context=context) as response:  # noqa: S310
                return str(response.read().decode())

        trusting = ssl.create_default_context(cafile=str(ca.cert_file))
        assert "herald_" in await asyncio.to_thread(scrape, "https", trusting)
        with pytest.raises((OSError, http.client.HTTPException)):
            await asyncio.to_thread(scrape, "http")
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            await asyncio.to_thread(scrape, "https", ssl.create_default_context())
    finally:
        server.shutdown()
        server.server_close()


# -- start-up checks -------------------------------------------------------------------------


async def test_production_mode_refuses_plaintext_without_the_opt_out(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="production mode refuses plaintext") as caught:
        await start_node(make_config(tmp_path, tls=TLSSettings()))
    assert "HERALD_TLS_TERMINATED_UPSTREAM=true" in str(caught.value)
    assert "HERALD_TLS_CERT_FILE" in str(caught.value)


async def test_production_mode_serves_plaintext_when_tls_ends_in_front(tmp_path: Path) -> None:
    node = await start_node(make_config(tmp_path, tls=TLSSettings(terminated_upstream=True)))
    try:
        async with aio.insecure_channel(node.address) as channel:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await node.stop(1)


async def test_dev_mode_serves_plaintext_without_any_setting(tmp_path: Path) -> None:
    config = make_config(tmp_path, tls=TLSSettings())
    node = await start_node(Config(server=config.server, auth=AuthSettings(mode="dev")))
    assert node.port > 0
    await node.stop(1)


def _misconfigurations(
    ca: CertificateAuthority, cert: Issued, tmp_path: Path
) -> dict[str, tuple[TLSSettings, ServerSettings | None, str]]:
    other = ca.issue("other")
    expired = ca.issue("expired", expired=True)
    encrypted = ca.issue("encrypted", passphrase=b"secret")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    return {
        "missing cert file": (
            TLSSettings(cert_file=tmp_path / "absent.crt", key_file=cert.key_file),
            None,
            r"cannot read HERALD_TLS_CERT_FILE \(.*absent\.crt\): No such file",
        ),
        "missing key file": (
            TLSSettings(cert_file=cert.cert_file, key_file=tmp_path / "absent.key"),
            None,
            r"cannot read HERALD_TLS_KEY_FILE",
        ),
        "key of another certificate": (
            TLSSettings(cert_file=cert.cert_file, key_file=other.key_file),
            None,
            r"HERALD_TLS_KEY_FILE .* does not belong to the certificate in HERALD_TLS_CERT_FILE",
        ),
        "expired certificate": (
            TLSSettings(cert_file=expired.cert_file, key_file=expired.key_file),
            None,
            r"the certificate in HERALD_TLS_CERT_FILE .* expired on .* UTC: renew it",
        ),
        "encrypted key": (
            TLSSettings(cert_file=encrypted.cert_file, key_file=encrypted.key_file),
            None,
            r"HERALD_TLS_KEY_FILE .* is encrypted",
        ),
        "client cert without its key": (
            TLSSettings(
                cert_file=cert.cert_file, key_file=cert.key_file, client_cert_file=other.cert_file
            ),
            None,
            r"HERALD_TLS_CLIENT_CERT_FILE is set without HERALD_TLS_CLIENT_KEY_FILE",
        ),
        "cert without key": (
            TLSSettings(cert_file=cert.cert_file),
            None,
            r"HERALD_TLS_CERT_FILE is set without HERALD_TLS_KEY_FILE",
        ),
        "not a certificate": (
            TLSSettings(cert_file=not_pem, key_file=cert.key_file),
            None,
            r"HERALD_TLS_CERT_FILE .* holds no PEM certificate",
        ),
        "not a key": (
            TLSSettings(cert_file=cert.cert_file, key_file=not_pem),
            None,
            r"HERALD_TLS_KEY_FILE .* holds no PEM private key",
        ),
        "client CA without TLS": (
            TLSSettings(client_ca_file=ca.cert_file),
            None,
            r"HERALD_TLS_CLIENT_CA_FILE is set but TLS is off",
        ),
        "client CA not PEM": (
            TLSSettings(cert_file=cert.cert_file, key_file=cert.key_file, client_ca_file=not_pem),
            ServerSettings(host="127.0.0.1", port=0, data_dir=tmp_path),
            r"HERALD_TLS_CLIENT_CA_FILE .* holds no PEM certificate",
        ),
        "a node port shared by workers": (
            TLSSettings(terminated_upstream=True),
            ServerSettings(
                host="127.0.0.1", port=0, node_port=0, reuse_port=True, data_dir=tmp_path
            ),
            r"HERALD_NODE_PORT cannot be shared by workers",
        ),
        "mTLS without a node port": (
            TLSSettings(
                cert_file=cert.cert_file, key_file=cert.key_file, client_ca_file=ca.cert_file
            ),
            ServerSettings(host="127.0.0.1", port=0, data_dir=tmp_path),
            r"needs HERALD_NODE_PORT",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing cert file",
        "missing key file",
        "key of another certificate",
        "expired certificate",
        "encrypted key",
        "client cert without its key",
        "cert without key",
        "not a certificate",
        "not a key",
        "client CA without TLS",
        "client CA not PEM",
        "a node port shared by workers",
        "mTLS without a node port",
    ],
)
async def test_a_misconfiguration_is_a_clear_startup_error(
    tmp_path: Path, ca: CertificateAuthority, server_cert: Issued, case: str
) -> None:
    settings, server, message = _misconfigurations(ca, server_cert, tmp_path)[case]
    config = make_config(tmp_path, tls=settings, server=server)
    with pytest.raises(StartupError, match=message):
        await start_node(config)


# -- the CLI ---------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def cli(tmp_path: Path) -> AsyncIterator[Cli]:
    runner = Cli(tmp_path / "data")
    try:
        yield runner
    finally:
        await runner.stop()


async def _wait_serving_tls(address: str, ca_file: Path) -> None:
    async with (
        aio.secure_channel(address, tls_credentials(ca_file)) as channel,
        asyncio.timeout(20),
    ):
        await channel.channel_ready()
        async for response in health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest()
        ):
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return


@pytest.mark.slow
async def test_the_cli_sends_and_tails_over_tls(
    cli: Cli, ca: CertificateAuthority, server_cert: Issued
) -> None:
    address = f"127.0.0.1:{_free_port()}"
    tls_env = {
        "HERALD_TLS_CERT_FILE": str(server_cert.cert_file),
        "HERALD_TLS_KEY_FILE": str(server_cert.key_file),
    }
    await cli.start("up", HERALD_PORT=address.rpartition(":")[2], **tls_env)
    await _wait_serving_tls(address, ca.cert_file)
    flags = ("--tls", "--ca-file", str(ca.cert_file), "--tenant", "acme")
    tail = await cli.start(
        "tail", "--user", "alice", "--count", "1", *flags, HERALD_ADDRESS=address
    )
    assert tail.stderr is not None
    async with asyncio.timeout(20):
        line = (await tail.stderr.readline()).decode()
    assert line.startswith("subscribed as alice@acme"), line
    sent = json.loads(
        await cli.run(
            "send", "--user", "alice", "--title", "cli tls", *flags, HERALD_ADDRESS=address
        )
    )
    async with asyncio.timeout(20):
        out, _ = await tail.communicate()
    assert tail.returncode == 0
    [received] = [json.loads(line) for line in out.decode().splitlines()]
    assert received["notification"]["id"] == sent["notificationId"]

    # The environment works as well as the flags.
    await cli.run(
        "send",
        *("--user", "alice", "--tenant", "acme", "--title", "from the environment"),
        HERALD_ADDRESS=address,
        HERALD_TLS="true",
        HERALD_CA_FILE=str(ca.cert_file),
    )

    # Without --tls: one clear line and a hint, never a traceback.
    plain = await cli.start(
        "send", "--user", "alice", "--tenant", "acme", "--title", "x", HERALD_ADDRESS=address
    )
    async with asyncio.timeout(30):
        _, err = await plain.communicate()
    assert plain.returncode == 2
    assert err.decode().startswith("error: UNAVAILABLE"), err.decode()
    assert "--tls" in err.decode()
    assert "Traceback" not in err.decode()


@pytest.mark.slow
async def test_herald_up_in_production_without_tls_exits_with_one_clear_line(cli: Cli) -> None:
    proc = await cli.start(
        "up",
        HERALD_PORT=str(_free_port()),
        HERALD_AUTH_MODE="production",
        HERALD_AUTH_SECRET="s" * 32,
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    text = err.decode()
    assert text.startswith("error: production mode refuses plaintext"), text
    assert "Traceback" not in text


@pytest.mark.slow
async def test_herald_up_with_a_mismatched_key_exits_with_one_clear_line(
    cli: Cli, ca: CertificateAuthority, server_cert: Issued
) -> None:
    other = ca.issue("other")
    proc = await cli.start(
        "up",
        HERALD_PORT=str(_free_port()),
        HERALD_TLS_CERT_FILE=str(server_cert.cert_file),
        HERALD_TLS_KEY_FILE=str(other.key_file),
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    text = err.decode()
    assert text.startswith("error: HERALD_TLS_KEY_FILE"), text
    assert "does not belong to the certificate" in text
    assert "Traceback" not in text
