"""Acceptance: health reports SERVING per service, reflection lists the herald services."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from herald.v1 import stream_pb2
from services.health import NodeHealth
from tests.harness import Herald
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

HERALD_SERVICES = {
    "ingest": "herald.v1.IngestService",
    "stream": "herald.v1.StreamService",
    "registry": "herald.v1.RegistryService",
}


async def _health(address: str, service: str) -> int:
    async with aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(response.status)


async def _listed(address: str) -> set[str]:
    async with aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        async for response in call:
            return {s.name for s in response.list_services_response.service}
    return set()


async def test_every_service_reports_serving(herald: Herald) -> None:
    for role, service in HERALD_SERVICES.items():
        assert (
            await _health(herald.address(role), service) == health_pb2.HealthCheckResponse.SERVING
        )
        assert await _health(herald.address(role), "") == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_herald_services(herald: Herald) -> None:
    listed: set[str] = set()
    for role in HERALD_SERVICES:
        listed |= await _listed(herald.address(role))
    assert set(HERALD_SERVICES.values()) <= listed
    assert "grpc.health.v1.Health" in listed


async def test_shutdown_drains_streams_with_a_reconnect_hint(herald_up: Herald) -> None:
    node = herald_up.node("up")
    stream = Stream(herald_up.user("alice"))
    await stream.start()
    stopping = asyncio.create_task(node.stop(5.0))
    event = await stream.event()
    assert event.WhichOneof("event") == "closing"
    assert event.closing.reason == stream_pb2.Closing.REASON_SHUTDOWN
    assert event.closing.retry_after_ms > 0
    assert await stream.call.read() is aio.EOF
    await stopping
    with pytest.raises(aio.AioRpcError):
        await _health(node.address, "herald.v1.StreamService")


async def test_health_of_an_unknown_service_is_not_found(herald_up: Herald) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await _health(herald_up.address("up"), "no.such.Service")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no service 'no.such.Service'" in (raised.value.details() or "")


async def test_a_node_is_not_serving_until_it_has_started_everything() -> None:
    # The gRPC server answers health checks as soon as it starts, before the node has started
    # its WebSocket listener, delivery core and ingestion sources: until the node sets its
    # health, a balancer must read NOT_SERVING (before, "" answered SERVING from the start).
    health = NodeHealth()
    server = aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        address = f"127.0.0.1:{port}"
        assert await _health(address, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await _health(address, "") == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(0)
