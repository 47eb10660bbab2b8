"""Rate limits through real gRPC: Send and SendBatch per notification, Subscribe per connect,
per tenant, service key and user, with when to retry; a manual clock, never a sleep."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc import aio
from prometheus_client import REGISTRY

from herald.v1 import ingest_pb2, ingest_pb2_grpc, stream_pb2
from services import auth
from services.client import Backoff, HeraldClient
from services.config import RateLimitSettings, TenantRateLimits
from tests.conftest import Deploy
from tests.harness import Herald, to_user

pytestmark = pytest.mark.asyncio

TOPOLOGIES = pytest.mark.parametrize("topology", ["up", "split"])
# Everything off but what a test turns on.
OFF = {
    "tenant_send_rate": 0,
    "key_send_rate": 0,
    "tenant_subscribe_rate": 0,
    "user_subscribe_rate": 0,
}


def limits(**values: object) -> RateLimitSettings:
    return RateLimitSettings(**{**OFF, **values})  # type: ignore[arg-type]


def _rich_status_classes() -> tuple[type[Message], type[Message]]:
    """google.rpc.Status and RetryInfo, built from their .proto definitions (an independent
    decoder for what services/status_details.py encodes by hand)."""
    pool = descriptor_pool.DescriptorPool()
    for module in (any_pb2, duration_pb2):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    f = descriptor_pb2.FieldDescriptorProto
    rpc = descriptor_pb2.FileDescriptorProto(
        name="google/rpc/test_rich.proto",
        package="google.rpc",
        dependency=["google/protobuf/any.proto", "google/protobuf/duration.proto"],
    )
    status = rpc.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    status.field.add(
        name="details",
        number=3,
        type=f.TYPE_MESSAGE,
        label=f.LABEL_REPEATED,
        type_name=".google.protobuf.Any",
    )
    retry = rpc.message_type.add(name="RetryInfo")
    retry.field.add(
        name="retry_delay",
        number=1,
        type=f.TYPE_MESSAGE,
        label=f.LABEL_OPTIONAL,
        type_name=".google.protobuf.Duration",
    )
    pool.Add(rpc)
    return (
        GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status")),
        GetMessageClass(pool.FindMessageTypeByName("google.rpc.RetryInfo")),
    )


Status, RetryInfo = _rich_status_classes()


def retry_of(error: aio.AioRpcError) -> tuple[float, float]:
    """The delay in `retry-after` and in the RetryInfo of `grpc-status-details-bin`; checks the
    rich status repeats the call's code and message (as grpcio-status insists)."""
    trailers = dict(error.trailing_metadata() or ())
    status: object = Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == error.code().value[0]  # type: ignore[attr-defined]
    assert status.message == error.details()  # type: ignore[attr-defined]
    [detail] = status.details  # type: ignore[attr-defined]
    assert detail.type_url == "type.googleapis.com/google.rpc.RetryInfo"
    delay = RetryInfo.FromString(detail.value).retry_delay  # type: ignore[attr-defined]
    return float(trailers["retry-after"]), delay.seconds + delay.nanos / 1e9


def refused_sends(what: str, bucket: str) -> float:
    value = REGISTRY.get_sample_value("herald_rate_limited_total", {"what": what, "bucket": bucket})
    return value or 0.0


def ingest_stub(herald: Herald, token: str) -> tuple[ingest_pb2_grpc.IngestServiceStub, tuple]:
    client = HeraldClient(herald.address("ingest"), token)
    herald.clients.append(client)
    return ingest_pb2_grpc.IngestServiceStub(client._channel), client.metadata()


@TOPOLOGIES
async def test_sends_over_the_tenant_rate_are_refused_with_when_to_retry(
    deploy: Deploy, topology: str
) -> None:
    herald, clock = await deploy(
        topology, rate_limit=limits(tenant_send_rate=2, tenant_send_burst=3)
    )
    backend = herald.backend()
    for i in range(3):
        await backend.send(to_user("alice", f"n{i}"))
    before = refused_sends("send", "tenant")
    with pytest.raises(aio.AioRpcError) as refused:
        await backend.send(to_user("alice", "one too many"))
    error = refused.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tenant 'acme' may make 2 notifications per second" in (error.details() or "")
    assert "retry in 0.500 s" in (error.details() or "")
    assert retry_of(error) == (0.5, 0.5)
    assert refused_sends("send", "tenant") == before + 1
    # Another tenant has a budget of its own.
    await herald.backend("globex").send(to_user("alice"))
    await clock.advance(0.5)
    await backend.send(to_user("alice", "after the wait"))


