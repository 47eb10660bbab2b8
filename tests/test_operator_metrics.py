"""The metrics an operator reads, through real gRPC calls and a real /metrics scrape: latency
histograms, per-RPC counts and durations by code, open streams per tenant (bounded), queue
depths, redeliveries."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc import aio

from herald.v1 import notification_pb2, stream_pb2_grpc
from services.client import HeraldClient
from services.config import DeliverySettings, ServerSettings
from tests.conftest import Deploy
from tests.harness import to_user
from tests.metrics_support import Scraper, metrics_server, until
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

INGEST = "herald.v1.IngestService"


async def test_delivery_latency_is_from_acceptance_to_the_stream_write(deploy: Deploy) -> None:
    herald, clock = await deploy("up")
    backend = herald.backend()
    with metrics_server() as scrape:
        before = await scrape.samples()
        await backend.send(to_user("alice", "one"))
        await backend.send_batch([to_user("alice", "two")])
        await clock.advance(3.0)  # alice connects 3 s after both were accepted
        stream = Stream(herald.user("alice"))
        await stream.start()
        await stream.deliveries(2)
        # Live: written as soon as it is accepted, alone in its stream message.
        await backend.send(to_user("alice", "three"))
        await stream.deliveries(1)
        after = await scrape.samples()
        stream.cancel()

    def change(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    latency = "herald_delivery_latency_seconds"
    assert change(f"{latency}_count") == 3
    assert change(f"{latency}_sum") == pytest.approx(6.0)
    assert change(f"{latency}_bucket", le="0.001") == 1  # the live one (the clock stood still)
    assert change(f"{latency}_bucket", le="2.5") == 1
    assert change(f"{latency}_bucket", le="5.0") == 3
    # One observation per Send / SendBatch call, in the ingest core.
    assert change("herald_ingest_latency_seconds_count") == 3


async def test_each_rpc_is_counted_and_timed_by_its_status_code(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    backend = herald.backend()
    stranger = HeraldClient(herald.address("ingest"), "not-a-token")
    herald.clients.append(stranger)

    def send(code: str) -> tuple[str, dict[str, str]]:
        return "herald_rpc_handled_total", {"service": INGEST, "method": "Send", "code": code}

    def timed(code: str) -> tuple[str, dict[str, str]]:
        return "herald_rpc_duration_seconds_count", {
            "service": INGEST,
            "method": "Send",
            "code": code,
        }

    series = [send(c) for c in ("OK", "INVALID_ARGUMENT", "UNAUTHENTICATED")]
    series += [timed(c) for c in ("OK", "INVALID_ARGUMENT", "UNAUTHENTICATED")]
    with metrics_server() as scrape:
        before = [await scrape.value(name, **labels) for name, labels in series]
        await backend.send(to_user("alice"))
        await backend.send(to_user("alice"))
        with pytest.raises(aio.AioRpcError) as bad:
            await backend.send(notification_pb2.Notification())  # no target
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(aio.AioRpcError) as refused:
            await stranger.send(to_user("alice"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        after = [await scrape.value(name, **labels) for name, labels in series]
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1, 2, 1, 1]


async def test_a_stream_is_counted_by_the_code_it_ended_with(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    labels = {"service": "herald.v1.StreamService", "method": "Subscribe", "code": "CANCELLED"}
    with metrics_server() as scrape:
        before = await scrape.value("herald_rpc_handled_total", **labels)
        stream = Stream(herald.user("alice"))
        await stream.start()
        stream.cancel()
        await until(lambda: _equals(scrape, before + 1, "herald_rpc_handled_total", **labels), 10)
        # Streams have no duration series: a stream's lifetime is not a latency.
        text = await scrape.text()
        assert 'herald_rpc_duration_seconds_count{code="CANCELLED",method="Subscribe"' not in text


async def _equals(scrape: Scraper, expected: float, name: str, **labels: str) -> bool:
    return await scrape.value(name, **labels) == expected


async def test_open_streams_per_tenant_keep_a_bounded_label_set(
    deploy: Deploy, tmp_path: Path
) -> None:
    server = ServerSettings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "data",
        shutdown_grace_s=2,
        metrics_tenant_labels="acme, globex",
    )
    herald, _ = await deploy("up", server=server)
    streams = [
        Stream(herald.user("alice", tenant="acme")),
        Stream(herald.user("bob", tenant="initech")),
        Stream(herald.user("carol", tenant="umbrella")),
    ]
    for stream in streams:
        await stream.start()
    alice = herald.user("alice", tenant="acme")
    acks = stream_pb2_grpc.StreamServiceStub(alice._channel).AckStream(metadata=alice.metadata())
    name = "herald_streams_open"
    with metrics_server() as scrape:
        await until(lambda: _equals(scrape, 1, name, stream="ack", tenant="acme"))
        assert await scrape.value(name, stream="subscribe", tenant="acme") == 1
        # Tenants not on the allow-list share one label value: no series per tenant.
        assert await scrape.value(name, stream="subscribe", tenant="other") == 2
        text = await scrape.text()
        assert "initech" not in text
        assert "umbrella" not in text
        assert await scrape.value("herald_sessions_open") == 3

        for stream in streams:
            stream.cancel()
        await acks.done_writing()
        assert await acks.code() == grpc.StatusCode.OK
        for stream_kind, tenant in (("subscribe", "acme"), ("subscribe", "other"), ("ack", "acme")):
            await until(
                lambda s=stream_kind, t=tenant: _equals(scrape, 0, name, stream=s, tenant=t)
            )


async def test_unacked_entries_redeliveries_and_their_queue_depth(deploy: Deploy) -> None:
    herald, clock = await deploy("up", delivery=DeliverySettings(ack_timeout_s=10))
    backend = herald.backend()
    alice = herald.user("alice")
    stream = Stream(alice)
    await stream.start()
    with metrics_server() as scrape:
        redelivered = await scrape.value("herald_redeliveries_total")
        await backend.send(to_user("alice", "one"))
        await backend.send(to_user("alice", "two"))
        first = await stream.deliveries(2)
        assert await scrape.value("herald_queue_depth", queue="unacked") == 2
        assert await scrape.value("herald_queue_depth", queue="session_buffer") == 0

        await clock.advance(12.5)  # past the ack timeout (10 s +-20 %): both are resent
        again = await stream.deliveries(2)
        # Each write has its own jittered timer: the two may come back in either order.
        assert sorted((d.cursor, d.attempt) for d in again) == [(d.cursor, 2) for d in first]
        assert await scrape.value("herald_redeliveries_total") == redelivered + 2

        await alice.ack(up_to={"user": max(d.cursor for d in again)})
        await until(lambda: _equals(scrape, 0, "herald_queue_depth", queue="unacked"))
    stream.cancel()


async def test_entries_that_expire_unacknowledged_are_counted(deploy: Deploy) -> None:
    herald, clock = await deploy("up")
    backend = herald.backend()
    with metrics_server() as scrape:
        expired = await scrape.value("herald_expired_total")
        await backend.send(to_user("alice", "short-lived", ttl_seconds=5))
        await backend.send(to_user("alice", "kept"))
        await clock.advance(15)  # past the TTL and a sweep of the logs (every 10 ticks)
        assert await scrape.value("herald_expired_total") == expired + 1
        stream = Stream(herald.user("alice"))
        await stream.start()
        [kept] = await stream.deliveries(1)
        assert kept.notification.content.title == "kept"
        stream.cancel()
