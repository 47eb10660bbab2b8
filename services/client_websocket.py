"""A small WebSocket client for Herald's WebSocket endpoint (docs/websocket.md).

    async with await WebSocketSubscription.open("ws://127.0.0.1:8081/ws", token) as sub:
        async for delivery in sub.deliveries():
            ...
            await sub.ack(up_to=sub.cursors)

It speaks the protocol frame by frame and keeps the resume cursors (and epochs) of what it
received, so a caller reconnects with `open(..., request=sub.resume_request())`. Unlike
services/client.py it does not reconnect or drop duplicates by itself: tests and the benchmark
use it to see exactly what the server sends.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from ssl import SSLContext
from types import TracebackType
from urllib.parse import urlsplit

from google.protobuf import json_format
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from herald.v1 import stream_pb2

PROTOBUF = "herald.v1"
JSON = "herald.v1.json"
BEARER_PREFIX = "herald.bearer."


class Closed(Exception):
    """The server closed the connection: its close code and reason, and the Closing event that
    came before, if any."""

    def __init__(self, code: int | None, reason: str, closing: stream_pb2.Closing | None) -> None:
        super().__init__(f"closed with {code}: {reason}")
        self.code = code
        self.reason = reason
        self.closing = closing


class WebSocketSubscription:
    """One WebSocket connection, one session."""

    def __init__(self, connection: ClientConnection, json: bool) -> None:
        self.connection = connection
        self.json = json
        self.started: stream_pb2.SessionStarted | None = None
        self.closing: stream_pb2.Closing | None = None
        # Per log: the resume cursor of the last delivery received, and the log's epoch.
        self.cursors: dict[str, int] = {}
        self.epochs: dict[str, int] = {}
        self.heartbeats = 0

    @classmethod
    async def open(
        cls,
        url: str,
        token: str,
        request: stream_pb2.SubscribeRequest | None = None,
        *,
        json: bool = False,
        token_in_subprotocol: bool = False,
        subprotocols: Iterable[str] | None = None,
        open_timeout: float = 10.0,
        max_queue: int | None = 16,
        receive_buffer: int | None = None,
        ssl: SSLContext | None = None,
    ) -> WebSocketSubscription:
        """Connects, sends the subscribe frame and returns once the session started.

        `max_queue` frames wait to be read before the client stops reading the socket, and
        `receive_buffer` sets the socket's SO_RCVBUF: a test's slow consumer keeps both small.

        Raises:
            Closed: the server refused the session (its close code says why).
        """
        offered = list(subprotocols) if subprotocols is not None else [JSON if json else PROTOBUF]
        if token_in_subprotocol:
            offered.append(BEARER_PREFIX + token)
        sock = None
        if receive_buffer is not None:
            parts = urlsplit(url)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port or 80))
        connection = await connect(
            url,
            subprotocols=[Subprotocol(p) for p in offered] or None,
            compression=None,
            open_timeout=open_timeout,
            max_size=None,
            max_queue=max_queue,
            sock=sock,
            ssl=ssl,
        )
        subscription = cls(connection, json)
        subscribe = stream_pb2.WebSocketSubscribe(
            token="" if token_in_subprotocol else token,
            request=request or stream_pb2.SubscribeRequest(),
        )
        await subscription.send(stream_pb2.WebSocketClientFrame(subscribe=subscribe))
        try:
            event = await subscription.event(open_timeout)
        except BaseException:
            await connection.close()
            raise
        if event.WhichOneof("event") != "session_started":
            await connection.close()
            raise AssertionError(f"the first event is not session_started: {event}")
        return subscription

    async def __aenter__(self) -> WebSocketSubscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.connection.close()

    def abort(self) -> None:
        """Drops the TCP connection without a close handshake (a client that vanished)."""
        self.connection.transport.abort()

    async def send(self, frame: stream_pb2.WebSocketClientFrame) -> None:
        if self.json:
            await self.connection.send(json_format.MessageToJson(frame, indent=None))
        else:
            await self.connection.send(frame.SerializeToString())

    async def event(self, within: float = 10.0) -> stream_pb2.SubscribeResponse:
        """The next event; it updates `cursors`, `epochs`, `started` and `closing`.

        Raises:
            Closed: the connection closed (after a Closing event, or without one).
            TimeoutError: nothing came within `within` seconds.
        """
        try:
            async with asyncio.timeout(within):
                message = await self.connection.recv()
        except ConnectionClosed as exc:
            received = exc.rcvd
            raise Closed(
                received.code if received else None,
                received.reason if received else "",
                self.closing,
            ) from None
        if isinstance(message, str):
            event = json_format.Parse(message, stream_pb2.SubscribeResponse())
        else:
            event = stream_pb2.SubscribeResponse.FromString(message)
        kind = event.WhichOneof("event")
        if kind == "session_started":
            self.started = event.session_started
            for position in event.session_started.logs:
                self.epochs[position.log] = position.epoch
        elif kind == "deliveries":
            for delivery in event.deliveries.deliveries:
                self.cursors[delivery.log] = max(
                    self.cursors.get(delivery.log, 0), delivery.resume_cursor
                )
        elif kind == "heartbeat":
            self.heartbeats += 1
        elif kind == "closing":
            self.closing = event.closing
        return event

    async def deliveries(self, within: float = 10.0) -> AsyncIterator[stream_pb2.Delivery]:
        """Every delivery as it arrives, until the connection closes (raises Closed)."""
        while True:
            event = await self.event(within)
            for delivery in event.deliveries.deliveries:
                yield delivery

    async def take(self, count: int, within: float = 10.0) -> list[stream_pb2.Delivery]:
        """The next `count` deliveries (heartbeats skipped)."""
        taken: list[stream_pb2.Delivery] = []
        async with asyncio.timeout(within):
            while len(taken) < count:
                event = await self.event(within)
                taken.extend(event.deliveries.deliveries)
        return taken

    async def ack(
        self, notification_ids: Iterable[str] = (), up_to: Mapping[str, int] | None = None
    ) -> None:
        """Sends an ack frame (not answered: the server takes it like an Ack call)."""
        request = stream_pb2.AckRequest(notification_ids=list(notification_ids))
        for log, cursor in (up_to or {}).items():
            request.up_to.add(log=log, cursor=cursor, epoch=self.epochs.get(log, 0))
        await self.send(stream_pb2.WebSocketClientFrame(ack=request))

    def resume_request(self, **fields: object) -> stream_pb2.SubscribeRequest:
        """A SubscribeRequest that resumes every log from what this connection received."""
        request = stream_pb2.SubscribeRequest(**fields)  # type: ignore[arg-type]
        for log, cursor in self.cursors.items():
            request.cursors.add(log=log, cursor=cursor, epoch=self.epochs.get(log, 0))
        return request