async def test_a_batch_takes_one_token_per_notification_and_is_refused_whole(
    deploy: Deploy,
) -> None:
    herald, clock = await deploy("up", rate_limit=limits(tenant_send_rate=10, tenant_send_burst=5))
    backend = herald.backend()
    accepted = await backend.send_batch([to_user("alice", f"a{i}") for i in range(3)])
    assert len(accepted.results) == 3
    # 2 tokens left: a batch of 3 is refused whole, nothing of it is stored.
    with pytest.raises(aio.AioRpcError) as refused:
        await backend.send_batch([to_user("bob", f"b{i}") for i in range(3)])
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_of(refused.value) == (0.1, 0.1)  # one token short at 10/s
    inbox = await herald.user("bob").list_inbox()
    assert list(inbox.items) == []
    # The refusal took nothing: the 2 tokens left still pass a batch of 2.
    await backend.send_batch([to_user("bob", "c0"), to_user("bob", "c1")])
    await clock.advance(0.3)
    await backend.send_batch([to_user("bob", f"d{i}") for i in range(3)])
    assert len((await herald.user("bob").list_inbox()).items) == 5


async def test_a_batch_larger_than_the_burst_is_refused_without_a_delay(deploy: Deploy) -> None:
    herald, _ = await deploy("up", rate_limit=limits(key_send_rate=100, key_send_burst=4))
    stub, metadata = ingest_stub(herald, herald.tokens.backend("acme"))
    request = ingest_pb2.SendBatchRequest(notifications=[to_user("alice") for _ in range(5)])
    with pytest.raises(aio.AioRpcError) as refused:
        await stub.SendBatch(request, metadata=metadata)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "split the batch into calls of at most 4" in (refused.value.details() or "")
    assert "retry-after" not in dict(refused.value.trailing_metadata() or ())
    # An empty or oversized batch is still INVALID_ARGUMENT first.
    with pytest.raises(aio.AioRpcError) as empty:
        await stub.SendBatch(ingest_pb2.SendBatchRequest(), metadata=metadata)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_each_service_key_has_its_own_budget_within_the_tenants(deploy: Deploy) -> None:
    herald, _ = await deploy(
        "up",
        rate_limit=limits(
            tenant_send_rate=1, tenant_send_burst=5, key_send_rate=1, key_send_burst=3
        ),
    )
    minter = herald.tokens.minter
    billing = HeraldClient(herald.address("ingest"), minter.mint("billing", "acme", ["send"]))
    shipping = HeraldClient(herald.address("ingest"), minter.mint("shipping", "acme", ["send"]))
    herald.clients += [billing, shipping]
    await billing.send_batch([to_user("alice") for _ in range(3)])
    with pytest.raises(aio.AioRpcError) as key_refused:
        await billing.send(to_user("alice"))
    assert "service key 'billing'" in (key_refused.value.details() or "")
    await shipping.send_batch([to_user("alice") for _ in range(2)])
    # The tenant's 5 are spent by the two keys together.
    with pytest.raises(aio.AioRpcError) as tenant_refused:
        await shipping.send(to_user("alice"))
    assert "tenant 'acme'" in (tenant_refused.value.details() or "")


async def test_a_tenant_runs_under_its_own_limits(deploy: Deploy) -> None:
    settings = limits(
        tenant_send_rate=100,
        tenant_send_burst=100,
        tenants={"small": TenantRateLimits(tenant_send_rate=1, tenant_send_burst=1)},
    )
    herald, _ = await deploy("up", rate_limit=settings)
    await herald.backend("small").send(to_user("alice"))
    with pytest.raises(aio.AioRpcError) as refused:
        await herald.backend("small").send(to_user("alice"))
    assert retry_of(refused.value) == (1.0, 1.0)
    await herald.backend("acme").send_batch([to_user("alice") for _ in range(50)])


async def test_limits_turned_off_refuse_nothing(deploy: Deploy) -> None:
    settings = RateLimitSettings(enabled=False, tenant_send_rate=1, tenant_send_burst=1)
    herald, _ = await deploy("up", rate_limit=settings)
    for _ in range(3):
        await herald.backend().send(to_user("alice"))


