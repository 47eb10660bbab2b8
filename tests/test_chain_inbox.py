"""ListInbox through the transformer chain, over real gRPC: every combination, plain pages
unchanged, the stream's cache shared, rejections by the Python client, the tenant's policy."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc import aio

from herald.v1 import notification_pb2, stream_pb2
from services import metrics
from services.chain import ChainPolicy, Opener, Variant
from services.chain.signing import write_private_key
from services.cli import main as cli_main
from services.client import HeraldClient
from services.config import ChainSettings
from tests.chain_support import forge_seals
from tests.harness import Herald, make_config, start_herald, to_user
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

# Long enough to be compressed (HERALD_CHAIN_COMPRESSION_MIN_BYTES defaults to 256).
BODY = "Your order shipped. " * 30


@pytest_asyncio.fixture(params=["up", "split"])
async def signing(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Herald]:
    """Herald (both topologies) signing with key k1."""
    keys = tmp_path / "keys"
    write_private_key(keys, "k1")
    deployment = await start_herald(
        request.param, make_config(tmp_path, chain=ChainSettings(signing_keys_dir=keys))
    )
    try:
        yield deployment
    finally:
        await deployment.stop()


def _sent(title: str = "Hello") -> notification_pb2.Notification:
    n = to_user("alice", title)
    n.content.body = BODY
    n.content.data.update({"order": 42})
    return n


async def _page(client: HeraldClient, accept: list[str]) -> stream_pb2.ListInboxResponse:
    """A ListInbox answer as the server sent it (the generated stub, nothing opened)."""
    response: stream_pb2.ListInboxResponse = await client._stream.ListInbox(
        stream_pb2.ListInboxRequest(accept_encodings=accept), metadata=client.metadata()
    )
    return response


COMBINATIONS = list(
    itertools.product(("protobuf", "json"), ("identity", "gzip", "zstd"), (False, True))
)


@pytest.mark.parametrize(("fmt", "compression", "signed"), COMBINATIONS)
async def test_inbox_items_go_through_every_combination(
    signing: Herald, fmt: str, compression: str, signed: bool
) -> None:
    herald = signing
    variant = Variant(fmt, compression, signed)
    accept = [fmt, compression, *(["signed"] if signed else [])]
    await herald.backend().send(_sent("first"))
    await herald.backend().send(_sent("second"))
    client = herald.user("alice")
    plain = await _page(client, [])
    sealed = await _page(client, accept)
    assert [i.notification.content.title for i in plain.items] == ["second", "first"]
    assert all(not i.HasField("sealed") for i in plain.items)
    keys = (await client.signing_keys()).keys
    assert len(sealed.items) == 2
    for reference, item in zip(plain.items, sealed.items, strict=True):
        assert variant.plain or not item.HasField("notification")
        if not variant.plain:
            assert (item.sealed.format, item.sealed.encoding) == (fmt, compression)
            assert bool(item.sealed.signature) == signed
        assert Opener(verify=signed, keys=keys).open(item) == reference.notification
        # Every other field as on the plain page.
        assert (item.cursor, item.state, item.read_at) == (
            reference.cursor,
            reference.state,
            reference.read_at,
        )
    # The Python client opens (and verifies) by itself: the same page as the plain one.
    chain = client.inbox_chain(accept_encodings=[fmt, compression], verify=signed)
    opened = await client.list_inbox(chain=chain)
    assert opened == plain
    assert chain.rejections == 0


async def test_a_plain_inbox_page_is_unchanged(signing: Herald) -> None:
    herald = signing
    await herald.backend().send(_sent())
    client = herald.user("alice")
    raw = client._channel.unary_unary(
        "/herald.v1.StreamService/ListInbox",
        request_serializer=stream_pb2.ListInboxRequest.SerializeToString,
        response_deserializer=None,
    )
    data = await raw(stream_pb2.ListInboxRequest(), metadata=client.metadata())
    page = stream_pb2.ListInboxResponse.FromString(data)
    [item] = page.items
    assert item.HasField("notification")
    assert not item.HasField("sealed")
    assert data == page.SerializeToString()
    # Plain, also for a client that asks for nothing the tenant allows.
    assert await _page(client, ["identity", "brotli"]) == page


async def test_an_inbox_page_shares_the_streams_variant_cache(signing: Herald) -> None:
    herald = signing
    accept = ["zstd", "signed"]
    stream = Stream(herald.user("alice"), stream_pb2.SubscribeRequest(accept_encodings=accept))
    await stream.start()
    variant = Variant("protobuf", "zstd", True)
    built = metrics.CHAIN_TRANSFORMS.labelled_tally(variant.label)
    await herald.backend().send(_sent())
    [delivery] = await stream.deliveries(1)
    before = built.value
    [item] = (await _page(herald.user("alice"), accept)).items
    assert item.sealed == delivery.sealed  # the very bytes the stream sent, signature and all
    assert built.value == before  # not built again
    stream.cancel()


async def _genuine_then_forged(herald: Herald, monkeypatch: pytest.MonkeyPatch) -> str:
    """Alice's inbox: a genuine item, then one forged on the way (forge_seals); the genuine
    one's id."""
    chain = herald.node("stream").chain
    assert chain is not None
    forge_seals(chain, monkeypatch)
    backend = herald.backend()
    genuine = await backend.send(_sent("genuine"))
    await backend.send(_sent("forged"))
    return genuine.notification_id


