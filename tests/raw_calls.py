"""Any herald method called with request bytes as they are, for tests of hostile input."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from google.protobuf.descriptor import MethodDescriptor
from grpc import aio

from herald.node.v1 import node_pb2
from herald.v1 import ingest_pb2, registry_pb2, stream_pb2

Metadata = tuple[tuple[str, str], ...]

SERVICES = [
    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"],
    stream_pb2.DESCRIPTOR.services_by_name["StreamService"],
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    node_pb2.DESCRIPTOR.services_by_name["NodeService"],
]
# Every method of every herald service, by path: `/herald.v1.IngestService/Send`, ...
METHODS: dict[str, MethodDescriptor] = {
    f"/{service.full_name}/{method.name}": method
    for service in SERVICES
    for method in service.methods
}


async def call(
    channel: aio.Channel,
    path: str,
    requests: Sequence[bytes],
    metadata: Metadata = (),
    deadline_s: float = 5.0,
) -> tuple[grpc.StatusCode | None, str]:
    """Sends the request bytes (the first of them to a unary method) and returns the status.

    A server stream counts as OK once its first message arrives (a Subscribe stream never ends on
    its own). A client stream is written in lockstep, one message after the answer to the one
    before (AckStream answers each), then half-closed and read to its end. Its code is None when
    the server ended the call before a message was written: grpc's client then reports an
    INTERNAL of its own ("Internal error from Core") in place of the server's status.
    """
    method = METHODS[path]
    try:
        if method.client_streaming:
            return await _client_stream(channel, path, requests, metadata, deadline_s)
        if method.server_streaming:
            stream = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            stream_call = stream(requests[0], metadata=metadata, timeout=deadline_s)
            try:
                first = await stream_call.read()
            finally:
                stream_call.cancel()
            return (grpc.StatusCode.OK, "") if first is not aio.EOF else await _ended(stream_call)
        unary = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        await unary(requests[0], metadata=metadata, timeout=deadline_s)
    except aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def _client_stream(
    channel: aio.Channel,
    path: str,
    requests: Sequence[bytes],
    metadata: Metadata,
    deadline_s: float,
) -> tuple[grpc.StatusCode | None, str]:
    stream = channel.stream_stream(path, request_serializer=None, response_deserializer=None)
    stream_call = stream(metadata=metadata, timeout=deadline_s)
    for request in requests:
        if stream_call.done():
            return await _ended(stream_call)
        try:
            await stream_call.write(request)
        except asyncio.InvalidStateError:
            return await _ended(stream_call)
        except aio.AioRpcError:
            return None, "the server ended the call before this message was written"
        if await stream_call.read() is aio.EOF:
            return await _ended(stream_call)
    await stream_call.done_writing()
    while await stream_call.read() is not aio.EOF:
        pass
    return await _ended(stream_call)


async def _ended(stream_call: aio.Call) -> tuple[grpc.StatusCode | None, str]:
    return await stream_call.code(), await stream_call.details() or ""