@TOPOLOGIES
async def test_subscribes_over_the_users_rate_are_refused_with_when_to_retry(
    deploy: Deploy, topology: str
) -> None:
    herald, clock = await deploy(
        topology, rate_limit=limits(user_subscribe_rate=0.5, user_subscribe_burst=2)
    )
    alice = herald.user("alice")
    opened = [alice.open_stream(stream_pb2.SubscribeRequest()) for _ in range(2)]
    for call in opened:
        assert (await call.read()).WhichOneof("event") == "session_started"
    third = alice.open_stream(stream_pb2.SubscribeRequest())
    with pytest.raises(aio.AioRpcError) as refused:
        await third.read()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "user 'alice' may make 0.5 Subscribe calls per second" in (refused.value.details() or "")
    assert retry_of(refused.value) == (2.0, 2.0)
    # Bob is not limited by Alice's connects; Alice is again once the token is back.
    bob = herald.user("bob").open_stream(stream_pb2.SubscribeRequest())
    assert (await bob.read()).WhichOneof("event") == "session_started"
    await clock.advance(2.0)
    fourth = alice.open_stream(stream_pb2.SubscribeRequest())
    assert (await fourth.read()).WhichOneof("event") == "session_started"
    for call in (*opened, bob, fourth):
        call.cancel()


async def test_a_malformed_subscribe_costs_no_token(deploy: Deploy) -> None:
    herald, _ = await deploy("up", rate_limit=limits(user_subscribe_rate=1, user_subscribe_burst=1))
    alice = herald.user("alice")
    for _ in range(3):
        bad = alice.open_stream(stream_pb2.SubscribeRequest(device="d" * 300))
        with pytest.raises(aio.AioRpcError) as refused:
            await bad.read()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    good = alice.open_stream(stream_pb2.SubscribeRequest())
    assert (await good.read()).WhichOneof("event") == "session_started"
    good.cancel()


async def test_the_tenants_connect_rate_covers_all_its_users(deploy: Deploy) -> None:
    herald, _ = await deploy(
        "up", rate_limit=limits(tenant_subscribe_rate=1, tenant_subscribe_burst=2)
    )
    calls = [herald.user(f"u{i}").open_stream(stream_pb2.SubscribeRequest()) for i in range(2)]
    for call in calls:
        await call.read()
    with pytest.raises(aio.AioRpcError) as refused:
        await herald.user("u9").open_stream(stream_pb2.SubscribeRequest()).read()
    assert "tenant 'acme' may make 1 Subscribe calls per second" in (refused.value.details() or "")
    other = herald.user("u9", tenant="globex").open_stream(stream_pb2.SubscribeRequest())
    assert (await other.read()).WhichOneof("event") == "session_started"
    for call in (*calls, other):
        call.cancel()


async def test_the_client_waits_out_a_rate_limit_and_connects(deploy: Deploy) -> None:
    herald, clock = await deploy(
        "up", rate_limit=limits(user_subscribe_rate=5, user_subscribe_burst=1)
    )
    alice = herald.user("alice")
    first = alice.open_stream(stream_pb2.SubscribeRequest())
    await first.read()
    connected = asyncio.Event()
    subscription = alice.subscribe(
        on_connect=lambda _: connected.set(), backoff=Backoff(base_s=0.01, cap_s=0.01)
    )
    reader = asyncio.ensure_future(anext(aiter(subscription)))
    try:
        # Refused (0.2 s to wait): the client does not give up, it retries after the delay.
        await asyncio.sleep(0.1)
        assert not connected.is_set()
        assert not reader.done()
        await clock.advance(0.2)
        await asyncio.wait_for(connected.wait(), 5)
    finally:
        reader.cancel()
        subscription.cancel()
        first.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_node_tokens_are_not_limited(deploy: Deploy) -> None:
    herald, _ = await deploy("up", rate_limit=limits(tenant_send_rate=1, tenant_send_burst=1))
    node = HeraldClient(herald.address("ingest"), herald.tokens.minter.node_token("n1"))
    herald.clients.append(node)
    user = HeraldClient(
        herald.address("ingest"), herald.tokens.minter.mint("alice", "acme", [auth.SCOPE_SEND])
    )
    herald.clients.append(user)
    await user.send(to_user("alice"))
    with pytest.raises(aio.AioRpcError):
        await user.send(to_user("alice"))
    # A node token names tenant '*': its calls are the cluster's own, not a tenant's traffic.
    for _ in range(3):
        await node.send(to_user("alice"))