async def test_a_forged_inbox_item_is_rejected_and_counted(
    signing: Herald, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    herald = signing
    genuine = await _genuine_then_forged(herald, monkeypatch)
    client = herald.user("alice")
    reasons: list[str] = []
    inbox = client.inbox_chain(
        verify=True, on_reject=lambda rejected, _item: reasons.append(rejected.reason)
    )
    before = metrics.CLIENT_REJECTED.labels("bad_signature")._value.get()
    page = await client.list_inbox(chain=inbox)
    assert [i.notification.id for i in page.items] == [genuine]
    assert inbox.rejected == {"bad_signature": 1}
    assert reasons == ["bad_signature"]
    assert metrics.CLIENT_REJECTED.labels("bad_signature")._value.get() == before + 1
    [line] = [r for r in caplog.records if "rejected an inbox item" in r.getMessage()]
    assert "bad_signature" in line.getMessage()
    assert "evil.example" not in line.getMessage()
    # A subscription's chain opens its inbox the same way, counted with its deliveries.
    subscription = client.subscribe(verify=True)
    again = await client.list_inbox(chain=subscription.chain)
    assert [i.notification.id for i in again.items] == [genuine]
    assert subscription.chain.rejected == {"bad_signature": 1}


async def test_herald_inbox_opens_verifies_and_reports_what_does_not_verify(
    signing: Herald, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    herald = signing
    genuine = await _genuine_then_forged(herald, monkeypatch)
    token = herald.tokens.user("acme", "alice")
    argv = ["inbox", "--address", herald.address("stream"), "--token", token, "--json"]
    # The command quiets the client's rejection log for its own lines; put it back after.
    logger = logging.getLogger("services.client_chain")
    level = logger.level
    try:
        with pytest.raises(SystemExit) as verified:
            await asyncio.to_thread(cli_main, [*argv, "--accept", "json,zstd", "--verify"])
        assert verified.value.code == 0
        out, err = capsys.readouterr()
        with pytest.raises(SystemExit) as plain:
            await asyncio.to_thread(cli_main, argv)
        assert plain.value.code == 0
        unverified, _ = capsys.readouterr()
    finally:
        logger.setLevel(level)
    [item] = json.loads(out)["items"]
    assert item["notification"]["id"] == genuine
    assert item["notification"]["content"]["title"] == "genuine"
    assert "sealed" not in item
    assert err.splitlines() == ["rejected an inbox item (bad_signature) at cursor 2"]
    # Asking for nothing, it gets the page unsealed (nothing to forge on the way), newest first.
    titles = [i["notification"]["content"]["title"] for i in json.loads(unverified)["items"]]
    assert titles == ["forged", "genuine"]


async def test_unsigned_inbox_items_are_rejected_where_a_signature_is_required(
    herald_up: Herald,
) -> None:
    # No signing key on this node: "signed" is not picked, every item comes unsigned.
    await herald_up.backend().send(_sent("one"))
    await herald_up.backend().send(_sent("two"))
    client = herald_up.user("alice")
    chain = client.inbox_chain(accept_encodings=["gzip"], verify=True)
    page = await client.list_inbox(chain=chain)
    assert list(page.items) == []
    assert chain.rejected == {"unsigned": 2}
    # Without verify the same items are shown (gzip'd, opened).
    shown = await client.list_inbox(chain=client.inbox_chain(accept_encodings=["gzip"]))
    assert [i.notification.content.title for i in shown.items] == ["two", "one"]


async def test_the_tenants_policy_rules_what_an_inbox_page_gets(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    write_private_key(keys, "k1")
    policies = {
        "acme": ChainPolicy(compression=(), formats=("protobuf",)),
        "globex": ChainPolicy(signing_required=True, compression=("gzip",)),
    }
    config = make_config(tmp_path, chain=ChainSettings(signing_keys_dir=keys))
    herald = await start_herald("up", config, policy_for=lambda tenant: policies[tenant])
    try:
        await herald.backend().send(_sent())
        await herald.backend("globex").send(_sent())
        # acme allows neither json nor a compression: the page is plain.
        [refused] = (await _page(herald.user("alice"), ["json", "zstd", "gzip"])).items
        assert refused.HasField("notification")
        assert not refused.HasField("sealed")
        # globex signs everything, zstd is not allowed, gzip is.
        globex = herald.user("alice", tenant="globex")
        [signed] = (await _page(globex, ["zstd"])).items
        assert (signed.sealed.encoding, signed.sealed.key_id) == ("identity", "k1")
        [gzipped] = (await _page(globex, ["zstd", "gzip"])).items
        assert (gzipped.sealed.encoding, gzipped.sealed.key_id) == ("gzip", "k1")
        # A client that asks for nothing still reads such a tenant's (sealed) inbox.
        [shown] = (await globex.list_inbox()).items
        assert shown.notification.content.title == "Hello"
        assert not shown.HasField("sealed")
    finally:
        await herald.stop()


async def test_signing_required_without_a_key_refuses_the_inbox_clearly(tmp_path: Path) -> None:
    herald = await start_herald(
        "up", make_config(tmp_path), policy_for=lambda _t: ChainPolicy(signing_required=True)
    )
    try:
        with pytest.raises(aio.AioRpcError) as refused:
            await _page(herald.user("alice"), [])
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "requires signed deliveries" in (refused.value.details() or "")
    finally:
        await herald.stop()


async def test_bad_accept_encodings_on_list_inbox_are_invalid_arguments(herald_up: Herald) -> None:
    client = herald_up.user("alice")
    for accept in (["x" * 10_000], ["gzip"] * 10_000):
        with pytest.raises(aio.AioRpcError) as refused:
            await _page(client, accept)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
