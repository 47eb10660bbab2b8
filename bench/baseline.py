"""A raw grpc.aio fan-out server: the floor that Herald's delivery is measured against.

No Herald logic: no auth, no logs, no cursors kept, no acks. One asyncio.Queue per subscriber, and
the stream handler writes each queued message as it arrives (one `write` per message), which is the
"one queue per subscriber" set-up of DESIGN.md. `Publish` takes a `herald.v1.SendBatchRequest`
(what the load generator sends to Herald's `SendBatch`) and puts each notification, wrapped as a
one-delivery `herald.v1.SubscribeResponse`, on its user's queue, so subscribers read the baseline
with the same generated classes they use for Herald.

With `--protocol` it serves Herald's own method names and does, still without any Herald logic,
the I/O that Herald's protocol obliges any server to do (the "protocol floor"): `SendBatch` answers
one result with a fresh notification id per notification, deliveries carry Herald's framing (id,
log, cursor, attempt), and each subscriber's `AckStream` is read and answered. The user comes from
the bearer token's `sub`, read without checking the signature: a floor, not a server.

With `--ws-port PORT` as well, the protocol floor also serves Herald's WebSocket protocol
(docs/websocket.md) on that port with the library Herald uses (websockets, compression off, the
same frame bound and pings), and nothing else: a connection's first frame is a
`WebSocketClientFrame.subscribe` (the user from its token's `sub`, unchecked), the floor writes
`SessionStarted`, then each delivery frame queued for the user by `SendBatch` (pre-encoded, one
`send` per frame), and reads and parses the client's ack frames. It is the WebSocket floor of
bench/delivery.py (target `websocket-floor`): what serving Herald's load over WebSocket costs any
Python server on this library, with no log, session, status or timer. `--ws-library picows`
serves the same protocol with picows instead (Cython framing; not a Herald dependency,
`pip install picows`): the same queue and writer task per connection, `WSTransport.send` per frame
(target `websocket-floor-picows`).

With `--durable-dsn DSN` as well, the protocol floor's `SendBatch` also makes each batch durable
the least way any server promising "durably in every recipient's log" can: one statement per call
inserts a row per notification (tenant, user, an ordering key, id, the encoded notification) and
commits, with PostgreSQL's default synchronous commit, before it answers; and each AckStream
message upserts the acked cursor of each log it names (one statement, committed without waiting
for the WAL flush, as Herald's acks are). No cursors per user, no status, no idempotency, no
broker, no redelivery: the floor under Herald's durable ingest (bench/send.py `--profile floor`)
and durable delivery (bench/delivery.py target `protocol-pg`).

With `--idle`, Subscribe writes one SessionStarted and then awaits forever: the least a server
holds per open stream (the protocol floor of bench/memory.py's idle memory per subscription).

    python bench/baseline.py --port 50600 [--protocol [--durable-dsn DSN] [--ws-port PORT] | --idle]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jwt
from grpc import aio
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from herald.v1 import ingest_pb2, stream_pb2
from services import wire
from services.ingest.core import new_notification_ids

SERVICE = "bench.baseline.v1.FanOut"
SUBSCRIBE = f"/{SERVICE}/Subscribe"
PUBLISH = f"/{SERVICE}/Publish"
# HERALD_MAX_PENDING_CALLS' default (services/config.py).
MAX_PENDING_CALLS = 20_000
# Subscribers name themselves with this metadata key (Herald reads the user from the JWT).
USER_KEY = "x-bench-user"

_STARTED = stream_pb2.SubscribeResponse(
    session_started=stream_pb2.SessionStarted(session_id="baseline")
).SerializeToString()


class FanOut:
    """Per-subscriber queues, filled by Publish and drained by Subscribe."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._cursor = 0

    @staticmethod
    def _user(context: aio.ServicerContext[Any, Any]) -> str:
        for key, value in context.invocation_metadata() or ():
            if key == USER_KEY:
                return value if isinstance(value, str) else value.decode()
        return ""

    async def subscribe(self, request: bytes, context: aio.ServicerContext[Any, Any]) -> None:
        user = self._user(context)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queues[user] = queue
        try:
            await context.write(_STARTED)
            while True:
                await context.write(await queue.get())
        finally:
            if self._queues.get(user) is queue:
                del self._queues[user]

    async def publish(self, request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        batch = ingest_pb2.SendBatchRequest.FromString(request)
        for notification in batch.notifications:
            queue = self._queues.get(notification.target.user_id)
            if queue is None:
                continue
            self._cursor += 1
            queue.put_nowait(
                stream_pb2.SubscribeResponse(
                    deliveries=stream_pb2.DeliveryBatch(
                        deliveries=[
                            stream_pb2.Delivery(
                                notification=notification, log="user", cursor=self._cursor
                            )
                        ]
                    )
                ).SerializeToString()
            )
        return b""


_FLOOR_TABLE = """
CREATE TABLE IF NOT EXISTS floor_entries (
    tenant_id text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    seq bigserial,
    notification_id text COLLATE "C" NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (tenant_id, user_id, seq)
)
"""
_FLOOR_ACKS = """
CREATE TABLE IF NOT EXISTS floor_acks (
    tenant_id text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    log text COLLATE "C" NOT NULL,
    up_to bigint NOT NULL,
    PRIMARY KEY (tenant_id, user_id, log)
)
"""
_FLOOR_ACK = """
INSERT INTO floor_acks AS a (tenant_id, user_id, log, up_to)
SELECT $1, $2, * FROM unnest($3::text[], $4::bigint[])
ON CONFLICT (tenant_id, user_id, log) DO UPDATE SET up_to = greatest(a.up_to, excluded.up_to)
"""
_FLOOR_INSERT = """
INSERT INTO floor_entries (tenant_id, user_id, notification_id, payload)
SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bytea[])
"""


class ProtocolFloor(FanOut):
    """The fan-out plus the I/O of Herald's protocol: ids and per-notification answers, Herald's
    delivery framing, acks over AckStream. No log, no status, no timers, no checks; with a
    pool, each SendBatch committed to PostgreSQL before its answer (the durable floor)."""

    _LOG = wire.log_field("user")

    def __init__(self, pool: Any = None, ack_pool: Any = None) -> None:
        super().__init__()
        self._pool = pool
        self._ack_pool = ack_pool

    @staticmethod
    def _user(context: aio.ServicerContext[Any, Any]) -> str:
        """The bearer token's `sub`, its signature unchecked (once per stream, at connect)."""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                token = value if isinstance(value, str) else value.decode()
                return _subject(token.removeprefix("Bearer "))
        return ""

    async def websocket(self, connection: ServerConnection) -> None:
        """Herald's WebSocket protocol, binary framing, and nothing else: the subscribe frame,
        SessionStarted, one `send` per queued delivery frame, ack frames read and parsed."""
        first = await connection.recv()
        if not isinstance(first, bytes):
            await connection.close(4003, "binary frames only")
            return
        user = _subject(stream_pb2.WebSocketClientFrame.FromString(first).subscribe.token)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queues[user] = queue
        reader = asyncio.ensure_future(self._read_acks(connection))
        try:
            await connection.send(_STARTED)
            while True:
                await connection.send(await queue.get())
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            if self._queues.get(user) is queue:
                del self._queues[user]

    def picows_listener(self) -> Any:
        """The same floor on picows: the subscribe frame, then a writer task per connection."""
        from picows import WSListener, WSMsgType, WSTransport

        floor = self

        class Subscriber(WSListener):  # type: ignore[misc]
            def __init__(self) -> None:
                self.user = ""
                self.queue: asyncio.Queue[bytes] = asyncio.Queue()
                self.resumed = asyncio.Event()
                self.resumed.set()
                self.task: asyncio.Task[None] | None = None

            def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
                if frame.msg_type == WSMsgType.CLOSE:
                    transport.send_close(frame.get_close_code())
                    transport.disconnect()
                    return
                if frame.msg_type != WSMsgType.BINARY:
                    return
                message = stream_pb2.WebSocketClientFrame.FromString(frame.get_payload_as_bytes())
                if self.task is None:
                    self.user = _subject(message.subscribe.token)
                    floor._queues[self.user] = self.queue
                    self.task = asyncio.ensure_future(self.write(transport))
                else:
                    message.ack.up_to  # noqa: B018 - parsed as Herald parses it, then dropped

            async def write(self, transport: WSTransport) -> None:
                binary = WSMsgType.BINARY
                transport.send(binary, _STARTED)
                while True:
                    transport.send(binary, await self.queue.get())
                    if not self.resumed.is_set():
                        await self.resumed.wait()

            def pause_writing(self) -> None:
                self.resumed.clear()

            def resume_writing(self) -> None:
                self.resumed.set()

            def on_ws_disconnected(self, transport: WSTransport) -> None:
                if self.task is not None:
                    self.task.cancel()
                if floor._queues.get(self.user) is self.queue:
                    del floor._queues[self.user]

        return Subscriber

    @staticmethod
    async def _read_acks(connection: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in connection:
                frame = stream_pb2.WebSocketClientFrame.FromString(message)  # type: ignore[arg-type]
                frame.ack.up_to  # noqa: B018 - parsed as Herald parses it, then dropped

    async def send_batch(self, request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        batch = ingest_pb2.SendBatchRequest.FromString(request)
        notifications = batch.notifications
        results = []
        for notification, notification_id in zip(
            notifications, new_notification_ids(len(notifications)), strict=True
        ):
            notification.id = notification_id
            queue = self._queues.get(notification.target.user_id)
            if queue is not None:
                self._cursor += 1
                field = wire.notification_field(notification.SerializeToString())
                queue.put_nowait(
                    wire.batch_response([wire.delivery(field, self._LOG, self._cursor, 1, 0)])
                )
            results.append(wire.accepted_result(notification_id, False, 0 if queue is None else 1))
        if self._pool is not None:
            await self._pool.execute(
                _FLOOR_INSERT,
                "bench",
                [n.target.user_id for n in notifications],
                [n.id for n in notifications],
                [n.SerializeToString() for n in notifications],
            )
        return wire.repeated_field_1(results)

    async def ack_stream(
        self, requests: AsyncIterator[bytes], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        user = self._user(context) if self._ack_pool is not None else ""
        async for raw in requests:
            acks = stream_pb2.AckStreamRequest.FromString(raw)
            if self._ack_pool is not None and acks.up_to:
                await self._ack_pool.execute(
                    _FLOOR_ACK,
                    "bench",
                    user,
                    [c.log for c in acks.up_to],
                    [c.cursor for c in acks.up_to],
                )
            yield stream_pb2.AckStreamResponse(acked=len(acks.up_to)).SerializeToString()


def _subject(token: str) -> str:
    unchecked = {"verify_signature": False}
    return str(jwt.decode(token, options=unchecked)["sub"])


async def idle_subscribe(request: bytes, context: aio.ServicerContext[Any, Any]) -> None:
    """One SessionStarted, then nothing until the client goes away."""
    await context.write(_STARTED)
    await asyncio.get_running_loop().create_future()


def _handlers(
    protocol: bool,
    pool: Any = None,
    ack_pool: Any = None,
    floor: ProtocolFloor | None = None,
    idle: bool = False,
) -> list[grpc.GenericRpcHandler]:
    # No serializers: every method takes and returns bytes, like Herald's Subscribe does.
    if idle:
        idle_handlers = {"Subscribe": grpc.unary_stream_rpc_method_handler(idle_subscribe)}
        return [grpc.method_handlers_generic_handler("herald.v1.StreamService", idle_handlers)]
    if not protocol:
        fan_out = FanOut()
        handlers = {
            "Subscribe": grpc.unary_stream_rpc_method_handler(fan_out.subscribe),
            "Publish": grpc.unary_unary_rpc_method_handler(fan_out.publish),
        }
        return [grpc.method_handlers_generic_handler(SERVICE, handlers)]
    floor = floor or ProtocolFloor(pool, ack_pool)
    stream = {
        "Subscribe": grpc.unary_stream_rpc_method_handler(floor.subscribe),
        "AckStream": grpc.stream_stream_rpc_method_handler(floor.ack_stream),
    }
    ingest = {"SendBatch": grpc.unary_unary_rpc_method_handler(floor.send_batch)}
    return [
        grpc.method_handlers_generic_handler("herald.v1.StreamService", stream),
        grpc.method_handlers_generic_handler("herald.v1.IngestService", ingest),
    ]


async def serve(
    host: str,
    port: int,
    protocol: bool = False,
    durable_dsn: str = "",
    ws_port: int = 0,
    ws_library: str = "websockets",
    idle: bool = False,
) -> None:
    pool = ack_pool = None
    if durable_dsn:
        import asyncpg

        pool = await asyncpg.create_pool(durable_dsn, min_size=4, max_size=10)
        await pool.execute(_FLOOR_TABLE)
        await pool.execute(_FLOOR_ACKS)
        # Acks commit without waiting for the WAL flush, as Herald's do (a lost ack is a
        # redelivery).
        ack_pool = await asyncpg.create_pool(
            durable_dsn, min_size=2, max_size=4, server_settings={"synchronous_commit": "off"}
        )
    options = [
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        # Herald's bounds on calls not taken yet (services/server.py): grpc's defaults cancel
        # part of a connect storm.
        ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", 2 * MAX_PENDING_CALLS),
    ]
    server = aio.server(options=options)
    floor = ProtocolFloor(pool, ack_pool) if protocol else None
    server.add_generic_rpc_handlers(_handlers(protocol, pool, ack_pool, floor, idle))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    websocket: Any = None
    if ws_port and floor is not None and ws_library == "picows":
        from picows import WSUpgradeResponse, WSUpgradeResponseWithListener, ws_create_server

        subscriber = floor.picows_listener()
        selected = WSUpgradeResponse.create_101_response({"Sec-WebSocket-Protocol": "herald.v1"})
        websocket = await ws_create_server(
            lambda _request: WSUpgradeResponseWithListener(selected, subscriber()),
            host,
            ws_port,
            max_frame_size=65_536,
            enable_auto_ping=True,
            auto_ping_idle_timeout=25.0,
            auto_ping_reply_timeout=10.0,
        )
    elif ws_port and floor is not None:
        # As services/stream/websocket.py serves it: no compression, the same frame bound,
        # pings, the binary subprotocol.
        websocket = await ws_serve(
            floor.websocket,
            host,
            ws_port,
            select_subprotocol=lambda _, offered: (
                Subprotocol("herald.v1") if "herald.v1" in offered else None
            ),
            compression=None,
            max_size=65_536,
            ping_interval=25.0,
            ping_timeout=10.0,
            close_timeout=2,
            server_header=None,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    what = (
        "idle floor"
        if idle
        else "durable floor"
        if pool
        else "protocol floor"
        if protocol
        else "baseline"
    )
    print(f"{what} serving on {host}:{port}", flush=True)
    await stop.wait()
    if websocket is not None:
        websocket.close()
    await server.stop(1.0)
    for each in (pool, ack_pool):
        if each is not None:
            await each.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--protocol", action="store_true", help="serve Herald's methods as the protocol floor"
    )
    parser.add_argument(
        "--durable-dsn",
        default="",
        help="with --protocol: commit every SendBatch to this PostgreSQL database first",
    )
    parser.add_argument(
        "--ws-port",
        type=int,
        default=0,
        help="with --protocol: also serve Herald's WebSocket protocol on this port (the floor)",
    )
    parser.add_argument(
        "--ws-library",
        choices=["websockets", "picows"],
        default="websockets",
        help="with --ws-port: the WebSocket server library (picows: pip install picows)",
    )
    parser.add_argument(
        "--idle", action="store_true", help="Subscribe writes SessionStarted, then awaits forever"
    )
    args = parser.parse_args()
    if (args.durable_dsn or args.ws_port) and not args.protocol:
        parser.error("--durable-dsn and --ws-port need --protocol")
    if args.idle and args.protocol:
        parser.error("--idle and --protocol exclude each other")
    try:
        import uvloop  # the same event loop `herald up` runs on

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is not available on Windows
        loop_factory = None
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as run:
        run.run(
            serve(
                args.host,
                args.port,
                args.protocol,
                args.durable_dsn,
                args.ws_port,
                args.ws_library,
                args.idle,
            )
        )


if __name__ == "__main__":
    main()
