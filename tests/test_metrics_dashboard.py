"""The Grafana dashboard (deploy/grafana/herald.json) queries only metrics a running node
exports: a renamed metric breaks this test, not the operator's dashboard at 3 a.m.

And a real `herald up` process on PostgreSQL and Redis serves them on HERALD_METRICS_HOST, apart
from the gRPC host, with its breakers' states."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families

from herald.v1 import notification_pb2
from services.client import HeraldClient
from tests.cluster import Cluster, Member, free_port, shared_cluster
from tests.harness import to_user
from tests.metrics_support import Scraper, until
from tests.postgres import scratch_database
from tests.redis_support import (
    throwaway_redis,
)
from tests.streams import Stream

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "herald.json"
# The gRPC host stays 127.0.0.1; /metrics listens on another loopback address.
METRICS_HOST = "127.0.0.2"
FAST_BREAKER = {"HERALD_BREAKER_RESET_S": "0.3", "HERALD_BREAKER_FAILURES": "1"}
_METRIC = re.compile(r"\bherald_[a-z0-9_]+")


def queries(dashboard: dict[str, object]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template-variable queries."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    return found


def dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["templating"]["list"][0]["type"] == "datasource"  # a Prometheus variable
    expressions = [e for e in queries(dashboard) if e != "prometheus"]
    for expression in expressions:
        assert _METRIC.search(expression), f"a query on no herald metric: {expression}"
    return {name for expression in expressions for name in _METRIC.findall(expression)}


def exported(text: str) -> set[str]:
    """Sample names in a /metrics page, and the counters declared there that have not counted
    anything yet (a labelled counter has no sample before its first event)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter" and not family.samples:
            names.add(f"{family.name}_total")
    return names


async def start_node(cluster: Cluster, tenants: str = "acme") -> tuple[Member, Scraper]:
    port = free_port()
    node = await cluster.start(
        "up",
        HERALD_METRICS_PORT=str(port),
        HERALD_METRICS_HOST=METRICS_HOST,
        HERALD_METRICS_TENANT_LABELS=tenants,
    )
    scraper = Scraper(port, METRICS_HOST)

    async def listening() -> bool:
        # The node opens its metrics port once it serves gRPC, a moment later on a busy machine.
        try:
            await scraper.text()
        except urllib.error.URLError:
            return False
        return True

    await until(listening, within=15)
    return node, scraper


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with shared_cluster(tmp_path) as deployment:
        yield deployment


async def test_every_metric_the_dashboard_queries_is_exported(cluster: Cluster) -> None:
    node, scrape = await start_node(cluster)
    backend = cluster.backend(node)
    alice = cluster.user(node, "alice")
    stream = Stream(alice)
    await stream.start()
    for i in range(3):
        await backend.send(to_user("alice", f"n{i}"))
    await backend.send_batch([to_user("alice", "batch")])
    delivered = await stream.deliveries(4)
    await alice.ack(up_to={"user": delivered[-1].cursor})
    with pytest.raises(aio.AioRpcError) as bad:
        await backend.send(notification_pb2.Notification())
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stranger = HeraldClient(node.address, "not-a-token")
    cluster.clients.append(stranger)
    with pytest.raises(aio.AioRpcError) as refused:
        await stranger.send(to_user("alice"))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    text = await scrape.text()
    missing = dashboard_metrics() - exported(text)
    assert not missing, f"the dashboard queries metrics no node exports: {sorted(missing)}"
    # And the traffic shows in them: the histograms counted, the codes, the open stream.
    samples = await scrape.samples()
    assert samples["herald_delivery_latency_seconds_count", ()] >= 4
    assert samples["herald_ingest_latency_seconds_count", ()] >= 2
    for code in ("OK", "INVALID_ARGUMENT", "UNAUTHENTICATED"):
        labels = (("code", code), ("method", "Send"), ("service", "herald.v1.IngestService"))
        assert samples["herald_rpc_handled_total", labels] >= 1, code
    assert samples["herald_streams_open", (("stream", "subscribe"), ("tenant", "acme"))] == 1
    assert samples["herald_breaker_state", (("backend", "PostgreSQL"), ("state", "closed"))] == 1
    assert (
        samples["herald_node_info", (("node_id", node.name), ("roles", "ingest,stream,registry"))]
        == 1
    )
    stream.cancel()


async def test_metrics_listen_on_their_own_host(cluster: Cluster) -> None:
    port = free_port()
    await cluster.start("up", HERALD_METRICS_PORT=str(port), HERALD_METRICS_HOST=METRICS_HOST)
    assert "herald_sessions_open" in await Scraper(port, METRICS_HOST).text()

    def grpc_host() -> None:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)

    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(grpc_host)


async def test_breaker_state_follows_a_backend_outage(tmp_path: Path) -> None:
    async with throwaway_redis() as redis, scratch_database() as dsn:
        cluster = Cluster(tmp_path / "data", dsn, redis.url, "herald:", extra_env=FAST_BREAKER)
        try:
            _, scrape = await start_node(cluster)

            async def state(value: str) -> float:
                return await scrape.value("herald_breaker_state", backend="Redis", state=value)

            async def until_state(value: str) -> None:
                async def reached() -> bool:
                    return await state(value) == 1

                await until(reached, within=15)

            assert await state("closed") == 1
            assert await state("open") == 0
            await redis.stop()
            await until_state("open")
            assert await state("closed") == 0
            transitions = "herald_breaker_transitions_total"
            assert await scrape.value(transitions, backend="Redis", state="open") >= 1
            await redis.start()
            await until_state("closed")
            assert await scrape.value(transitions, backend="Redis", state="closed") >= 1
        finally:
            await cluster.stop()
