"""Helpers to read a Subscribe stream in tests without sleeping."""

from __future__ import annotations

import asyncio
from typing import Any

from grpc import aio

from herald.v1 import stream_pb2
from services.client import HeraldClient


class Stream:
    """A raw Subscribe call: events as the server sent them."""

    def __init__(
        self, client: HeraldClient, request: stream_pb2.SubscribeRequest | None = None
    ) -> None:
        self.call: aio.UnaryStreamCall[Any, Any] = client.open_stream(
            request or stream_pb2.SubscribeRequest()
        )
        self.started: stream_pb2.SessionStarted | None = None
        self._buffer: list[stream_pb2.Delivery] = []

    async def start(self, within: float = 5.0) -> stream_pb2.SessionStarted:
        async with asyncio.timeout(within):
            event = await self.call.read()
        assert event.WhichOneof("event") == "session_started", event
        self.started = event.session_started
        return self.started

    async def event(self, within: float = 5.0) -> stream_pb2.SubscribeResponse:
        async with asyncio.timeout(within):
            event = await self.call.read()
        assert event is not aio.EOF, "the stream ended"
        return event

    async def deliveries(self, count: int, within: float = 5.0) -> list[stream_pb2.Delivery]:
        """The next `count` deliveries (skipping heartbeats)."""
        async with asyncio.timeout(within):
            while len(self._buffer) < count:
                event = await self.call.read()
                assert event is not aio.EOF, "the stream ended"
                kind = event.WhichOneof("event")
                if kind == "deliveries":
                    self._buffer.extend(event.deliveries.deliveries)
                else:
                    assert kind == "heartbeat", f"unexpected event {kind}"
        taken, self._buffer = self._buffer[:count], self._buffer[count:]
        return taken

    async def inbox_event(self, within: float = 5.0) -> stream_pb2.InboxEvent:
        """The next inbox event, skipping heartbeats and keeping deliveries for `deliveries`."""
        async with asyncio.timeout(within):
            while True:
                event = await self.call.read()
                assert event is not aio.EOF, "the stream ended"
                kind = event.WhichOneof("event")
                if kind == "inbox_event":
                    return event.inbox_event
                if kind == "deliveries":
                    self._buffer.extend(event.deliveries.deliveries)
                else:
                    assert kind == "heartbeat", f"unexpected event {kind}"

    def cancel(self) -> None:
        self.call.cancel()
