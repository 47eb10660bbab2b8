"""Acceptance: tenant settings on the production profile. Stored in PostgreSQL, they reach every
node of the cluster within HERALD_REGISTRY_TENANT_SETTINGS_TTL_S and survive a restart of all of
them (kill -9). Real processes, a fresh database and Redis key prefix per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc import aio

from herald.v1 import notification_pb2, registry_pb2
from services import auth
from services.client import HeraldClient
from tests.cluster import Cluster, Member, shared_cluster

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

TTL_S = 0.5


def to_alice(title: str) -> notification_pb2.Notification:
    n = notification_pb2.Notification()
    n.target.user_id = "alice"
    n.content.title = title
    return n


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with shared_cluster(
        tmp_path, extra_env={"HERALD_REGISTRY_TENANT_SETTINGS_TTL_S": str(TTL_S)}
    ) as deployment:
        yield deployment


def admin(cluster: Cluster, member: Member) -> HeraldClient:
    client = HeraldClient(member.address, cluster.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN))
    cluster.clients.append(client)
    return client


async def until_refused(backend: HeraldClient, within: float) -> float:
    """Sends until one is refused by the tenant's stored limit; returns how long that took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    refusal: aio.AioRpcError | None = None
    async with asyncio.timeout(within):
        while refusal is None:
            try:
                await backend.send(to_alice("probe"))
            except aio.AioRpcError as error:
                refusal = error
            else:
                await asyncio.sleep(0.05)
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tenant 'acme' may make 0.001 notifications" in (refusal.details() or "")
    return loop.time() - start


async def test_settings_reach_every_node_and_survive_a_restart(cluster: Cluster) -> None:
    one, two = await cluster.start("up"), await cluster.start("up")
    on_two = cluster.backend(two)
    await on_two.send(to_alice("node two has read acme's settings (none)"))
    limits = registry_pb2.TenantRateLimits(tenant_send_rate=0.001, tenant_send_burst=1)
    put = registry_pb2.TenantSettings(
        rate_limits=limits, stream_policy=registry_pb2.StreamPolicy(signing_required=True)
    )
    stored = await admin(cluster, one).put_tenant_settings(put)
    assert stored.version == 1
    # Node two reads them again within the TTL (and one read).
    await until_refused(on_two, within=TTL_S + 5)

    await cluster.kill(one)
    await cluster.kill(two)
    three = await cluster.start("up")
    got = await admin(cluster, three).tenant_settings()
    assert got.settings.version == 1
    assert got.settings.rate_limits == limits
    assert got.settings.stream_policy.signing_required
    assert got.settings.updated_by == "billing"
    await until_refused(cluster.backend(three), within=5)
