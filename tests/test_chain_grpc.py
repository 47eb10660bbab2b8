"""The transformer chain through real gRPC: negotiation, every combination end to end, plain
streams unchanged, rejections by the Python client, key rotation, tenant policy, keys over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format
from grpc import aio

from herald.v1 import notification_pb2, registry_pb2, stream_pb2
from services import auth, metrics
from services.chain import ChainPolicy, Opener, Variant
from services.chain.signing import load_dir, write_private_key
from services.client import Received, Subscription
from services.client_websocket import Closed, WebSocketSubscription
from services.config import ChainSettings
from services.server import start_metrics_server
from tests.harness import Herald, make_config, start_herald, to_user
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

# Long enough to be compressed (HERALD_CHAIN_COMPRESSION_MIN_BYTES defaults to 256).
BODY = "Your order shipped. " * 30


@pytest_asyncio.fixture(params=["up", "split"])
async def signing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Herald, Path]]:
    """Herald (both topologies) signing with the key ring in the returned directory."""
    keys = tmp_path / "keys"
    write_private_key(keys, "k1")
    chain = ChainSettings(signing_keys_dir=keys, keys_reload_s=0.05)
    deployment = await start_herald(request.param, make_config(tmp_path, chain=chain))
    try:
        yield deployment, keys
    finally:
        await deployment.stop()


def _sent(title: str = "Hello") -> notification_pb2.Notification:
    n = to_user("alice", title)
    n.content.body = BODY
    n.content.data.update({"order": 42, "items": ["a", "b"]})
    n.metadata["campaign"] = "spring"
    return n


async def _next(subscription: Subscription, within: float = 5.0) -> Received:
    async with asyncio.timeout(within):
        return await anext(aiter(subscription))


COMBINATIONS = list(
    itertools.product(("protobuf", "json"), ("identity", "gzip", "zstd"), (False, True))
)


@pytest.mark.parametrize(("fmt", "compression", "signed"), COMBINATIONS)
async def test_every_combination_end_to_end(
    signing: tuple[Herald, Path], fmt: str, compression: str, signed: bool
) -> None:
    herald, _ = signing
    variant = Variant(fmt, compression, signed)
    accept = [fmt, compression, *(["signed"] if signed else [])]
    plain = Stream(herald.user("alice"))
    sealed = Stream(herald.user("alice"), stream_pb2.SubscribeRequest(accept_encodings=accept))
    assert list((await plain.start()).encodings) == []
    assert list((await sealed.start()).encodings) == list(variant.tokens)
    # The Python client decodes (and verifies) by itself.
    client = herald.user("alice")
    subscription = client.subscribe(
        accept_encodings=[fmt, compression], verify=signed, auto_ack=False
    )
    first = asyncio.ensure_future(_next(subscription))
    await asyncio.wait_for(subscription.connected.wait(), 5)
    await herald.backend().send(_sent())

    [reference] = await plain.deliveries(1)
    [delivery] = await sealed.deliveries(1)
    assert reference.HasField("notification")
    assert not reference.HasField("sealed")
    assert variant.plain or not delivery.HasField("notification")
    if not variant.plain:
        assert (delivery.sealed.format, delivery.sealed.encoding) == (fmt, compression)
        assert bool(delivery.sealed.signature) == signed
    keys = (await client.signing_keys()).keys
    assert Opener(verify=signed, keys=keys).open(delivery) == reference.notification
    assert (delivery.log, delivery.cursor, delivery.attempt, delivery.resume_cursor) == (
        reference.log,
        reference.cursor,
        reference.attempt,
        reference.resume_cursor,
    )
    received = await first
    assert received.notification == reference.notification
    assert sum(subscription.chain.rejected.values()) == 0
    plain.cancel()
    sealed.cancel()


async def test_plain_subscribers_get_todays_bytes(signing: tuple[Herald, Path]) -> None:
    herald, _ = signing
    client = herald.user("alice")
    raw = client._channel.unary_stream(
        "/herald.v1.StreamService/Subscribe",
        request_serializer=stream_pb2.SubscribeRequest.SerializeToString,
        response_deserializer=None,
    )
    call: Any = raw(stream_pb2.SubscribeRequest(), metadata=client.metadata())
    started = stream_pb2.SubscribeResponse.FromString(await call.read())
    assert started.session_started.encodings == []
    sent = await herald.backend().send(_sent())
    data = await asyncio.wait_for(call.read(), 5)
    response = stream_pb2.SubscribeResponse.FromString(data)
    [delivery] = response.deliveries.deliveries
    assert delivery.notification.id == sent.notification_id
    expected = stream_pb2.SubscribeResponse(
        deliveries=stream_pb2.DeliveryBatch(
            deliveries=[
                stream_pb2.Delivery(
                    notification=delivery.notification,
                    log="user",
                    cursor=1,
                    attempt=1,
                    resume_cursor=1,
                )
            ]
        )
    )
    assert data == expected.SerializeToString()
    call.cancel()


async def test_a_tampered_delivery_is_rejected_and_counted(
    signing: tuple[Herald, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    herald, _ = signing
    chain = herald.node("stream").chain
    assert chain is not None
    seal = chain.seal
    tampered_titles = {"tampered"}

    def tamper(notification: bytes, variant: Variant) -> stream_pb2.SealedNotification:
        sealed = seal(notification, variant)
        if notification_pb2.Notification.FromString(notification).content.title in tampered_titles:
            # A byte changed after signing, as on a compromised hop.
            payload = bytearray(sealed.payload)
            payload[-1] ^= 0x01
            sealed.payload = bytes(payload)
        return sealed

    monkeypatch.setattr(chain, "seal", tamper)
    before = metrics.CLIENT_REJECTED.labels("bad_signature")._value.get()
    rejections: list[str] = []
    subscription = herald.user("alice").subscribe(
        verify=True, on_reject=lambda rejected, _delivery: rejections.append(rejected.reason)
    )
    first = asyncio.ensure_future(_next(subscription))
    await asyncio.wait_for(subscription.connected.wait(), 5)
    backend = herald.backend()
    await backend.send(_sent("tampered"))
    good = await backend.send(_sent("genuine"))
    received = await first
    assert received.notification.id == good.notification_id
    assert subscription.chain.rejected == {"bad_signature": 1}
    assert rejections == ["bad_signature"]
    assert metrics.CLIENT_REJECTED.labels("bad_signature")._value.get() == before + 1
    # One bounded line, never the payload.
    [line] = [r for r in caplog.records if "rejected a delivery" in r.getMessage()]
    assert "bad_signature" in line.getMessage()
    assert BODY[:20] not in line.getMessage()


async def test_unsigned_deliveries_are_rejected_where_a_signature_is_required(
    herald_up: Herald,
) -> None:
    # This node has no signing key: "signed" is not picked, and the client that requires a
    # signature refuses what comes.
    client = herald_up.user("alice")
    assert list((await client.signing_keys()).keys) == []
    connected: list[stream_pb2.SessionStarted] = []
    subscription = client.subscribe(verify=True, on_connect=connected.append)
    pending = asyncio.ensure_future(_next(subscription, within=3))
    await asyncio.wait_for(subscription.connected.wait(), 5)
    assert list(connected[0].encodings) == []
    await herald_up.backend().send(_sent("one"))
    await herald_up.backend().send(_sent("two"))
    for _ in range(100):
        if subscription.chain.rejections == 2:
            break
        await asyncio.sleep(0.02)
    assert subscription.chain.rejected == {"unsigned": 2}
    assert not pending.done()
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pending


async def test_key_rotation_old_keys_verify_until_retired(signing: tuple[Herald, Path]) -> None:
    herald, keys = signing
    client = herald.user("alice")
    stream = Stream(client, stream_pb2.SubscribeRequest(accept_encodings=["signed"]))
    await stream.start()
    subscription = client.subscribe(verify=True)
    first = asyncio.ensure_future(_next(subscription))
    await asyncio.wait_for(subscription.connected.wait(), 5)
    assert subscription.chain.opener.key_ids == ["k1"]
    await herald.backend().send(_sent("before"))
    [old] = await stream.deliveries(1)
    assert old.sealed.key_id == "k1"
    assert (await first).notification.content.title == "before"

    async def wait_for_keys(expected: list[tuple[str, bool]]) -> list[stream_pb2.SigningKey]:
        for _ in range(200):
            ring = list((await client.signing_keys()).keys)
            if [(k.key_id, k.active) for k in ring] == expected:
                return ring
            await asyncio.sleep(0.02)
        raise AssertionError(f"the keys never became {expected}")

    # A new key: it sorts last, so it signs from the next reload on; k1 still verifies.
    write_private_key(keys, "k2")
    both = await wait_for_keys([("k1", False), ("k2", True)])
    assert Opener(verify=True, keys=both).open(old).content.title == "before"
    # The running subscription only knew k1: it fetches the keys again for k2, by itself.
    second = asyncio.ensure_future(_next(subscription))
    await herald.backend().send(_sent("after"))
    [new] = await stream.deliveries(1)
    assert new.sealed.key_id == "k2"
    assert (await second).notification.content.title == "after"
    assert subscription.chain.rejections == 0
    assert subscription.chain.opener.key_ids == ["k1", "k2"]

    # Retired: k1's file is gone; what it signed no longer verifies.
    (keys / "k1.pem").unlink()
    only_k2 = await wait_for_keys([("k2", True)])
    with pytest.raises(Exception, match="unknown_key"):
        Opener(verify=True, keys=only_k2).open(old)
    assert Opener(verify=True, keys=only_k2).open(new).content.title == "after"
    stream.cancel()


async def test_a_tenant_that_requires_signing_gets_every_delivery_signed(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    write_private_key(keys, "k1")
    policies = {"acme": ChainPolicy(signing_required=True, compression=())}

    def policy_for(tenant: str) -> ChainPolicy:
        return policies.get(tenant, ChainPolicy())

    config = make_config(tmp_path, chain=ChainSettings(signing_keys_dir=keys))
    herald = await start_herald("up", config, policy_for=policy_for)
    try:
        acme = Stream(herald.user("alice"), stream_pb2.SubscribeRequest(accept_encodings=["zstd"]))
        globex = Stream(herald.user("alice", tenant="globex"))
        assert list((await acme.start()).encodings) == ["signed"]  # zstd is not allowed
        assert list((await globex.start()).encodings) == []
        await herald.backend().send(_sent())
        await herald.backend("globex").send(_sent())
        [signed] = await acme.deliveries(1)
        [plain] = await globex.deliveries(1)
        assert signed.sealed.key_id == "k1"
        assert signed.sealed.encoding == "identity"
        assert plain.HasField("notification")
        acme.cancel()
        globex.cancel()
    finally:
        await herald.stop()


async def test_signing_required_without_a_key_is_a_clear_refusal(tmp_path: Path) -> None:
    herald = await start_herald(
        "up", make_config(tmp_path), policy_for=lambda _t: ChainPolicy(signing_required=True)
    )
    try:
        stream = Stream(herald.user("alice"))
        with pytest.raises(aio.AioRpcError) as refused:
            await stream.start()
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "requires signed deliveries" in (refused.value.details() or "")
    finally:
        await herald.stop()


async def test_a_fan_out_transforms_each_notification_once(signing: tuple[Herald, Path]) -> None:
    herald, _ = signing
    accept = stream_pb2.SubscribeRequest(accept_encodings=["zstd", "signed"])
    streams = [Stream(herald.user(f"u{i}"), accept) for i in range(5)]
    for stream in streams:
        await stream.start()
    variant = Variant("protobuf", "zstd", True)
    built = metrics.CHAIN_TRANSFORMS.labelled_tally(variant.label)
    hits = metrics.CHAIN_CACHE.labelled_tally("hit")
    before = (built.value, hits.value)
    broadcast = notification_pb2.Notification()
    broadcast.target.broadcast = True
    broadcast.content.title = "to everyone"
    broadcast.content.body = BODY
    await herald.backend().send(broadcast)
    got = [(await stream.deliveries(1))[0] for stream in streams]
    assert len({d.sealed.SerializeToString() for d in got}) == 1
    assert (built.value - before[0], hits.value - before[1]) == (1, 4)
    for stream in streams:
        stream.cancel()


async def test_public_keys_over_http_match_the_rpc(signing: tuple[Herald, Path]) -> None:
    herald, keys = signing
    write_private_key(keys, "k0")
    ring = load_dir(keys)
    server = start_metrics_server(0, "127.0.0.1", keys=ring)
    try:
        url = f"http://127.0.0.1:{server.server_port}/signing-keys"

        def fetch() -> tuple[dict[str, Any], str]:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response), response.headers["Access-Control-Allow-Origin"]

        document, cors = await asyncio.to_thread(fetch)
        assert cors == "*"
        assert [(k["keyId"], k.get("active", False)) for k in document["keys"]] == [
            ("k0", False),
            ("k1", True),
        ]
        parsed = json_format.ParseDict(document, stream_pb2.GetSigningKeysResponse())
        assert Opener(verify=True, keys=parsed.keys).key_ids == ["k0", "k1"]
        # The node re-reads the directory (every 0.05 s here): then the RPC serves the same
        # keys as the HTTP document.
        client = herald.user("alice")
        for _ in range(200):
            rpc = await client.signing_keys()
            if len(rpc.keys) == 2:
                break
            await asyncio.sleep(0.02)
        assert rpc == parsed
        # /metrics is still there.
        metrics_url = f"http://127.0.0.1:{server.server_port}/metrics"
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(metrics_url, timeout=5).read()
        )
        assert b"herald_" in body
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("topology", ["up", "split"])
async def test_the_stream_policy_in_tenant_settings_rules_the_chain(
    tmp_path: Path, topology: str
) -> None:
    """RegistryService's StreamPolicy of a tenant is what the stream nodes negotiate with (no
    policy given to the node: HERALD_CHAIN_* until the tenant sets one)."""
    keys = tmp_path / "keys"
    write_private_key(keys, "k1")
    config = make_config(tmp_path, chain=ChainSettings(signing_keys_dir=keys))
    herald = await start_herald(topology, config)
    try:
        before = Stream(
            herald.user("alice"), stream_pb2.SubscribeRequest(accept_encodings=["zstd"])
        )
        assert list((await before.start()).encodings) == ["zstd"]  # the node's default allows it
        before.cancel()
        registry = herald.client("registry", herald.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN))
        put = registry_pb2.TenantSettings()
        put.stream_policy.signing_required = True
        put.stream_policy.compression.append("gzip")
        put.stream_policy.allowed_formats.append("json")
        await registry.put_tenant_settings(put)
        # The stream node reads it within the settings' TTL (at once where the registry runs).
        asked = stream_pb2.SubscribeRequest(accept_encodings=["zstd", "gzip", "json"])
        async with asyncio.timeout(15):
            while True:
                after = Stream(herald.user("alice"), asked)
                encodings = list((await after.start()).encodings)
                if "signed" in encodings:
                    break
                after.cancel()
                await asyncio.sleep(0.2)
        assert set(encodings) == {"json", "gzip", "signed"}
        await herald.backend().send(_sent())
        [delivery] = await after.deliveries(1)
        assert (delivery.sealed.format, delivery.sealed.encoding) == ("json", "gzip")
        assert delivery.sealed.key_id == "k1"
        after.cancel()
        # Other tenants keep the node's default.
        other = Stream(herald.user("bob", tenant="globex"))
        assert list((await other.start()).encodings) == []
        other.cancel()
    finally:
        await herald.stop()


@pytest.mark.parametrize("json_frames", [False, True])
async def test_the_websocket_path_runs_the_same_chain(
    signing: tuple[Herald, Path], json_frames: bool
) -> None:
    """A WebSocket subscriber negotiates as a gRPC one does and gets the same sealed bytes
    (one build per variant for both transports); plain WebSocket frames stay as they were."""
    herald, _ = signing
    token = herald.tokens.user("acme", "alice")
    accept = stream_pb2.SubscribeRequest(accept_encodings=["zstd", "signed"])
    ws = await WebSocketSubscription.open(herald.ws_url(), token, accept, json=json_frames)
    plain_ws = await WebSocketSubscription.open(herald.ws_url(), token)
    grpc_stream = Stream(herald.user("alice"), accept)
    try:
        assert ws.started is not None
        assert list(ws.started.encodings) == ["zstd", "signed"]
        assert list(plain_ws.started.encodings) == []  # type: ignore[union-attr]
        assert list((await grpc_stream.start()).encodings) == list(ws.started.encodings)
        await herald.backend().send(_sent())
        [delivery] = await ws.take(1)
        [plain] = await plain_ws.take(1)
        [over_grpc] = await grpc_stream.deliveries(1)
        assert plain.HasField("notification")
        assert not plain.HasField("sealed")
        assert (delivery.sealed.encoding, delivery.sealed.key_id) == ("zstd", "k1")
        assert delivery.sealed == over_grpc.sealed
        keys = (await herald.user("alice").signing_keys()).keys
        assert Opener(verify=True, keys=keys).open(delivery) == plain.notification
        # A tampered payload does not verify.
        tampered = stream_pb2.Delivery()
        tampered.CopyFrom(delivery)
        tampered.sealed.signature = bytes(64)
        with pytest.raises(Exception, match="signature"):
            Opener(verify=True, keys=keys).open(tampered)
    finally:
        grpc_stream.cancel()
        await ws.close()
        await plain_ws.close()


async def test_a_websocket_subscriber_of_a_tenant_requiring_signing_without_a_key_is_refused(
    tmp_path: Path,
) -> None:
    herald = await start_herald(
        "up", make_config(tmp_path), policy_for=lambda _t: ChainPolicy(signing_required=True)
    )
    try:
        token = herald.tokens.user("acme", "alice")
        with pytest.raises(Closed) as refused:
            await WebSocketSubscription.open(herald.ws_url(), token)
        assert refused.value.code == 4000 + grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert "requires signed deliveries" in refused.value.reason
    finally:
        await herald.stop()
