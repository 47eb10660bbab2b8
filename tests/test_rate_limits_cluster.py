"""Acceptance: rate limits on the production profile. Nodes on one Redis share each budget, and
while Redis is down a node fails open or closed, as HERALD_RATE_LIMIT_REDIS_FAILURE says."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc import aio

from herald.v1 import notification_pb2, stream_pb2
from tests.cluster import Cluster, shared_cluster
from tests.postgres import scratch_database
from tests.redis_support import (
    throwaway_redis,
)
from tests.test_outages import FAST_BREAKER, NOT_SERVING, until_health

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

# Five notifications per tenant, refilled so slowly that none comes back during the test.
TINY_SEND_BUDGET = {
    "HERALD_RATE_LIMIT_TENANT_SEND_RATE": "0.001",
    "HERALD_RATE_LIMIT_TENANT_SEND_BURST": "5",
}


def to_alice(title: str) -> notification_pb2.Notification:
    n = notification_pb2.Notification()
    n.target.user_id = "alice"
    n.content.title = title
    return n


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with shared_cluster(tmp_path, extra_env=TINY_SEND_BUDGET) as deployment:
        yield deployment


async def test_two_nodes_share_one_tenant_budget(cluster: Cluster) -> None:
    one, two = await cluster.start("up"), await cluster.start("up")
    on_one, on_two = cluster.backend(one), cluster.backend(two)
    await on_one.send_batch([to_alice(f"a{i}") for i in range(3)])
    await on_two.send_batch([to_alice(f"b{i}") for i in range(2)])
    for backend in (on_one, on_two):
        with pytest.raises(aio.AioRpcError) as refused:
            await backend.send(to_alice("over"))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "tenant 'acme' may make 0.001 notifications per second" in (
            refused.value.details() or ""
        )
    # Another tenant's budget is its own, on either node.
    await cluster.backend(two, tenant="globex").send(to_alice("other tenant"))


@pytest.mark.parametrize("on_failure", ["open", "closed"])
async def test_redis_down_fails_open_or_closed_as_set(tmp_path: Path, on_failure: str) -> None:
    async with throwaway_redis() as redis, scratch_database() as dsn:
        env = {**FAST_BREAKER, **TINY_SEND_BUDGET, "HERALD_RATE_LIMIT_REDIS_FAILURE": on_failure}
        cluster = Cluster(tmp_path / "data", dsn, redis.url, "herald:", extra_env=env)
        try:
            node = await cluster.start("up")
            backend = cluster.backend(node)
            await backend.send(to_alice("while Redis is up"))
            await redis.stop()
            await until_health(node, "herald.v1.StreamService", NOT_SERVING)
            if on_failure == "open":
                # Unchecked, but accepted: more than the budget goes through (PostgreSQL holds it).
                for i in range(6):
                    await backend.send(to_alice(f"unchecked {i}"))
            else:
                with pytest.raises(aio.AioRpcError) as refused:
                    await backend.send(to_alice("unchecked"))
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "rate limits cannot be checked" in (refused.value.details() or "")
            # A new stream needs the session directory either way.
            call = cluster.user(node, "bob").open_stream(stream_pb2.SubscribeRequest())
            with pytest.raises(aio.AioRpcError) as no_stream:
                await call.read()
            assert no_stream.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await cluster.stop()
